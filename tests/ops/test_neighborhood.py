"""Tests of partdist.neighborhood_diff / cross_neighborhood_diff (IDLA)."""

import math

import pytest
import torch

import partdist
from partdist import reference as R
from partdist.ops.neighborhood import tiled_to_blocks

ops = torch.ops.partdist

# (B, C, H, W) shapes, H = 1 and W = 1 included, maps smaller than the neighborhood too.
SHAPES = [(2, 3, 4, 5), (1, 1, 1, 1), (2, 2, 1, 6), (3, 2, 7, 1), (1, 4, 2, 3), (2, 1, 9, 4)]
KS = [1, 3, 5]


def rand(shape, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)


def pair(shape, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    f = rand(shape, dtype, device, seed).requires_grad_(requires_grad)
    g = rand(shape, dtype, device, seed + 1).requires_grad_(requires_grad)
    return f, g


# --------------------------------------------------------------------- values
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_match_loop_reference(shape, k, dtype):
    f, g = pair(shape, dtype, seed=sum(shape) + k)
    out = partdist.neighborhood_diff(f, g, k)
    B, C, H, W = shape
    assert out.shape == (B, C, H * k, W * k) and out.dtype == dtype and out.is_contiguous()
    # One subtraction per cell (or a copy of f): bit-exact.
    assert torch.equal(out, R.neighborhood_diff_loop(f, g, k))


def test_value_definition_by_hand():
    # 1 x 1 map, k = 3: the centre cell reads g, the 8 others read zero padding.
    f = torch.tensor([[[[5.0]]]])
    g = torch.tensor([[[[2.0]]]])
    out = partdist.neighborhood_diff(f, g, 3)
    expected = torch.full((1, 1, 3, 3), 5.0)
    expected[0, 0, 1, 1] = 3.0
    assert torch.equal(out, expected)
    # 1 x 2 map, k = 3: block (0, 0) row u = 1 reads g(0, -1), g(0, 0), g(0, 1).
    f = torch.tensor([[[[10.0, 20.0]]]])
    g = torch.tensor([[[[1.0, 2.0]]]])
    out = partdist.neighborhood_diff(f, g, 3)[0, 0]
    assert out[1, :3].tolist() == [10.0, 9.0, 8.0]
    assert out[1, 3:].tolist() == [19.0, 18.0, 20.0]
    assert out[0].tolist() == [10.0] * 3 + [20.0] * 3


@pytest.mark.parametrize("k", KS)
def test_pytorch_references_agree(k):
    f, g = pair((2, 3, 5, 4), seed=k)
    ref = R.neighborhood_diff_loop(f, g, k)
    for fn in (R.neighborhood_diff_unfold, R.neighborhood_diff_slice, R.neighborhood_diff_expand):
        assert torch.equal(fn(f, g, k), ref), fn.__name__


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])  # 9: the generic (runtime k) kernels
def test_larger_and_generic_kernel_sizes(k):
    f, g = pair((2, 3, 6, 5), torch.float32, seed=k)
    assert torch.equal(partdist.neighborhood_diff(f, g, k), R.neighborhood_diff_loop(f, g, k))
    fd, gd = pair((1, 2, 4, 3), seed=k, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: partdist.neighborhood_diff(a, b, k), (fd, gd))


def test_noncontiguous_inputs():
    base_f, base_g = pair((2, 3, 6, 5), seed=3)
    f, g = base_f.transpose(2, 3), base_g.transpose(2, 3)  # [2, 3, 5, 6], non-contiguous
    assert not f.is_contiguous()
    assert torch.equal(partdist.neighborhood_diff(f, g, 3), R.neighborhood_diff_loop(f, g, 3))


