"""k-reciprocal Jaccard distance of a feature set (fast-reid / OpenUnReID
``compute_jaccard_distance``), without its ``N x N`` dense encodings.

The algorithm the original runs (its ``search_option`` picks a faiss index; every option
computes the same neighbour lists):

1. ``initial_rank``: the ``k1`` nearest neighbours of every feature by squared L2
   distance, itself included (a ``k1``-wide list; the original's slices ``[:k1 + 1]``
   read these ``k1`` columns).
2. ``R(i, k)``: the entries ``j`` of the first ``k + 1`` (at most ``k1``) neighbours of
   ``i`` that have ``i`` among their own first ``k + 1``; the expansion of ``R(i, k1)``
   by every candidate's ``R(c, round(k1 / 2))`` sharing more than 2/3 of it.
3. ``V[i, j] = softmax_j(-||f_i - f_j||^2)`` over the expanded set (the distances by the
   GEMM formula ``xx + yy - 2 x.y`` in the features' dtype), then query expansion
   ``V[i] = mean(V[initial_rank[i, :k2]])`` unless ``k2 == 1``.
4. ``1 - s / (2 - s)`` with ``s[i, j] = sum_f min(V[i, f], V[j, f])``, negatives set to 0.

Here the neighbour lists come from row blocks of one GEMM (ties by index, where faiss
leaves their order to its kernels), ``V`` is kept sparse, and the sums of step 4 are
accumulated from the sparse rows and columns of ``V`` (float64, rounded to float32).
"""

from __future__ import annotations

import numpy as np
import torch

from ..eval.reranking import _csc_of_rows, _expand_rows, _query_expand, _reciprocal_mask, topk_rows

_BLOCK = 1 << 24  # elements of a dense working block


def _sq_dists(f, rows):
    """``||f_r||^2 + ||f||^2 - 2 f_r . f`` for the rows ``rows`` (fast-reid's formula)."""
    x = f[rows]
    d = (x * x).sum(1, keepdim=True) + (f * f).sum(1)[None, :]
    return d.addmm_(x, f.t(), beta=1, alpha=-2)


def neighbour_lists(f: torch.Tensor, k: int) -> np.ndarray:
    """``[N, k]`` int32: the ``k`` nearest features of each (squared L2, ties by index)."""
    n = f.shape[0]
    step = max(1, _BLOCK // max(n, 1))
    out = np.empty((n, k), dtype=np.int32)
    for s in range(0, n, step):
        e = min(s + step, n)
        block = _sq_dists(f, torch.arange(s, e, device=f.device)).float().cpu().numpy()
        out[s:e] = topk_rows(block, k)
    return out


def _encode(f, R, k1):
    """Sparse ``V`` (CSR ``indptr, indices, data``) of step 2-3 before query expansion."""
    n, width = R.shape
    K1 = min(k1 + 1, width)
    H = min(int(np.around(k1 / 2.0)) + 1, width)
    fwd, fwdh = R[:, :K1], R[:, :H]
    rec1 = _reciprocal_mask(R, K1, 256)
    rech = _reciprocal_mask(R, H, 256)
    indptr = np.zeros(n + 1, dtype=np.int64)
    ind_parts, dat_parts = [], []
    sq = (f * f).sum(1)
    step = 256
    for s in range(0, n, step):
        e = min(s + step, n)
        c = e - s
        rec = rec1[s:e]
        rec_idx = np.where(rec, fwd[s:e], -1)
        cand_sets = fwdh[fwd[s:e]]  # (c, K1, H)
        cand_mask = rech[fwd[s:e]]
        member = (cand_sets[..., None] == rec_idx[:, None, None, :]).any(axis=3)
        inter = (member & cand_mask).sum(axis=2)
        ok = rec & (inter > 2.0 / 3 * cand_mask.sum(axis=2))
        row_a = np.broadcast_to(np.arange(c)[:, None], rec.shape)[rec]
        col_a = fwd[s:e][rec]
        sel = ok[..., None] & cand_mask
        row_b = np.broadcast_to(np.arange(c)[:, None, None], sel.shape)[sel]
        col_b = cand_sets[sel]
        keys = np.unique(np.concatenate([row_a, row_b]).astype(np.int64) * n + np.concatenate([col_a, col_b]))
        rows, cols = keys // n, keys % n
        # softmax of -squared distance over each row's set, the distance as fast-reid forms it
        ri = torch.from_numpy(rows + s).to(f.device)
        ci = torch.from_numpy(cols).to(f.device)
        d = (sq[ri] + sq[ci]) - 2 * (f[ri] * f[ci]).sum(1)
        d = d.double().cpu().numpy()
        mn = np.full(c, np.inf)
        np.minimum.at(mn, rows, d)
        w = np.exp(-(d - mn[rows]))
        vals = (w / np.bincount(rows, weights=w, minlength=c)[rows]).astype(np.float32)
        indptr[s + 1: e + 1] = np.bincount(rows, minlength=c)
        ind_parts.append(cols.astype(np.int32))
        dat_parts.append(vals)
    np.cumsum(indptr, out=indptr)
    return indptr, np.concatenate(ind_parts), np.concatenate(dat_parts)


def _jaccard(csr, n):
    """``1 - s / (2 - s)`` for all pairs, negatives 0 (``[n, n]`` float32)."""
    indptr, indices, data = csr
    colptr, crow, cval = _csc_of_rows(csr, 0, n)
    out = np.empty((n, n), dtype=np.float32)
    s = 0
    while s < n:
        e = min(n, s + max(1, _BLOCK // (4 * n)))
        a, b = indptr[s], indptr[e]
        owner = np.repeat(np.arange(e - s, dtype=np.int64), np.diff(indptr[s: e + 1]))
        pos, src = _expand_rows(colptr, indices[a:b].astype(np.int64))
        tgt = owner[src] * n + crow[pos]
        mins = np.minimum(data[a:b][src], cval[pos]).astype(np.float64)
        tmin = np.bincount(tgt, weights=mins, minlength=(e - s) * n).reshape(e - s, n)
        out[s:e] = (1.0 - tmin / (2.0 - tmin)).astype(np.float32)
        s = e
    np.maximum(out, 0, out=out)
    return out


def jaccard_distance(features: torch.Tensor, k1: int, k2: int) -> np.ndarray:
    """``[N, N]`` float32 k-reciprocal Jaccard distance of ``features [N, d]`` (see the module)."""
    f = features.detach()
    n = f.shape[0]
    k = min(k1, n)
    R = neighbour_lists(f, k)
    csr = _encode(f, R, k1)
    if k2 != 1:
        csr = _query_expand(csr, R, min(k2, k), n, 1 << 22)
    return _jaccard(csr, n)
