"""Ranking metrics under the Market-1501 protocol: CMC, mAP and mINP (torchreid's definitions).

For each query, the gallery is sorted by increasing distance, then

* gallery items with the query's person ID **and** camera are removed (the same
  person seen by the same camera is not a retrieval), and, with ``drop_junk=True``
  (the default), so are junk items (person ID ``-1``). torchreid's and fast-reid's
  ``evaluate_rank`` keep pid ``-1`` items as non-matches: pass ``drop_junk=False``
  (the :mod:`partdist.compat` shims do);
* queries left without any true match are skipped (they count neither in CMC nor mAP);
* CMC(r) = fraction of the valid queries with a true match within the first r items;
* AP = mean over the true matches of precision at their rank (torchreid's
  ``eval_market1501``); mAP is the mean over the valid queries; INP = number of matches
  / rank of the last match.

Ties in the distance are broken by gallery order (stable sort), so the result is
deterministic (torchreid's ``np.argsort`` leaves the order of ties unspecified).

How it is computed: no row is sorted. Every metric above only needs the rank of each
true match among the kept gallery items, and that rank is one plus the number of kept
items ordered before it. The C++ operator ``partdist::rank_metrics``
(``csrc/rank/``, :mod:`partdist.ops.rank`, parallel over queries) sorts the (few) true matches of a query, places
every kept gallery item among them by binary search and reads all match ranks off a
histogram of those positions: ``O(G log k)`` per query for ``k`` matches instead of the
``O(G log G)`` argsort of the usual code, ties and non-finite distances included (NaN
ranks after every number, as in numpy's sort). The CUHK03 protocol (random gallery
draws) and IDs that are not integers take a stable argsort per query.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ops.rank import rank_metrics

__all__ = ["evaluate_rank"]


def _np(x, name, dtype=None):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    return a


def _ap_from_ranks(ranks: np.ndarray, mode: str) -> float:
    """AP of one query from the 1-based ranks (among kept items) of its true matches, ascending."""
    t = np.arange(ranks.shape[0], dtype=np.float64)
    if mode == "torchreid":
        return float(((t + 1) / ranks).mean())
    # Market-1501 devkit (compute_AP.m): trapezoid between the precision just before
    # and at each hit, each hit weighing 1 / (number of hits)
    hits = ranks - 1
    old = np.where(hits != 0, t / np.maximum(hits, 1), 1.0)
    return float(((old + (t + 1) / ranks) / 2).mean())


def _argsort_raw(d_row, q_pid, q_cam, g_pids, g_camids, drop_junk):
    """Kept gallery pids of one query in stable distance order, and its 0/1 match vector."""
    o = np.argsort(d_row, kind="stable")
    gp = g_pids[o]
    junk = (gp == q_pid) & (g_camids[o] == q_cam)
    if drop_junk:
        junk |= gp == -1
    kept = gp[~junk]
    return kept, (kept == q_pid).astype(np.float64)


def _cuhk03_cmc(kept, raw, max_rank, repeats, rng):
    groups = [np.nonzero(kept == pid)[0] for pid in np.unique(kept)]
    cmc = np.zeros(max_rank)
    for _ in range(repeats):
        mask = np.zeros(raw.shape[0], dtype=bool)
        mask[[rng.choice(g) for g in groups]] = True
        c = raw[mask].cumsum()
        c[c > 1] = 1
        c = c[:max_rank]
        cmc[: c.shape[0]] += c
        cmc[c.shape[0]:] += c[-1] if c.size else 0.0
    return cmc / repeats


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, ap: str = "torchreid",
                  return_minp: bool = False, use_metric_cuhk03: bool = False, cuhk03_repeats: int = 10,
                  seed: int = 0, drop_junk: bool = True, per_query: bool = False):
    """CMC curve and mAP of a query x gallery distance matrix (smaller = more similar).

    ``ap="torchreid"`` (default) is torchreid's AP (mean of the precisions at the true
    matches); ``ap="devkit"`` is the official Market-1501 devkit AP (trapezoid rule between
    the precision before and at each match), which reads 0.5-2.7 points higher or lower
    depending on the ranking; papers use both, so say which. ``return_minp`` adds mINP
    (mean inverse negative penalty: matches / rank of the last match). ``use_metric_cuhk03``
    gives the CUHK03 single-shot protocol: each query's CMC is averaged over
    ``cuhk03_repeats`` random draws of one gallery image per identity (``seed``); AP is
    computed on the full list, as torchreid does.

    Args:
        distmat: ``[Q, G]`` distances (tensor or array).
        q_pids, q_camids: ``[Q]`` person and camera IDs of the queries.
        g_pids, g_camids: ``[G]`` person and camera IDs of the gallery.
        max_rank: length of the returned CMC curve (cut to the number of gallery items
            ``G``, as torchreid does; when fewer items are left after the removals the
            curve is continued with its last value).
        drop_junk: remove gallery items with pid ``-1`` (Market-1501 junk). ``False``
            keeps them as non-matches, as torchreid and fast-reid do.
        per_query: return the per-query AP and INP arrays instead of their means
            (fast-reid's convention).

    Returns:
        ``(cmc, mAP)``; ``(cmc, mAP, mINP)`` with ``return_minp``; ``(cmc, all_AP, all_INP)``
        with ``per_query`` (float64 arrays, one entry per valid query in query order).
        ``cmc`` is a float32 array of length ``min(max_rank, G)`` (``cmc[0]`` is rank-1
        accuracy); all values in ``[0, 1]``.

    Raises:
        ValueError: on inconsistent shapes, a non-positive ``max_rank``, or when no
            query has a true match in the gallery.
    """
    if isinstance(distmat, torch.Tensor):
        distmat = distmat.detach().cpu()
        d_all = distmat if distmat.dtype in (torch.float32, torch.float64) else distmat.double()
        d_all = d_all.contiguous()
    else:
        a = np.asarray(distmat)
        a = a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)
        d_all = torch.from_numpy(np.ascontiguousarray(a))
    if d_all.dim() != 2:
        raise ValueError(f"evaluate_rank: distmat must be 2-D [Q, G], got shape {list(d_all.shape)}")
    num_q, num_g = d_all.shape
    q_pids, g_pids = _np(q_pids, "q_pids").reshape(-1), _np(g_pids, "g_pids").reshape(-1)
    q_camids, g_camids = _np(q_camids, "q_camids").reshape(-1), _np(g_camids, "g_camids").reshape(-1)
    for name, a, n in (("q_pids", q_pids, num_q), ("q_camids", q_camids, num_q),
                       ("g_pids", g_pids, num_g), ("g_camids", g_camids, num_g)):
        if a.shape[0] != n:
            raise ValueError(f"evaluate_rank: {name} must have {n} entries (distmat is [{num_q}, {num_g}]), "
                             f"got {a.shape[0]}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"evaluate_rank: max_rank must be a positive int, got {max_rank!r}")
    max_rank = min(int(max_rank), num_g)
    if ap not in ("torchreid", "devkit"):
        raise ValueError(f"evaluate_rank: ap must be 'torchreid' or 'devkit', got {ap!r}")
    rng = np.random.default_rng(seed)
    d_np = d_all.numpy()

    firsts = np.zeros(num_q, dtype=np.int64)  # 1-based rank of the first match (0: invalid query)
    cmc_rows = {}  # CUHK03 CMC rows
    all_ap = np.zeros(num_q)
    all_inp = np.zeros(num_q)

    def slow(i):
        kept, raw = _argsort_raw(d_np[i], q_pids[i], q_camids[i], g_pids, g_camids, drop_junk)
        if not raw.any():
            return
        ranks = np.nonzero(raw)[0].astype(np.float64) + 1
        firsts[i] = int(ranks[0])
        all_ap[i] = _ap_from_ranks(ranks, ap)
        all_inp[i] = ranks.shape[0] / ranks[-1]
        if use_metric_cuhk03:
            cmc_rows[i] = _cuhk03_cmc(kept, raw, max_rank, cuhk03_repeats, rng)

    ids = (q_pids, g_pids, q_camids, g_camids)
    if use_metric_cuhk03 or not all(np.issubdtype(x.dtype, np.integer) for x in ids):
        # CUHK03 draws, and IDs that are not integers: one stable argsort per query
        for i in range(num_q):
            slow(i)
    else:
        ids = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)) for x in ids]
        f, a_, n_ = rank_metrics(d_all, *ids, drop_junk, ap == "devkit")
        firsts, all_ap, all_inp = f.numpy(), a_.numpy(), n_.numpy()
    valid = firsts > 0
    if not valid.any():
        raise ValueError("evaluate_rank: no query has a true match in the gallery (all queries invalid)")
    if use_metric_cuhk03:
        cmc = np.mean([cmc_rows[i] for i in np.nonzero(valid)[0]], axis=0)
    else:
        # CMC(r) = fraction of valid queries whose first match is within rank r
        counts = np.bincount(np.minimum(firsts[valid], max_rank + 1), minlength=max_rank + 2)
        cmc = counts[1: max_rank + 1].cumsum() / valid.sum()
    cmc = cmc.astype(np.float32)
    if per_query:
        return cmc, all_ap[valid], all_inp[valid]
    if return_minp:
        return cmc, float(np.mean(all_ap[valid])), float(np.mean(all_inp[valid]))
    return cmc, float(np.mean(all_ap[valid]))