def test_empty_tensors():
    for shape in [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)]:
        f, g = pair(shape, requires_grad=True)
        out = partdist.neighborhood_diff(f, g, 3)
        assert out.shape == (shape[0], shape[1], shape[2] * 3, shape[3] * 3)
        out.sum().backward()
        assert f.grad.shape == f.shape and g.grad.shape == g.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cpu(dtype):
    f, g = pair((2, 3, 4, 5), dtype, seed=7, requires_grad=True)
    out = partdist.neighborhood_diff(f, g, 5)
    assert out.dtype == dtype
    ref = R.neighborhood_diff_loop(f.detach().float(), g.detach().float(), 5).to(dtype)
    assert torch.equal(out, ref)  # computed in float32, rounded once
    go = rand(out.shape, dtype, seed=8)
    gf, gg = torch.autograd.grad(out, (f, g), go)
    f32, g32 = f.detach().float().requires_grad_(), g.detach().float().requires_grad_()
    rf, rg = torch.autograd.grad(R.neighborhood_diff_loop(f32, g32, 5), (f32, g32), go.float())
    tol = dict(rtol=1e-2, atol=5e-2) if dtype == torch.float16 else dict(rtol=2e-2, atol=2e-1)
    torch.testing.assert_close(gf.float(), rf, **tol)
    torch.testing.assert_close(gg.float(), rg, **tol)


def test_nan_propagates():
    f, g = pair((1, 1, 5, 6), seed=1)
    f[0, 0, 2, 3] = float("nan")
    g[0, 0, 0, 0] = float("nan")
    k, r = 3, 1
    out = partdist.neighborhood_diff(f, g, k)[0, 0]
    expect = torch.zeros(15, 18, dtype=torch.bool)
    expect[2 * k : 3 * k, 3 * k : 4 * k] = True  # the block of f(2, 3)
    for y in range(5):
        for x in range(6):
            for u in range(k):
                for v in range(k):
                    if (y + u - r, x + v - r) == (0, 0):
                        expect[y * k + u, x * k + v] = True  # cells reading g(0, 0)
    assert torch.equal(out.isnan(), expect)
    go = torch.ones(1, 1, 15, 18, dtype=torch.float64)
    go[0, 0, 4, 4] = float("nan")  # block (1, 1), offset (1, 1): reads g(1, 1)
    gf, gg = ops.neighborhood_diff_backward(go, k)
    assert gf.isnan().nonzero().tolist() == [[0, 0, 1, 1]]
    assert gg.isnan().nonzero().tolist() == [[0, 0, 1, 1]]


# ------------------------------------------------------------------- gradients
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("shape", [(1, 2, 3, 4), (1, 1, 1, 1), (2, 1, 1, 3), (1, 2, 4, 1)])
def test_gradcheck(shape, k):
    f, g = pair(shape, seed=k, requires_grad=True)
    fn = lambda a, b: partdist.neighborhood_diff(a, b, k)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f, g))
    assert torch.autograd.gradgradcheck(fn, (f, g))


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_autograd_of_reference(shape, k):
    f, g = pair(shape, seed=2 * k, requires_grad=True)
    out = partdist.neighborhood_diff(f, g, k)
    go = rand(out.shape, seed=99)
    gf, gg = torch.autograd.grad(out, (f, g), go)
    rf, rg = torch.autograd.grad(R.neighborhood_diff_loop(f, g, k), (f, g), go)
    torch.testing.assert_close(gf, rf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gg, rg, rtol=1e-12, atol=1e-12)


def test_backward_with_strided_and_expanded_grads():
    f, g = pair((2, 3, 4, 5), seed=5, requires_grad=True)
    out = partdist.neighborhood_diff(f, g, 3)
    # sum(): the incoming gradient is an expanded scalar (all strides 0).
    gf, gg = torch.autograd.grad(out.sum(), (f, g))
    torch.testing.assert_close(gf, torch.full_like(f, 9.0))
    rf, rg = torch.autograd.grad(R.neighborhood_diff_expand(f, g, 3).sum(), (f, g))
    torch.testing.assert_close(gg, rg)
    # A transposed incoming gradient (W*k dim not unit stride).
    go_t = rand((2, 3, 15, 12), seed=6).transpose(2, 3)
    a = ops.neighborhood_diff_backward(go_t, 3)
    b = ops.neighborhood_diff_backward(go_t.contiguous(), 3)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_backward_op_is_adjoint_of_forward():
    # <K(f, g), G> = <f, dF> + <g, dG> for the linear map K: checks both gathers at once.
    f, g = pair((2, 3, 5, 4), seed=11)
    G = rand((2, 3, 15, 12), seed=12)
    dF, dG = ops.neighborhood_diff_backward(G, 3)
    lhs = (partdist.neighborhood_diff(f, g, 3) * G).sum()
    assert math.isclose(lhs.item(), ((f * dF).sum() + (g * dG).sum()).item(), rel_tol=1e-12)


