"""Tuning the two-stage search on the gallery itself.

A shortlist setting is a score (the global distance alone, or ``|dg|^2 + w |dp|^2`` with the pooled
stripes of ``"mean"`` or ``"halves"`` at a weight ``w``) and a length K'. Which one keeps the
true neighbours depends on the feature distribution: the tuning measures it. It takes a sample
of gallery items as pseudo-queries (a fixed seed: the same sample whatever the sharding),
computes their exact fused top ``k`` over the gallery **without the item itself** (a query is
not in the gallery it searches; keeping the self match would make every estimate optimistic),
and for every score the position of each of those neighbours in the score's shortlist of up to
``max_shortlist`` (also without the item itself). From these positions the recall@k of any
(score, K') follows: the fraction of the exact top ``k`` within the first K'.

:func:`select` picks the cheapest setting whose recall reaches the target with confidence:
the one-sided 95 % Wilson lower bound of the estimate (over ``sample x k`` neighbours) must
reach the target, so that a lucky sample does not pick a setting whose true recall is below it.
Cost per query: ``N x width`` multiply-adds for the shortlist GEMM (``width`` = its columns) plus
K' times the cost of one second-stage pair (the DMLI distance and its gathered features, in the
same unit). Settings the user fixed are kept; the others are chosen among the measured ones.
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional

import torch

from . import _merge

__all__ = ["Tuning", "WEIGHTS", "LADDER", "select"]

TUNING_VERSION = 1
#: the pooled weights measured for each pooling
WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: the shortlist lengths K' considered (those >= k and <= max_shortlist, and the gallery size)
LADDER = (10, 15, 20, 30, 40, 50, 70, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 4000, 6000,
          8000)
Z = 1.645  # one-sided 95 %
#: cost of one second-stage pair relative to one multiply-add of the shortlist GEMM, per
#: multiply-add of the DMLI stripe distances (H x H' x C) and of the global distance (D); measured
#: on an AMD EPYC (Zen 3, 2 threads): batch_local_dist of gathered pairs vs the shortlist GEMM
PAIR_FACTOR = 4.0


def wilson_lower(p: float, n: int, z: float = Z) -> float:
    """One-sided Wilson score lower bound of a proportion ``p`` observed over ``n`` trials."""
    if n <= 0:
        return 0.0
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    r = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return max(0.0, (c - r) / d)


def _drop_self(ids: torch.Tensor, own: torch.Tensor, keep: int) -> torch.Tensor:
    """The first ``keep`` entries of each row of ``ids [m, keep + 1]`` other than the row's own id."""
    mask = ids != own[:, None]
    sel = mask & (mask.cumsum(1) <= keep)
    return ids[sel].view(ids.shape[0], keep)


def _positions(cand: torch.Tensor, true: torch.Tensor, kmax: int) -> torch.Tensor:
    """``[m, k]`` int32: the position of each ``true`` id in its row of ``cand`` (``kmax`` if absent)."""
    eq = cand[:, None, :] == true[:, :, None]
    pos = eq.to(torch.int8).argmax(2)
    return torch.where(eq.any(2), pos, torch.full_like(pos, kmax)).to(torch.int32)


def run(index, *, k, lam, metric, sample, seed, max_shortlist, weights, use_dist, group, block_queries,
        chunk_rows, show) -> Optional[Dict]:
    """The tuning record (a plain dict: saved with the index) of ``index`` over all ranks."""
    from .rescore import exact_shard, locate
    from .shortlist import shortlist_keys

    t0 = time.perf_counter()
    gids = index.all_labels(distributed=use_dist, group=group)[0] if use_dist else index.ids
    N = gids.numel()
    if N < 2:
        return None
    m = min(sample, N)
    gen = torch.Generator().manual_seed(seed)
    pick = gids[torch.randperm(N, generator=gen)[:m].sort().values]
    cd = index._compute_dtype()
    rows, own = locate(index, pick[None].to(index.device))
    rows, own = rows[0], own[0]
    qg = torch.zeros((m, index.dim), dtype=cd, device=index.device)
    ql = torch.zeros((m, index.stripes, index.channels), dtype=cd, device=index.device)
    if len(index):
        qg[own] = index.global_features[rows[own]].to(cd)
        ql[own] = index.local_features[rows[own]].to(cd)
    if use_dist:
        qg, ql = _merge.sum_owned(qg, group), _merge.sum_owned(ql, group)
    pick_dev = pick.to(index.device)
    kt = min(k, N - 1)
    v, i = exact_shard(index, qg, ql, kt + 1, lam=lam, metric=metric, use_local=True, block_queries=block_queries,
                       chunk_rows=chunk_rows, show=show)
    if use_dist:
        v, i = _merge.merge_ranks(v, i, kt + 1, group)
    true = _drop_self(i, pick_dev, kt)
    kmax = min(max_shortlist, N - 1)
    configs: List = [[0.0, "none"]] + [[float(w), p] for p in ("mean", "halves") for w in weights]
    positions = []
    for w, p in configs:
        ck, ci = shortlist_keys(index, qg, ql, kmax + 1, metric, w, p, block_queries, chunk_rows, show)
        if use_dist:
            ck, ci = _merge.merge_ranks(ck, ci, kmax + 1, group)
        positions.append(_positions(_drop_self(ci, pick_dev, kmax), true, kmax).cpu())
    H, C, D = index.stripes, index.channels, index.dim
    return {
        "version": TUNING_VERSION,
        "k": kt,
        "lam": float(lam), "metric": metric, "normalize": index.normalize, "gamma": index.gamma, "band": index.band,
        "gallery_size": N,
        "sample": m,
        "seed": seed,
        "max_shortlist": kmax,
        "configs": configs,
        "widths": [D + {"none": 0, "mean": C, "halves": 2 * C}[p] * (w > 0) for w, p in configs],
        "pair_cost": PAIR_FACTOR * H * H * C + D,
        "positions": torch.stack(positions),
        "seconds": time.perf_counter() - t0,
    }


