"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with bounded memory.

:func:`re_ranking` takes the three distance matrices that ReID codebases pass to the
usual implementation (query x gallery, query x query, gallery x gallery; global, local
or fused distances) and returns the re-ranked query x gallery distance, equal to what
the usual dense implementation returns (up to float32 rounding, about 1e-6) but
without its (q+g)^2 intermediates.

How the usual implementation is restructured
--------------------------------------------
Let ``N = q + g`` and ``A`` the N x N matrix ``[[q_q, q_g], [q_g^T, g_g]]`` squared
(cast to float32 after squaring, as the usual code does). The usual code builds ``A``,
normalizes each column by its maximum and transposes it (``O = (A / max_col(A))^T``),
argsorts every row of ``O`` (an N x N int matrix), builds the dense N x N k-reciprocal
encoding ``V``, its query-expanded copy, and an N-wide Jaccard row per query. Here:

1. **Neighbour lists.** Row ``i`` of ``O`` is column ``i`` of ``A`` divided by its
   maximum. Rows are formed ``chunk_size`` at a time straight from the input matrices
   (a ``chunk_size x N`` float32 block) and only the first ``K = max(k1 + 1, k2)``
   entries of their argsort are kept (``np.argpartition`` plus a sort of the K
   candidates; ties broken by the smaller index, i.e. as a stable sort would).
   Kept: ``N x K`` int32 plus N column maxima.
2. **k-reciprocal sets and their expansion** (the ``2/3`` rule with ``round(k1/2)``
   neighbour sets) are computed from the neighbour lists only, vectorized per chunk;
   the weights ``exp(-O[i, j])`` are gathered from the inputs for the (i, j) pairs
   needed. ``V`` is kept sparse (CSR: at most ``(k1+1) * (round(k1/2)+2)`` entries a
   row, typically a few dozen).
3. **Query expansion** (``k2``): ``V_qe[i] = mean(V[top-k2 neighbours of i])``, sparse
   (at most ``k2`` times the entries of a row of ``V``).
4. **Jaccard distance** of each query to each gallery item,
   ``1 - s / (2 - s)`` with ``s = sum_f min(V_qe[i, f], V_qe[j, f])``, accumulated
   from the sparse rows of the queries and the sparse columns of the gallery part of
   ``V_qe`` (the usual code's inverted index), query chunk by query chunk, each chunk
   holding at most ``max(1, chunk_size)`` queries and a bounded number of
   (query, feature, gallery) terms.

Memory
------
Besides the inputs (which the caller holds anyway) and the q x g float32 output:
``O(N * K)`` for the neighbour lists, ``O(nnz(V) + nnz(V_qe))`` for the sparse
encodings (bounded by ``N * k2 * (k1+1) * (round(k1/2)+2)`` entries, in practice
``N`` times a few hundred), and dense blocks of about ``chunk_size * N * 12`` bytes.
For Market-1501 (N = 19,281) the default chunk keeps each block near 64 MiB, against
about 1.5 GB for *each* of the usual code's N x N float32 matrices (it holds several
at once, plus an N x N int argsort; hence the reported 8-32 GB).

The inputs are only read by slices (plus one gather of ``O(nnz(V))`` single entries),
so ``g_g_dist`` may be a ``numpy.memmap`` for galleries whose g x g matrix does not
fit in memory. The slices are *column* blocks of ``q_q_dist`` and ``g_g_dist`` (row i
of the ranked matrix is column i of the distances, as in the usual code): for a
disk-backed matrix store it column-major (Fortran order), or, if it is symmetric,
pass ``g_g_dist.T`` of a C-order memmap (a free view with the same values), so that
each block is one contiguous read. A row-major memmap works but re-reads the file once
per block. (Only in-memory inputs are tested at Market-1501 scale: 3,368 x 15,913
takes about 7 s and 360 MiB beyond the inputs, output included, on one CPU core.)

When an allocation fails, a :class:`MemoryError` names the stage and the sizes
involved and suggests a smaller ``chunk_size``. (On Linux with memory overcommit the
kernel may instead kill the process when pages are touched; the bound above is what
keeps that from happening at the sizes ReID benchmarks have.)

