"""Recall@10 at K' = 100 of shortlist scores built from pooled stripes on bench_search.py's
synthetic gallery: the experiment behind the ``pooling="halves"`` option of
``GalleryIndex.search``. A score chosen on one generator does not carry over to other features
(docs/search.md): the search now chooses its score, weight and K' on the gallery itself
(``GalleryIndex.tune``); this script stays as the wider exploration of window kinds.

Uses bench_search.py's synthetic gallery (same generator and seeds). For each score
``|dg|^2 + sum_kind w_kind * mean over the kind's windows of |d pooled window|^2`` (windows
L2-normalized, as ``partdist.search.index._pool``), the K' nearest gallery items by one GEMM per
gallery chunk; the recall is the fraction of the exact fused top 10 (``mode="exact"``) among
them, which is the two-stage search's recall@10 with that shortlist.

    python benchmarks/explore_pooling.py --seed 0 --queries 100              # the 11 scores
    python benchmarks/explore_pooling.py --seed 1 --queries 200 --check      # the re-check
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_search as B  # noqa: E402

# window kinds over 8 stripes; "mean" and "halves" are the library's poolings
WINDOWS = {
    "mean": [(0, 8)],
    "disjoint halves": [(0, 4), (4, 8)],
    "halves": [(0, 5), (3, 8)],  # overlapping: pooling="halves"
    "thirds": [(0, 3), (2, 6), (5, 8)],
    "central 6": [(1, 7)],
}
SCORES = [
    [], [("mean", 4)], [("mean", 8)], [("disjoint halves", 4)], [("disjoint halves", 8)], [("halves", 4)],
    [("halves", 8)], [("mean", 4), ("disjoint halves", 4)], [("thirds", 6)], [("central 6", 4)],
    [("mean", 4), ("halves", 4)],
]
CHECK = [[("mean", 4)], [("central 6", 2)], [("central 6", 4)], [("central 6", 8)], [("halves", 2)], [("halves", 4)],
         [("halves", 8)]]


def features(glob, loc, score):
    parts = [glob.float()]
    loc = loc.float()
    for kind, w in score:
        win = WINDOWS[kind]
        for a, b in win:
            parts.append((w / len(win)) ** 0.5 * F.normalize(loc[:, a:b].mean(1), dim=1))
    return torch.cat(parts, 1)


def shortlist(idx, qf, score, kk):
    """The kk nearest gallery rows of each query by the score (squared euclidean)."""
    G, L, n = idx.global_features, idx.local_features, len(idx)
    best_v = best_i = None
    for s in range(0, n, 1 << 16):
        gf = features(G[s : s + (1 << 16)], L[s : s + (1 << 16)], score)
        d = (gf * gf).sum(1)[None] - 2 * qf @ gf.t()
        v, i = d.topk(min(kk, d.shape[1]), dim=1, largest=False)
        v, i = (v, i + s) if best_v is None else (torch.cat([best_v, v], 1), torch.cat([best_i, i + s], 1))
        o = v.topk(min(kk, v.shape[1]), dim=1, largest=False).indices
        best_v, best_i = v.gather(1, o), i.gather(1, o)
    return idx.ids[best_i]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--shortlist", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="the 7 scores of the re-check instead of the 11")
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--noise", type=float, default=0.7)
    ap.add_argument("--lam", type=float, default=1.0)
    args = ap.parse_args()
    cg, cl = B.centres(args.size // args.views, args.seed)
    idx = B.build_shard(args, args.size, range(0, args.size), "float16", cg, cl)
    n_q, args.queries = args.queries, max(1000, args.queries)  # bench_search's 1000 queries, the first n_q
    qg, ql = (t[:n_q] for t in B.queries(args, args.size, cg, cl))
    del cg, cl
    t0 = time.perf_counter()
    exact = idx.search(qg, ql, 10, mode="exact")
    print(f"{args.size:,} items, seed {args.seed}, {n_q} queries, K' = {args.shortlist}; "
          f"exact search {time.perf_counter() - t0:.0f} s", flush=True)
    print("| shortlist score (|dg|^2 + ...) | recall@10 |\n|---|---|")
    for score in CHECK if args.check else SCORES:
        cand = shortlist(idx, features(qg, ql, score), score, args.shortlist)
        hits = sum(len(set(exact.ids[q].tolist()) & set(cand[q].tolist())) for q in range(qg.shape[0]))
        name = " + ".join(f"{w:g} x {kind}" for kind, w in score) or "global only"
        print(f"| {name} | {hits / (10 * qg.shape[0]):.4f} |", flush=True)


if __name__ == "__main__":
    main()
