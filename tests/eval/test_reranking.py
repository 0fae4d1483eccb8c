"""partdist.eval.re_ranking against the usual dense implementation (partdist.reference)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from partdist.eval import re_ranking
from partdist.eval import reranking as rr
from partdist.reference import re_ranking_dense

TOL = 2e-6  # float32 rounding: the dense code accumulates in float32, re_ranking in float64


def clustered(q, g, seed, d=8, clusters=6, spread=0.6, dtype=np.float64):
    """Distances between points drawn around a few centres (ReID-like neighbourhoods)."""
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(clusters, d))
    x = cent[rng.integers(0, clusters, q + g)] + spread * rng.normal(size=(q + g, d))
    D = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).astype(dtype)
    return D[:q, q:], D[:q, :q], D[q:, q:]


def random_asym(q, g, seed, dtype=np.float32):
    """Unstructured, non-symmetric distances (the usual code does not assume symmetry)."""
    rng = np.random.default_rng(seed)
    qg = rng.random((q, g)).astype(dtype)
    qq = rng.random((q, q)).astype(dtype)
    gg = rng.random((g, g)).astype(dtype)
    np.fill_diagonal(qq, 0)
    np.fill_diagonal(gg, 0)
    return qg, qq, gg


@pytest.mark.parametrize(
    "q,g,k1,k2,lam",
    [
        (30, 90, 20, 6, 0.3),  # paper parameters
        (12, 40, 20, 6, 0.3),  # k1 + 1 > half of N
        (25, 70, 7, 3, 0.5),
        (20, 60, 5, 1, 0.3),  # k2 = 1: no query expansion
        (10, 30, 3, 10, 0.0),  # k2 > k1 + 1; pure Jaccard
        (10, 30, 20, 6, 1.0),  # pure original distance
        (1, 3, 20, 6, 0.3),  # K clipped to N
        (1, 1, 1, 1, 0.3),
    ],
)
def test_matches_dense_clustered(q, g, k1, k2, lam):
    a, b, c = clustered(q, g, seed=q * 1000 + g + k1)
    ref = re_ranking_dense(a, b, c, k1, k2, lam)
    out = re_ranking(a, b, c, k1, k2, lam)
    assert out.shape == (q, g) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_dense_asymmetric(dtype):
    a, b, c = random_asym(17, 53, seed=3, dtype=dtype)
    np.testing.assert_allclose(re_ranking(a, b, c), re_ranking_dense(a, b, c), rtol=0, atol=TOL)


def test_matches_dense_integer_distances_without_ties():
    # integer input: squared in the input type like the usual code. Symmetric, with all
    # off-diagonal values distinct, so that no row has ties
    rng = np.random.default_rng(5)
    n = 40
    iu = np.triu_indices(n, 1)
    D = np.zeros((n, n), dtype=np.int64)
    D[iu] = rng.permutation(len(iu[0])) + 1
    D = D + D.T
    a, b, c = D[:10, 10:], D[:10, :10], D[10:, 10:]
    np.testing.assert_allclose(re_ranking(a, b, c, 5, 3), re_ranking_dense(a, b, c, 5, 3), rtol=0, atol=TOL)


@settings(max_examples=25, deadline=None)
@given(
    q=st.integers(1, 8),
    g=st.integers(1, 25),
    k1=st.integers(1, 30),
    k2=st.integers(1, 9),
    lam=st.floats(0, 1),
    seed=st.integers(0, 2**31),
    chunk=st.sampled_from([None, 1, 2, 7]),
)
def test_matches_dense_property(q, g, k1, k2, lam, seed, chunk):
    a, b, c = clustered(q, g, seed, clusters=3)
    ref = re_ranking_dense(a, b, c, k1, k2, lam)
    out = re_ranking(a, b, c, k1, k2, lam, chunk_size=chunk)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


def test_result_independent_of_chunk_size():
    a, b, c = clustered(40, 150, seed=11, clusters=12)
    full = re_ranking(a, b, c)
    for chunk in (1, 5, 64, 10_000):
        np.testing.assert_array_equal(re_ranking(a, b, c, chunk_size=chunk), full)


def test_small_term_budget_splits_query_chunks(monkeypatch):
    # force the Jaccard stage (and query expansion) into many small pieces
    a, b, c = clustered(30, 100, seed=12, clusters=8)
    full = re_ranking(a, b, c)
    monkeypatch.setattr(rr, "_BLOCK_BYTES", 1)
    np.testing.assert_array_equal(re_ranking(a, b, c), full)


def test_reranking_changes_ranking_as_expected():
    # not a no-op: with clustered data the re-ranked distance differs from the original
    a, b, c = clustered(20, 80, seed=2)
    out = re_ranking(a, b, c)
    assert not np.allclose(out, a)
    assert np.all(np.isfinite(out)) and out.min() >= 0


def test_torch_in_torch_out():
    a, b, c = clustered(15, 45, seed=4, dtype=np.float32)
    ref = re_ranking(a, b, c)
    out = re_ranking(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device.type == "cpu"
    np.testing.assert_array_equal(out.numpy(), ref)
    # requires_grad inputs are fine (detached); float64 tensors too
    out64 = re_ranking(
        torch.from_numpy(a).double().requires_grad_(), torch.from_numpy(b).double(), torch.from_numpy(c).double()
    )
    np.testing.assert_allclose(out64.numpy(), ref, rtol=0, atol=TOL)


def test_numpy_in_numpy_out_and_memmap(tmp_path):
    a, b, c = clustered(15, 45, seed=6, dtype=np.float32)
    mm = np.lib.format.open_memmap(str(tmp_path / "gg.npy"), mode="w+", dtype=np.float32, shape=c.shape)
    mm[:] = c
    mm.flush()
    mm = np.load(str(tmp_path / "gg.npy"), mmap_mode="r")
    out = re_ranking(a, b, mm)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, re_ranking(a, b, c))


def test_topk_rows_breaks_ties_by_index():
    rng = np.random.default_rng(0)
    block = rng.integers(0, 4, size=(30, 25)).astype(np.float32)  # many ties
    for k in (1, 5, 24, 25):
        expect = np.argsort(block, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(rr._topk_rows(block, k), expect)


def test_memory_error_is_explained(monkeypatch):
    def boom(*args, **kwargs):
        raise MemoryError()

    a, b, c = clustered(5, 10, seed=1)
    monkeypatch.setattr(rr, "_topk_rows", boom)
    with pytest.raises(MemoryError, match=r"re_ranking: out of memory while ranking neighbours.*chunk_size"):
        re_ranking(a, b, c)
    monkeypatch.undo()
    monkeypatch.setattr(rr, "_expand_rows", boom)
    with pytest.raises(MemoryError, match=r"re_ranking: out of memory while query expansion"):
        re_ranking(a, b, c)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------


def _ok():
    return clustered(3, 5, seed=0)


@pytest.mark.parametrize(
    "pos,bad,exc,msg",
    [
        (0, [[1.0, 2.0]], TypeError, "q_g_dist must be a numpy array or a torch.Tensor, got list"),
        (1, "x", TypeError, "q_q_dist must be a numpy array or a torch.Tensor"),
        (2, np.zeros((5, 5), dtype=complex), TypeError, "g_g_dist must hold real numbers"),
        (2, np.zeros((5, 5), dtype=bool), TypeError, "g_g_dist must hold real numbers"),
        (0, torch.zeros(3, 5, dtype=torch.bool), TypeError, "q_g_dist must hold real numbers"),
        (0, np.zeros(15), ValueError, r"q_g_dist must be a 2-D matrix, got shape \[15\]"),
        (1, np.zeros((3, 4)), ValueError, r"q_q_dist must have shape \[q, q\] = \[3, 3\]"),
        (2, np.zeros((4, 5)), ValueError, r"g_g_dist must have shape \[g, g\] = \[5, 5\]"),
        (0, np.zeros((0, 5)), ValueError, "at least one query and one gallery item"),
    ],
)
def test_bad_matrices(pos, bad, exc, msg):
    args = list(_ok())
    args[pos] = bad
    with pytest.raises(exc, match=msg):
        re_ranking(*args)


@pytest.mark.parametrize("pos,name", [(0, "q_g_dist"), (1, "q_q_dist"), (2, "g_g_dist")])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_rejected(pos, name, value):
    args = [x.copy() for x in _ok()]
    args[pos][0, 0] = value
    with pytest.raises(ValueError, match=f"{name} must hold finite distances"):
        re_ranking(*args)


def test_all_zero_distances_rejected():
    with pytest.raises(ValueError, match="all distances of item 0 .* are 0"):
        re_ranking(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((3, 3)))


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        ({"k1": 0}, ValueError, "k1 must be an int >= 1, got 0"),
        ({"k1": 2.5}, TypeError, "k1 must be an int >= 1, got 2.5"),
        ({"k1": True}, TypeError, "k1 must be an int"),
        ({"k2": 0}, ValueError, "k2 must be an int >= 1, got 0"),
        ({"k2": "6"}, TypeError, "k2 must be an int"),
        ({"lambda_value": 1.5}, ValueError, r"lambda_value must be in \[0, 1\], got 1.5"),
        ({"lambda_value": -0.1}, ValueError, r"lambda_value must be in \[0, 1\]"),
        ({"lambda_value": None}, TypeError, "lambda_value must be a real number"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be an int >= 1, got 0"),
        ({"chunk_size": 1.0}, TypeError, "chunk_size must be an int"),
    ],
)
def test_bad_parameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        re_ranking(*_ok(), **kwargs)


def test_numpy_integer_parameters_accepted():
    a, b, c = _ok()
    np.testing.assert_array_equal(re_ranking(a, b, c, k1=np.int64(20), k2=np.int32(6)), re_ranking(a, b, c))


def test_fortran_order_and_transposed_inputs(tmp_path):
    # column-major (and transposed-view) inputs give the same result; NaN is found there too
    a, b, c = clustered(12, 30, seed=9, dtype=np.float32)
    ref = re_ranking(a, b, c)
    np.testing.assert_array_equal(re_ranking(np.asfortranarray(a), np.asfortranarray(b), np.asfortranarray(c)), ref)
    np.testing.assert_array_equal(re_ranking(a, b.T.copy().T, np.ascontiguousarray(c.T).T), ref)
    bad = np.asfortranarray(c.copy())
    bad[29, 3] = np.nan
    with pytest.raises(ValueError, match=r"g_g_dist must hold finite distances, found NaN or inf \(columns from 0\)"):
        re_ranking(a, b, bad)
