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

A pseudo-query has one view of its identity fewer in the gallery than a real query of that
identity (itself is left out). Where an identity has about ``k`` views that shifts its
neighbour list: a real query's top ``k`` are its identity's views, which every proxy ranks
well, while the pseudo-query's ``k``-th neighbour is another identity's item, which the proxies
rank far less reliably, and the estimate of recall@k is far below what real queries get (0.95
against 1.00 at K' = 100, 10 views per identity). So recall@k is estimated over each
pseudo-query's ``k - 1`` nearest others (:func:`reference_neighbours`): the view a real query
has in addition is counted as found as often as the others. Measured on 20,000-item galleries of 10 views
per identity of four sources with held-out views as queries, this estimate lies within about
0.003 of the real queries' recall@k at every K' (below it more often than above), where the
``k``-neighbour one was up to 0.07 below; the Wilson bound and the K' margin of :func:`select`
cover the rest. Queries of identities absent from the gallery (distractors) are not what the
sample stands for: their neighbours are all other identities and need a longer shortlist.

The reference top ``k`` is exact (every pseudo-query against the whole gallery) while
``sample x gallery size <= EXACT_PAIRS``; on larger galleries (where that scan costs minutes)
it is the fused top ``k`` within the union of every measured score's shortlist of
``max_shortlist`` (2000 by default, 20 times the usual K'): a true neighbour that no score ranks
within that many is not seen, which can only make the estimate optimistic by the fraction of
such neighbours (``exact=True`` forces the full scan). ``reference`` in the record says which.

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

TUNING_VERSION = 2
#: the pooled weights measured for each pooling (``inf``: the pooled stripes alone)
WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
#: the shortlist lengths K' considered (those >= k and <= max_shortlist, and the gallery size)
LADDER = (10, 15, 20, 30, 40, 50, 70, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 4000, 6000,
          8000)
Z = 1.645  # one-sided 95 %
#: the chosen K' is at least this many times the K' the estimate needs (see :func:`select`)
MARGIN = 2
#: up to this many pseudo-query x gallery pairs the reference is the exact fused top k; above,
#: the fused top k within the union of every measured score's shortlist of ``max_shortlist``
EXACT_PAIRS = 1 << 22
#: cost of one second-stage pair relative to one multiply-add of the shortlist GEMM, per
#: multiply-add of the DMLI stripe distances (H x H' x C): the time of the gathered pairs'
#: batch_local_dist over that of the shortlist GEMM, 13-15 on an AMD EPYC (Zen 3, 2 threads,
#: float16 storage, 8 x 128 stripes, D = 512)
PAIR_FACTOR = 14.0


def score_name(pooled_weight, pooling) -> str:
    """How a report names a shortlist score."""
    if not pooled_weight:
        return "global distance"
    if pooled_weight == math.inf:
        return f"{pooling} pooled stripes alone"
    return f"{pooling} pooled w={pooled_weight:g}"


def wilson_lower(p: float, n: int, z: float = Z) -> float:
    """One-sided Wilson score lower bound of a proportion ``p`` observed over ``n`` trials."""
    if n <= 0:
        return 0.0
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    r = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return max(0.0, (c - r) / d)


def reference_neighbours(k: int) -> int:
    """How many of a pseudo-query's nearest others stand for a real query's ``k`` nearest
    items: ``k - 1`` (its own view, left out, is the one it lacks), at least 1."""
    return max(1, k - 1)


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


def _union_topk(index, qg, ql, ids, k, lam, metric, use_dist, group, show):
    """The fused top ``k`` of each pseudo-query among the (deduplicated) candidate ``ids [m, n]``."""
    from .rescore import locate, shortlist_pairs

    ids = ids.sort(1).values
    dup = torch.zeros_like(ids, dtype=torch.bool)
    dup[:, 1:] = ids[:, 1:] == ids[:, :-1]
    ids = torch.where(dup, torch.full_like(ids, _merge.PAD_ID), ids)
    n = int((~dup).sum(1).max())
    ids = ids.sort(1).values[:, :n]  # the distinct ids first, padding after
    rows, own = locate(index, ids)
    d = shortlist_pairs(index, qg, rows, own, False, metric, show)
    loc = shortlist_pairs(index, ql, rows, own, True, metric, show)
    if use_dist:
        d, loc = _merge.sum_owned(d, group), _merge.sum_owned(loc, group)
    fused = torch.where(ids == _merge.PAD_ID, torch.full_like(d, float("inf")), d + lam * loc)
    return _merge.merge_topk(fused, ids, k)[1]


def run(index, *, k, lam, metric, sample, seed, max_shortlist, weights, use_dist, group, block_queries,
        chunk_rows, show, exact=None) -> Optional[Dict]:
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
    kmax = min(max_shortlist, N - 1)
    configs: List = [[0.0, "none"]] + [[float(w), p] for p in ("mean", "halves") for w in weights]
    cands = []
    for w, p in configs:
        ck, ci = shortlist_keys(index, qg, ql, kmax + 1, metric, w, p, block_queries, chunk_rows, show)
        if use_dist:
            ck, ci = _merge.merge_ranks(ck, ci, kmax + 1, group)
        cands.append(_drop_self(ci, pick_dev, kmax))
    if exact is None:
        exact = m * N <= EXACT_PAIRS
    if exact:  # the exact fused top k: every pseudo-query against the whole gallery
        v, i = exact_shard(index, qg, ql, kt + 1, lam=lam, metric=metric, use_local=True,
                           block_queries=block_queries, chunk_rows=chunk_rows, show=show)
        if use_dist:
            v, i = _merge.merge_ranks(v, i, kt + 1, group)
        true = _drop_self(i, pick_dev, kt)
    else:  # the fused top k within the union of every score's shortlist of kmax
        true = _union_topk(index, qg, ql, torch.cat(cands, 1), kt, lam, metric, use_dist, group, show)
    positions = [_positions(c, true, kmax).cpu() for c in cands]
    H, C, D = index.stripes, index.channels, index.dim
    return {
        "version": TUNING_VERSION,
        "k": kt,
        "lam": float(lam), "metric": metric, "normalize": index.normalize, "gamma": index.gamma, "band": index.band,
        "gallery_size": N,
        "sample": m,
        "sample_ids": pick,
        "seed": seed,
        "max_shortlist": kmax,
        "configs": configs,
        "widths": [D * (w != math.inf) + {"none": 0, "mean": C, "halves": 2 * C}[p] * (w > 0) for w, p in configs],
        "pair_cost": PAIR_FACTOR * H * H * C + D,
        "positions": torch.stack(positions),
        "reference": "exact" if exact else "union",
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
    among those consistent with the fixed settings (else the one of the highest recall).

    Unless the user fixed K', the chosen K' is the smallest measured one that is at least
    ``MARGIN`` times the K' where the bound first reaches the target (``needed``): real queries
    come from other cameras than the gallery items that stand in for them, and a longer shortlist
    costs little next to the shortlist GEMM over the gallery."""
    pos = state["positions"][:, :, :reference_neighbours(k)]
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

        def stats(kk, c=c, w=w, p=p):
            covers = kk >= N
            rec = 1.0 if covers else float((pos[c] < min(kk, kmax)).double().mean())
            low = 1.0 if covers else wilson_lower(rec, n)
            cost = N * state["widths"][c] + min(kk, N) * state["pair_cost"]
            return {"shortlist": int(kk), "pooled_weight": float(w), "pooling": "mean" if p == "none" else p,
                    "recall": rec, "recall_lower": low, "reached": low >= target, "cost": float(cost),
                    "needed": None}

        table = [stats(kk) for kk in lengths]
        ok = [t for t in table if t["reached"]]
        if ok:
            need = ok[0]["shortlist"]
            cand = ok[0] if shortlist is not None else next(
                (t for t in ok if t["shortlist"] >= MARGIN * need), ok[-1])
            cand["needed"] = need
        else:
            top = max(t["recall"] for t in table)
            cand = next(t for t in table if t["recall"] == top)
        if best is None or cand["reached"] != best["reached"]:
            best = cand if (best is None or cand["reached"]) else best
        elif cand["reached"]:
            best = cand if (cand["cost"], -cand["recall"]) < (best["cost"], -best["recall"]) else best
        else:
            best = cand if (-cand["recall"], cand["cost"]) < (-best["recall"], best["cost"]) else best
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
        needed: the K' where the lower bound first reaches the target (``shortlist`` is at least
            ``MARGIN`` times it unless K' was fixed), ``None`` when it does not.
        sample: pseudo-queries (gallery items) of the estimate; ``neighbours`` = sample x
            (k - 1), the nearest others of each that stand for a real query's k nearest
            (:func:`reference_neighbours`).
        gallery_size, seconds: the gallery it measured and the time it took.
        reference: ``"exact"`` or ``"union"`` (see the module).
        table: ``{(pooled_weight, pooling): recall@k at the chosen K'}`` of every measured score.
    """

    def __init__(self, state: Dict, k: int, target: float = 0.99, **fixed):
        self.state = state
        ch = select(state, k, target, **fixed)
        self.k, self.target = k, target
        for name in ("shortlist", "pooled_weight", "pooling", "recall", "recall_lower", "reached", "sample",
                     "neighbours", "needed"):
            setattr(self, name, ch[name])
        self.gallery_size, self.seconds = state["gallery_size"], state["seconds"]
        self.reference = state.get("reference", "exact")
        kk = min(self.shortlist, state["max_shortlist"])
        kr = reference_neighbours(k)
        self.table = {(w, "-" if p == "none" else p): float((state["positions"][c, :, :kr] < kk).double().mean())
                      for c, (w, p) in enumerate(state["configs"])}

    def setting(self) -> str:
        score = score_name(self.pooled_weight, self.pooling)
        return f"K'={self.shortlist}, {score}"

    def summary(self) -> str:
        ok = "" if self.reached else (f" (target {self.target} NOT reached by any measured shortlist: a search "
                                      "leaving K' to the tuning is exact)")
        ref = "" if self.reference == "exact" else f", reference: top {self.k} within the union of the shortlists"
        need = f" (needs K'={self.needed}, x{MARGIN} margin)" if self.needed and self.needed != self.shortlist else ""
        return (f"tuned two-stage search: {self.setting()}{need}; estimated recall@{self.k} {self.recall:.4f} "
                f"(95% lower bound {self.recall_lower:.4f}, target {self.target}) from {self.sample} pseudo-queries "
                f"x {self.neighbours // max(1, self.sample)} neighbours of a {self.gallery_size:,}-item gallery{ref}{ok}")

    def __repr__(self):
        return f"Tuning({self.summary()})"
