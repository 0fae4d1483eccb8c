"""DMLI family: local_dist_matrix, dmli, dmli_path, batch_local_dist, local_dist."""

import pytest
import torch
from torch.autograd import gradcheck

import partdist
from partdist import reference as R

SHAPES = [(1, 1), (1, 5), (5, 1), (3, 7), (8, 8), (6, 2)]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def rand_xy(N, m, n, C=16, dtype=torch.float64, M=None, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N if M is None else M, m, C, generator=g, dtype=dtype).to(device)
    y = torch.randn(N, n, C, generator=g, dtype=dtype).to(device)
    return x, y


# ------------------------------------------------------------------ values
def values_grid(test):
    """The value tests' grid: float32 and float64 x every shape in SHAPES x with and without
    normalization (the ids of the three parametrize decorators stacked in that order)."""
    test = pytest.mark.parametrize("normalize", [True, False])(test)
    test = pytest.mark.parametrize("m,n", SHAPES)(test)
    return pytest.mark.parametrize("dtype", [torch.float32, torch.float64])(test)


def check_values(op, refs, x, y, normalize, shape):
    """``op(x, y, normalize)`` has ``shape`` and the inputs' dtype, and equals every reference."""
    out = op(x, y, normalize)
    assert out.shape == shape and out.dtype == x.dtype
    for ref in refs:
        torch.testing.assert_close(out, ref(x, y, normalize), **tol(x.dtype))


@values_grid
def test_local_dist_matrix_values(dtype, m, n, normalize):
    x, y = rand_xy(4, m, n, dtype=dtype)
    check_values(partdist.local_dist_matrix, [R.local_dist_matrix], x, y, normalize, (4, m, n))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,n", SHAPES)
def test_dmli_values_against_seed_loop(dtype, m, n):
    d = torch.rand(5, m, n, dtype=dtype)
    out = partdist.dmli(d)
    assert out.shape == (5,)
    torch.testing.assert_close(out, R.dmli_loop(d), **tol(dtype))
    torch.testing.assert_close(out, R.dmli_vectorized(d), **tol(dtype))


def test_dmli_leading_dims():
    d = torch.rand(2, 3, 4, 6, dtype=torch.float64)
    assert partdist.dmli(d).shape == (2, 3)
    torch.testing.assert_close(partdist.dmli(d), R.dmli_vectorized(d))
    single = torch.rand(4, 6, dtype=torch.float64)
    assert partdist.dmli(single).shape == ()
    torch.testing.assert_close(partdist.dmli(single), R.shortest_dist(single))


def test_dmli_known_value():
    # Hand-computed: the cheapest monotone path through this matrix is 1+1+1+1+1 = 5
    d = torch.tensor([[1.0, 9.0, 9.0], [1.0, 1.0, 9.0], [9.0, 1.0, 1.0]])
    assert partdist.dmli(d).item() == 5.0
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    assert torch.equal(partdist.dmli_path(d), expected)


