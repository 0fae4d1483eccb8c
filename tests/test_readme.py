"""The README's code example runs and does what it says."""

import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_loss_example_runs_and_backpropagates():
    src = README.read_text()
    code = re.search(r"## Dropping it into.*?```python\n(.*?)```", src, re.S).group(1)
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    torch.manual_seed(0)
    g = torch.randn(16, 64, requires_grad=True)
    local = torch.randn(16, 8, 32, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(4)
    gl, ll = ns["aligned_triplet_loss"](g, labels, local)  # AlignedTripletLoss's argument order
    (gl + ll).backward()
    assert torch.isfinite(gl) and torch.isfinite(ll)
    assert local.grad.abs().sum() > 0 and g.grad.abs().sum() > 0


def test_readme_market_example_runs():
    src = README.read_text()
    code = re.search(r"## Market-1501-scale evaluation.*?```python\n(.*?)```", src, re.S).group(1)
    g = torch.Generator().manual_seed(0)
    ns = {
        "q_local": torch.randn(20, 8, 16, generator=g),
        "g_local": torch.randn(150, 8, 16, generator=g),
        "q_global": torch.randn(20, 32, generator=g),
        "g_global": torch.randn(150, 32, generator=g),
    }
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["d"].shape == (20, 150) and ns["rr"].shape == (20, 150)
    assert ns["vals"].shape == ns["idx"].shape == (20, 100)


def test_readme_quickstart_runs():
    src = README.read_text()
    code = re.search(r"## Quickstart.*?```python\n(.*?)```", src, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["d"].shape == (32,) and ns["qg"].shape == (32, 32)
    assert ns["x"].grad is not None and torch.isfinite(ns["loss"].local_loss)
