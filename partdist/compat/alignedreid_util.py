"""Drop-in replacements for michuanhaohao/AlignedReID's ``util`` package: ``distance.py``,
``eval_metrics.py`` and ``re_ranking.py``, numpy in and out where the originals take numpy.

Usage: ``from partdist.compat.alignedreid_util import low_memory_local_dist, evaluate,
re_ranking`` in place of ``from util.distance import ...`` etc.

* ``normalize``, ``compute_dist``, ``shortest_dist``, ``unaligned_dist``,
  ``meta_local_dist``, ``parallel_local_dist``, ``local_dist(x, y, aligned)``,
  ``low_memory_matrix_op(..., aligned=True)``, ``low_memory_local_dist(x, y, aligned=True)``
  (distance.py): the local distances by :func:`partdist.local_dist` /
  :func:`partdist.unaligned_dist` (tiled, no ``Mm x Nn`` matrix).
* ``evaluate``, ``eval_market1501``, ``eval_cuhk03`` (eval_metrics.py).
* ``re_ranking(probFea, galFea, k1, k2, lambda_value, local_distmat=None, only_local=False)``.

Differences (see docs/compat.md): tied distances are ranked by gallery index in
``eval_market1501`` (numpy's default sort, the original's, with ``kind="quicksort"``);
``re_ranking`` keeps its k-reciprocal weights in float32 where the original rounds them
to float16 (results differ from the original by float16 rounding, about 1e-3); a stripe
distance whose ``exp`` overflows (above 88 in float32) gives 1 where the original gives
NaN.
"""

from __future__ import annotations

import numpy as np
import torch

from ._alignedreid_np import (
    compute_dist,
    local_dist,
    meta_local_dist,
    normalize,
    parallel_local_dist,
    shortest_dist,
    single_shot_mask,
    unaligned_dist,
)

__all__ = ["normalize", "compute_dist", "shortest_dist", "unaligned_dist", "meta_local_dist",
           "parallel_local_dist", "local_dist", "low_memory_matrix_op", "low_memory_local_dist",
           "evaluate", "eval_market1501", "eval_cuhk03", "re_ranking"]



def low_memory_matrix_op(func, x, y, x_split_axis, y_split_axis, x_num_splits, y_num_splits, verbose=False,
                         aligned=True):
    """``func(x, y, aligned)`` on ``x_num_splits x y_num_splits`` blocks, concatenated."""
    rows = []
    for i, part_x in enumerate(np.array_split(x, x_num_splits, axis=x_split_axis)):
        row = []
        for j, part_y in enumerate(np.array_split(y, y_num_splits, axis=y_split_axis)):
            row.append(func(part_x, part_y, aligned))
            if verbose:
                print(f"Matrix part ({i + 1}, {j + 1}) / ({x_num_splits}, {y_num_splits})")
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def low_memory_local_dist(x, y, aligned=True):
    """michuanhaohao ``low_memory_local_dist(x, y, aligned=True)``: ``[M, N]`` local distance
    of ``x [M, m, d]`` and ``y [N, n, d]`` (numpy), aligned (DMLI) or not
    (``sum_i d(x_i, y_i)``), by :func:`partdist.local_dist` / :func:`partdist.unaligned_dist`
    (memory bounded by their tiles; no progress printing)."""
    return parallel_local_dist(x, y, aligned)


def eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, kind="stable"):
    """``(all_cmc, mAP)``, Market-1501 protocol (same pid and camera dropped, pid -1 kept as
    a non-match): :func:`partdist.compat.torchreid.evaluate_rank` (``kind="quicksort"``:
    ties in the original's order)."""
    from .torchreid import evaluate_rank

    return evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, kind=kind)


def eval_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, N=100):
    """michuanhaohao ``eval_cuhk03``: CMC and AP averaged over ``N`` draws (by
    ``np.random.choice``, in the original's call order) of one gallery image per identity;
    ``(all_cmc, mAP)``. Ties in a distance row ordered by gallery index."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap = [], []
    for q in range(num_q):
        order = indices[q]
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        orig = matches[q][keep]
        if not orig.any():
            continue
        kept = g_pids[order][keep]
        cmc, ap = 0.0, 0.0
        for _ in range(N):
            mask = single_shot_mask(np.arange(len(orig)), kept, len(orig))
            mo = orig[mask]
            c = np.minimum(mo.cumsum(), 1)
            cmc = cmc + c[:max_rank].astype(np.float32)
            ap += ((mo.cumsum() / np.arange(1.0, len(mo) + 1)) * mo).sum() / mo.sum()
        all_cmc.append(cmc / N)
        all_ap.append(ap / N)
    if not all_cmc:
        raise AssertionError("Error: all query identities do not appear in gallery")
    return np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc), np.mean(all_ap)


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False):
    """michuanhaohao ``util/eval_metrics.evaluate``: ``(all_cmc, mAP)``."""
    if use_metric_cuhk03:
        return eval_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    return eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)


def re_ranking(probFea, galFea, k1, k2, lambda_value, local_distmat=None, only_local=False):  # noqa: N803
    """michuanhaohao ``util/re_ranking.re_ranking``: k-reciprocal re-ranking from features.

    ``probFea [q, d]``, ``galFea [g, d]`` (torch tensors); the original distance is the
    squared Euclidean ``xx + yy - 2 x.y`` of the features, plus ``local_distmat`` (numpy
    ``[q+g, q+g]``, queries first) when given, or ``local_distmat`` alone with
    ``only_local``; it is *not* squared again (unlike the distance-matrix re-ranking).
    Returns the ``[q, g]`` re-ranked distance (numpy float32), computed by partdist's
    sparse re-ranking (:mod:`partdist.eval.reranking`) without the ``(q+g)^2``
    encodings.
    """
    from ..eval.reranking import rerank_source

    q = probFea.size(0)
    if only_local:
        if local_distmat is None:
            raise ValueError("alignedreid_util.re_ranking: only_local=True needs local_distmat")
        full = np.asarray(local_distmat)
    else:
        feat = torch.cat([probFea, galFea]).detach()
        n = feat.size(0)
        sq = torch.pow(feat, 2).sum(dim=1, keepdim=True)
        d = sq.expand(n, n) + sq.expand(n, n).t()
        full = d.addmm_(feat, feat.t(), beta=1, alpha=-2).cpu().numpy()
        if local_distmat is not None:
            full = full + np.asarray(local_distmat)
    return np.asarray(rerank_source(_AsIs(full[:q, q:], full[:q, :q], full[q:, q:]), k1, k2, lambda_value))


class _AsIs:
    """A :class:`partdist.eval.DistanceSource` over ``[[qq, qg], [qg^T, gg]]`` taken as it is
    (michuanhaohao's re-ranking does not square its distances), float32."""

    def __init__(self, qg, qq, gg):
        from ..eval.reranking import DenseSource

        self._d = DenseSource(qg, qq, gg)
        self._d._sq = lambda x: np.asarray(x, dtype=np.float32)
        self.q, self.g, self.n = self._d.q, self._d.g, self._d.n

    def columns(self, start, stop):
        return self._d.columns(start, stop)

    def gather(self, j, i):
        return self._d.gather(j, i)

    def qg_sq(self, start, stop):
        return self._d.qg_sq(start, stop)
