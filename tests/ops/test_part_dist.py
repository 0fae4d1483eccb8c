"""part_dist: visibility-aware mean part distance of all pairs."""

import math

import pytest
import torch
from torch.autograd import gradcheck

import partdist
from partdist import reference as R


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def rand_parts(M, N, P, C=8, dtype=torch.float64, device="cpu", seed=0, vis="bool"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, P, C, generator=g, dtype=dtype)
    y = torch.randn(N, P, C, generator=g, dtype=dtype)
    if vis == "bool":
        vx = torch.rand(M, P, generator=g) > 0.4
        vy = torch.rand(N, P, generator=g) > 0.4
    else:
        vx = torch.rand(M, P, generator=g, dtype=dtype)
        vy = torch.rand(N, P, generator=g, dtype=dtype)
        vx[torch.rand(M, P, generator=g) < 0.3] = 0
        vy[torch.rand(N, P, generator=g) < 0.3] = 0
    return x.to(device), y.to(device), vx.to(device), vy.to(device)


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("vis", ["bool", "float"])
@pytest.mark.parametrize("M,N,P", [(1, 1, 1), (4, 5, 3), (7, 3, 6), (2, 9, 1)])
def test_values_against_loop(dtype, vis, M, N, P):
    x, y, vx, vy = rand_parts(M, N, P, dtype=dtype, vis=vis)
    out = partdist.part_dist(x, y, vx, vy)
    assert out.shape == (M, N) and out.dtype == dtype
    ref = R.part_dist_loop(x, y, vx, vy)
    torch.testing.assert_close(out, ref, **tol(dtype))
    torch.testing.assert_close(out, R.part_dist_vectorized(x, y, vx, vy, chunk_size=2), **tol(dtype))


def test_all_visible_is_mean_part_distance():
    x, y, _, _ = rand_parts(5, 4, 3)
    ones_x, ones_y = torch.ones(5, 3, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool)
    expected = (x.unsqueeze(1) - y.unsqueeze(0)).norm(dim=-1).mean(-1)
    torch.testing.assert_close(partdist.part_dist(x, y, ones_x, ones_y), expected)


def test_weights_are_relative_and_bool_equals_float():
    x, y, vx, vy = rand_parts(4, 6, 5)
    a = partdist.part_dist(x, y, vx, vy)
    b = partdist.part_dist(x, y, vx.double() * 0.5, vy.double())
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 1000])
def test_chunk_size_does_not_change_result(chunk):
    x, y, vx, vy = rand_parts(9, 11, 4, vis="float")
    torch.testing.assert_close(
        partdist.part_dist(x, y, vx, vy, chunk_size=chunk), partdist.part_dist(x, y, vx, vy), rtol=1e-12, atol=1e-12
    )


