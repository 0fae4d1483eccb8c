"""The reduced-precision mode of the all-pairs ops (``gemm_dtype``): float32 features rounded once
to float16 / bfloat16, then the float32 computation on the rounded values (norms included), on
the CPU kernels and on the CUDA code path run by the emulation (``partdist_cuda_emulated``, whose
GEMMs take the half operands as the CUDA backend does), under the conditions users meet it:
permuted features, torch.compile, autocast, feature distributions of several kinds, and the
error bound of the docstrings against a float64 truth."""

import math

import pytest
import torch

import partdist

CPU = torch.ops.partdist
EMU = torch.ops.partdist_cuda_emulated
HALVES = [torch.float16, torch.bfloat16]
U = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def feats(kind, M, N, m, C, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g)

    if kind == "gauss":
        return r(M, m, C), r(N, m, C)
    if kind == "relu":  # pooled post-ReLU stripes, unsaturated cells
        return r(M, m, C).abs() * 0.1, r(N, m, C).abs() * 0.1
    if kind == "unit":
        x, y = r(M, m, C), r(N, m, C)
        return x / x.norm(dim=-1, keepdim=True), y / y.norm(dim=-1, keepdim=True)
    if kind == "large":
        return r(M, m, C) * 30, r(N, m, C) * 30
    assert kind == "near-dup"  # gallery image b = query b, slightly moved (distances near 0)
    x = r(M, m, C)
    return x, torch.cat([x + 1e-3 * r(M, m, C), x])[:N]


KINDS = ["gauss", "relu", "unit", "large", "near-dup"]


def rounded(t, dt):
    return t.to(dt).float()


def close32(a, b, slack=0.0):
    """Equal up to float32 rounding; ``slack``: the float32 computation's own error on these
    inputs (near duplicates: |a|^2 + |b|^2 - 2 a.b cancels, and the kernels' summation orders
    differ, e.g. the CPU's bfloat16 kernel sums channel pairs)."""
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 + 2 * float(slack))


def f32_error(x, y, **kw):
    """The largest error of local_dist's float32 computation against float64 on x, y."""
    return (partdist.local_dist(x, y, **kw).double() - partdist.local_dist(x.double(), y.double(), **kw)).abs().max()


@pytest.mark.parametrize("dt", HALVES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_local_dist_is_float32_on_rounded_features(kind, dt):
    """The mode's value and gradients are the float32 computation on the rounded features (the
    norms from the rounded values: near-dup pairs would be off by ~0.25 per stripe otherwise),
    in float32, on the CPU kernels and on the emulated CUDA path; and the rounding shows (the
    comparison would fail if gemm_dtype were ignored)."""
    x, y = feats(kind, 5, 7, 6, 40)
    xr, yr = rounded(x, dt), rounded(y, dt)
    ref = partdist.local_dist(xr, yr)
    slack = f32_error(xr, yr)
    for ops in (CPU, EMU):
        for gamma, band in [(0.0, -1.0), (0.3, 2.0)]:
            got = ops.local_dist(x, y, True, 0, gamma, band, False, dt)
            assert got.dtype == torch.float32
            close32(got, ops.local_dist(xr, yr, True, 0, gamma, band, False, None), slack)
    out = partdist.local_dist(x, y, gemm_dtype=dt)
    close32(out, ref, slack)
    # the rounding is not ignored (unnormalized: saturated cells would hide it)
    raw = partdist.local_dist(x, y, normalize=False, gemm_dtype=dt)
    close32(raw, partdist.local_dist(xr, yr, normalize=False), f32_error(xr, yr, normalize=False))
    assert (raw - partdist.local_dist(x, y, normalize=False)).abs().max() > 1e-5 * raw.abs().max()
    g = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))
    for ops in (CPU, EMU):
        gx, gy = ops.local_dist_backward(g, x, y, True, 2, 0.0, -1.0, False, dt)
        rx, ry = ops.local_dist_backward(g, xr, yr, True, 2, 0.0, -1.0, False, None)
        assert gx.dtype == gy.dtype == torch.float32
        close32(gx, rx)
        close32(gy, ry)


