"""The command line as a user meets it: every mistake ends with one line ``partdist <command>:
error: ...`` naming the flag, exit status 2, no traceback, and nothing on disk lost or
overwritten; ``--debug`` shows the traceback. Plus what a run leaves behind (run.json, best.pt,
results of ``eval --out``) and the package's API names.

Every command runs ``partdist.cli.main`` in this process (:func:`cli`, :func:`run_command`: exit
status, stdout and stderr as the interpreter would give them); the installed command in a fresh
process is run by the tests about processes (tests/train/test_train_interrupt.py, torchrun in
tests/search/test_search_cli.py)."""

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import sys
import traceback
import types
import warnings

import pytest
import torch

TRAIN = ["--backbone", "compact", "--height", "64", "--width", "32", "--p", "2", "--k", "2", "--lr", "1e-3",
         "--seed", "0"]


def run_command(*args):
    """``partdist ARGS`` in this process, for fixtures wider than a test (no ``capfd``): exit
    status and what Python wrote to stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _exit_status([str(a) for a in args])
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _exit_status(argv):
    """``sys.exit(main(argv))`` as the interpreter runs it: the exit status; an exception that
    escapes ``main`` prints its traceback to stderr (status 1); Python warnings are printed to
    stderr under the interpreter's default filters (DeprecationWarning and kin ignored)."""
    from partdist.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except BaseException:  # noqa: B036  (as the interpreter: any exception ends the process)
            traceback.print_exc()
            code = 1
    for w in caught:
        sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)  # sys.exit("message")
    return 1


