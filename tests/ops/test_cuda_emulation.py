"""The CUDA code path on the CPU: every CUDA kernel of every family, run by the CPU
emulation of its launch (the ops of the ``partdist_cuda_emulated`` namespace: the CUDA
backend's own drivers, tile planning, layouts, scratch tables and per-thread kernel
bodies, thread by thread over the whole grid, warp shuffles in lockstep, outputs
poisoned with NaN / the lowest int64 first), against the CPU kernels (``partdist``)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import partdist  # noqa: F401  (loads the compiled ops)

CPU = torch.ops.partdist
EMU = torch.ops.partdist_cuda_emulated


def close(a, b, tol=1e-9):
    """Equal up to rounding, NaN exactly where the CPU result has NaN (an unwritten
    element shows as a NaN or as the int64 poison in the emulated output)."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            close(u, v, tol)
        return
    if a.dtype in (torch.int64, torch.bool):
        assert torch.equal(a, b)
        return
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


def rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.fixture
def fault():
    """Sets the emulation's fault injection for one test (always reset)."""

    def set_fault(mode):
        EMU._set_fault(mode)

    yield set_fault
    EMU._set_fault(0)


# ----------------------------------------------------------------------- DMLI
DP_RULES = [  # (gamma, band, unaligned)
    (0.0, -1.0, False),
    (0.5, -1.0, False),
    (0.0, 1.0, False),
    (0.3, 2.0, False),
    (0.0, -1.0, True),
]


@pytest.mark.parametrize("m,n", [(1, 1), (8, 8), (6, 3), (130, 140)])
@pytest.mark.parametrize("normalize", [True, False])
def test_local_dist_matrix(m, n, normalize):
    # (130, 140): more than 128 stripes, which the CUDA path accepts in this mode (no DP)
    x, y = rand(5, m, 16), rand(5, n, 16, seed=1)
    close(EMU.local_dist_matrix(x, y, normalize), CPU.local_dist_matrix(x, y, normalize))
    g = rand(5, m, n, seed=2)
    close(EMU.local_dist_matrix_backward(g, x, y, normalize),
          CPU.local_dist_matrix_backward(g, x, y, normalize))


