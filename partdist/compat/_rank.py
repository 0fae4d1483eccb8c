"""Market-1501 ranking metrics with a chosen ``np.argsort`` kind: the order the originals
(torchreid, fast-reid, michuanhaohao) give tied distances, where ``kind="quicksort"``
(numpy's default, what they call) reproduces it for the installed numpy."""

from __future__ import annotations

import numpy as np


def rank_with_sort(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, kind, rows=1024):
    """``(cmc float32 [min(max_rank, G)], all_AP, all_INP)`` over the valid queries, from
    ``np.argsort(distmat, axis=1, kind=kind)`` (``rows`` queries at a time): gallery items
    with the query's pid and camera dropped, pid -1 kept as a non-match, AP the mean of
    the precisions at the matches, INP matches / rank of the last match.

    Raises:
        ValueError: no query has a match in the gallery.
    """
    d = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids).reshape(-1), np.asarray(g_pids).reshape(-1)
    q_camids, g_camids = np.asarray(q_camids).reshape(-1), np.asarray(g_camids).reshape(-1)
    num_q, num_g = d.shape
    max_rank = min(int(max_rank), num_g)
    firsts, aps, inps = [], [], []
    for s in range(0, num_q, rows):
        e = min(s + rows, num_q)
        idx = np.argsort(d[s:e], axis=1, kind=kind)
        match = g_pids[idx] == q_pids[s:e, None]
        keep = ~(match & (g_camids[idx] == q_camids[s:e, None]))
        good = match & keep
        rank = np.cumsum(keep, axis=1)  # 1-based rank among the kept items
        nth = np.cumsum(good, axis=1)  # matches up to here
        r_i, c_i = np.nonzero(good)
        if r_i.size == 0:
            continue
        ranks, t = rank[r_i, c_i].astype(np.float64), nth[r_i, c_i].astype(np.float64)
        counts = np.bincount(r_i, minlength=e - s)
        valid = counts > 0
        ap = np.bincount(r_i, weights=t / ranks, minlength=e - s)[valid] / counts[valid]
        starts = np.cumsum(counts) - counts
        first = ranks[starts[valid]]
        last = ranks[starts[valid] + counts[valid] - 1]
        firsts.append(first)
        aps.append(ap)
        inps.append(counts[valid] / last)
    if not firsts:
        raise ValueError("evaluate_rank: no query has a true match in the gallery (all queries invalid)")
    first = np.concatenate(firsts)
    cmc = (first[:, None] <= np.arange(1, max_rank + 1)[None, :]).mean(axis=0).astype(np.float32)
    return cmc, np.concatenate(aps), np.concatenate(inps)
