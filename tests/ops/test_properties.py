"""Property-based tests (hypothesis) of the DMLI family against the pure-PyTorch reference.

Default budget is small so CI stays fast; ``PARTDIST_HYPOTHESIS_EXAMPLES=1000 pytest
tests/ops/test_properties.py`` runs a longer search.
"""

import math
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import partdist  # noqa: E402
from partdist import reference as R  # noqa: E402

EXAMPLES = int(os.environ.get("PARTDIST_HYPOTHESIS_EXAMPLES", "25"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("PARTDIST_HYPOTHESIS_RANDOM") is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DTYPES = st.sampled_from([torch.float32, torch.float64])
# Value regimes: generic, ties (small integers), zeros, huge, tiny.
REGIMES = st.sampled_from(["normal", "ties", "zeros", "huge", "tiny"])


def make_values(shape, regime, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if regime == "ties":
        return torch.randint(0, 3, shape, generator=g).to(dtype)
    if regime == "zeros":
        return torch.zeros(shape, dtype=dtype)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    scale = {"normal": 1.0, "huge": 1e15 if dtype == torch.float64 else 1e12, "tiny": 1e-12}[regime]
    return (v * scale).to(dtype)


def views(t, kind):
    """The same values as a contiguous, non-contiguous or expanded tensor."""
    if kind == "contiguous":
        return t
    if kind == "transposed":
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    # expanded: every pair shares the first image's values (stride 0 on dim 0)
    return t[:1].expand_as(t)


def close(a, b, dtype, scale=1.0):
    tol = (1e-4 if dtype == torch.float32 else 1e-9) * max(1.0, scale)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


shapes = st.tuples(st.integers(0, 5), st.integers(1, 12), st.integers(1, 12), st.integers(1, 9))


@SETTINGS
@given(shape=shapes, dtype=DTYPES, regime=REGIMES, view=st.sampled_from(["contiguous", "transposed", "expanded"]),
       seed=st.integers(0, 2**16))
def test_dmli_matches_reference(shape, dtype, regime, view, seed):
    P, m, n, _ = shape
    d = views(make_values((P, m, n), regime, dtype, seed).abs(), view)
    out = partdist.dmli(d)
    ref = R.dmli_vectorized(d) if P else d.new_zeros(0)
    close(out, ref, dtype, scale=float(d.abs().max()) * (m + n) if d.numel() else 1.0)
    if P and regime in ("normal", "ties"):
        a = d.detach().clone().requires_grad_()
        b = d.detach().clone().requires_grad_()
        partdist.dmli(a).sum().backward()
        R.dmli_vectorized(b).sum().backward()
        torch.testing.assert_close(a.grad, b.grad)
        assert torch.equal(partdist.dmli_path(d), b.grad != 0)


@SETTINGS
@given(shape=shapes, dtype=DTYPES, regime=REGIMES, normalize=st.booleans(), seed=st.integers(0, 2**16))
def test_batch_local_dist_matches_reference(shape, dtype, regime, normalize, seed):
    N, m, n, C = shape
    x = make_values((N, m, C), regime, dtype, seed)
    y = make_values((N, n, C), regime, dtype, seed + 1)
    out = partdist.batch_local_dist(x, y, normalize)
    assert out.shape == (N,)
    if regime in ("huge",) and not normalize:
        # the GEMM expansion |a|^2 + |b|^2 - 2ab overflows float32 at 1e12 magnitudes (1e24 * C
        # fits in float32's 3.4e38, but the relative cancellation error is large): only finiteness
        assert torch.isfinite(out).all() or dtype == torch.float32
        return
    # float64 reference; tanh(d/2) instead of AlignedReID's (e^d-1)/(e^d+1), which is inf/inf for huge d
    raw = R.local_dist_matrix(x.double(), y.double(), normalize=False)
    ref = R.dmli_vectorized(torch.tanh(raw / 2) if normalize else raw).to(dtype) if N else out
    if normalize:
        # cells are in [0, 1): an error of the stripe distance (the GEMM formulation's
        # cancellation) moves a cell by at most half of it, and saturates for large distances
        atol = (m + n) * (1e-3 if dtype == torch.float32 else 1e-7)
        torch.testing.assert_close(out, ref, rtol=0, atol=atol, equal_nan=True)
    else:
        scale = float(max(x.abs().max(), y.abs().max())) if x.numel() else 1.0
        tol = (1e-3 if dtype == torch.float32 else 1e-7) * (m + n) * max(scale, 1e-30) * math.sqrt(C)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=tol, equal_nan=True)


@SETTINGS
@given(M=st.integers(0, 6), N=st.integers(0, 6), m=st.integers(1, 9), n=st.integers(1, 9),
       C=st.integers(1, 8), chunk=st.one_of(st.none(), st.integers(1, 40)), seed=st.integers(0, 2**16))
def test_local_dist_matches_reference_any_chunk(M, N, m, n, C, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, m, C, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(N, n, C, generator=g, dtype=torch.float64, requires_grad=True)
    out = partdist.local_dist(x, y, chunk_size=chunk)
    assert out.shape == (M, N)
    if M and N:
        x2 = x.detach().clone().requires_grad_()
        y2 = y.detach().clone().requires_grad_()
        ref = R.local_dist(x2, y2)
        torch.testing.assert_close(out, ref)
        w = torch.rand(M, N, generator=g, dtype=torch.float64)
        (out * w).sum().backward()
        (ref * w).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad)
        torch.testing.assert_close(y.grad, y2.grad)


@SETTINGS
@given(P=st.integers(1, 4), m=st.integers(1, 6), n=st.integers(1, 6), seed=st.integers(0, 2**16),
       special=st.sampled_from([float("nan"), float("inf")]))
def test_nan_inf_propagate_per_pair(P, m, n, seed, special):
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(P, m, n, generator=g, dtype=torch.float64)
    d[0, torch.randint(0, m, (1,), generator=g), torch.randint(0, n, (1,), generator=g)] = special
    out = partdist.dmli(d)
    ref = R.dmli_vectorized(d)
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert torch.isfinite(out[1:]).all()


@pytest.mark.parametrize(
    "m,n",
    [pytest.param(partdist.MAX_STRIPES, partdist.MAX_STRIPES, marks=pytest.mark.slow), (1, partdist.MAX_STRIPES), (100, 3)],
)
def test_largest_supported_sizes(m, n):
    g = torch.Generator().manual_seed(m + n)
    x = torch.randn(2, m, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, n, 4, generator=g, dtype=torch.float64, requires_grad=True)
    out = partdist.batch_local_dist(x, y)
    x2 = x.detach().clone().requires_grad_()
    y2 = y.detach().clone().requires_grad_()
    ref = R.batch_local_dist(x2, y2)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(y.grad, y2.grad)


# ------------------------------------------------------------- mining
@SETTINGS
@given(N=st.integers(1, 24), M=st.one_of(st.none(), st.integers(1, 24)), ids=st.integers(1, 6),
       dtype=DTYPES, regime=REGIMES, exclude_self=st.booleans(), transposed=st.booleans(),
       seed=st.integers(0, 2**16))
def test_mining_matches_masked_reference(N, M, ids, dtype, regime, exclude_self, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    cols = N if M is None else M
    dist = make_values((cols, N) if transposed else (N, cols), regime, dtype, seed).abs()
    if transposed:
        dist = dist.t()  # non-contiguous view
    labels = torch.randint(0, ids, (N,), generator=g)
    other = None if M is None else torch.randint(0, ids, (M,), generator=g)
    ex = exclude_self and M is None
    out = partdist.hard_example_mining(dist, labels, labels_other=other, exclude_self=ex)
    ref = R.hard_example_mining_masked(dist, labels, other, ex)
    valid = ref[4]
    assert torch.equal(out.valid, valid)
    for got, exp in zip(out[:4], ref[:4]):
        assert torch.equal(got[valid], exp[valid])
    if valid.any() and regime in ("normal", "ties"):
        a = dist.detach().clone().requires_grad_()
        b = dist.detach().clone().requires_grad_()
        o = partdist.hard_example_mining(a, labels, labels_other=other, exclude_self=ex)
        r = R.hard_example_mining_masked(b, labels, other, ex)
        ((o.dist_ap - o.dist_an) * valid).sum().backward()
        ((r[0] - r[1]) * valid).sum().backward()
        torch.testing.assert_close(a.grad, b.grad)


# ------------------------------------------------ neighborhood differences
@SETTINGS
@given(B=st.integers(0, 2), C=st.integers(1, 3), H=st.integers(1, 7), W=st.integers(1, 7),
       k=st.sampled_from([1, 3, 5, 7]), dtype=DTYPES, regime=REGIMES,
       view=st.sampled_from(["contiguous", "transposed"]), seed=st.integers(0, 2**16))
def test_neighborhood_diff_matches_loop_reference(B, C, H, W, k, dtype, regime, view, seed):
    f = make_values((B, C, H, W), regime, dtype, seed)
    g = make_values((B, C, H, W), regime, dtype, seed + 1)
    if view == "transposed":
        f = f.transpose(2, 3).contiguous().transpose(2, 3)
    out = partdist.neighborhood_diff(f, g, k)
    ref = R.neighborhood_diff_loop(f, g, k)
    torch.testing.assert_close(out, ref, equal_nan=True)
    if B and regime == "normal":
        a, b = f.detach().clone().requires_grad_(), g.detach().clone().requires_grad_()
        a2, b2 = f.detach().clone().requires_grad_(), g.detach().clone().requires_grad_()
        w = torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
        (partdist.neighborhood_diff(a, b, k) * w).sum().backward()
        (R.neighborhood_diff_loop(a2, b2, k) * w).sum().backward()
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(a.grad, a2.grad, rtol=tol, atol=tol)
        torch.testing.assert_close(b.grad, b2.grad, rtol=tol, atol=tol)
