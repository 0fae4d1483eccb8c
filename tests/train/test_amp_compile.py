"""The trainer's mixed precision (``--amp``), ``torch.compile`` (``--compile``) and device
selection, on the CPU (bfloat16 / float16 autocast and the inductor backend run there)."""

import json
import os

import pytest
import torch

from partdist.data import market1501
from partdist.runs import load_checkpoint
from partdist.train import TrainConfig, Trainer, make_batches
from partdist.train import trainer as trainer_module
from partdist.train.trainer import select_device


@pytest.fixture(scope="module")
def tiny_set(tiny_reid_root):
    return market1501(tiny_reid_root)


def _cfg(tmp_path, **kw):
    base = dict(model="aligned", backbone="compact", height=64, width=32, p=2, k=2, epochs=1, iters_per_epoch=2,
                lr=1e-3, warmup_epochs=0, out=str(tmp_path), progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _trainer(tiny_set, cfg):
    return Trainer(cfg, len({p for _, p, _ in tiny_set.train}), make_batches(tiny_set.train, cfg), log=lambda *a: None)


def _conv_output_dtypes(model):
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_step_runs_in_half_and_is_checkpointed(tiny_set, tmp_path, amp, dtype):
    tr = _trainer(tiny_set, _cfg(tmp_path, amp=amp, iters_per_epoch=1))
    seen = _conv_output_dtypes(tr.model)
    before = [p.detach().clone() for p in tr.model.parameters()]
    hist = tr.fit()
    assert seen and set(seen) == {dtype}  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # the weights stay float32
    assert torch.isfinite(torch.tensor(hist[0]["loss"])) and hist[0]["iters"] == 1
    changed = any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    # float16: a step whose scaled gradients overflow is skipped and the scale lowered instead
    assert changed if amp == "bf16" else changed or tr.scaler.get_scale() < 2.0**16
    state, cfg = load_checkpoint(tr.ckpt_path)
    assert cfg.amp == amp
    assert ("scaler" in state) == (amp == "fp16")  # float16 scales the loss; its scale is resumed
    if amp == "fp16":
        again = _trainer(tiny_set, _cfg(tmp_path, amp=amp, iters_per_epoch=1, epochs=2))
        assert again.resume()
        assert again.scaler.get_scale() == tr.scaler.get_scale()


def test_amp_off_leaves_the_step_in_float32(tiny_set, tmp_path):
    tr = _trainer(tiny_set, _cfg(tmp_path, iters_per_epoch=1))
    seen = _conv_output_dtypes(tr.model)
    tr.fit()
    assert seen and set(seen) == {torch.float32} and tr.scaler is None


def test_cli_amp_is_saved_and_honoured_on_resume(tiny_reid_root, tmp_path):
    from partdist.cli import main

    out = tmp_path / "run"
    common = ["train", "--data", tiny_reid_root, "--backbone", "compact", "--height", "64", "--width", "32",
              "--p", "2", "--k", "2", "--iters-per-epoch", "1", "--warmup-epochs", "0", "--progress", "off",
              "--skip-image-check", "--out", str(out)]
    assert main([*common, "--epochs", "1", "--amp", "bf16"]) == 0
    with open(out / "run.json") as f:
        assert json.load(f)["config"]["amp"] == "bf16"
    assert main([*common, "--epochs", "2", "--resume"]) == 0  # no --amp: the run's own
    _, cfg = load_checkpoint(str(out / "checkpoint.pt"))
    assert cfg.amp == "bf16" and cfg.compile is False and cfg.epochs == 2


def test_cli_amp_and_compile_flags(tmp_path):
    """Not given: the defaults for a new run, the run's values with --resume; given: they win."""
    from partdist.cli import build_parser
    from partdist.cli.train import _resolve_resumed
    from partdist.runs import save_checkpoint

    ap = build_parser()
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"config": {"amp": "fp16", "compile": True}, "model": {}}, str(run / "checkpoint.pt"))
    for argv, resume, want in [([], False, ("off", False)), ([], True, ("fp16", True)),
                               (["--amp", "bf16", "--compile", "false"], True, ("bf16", False))]:
        args = ap.parse_args(["train", "--data", "x", "--out", str(run), *argv] + (["--resume"] if resume else []))
        _resolve_resumed(args)
        assert (args.amp, args.compile) == want, argv
    with pytest.raises(SystemExit) as exit_:
        ap.parse_args(["train", "--data", "x", "--amp", "fp8"])
    assert exit_.value.code == 2
    help_text = ap.commands["train"].format_help()
    assert "--amp {off,bf16,fp16}" in help_text and "with --resume: the run's" in help_text


@pytest.mark.slow
def test_compiled_step_equals_eager(tiny_set, tmp_path):
    """One training step through torch.compile (default backend: inductor): the model, the
    global and DMLI triplet losses and the ID loss; loss, gradients and updated weights equal
    eager's (SGD: an update proportional to the gradient; Adam's first step, about lr * sign(g),
    would turn rounding differences of near-zero gradients into differences of 2 lr)."""
    cfg = dict(model="aligned", iters_per_epoch=1, optimizer="sgd")
    eager = _trainer(tiny_set, _cfg(tmp_path / "eager", **cfg))
    compiled = _trainer(tiny_set, _cfg(tmp_path / "compiled", compile=True, **cfg))
    h_eager, h_compiled = eager.fit(), compiled.fit()
    assert h_compiled[0]["loss"] == pytest.approx(h_eager[0]["loss"], rel=1e-4, abs=1e-5)
    # tolerances on the scale of the whole gradient: a bias before BatchNorm has a gradient of
    # rounding noise only
    scale = max(float(p.grad.abs().max()) for p in eager.model.parameters())
    for (name, a), b in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert load_checkpoint(compiled.ckpt_path)[1].compile is True


def test_cuda_device_index_becomes_the_current_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert calls == [torch.device("cuda", 1)]
    calls.clear()
    assert select_device("cpu") == torch.device("cpu") and calls == []
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert select_device("cuda", ddp=True, rank=3) == torch.device("cuda", 3) and calls == [torch.device("cuda", 3)]


def test_trainer_selects_its_device_without_ddp(tiny_set, tmp_path, monkeypatch):
    """``partdist train --device cuda:1`` (no DDP): the trainer makes cuda:1 the current device
    before building anything (checked with the selection mocked to the CPU: no GPU needed)."""
    asked = []

    def fake_select(name, ddp=False, rank=0):
        asked.append((name, ddp))
        return torch.device("cpu")

    monkeypatch.setattr(trainer_module, "select_device", fake_select)
    tr = _trainer(tiny_set, _cfg(tmp_path, device="cuda:1"))
    assert asked == [("cuda:1", False)] and tr.device == torch.device("cpu")
    assert os.path.isdir(tmp_path)
