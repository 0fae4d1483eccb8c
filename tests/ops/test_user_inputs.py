"""Every op on the inputs users hand it: contiguous, permuted (a model's ``feat.permute``),
sliced (non-unit last stride), expanded (stride 0) tensors in float16/bfloat16/float32/float64;
the fake kernels return exactly the real ops' metadata (``torch.compile`` with inductor relies on
it), ``torch.library.opcheck`` passes on the whole matrix, and under ``torch.autocast`` the
distance ops compute and return float32."""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import partdist  # noqa: F401  (registers torch.ops.partdist.*)

ops = torch.ops.partdist
LAYOUTS = ["contiguous", "permuted", "sliced", "expanded"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _cases():
    """(name, op, args) for every compiled op, float64 tensors of at least 2 dims."""
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.rand(*s, generator=g, dtype=torch.float64)

    x, y, y2, d = r(3, 4, 6), r(3, 5, 6), r(4, 5, 6), r(3, 4, 5)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
    dd = r(8, 8) + 0.1
    f, fg = r(2, 3, 5, 6), r(2, 3, 5, 6)
    px, py = r(3, 4, 6), r(5, 4, 6)
    vx = (torch.rand(3, 4, generator=g) > 0.3).double()
    vy = (torch.rand(5, 4, generator=g) > 0.3).double()
    return [
        ("local_dist_matrix", ops.local_dist_matrix.default, (x, y, True)),
        ("local_dist_matrix_backward", ops.local_dist_matrix_backward.default, (r(3, 4, 5), x, y, True)),
        ("dmli", ops.dmli.default, (d, 0.0, -1.0)),
        ("dmli soft", ops.dmli.default, (d, 0.5, 2.0)),
        ("dmli_backward", ops.dmli_backward.default, (r(3), d, 0.0, -1.0)),
        ("dmli_path", ops.dmli_path.default, (d, 0.3, -1.0)),
        ("batch_local_dist", ops.batch_local_dist.default, (x, y, True, 0.0, -1.0, False)),
        ("batch_local_dist_backward", ops.batch_local_dist_backward.default, (r(3), x, y, True, 0.2, -1.0, False)),
        ("_batch_local_dist_fwd_cells", ops._batch_local_dist_fwd_cells.default, (x, y, True, 0.0, -1.0)),
        ("_batch_local_dist_backward_cells", ops._batch_local_dist_backward_cells.default,
         (r(3), x, y, "cells", True, 0.0, -1.0)),
        ("local_dist", ops.local_dist.default, (x, y2, True, 0, 0.0, -1.0, False)),
        ("local_dist_backward", ops.local_dist_backward.default, (r(3, 4), x, y2, True, 2, 0.0, -1.0, False)),
        ("hard_example_mining", ops.hard_example_mining.default, (dd, labels, None, False)),
        ("triplet_hard_loss", ops.triplet_hard_loss.default, (dd, labels, None, 0.3, False)),
        ("neighborhood_diff", ops.neighborhood_diff.default, (f, fg, 3)),
        ("neighborhood_diff_backward", ops.neighborhood_diff_backward.default, (r(2, 3, 15, 18), 3)),
        ("part_dist", ops.part_dist.default, (px, py, vx, vy, math.inf, 0)),
        ("part_dist_backward", ops.part_dist_backward.default, (r(3, 5), px, py, vx, vy, 1.0, 0, True)),
        ("dsr_dist", ops.dsr_dist.default, (x, y2, 0.1, 50, 1e-6, 0)),
        ("dsr_dist_backward", ops.dsr_dist_backward.default, (r(3, 4), x, y2, 0.1, 50, 1e-6, 0)),
    ]


CASES = {name: (op, args) for name, op, args in _cases()}


def _layout(t, kind):
    if not (isinstance(t, torch.Tensor) and t.is_floating_point()) or t.dim() < 2 or kind == "contiguous":
        return t
    if kind == "permuted":  # the same values, dims 0 and 1 swapped in memory
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if kind == "sliced":  # every other element of a wider tensor: last stride 2
        return torch.stack([t, t], -1)[..., 0]
    return t[:1].expand(t.shape)  # "expanded": stride 0 in dim 0


def _args(name, kind, dtype):
    op, args = CASES[name]
    out = tuple(_layout(t, kind).to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for t in args)
    if name == "_batch_local_dist_backward_cells":  # the cells its forward saved for these x, y
        out = out[:3] + (ops._batch_local_dist_fwd_cells(out[1], out[2], True, 0.0, -1.0)[1],) + out[4:]
    return op, out


def _as_tuple(o):
    return tuple(o) if isinstance(o, (tuple, list)) else (o,)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_fake_kernel_metadata_equals_real(name, dtype, kind):
    op, args = _args(name, kind, dtype)
    real = _as_tuple(op(*args))
    with FakeTensorMode() as mode:
        fake = _as_tuple(op(*(mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args)))
    assert len(real) == len(fake)
    for i, (r, f) in enumerate(zip(real, fake)):
        meta = lambda t: (tuple(t.shape), t.stride(), t.dtype, t.device)  # noqa: E731
        assert meta(f) == meta(r), (name, i)


def _matrix():
    """Every (op, dtype, layout); all but the float64 permuted cases are slow (opcheck traces
    each case several times: ~4 minutes for the matrix on 2 cores; each family's own opcheck
    test covers the contiguous case in test-fast)."""
    for name in CASES:
        for dtype in DTYPES:
            for kind in LAYOUTS:
                fast = dtype == torch.float64 and kind == "permuted"
                yield pytest.param(name, dtype, kind, id=f"{name}-{dtype}-{kind}",
                                   marks=() if fast else pytest.mark.slow)


# ops whose gradients opcheck also checks (float64: accurate enough for its comparison)
GRAD_CHECKED = ("local_dist_matrix", "batch_local_dist", "local_dist", "dmli", "part_dist")


@pytest.mark.parametrize("name, dtype, kind", list(_matrix()))
def test_opcheck_input_matrix(name, dtype, kind):
    op, args = _args(name, kind, dtype)
    if dtype == torch.float64 and name in GRAD_CHECKED:
        args = tuple(t.detach().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                     for t in args)
    torch.library.opcheck(op, args)


LABELS6 = torch.tensor([0, 0, 1, 1, 2, 2])
AUTOCAST_OPS = {  # public op -> (call on half-precision inputs x, y; shapes of x and y)
    "local_dist_matrix": (lambda x, y: partdist.local_dist_matrix(x, y), (6, 8, 16), (6, 8, 16)),
    "batch_local_dist": (lambda x, y: partdist.batch_local_dist(x, y), (6, 8, 16), (6, 8, 16)),
    "local_dist": (lambda x, y: partdist.local_dist(x, y), (6, 8, 16), (5, 8, 16)),
    "unaligned_dist": (lambda x, y: partdist.unaligned_dist(x, y), (6, 8, 16), (6, 8, 16)),
    "part_dist": (lambda x, y: partdist.part_dist(x, y, torch.ones(x.shape[:2], dtype=x.dtype),
                                                  torch.ones(y.shape[:2], dtype=y.dtype)), (6, 4, 16), (5, 4, 16)),
    "dsr_dist": (lambda x, y: partdist.dsr_dist(x, y, beta=0.1, max_iter=30), (6, 4, 16), (5, 6, 16)),
    # ops on distances: x is a distance tensor (y unused)
    "dmli": (lambda x, y: partdist.dmli(x), (6, 4, 5), (1,)),
    "triplet_hard_loss": (lambda x, y: partdist.triplet_hard_loss(x, LABELS6), (6, 6), (1,)),
    "hard_example_mining": (lambda x, y: partdist.hard_example_mining(x, LABELS6).dist_ap, (6, 6), (1,)),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(AUTOCAST_OPS))
def test_autocast_computes_and_returns_float32(name, dtype):
    """Under autocast the half features are cast to float32 before the op (the result equals the
    op on the float32 upcast of the same features) and the result is float32; gradients reach the
    half-precision leaves in their dtype. Outside autocast the input dtype is kept."""
    gen = torch.Generator().manual_seed(1)
    fn, xs, ys = AUTOCAST_OPS[name]
    x = (torch.rand(xs, generator=gen) * 3).to(dtype).requires_grad_()
    y = (torch.rand(ys, generator=gen) * 3).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        out = fn(x, y)
    assert out.dtype == torch.float32, name
    torch.testing.assert_close(out, fn(x.detach().float(), y.float()), rtol=0, atol=0)
    out.sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype
    assert fn(x.detach(), y).dtype == dtype


# ------------------------------------------------------------ double backward
@pytest.mark.parametrize("family", ["dmli", "mining", "parts"])
def test_double_backward_raises(family):
    """The DMLI, mining and part distance ops have no double backward: a gradient taken with
    create_graph=True raises instead of building a graph that would give zeros."""
    if family == "parts":
        inp = torch.randn(4, 3, 8, requires_grad=True)
        out = partdist.part_dist(inp, torch.randn(5, 3, 8), torch.ones(4, 3), torch.ones(5, 3)).sum()
    elif family == "dmli":
        x = torch.randn(4, 3, 8, requires_grad=True)
        out = partdist.batch_local_dist(x, torch.randn(4, 3, 8)).sum()
        inp = x
    else:
        inp = torch.rand(8, 8, requires_grad=True)
        out = partdist.triplet_hard_loss(inp, torch.arange(8) % 2)
        out = out[0] if isinstance(out, tuple) else out
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out, inp, create_graph=True)
    (g,) = torch.autograd.grad(out, inp)  # a plain backward works
    assert torch.isfinite(g).all()