@pytest.mark.parametrize("gamma,band,unaligned", DP_RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_local_dist(gamma, band, unaligned, dtype):
    N, m, n = 300, 6, 6 if unaligned else 4  # 300 pairs: three blocks of 128 threads
    x, y = rand(N, m, 12, dtype=dtype), rand(N, n, 12, seed=1, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for normalize in (True, False):
        close(EMU.batch_local_dist(x, y, normalize, gamma, band, unaligned),
              CPU.batch_local_dist(x, y, normalize, gamma, band, unaligned), tol)
        g = rand(N, seed=3, dtype=dtype)
        g[::3] = 0  # pairs without gradient (skipped by the kernel)
        close(EMU.batch_local_dist_backward(g, x, y, normalize, gamma, band, unaligned),
              CPU.batch_local_dist_backward(g, x, y, normalize, gamma, band, unaligned), tol)


@pytest.mark.parametrize("m,n", [(3, 8), (5, 9), (4, 16), (3, 17), (2, 32), (2, 33), (3, 60)])
@pytest.mark.parametrize("gamma,band", [(0.0, -1.0), (0.4, 2.5)])
def test_forward_row_sizes(m, n, gamma, band):
    """The forward kernel keeps its DP row in an array of 8, 16, 32 or kMaxStripes entries
    (the smallest that holds n): each size and its bounds against the CPU."""
    x, y = rand(40, m, 5), rand(40, n, 5, seed=1)
    if band >= 0:  # wide enough for a monotone path: the band steps (n-1)/(m-1) per row
        band += (n - 1) / max(m - 1, 1)
    close(EMU.batch_local_dist(x, y, True, gamma, band, False),
          CPU.batch_local_dist(x, y, True, gamma, band, False))
    close(EMU.local_dist(x[:6], y[:9], True, 0, gamma, band, False),
          CPU.local_dist(x[:6], y[:9], True, 0, gamma, band, False))


@pytest.mark.parametrize("m,n,band", [(7, 9, 1.0), (7, 9, 1.5), (9, 4, 0.75), (5, 5, 1.25),
                                      (4, 13, 3.999999), (13, 4, 2.0), (1, 6, 0.0)])
def test_band_cells(m, n, band):
    """The DP's allowed cells are those with |i (n-1)/(m-1) - j| <= band, on both backends:
    a huge value in a cell outside the band changes nothing; in the two end cells, which
    every path takes, it changes the distance."""
    def allowed(i, j):
        return m == 1 or abs(i * (n - 1) / (m - 1) - j) <= band + 1e-9

    d = torch.rand(1, m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for ops in (CPU, EMU):
        base = ops.dmli(d, 0.0, band)
        for i in range(m):
            for j in range(n):
                e = d.clone()
                e[0, i, j] += 1e6
                changed = not torch.equal(ops.dmli(e, 0.0, band), base)
                if not allowed(i, j):
                    assert not changed, (i, j)
                elif (i, j) in ((0, 0), (m - 1, n - 1)):
                    assert changed, (i, j)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_features_all_pairs(dtype):
    """float16 / bfloat16 features: the CUDA path multiplies them as they are (half GEMM,
    float32 accumulation and result; upcast in the emulation) and takes the norms in
    float32. Same values and gradients as the CPU's float32 computation, to the output's
    rounding."""
    x, y = rand(9, 4, 40, dtype=dtype), rand(11, 5, 40, seed=1, dtype=dtype)
    tol = 2e-3 if dtype == torch.float16 else 1.6e-2
    out = EMU.local_dist(x, y, True, 0, 0.0, -1.0, False)
    assert out.dtype == dtype
    close(out.float(), CPU.local_dist(x, y, True, 0, 0.0, -1.0, False).float(), tol)
    g = rand(9, 11, seed=2, dtype=dtype)
    for e, c in zip(EMU.local_dist_backward(g, x, y, True, 0, 0.0, -1.0, False),
                    CPU.local_dist_backward(g, x, y, True, 0, 0.0, -1.0, False)):
        assert e.dtype == dtype
        close(e.float(), c.float(), tol * 4)
    # the aligned ops' forward (batched GEMM path): batch_local_dist, local_dist_matrix
    xa, ya = x[:9], rand(9, 5, 40, seed=3, dtype=dtype)
    for name, args in (("batch_local_dist", (True, 0.0, -1.0, False)), ("local_dist_matrix", (True,))):
        e, c = getattr(EMU, name)(xa, ya, *args), getattr(CPU, name)(xa, ya, *args)
        assert e.dtype == dtype
        close(e.float(), c.float(), tol)
    # and their backward (the recomputed stripe GEMM on half operands, the chain rule in float32)
    ga, gm = rand(9, seed=6, dtype=dtype), rand(9, 4, 5, seed=7, dtype=dtype)
    for name, grad, args in (("batch_local_dist_backward", ga, (True, 0.3, -1.0, False)),
                             ("batch_local_dist_backward", ga, (False, 0.0, 2.0, False)),
                             ("local_dist_matrix_backward", gm, (True,))):
        for e, c in zip(getattr(EMU, name)(grad, xa, ya, *args), getattr(CPU, name)(grad, xa, ya, *args)):
            assert e.dtype == dtype
            close(e.float(), c.float(), tol * 4)
    vx = torch.rand(9, 4, generator=torch.Generator().manual_seed(4)).to(dtype)
    vy = torch.rand(11, 4, generator=torch.Generator().manual_seed(5)).to(dtype)
    y4 = rand(11, 4, 40, seed=1, dtype=dtype)
    close(EMU.part_dist(x, y4, vx, vy, 0.0, 0).float(), CPU.part_dist(x, y4, vx, vy, 0.0, 0).float(),
          tol * 4)
    for e, c in zip(EMU.part_dist_backward(g, x, y4, vx, vy, 0.0, 0, True),
                    CPU.part_dist_backward(g, x, y4, vx, vy, 0.0, 0, True)):
        close(e.float(), c.float(), tol * 8)


@pytest.mark.parametrize("gamma,band", [(0.0, -1.0), (0.7, -1.0), (0.0, 1.5)])
def test_dmli_and_path(gamma, band):
    d = torch.rand(200, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    close(EMU.dmli(d, gamma, band), CPU.dmli(d, gamma, band))
    g = rand(200, seed=1)
    g[5:50] = 0
    close(EMU.dmli_backward(g, d, gamma, band), CPU.dmli_backward(g, d, gamma, band))
    close(EMU.dmli_path(d, gamma, band), CPU.dmli_path(d, gamma, band))


@pytest.mark.parametrize("gamma,band,unaligned", DP_RULES)
@pytest.mark.parametrize("chunk", [0, 7, 40])
def test_local_dist_all_pairs(gamma, band, unaligned, chunk):
    # chunk > 0: many tiles, a last partial tile in both directions
    M, N, m, n = 13, 17, 5, 5 if unaligned else 3
    x, y = rand(M, m, 8), rand(N, n, 8, seed=1)
    close(EMU.local_dist(x, y, True, chunk, gamma, band, unaligned),
          CPU.local_dist(x, y, True, chunk, gamma, band, unaligned))
    g = rand(M, N, seed=2)
    g[:, ::4] = 0
    close(EMU.local_dist_backward(g, x, y, True, chunk, gamma, band, unaligned),
          CPU.local_dist_backward(g, x, y, True, chunk, gamma, band, unaligned))


# The opt-in fused path of local_dist's forward (PARTDIST_FUSED_EPILOGUE=1): one block per
# tile of pairs computes the stripe GEMM tile and runs the DP of its pairs in the epilogue.
# Shapes: several tiles in both directions with partial last tiles (13 x 17 pairs of 5 x 3
# stripes: 12 x 21 images per tile), 8 x 8 stripes (a full 64 x 64 tile), C not a multiple
# of the channel chunk, one image per tile (64 stripes), one stripe per image.
FUSED_SHAPES = [(13, 17, 5, 3, 8), (9, 20, 8, 8, 100), (3, 70, 6, 5, 17), (2, 3, 64, 33, 9), (70, 2, 1, 1, 3)]


@pytest.mark.parametrize("gamma,band,unaligned", DP_RULES)
@pytest.mark.parametrize("M,N,m,n,C", FUSED_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_local_dist_fused_epilogue(monkeypatch, gamma, band, unaligned, M, N, m, n, C, dtype):
    if unaligned:
        n = m
    x, y = rand(M, m, C, dtype=dtype), rand(N, n, C, seed=1, dtype=dtype)
    want = CPU.local_dist(x, y, True, 0, gamma, band, unaligned)
    monkeypatch.setenv("PARTDIST_FUSED_EPILOGUE", "1")
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    close(EMU.local_dist(x, y, True, 0, gamma, band, unaligned), want, tol)
    close(EMU.local_dist(x, y, False, 0, gamma, band, unaligned),
          CPU.local_dist(x, y, False, 0, gamma, band, unaligned), tol)


def test_local_dist_fused_epilogue_planted_fault(monkeypatch, fault):
    """Block 0 run as block 1 (kShiftBlock, which only the block kernels see) leaves the first
    tile's outputs unwritten: the comparison fails on the fused path, and only there (the
    variable switches the path)."""
    x, y = rand(13, 5, 8), rand(17, 3, 8, seed=1)
    want = CPU.local_dist(x, y, True, 0, 0.0, -1.0, False)
    fault(2)
    close(EMU.local_dist(x, y, True, 0, 0.0, -1.0, False), want)  # the unfused path
    monkeypatch.setenv("PARTDIST_FUSED_EPILOGUE", "1")
    with pytest.raises(AssertionError):
        close(EMU.local_dist(x, y, True, 0, 0.0, -1.0, False), want)
    fault(0)
    close(EMU.local_dist(x, y, True, 0, 0.0, -1.0, False), want)
    # half features keep cuBLAS's tensor-core GEMM (the variable does not apply)
    fault(2)
    xh, yh = x.to(torch.float16), y.to(torch.float16)
    close(EMU.local_dist(xh, yh, True, 0, 0.0, -1.0, False), CPU.local_dist(xh, yh, True, 0, 0.0, -1.0, False), 2e-3)


# The training pair of batch_local_dist: one warp per pair (32 lanes in lockstep, one OS
# thread each), so few pairs. C = 7 (lanes 7-31 hold no channel) and 40 (lanes 0-7 hold two);
# two of the four (C, dtype) combinations in the slow set.
@pytest.mark.parametrize("gamma,band", [(0.0, -1.0), (0.5, -1.0), (0.0, 1.0), (0.3, 2.0)])
@pytest.mark.parametrize("C,dtype", [
    (7, torch.float64),
    (40, torch.float32),
    pytest.param(7, torch.float32, marks=pytest.mark.slow),
    pytest.param(40, torch.float64, marks=pytest.mark.slow),
])
def test_batch_local_dist_cells(gamma, band, C, dtype):
    N, m, n = 3, 5, 4
    x, y = rand(N, m, C, dtype=dtype), rand(N, n, C, seed=1, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    g = rand(N, seed=3, dtype=dtype)
    g[1] = 0  # a pair without gradient: zeros, no DP
    for normalize in (True, False):
        out, cells = EMU._batch_local_dist_fwd_cells(x, y, normalize, gamma, band)
        ref_out, ref_cells = CPU._batch_local_dist_fwd_cells(x, y, normalize, gamma, band)
        close((out, cells), (ref_out, ref_cells), tol)
        # the direct distances (no GEMM)
        raw = (x[:, :, None, :] - y[:, None, :, :]).pow(2).sum(-1).sqrt()
        close(cells[0], raw, tol)
        close(out, CPU.batch_local_dist(x, y, normalize, gamma, band, False), tol)
        grads = EMU._batch_local_dist_backward_cells(g, x, y, cells, normalize, gamma, band)
        close(grads, CPU._batch_local_dist_backward_cells(g, x, y, ref_cells, normalize, gamma, band), tol)
        close(grads, CPU.batch_local_dist_backward(g, x, y, normalize, gamma, band, False), tol)
        assert (grads[0][1] == 0).all() and (grads[1][1] == 0).all()


def test_batch_local_dist_cells_identical_stripes_and_strided_grad():
    """Identical stripes: raw distance exactly 0 (the direct sum; the GEMM form leaves rounding),
    finite gradients. The incoming gradient is read through its stride (a slice, and the
    stride-0 gradient of a sum)."""
    N, m, n, C = 3, 4, 4, 40
    x = rand(N, m, C)
    y = rand(N, n, C, seed=1)
    y[0] = x[0]  # pair 0: every diagonal cell is 0
    y[2, 1] = x[2, 3]
    out, cells = EMU._batch_local_dist_fwd_cells(x, y, True, 0.0, -1.0)
    assert (cells[0, 0].diagonal() == 0).all() and cells[0, 2, 3, 1] == 0
    assert (cells[1, 0].diagonal() == 0).all()  # the cell values too
    close(out, CPU.batch_local_dist(x, y, True, 0.0, -1.0, False), 1e-7)
    g_full = rand(2 * N, seed=2)
    g = g_full[::2]
    gx, gy = EMU._batch_local_dist_backward_cells(g, x, y, cells, True, 0.0, -1.0)
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    ref = CPU.batch_local_dist_backward(g.contiguous(), x, y, True, 0.0, -1.0, False)
    close((gx, gy), ref, 1e-7)  # the CPU's raw distances near 0 come from the GEMM form
    ones = torch.ones(()).expand(N)  # stride 0
    close(EMU._batch_local_dist_backward_cells(ones, x, y, cells, True, 0.0, -1.0),
          CPU.batch_local_dist_backward(torch.ones(N, dtype=torch.float64), x, y, True, 0.0, -1.0, False), 1e-7)


# --------------------------------------------------------------------- mining
def _mining_cases():
    # the warp kernel's emulation (32 lanes in lockstep, one OS thread each) takes about a second
    # per call pattern: one warp case and the column-major cases run in test-fast, the rest are
    # marked slow. `which`: one of the three call patterns of the test
    for dtype in (torch.float32, torch.float64, torch.float16):
        for layout in ("row", "column", "strided"):
            for which in (0, 1, 2):
                fast = layout == "column" or (layout == "row" and dtype == torch.float32 and which == 0)
                yield pytest.param(layout, dtype, which, marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("layout,dtype,which", list(_mining_cases()))
def test_mining(layout, dtype, which):
    # 36 x 45 (and 36 x 36 for the square cases): rows over five blocks of 8 warps, the last one
    # partial; columns not a multiple of 32, so lanes 0-12 (0-3 when square) read a second column,
    # and the square cases' own column of rows 32-35 is one of those
    N, M = 36, 45
    d = torch.rand(N, M, generator=torch.Generator().manual_seed(0)).to(dtype)
    d[3, 7] = d[3, 9]  # a tie: the lower column wins
    d[4, 10] = float("nan")
    if layout == "column":  # column-major: the one-thread-per-row kernel
        d = d.t().contiguous().t()
    elif layout == "strided":
        d = torch.cat([d, d], 1)[:, ::2]
    labels = torch.randint(0, 6, (N,), generator=torch.Generator().manual_seed(1))
    other = torch.randint(0, 6, (M,), generator=torch.Generator().manual_seed(2))
    args = [(labels, other, False), (labels, None, True), (labels, None, False)][which]
    dist = d if args[1] is not None else d[:, :N]
    e = EMU.hard_example_mining(dist, *args)
    c = CPU.hard_example_mining(dist, *args)
    close(e, c)
    for margin in (0.3, None):
        e = EMU.triplet_hard_loss(dist, *args[:2], margin, args[2])
        c = CPU.triplet_hard_loss(dist, *args[:2], margin, args[2])
        close(e, c, 1e-6)  # the loss is NaN (the NaN row)
        _, ap, an, p, n, valid = c
        gl = torch.tensor(1.5, dtype=dtype)
        gap, gan = rand(len(ap), seed=4, dtype=dtype), rand(len(ap), seed=5, dtype=dtype)
        ncol = dist.shape[1]
        close(EMU.hard_example_mining_backward(gl, gap, gan, ap, an, p, n, valid, margin, ncol),
              CPU.hard_example_mining_backward(gl, gap, gan, ap, an, p, n, valid, margin, ncol))
        close(EMU.hard_example_mining_backward(None, gap, None, ap, an, p, n, valid, margin, ncol),
              CPU.hard_example_mining_backward(None, gap, None, ap, an, p, n, valid, margin, ncol))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N", [5, 70])
def test_triplet_loss_mean(dtype, N, fault):
    """The loss of triplet_hard_loss (the mean of the rows' hinges over the valid anchors, one
    warp; rows l, l + 32, ... in lane l): finite, N below and above 32, a case with no valid
    anchor (loss 0); the planted fault shows."""
    d = torch.rand(N, N, generator=torch.Generator().manual_seed(N)).to(dtype)
    d = d.t().contiguous().t()  # column-major: the mining kernel of one thread per row (fast to emulate)
    labels = torch.arange(N) % 3
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-6)
    for margin in (0.3, None):
        e = EMU.triplet_hard_loss(d, labels, None, margin, False)[0]
        c = CPU.triplet_hard_loss(d, labels, None, margin, False)[0]
        assert e.dtype == dtype and e.shape == () and torch.isfinite(e) and c > 0
        close(e.float(), c.float(), tol)
    same = torch.zeros(N, dtype=torch.int64)  # no negative anywhere: no valid anchor
    assert EMU.triplet_hard_loss(d, same, None, 0.3, False)[0] == 0
    fault(1)
    with pytest.raises(AssertionError):
        close(EMU.triplet_hard_loss(d, labels, None, 0.3, False)[0].float(),
              CPU.triplet_hard_loss(d, labels, None, 0.3, False)[0].float(), tol)


# --------------------------------------------------------------- neighborhood
@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_neighborhood(k, dtype):
    f, g = rand(2, 3, 5, 7, dtype=dtype), rand(2, 3, 5, 7, seed=1, dtype=dtype)
    close(EMU.neighborhood_diff(f, g, k), CPU.neighborhood_diff(f, g, k), 0)
    go = rand(2, 3, 5 * k, 7 * k, seed=2, dtype=dtype)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5 if dtype == torch.float32 else 1e-9
    close(EMU.neighborhood_diff_backward(go, k), CPU.neighborhood_diff_backward(go, k), tol)
    go_t = rand(2, 7 * k, 5 * k, 3, seed=3, dtype=dtype).permute(0, 3, 2, 1)  # strided grad
    close(EMU.neighborhood_diff_backward(go_t, k), CPU.neighborhood_diff_backward(go_t, k), tol)


# ---------------------------------------------------------------- part / DSR
@pytest.mark.parametrize("chunk", [0, 10])
@pytest.mark.parametrize("vis_grad", [True, False])
def test_part_dist(chunk, vis_grad):
    M, N, P = 11, 23, 6
    x, y = rand(M, P, 9), rand(N, P, 9, seed=1)
    gen = torch.Generator().manual_seed(2)
    vx = (torch.rand(M, P, generator=gen) > 0.3).double() * torch.rand(M, P, generator=gen, dtype=torch.float64)
    vy = (torch.rand(N, P, generator=gen) > 0.3).double()
    vx[0] = 0  # a query with no visible part
    close(EMU.part_dist(x, y, vx, vy, 2.5, chunk), CPU.part_dist(x, y, vx, vy, 2.5, chunk))
    g = rand(M, N, seed=3)
    g[1] = 0
    close(EMU.part_dist_backward(g, x, y, vx, vy, 2.5, chunk, vis_grad),
          CPU.part_dist_backward(g, x, y, vx, vy, 2.5, chunk, vis_grad))


@pytest.mark.parametrize("Lq,Lg", [(3, 5), (4, 16), (2, 17), (5, 40), (2, 100), (2, 200)])
def test_dsr(Lq, Lg):
    # Lg across the kernel's local-array capacities 16 / 32 / 64 / 128 / 256
    M, N = 3, 4
    x, y = rand(M, Lq, 24), rand(N, Lg, 24, seed=1)
    for beta, chunk in [(0.05, 0), (0.3, 5)]:
        close(EMU.dsr_dist(x, y, beta, 60, 1e-6, chunk), CPU.dsr_dist(x, y, beta, 60, 1e-6, chunk), 1e-6)


# ----------------------------------------------- the emulation can fail
def test_fault_injection_shows_in_every_family(fault):
    """A wrong thread index (the thread of global index 0 runs as index 1) leaves an
    element unwritten (poisoned) or wrong: every family's comparison must fail."""
    x, y = rand(6, 4, 8), rand(6, 3, 8, seed=1)
    d = torch.rand(40, 40, dtype=torch.float64)
    labels = torch.arange(40) % 5
    f, g = rand(1, 2, 3, 4), rand(1, 2, 3, 4, seed=1)
    px, py, v = rand(5, 3, 4), rand(6, 3, 4, seed=1), torch.ones(5, 3, dtype=torch.float64)
    vy = torch.ones(6, 3, dtype=torch.float64)
    cases = [
        lambda ops: ops.local_dist_matrix(x, y, True),
        lambda ops: ops.batch_local_dist(x, y, True, 0.0, -1.0, False),
        lambda ops: ops.local_dist(x, y, True, 0, 0.0, -1.0, False),
        lambda ops: ops.dmli(torch.rand(9, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 0.0, -1.0),
        lambda ops: ops.hard_example_mining(d, labels, None, False)[:4],
        lambda ops: ops.hard_example_mining(d.t(), labels, None, False)[:4],
        lambda ops: ops.neighborhood_diff(f, g, 3),
        lambda ops: ops.neighborhood_diff_backward(rand(1, 2, 9, 12), 3),
        lambda ops: ops.part_dist(px, py, v, vy, 0.0, 0),
        lambda ops: ops.dsr_dist(rand(2, 2, 6), rand(2, 3, 6, seed=1), 0.1, 20, 1e-6, 0),
    ]
    for case in cases:
        close(case(EMU), case(CPU))  # correct without the fault
    fault(1)
    for i, case in enumerate(cases):
        with pytest.raises(AssertionError):
            close(case(EMU), case(CPU))
            print("case", i, "did not fail")


def test_fault_injection_in_backward(fault):
    x, y = rand(6, 4, 8), rand(6, 3, 8, seed=1)
    g = rand(6, seed=2)
    ref = CPU.batch_local_dist_backward(g, x, y, True, 0.0, -1.0, False)
    close(EMU.batch_local_dist_backward(g, x, y, True, 0.0, -1.0, False), ref)
    # the mining backward writes every entry of its [N, M] output (no zeroing first)
    d = torch.rand(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(12) % 3
    mined = CPU.triplet_hard_loss(d, labels, None, 0.3, False)[1:]
    gl, gap = torch.tensor(1.0, dtype=torch.float64), rand(12, seed=4)

    def mining_backward(ops):
        return ops.hard_example_mining_backward(gl, gap, None, *mined, 0.3, 12)

    close(mining_backward(EMU), mining_backward(CPU))
    fault(1)
    with pytest.raises(AssertionError):
        close(EMU.batch_local_dist_backward(g, x, y, True, 0.0, -1.0, False), ref)
    with pytest.raises(AssertionError):
        close(mining_backward(EMU), mining_backward(CPU))


def test_fault_injection_in_the_warp_kernels(fault):
    """The planted fault (lane 0 of warp 0 runs as lane 1: channel 0 of pair 0 is summed by no
    lane, and no lane runs pair 0's DP) shows in both warp kernels."""
    x, y = rand(2, 3, 8), rand(2, 3, 8, seed=1)
    g = rand(2, seed=2)
    cells = CPU._batch_local_dist_fwd_cells(x, y, True, 0.0, -1.0)[1]
    fwd = CPU._batch_local_dist_fwd_cells(x, y, True, 0.0, -1.0)
    bwd = CPU._batch_local_dist_backward_cells(g, x, y, cells, True, 0.0, -1.0)
    close(EMU._batch_local_dist_fwd_cells(x, y, True, 0.0, -1.0), fwd)
    close(EMU._batch_local_dist_backward_cells(g, x, y, cells, True, 0.0, -1.0), bwd)
    fault(1)
    with pytest.raises(AssertionError):
        close(EMU._batch_local_dist_fwd_cells(x, y, True, 0.0, -1.0), fwd)
    with pytest.raises(AssertionError):
        close(EMU._batch_local_dist_backward_cells(g, x, y, cells, True, 0.0, -1.0), bwd)


# ---------------------------------------------------------- tile planning
@pytest.mark.parametrize("m,n", [(8, 8), (32, 32), (128, 128)])
@pytest.mark.parametrize("elem", [4, 8])
@pytest.mark.parametrize("half", [False, True])
def test_local_dist_tiles_fit_the_budget(m, n, elem, half):
    """Tiles are sized by bytes (a fixed 2^20 pairs would need 192 GiB for the backward at
    128 x 128). On CUDA the budget is half the GPU's L2 for float32 / float64 GEMM operands
    (the DP kernel then reads the cells the GEMM has just written from L2), and 256 MiB for
    float16 / bfloat16 operands (tensor-core GEMMs too short to cover a tile's launches) and on
    GPUs with under 16 MiB of L2; the CPU's per-thread forward tile stays within 1 MiB and its
    backward tiles within 8 MiB."""
    M, N = 20000, 60000
    plan = lambda l2, chunk=0: CPU._local_dist_tile_plan("cuda", M, N, m, n, elem, chunk, half, l2)
    for l2, budget in [(50 << 20, 256 << 20 if half else 25 << 20),  # H100
                       (40 << 20, 256 << 20 if half else 20 << 20),  # A100
                       (6 << 20, 256 << 20),  # V100: no useful tile fits L2
                       (1 << 30, 256 << 20)]:  # capped
        f_mc, f_nc, f_bytes, b_mc, b_nc, b_bytes = plan(l2)
        assert f_bytes == f_mc * f_nc * m * n * elem <= budget
        assert b_bytes == b_mc * b_nc * 3 * m * n * elem <= budget  # GEMM, weights, DP table
        assert f_bytes > budget // 2 and b_bytes > budget // 2  # and use most of it
    # the emulated launchers plan with the emulated GPU's L2 (an H100's 50 MiB)
    assert plan(-1) == plan(50 << 20)
    assert (plan(-1) != plan(6 << 20)) == (not half)
    if (m, n, elem, half) == (8, 8, 4, True):
        assert plan(-1)[0] * plan(-1)[1] == 1 << 20  # the former fixed tile where it fitted
    c = CPU._local_dist_tile_plan("cpu", M, N, m, n, elem, 0, half)
    assert c[2] <= 1 << 20 and c[5] <= 8 << 20
    # chunk_size given: that many pairs per tile
    for l2 in (-1, 6 << 20):
        mc, nc, *_ = plan(l2, 5000)
        assert mc * nc <= 5000


def test_parts_tiles_fit_the_budget():
    M, N, P, Lg, elem = 20000, 60000, 32, 256, 8
    fm, fn, bm, bn, dm, dn = CPU._parts_tile_plan("cuda", M, N, P, Lg, elem, 0)
    assert fm * fn * P * elem <= 256 << 20 and bm * bn * 3 * P * elem <= 256 << 20
    assert dm * dn * (2 * Lg + 1) * P * elem <= 256 << 20


# --------------------------------------------------------- DSR B by one GEMM
@pytest.mark.slow
def test_dsr_memory_at_issue_size():
    """dsr_dist's B for one tile of x [16, 128, 2048] x y [32, 128, 2048] is 32 MiB
    (float32): built by one GEMM of the flattened cells, the op's peak stays far below
    the 1 GiB that a broadcasting matmul of the expanded inputs allocated."""
    code = textwrap.dedent(
        """
        import resource, torch, partdist
        torch.set_num_threads(1)
        x = torch.randn(16, 128, 2048); y = torch.randn(32, 128, 2048)
        torch.ops.partdist.dsr_dist(x[:1, :4], y[:1, :4], 0.1, 1, 1e-5, 0)  # warm up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        torch.ops.partdist.dsr_dist(x, y, 0.1, 1, 1e-5, 16 * 32)  # one tile of all pairs
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    grown_mib = int(out.stdout.split()[-1])
    assert grown_mib < 400, f"dsr_dist peak grew by {grown_mib} MiB"