Differences from the usual implementation
-----------------------------------------
* Ties in a distance row are ordered by index (the usual ``np.argsort`` leaves the
  order of equal distances to the sort algorithm); without ties the neighbour lists
  are identical.
* Sums are accumulated in float64 then rounded to float32, so values differ from the
  usual float32 accumulation by float32 rounding only (about 1e-7 to 1e-6).
* Non-finite distances are rejected (``ValueError``) instead of propagating NaNs.
"""

from __future__ import annotations

import numbers
from typing import Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from .._checks import is_instance_of

__all__ = ["re_ranking", "rerank_source", "DistanceSource", "DenseSource", "neighbour_lists", "topk_rows"]

_OP = "re_ranking"
# Target size of one dense working block, in bytes.
_BLOCK_BYTES = 64 << 20


# --------------------------------------------------------------------------------------
# Argument handling
# --------------------------------------------------------------------------------------


def _is_torch(x):
    return is_instance_of(x, "torch", "Tensor")


def _as_array(name, x):
    """numpy view of ``x`` (numpy array, numpy.memmap or torch tensor)."""
    if _is_torch(x):
        import torch

        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{_OP}: {name} must hold real numbers (float or int), got dtype {x.dtype}")
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{_OP}: {name} must hold real numbers (float or int), got dtype {x.dtype}")
        return x
    raise TypeError(f"{_OP}: {name} must be a numpy array or a torch.Tensor, got {type(x).__name__}")


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{_OP}: {name} must be an int >= {lo}, got {v!r}")
    if v < lo:
        raise ValueError(f"{_OP}: {name} must be an int >= {lo}, got {v}")
    return int(v)


def _check_finite(name, x, block_bytes):
    # walk along the contiguous axis (matters for a disk-backed memmap)
    cols = x.flags.f_contiguous and not x.flags.c_contiguous
    y = x.T if cols else x
    step = max(1, block_bytes // (8 * max(1, y.shape[1])))
    for s in range(0, y.shape[0], step):
        if not np.isfinite(y[s : s + step]).all():
            where = "columns" if cols else "rows"
            raise ValueError(f"{_OP}: {name} must hold finite distances, found NaN or inf ({where} from {s})")


def _default_chunk(n):
    # a block holds chunk x N float32 values plus int/float64 temporaries (~12 B/entry)
    return int(max(1, min(4096, _BLOCK_BYTES // (12 * max(n, 1)))))


def _oom(stage, detail, chunk):
    return MemoryError(
        f"{_OP}: out of memory while {stage} ({detail}). Memory use is O((q+g) * k) for the "
        f"neighbour lists and sparse encodings plus chunk_size x (q+g) dense blocks "
        f"(chunk_size={chunk}); try a smaller chunk_size, or smaller k1/k2."
    )


@runtime_checkable
class DistanceSource(Protocol):
    """What the re-ranking reads of the distances: ``A = [[q_q, q_g], [q_g^T, g_g]] ** 2``
    (float32), ``N = q + g`` items (queries first), without ``A`` being built.

    :class:`DenseSource` reads it from the three distance matrices;
    :func:`partdist.eval.re_ranking_features` computes it from features block by block.
    """

    q: int  # queries
    g: int  # gallery items
    n: int  # q + g

    def columns(self, start: int, stop: int) -> np.ndarray:
        """``A[:, start:stop].T``, a ``(stop - start) x N`` float32 block; the blocks asked
        for never straddle the query / gallery boundary, and come in increasing order."""

    def gather(self, j: np.ndarray, i: np.ndarray) -> np.ndarray:
        """``A[j, i]`` (float32) for int64 index arrays of equal shape."""

    def qg_sq(self, start: int, stop: int) -> np.ndarray:
        """``q_g[start:stop] ** 2`` as float32 ``[stop - start, g]`` (the original distances
        blended into the result)."""


class DenseSource:
    """:class:`DistanceSource` over the three distance matrices (numpy arrays or memmaps)."""

    def __init__(self, qg, qq, gg):
        self.qg, self.qq, self.gg = qg, qq, gg
        self.q, self.g = qg.shape
        self.n = self.q + self.g
        self.dtype = np.result_type(qg.dtype, qq.dtype, gg.dtype)

    def _sq(self, x):
        # the usual code squares in the input precision, then casts to float32
        x = np.asarray(x, dtype=self.dtype)
        return np.power(x, 2).astype(np.float32)

    def columns(self, start, stop):
        """``A[:, start:stop].T`` as a ``(stop-start) x N`` float32 block (one side of q only)."""
        q = self.q
        if stop <= q:
            top = self.qq[:, start:stop].T
            bottom = self.qg[start:stop, :]
        else:
            a, b = start - q, stop - q
            top = self.qg[:, a:b].T
            bottom = self.gg[:, a:b].T
        out = np.empty((stop - start, self.n), dtype=np.float32)
        out[:, :q] = self._sq(top)
        out[:, q:] = self._sq(bottom)
        return out

    def gather(self, j, i):
        """``A[j, i]`` for index arrays ``j`` and ``i`` of equal shape."""
        q = self.q
        out = np.empty(j.shape, dtype=np.float32)
        jq, iq = j < q, i < q
        for mj, mi, src, oj, oi in (
            (jq, iq, self.qq, 0, 0),
            (~jq, iq, self.qg, q, 0),  # A[q+b, a] = q_g[a, b]
            (jq, ~iq, self.qg, 0, q),  # A[a, q+b] = q_g[a, b]
            (~jq, ~iq, self.gg, q, q),
        ):
            m = mj & mi
            if not m.any():
                continue
            jj, ii = j[m] - oj, i[m] - oi
            if src is self.qg and oj == q:
                vals = src[ii, jj]
            else:
                vals = src[jj, ii]
            out[m] = self._sq(vals)
        return out

    def qg_sq(self, s, e):
        return self._sq(self.qg[s:e])


# --------------------------------------------------------------------------------------
# Stage 1: top-K neighbour lists of every row of O
# --------------------------------------------------------------------------------------


def topk_rows(block: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` entries of a stable argsort of each row of ``block`` (k <= width)."""
    c, n = block.shape
    if k >= n:
        return np.argsort(block, axis=1, kind="stable")[:, :k]
    kth = np.partition(block, k - 1, axis=1)[:, k - 1 : k]
    rows, cols = np.nonzero(block <= kth)  # >= k per row (more only with ties at kth)
    vals = block[rows, cols]
    order = np.lexsort((cols, vals, rows))  # by row, then value, then index
    rows, cols = rows[order], cols[order]
    counts = np.bincount(rows, minlength=c)
    starts = np.cumsum(counts) - counts
    take = (starts[:, None] + np.arange(k)[None, :]).ravel()
    return cols[take].reshape(c, k)


