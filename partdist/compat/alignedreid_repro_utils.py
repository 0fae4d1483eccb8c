"""Drop-in replacements for AlignedReID-Re-Production-Pytorch's ``aligned_reid/utils``
(huanghoujing): ``distance.py``, ``metric.py`` and ``re_ranking.py``, numpy in and out.

Usage: ``from partdist.compat.alignedreid_repro_utils import local_dist, cmc, mean_ap,
re_ranking`` in place of ``from aligned_reid.utils.distance import ...`` etc.

* ``normalize``, ``compute_dist``, ``shortest_dist``, ``meta_local_dist``,
  ``parallel_local_dist``, ``local_dist(x, y)``, ``low_memory_matrix_op`` (distance.py),
  and ``low_memory_local_dist(x, y)`` (the helper of ``dataset/TestSet.py``): the local
  distances by :func:`partdist.local_dist` (tiled, no ``Mm x Nn`` matrix).
* ``cmc``, ``mean_ap`` (metric.py): open-reid's ranking metrics, vectorized.
* ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)``: by
  :func:`partdist.eval.re_ranking`.

Differences (see docs/compat.md): tied distances are ranked by gallery index (the
originals' ``np.argsort`` leaves their order to the sort; ``kind="quicksort"`` asks for
numpy's default sort, the originals' order); ``mean_ap`` is scikit-learn's current
``average_precision_score`` (the original warns unless scikit-learn 0.18.1 is installed,
whose AP interpolates; no scikit-learn is needed here); a stripe distance whose ``exp``
overflows (above 88 in float32) gives 1 where the originals give NaN.
"""

from __future__ import annotations

import numpy as np

from ._alignedreid_np import (
    compute_dist,
    meta_local_dist,
    normalize,
    parallel_local_dist,
    shortest_dist,
    single_shot_mask,
    sklearn_ap,
    sorted_rows,
)

__all__ = ["normalize", "compute_dist", "shortest_dist", "meta_local_dist", "parallel_local_dist", "local_dist",
           "low_memory_matrix_op", "low_memory_local_dist", "cmc", "mean_ap", "re_ranking"]