def matches(state: Optional[Dict], *, k, lam, metric, normalize, gamma, band, gallery_size, pooled_weight=None):
    """Whether the record ``state`` measured this search's fused distance and gallery (and the
    fixed ``pooled_weight``, if any)."""
    if not state or state.get("version") != TUNING_VERSION:
        return False
    same = (state["lam"] == float(lam) and state["metric"] == metric and state["normalize"] == normalize
            and state["gamma"] == gamma and state["band"] == band and state["gallery_size"] == gallery_size
            and (k <= state["k"] or state["k"] == gallery_size - 1))
    if same and pooled_weight is not None and pooled_weight > 0:
        same = any(w == pooled_weight for w, _ in state["configs"])
    return same


def select(state: Dict, k: int, target: float, shortlist=None, pooled_weight=None, pooling=None) -> Dict:
    """The cheapest (score, K') of the record whose recall@k lower bound reaches ``target``,
    among those consistent with the fixed settings (else the one of the highest recall)."""
    pos = state["positions"][:, :, :k]
    n = pos.shape[1] * pos.shape[2]
    N, kmax = state["gallery_size"], state["max_shortlist"]
    if shortlist is not None:
        lengths = [shortlist]
    else:
        lengths = {x for x in LADDER if k <= x <= kmax} | {max(k, kmax)}
        lengths = sorted(lengths | ({N} if N - 1 <= kmax else set()))
    best = None
    for c, (w, p) in enumerate(state["configs"]):
        if pooled_weight is not None and w != pooled_weight:
            continue
        if pooling is not None and w > 0 and p != pooling:
            continue
        for kk in lengths:
            covers = kk >= N
            rec = 1.0 if covers else float((pos[c] < min(kk, kmax)).double().mean())
            low = 1.0 if covers else wilson_lower(rec, n)
            cost = N * state["widths"][c] + min(kk, N) * state["pair_cost"]
            cand = {"shortlist": int(kk), "pooled_weight": float(w), "pooling": "mean" if p == "none" else p,
                    "recall": rec, "recall_lower": low, "reached": low >= target, "cost": float(cost)}
            if best is None:
                best = cand
            elif cand["reached"] != best["reached"]:
                best = cand if cand["reached"] else best
            elif cand["reached"]:
                best = cand if (cost, -rec) < (best["cost"], -best["recall"]) else best
            else:
                best = cand if (-rec, cost) < (-best["recall"], best["cost"]) else best
    if best is None:  # a fixed weight that was not measured (callers re-tune first)
        raise ValueError(f"the tuning did not measure pooled_weight={pooled_weight!r}")
    best.update(k=k, target=target, sample=int(pos.shape[1]), neighbours=n)
    return best


class Tuning:
    """What :meth:`GalleryIndex.tune <partdist.search.GalleryIndex.tune>` measured, and the
    setting it chooses for ``k`` and ``target_recall`` (the attributes).

    Attributes:
        shortlist, pooled_weight, pooling: the chosen setting (K' and the score).
        recall: the estimated recall@k of the two-stage search with it (vs the exact search).
        recall_lower: the one-sided 95 % lower bound of that estimate.
        reached: whether ``recall_lower >= target``.
        sample: pseudo-queries (gallery items) of the estimate; ``neighbours`` = sample x k.
        gallery_size, seconds: the gallery it measured and the time it took.
        table: ``{(pooled_weight, pooling): recall@k at the chosen K'}`` of every measured score.
    """

    def __init__(self, state: Dict, k: int, target: float = 0.99, **fixed):
        self.state = state
        ch = select(state, k, target, **fixed)
        self.k, self.target = k, target
        for name in ("shortlist", "pooled_weight", "pooling", "recall", "recall_lower", "reached", "sample",
                     "neighbours"):
            setattr(self, name, ch[name])
        self.gallery_size, self.seconds = state["gallery_size"], state["seconds"]
        kk = min(self.shortlist, state["max_shortlist"])
        self.table = {(w, "-" if p == "none" else p): float((state["positions"][c, :, :k] < kk).double().mean())
                      for c, (w, p) in enumerate(state["configs"])}

    def setting(self) -> str:
        score = "global distance" if not self.pooled_weight else f"{self.pooling} pooled w={self.pooled_weight:g}"
        return f"K'={self.shortlist}, {score}"

    def summary(self) -> str:
        ok = "" if self.reached else f" (target {self.target} NOT reached: the best measured setting)"
        return (f"tuned two-stage search: {self.setting()}; estimated recall@{self.k} {self.recall:.4f} "
                f"(95% lower bound {self.recall_lower:.4f}, target {self.target}) from {self.sample} pseudo-queries "
                f"x {self.k} neighbours of a {self.gallery_size:,}-item gallery{ok}")

    def __repr__(self):
        return f"Tuning({self.summary()})"