# neighbour_lists calls it by this module-level name, which tests replace to simulate a failure
_topk_rows = topk_rows


def neighbour_lists(D: DistanceSource, K: int, chunk: int) -> Tuple[np.ndarray, np.ndarray]:
    """Stage 1: the first ``K`` entries of the stable argsort of every row of ``O`` (``[N, K]``
    int32) and the column maxima of ``A`` (``[N]`` float32), ``chunk`` rows at a time."""
    n = D.n
    R = np.empty((n, K), dtype=np.int32)
    colmax = np.empty(n, dtype=np.float32)
    for lo, hi in ((0, D.q), (D.q, n)):
        for s in range(lo, hi, chunk):
            e = min(s + chunk, hi)
            try:
                block = D.columns(s, e)
                m = block.max(axis=1)
                if not (m > 0).all():
                    bad = s + int(np.argmin(m > 0))
                    raise ValueError(
                        f"{_OP}: all distances of item {bad} of the concatenated [query; gallery] set are 0 "
                        "(the usual implementation divides by their maximum); distances must not be all zero"
                    )
                colmax[s:e] = m
                block /= m[:, None]
                R[s:e] = _topk_rows(block, K)
            except MemoryError:
                raise _oom("ranking neighbours", f"block of {e - s} x {n}", chunk) from None
            del block
    return R, colmax


# --------------------------------------------------------------------------------------
# Stage 2: sparse k-reciprocal encoding V (CSR)
# --------------------------------------------------------------------------------------


