"""A kill (SIGKILL) or Ctrl-C (SIGINT; SIGTERM is handled alike) of `partdist train` mid-epoch
loses at most that epoch.

"Mid-epoch" is made deterministic by running the command through ``stalled_run.py 2:1``: the
run announces on stderr that it finished iteration 1 of epoch 2 (the checkpoint of epoch 1 is
on disk) and sleeps until it is signalled. The resumed run must end with the weights of an
uninterrupted run, bit for bit (same thread count in every run).
"""

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

EPOCHS = 3
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
STALLED_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stalled_run.py")


@pytest.fixture(scope="module")
def data_root(tiny_reid_root):
    return tiny_reid_root


def _cmd(data_root, out, *extra, stall_at=None):
    launcher = ["-m", "partdist.cli"] if stall_at is None else [STALLED_RUN, stall_at]
    return [sys.executable, *launcher, "train", "--data", data_root, "--backbone", "compact",
            "--height", "64", "--width", "32", "--p", "2", "--k", "2", "--epochs", str(EPOCHS),
            "--iters-per-epoch", "2", "--lr", "1e-3", "--warmup-epochs", "0", "--seed", "0",
            "--progress", "false", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    r = subprocess.run(_cmd(data_root, out), capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    return torch.load(out / "checkpoint.pt", weights_only=False)


def _wait_for_line(proc, needle, timeout=60):
    deadline, seen = time.time() + timeout, []
    while time.time() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if needle in line:
                return
        elif proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no {needle!r} on stderr within {timeout} s:\n" + "".join(seen))


def _check_checkpoint(out, epoch):
    assert not (out / "checkpoint.pt.tmp").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)  # loads: the file is complete
    assert ckpt["epoch"] == epoch and len(ckpt["history"]) == epoch
    return ckpt


def _sigint_as_in_a_terminal():
    """The run starts with SIGINT at its default, as a command typed at a terminal does. A test
    runner started in the background by a non-interactive shell (`cmd &`) has SIGINT ignored,
    its children inherit that, and Python then installs no KeyboardInterrupt handler: Ctrl-C
    could not reach such a run anyway."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_kill_mid_epoch_then_resume_equals_uninterrupted(data_root, uninterrupted, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(data_root, out, stall_at="2:1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, preexec_fn=_sigint_as_in_a_terminal)
    try:
        _wait_for_line(proc, "stalled in epoch 2 after iteration 1")
        before = _check_checkpoint(out, 1)  # epoch 1 is on disk, epoch 2 is half done
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        # a kill while the next checkpoint was being written leaves a partial .tmp file only
        (out / "checkpoint.pt.tmp").write_bytes(b"partial checkpoint")
    else:  # SIGINT, SIGTERM: a clean exit
        assert proc.returncode == 130
        assert "interrupted; resume with --resume" in stderr and "Traceback" not in stderr, stderr
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    for k, v in before["model"].items():
        assert torch.equal(v, ckpt["model"][k]), k

    r = subprocess.run(_cmd(data_root, out, "--resume"), capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "after epoch 1" in r.stdout
    final = _check_checkpoint(out, EPOCHS)
    for k, v in uninterrupted["model"].items():
        assert torch.equal(v, final["model"][k]), k
    assert [h["loss"] for h in final["history"]] == [h["loss"] for h in uninterrupted["history"]]
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2, 3]