def local_dist(x, y):
    """huanghoujing ``utils/distance.local_dist(x, y)``: 3-D ``[M, m, d] x [N, n, d] -> [M, N]``
    (the DMLI distance, see :func:`parallel_local_dist`); 2-D as the original computes it
    (see :func:`meta_local_dist`: not the DMLI distance of the pair)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 2 and y.ndim == 2:
        return meta_local_dist(x, y, True)
    if x.ndim == 3 and y.ndim == 3:
        return parallel_local_dist(x, y, True)
    raise NotImplementedError("Input shape not supported.")


def low_memory_matrix_op(func, x, y, x_split_axis, y_split_axis, x_num_splits, y_num_splits, verbose=False):
    """``func(x, y)`` computed on ``x_num_splits x y_num_splits`` blocks and concatenated
    (the original's divide and conquer; ``verbose`` prints one line per block)."""
    rows = []
    for i, part_x in enumerate(np.array_split(x, x_num_splits, axis=x_split_axis)):
        row = []
        for j, part_y in enumerate(np.array_split(y, y_num_splits, axis=y_split_axis)):
            row.append(func(part_x, part_y))
            if verbose:
                print(f"Matrix part ({i + 1}, {j + 1}) / ({x_num_splits}, {y_num_splits})")
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def low_memory_local_dist(x, y):
    """``TestSet``'s ``low_memory_local_dist(x, y)``: the ``[M, N]`` local distance, by
    :func:`partdist.local_dist` (which bounds memory by tiles itself)."""
    return parallel_local_dist(x, y, True)


def _valid(distmat, query_ids, gallery_ids, query_cams, gallery_cams, kind):
    indices = sorted_rows(distmat, kind)
    gid, gcam = gallery_ids[indices], gallery_cams[indices]
    matches = gid == query_ids[:, None]
    valid = (gid != query_ids[:, None]) | (gcam != query_cams[:, None])
    return indices, matches, valid, gid, gcam


def cmc(distmat, query_ids=None, gallery_ids=None, query_cams=None, gallery_cams=None, topk=100,
        separate_camera_set=False, single_gallery_shot=False, first_match_break=False, average=True,
        kind="stable"):
    """open-reid / huanghoujing ``cmc``: the CMC curve (``[topk]``), or with
    ``average=False`` ``(ret [num_query, topk], is_valid_query [num_query])``.

    Gallery items with the query's id and camera are left out (and all of the query's
    camera with ``separate_camera_set``). Each match ``k`` (0-based among the kept items,
    the ``j``-th match) adds ``1 / #matches`` at rank ``k - j`` (the first match only,
    adding 1, with ``first_match_break``), ranks ``>= topk`` ignored; then the cumulative
    sum. ``single_gallery_shot``: 100 draws of one item per gallery identity by
    ``np.random.choice``, in the original's call order (the same draws for the same
    ``np.random`` state and the same ranking). ``kind``: the argsort kind (``"stable"``:
    ties by gallery index; ``"quicksort"``: numpy's default, the original's).

    Raises:
        RuntimeError: no query has a match ("No valid query", as the original).
    """
    distmat = np.asarray(distmat)
    query_ids, gallery_ids = np.asarray(query_ids), np.asarray(gallery_ids)
    query_cams, gallery_cams = np.asarray(query_cams), np.asarray(gallery_cams)
    m = distmat.shape[0]
    ids = (query_ids, gallery_ids, query_cams, gallery_cams)
    if (first_match_break and not single_gallery_shot and not separate_camera_set and kind == "stable"
            and all(np.issubdtype(a.dtype, np.integer) for a in ids)):
        return _cmc_first_match(distmat, ids, topk, average)
    indices, matches, valid, gid, gcam = _valid(distmat, query_ids, gallery_ids, query_cams, gallery_cams, kind)
    if separate_camera_set:
        valid &= gcam != query_cams[:, None]
    good = matches & valid
    is_valid_query = good.any(axis=1).astype(np.float64)
    ret = np.zeros((m, topk))
    if single_gallery_shot:
        for i in np.nonzero(is_valid_query)[0]:
            inds = np.nonzero(valid[i])[0]
            for _ in range(100):
                sampled = valid[i] & single_shot_mask(inds, gid[i][valid[i]], valid.shape[1])
                index = np.nonzero(matches[i, sampled])[0]
                delta = 1.0 / (len(index) * 100)
                for j, k in enumerate(index):
                    if k - j >= topk:
                        break
                    if first_match_break:
                        ret[i, k - j] += 1
                        break
                    ret[i, k - j] += delta
    else:
        # rank of each match among the kept items, minus the matches before it: the
        # non-matches before it
        kept_nonmatch = valid & ~matches
        before = np.cumsum(kept_nonmatch, axis=1)
        rows, cols = np.nonzero(good)
        r = before[rows, cols]
        if first_match_break:
            first = np.r_[True, rows[1:] != rows[:-1]]
            rows, r = rows[first], r[first]
            w = np.ones(len(rows))
        else:
            w = 1.0 / good.sum(axis=1)[rows]
        keep = r < topk
        np.add.at(ret, (rows[keep], r[keep]), w[keep])
    num_valid = int(is_valid_query.sum())
    if num_valid == 0:
        raise RuntimeError("No valid query")
    ret = ret.cumsum(axis=1)
    if average:
        return np.sum(ret, axis=0) / num_valid
    return ret, is_valid_query


def _cmc_first_match(distmat, ids, topk, average):
    """:func:`cmc` with ``first_match_break`` from the rank of each query's first match,
    counted by partdist's ranking operator (no sort of the rows; ties by gallery index)."""
    import torch

    from .. import _C  # noqa: F401  (registers torch.ops.partdist)

    d = distmat if distmat.dtype in (np.float32, np.float64) else distmat.astype(np.float64)
    t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in ids]
    firsts = torch.ops.partdist.rank_metrics(torch.from_numpy(np.ascontiguousarray(d)), *t, False, False)[0].numpy()
    is_valid_query = (firsts > 0).astype(np.float64)
    num_valid = int(is_valid_query.sum())
    if num_valid == 0:
        raise RuntimeError("No valid query")
    ret = (np.arange(1, topk + 1)[None, :] >= firsts[:, None]) & (firsts[:, None] > 0)
    ret = ret.astype(np.float64)
    if average:
        return np.sum(ret, axis=0) / num_valid
    return ret, is_valid_query


def mean_ap(distmat, query_ids=None, gallery_ids=None, query_cams=None, gallery_cams=None, average=True,
            kind="stable"):
    """open-reid / huanghoujing ``mean_ap``: mAP, or with ``average=False``
    ``(aps [num_query], is_valid_query [num_query])``.

    Per query: scikit-learn's ``average_precision_score`` of the matches against the
    negated distances over the gallery items kept (same id and camera left out); tied
    distances count as one threshold, so the AP does not depend on the order of ties.
    ``kind`` is accepted for symmetry with :func:`cmc`.
    """
    distmat = np.asarray(distmat)
    query_ids, gallery_ids = np.asarray(query_ids), np.asarray(gallery_ids)
    query_cams, gallery_cams = np.asarray(query_cams), np.asarray(gallery_cams)
    m = distmat.shape[0]
    indices, matches, valid, _, _ = _valid(distmat, query_ids, gallery_ids, query_cams, gallery_cams, kind)
    aps = np.zeros(m)
    is_valid_query = np.zeros(m)
    sd = np.take_along_axis(distmat, indices, axis=1)
    for i in range(m):
        y_true = matches[i, valid[i]]
        if not np.any(y_true):
            continue
        is_valid_query[i] = 1
        aps[i] = sklearn_ap(y_true, sd[i][valid[i]])
    if average:
        return float(np.sum(aps)) / np.sum(is_valid_query)
    return aps, is_valid_query


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """huanghoujing ``utils/re_ranking.re_ranking``: k-reciprocal re-ranking of the three
    distance matrices (numpy), ``[num_query, num_gallery]`` float32. Computed by
    :func:`partdist.eval.re_ranking` (no ``(q+g)^2`` intermediates); equal to the original
    up to float32 rounding, ties in a distance row ordered by index."""
    from ..eval.reranking import re_ranking as _re_ranking

    return np.asarray(_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=k1, k2=k2, lambda_value=lambda_value))