def _reciprocal_mask(R, width, chunk):
    """``M[i, t] = i in R[R[i, t], :width]`` for ``t < width``."""
    n = R.shape[0]
    fwd = R[:, :width]
    M = np.empty((n, width), dtype=bool)
    step = max(1, chunk * 8)
    for s in range(0, n, step):
        e = min(s + step, n)
        back = fwd[fwd[s:e]]  # (c, width, width)
        M[s:e] = (back == np.arange(s, e, dtype=np.int32)[:, None, None]).any(axis=2)
    return M


def _encode(D, R, colmax, k1, chunk):
    n = D.n
    K1 = min(k1 + 1, n)
    H = min(int(np.around(k1 / 2.0)) + 1, n)
    fwd, fwdh = R[:, :K1], R[:, :H]
    rec1 = _reciprocal_mask(R, K1, chunk)
    rech = _reciprocal_mask(R, H, chunk)

    indptr = np.zeros(n + 1, dtype=np.int64)
    indices_parts, data_parts = [], []
    step = max(1, chunk)
    for s in range(0, n, step):
        e = min(s + step, n)
        c = e - s
        rec = rec1[s:e]  # (c, K1): which forward neighbours are k-reciprocal
        rec_idx = np.where(rec, fwd[s:e], -1)  # the k-reciprocal set, -1 elsewhere
        cand = fwd[s:e]  # candidates (used where rec)
        cand_sets = fwdh[cand]  # (c, K1, H)
        cand_mask = rech[cand]  # (c, K1, H): the candidates' own reciprocal sets
        member = (cand_sets[..., None] == rec_idx[:, None, None, :]).any(axis=3)
        inter = (member & cand_mask).sum(axis=2)
        cnt = cand_mask.sum(axis=2)
        ok = rec & (inter > 2.0 / 3 * cnt)

        row_a = np.broadcast_to(np.arange(c)[:, None], rec.shape)[rec]
        col_a = fwd[s:e][rec]
        sel = ok[..., None] & cand_mask
        row_b = np.broadcast_to(np.arange(c)[:, None, None], sel.shape)[sel]
        col_b = cand_sets[sel]
        keys = np.unique(np.concatenate([row_a, row_b]).astype(np.int64) * n + np.concatenate([col_a, col_b]))
        rows = (keys // n).astype(np.int64)
        cols = (keys % n).astype(np.int32)
        # weights exp(-O[i, j]), O[i, j] = A[j, i] / colmax[i]
        gi = rows + s
        o = D.gather(cols.astype(np.int64), gi) / colmax[gi]
        w = np.exp(-o).astype(np.float64)
        sums = np.bincount(rows, weights=w, minlength=c)
        vals = (w / sums[rows]).astype(np.float32)
        indptr[s + 1 : e + 1] = np.bincount(rows, minlength=c)
        indices_parts.append(cols)
        data_parts.append(vals)
    np.cumsum(indptr, out=indptr)
    return indptr, np.concatenate(indices_parts), np.concatenate(data_parts)


# --------------------------------------------------------------------------------------
# Stage 3: query expansion
# --------------------------------------------------------------------------------------


def _expand_rows(indptr, src_rows):
    """Entry positions of the CSR rows ``src_rows`` (flat), and the index of the source row of each."""
    starts = indptr[src_rows]
    counts = indptr[src_rows + 1] - starts
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(src_rows)), counts)
    offs = np.cumsum(counts) - counts
    pos = np.arange(total, dtype=np.int64) - np.repeat(offs, counts) + np.repeat(starts, counts)
    return pos, owner


def _query_expand(csr, R, k2, n, budget):
    indptr, indices, data = csr
    K2 = min(k2, n)
    nbr = R[:, :K2].astype(np.int64)
    row_nnz = np.diff(indptr)
    work = row_nnz[nbr].sum(axis=1)  # entries gathered per row
    out_ptr = np.zeros(n + 1, dtype=np.int64)
    ind_parts, dat_parts = [], []
    s = 0
    while s < n:
        cum = np.cumsum(work[s:])
        e = s + max(1, int(np.searchsorted(cum, budget, side="right")))
        e = min(e, n)
        src = nbr[s:e].ravel()
        pos, owner = _expand_rows(indptr, src)
        local = owner // K2
        keys = local.astype(np.int64) * n + indices[pos]
        uk, inv = np.unique(keys, return_inverse=True)
        sums = np.bincount(inv, weights=data[pos].astype(np.float64), minlength=len(uk))
        rows = uk // n
        out_ptr[s + 1 : e + 1] = np.bincount(rows, minlength=e - s)
        ind_parts.append((uk % n).astype(np.int32))
        dat_parts.append((sums / K2).astype(np.float32))
        s = e
    np.cumsum(out_ptr, out=out_ptr)
    return out_ptr, np.concatenate(ind_parts), np.concatenate(dat_parts)