@values_grid
def test_batch_local_dist_values(dtype, m, n, normalize):
    x, y = rand_xy(6, m, n, dtype=dtype)
    check_values(partdist.batch_local_dist, [R.batch_local_dist, R.batch_local_dist_vectorized], x, y, normalize,
                 (6,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,n", [(1, 1), (3, 7), (8, 8), (5, 1)])
@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
def test_local_dist_values(dtype, m, n, chunk):
    x, y = rand_xy(9, m, n, dtype=dtype, M=5)
    out = partdist.local_dist(x, y, chunk_size=chunk)
    assert out.shape == (5, 9)
    torch.testing.assert_close(out, R.local_dist(x, y), **tol(dtype))
    torch.testing.assert_close(out, R.local_dist_vectorized(x, y), **tol(dtype))


@pytest.mark.parametrize("N", [1, 15, 16, 17, 33, 130])
@pytest.mark.parametrize("kw", [{}, {"normalize": False}, {"gamma": 0.3}, {"band": 1.0}])
def test_local_dist_lane_blocks(N, kw):
    """The CPU all-pairs kernel runs 16 gallery images per SIMD block: sizes around the
    block and tile edges, every DP variant, and lanes that must not leak into each other."""
    x, y = rand_xy(N, 6, 5, dtype=torch.float32, M=3, seed=N)
    out = partdist.local_dist(x, y, **kw)
    ref = torch.stack([partdist.batch_local_dist(x[a].expand(N, 6, 16), y, **kw) for a in range(3)])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for chunk in (5, 40):
        torch.testing.assert_close(partdist.local_dist(x, y, chunk_size=chunk, **kw), out, rtol=1e-6, atol=1e-6)
    if N > 1:
        yb = y.clone()
        yb[N // 2, 2, 3] = float("nan")
        bad = partdist.local_dist(x, yb, **kw)
        assert bad[:, N // 2].isnan().all()
        keep = torch.arange(N) != N // 2
        torch.testing.assert_close(bad[:, keep], out[:, keep], rtol=0, atol=0)


def test_local_dist_equals_batch_local_dist_on_diagonal():
    x, y = rand_xy(7, 4, 6, dtype=torch.float64, M=7)
    torch.testing.assert_close(partdist.local_dist(x, y).diagonal(), partdist.batch_local_dist(x, y))


def test_empty_batches():
    x, y = rand_xy(0, 3, 4)
    assert partdist.batch_local_dist(x, y).shape == (0,)
    assert partdist.local_dist_matrix(x, y).shape == (0, 3, 4)
    assert partdist.dmli(torch.rand(0, 3, 4)).shape == (0,)
    assert partdist.dmli_path(torch.rand(0, 3, 4)).shape == (0, 3, 4)
    x5, _ = rand_xy(5, 3, 4)
    assert partdist.local_dist(x5, y).shape == (5, 0)
    assert partdist.local_dist(y, x5.narrow(1, 0, 3)).shape == (0, 5)
    # backward through empty batches gives empty gradients
    xr = x.clone().requires_grad_()
    partdist.batch_local_dist(xr, y).sum().backward()
    assert xr.grad.shape == x.shape


def test_non_contiguous_inputs():
    x, y = rand_xy(5, 6, 4, C=8)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    yt = y[:, :, ::1].permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not xt.is_contiguous()
    torch.testing.assert_close(partdist.batch_local_dist(xt, yt), partdist.batch_local_dist(x, y))
    d = torch.rand(4, 5, 3, dtype=torch.float64).transpose(1, 2)
    torch.testing.assert_close(partdist.dmli(d), R.dmli_loop(d))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_computed_in_float32(dtype):
    x, y = rand_xy(4, 5, 6, dtype=torch.float32)
    xl, yl = x.to(dtype), y.to(dtype)
    out = partdist.batch_local_dist(xl, yl)
    assert out.dtype == dtype
    expected = R.batch_local_dist(xl.float(), yl.float())
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


def test_nan_in_nan_out():
    x, y = rand_xy(3, 4, 4, dtype=torch.float32)
    x[1, 2, 0] = float("nan")
    out = partdist.batch_local_dist(x, y)
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    d = torch.rand(3, 4, 4)
    d[0, 1, 1] = float("nan")
    out = partdist.dmli(d)
    assert torch.isnan(out[0]) and torch.isfinite(out[1:]).all()
    full = partdist.local_dist(x, y)
    assert torch.isnan(full[1]).all() and torch.isfinite(full[[0, 2]]).all()


def test_large_distances_do_not_overflow():
    # AlignedReID's (e^d - 1)/(e^d + 1) overflows to inf/inf = NaN for d > 88 in float32;
    # the kernel evaluates it as tanh(d/2) and returns 1 per cell.
    x = torch.zeros(1, 2, 4)
    y = torch.full((1, 2, 4), 100.0)
    assert torch.equal(partdist.local_dist_matrix(x, y), torch.ones(1, 2, 2))
    assert partdist.batch_local_dist(x, y).item() == pytest.approx(3.0)


# -------------------------------------------------------------- gradients
def test_dmli_grad_matches_seed_loop_with_ties():
    torch.manual_seed(0)
    # integer-valued matrices: many ties in the minimum
    d = torch.randint(0, 3, (20, 5, 6)).double()
    d1 = d.clone().requires_grad_()
    d2 = d.clone().requires_grad_()
    gout = torch.rand(20, dtype=torch.float64)
    (partdist.dmli(d1) * gout).sum().backward()
    (R.dmli_loop(d2) * gout).sum().backward()
    assert torch.equal(d1.grad, d2.grad)  # halving is exact in binary
    # all-equal matrix: the gradient spreads over every tied path
    flat = torch.ones(1, 4, 4, dtype=torch.float64, requires_grad=True)
    partdist.dmli(flat).sum().backward()
    ref = torch.ones(1, 4, 4, dtype=torch.float64, requires_grad=True)
    R.dmli_loop(ref).sum().backward()
    assert torch.equal(flat.grad, ref.grad)
    assert (flat.grad > 0).all()


def tie_pairs(dtype, seed, untied):
    """37 aligned pairs of 0/1 features (many equal stripe distances: ties in the minimum),
    the pairs ``untied`` random instead, and an incoming gradient with zeros (pairs
    without gradient). 37 pairs fill two blocks of SIMD lanes and part of a third."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (37, 6, 5), generator=g).to(dtype)
    y = torch.randint(0, 2, (37, 7, 5), generator=g).to(dtype)
    x[untied] = torch.randn(x[untied].shape, generator=g).to(dtype)
    gd = torch.float64 if dtype == torch.float64 else torch.float32
    gout = torch.rand(37, generator=g, dtype=gd) * (torch.arange(37) % 5 != 2)
    return x, y, gout.to(dtype)


DP_VARIANTS = pytest.mark.parametrize("kw", [{}, {"band": 2.0}, {"gamma": 0.3}])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [True, False])
@DP_VARIANTS
def test_batch_local_dist_grad_with_ties_equals_dmli_of_matrix(dtype, normalize, kw):
    # The CPU backward of batch_local_dist runs the DPs of 16 pairs at once in SIMD lanes
    # (forward and reverse); dmli runs them one pair at a time. On the same cells both must
    # give the same gradient, bit for bit, ties (split in half) included. 0/1 features make
    # many stripe distances equal (ties in the minimum); 37 pairs fill two blocks of lanes
    # and part of a third; zeros in gout are pairs without gradient (skipped).
    x, y, gout = tie_pairs(dtype, 3, slice(5, 6))  # one pair without ties
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    (partdist.batch_local_dist(a, b, normalize, **kw) * gout).sum().backward()
    a2, b2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    d = partdist.local_dist_matrix(a2, b2, normalize)
    (partdist.dmli(d, **kw) * gout).sum().backward()
    assert torch.equal(a.grad, a2.grad) and torch.equal(b.grad, b2.grad)
    # the ties were there and were split: the hard gradient reaches more cells than one path
    if "gamma" not in kw:
        dd = d.detach().requires_grad_()
        (partdist.dmli(dd, **kw) * gout).sum().backward()
        assert (dd.grad.ne(0).sum((1, 2)) > 6 + 7 - 1).sum() >= 5
        # and the split is the seed loop's (torch.minimum's backward)
        if not kw:
            d2 = d.detach().requires_grad_()
            (R.dmli_loop(d2) * gout).sum().backward()
            assert torch.equal(dd.grad, d2.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("normalize", [True, False])
@DP_VARIANTS
def test_batch_local_dist_saved_cells_grad_equals_recompute(dtype, normalize, kw):
    # With a gradient needed, the CPU autograd of batch_local_dist runs
    # _batch_local_dist_fwd_cells and its backward reads the saved cells instead of
    # recomputing the dot products: values and gradients are bit for bit those of the ops
    # that recompute (batch_local_dist, batch_local_dist_backward), ties and pairs
    # without gradient included.
    x, y, gout = tie_pairs(dtype, 5, slice(5, 9))
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = partdist.batch_local_dist(a, b, normalize, **kw)
    (out * gout).sum().backward()
    gamma, band = float(kw.get("gamma", 0.0)), float(kw.get("band", -1.0))
    ops = torch.ops.partdist
    assert torch.equal(out.detach(), ops.batch_local_dist(x, y, normalize, gamma, band, False))
    gx, gy = ops.batch_local_dist_backward(gout, x, y, normalize, gamma, band, False)
    assert torch.equal(a.grad, gx) and torch.equal(b.grad, gy)
    # the cells: raw stripe distances, then the cell values
    dist, cells = ops._batch_local_dist_fwd_cells(x, y, normalize, gamma, band)
    assert torch.equal(dist, out.detach())
    assert cells.shape == (2, 37, 6, 7)
    xc, yc = x.to(cells.dtype), y.to(cells.dtype)  # the compute dtype
    assert torch.equal(cells[1], partdist.local_dist_matrix(xc, yc, normalize))
    assert torch.equal(cells[0], partdist.local_dist_matrix(xc, yc, False))


def test_batch_local_dist_backward_cells_rejects_wrong_cells():
    x, y = rand_xy(3, 4, 5, C=6)
    g = torch.ones(3, dtype=x.dtype)
    cells = torch.ops.partdist._batch_local_dist_fwd_cells(x, y, True, 0.0, -1.0)[1]
    for bad in (cells[:1], cells.float(), cells[:, :2]):
        with pytest.raises(RuntimeError, match="cells must be the"):
            torch.ops.partdist._batch_local_dist_backward_cells(g, x, y, bad, True, 0.0, -1.0)


@pytest.mark.parametrize("m,n", SHAPES)
def test_dmli_path_matches_gradient_support(m, n):
    d = torch.randint(0, 4, (10, m, n)).double()
    assert torch.equal(partdist.dmli_path(d), R.dmli_path(d))
    d = torch.rand(10, m, n)
    p = partdist.dmli_path(d)
    assert torch.equal(p, R.dmli_path(d))
    # without ties the path is a single monotone path of m + n - 1 cells
    assert (p.sum((1, 2)) == m + n - 1).all()


@pytest.mark.parametrize(
    "m,n", [(1, 1), (1, 4), (3, 1), pytest.param(3, 5, marks=pytest.mark.slow), pytest.param(4, 4, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_all_ops(m, n, normalize):
    x, y = rand_xy(3, m, n, C=5, seed=m * 10 + n)
    x.requires_grad_()
    y.requires_grad_()
    assert gradcheck(lambda a, b: partdist.local_dist_matrix(a, b, normalize), (x, y))
    assert gradcheck(lambda a, b: partdist.batch_local_dist(a, b, normalize), (x, y))
    y2 = torch.randn(4, n, 5, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda a, b: partdist.local_dist(a, b, normalize, chunk_size=2), (x, y2))
    d = torch.rand(3, m, n, dtype=torch.float64, requires_grad=True)
    assert gradcheck(partdist.dmli, (d,))


def test_grads_match_reference_autograd():
    x, y = rand_xy(5, 6, 7, C=9, M=4)
    y = y[:, :6]
    for fn, ref in [
        (partdist.local_dist, R.local_dist),
        (partdist.local_dist_matrix, R.local_dist_matrix),
    ]:
        if fn is partdist.local_dist_matrix:
            a, b = x.clone().requires_grad_(), y[:4].clone().requires_grad_()
        else:
            a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        out = fn(a, b)
        w = torch.rand_like(out)
        (out * w).sum().backward()
        (ref(a2, b2) * w).sum().backward()
        torch.testing.assert_close(a.grad, a2.grad)
        torch.testing.assert_close(b.grad, b2.grad)


def test_gradient_finite_at_identical_stripes():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    for normalize in (True, False):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        partdist.batch_local_dist(a, b, normalize).sum().backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
        a.grad = None
        partdist.local_dist_matrix(a, x, normalize).sum().backward()
        assert torch.isfinite(a.grad).all()


def test_float32_backward_matches_float64():
    x, y = rand_xy(16, 8, 8, C=32, dtype=torch.float64)
    a, b = x.float().requires_grad_(), y.float().requires_grad_()
    a64, b64 = x.clone().requires_grad_(), y.clone().requires_grad_()
    partdist.batch_local_dist(a, b).sum().backward()
    R.batch_local_dist(a64, b64).sum().backward()
    torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------- torch.library
@pytest.mark.slow
def test_opcheck_all_ops():
    x, y = rand_xy(3, 4, 5, C=6)
    x.requires_grad_()
    y.requires_grad_()
    y2 = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    d = torch.rand(3, 4, 5, dtype=torch.float64, requires_grad=True)
    ops = torch.ops.partdist
    cases = [
        (ops.local_dist_matrix.default, (x, y, True)),
        (ops.dmli.default, (d,)),
        (ops.dmli_path.default, (d.detach(),)),
        (ops.batch_local_dist.default, (x, y, False)),
        (ops.local_dist.default, (x, y2, True, 3)),
        (ops.local_dist_matrix_backward.default, (torch.rand(3, 4, 5, dtype=torch.float64), x.detach(), y.detach(), True)),
        (ops.dmli_backward.default, (torch.rand(3, dtype=torch.float64), d.detach(), 0.0, -1.0)),
        (ops.batch_local_dist_backward.default,
         (torch.rand(3, dtype=torch.float64), x.detach(), y.detach(), True, 0.0, -1.0, False)),
        (ops.local_dist_backward.default,
         (torch.rand(3, 4, dtype=torch.float64), x.detach(), y2.detach(), True, 0, 0.0, -1.0, False)),
        # DP variants: soft minimum, band, unaligned
        (ops.dmli.default, (d, 0.5, 2.0)),
        (ops.dmli_path.default, (d.detach(), 0.3, -1.0)),
        (ops.batch_local_dist.default, (x, y, True, 0.2, 1.5, False)),
        (ops.local_dist.default, (x, y2, True, 5, 0.7, -1.0, False)),
        (ops.batch_local_dist.default, (x, x.detach().clone().requires_grad_(), True, 0.0, -1.0, True)),
        # the training pair of batch_local_dist (the forward saving its cells)
        (ops._batch_local_dist_fwd_cells.default, (x.detach(), y.detach(), True, 0.2, 1.5)),
        (ops._batch_local_dist_backward_cells.default,
         (torch.rand(3, dtype=torch.float64), x.detach(), y.detach(),
          ops._batch_local_dist_fwd_cells(x.detach(), y.detach(), False, 0.0, -1.0)[1], False, 0.0, -1.0)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def loss_fn(xa, xp, xn, q, g):
        ap = partdist.batch_local_dist(xa, xp)
        an = partdist.batch_local_dist(xa, xn)
        full = partdist.local_dist(q, g)
        d = partdist.local_dist_matrix(xa, xp)
        return torch.relu(ap - an + 0.3).mean() + full.mean() + partdist.dmli(d).sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    xa, xp = rand_xy(6, 8, 8, C=16, dtype=torch.float32)
    xn = torch.randn(6, 8, 16)
    q, g = xa[:3], xp
    args = [t.clone().requires_grad_() for t in (xa, xp, xn, q, g)]
    ref_args = [t.clone().requires_grad_() for t in (xa, xp, xn, q, g)]
    out = compiled(*args)
    ref = loss_fn(*ref_args)
    torch.testing.assert_close(out, ref)
    out.backward()
    ref.backward()
    for a, b in zip(args, ref_args):
        torch.testing.assert_close(a.grad, b.grad)


# ------------------------------------------------------------- bad input
def _raises(exc, match, fn, *args, **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


def test_bad_inputs_xy_ops():
    x, y = rand_xy(3, 4, 5, C=6, dtype=torch.float32)
    for fn in (partdist.batch_local_dist, partdist.local_dist_matrix, partdist.local_dist):
        _raises(ValueError, r"x must be a 3-D tensor", fn, x[0], y)
        _raises(ValueError, r"y must be a 3-D tensor", fn, x, y[..., None])
        _raises(ValueError, r"same number of channels C", fn, x, y[..., :5])
        _raises(ValueError, r"x must have at least one stripe", fn, x[:, :0], y)
        _raises(ValueError, r"y must have at least one stripe", fn, x, y[:, :0])
        _raises(ValueError, r"at least one feature channel", fn, x[..., :0], y[..., :0])
        _raises(TypeError, r"x must be a floating-point tensor", fn, x.long(), y)
        _raises(TypeError, r"y must have the same dtype as x", fn, x, y.double())
        _raises(ValueError, r"y must be on the same device as x", fn, x, y.to("meta"))
        _raises(TypeError, r"x must be a torch.Tensor", fn, x.tolist(), y)
    for fn in (partdist.batch_local_dist, partdist.local_dist_matrix):
        _raises(ValueError, r"same number of images N", fn, x, y[:2])
    big = torch.randn(1, partdist.MAX_STRIPES + 1, 6)
    _raises(ValueError, r"at most 128 stripes", partdist.batch_local_dist, big, big)
    _raises(ValueError, r"at most 128 stripes", partdist.local_dist, big, big)
    _raises(ValueError, r"chunk_size must be a positive int", partdist.local_dist, x, y, chunk_size=0)
    _raises(TypeError, r"chunk_size must be a positive int", partdist.local_dist, x, y, chunk_size=2.5)


def test_bad_inputs_dmli():
    for fn in (partdist.dmli, partdist.dmli_path):
        _raises(ValueError, r"dist must have at least 2 dimensions", fn, torch.rand(5))
        _raises(ValueError, r"m >= 1 and n >= 1", fn, torch.rand(3, 0, 4))
        _raises(TypeError, r"dist must be a floating-point tensor", fn, torch.ones(3, 3, dtype=torch.int64))
        _raises(ValueError, r"at most 128 stripes", fn, torch.rand(2, 129))
    # m = n = 128 is accepted
    d = torch.rand(1, 128, 128, dtype=torch.float64)
    torch.testing.assert_close(partdist.dmli(d), R.dmli_vectorized(d))


def test_direct_op_calls_are_checked_in_cpp():
    # Calling torch.ops.partdist.* directly bypasses the Python checks: the C++
    # checks must still refuse bad input with a clear message instead of crashing.
    x, y = rand_xy(3, 4, 5, C=6, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="same number of images N"):
        torch.ops.partdist.batch_local_dist(x, y[:2], True)
    with pytest.raises(RuntimeError, match="must be a 3-D tensor"):
        torch.ops.partdist.dmli(torch.rand(4, 4))
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.partdist.dmli_backward(torch.rand(2), torch.rand(3, 4, 4), 0.0, -1.0)
    with pytest.raises(RuntimeError, match="floating-point"):
        torch.ops.partdist.local_dist(x.int(), y.int(), True, 0)


# --------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    x, y = rand_xy(33, 8, 6, C=32, dtype=dtype)
    xc, yc = x.cuda(), y.cuda()
    torch.testing.assert_close(partdist.batch_local_dist(xc, yc).cpu(), partdist.batch_local_dist(x, y), **tol(dtype))
    torch.testing.assert_close(partdist.local_dist_matrix(xc, yc).cpu(), partdist.local_dist_matrix(x, y), **tol(dtype))
    torch.testing.assert_close(partdist.local_dist(xc, yc, chunk_size=100).cpu(), partdist.local_dist(x, y), **tol(dtype))
    d = torch.randint(0, 3, (50, 7, 9)).to(dtype)
    torch.testing.assert_close(partdist.dmli(d.cuda()).cpu(), partdist.dmli(d))
    assert torch.equal(partdist.dmli_path(d.cuda()).cpu(), partdist.dmli_path(d))
    dc = d.cuda().requires_grad_()
    dd = d.clone().requires_grad_()
    partdist.dmli(dc).sum().backward()
    partdist.dmli(dd).sum().backward()
    assert torch.equal(dc.grad.cpu(), dd.grad)


@pytest.mark.cuda
def test_cuda_gradcheck():
    x, y = rand_xy(3, 4, 5, C=6, device="cuda")
    x.requires_grad_()
    y.requires_grad_()
    assert gradcheck(partdist.batch_local_dist, (x, y))
    assert gradcheck(partdist.local_dist_matrix, (x, y))
    assert gradcheck(lambda a, b: partdist.local_dist(a, b, chunk_size=4), (x, y))
    d = torch.rand(3, 4, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    assert gradcheck(partdist.dmli, (d,))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_reduced_precision(dtype):
    x, y = rand_xy(20, 8, 8, C=64, dtype=torch.float32, device="cuda")
    out = partdist.local_dist(x.to(dtype), y.to(dtype))
    assert out.dtype == dtype
    ref = partdist.local_dist(x.to(dtype).float(), y.to(dtype).float())
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.cuda
def test_cuda_mixed_devices_rejected():
    x, y = rand_xy(3, 4, 5)
    with pytest.raises(ValueError, match="same device"):
        partdist.batch_local_dist(x.cuda(), y)


def test_training_gradients_reuse_freed_memory_only():
    # The CPU training pair allocates its gradients (and saved cells) from a small cache
    # of freed blocks (common/buffer_pool.h): a gradient still referenced is never handed
    # out again, a freed one is, and reused memory is fully overwritten.
    ops = torch.ops.partdist

    def step(seed):
        x, y = rand_xy(40, 6, 5, C=12, seed=seed, dtype=torch.float32)
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        partdist.batch_local_dist(a, b).sum().backward()
        gx, gy = ops.batch_local_dist_backward(torch.ones(40), x, y, True, 0.0, -1.0, False)
        assert torch.equal(a.grad, gx) and torch.equal(b.grad, gy)
        return a.grad, b.grad

    kept = step(0)
    kept_copy = [g.clone() for g in kept]
    freed_ptrs = {g.data_ptr() for g in step(1)}  # these gradients are dropped here
    assert ops._pool_stats()[0] >= 2
    again = step(2)
    assert {g.data_ptr() for g in again} & freed_ptrs  # a freed block was reused
    assert not {g.data_ptr() for g in again} & {g.data_ptr() for g in kept}
    for g, c in zip(kept, kept_copy):
        assert torch.equal(g, c)