@pytest.mark.parametrize("dt", HALVES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_error_within_the_documented_bound(kind, dt):
    """|D - D_float64| <= (m + n - 1) * max_ij 0.5 u (|x_i| + |y_j|) for local_dist (normalized
    cells) and max_p u (|x_p| + |y_p|) for part_dist, plus the float32 default's own error
    (float32 arithmetic, which the mode keeps)."""
    x, y = feats(kind, 12, 20, 8, 64, seed=1)
    x64, y64 = x.double(), y.double()
    nx, ny = x64.norm(dim=-1), y64.norm(dim=-1)
    bound = 15 * 0.5 * U[dt] * (nx.amax(-1)[:, None] + ny.amax(-1)[None, :])
    truth = partdist.local_dist(x64, y64)
    f32 = (partdist.local_dist(x, y).double() - truth).abs()
    err = (partdist.local_dist(x, y, gemm_dtype=dt).double() - truth).abs()
    assert (err <= bound + 2 * f32 + 1e-6).all()
    v = torch.ones(12, 8)
    w = torch.ones(20, 8)
    pbound = U[dt] * (nx[:, None, :] + ny[None, :, :]).amax(-1)
    ptruth = partdist.part_dist(x64, y64, v.double(), w.double())
    p32 = (partdist.part_dist(x, y, v, w).double() - ptruth).abs()
    perr = (partdist.part_dist(x, y, v, w, gemm_dtype=dt).double() - ptruth).abs()
    assert (perr <= pbound + 2 * p32 + 1e-6).all()


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_part_dist_is_float32_on_rounded_features(dt):
    x, y = feats("unit", 6, 9, 4, 24, seed=2)
    g = torch.Generator().manual_seed(4)
    vx, vy = torch.rand(6, 4, generator=g), (torch.rand(9, 4, generator=g) > 0.3).float()
    xr, yr = rounded(x, dt), rounded(y, dt)
    for ops in (CPU, EMU):
        close32(ops.part_dist(x, y, vx, vy, math.inf, 0, dt), ops.part_dist(xr, yr, vx, vy, math.inf, 0, None))
        gd = torch.randn(6, 9, generator=g)
        got = ops.part_dist_backward(gd, x, y, vx, vy, 1.0, 5, True, dt)
        want = ops.part_dist_backward(gd, xr, yr, vx, vy, 1.0, 5, True, None)
        for a, b in zip(got, want):
            assert a.dtype == torch.float32
            close32(a, b)
    # autograd through the public function: float32 gradients of the rounded features
    xa, ya, va = x.clone().requires_grad_(), y.clone().requires_grad_(), vx.clone().requires_grad_()
    partdist.part_dist(xa, ya, va, vy, empty_value=2.0, gemm_dtype=dt).sum().backward()
    xb, yb, vb = xr.clone().requires_grad_(), yr.clone().requires_grad_(), vx.clone().requires_grad_()
    partdist.part_dist(xb, yb, vb, vy, empty_value=2.0).sum().backward()
    for a, b in [(xa, xb), (ya, yb), (va, vb)]:
        assert a.grad.dtype == torch.float32
        close32(a.grad, b.grad)


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_autograd_permuted_inputs_and_identical_features(dt):
    """Features as a model hands them over (permuted); identical query and gallery features
    stay at distance ~0 (the norms come from the rounded values)."""
    base = torch.randn(4, 64, 8, generator=torch.Generator().manual_seed(5))
    x = base.permute(0, 2, 1).requires_grad_()  # [4, 8, 64], non-contiguous
    y = base.permute(0, 2, 1).detach().clone().requires_grad_()
    d = partdist.local_dist(x, y, gemm_dtype=dt)
    assert d.dtype == torch.float32
    xr = rounded(x.detach(), dt).requires_grad_()
    yr = rounded(y.detach(), dt).requires_grad_()
    ref = partdist.local_dist(xr, yr)
    close32(d, ref, f32_error(xr.detach(), yr.detach()))
    # identical features: only the path's off-diagonal cells count (DMLI steps right or down)
    dd = partdist.unaligned_dist(x.detach(), y.detach(), all_pairs=True, gemm_dtype=dt).diagonal()
    # float32 cancellation leaves ~0.006 here (as in the default mode); norms of the unrounded
    # features would leave |x|^2 - |x_r|^2 ~ 2^-11 |x|^2: ~0.25 per stripe, ~1 in all
    assert dd.abs().max() < 0.05
    assert dd.abs().max() < 4 * partdist.unaligned_dist(x.detach(), y.detach(), all_pairs=True).diagonal().max() + 1e-3
    (d * torch.arange(16.0).view(4, 4)).sum().backward()
    (ref * torch.arange(16.0).view(4, 4)).sum().backward()
    assert x.grad.dtype == torch.float32
    close32(x.grad, xr.grad)
    close32(y.grad, yr.grad)


@pytest.mark.slow
def test_compile_and_autocast():
    x, y = feats("unit", 5, 6, 4, 32, seed=6)

    def f(a, b):
        return partdist.local_dist(a, b, gemm_dtype=torch.bfloat16) + partdist.part_dist(
            a, b, torch.ones(5, 4), torch.ones(6, 4), gemm_dtype=torch.float16)

    eager = f(x, y)
    compiled = torch.compile(f, fullgraph=True)(x, y)  # the default backend (inductor)
    close32(compiled, eager)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = partdist.local_dist(x, y, gemm_dtype=torch.float16)
    assert out.dtype == torch.float32
    close32(out, partdist.local_dist(x, y, gemm_dtype=torch.float16))


@pytest.mark.slow
def test_opcheck_with_gemm_dtype():
    x, y = feats("unit", 3, 4, 3, 8, seed=7)
    v, w = torch.ones(3, 3), torch.ones(4, 3)
    ops = torch.ops.partdist
    for dt in HALVES:
        torch.library.opcheck(ops.local_dist.default, (x, y, True, 0, 0.0, -1.0, False, dt))
        torch.library.opcheck(ops.local_dist_backward.default,
                              (torch.rand(3, 4), x, y, True, 0, 0.0, -1.0, False, dt))
        torch.library.opcheck(ops.part_dist.default, (x, y, v, w, 1.0, 0, dt))


def test_half_features_with_their_own_gemm_dtype_are_unchanged():
    x, y = feats("unit", 3, 4, 3, 8, seed=8)
    for dt in HALVES:
        a, b = x.to(dt), y.to(dt)
        out = partdist.local_dist(a, b, gemm_dtype=dt)
        assert out.dtype == dt
        assert torch.equal(out, partdist.local_dist(a, b))


def test_bad_gemm_dtype_names_the_argument():
    x, y = feats("unit", 3, 4, 3, 8)
    v, w = torch.ones(3, 3), torch.ones(4, 3)
    with pytest.raises(TypeError, match="gemm_dtype must be torch.float16, torch.bfloat16 or None"):
        partdist.local_dist(x, y, gemm_dtype=torch.float64)
    with pytest.raises(TypeError, match="gemm_dtype must be"):
        partdist.part_dist(x, y, v, w, gemm_dtype="float16")
    with pytest.raises(TypeError, match="gemm_dtype rounds float32 features; x and y are torch.float64"):
        partdist.local_dist(x.double(), y.double(), gemm_dtype=torch.float16)
    with pytest.raises(TypeError, match="gemm_dtype rounds float32 features"):
        partdist.part_dist(x.half(), y.half(), v.half(), w.half(), gemm_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="gemm_dtype applies to all pairs"):
        partdist.unaligned_dist(x, x, gemm_dtype=torch.float16)
    # the compiled ops check too (called directly)
    with pytest.raises(RuntimeError, match="gemm_dtype must be torch.float16"):
        CPU.local_dist(x, y, True, 0, 0.0, -1.0, False, torch.int32)
    with pytest.raises(RuntimeError, match="gemm_dtype rounds float32 features"):
        CPU.part_dist(x.double(), y.double(), v.double(), w.double(), 1.0, 0, torch.float16)


def test_float16_range_is_checked():
    """A value float16 cannot hold raises (naming the argument and bfloat16), instead of an inf
    distance; bfloat16 takes it; infinite inputs stay the user's own (no error)."""
    x, y = feats("unit", 3, 4, 3, 8)
    big = y.clone()
    big[1, 2, 3] = 7e4
    with pytest.raises(RuntimeError, match=r"y has values beyond float16's range.*bfloat16"):
        partdist.local_dist(x, big, gemm_dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"x has values beyond float16's range"):
        partdist.part_dist(big, x, torch.ones(4, 3), torch.ones(3, 3), gemm_dtype=torch.float16)
    assert torch.isfinite(partdist.local_dist(x, big, gemm_dtype=torch.bfloat16)).all()
    inf = y.clone()
    inf[0, 0, 0] = math.inf
    d = partdist.local_dist(x, inf, gemm_dtype=torch.float16)
    ref = partdist.local_dist(rounded(x, torch.float16), rounded(inf, torch.float16))
    torch.testing.assert_close(d, ref, equal_nan=True)