# --------------------------------------------------------------------------------------
# Stage 4: Jaccard distances and the final blend
# --------------------------------------------------------------------------------------


def _csc_of_rows(csr, row_lo, n_cols):
    """CSC (column pointers, row indices relative to row_lo, values) of the rows >= row_lo."""
    indptr, indices, data = csr
    a = indptr[row_lo]
    cols = indices[a:]
    rows = np.repeat(np.arange(len(indptr) - 1 - row_lo, dtype=np.int32), np.diff(indptr[row_lo:]))
    order = np.argsort(cols, kind="stable")
    colptr = np.zeros(n_cols + 1, dtype=np.int64)
    colptr[1:] = np.cumsum(np.bincount(cols, minlength=n_cols))
    return colptr, rows[order], data[a:][order]


def _final(D, csr, colmax, lambda_value, chunk, budget):
    q, g, n = D.q, D.g, D.n
    indptr, indices, data = csr
    colptr, crow, cval = _csc_of_rows(csr, q, n)
    col_nnz = np.diff(colptr)
    # (query, feature, gallery) terms per query
    entry_row = np.repeat(np.arange(q), np.diff(indptr[: q + 1]))
    terms = np.bincount(entry_row, weights=col_nnz[indices[: indptr[q]]], minlength=q)
    out = np.empty((q, g), dtype=np.float32)
    s = 0
    while s < q:
        cum = np.cumsum(terms[s : s + chunk])
        e = s + max(1, int(np.searchsorted(cum, budget, side="right")))
        e = min(e, s + chunk, q)
        try:
            a, b = indptr[s], indptr[e]
            feat = indices[a:b]
            val = data[a:b]
            owner = np.repeat(np.arange(e - s, dtype=np.int64), np.diff(indptr[s : e + 1]))
            pos, src = _expand_rows(colptr, feat.astype(np.int64))
            tgt = owner[src] * g + crow[pos]
            mins = np.minimum(val[src], cval[pos]).astype(np.float64)
            tmin = np.bincount(tgt, weights=mins, minlength=(e - s) * g).reshape(e - s, g)
            jac = (1.0 - tmin / (2.0 - tmin)).astype(np.float32)
            orig = D.qg_sq(s, e) / colmax[s:e, None]
            out[s:e] = jac * np.float32(1 - lambda_value) + orig * np.float32(lambda_value)
        except MemoryError:
            raise _oom("computing Jaccard distances", f"{e - s} queries x {g} gallery", chunk) from None
        s = e
    return out


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------


def _check_params(k1, k2, lambda_value):
    k1 = _check_int("k1", k1, 1)
    k2 = _check_int("k2", k2, 1)
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, numbers.Real):
        raise TypeError(f"{_OP}: lambda_value must be a real number in [0, 1], got {lambda_value!r}")
    lambda_value = float(lambda_value)
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"{_OP}: lambda_value must be in [0, 1], got {lambda_value}")
    return k1, k2, lambda_value


def rerank_source(
    D: DistanceSource, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *, chunk_size: Optional[int] = None
) -> np.ndarray:
    """k-reciprocal re-ranking of the distances a :class:`DistanceSource` gives: the
    re-ranked ``[q, g]`` distance (float32 numpy). ``k1``, ``k2``, ``lambda_value`` and
    ``chunk_size`` as in :func:`re_ranking` (checked here)."""
    k1, k2, lambda_value = _check_params(k1, k2, lambda_value)
    chunk = _default_chunk(D.n) if chunk_size is None else _check_int("chunk_size", chunk_size, 1)
    return _rerank(D, k1, k2, lambda_value, chunk)