@pytest.fixture
def cli(capfd):
    """``cli(*args)``: ``partdist ARGS`` in this process; ``.returncode``, ``.stdout``, ``.stderr``
    as a subprocess would give them (the file descriptors are captured, C++ output included)."""

    def run(*args):
        capfd.readouterr()
        code = _exit_status([str(a) for a in args])
        out, err = capfd.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def assert_one_line_error(r, cmd, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "warning:" not in ln]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"partdist {cmd}: error: "), lines[0]
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def digest(folder):
    """{relative path: sha256} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="session")
def data_root(tiny_reid_root):
    return tiny_reid_root


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    """A run folder as `partdist train` leaves it (checkpoint of an untrained compact AlignedReID,
    4 identities, and metrics), made in-process in a second."""
    import dataclasses

    from partdist.train import TrainConfig, build_model

    out = tmp_path_factory.mktemp("cli-fake") / "run"
    out.mkdir()
    cfg = TrainConfig(backbone="compact", height=64, width=32, p=2, k=2, out=str(out))
    torch.manual_seed(0)
    state = {"config": dataclasses.asdict(cfg), "num_classes": 4, "model": build_model(cfg, 4).state_dict(),
             "epoch": 1, "history": [{"epoch": 1, "loss": 1.0}]}
    torch.save(state, out / "checkpoint.pt")
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n")
    return out


@pytest.fixture(scope="session")
def trained(data_root, tmp_path_factory):
    """One small run: 2 epochs of exactly 5 iterations (one pass is 3 or 4), evaluated every epoch."""
    out = tmp_path_factory.mktemp("cli-run") / "run"
    r = run_command("train", "--data", data_root, *TRAIN, "--epochs", "2", "--iters-per-epoch", "5", "--warmup-epochs", "2",
            "--eval-every", "1", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


# ------------------------------------------------------------------- what a run leaves


@pytest.mark.slow
def test_train_run_leaves_config_stats_best_and_honest_metrics(trained):
    out, r = trained
    assert "\r" not in r.stdout + r.stderr  # no progress-bar frames outside a terminal
    assert "backbone compact" in r.stdout and "dataset:" in r.stdout and "image check:" in r.stdout
    assert re.search(r"--iters-per-epoch 5: one pass over the training set is [34] iterations; each epoch cycles "
                     r"past it", r.stdout)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["config"]["backbone"] == "compact" and run_json["dataset_stats"]["train"]["ids"] == 4
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["iters"] for rec in recs] == [5, 5]  # exactly --iters-per-epoch, not capped by one pass
    assert [rec["lr"] for rec in recs] == pytest.approx([5e-4, 1e-3])  # each epoch's own lr (warm-up 1/2, 2/2)
    assert all("mAP" in rec for rec in recs) and (out / "best.pt").exists() and (out / "checkpoint.pt").exists()
    best = max(recs, key=lambda rec: rec["mAP"])
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == best["epoch"]


@pytest.mark.slow
def test_eval_out_writes_results_and_rank_lists_and_refuses_to_overwrite(trained, data_root, tmp_path):
    ckpt = trained[0] / "checkpoint.pt"
    out = tmp_path / "eval"
    r = run_command("eval", "--checkpoint", ckpt, "--data", data_root, "--out", out, "--rank-lists", "2", "--no-rerank")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["query"]["images"] > 0 and res["gallery"]["images"] > 0 and res["epoch"] == 2
    assert res["ap"] == "torchreid" and "precisions at each true match" in res["ap_definition"]
    assert res["model"] == "aligned compact epoch 2" and "| aligned compact epoch 2 | global |" in r.stdout
    assert "mAP:" in (out / "results.md").read_text()
    assert len(list((out / "rank_lists").glob("*.png"))) == 2
    before = digest(out)
    r = run_command("eval", "--checkpoint", ckpt, "--data", data_root, "--out", out)
    assert_one_line_error(r, "eval", "--out", "--overwrite")
    assert digest(out) == before


# ------------------------------------------------------------------------------ mistakes


@pytest.mark.parametrize("cmd, device", [("train", "gpu"), ("eval", "cuda")])
def test_unusable_device_is_one_line(cli, cmd, device, data_root, tmp_path):
    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU
    args = ["--data", data_root, "--device", device]
    args += ["--out", tmp_path / "o"] if cmd == "train" else ["--checkpoint", tmp_path / "none.pt"]
    assert_one_line_error(cli(cmd, *args), cmd, f"--device {device}", "--device cpu")
    assert not (tmp_path / "o").exists()


def test_check_device_names_the_flag_and_the_fix(monkeypatch):
    """Each way a --device value can be unusable, on any machine: the CUDA cases are simulated
    (a CUDA build of torch with 0 or 2 visible GPUs)."""
    from partdist.cli import CLIError, check_device

    assert check_device("cpu") == torch.device("cpu")
    for value, want in [("gpu", "not a device"), ("meta", "partdist runs on cpu or cuda")]:
        with pytest.raises(CLIError, match=f"--device {value}: {want}.*--device cpu"):
            check_device(value)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(CLIError, match="--device cuda: this torch .* is a CPU build without CUDA; use --device cpu"):
        check_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CLIError, match="--dev cuda:0: no CUDA GPU is visible on this machine; use --device cpu"):
        check_device("cuda:0", flag="--dev")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(CLIError, match=r"--device cuda:2: this machine has 2 CUDA GPU\(s\); use --device cuda "
                                       r"\(cuda:0 \.\. cuda:1\) or --device cpu"):
        check_device("cuda:2")


def test_bad_flag_values_are_one_line(cli, data_root, tmp_path):
    assert_one_line_error(cli("train", "--data", data_root, "--progress", "maybe"), "train", "--progress",
                          "auto, bar, lines, off")
    r = cli("train", "--data", data_root, *TRAIN, "--p", "9", "--out", tmp_path / "o")
    assert_one_line_error(r, "train", "--p 9", "only 4 identities")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_missing_data_and_bad_config_file_are_one_line(cli, data_root, tmp_path):
    assert_one_line_error(cli("train", "--data", tmp_path / "missing", "--out", tmp_path / "o"), "train", "--data")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"backbone": "compact", "colour": "red"}))
    r = cli("train", "--data", data_root, "--config", cfg, "--out", tmp_path / "o")
    assert_one_line_error(r, "train", "--config", "colour")
    assert not (tmp_path / "o").exists()


def test_existing_run_is_never_overwritten_without_a_flag(cli, fake_run, data_root):
    before = digest(fake_run)
    r = cli("train", "--data", data_root, *TRAIN, "--epochs", "1", "--out", fake_run)
    assert_one_line_error(r, "train", f"--out {fake_run} already holds a run", "--resume", "--overwrite")
    assert digest(fake_run) == before


def test_resume_with_other_model_is_refused_before_loading(cli, fake_run, data_root):
    before = digest(fake_run)
    r = cli("train", "--data", data_root, *TRAIN, "--model", "pcb", "--epochs", "3", "--resume", "--out", fake_run)
    assert_one_line_error(r, "train", "was trained with --model aligned", "asks for --model pcb")
    assert digest(fake_run) == before


def test_resume_without_checkpoint_is_an_error(cli, data_root, tmp_path):
    r = cli("train", "--data", data_root, *TRAIN, "--resume", "--out", tmp_path / "new")
    assert_one_line_error(r, "train", "--resume", "no checkpoint")
    assert not (tmp_path / "new").exists()


class _Payload:
    """Unpickling it would create the file ``marker`` (through ``open``)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="session")