def test_empty_pairs_get_empty_value_and_zero_gradient():
    x, y, _, _ = rand_parts(3, 3, 2)
    vx = torch.tensor([[1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    vy = torch.tensor([[0, 1], [0, 1], [1, 1]], dtype=torch.bool)
    out = partdist.part_dist(x, y, vx, vy)
    empty = (vx.double() @ vy.double().T) == 0
    assert torch.isinf(out[empty]).all() and (out[empty] > 0).all()
    assert torch.isfinite(out[~empty]).all()
    out2 = partdist.part_dist(x, y, vx, vy, empty_value=-1.0)
    assert (out2[empty] == -1).all()
    torch.testing.assert_close(out2[~empty], out[~empty])
    # the gradient flowing from empty pairs is 0 (no NaN), even with a nonzero upstream gradient
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    vxf, vyf = vx.double().requires_grad_(), vy.double().requires_grad_()
    o = partdist.part_dist(xr, yr, vxf, vyf, empty_value=5.0)
    (o * empty.double()).sum().backward()
    for t in (xr, yr, vxf, vyf):
        assert torch.equal(t.grad, torch.zeros_like(t.grad))


def test_invisible_part_features_are_ignored_even_nan():
    x, y, vx, vy = rand_parts(4, 4, 3)
    vx[:, 1] = False
    x2 = x.clone()
    x2[:, 1] = float("nan")
    torch.testing.assert_close(partdist.part_dist(x2, y, vx, vy), partdist.part_dist(x, y, vx, vy))


def test_identical_parts_zero_distance_finite_grad():
    x, _, _, _ = rand_parts(3, 3, 4)
    vis = torch.ones(3, 4, dtype=torch.bool)
    xr = x.clone().requires_grad_()
    out = partdist.part_dist(xr, x, vis, vis)
    assert torch.allclose(out.diagonal(), torch.zeros(3, dtype=x.dtype), atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(xr.grad).all()


def test_empty_inputs():
    x, y, vx, vy = rand_parts(0, 3, 2)
    assert partdist.part_dist(x, y, vx, vy).shape == (0, 3)
    x, y, vx, vy = rand_parts(2, 0, 2)
    assert partdist.part_dist(x, y, vx, vy).shape == (2, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision(dtype):
    x, y, vx, vy = rand_parts(6, 5, 3, C=16, dtype=torch.float32)
    out = partdist.part_dist(x.to(dtype), y.to(dtype), vx, vy)
    assert out.dtype == dtype
    ref = partdist.part_dist(x.to(dtype).float(), y.to(dtype).float(), vx, vy)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("chunk", [None, 3])
def test_gradcheck_features(chunk):
    x, y, vx, vy = rand_parts(4, 5, 3, C=5)
    x.requires_grad_()
    y.requires_grad_()
    assert gradcheck(lambda a, b: partdist.part_dist(a, b, vx, vy, chunk_size=chunk, empty_value=0.0), (x, y))


def test_gradcheck_float_visibilities():
    x, y, vx, vy = rand_parts(3, 4, 3, C=4, vis="float")
    vx = (vx * 0.8 + 0.1).requires_grad_()  # away from 0, where the set of parts changes
    vy = (vy * 0.8 + 0.1).requires_grad_()
    x.requires_grad_()
    y.requires_grad_()
    assert gradcheck(lambda a, b, c, d: partdist.part_dist(a, b, c, d, empty_value=3.0), (x, y, vx, vy))


def test_grad_matches_reference_autograd():
    x, y, vx, vy = rand_parts(4, 3, 4, C=6, vis="float")
    vx[0] = 0  # an image with no visible part: an empty row
    args = [t.clone().requires_grad_() for t in (x, y, vx, vy)]
    ref_args = [t.clone().requires_grad_() for t in (x, y, vx, vy)]
    g = torch.randn(4, 3, dtype=torch.float64)
    out = partdist.part_dist(*args, empty_value=2.0)
    ref = R.part_dist_loop(*ref_args, empty_value=2.0)
    torch.testing.assert_close(out, ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for a, r in zip(args, ref_args):
        torch.testing.assert_close(a.grad, r.grad)


def test_no_vis_grad_when_not_required():
    x, y, vx, vy = rand_parts(3, 3, 2, vis="float")
    xr = x.clone().requires_grad_()
    partdist.part_dist(xr, y, vx, vy).sum().backward()
    assert vx.grad is None and xr.grad is not None


def test_opcheck():
    x, y, vx, vy = rand_parts(3, 4, 3, vis="float")
    x.requires_grad_()
    y.requires_grad_()
    torch.library.opcheck(torch.ops.partdist.part_dist, (x, y, vx, vy, math.inf, 0))
    torch.library.opcheck(torch.ops.partdist.part_dist, (x, y, vx, vy, 1.0, 2))
    g = torch.randn(3, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.partdist.part_dist_backward, (g, x.detach(), y.detach(), vx, vy, 1.0, 0, True))


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_python():
    x, y, vx, vy = rand_parts(3, 4, 2)
    f = partdist.part_dist
    with pytest.raises(ValueError, match="x must be a 3-D tensor"):
        f(x[0], y, vx, vy)
    with pytest.raises(ValueError, match="same number of parts"):
        f(x, y[:, :1], vx, vy)
    with pytest.raises(ValueError, match="same number of parts"):
        f(x, y[..., :3], vx, vy)
    with pytest.raises(TypeError, match="same dtype"):
        f(x, y.float(), vx, vy)
    with pytest.raises(ValueError, match=r"vis_x must have shape \[M, P\] = \[3, 2\]"):
        f(x, y, vx[:2], vy)
    with pytest.raises(ValueError, match=r"vis_y must have shape \[N, P\]"):
        f(x, y, vx, vy.T)
    with pytest.raises(TypeError, match="vis_x must be a bool or floating-point"):
        f(x, y, vx.long(), vy)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        f(x.long(), y.long(), vx, vy)
    with pytest.raises(ValueError, match="empty_value"):
        f(x, y, vx, vy, empty_value=float("nan"))
    with pytest.raises(ValueError, match="chunk_size"):
        f(x, y, vx, vy, chunk_size=-2)
    with pytest.raises(ValueError, match="at least one part"):
        f(x[:, :0], y[:, :0], vx[:, :0], vy[:, :0])


def test_bad_inputs_op():
    x, y, vx, vy = rand_parts(3, 4, 2)
    op = torch.ops.partdist.part_dist
    vx, vy = vx.double(), vy.double()
    with pytest.raises(RuntimeError, match=r"vis_x must have shape \[M, P\]"):
        op(x, y, vx[:1], vy, 1.0, 0)
    with pytest.raises(RuntimeError, match="vis_y must have the same dtype as x"):
        op(x, y, vx, vy.float(), 1.0, 0)
    with pytest.raises(RuntimeError, match="chunk_size"):
        op(x, y, vx, vy, 1.0, -1)
    with pytest.raises(RuntimeError, match="same number of parts"):
        op(x, y[:, :1], vx, vy[:, :1], 1.0, 0)
    with pytest.raises(RuntimeError, match=r"grad must have shape \[M, N\]"):
        torch.ops.partdist.part_dist_backward(torch.zeros(2, 2, dtype=x.dtype), x, y, vx, vy, 1.0, 0, True)


# ---------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    x, y, vx, vy = rand_parts(37, 29, 5, C=16, dtype=dtype, vis="float")
    vx[0] = 0
    cpu = partdist.part_dist(x, y, vx, vy)
    gpu = partdist.part_dist(x.cuda(), y.cuda(), vx.cuda(), vy.cuda(), chunk_size=100)
    torch.testing.assert_close(gpu.cpu(), cpu, **tol(dtype))
    args = [t.clone().requires_grad_() for t in (x, y, vx, vy)]
    cargs = [t.cuda().requires_grad_() for t in (x, y, vx, vy)]
    g = torch.randn(37, 29, dtype=dtype)
    (partdist.part_dist(*args, empty_value=1.0) * g).sum().backward()
    (partdist.part_dist(*cargs, empty_value=1.0) * g.cuda()).sum().backward()
    for a, c in zip(args, cargs):
        torch.testing.assert_close(c.grad.cpu(), a.grad, **tol(dtype))


@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    x, y, vx, vy = rand_parts(3, 4, 3, C=4, device="cuda", vis="float")
    vx = (vx * 0.8 + 0.1).requires_grad_()
    vy = (vy * 0.8 + 0.1).requires_grad_()
    x.requires_grad_()
    y.requires_grad_()
    assert gradcheck(lambda a, b, c, d: partdist.part_dist(a, b, c, d, empty_value=0.0), (x, y, vx, vy))
    torch.library.opcheck(torch.ops.partdist.part_dist, (x, y, vx, vy, math.inf, 0))


@pytest.mark.cuda
def test_cuda_reduced_precision_and_devices():
    x, y, vx, vy = rand_parts(20, 9, 4, C=32, dtype=torch.float32, device="cuda")
    out = partdist.part_dist(x.half(), y.half(), vx, vy)
    ref = partdist.part_dist(x.half().float(), y.half().float(), vx, vy)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="same device"):
        partdist.part_dist(x, y.cpu(), vx, vy.cpu())
    with pytest.raises(ValueError, match="vis_x must be on the same device"):
        partdist.part_dist(x, y, vx.cpu(), vy)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    x, y, vx, vy = rand_parts(4, 3, 3, vis="float")

    def fn(a, b, c, d):
        return partdist.part_dist(a, b, c, d, empty_value=0.0).sum()

    args = [t.clone().requires_grad_() for t in (x, y, vx, vy)]
    ref_args = [t.clone().requires_grad_() for t in (x, y, vx, vy)]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    compiled(*args).backward()
    fn(*ref_args).backward()
    for a, r in zip(args, ref_args):
        torch.testing.assert_close(a.grad, r.grad)