def _rerank(D, k1, k2, lambda_value, chunk):
    """Stages 1-4 on a distance source ``D`` (checked parameters)."""
    q, g, n = D.q, D.g, D.n
    # entries of gathered terms per working chunk, ~40 bytes each
    budget = max(1 << 16, (_BLOCK_BYTES // 40) * chunk // _default_chunk(n))
    K = min(max(k1 + 1, k2), n)
    try:
        R, colmax = neighbour_lists(D, K, chunk)
        try:
            csr = _encode(D, R, colmax, k1, chunk)
        except MemoryError:
            raise _oom("building the k-reciprocal encoding", f"N = {n}, k1 = {k1}", chunk) from None
        if k2 != 1:
            try:
                csr = _query_expand(csr, R, k2, n, budget)
            except MemoryError:
                raise _oom("query expansion", f"N = {n}, k2 = {k2}", chunk) from None
        del R
        return _final(D, csr, colmax, lambda_value, chunk, budget)
    except MemoryError as err:
        if str(err).startswith((_OP, "partdist.")):
            raise
        raise _oom("re-ranking", f"q = {q}, g = {g}", chunk) from None


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3, *, chunk_size=None):
    """k-reciprocal re-ranking of a query x gallery distance matrix.

    Args:
        q_g_dist: ``[q, g]`` query-gallery distances (numpy array, ``numpy.memmap`` or
            torch tensor; global, local or fused distances).
        q_q_dist: ``[q, q]`` query-query distances.
        g_g_dist: ``[g, g]`` gallery-gallery distances (may be a ``numpy.memmap``).
        k1: size of the k-reciprocal neighbourhood (paper: 20).
        k2: size of the query-expansion neighbourhood (paper: 6; 1 disables it).
        lambda_value: weight of the original distance in the result (paper: 0.3).
        chunk_size: rows per dense working block (default: a block of about 64 MiB).
            Smaller values lower peak memory; the result does not depend on it.

    Returns:
        The re-ranked ``[q, g]`` distance, float32: a numpy array if ``q_g_dist`` is
        one, else a torch tensor on ``q_g_dist``'s device.

    Raises:
        TypeError / ValueError: bad types, shapes, non-finite distances or parameters.
        MemoryError: an allocation failed; the message names the stage and sizes.

    See the module docstring for the memory bound and how the result compares with
    the usual dense implementation (:func:`partdist.reference.re_ranking_dense`).
    """
    want_torch = _is_torch(q_g_dist)
    device = q_g_dist.device if want_torch else None
    qg = _as_array("q_g_dist", q_g_dist)
    qq = _as_array("q_q_dist", q_q_dist)
    gg = _as_array("g_g_dist", g_g_dist)
    for name, x in (("q_g_dist", qg), ("q_q_dist", qq), ("g_g_dist", gg)):
        if x.ndim != 2:
            raise ValueError(f"{_OP}: {name} must be a 2-D matrix, got shape {list(x.shape)}")
    q, g = qg.shape
    if q < 1 or g < 1:
        raise ValueError(f"{_OP}: q_g_dist must have at least one query and one gallery item, got shape {[q, g]}")
    if qq.shape != (q, q):
        raise ValueError(f"{_OP}: q_q_dist must have shape [q, q] = {[q, q]} (q from q_g_dist), got {list(qq.shape)}")
    if gg.shape != (g, g):
        raise ValueError(f"{_OP}: g_g_dist must have shape [g, g] = {[g, g]} (g from q_g_dist), got {list(gg.shape)}")
    k1, k2, lambda_value = _check_params(k1, k2, lambda_value)
    n = q + g
    if chunk_size is None:
        chunk = _default_chunk(n)
    else:
        chunk = _check_int("chunk_size", chunk_size, 1)
    for name, x in (("q_g_dist", qg), ("q_q_dist", qq), ("g_g_dist", gg)):
        _check_finite(name, x, _BLOCK_BYTES)

    out = _rerank(DenseSource(qg, qq, gg), k1, k2, lambda_value, chunk)

    if want_torch:
        import torch

        return torch.from_numpy(out).to(device)
    return out