def bad_checkpoints(fake_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-bad-ckpt")
    marker = tmp / "pwned"
    good = torch.load(fake_run / "checkpoint.pt", weights_only=True)
    files = {}
    files["bare"] = tmp / "bare.pt"
    torch.save(good["model"], files["bare"])
    files["text"] = tmp / "notes.pt"
    files["text"].write_text("these are my notes, not a checkpoint\n")
    files["corrupt"] = tmp / "corrupt.pt"
    files["corrupt"].write_bytes((fake_run / "checkpoint.pt").read_bytes()[:2000])
    files["code_zip"] = tmp / "code.pt"
    torch.save({**good, "config": _Payload(str(marker))}, files["code_zip"])
    files["code_pickle"] = tmp / "code.pkl"
    files["code_pickle"].write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    # the payload does run when loaded unsafely (so the checks below can fail)
    with open(files["code_pickle"], "rb") as f:
        pickle.load(f).close()
    assert marker.exists()
    marker.unlink()
    return files, marker


EXPECT = {"bare": "bare state_dict", "text": "not a PyTorch checkpoint", "corrupt": "cannot be read",
          "code_zip": "never runs code", "code_pickle": "never runs code"}


def test_load_checkpoint_refuses_every_bad_file_without_running_code(bad_checkpoints):
    from partdist.runs import CheckpointError, load_checkpoint

    files, marker = bad_checkpoints
    for name, path in files.items():
        with pytest.raises(CheckpointError, match=EXPECT[name]) as info:
            load_checkpoint(str(path))
        assert "\n" not in str(info.value)
        assert not marker.exists(), name


@pytest.mark.parametrize("name", ["code_zip", "text", pytest.param("bare", marks=pytest.mark.slow),
                                  pytest.param("corrupt", marks=pytest.mark.slow),
                                  pytest.param("code_pickle", marks=pytest.mark.slow)])
def test_eval_with_bad_checkpoint_is_one_line_and_never_runs_code(cli, bad_checkpoints, data_root, name):
    files, marker = bad_checkpoints
    r = cli("eval", "--checkpoint", files[name], "--data", data_root, "--skip-image-check")
    assert_one_line_error(r, "eval", "--checkpoint", EXPECT[name])
    assert not marker.exists()


def test_corrupt_image_is_found_before_the_first_epoch(cli, data_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    bad = sorted((root / "bounding_box_train").iterdir())[3]
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "run"
    r = cli("train", "--data", root, *TRAIN, "--epochs", "1", "--out", out)
    line = assert_one_line_error(r, "train", "1 of", "cannot be read", bad.name, "--skip-image-check")
    assert "bad_images.txt" in line and not (out / "checkpoint.pt").exists()
    assert str(bad) in (out / "bad_images.txt").read_text()


def test_debug_shows_the_traceback(cli, data_root, tmp_path):
    r = cli("train", "--data", data_root, *TRAIN, "--resume", "--out", tmp_path / "new", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "CLIError" in r.stderr


# ------------------------------------------------------------------------ help and names


def test_every_flag_has_help_and_a_default_shown():
    from partdist.cli import build_parser

    ap = build_parser()
    for name, sub in ap.commands.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.help == "==SUPPRESS==" or isinstance(action, type(ap._actions[0])):
                continue
            assert action.help, (name, action.option_strings)
        assert "(default:" in text, name
    train_help = ap.commands["train"].format_help()
    assert "--lr-gamma" in train_help and "(default: resnet50)" in train_help


def test_progress_lines_have_total_and_eta():
    from partdist.train.progress import Progress as _Progress

    lines = []
    p = _Progress("lines", "epoch 1/3", total=4, log=lines.append, every_s=0)
    for _ in range(2):
        p.update(1.5)
    p.close()
    assert lines[-1].startswith("epoch 1/3 iter 2/4 loss 1.5000") and "eta" in lines[-1]


@pytest.mark.slow
def test_public_names_and_feature_extractor(trained, data_root):
    import partdist
    from partdist.data import market1501
    from partdist.eval import evaluate_model  # noqa: F401

    assert partdist.losses.AlignedTripletLoss is not None
    paths = [p for p, _, _ in market1501(data_root).query[:3]]
    fe = partdist.FeatureExtractor(str(trained[0] / "best.pt"))
    f = fe(paths)
    assert f["global"].shape[0] == 3 and f["local"].shape[0] == 3
    assert torch.allclose(f["global"].norm(dim=1), torch.ones(3), atol=1e-5)


def test_demo_refuses_an_earlier_demo(cli, tmp_path):
    out = tmp_path / "demo"
    (out / "train").mkdir(parents=True)
    (out / "train" / "checkpoint.pt").write_bytes(b"earlier run")
    (out / "results.json").write_text("{}")
    before = digest(out)
    r = cli("demo", "--quick", "--out", out)
    assert_one_line_error(r, "demo", f"--out {out} already holds a run", "--overwrite")
    assert digest(out) == before


def test_demo_pictures_without_matplotlib_warn_in_one_line(data_root, tmp_path, monkeypatch, capsys):
    """Results are written before the pictures; without matplotlib the curves are skipped with
    one warning and the other pictures are still drawn."""
    import types

    from partdist.cli.demo import _demo_pictures
    from partdist.data import market1501
    from partdist.train import TrainConfig, build_model

    splits = market1501(data_root)
    cfg = TrainConfig(backbone="compact", height=64, width=32)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n")
    trainer = types.SimpleNamespace(model=build_model(cfg, 4).eval(), metrics_path=str(metrics))
    dists = {"global + DMLI": torch.rand(len(splits.query), len(splits.gallery))}
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    written = _demo_pictures(splits, dists, trainer, cfg, str(tmp_path / "pics"))
    assert written == ["rank_list.png", "dmli_alignment.png"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("partdist demo: warning: matplotlib is not installed")
    assert (tmp_path / "pics" / "rank_list.png").exists() and not (tmp_path / "pics" / "training_curves.png").exists()
