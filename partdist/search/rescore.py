"""The fused distance ``global + lam * local`` where the search computes it: the exact scan of
the whole gallery (:func:`exact_shard`), the second stage of the two-stage search on the
shortlist (:func:`shortlist_pairs`) and the k-reciprocal re-ranking within it (:func:`rerank`).
"""

from __future__ import annotations

import math

import torch

from ..eval import global_distance, re_ranking_features, topk_distance
from ..ops.dmli import batch_local_dist
from . import _merge

__all__ = ["exact_shard", "locate", "shortlist_pairs", "rerank"]

_PAIR_BYTES = 64 << 20  # features of the shortlist pairs gathered at a time

def exact_shard(index, qg, ql, k, *, lam, metric, use_local, block_queries, chunk_rows, show):
    """This process's ``min(k, len)`` best by the fused (or global) distance, chunk by chunk."""
    Q = qg.shape[0]
    best = (torch.empty((Q, 0), dtype=qg.dtype, device=index.device),
            torch.empty((Q, 0), dtype=torch.int64, device=index.device))
    ids_dev = index.ids.to(index.device)
    from tqdm import tqdm

    desc = "search (fused)" if use_local else "search (global)"
    with tqdm(total=len(index), desc=desc, unit="item", unit_scale=True, disable=not show, leave=False) as bar:
        for s in range(0, len(index), chunk_rows):
            e = min(s + chunk_rows, len(index))
            gg, gl = index._rows(s, e, local=use_local)
            v, i = topk_distance(
                ql, gl, qg, gg, k=min(k, e - s), lam=lam, metric=metric, normalize=index.normalize,
                gamma=index.gamma, band=index.band, block_rows=block_queries,
            )
            best = _merge.merge_parts([best, (v, ids_dev[s:e][i])], k, Q, qg.dtype, index.device)
            bar.update(e - s)
    return best

def locate(index, ids):
    """Rows of this process holding ``ids`` ``[Q, K]``: ``(rows, owned)``."""
    mine = index.ids.to(ids.device)
    if mine.numel() == 0:
        z = torch.zeros_like(ids)
        return z, torch.zeros_like(ids, dtype=torch.bool)
    rows = torch.searchsorted(mine, ids.contiguous()).clamp_(max=mine.numel() - 1)
    return rows.to(index.device), (mine[rows] == ids).to(index.device)

def shortlist_pairs(index, q, rows, own, local, metric, show):
    """Distance of each query to its owned shortlist entries, zeros elsewhere: the DMLI
    distance (:func:`partdist.batch_local_dist`, ``local``) or the global ``metric``
    (:func:`partdist.eval.global_distance`, paired); blocks of pairs, one call per block."""
    from tqdm import tqdm

    Q, K = rows.shape
    cd = index._compute_dtype()
    out = torch.zeros(Q * K, dtype=cd, device=index.device)
    pos = own.flatten().nonzero().flatten()
    qpos, gpos = pos // K, rows.flatten()[pos]
    store = index.local_features if local else index.global_features
    per_pair = (math.prod(q.shape[1:]) + math.prod(store.shape[1:])) * q.element_size()
    blk = max(1, _PAIR_BYTES // per_pair)
    desc = "shortlist: local distance" if local else "shortlist: global distance"
    # the gathered pairs go into buffers reused block after block (fresh memory for every
    # block cost more than the distances: first touch of each page)
    nb = min(blk, pos.numel())
    a_buf = torch.empty((nb, *q.shape[1:]), dtype=q.dtype, device=q.device)
    b_buf = torch.empty((nb, *store.shape[1:]), dtype=cd, device=store.device)
    b_raw = b_buf if store.dtype == cd else torch.empty((nb, *store.shape[1:]), dtype=store.dtype,
                                                        device=store.device)
    with tqdm(total=pos.numel(), desc=desc, unit="pair", unit_scale=True, disable=not show, leave=False) as bar:
        for s in range(0, pos.numel(), blk):
            e = min(s + blk, pos.numel())
            a, b, raw = a_buf[: e - s], b_buf[: e - s], b_raw[: e - s]
            torch.index_select(q, 0, qpos[s:e], out=a)
            torch.index_select(store, 0, gpos[s:e], out=raw)
            if raw is not b:
                b.copy_(raw)
            if local:
                out[pos[s:e]] = batch_local_dist(a, b, index.normalize, gamma=index.gamma, band=index.band)
            else:
                out[pos[s:e]] = global_distance(a, b, metric, paired=True)
            bar.update(e - s)
    return out.view(Q, K)

def rerank(index, qg, ql, rows, own, k1, k2, lambda_value, lam, metric, use_dist, group, rank, world, show):
    """k-reciprocal re-ranking of each query against its shortlist (queries split over the ranks)."""
    from tqdm import tqdm

    Q, K = rows.shape
    cd = index._compute_dtype()
    out = torch.zeros((Q, K), dtype=torch.float32, device=index.device)
    blk = max(1, min(Q, (32 << 20) // max(1, K * 4 * (index.dim + (index.stripes or 0) * (index.channels or 0)))))
    lf = index.local_features if ql is not None else None
    bar = tqdm(total=Q, desc="shortlist: re-ranking", unit="query", disable=not show, leave=False)
    for s in range(0, Q, blk):
        e = min(s + blk, Q)
        own_b, rows_b = own[s:e], rows[s:e]
        gb = torch.zeros((e - s, K, index.dim), dtype=cd, device=index.device)
        gb[own_b] = index.global_features[rows_b[own_b]].to(cd)
        lb = None
        if lf is not None:
            lb = torch.zeros((e - s, K, index.stripes, index.channels), dtype=cd, device=index.device)
            lb[own_b] = lf[rows_b[own_b]].to(cd)
        if use_dist:
            gb = _merge.sum_owned(gb, group)
            lb = None if lb is None else _merge.sum_owned(lb, group)
        for i in range(s, e):
            if i % world != rank:
                continue
            out[i] = re_ranking_features(
                None if lb is None else ql[i : i + 1], None if lb is None else lb[i - s], qg[i : i + 1],
                gb[i - s], k1=k1, k2=k2, lambda_value=lambda_value, lam=lam, metric=metric,
                normalize=index.normalize, gamma=index.gamma, band=index.band,
            )[0].to(index.device)
        bar.update(e - s)
    bar.close()
    return _merge.sum_owned(out, group) if use_dist else out