# --------------------------------------------------------------- layout option
def test_blocks_layout():
    f, g = pair((2, 3, 4, 5), seed=4, requires_grad=True)
    tiled = partdist.neighborhood_diff(f, g, 3)
    blocks = partdist.neighborhood_diff(f, g, 3, layout="blocks")
    assert blocks.shape == (2, 3, 4, 5, 3, 3)
    assert torch.equal(blocks, tiled_to_blocks(tiled, 3))
    # [b, c, y, x, u, v] = f(y, x) - g(y + u - 1, x + v - 1)
    assert blocks[1, 2, 2, 3, 0, 2].item() == (f[1, 2, 2, 3] - g[1, 2, 1, 4]).item()
    assert blocks[0, 0, 0, 0, 0, 0].item() == f[0, 0, 0, 0].item()  # reads padding
    # It is a view: same storage as a tiled result, no copy.
    assert blocks._base is not None
    go = rand(blocks.shape, seed=9)
    gf, gg = torch.autograd.grad(blocks, (f, g), go)
    rf, rg = torch.autograd.grad(tiled, (f, g), go.permute(0, 1, 2, 4, 3, 5).reshape(tiled.shape))
    torch.testing.assert_close((gf, gg), (rf, rg), rtol=1e-12, atol=1e-12)


def test_cross_neighborhood_diff():
    f, g = pair((2, 3, 4, 5), seed=21, requires_grad=True)
    K, Kp = partdist.cross_neighborhood_diff(f, g, 5)
    assert torch.equal(K, R.neighborhood_diff_loop(f, g, 5))
    assert torch.equal(Kp, R.neighborhood_diff_loop(g, f, 5))
    Kb, Kpb = partdist.cross_neighborhood_diff(f, g, 5, layout="blocks")
    assert Kb.shape == Kpb.shape == (2, 3, 4, 5, 5, 5)
    go1, go2 = rand(K.shape, seed=1), rand(K.shape, seed=2)
    got = torch.autograd.grad((K * go1).sum() + (Kp * go2).sum(), (f, g))
    rK, rKp = R.cross_neighborhood_diff(f, g, 5)
    ref = torch.autograd.grad((rK * go1).sum() + (rKp * go2).sum(), (f, g))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


# -------------------------------------------------------- torch.library checks
@pytest.mark.parametrize("k", [1, pytest.param(3, marks=pytest.mark.slow), pytest.param(5, marks=pytest.mark.slow)])
def test_opcheck(k):
    f, g = pair((2, 3, 4, 5), seed=k, requires_grad=True)
    torch.library.opcheck(ops.neighborhood_diff.default, (f, g, k))
    go = rand((2, 3, 4 * k, 5 * k), seed=k).requires_grad_(True)
    torch.library.opcheck(ops.neighborhood_diff_backward.default, (go, k))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    def fn(f, g):
        K, Kp = partdist.cross_neighborhood_diff(f, g, 3)
        return torch.relu(K).sum() + (Kp * 2).mean()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    f, g = pair((2, 3, 4, 5), seed=31, requires_grad=True)
    out = compiled(f, g)
    gf, gg = torch.autograd.grad(out, (f, g))
    ref = fn(f, g)
    rf, rg = torch.autograd.grad(ref, (f, g))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close((gf, gg), (rf, rg))


# ----------------------------------------------------------------- bad inputs
def _raises(exc, match, *args, **kwargs):
    with pytest.raises(exc, match=match):
        partdist.neighborhood_diff(*args, **kwargs)
    with pytest.raises(exc, match=match.replace("neighborhood_diff", "cross_neighborhood_diff")):
        partdist.cross_neighborhood_diff(*args, **kwargs)


def test_bad_kernel_size():
    f, g = pair((1, 2, 3, 4))
    for k in (2, 4, 0, -1, -3):
        _raises(ValueError, r"neighborhood_diff: kernel_size must be an odd int >= 1, got " + str(k), f, g, k)
    for k in (3.0, "3", None, True):
        _raises(TypeError, r"neighborhood_diff: kernel_size must be an odd int >= 1", f, g, k)


