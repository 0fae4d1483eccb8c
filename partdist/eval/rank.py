"""Ranking metrics under the Market-1501 protocol: CMC and mAP (torchreid's definitions).

For each query, the gallery is sorted by increasing distance, then

* gallery items with the query's person ID **and** camera are removed (the same
  person seen by the same camera is not a retrieval), and so are junk items
  (person ID ``-1``);
* queries left without any true match are skipped (they count neither in CMC nor mAP);
* CMC(r) = fraction of the valid queries with a true match within the first r items;
* AP = mean over the true matches of precision at their rank (torchreid's
  ``eval_market1501``); mAP is the mean over the valid queries.

Ties in the distance are broken by gallery order (stable sort), so the result is
deterministic (torchreid's ``np.argsort`` leaves the order of ties unspecified).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

__all__ = ["evaluate_rank"]


def _np(x, name, dtype=None):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    return a


def _ap(raw: np.ndarray, mode: str) -> float:
    """Average precision of one ranked 0/1 match list (junk already removed)."""
    hits = np.nonzero(raw)[0]
    if mode == "torchreid":
        precision = raw.cumsum() / np.arange(1, raw.shape[0] + 1)
        return float((precision * raw).sum() / raw.sum())
    # Market-1501 devkit (compute_AP.m): trapezoid between the precision just before
    # and at each hit, each hit weighing 1 / (number of hits)
    k = np.arange(hits.shape[0], dtype=np.float64)
    precision = (k + 1) / (hits + 1)
    old = np.where(hits != 0, k / np.maximum(hits, 1), 1.0)
    return float(((old + precision) / 2).sum() / hits.shape[0])


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, ap: str = "torchreid",
                  return_minp: bool = False, use_metric_cuhk03: bool = False, cuhk03_repeats: int = 10,
                  seed: int = 0):
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
        g_pids, g_camids: ``[G]`` person and camera IDs of the gallery (pid ``-1`` = junk).
        max_rank: length of the returned CMC curve (cut to the number of gallery items).

    Returns:
        ``(cmc, mAP)`` (``(cmc, mAP, mINP)`` with ``return_minp``): ``cmc`` a float32 array of
        length ``min(max_rank, G)`` (``cmc[0]`` is rank-1 accuracy), ``mAP`` a float, all in
        ``[0, 1]``.

    Raises:
        ValueError on inconsistent shapes, a non-positive ``max_rank``, or when no
        query has a true match in the gallery.
    """
    d = _np(distmat, "distmat", np.float64)
    if d.ndim != 2:
        raise ValueError(f"evaluate_rank: distmat must be 2-D [Q, G], got shape {list(d.shape)}")
    num_q, num_g = d.shape
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

    order = np.argsort(d, axis=1, kind="stable")
    matches = g_pids[order] == q_pids[:, None]
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(num_q):
        o = order[i]
        junk = ((g_pids[o] == q_pids[i]) & (g_camids[o] == q_camids[i])) | (g_pids[o] == -1)
        raw = matches[i][~junk].astype(np.float64)
        if not raw.any():
            continue  # the query identity does not appear in the gallery
        if use_metric_cuhk03:
            kept = g_pids[o][~junk]
            groups = [np.nonzero(kept == pid)[0] for pid in np.unique(kept)]
            cmc = np.zeros(max_rank)
            for _ in range(cuhk03_repeats):
                mask = np.zeros(raw.shape[0], dtype=bool)
                mask[[rng.choice(g) for g in groups]] = True
                c = raw[mask].cumsum()
                c[c > 1] = 1
                c = c[:max_rank]
                cmc[: c.shape[0]] += c
                cmc[c.shape[0]:] += c[-1] if c.size else 0.0
            cmc = cmc / cuhk03_repeats
        else:
            cmc = raw.cumsum()
            cmc[cmc > 1] = 1
            cmc = cmc[:max_rank]
        if cmc.shape[0] < max_rank:  # fewer valid gallery items than max_rank
            cmc = np.concatenate([cmc, np.full(max_rank - cmc.shape[0], cmc[-1] if cmc.size else 0.0)])
        all_cmc.append(cmc)
        all_ap.append(_ap(raw, ap))
        all_inp.append(float(raw.sum() / (np.nonzero(raw)[0][-1] + 1)))
    if not all_cmc:
        raise ValueError("evaluate_rank: no query has a true match in the gallery (all queries invalid)")
    cmc = np.asarray(all_cmc, dtype=np.float32).mean(0)
    if return_minp:
        return cmc, float(np.mean(all_ap)), float(np.mean(all_inp))
    return cmc, float(np.mean(all_ap))
