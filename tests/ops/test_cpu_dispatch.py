"""CPU kernels compiled per instruction set and picked at run time (csrc/common/cpu_isa.h):
every level this CPU runs gives the values of the float64 kernels, at the sizes around its
SIMD blocks, with every DP variant it serves, NaN and non-contiguous inputs."""

import pytest
import torch

import partdist

LEVELS = ["generic", "generic16", "avx2", "avx512", "avx512bf16"]


def runnable_levels():
    ops = torch.ops.partdist
    current = ops._cpu_isa("")
    out = []
    for level in LEVELS:
        try:
            ops._cpu_isa(level)
        except RuntimeError:
            continue
        out.append(level)
    ops._cpu_isa(current)
    return out


RUNNABLE = runnable_levels()


@pytest.fixture(params=RUNNABLE)
def level(request):
    ops = torch.ops.partdist
    prev = ops._cpu_isa(request.param)
    assert ops._cpu_isa("") == request.param
    yield request.param
    ops._cpu_isa(prev)


def rand(M, N, m, n, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(M, m, C, generator=g), torch.randn(N, n, C, generator=g)


def expected(x, y, **kw):
    """float64 kernels (not the float32 SIMD path) on the float32 inputs."""
    return partdist.local_dist(x.double(), y.double(), **kw).float()


@pytest.mark.parametrize("M,N", [(1, 1), (3, 7), (2, 8), (5, 9), (4, 16), (3, 17), (33, 70)])
@pytest.mark.parametrize("m,n", [(8, 8), (6, 5), (1, 4), (11, 3), (17, 9)])
def test_local_dist_levels_match_float64(level, M, N, m, n):
    x, y = rand(M, N, m, n, 24, seed=M * 100 + N)
    for kw in ({}, {"normalize": False}, {"band": 1.0}):
        out = partdist.local_dist(x, y, **kw)
        assert out.shape == (M, N) and out.dtype == torch.float32
        torch.testing.assert_close(out, expected(x, y, **kw), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("M,N", [(1, 1), (3, 7), (5, 33), (33, 70)])
@pytest.mark.parametrize("m,n", [(8, 8), (6, 5), (17, 9)])
def test_bfloat16_all_pairs_levels_match_float64(level, M, N, m, n):
    """bfloat16 values (bfloat16 features, or float32 ones with gemm_dtype=torch.bfloat16) take
    the level's bfloat16 all-pairs kernel where it has one (avx512bf16: vdpbf16ps; generic16:
    the same in GCC vectors, on any CPU): channel pairs, an odd C's last channel alone, blocks
    of second images, band and unnormalized cells, against float64 on the rounded values."""
    for C in (1, 3, 24, 130):
        x, y = rand(M, N, m, n, C, seed=M * 7 + C)
        xr, yr = x.bfloat16(), y.bfloat16()
        for kw in ({}, {"normalize": False}, {"band": 1.0}):
            ref = partdist.local_dist(xr.double(), yr.double(), **kw)
            out = partdist.local_dist(x, y, gemm_dtype=torch.bfloat16, **kw)
            torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
            half = partdist.local_dist(xr, yr, **kw)  # bfloat16 out: the float32 result rounded once
            assert half.dtype == torch.bfloat16
            torch.testing.assert_close(half, out.bfloat16(), rtol=0, atol=0)


def test_local_dist_levels_channel_counts(level):
    for C in (1, 3, 128, 130):
        x, y = rand(5, 19, 8, 8, C, seed=C)
        torch.testing.assert_close(partdist.local_dist(x, y), expected(x, y), rtol=2e-5, atol=2e-5)


def test_local_dist_levels_nan_stays_in_its_pair(level):
    x, y = rand(4, 21, 8, 6, 16)
    clean = partdist.local_dist(x, y)
    xb, yb = x.clone(), y.clone()
    xb[2, 5, 3] = float("nan")
    yb[9, 0, 0] = float("nan")
    out = partdist.local_dist(xb, yb)
    assert out[2].isnan().all() and out[:, 9].isnan().all()
    keep_a, keep_b = torch.arange(4) != 2, torch.arange(21) != 9
    torch.testing.assert_close(out[keep_a][:, keep_b], clean[keep_a][:, keep_b], rtol=0, atol=0)


def test_local_dist_levels_non_contiguous_and_identical(level):
    x, y = rand(6, 13, 8, 8, 32)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not xt.is_contiguous()
    torch.testing.assert_close(partdist.local_dist(xt, y[::2]), expected(x, y[::2]), rtol=2e-5, atol=2e-5)
    # an image against itself: GEMM-form distances of identical stripes near 0, clamped
    # (rounding can make |a|^2 + |b|^2 - 2 a.b negative), never NaN
    same = partdist.local_dist(x, x)
    assert torch.isfinite(same).all()
    torch.testing.assert_close(same, expected(x, x), rtol=0, atol=5e-2)


def test_levels_agree_with_each_other():
    x, y = rand(7, 45, 8, 8, 64, seed=5)
    ops = torch.ops.partdist
    prev = ops._cpu_isa("")
    try:
        outs = {}
        for lv in RUNNABLE:
            ops._cpu_isa(lv)
            outs[lv] = partdist.local_dist(x, y)
    finally:
        ops._cpu_isa(prev)
    ref = outs[RUNNABLE[0]]
    for lv, o in outs.items():
        torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-5, msg=lambda s, lv=lv: f"level {lv}: {s}")


def test_cpu_isa_bad_requests():
    ops = torch.ops.partdist
    with pytest.raises(RuntimeError, match="unknown level 'sse9'"):
        ops._cpu_isa("sse9")
    for lv in LEVELS:
        if lv not in RUNNABLE:
            with pytest.raises(RuntimeError, match="cannot run"):
                ops._cpu_isa(lv)
    assert ops._cpu_isa("") in RUNNABLE


def grads_of(fn, x, y, gout):
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = fn(a, b)
    (out * gout).sum().backward()
    return out.detach(), a.grad, b.grad


@pytest.mark.parametrize("m,n", [(8, 8), (6, 5), (1, 4), (11, 3), (17, 9)])
@pytest.mark.parametrize("C", [5, 8, 13, 24, 130])
def test_training_ops_levels_match_float64(level, m, n, C):
    # The float32 aligned ops (batch_local_dist and local_dist_matrix, forward and
    # backward) take their dot products, their hard-minimum DP and their chain rule from
    # the level's kernels: channel counts around the vector widths (8, 16), pairs around
    # the DP's lanes (37: two blocks of 16 and part of a third), a zero in the incoming
    # gradient (a pair without gradient). The hard minimum's path may flip between
    # float32 and float64 at a near tie, so the reference gradient follows the float32
    # path: dL/dd from dmli (one pair at a time) on the level's float32 cells, then the
    # float64 chain rule through local_dist_matrix.
    x, y = rand(37, 37, m, n, C, seed=m * 1000 + n * 10 + C)
    gout = torch.rand(37, generator=torch.Generator().manual_seed(C)) * (torch.arange(37) % 7 != 3)
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    for kw in ({}, {"normalize": False}, {"band": 1.0}, {"gamma": 0.2}):
        normalize = kw.get("normalize", True)
        dp = {k: v for k, v in kw.items() if k != "normalize"}
        out, gx, gy = grads_of(lambda a, b: partdist.batch_local_dist(a, b, **kw), x, y, gout)
        torch.testing.assert_close(out, partdist.batch_local_dist(x64, y64, **kw).detach().float(),
                                   rtol=2e-5, atol=2e-5)
        d32 = partdist.local_dist_matrix(x, y, normalize).requires_grad_()
        (partdist.dmli(d32, **dp) * gout).sum().backward()
        rx, ry = torch.autograd.grad(partdist.local_dist_matrix(x64, y64, normalize), (x64, y64), d32.grad.double())
        torch.testing.assert_close(gx, rx.float(), rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(gy, ry.float(), rtol=1e-3, atol=1e-4)
        assert torch.equal(gx[3], torch.zeros_like(gx[3]))  # the pair without gradient
    gc = torch.randn(37, m, n, generator=torch.Generator().manual_seed(1))
    cells, gx, gy = grads_of(lambda a, b: partdist.local_dist_matrix(a, b), x, y, gc)
    ref = grads_of(lambda a, b: partdist.local_dist_matrix(a, b), x.double(), y.double(), gc.double())
    torch.testing.assert_close(cells, ref[0].float(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(gx, ref[1].float(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(gy, ref[2].float(), rtol=1e-3, atol=1e-4)