def test_bad_shapes():
    f, g = pair((1, 2, 3, 4))
    _raises(ValueError, r"neighborhood_diff: f and g must have the same shape \[B, C, H, W\], got f "
            r"\[1, 2, 3, 4\] and g \[1, 2, 4, 3\]", f, g.transpose(2, 3), 3)
    _raises(ValueError, r"neighborhood_diff: f must be a 4-D tensor \[B, C, H, W\], got shape \[2, 3, 4\]",
            f[0], g, 3)
    _raises(ValueError, r"neighborhood_diff: g must be a 4-D tensor \[B, C, H, W\], got shape \[1, 1, 2, 3, 4\]",
            f, g[None], 3)


def test_bad_dtypes_and_types():
    f, g = pair((1, 2, 3, 4))
    _raises(TypeError, r"neighborhood_diff: f must be a floating-point tensor .* got dtype torch.int64",
            f.long(), g.long(), 3)
    _raises(TypeError, r"neighborhood_diff: g must be a floating-point tensor .* got dtype torch.int32",
            f, g.int(), 3)
    _raises(TypeError, r"neighborhood_diff: g must have the same dtype as f \(torch.float64\), got torch.float32",
            f, g.float(), 3)
    _raises(TypeError, r"neighborhood_diff: f must be a torch.Tensor, got list", [1.0], g, 3)
    with pytest.raises(ValueError, match=r"layout must be 'tiled' or 'blocks', got 'nchw'"):
        partdist.neighborhood_diff(f, g, 3, layout="nchw")


def test_mixed_devices():
    f, g = pair((1, 2, 3, 4))
    other = torch.empty(g.shape, dtype=g.dtype, device="meta")
    _raises(ValueError, r"neighborhood_diff: g must be on the same device as f \(cpu\), got meta", f, other, 3)


@pytest.mark.cuda
def test_mixed_devices_cuda():
    f, g = pair((1, 2, 3, 4))
    _raises(ValueError, r"g must be on the same device as f \(cpu\), got cuda", f, g.cuda(), 3)


def test_cpp_op_checks():
    # Direct calls of torch.ops.partdist.* bypass the Python checks: the C++ ones
    # must still refuse (RuntimeError) instead of reading out of bounds.
    f, g = pair((1, 2, 3, 4))
    with pytest.raises(RuntimeError, match="kernel_size must be an odd integer >= 1, got 4"):
        ops.neighborhood_diff(f, g, 4)
    with pytest.raises(RuntimeError, match="f and g must have the same shape"):
        ops.neighborhood_diff(f, g[:, :1], 3)
    with pytest.raises(RuntimeError, match="must be a floating-point tensor"):
        ops.neighborhood_diff(f.long(), g.long(), 3)
    with pytest.raises(RuntimeError, match=r"grad must have shape \[B, C, H\*k, W\*k\]"):
        ops.neighborhood_diff_backward(torch.zeros(1, 2, 7, 9), 3)
    with pytest.raises(RuntimeError, match="kernel_size must be an odd integer"):
        ops.neighborhood_diff_backward(torch.zeros(1, 2, 6, 8), 2)


# ------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 3, 5, 9])
def test_cuda_matches_cpu(dtype, k):
    f, g = pair((3, 4, 7, 5), dtype, seed=k)
    out = partdist.neighborhood_diff(f.cuda(), g.cuda(), k)
    assert torch.equal(out.cpu(), partdist.neighborhood_diff(f, g, k))
    go = rand(out.shape, dtype, seed=k + 1)
    got = ops.neighborhood_diff_backward(go.cuda(), k)
    ref = ops.neighborhood_diff_backward(go, k)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.cpu().float(), b.float(), rtol=tol, atol=tol * 10)
    # strided incoming gradient
    go_t = rand((3, 4, 5 * k, 7 * k), dtype, seed=k).transpose(2, 3)
    for a, b in zip(ops.neighborhood_diff_backward(go_t.cuda(), k), ops.neighborhood_diff_backward(go_t, k)):
        torch.testing.assert_close(a.cpu().float(), b.float(), rtol=tol, atol=tol * 10)


@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    f, g = pair((2, 2, 3, 4), device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: partdist.neighborhood_diff(a, b, 3), (f, g))
    torch.library.opcheck(ops.neighborhood_diff.default, (f, g, 3))
    torch.library.opcheck(ops.neighborhood_diff_backward.default, (rand((2, 2, 9, 12), device="cuda"), 3))
