"""partdist.compat vs the functions it replaces (AlignedReID, torchreid, fast-reid).

Each compat function is timed against the original formula (:mod:`partdist.reference.originals`,
written from the public code's semantics: AlignedReID-Re-Production-Pytorch
``aligned_reid/model/loss.py``, torchreid ``losses/hard_mine_triplet_loss.py`` and
``metrics/rank.py``, fast-reid 1.4 ``modeling/losses`` and ``evaluation/rank.py``), on the same inputs, forward alone and
forward + backward, at a small and a large size; then the full AlignedReID loss step
(global 2048-d + local 8 x 128, N = 32 x 4, forward + backward), the losses on
float16 / bfloat16 features (both sides in the same dtype), the numpy utilities
(AlignedReID local distances and open-reid metrics, fast-reid's Jaccard distance,
michuanhaohao's re-ranking from features) and the ranking
evaluation (torchreid / fast-reid Python, and their Cython ``evaluate_cy`` when
``--cython-dir`` points at a directory where it was built).

Timings alternate between the two functions (ABAB...) and report medians, so the ratio
(original time / compat time, > 1 = compat faster) is measured under the same load.

    python benchmarks/bench_compat.py              # all
    python benchmarks/bench_compat.py --quick      # smoke test (small sizes, few reps)
    python benchmarks/bench_compat.py --only step,rank --cython-dir /tmp/cy
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import numpy as np
import torch
from common import env_line, fmt_time, print_table

from partdist import reference as R
from partdist.compat import alignedreid as A
from partdist.compat import fastreid as FR
from partdist.compat import torchreid as T
from partdist.reference import originals as O

# =================================================================== timing
# --clock cpu: time.process_time (CPU time of this process, all its threads): with
# --threads 1 it equals the wall time on a quiet machine and is far less disturbed by
# other processes on a loaded one
CLOCK = time.perf_counter


def paired(fa, fb, reps, warmup=1, max_seconds=None):
    """Medians of fa() and fb() timed alternately (A B A B ...); sub-millisecond pairs get
    more repetitions (about 0.5 s of them, at most 400): their medians are the noisiest."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fa()
        fb()
    if warmup:
        pair = (time.perf_counter() - t0) / warmup
        reps = max(reps, min(400, int(0.5 / max(pair, 1e-6))))
    ta, tb = [], []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = CLOCK()
        fa()
        ta.append(CLOCK() - t0)
        t0 = CLOCK()
        fb()
        tb.append(CLOCK() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return statistics.median(ta), statistics.median(tb)


def fwd(fn, *inputs):
    def run():
        with torch.no_grad():
            fn(*inputs)

    return run


def fwd_bwd(fn, *inputs, loss=None):
    def run():
        leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
        out = fn(*leaves)
        o = out[0] if isinstance(out, tuple) else out
        (o.sum() if loss is None else loss(out)).backward()

    return run


ROWS = []


def compare(name, size, ours, orig, reps, warmup=1):
    t_ours, t_orig = paired(ours, orig, reps, warmup)
    ROWS.append([name, size, fmt_time(t_orig), fmt_time(t_ours), f"{t_orig / t_ours:.2f}x"])
    print(" | ".join(ROWS[-1]), flush=True)
    return t_orig / t_ours


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def labels_pk(P, K):
    return torch.arange(P).repeat_interleave(K)


# =================================================================== sections
def bench_distances(quick, reps):
    sizes = [(32, 128), (128, 2048)] if not quick else [(16, 32)]
    for N, C in sizes:
        x, y = randn(N, C), randn(N, C, seed=1)
        s = f"[{N},{C}]"
        compare("euclidean_dist(x, x) fwd", s, fwd(A.euclidean_dist, x, x), fwd(O.euclidean_dist, x, x), reps)
        compare("euclidean_dist(x, x) fwd+bwd", s, fwd_bwd(lambda a: A.euclidean_dist(a, a), x),
                fwd_bwd(lambda a: O.euclidean_dist(a, a), x), reps)
        compare("euclidean_dist(x, y) fwd+bwd", s, fwd_bwd(A.euclidean_dist, x, y), fwd_bwd(O.euclidean_dist, x, y), reps)
        compare("fastreid.cosine_dist fwd+bwd", s, fwd_bwd(FR.cosine_dist, x, y), fwd_bwd(O.fastreid_cosine_dist, x, y), reps)
    for N in ([32, 256] if not quick else [8]):
        x, y = randn(N, 8, 128), randn(N, 8, 128, seed=1)
        s = f"[{N},8,128]"
        compare("batch_euclidean_dist fwd", s, fwd(A.batch_euclidean_dist, x, y), fwd(O.batch_euclidean_dist, x, y), reps)
        compare("batch_euclidean_dist fwd+bwd", s, fwd_bwd(A.batch_euclidean_dist, x, y),
                fwd_bwd(O.batch_euclidean_dist, x, y), reps)


def bench_local(quick, reps):
    for N in ([32, 256] if not quick else [8]):
        d = torch.rand(8, 8, N, generator=torch.Generator().manual_seed(2))
        s = f"[8,8,{N}]"
        compare("shortest_dist fwd", s, fwd(A.shortest_dist, d), fwd(O.shortest_dist, d), reps)
        compare("shortest_dist fwd+bwd", s, fwd_bwd(A.shortest_dist, d), fwd_bwd(O.shortest_dist, d), reps)
        x, y = randn(N, 8, 128), randn(N, 8, 128, seed=1)
        s = f"{N} pairs 8x128"
        compare("batch_local_dist fwd", s, fwd(A.batch_local_dist, x, y), fwd(O.batch_local_dist, x, y), reps)
        compare("batch_local_dist fwd+bwd", s, fwd_bwd(A.batch_local_dist, x, y), fwd_bwd(O.batch_local_dist, x, y), reps)
    for M in ([16, 128] if not quick else [6]):
        x = randn(M, 8, 128)
        s = f"{M}x{M}, 8x128"
        compare("local_dist fwd", s, fwd(A.local_dist, x, x), fwd(O.local_dist, x, x), max(1, reps // 2))
        compare("local_dist fwd+bwd", s, fwd_bwd(A.local_dist, x, x), fwd_bwd(O.local_dist, x, x), max(1, reps // 2))


def bench_mining_losses(quick, reps):
    for P, K, C in ([(8, 4, 128), (32, 4, 2048)] if not quick else [(4, 4, 32)]):
        N = P * K
        lab = labels_pk(P, K)
        x = randn(N, C)
        dm = O.euclidean_dist(x, x)
        s = f"N={N}"
        compare("hard_example_mining fwd+bwd", s,
                fwd_bwd(lambda d: A.hard_example_mining(d, lab), dm, loss=lambda o: o[0].sum() + o[1].sum()),
                fwd_bwd(lambda d: O.hard_example_mining(d, lab), dm, loss=lambda o: o[0].sum() + o[1].sum()), reps)
        s = f"N={N}, C={C}"
        tri, otri = A.TripletLoss(margin=0.3), O.TripletLoss(margin=0.3)
        compare("global_loss fwd+bwd", s, fwd_bwd(lambda f: A.global_loss(tri, f, lab)[0], x),
                fwd_bwd(lambda f: O.global_loss(otri, f, lab)[0], x), reps)
        compare("torchreid.TripletLoss fwd+bwd", s, fwd_bwd(lambda f: T.TripletLoss(0.3)(f, lab), x),
                fwd_bwd(lambda f: O.torchreid_triplet_loss(f, lab, 0.3), x), reps)
        compare("alignedreid.TripletLoss(feat) fwd+bwd", s, fwd_bwd(lambda f: A.TripletLoss(0.3)(f, lab), x),
                fwd_bwd(lambda f: O.torchreid_triplet_loss(f, lab, 0.3), x), reps)
        for norm in (False, True):
            compare(f"fastreid.triplet_loss norm_feat={norm} fwd+bwd", s,
                    fwd_bwd(lambda f: FR.triplet_loss(f, lab, 0.3, norm, True), x),
                    fwd_bwd(lambda f: O.fastreid_triplet_loss(f, lab, 0.3, norm, True), x), reps)
        lf = randn(N, 8, 128, seed=3)
        _, p, n, _, _, _ = O.global_loss(otri, x, lab)
        s = f"N={N}, 8x128"
        compare("local_loss(p_inds, n_inds) fwd+bwd", s, fwd_bwd(lambda f: A.local_loss(tri, f, p, n)[0], lf),
                fwd_bwd(lambda f: O.local_loss(otri, f, p, n)[0], lf), reps)
        lfc = lf.permute(0, 2, 1).contiguous()
        compare("TripletLossAlignedReID fwd+bwd", f"N={N}, C={C}, 8x128",
                fwd_bwd(lambda f, l: sum(A.TripletLossAlignedReID()(f, lab, l)), x, lfc),
                fwd_bwd(lambda f, l: sum(O.aligned_triplet_loss(f, lab, l)), x, lfc), reps)


def bench_step(quick, reps):
    """The AlignedReID loss step: global 2048-d + local 8 x 128, N = 32 x 4, fwd + bwd."""
    P, K, C = (32, 4, 2048) if not quick else (4, 4, 64)
    N = P * K
    lab = labels_pk(P, K)
    g, lf = randn(N, C), randn(N, 8, 128, seed=1)
    tri, otri = A.TripletLoss(margin=0.3), O.TripletLoss(margin=0.3)

    def step(gl, ll, t):
        def run():
            gr, lr = g.detach().requires_grad_(), lf.detach().requires_grad_()
            loss, p, n, _, _, _ = gl(t, gr, lab)
            l_loss = ll(t, lr, p, n)[0]
            (loss + l_loss).backward()

        return run

    return compare("FULL AlignedReID loss step fwd+bwd", f"N={N}, {C}-d + 8x128",
                   step(A.global_loss, A.local_loss, tri), step(O.global_loss, O.local_loss, otri), reps)


def _rank_data(Q, G, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    ids = ids or max(2, G // 20)
    q_pids, g_pids = rng.integers(0, ids, Q), rng.integers(0, ids, G)
    g_pids[rng.random(G) < 0.05] = -1
    # distances that rank true matches higher, as a trained model does
    d = rng.random((Q, G)).astype(np.float32) + 0.7 * (q_pids[:, None] != g_pids[None, :])
    return d, q_pids, g_pids, rng.integers(0, 6, Q), rng.integers(0, 6, G)


def bench_rank(quick, reps, cython_dir, python_market=False):
    evaluate_cy = None
    if cython_dir:
        sys.path.insert(0, cython_dir)
        try:
            evaluate_cy = importlib.import_module("rank_cy").evaluate_cy
        except ImportError as e:
            print(f"(no Cython evaluate_cy in {cython_dir}: {e})")
    sizes = [(220, 1400), (3368, 15913)] if not quick else [(30, 200)]
    for Q, G in sizes:
        data = _rank_data(Q, G)
        s = f"{Q}x{G}"
        big = Q > 1000
        r, w = (1, 0) if big else (reps, 1)
        ours = lambda: FR.evaluate_rank(*data)  # noqa: E731
        if evaluate_cy is not None:
            compare("evaluate_rank vs Cython evaluate_cy", s, ours, lambda: evaluate_cy(*data, 50, False),
                    max(3, r), w)
        if not big or python_market:
            compare("evaluate_rank vs Python eval_market1501", s, ours, lambda: O.eval_market1501(*data), r, w)
        if evaluate_cy is not None:
            cmc_cy, ap_cy, inp_cy = evaluate_cy(*data, 50, False)
            cmc, ap, inp = ours()
            print(f"{s}: max |cmc - cython| = {np.abs(cmc - cmc_cy).max():.1e}, "
                  f"|mAP - cython| = {abs(np.mean(ap) - np.mean(ap_cy)):.1e}")


def bench_rerank(quick, reps):
    n = 120 if quick else 600
    rng = np.random.default_rng(1)
    f = rng.random((n, 32)).astype(np.float32)
    d = np.sqrt(np.maximum(((f ** 2).sum(1)[:, None] + (f ** 2).sum(1)[None] - 2 * f @ f.T), 0))
    q = n // 5
    args = (d[:q, q:], d[:q, :q], d[q:, q:])
    compare("re_ranking vs the usual dense numpy code", f"{q}+{n - q}", lambda: FR.re_ranking(*args),
            lambda: R.re_ranking_dense(*args), max(1, reps // 2))


def bench_half(quick, reps):
    """float16 / bfloat16 features (AMP): the shims against the originals run in the same dtype."""
    P, K, C = (16, 4, 2048) if not quick else (4, 4, 64)
    N = P * K
    lab = labels_pk(P, K)
    x = randn(N, C) * (45 / C ** 0.5)  # norms near 45, as 2048-d ReID features
    lf = randn(N, 8, 128, seed=3)
    tri, otri = A.TripletLoss(margin=0.3), O.TripletLoss(margin=0.3)
    for dt in (torch.float16, torch.bfloat16):
        h, hl = x.to(dt), lf.to(dt)
        t = str(dt).replace("torch.", "")
        s = f"N={N}, C={C}, {t}"
        compare("normalize fwd+bwd", s, fwd_bwd(A.normalize, h), fwd_bwd(O.normalize, h), reps)
        compare("euclidean_dist(x, x) fwd+bwd", s, fwd_bwd(lambda a: A.euclidean_dist(a, a), h),
                fwd_bwd(lambda a: O.euclidean_dist(a, a), h), reps)
        compare("fastreid.cosine_dist(x, x) fwd+bwd", s, fwd_bwd(lambda a: FR.cosine_dist(a, a), h),
                fwd_bwd(lambda a: O.fastreid_cosine_dist(a, a), h), reps)
        compare("global_loss fwd+bwd", s, fwd_bwd(lambda f: A.global_loss(tri, f, lab)[0], h),
                fwd_bwd(lambda f: O.global_loss(otri, f, lab)[0], h), reps)
        compare("torchreid.TripletLoss fwd+bwd", s, fwd_bwd(lambda f: T.TripletLoss(0.3)(f, lab), h),
                fwd_bwd(lambda f: O.torchreid_triplet_loss(f, lab, 0.3), h), reps)
        for norm, hard in ((True, True), (False, True), (True, False)):
            compare(f"fastreid.triplet_loss norm_feat={norm} hard={hard} fwd+bwd", s,
                    fwd_bwd(lambda f: FR.triplet_loss(f, lab, 0.0, norm, hard), h),
                    fwd_bwd(lambda f: O.fastreid_triplet_loss(f, lab, 0.0, norm, hard), h), reps)
        _, p, n, _, _, _ = O.global_loss(otri, x, lab)
        compare("local_loss(p_inds, n_inds) fwd+bwd", f"N={N}, 8x128, {t}",
                fwd_bwd(lambda f: A.local_loss(tri, f, p, n)[0], hl), fwd_bwd(lambda f: O.local_loss(otri, f, p, n)[0], hl),
                reps)


def bench_utils(quick, reps):
    """The numpy utilities (AlignedReID utils, fast-reid's Jaccard distance, open-reid metrics)
    against transcriptions of the originals."""
    from partdist.compat import alignedreid_repro_utils as H
    from partdist.compat import alignedreid_util as M

    M_, G_ = (8, 12) if quick else (64, 256)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((M_, 8, 128)).astype(np.float32)
    y = rng.standard_normal((G_, 8, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y /= np.linalg.norm(y, axis=-1, keepdims=True)
    s = f"{M_}x{G_}, 8x128"
    compare("numpy local_dist (aligned)", s, lambda: H.local_dist(x, y), lambda: O.np_local_dist(x, y), reps)
    compare("numpy local_dist (unaligned)", s, lambda: M.local_dist(x, y, False),
            lambda: O.np_local_dist(x, y, False), reps)
    data = _rank_data(*((30, 200) if quick else (220, 1400)))
    s = f"{data[0].shape[0]}x{data[0].shape[1]}"
    compare("open-reid cmc (first_match_break)", s, lambda: H.cmc(*data, topk=10, first_match_break=True),
            lambda: O.openreid_cmc(*data, topk=10, first_match_break=True), reps)
    compare("open-reid mean_ap", s, lambda: H.mean_ap(*data), lambda: O.openreid_mean_ap(*data), max(1, reps // 3))
    n = 100 if quick else 400
    f = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((n, 64)).astype(np.float32)), dim=1)
    compare("fastreid compute_jaccard_distance", f"N={n}", lambda: FR.compute_jaccard_distance(f, 20, 6),
            lambda: O.fastreid_compute_jaccard_distance(f, 20, 6), max(1, reps // 5))
    q = n // 5
    compare("michuanhaohao re_ranking(features)", f"{q}+{n - q}", lambda: M.re_ranking(f[:q], f[q:], 20, 6, 0.3),
            lambda: O.michuanhaohao_re_ranking(f[:q], f[q:], 20, 6, 0.3), max(1, reps // 5))


SECTIONS = ["distances", "local", "losses", "step", "half", "utils", "rank", "rerank"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--python-market", action="store_true",
                    help="also time the pure-Python original at Market-1501 size (minutes)")
    ap.add_argument("--cython-dir", default=None,
                    help="directory holding a built rank_cy module (torchreid / fast-reid evaluate_cy)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (with --threads 1, steadier on a "
                         "loaded machine)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    reps = 2 if args.quick else args.reps
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    print(f"== {env_line('cpu')}, clock {args.clock}")
    if "distances" in only:
        bench_distances(args.quick, reps)
    if "local" in only:
        bench_local(args.quick, reps)
    if "losses" in only:
        bench_mining_losses(args.quick, reps)
    if "step" in only:
        bench_step(args.quick, reps)
    if "half" in only:
        bench_half(args.quick, reps)
    if "utils" in only:
        bench_utils(args.quick, reps)
    if "rank" in only:
        bench_rank(args.quick, reps, args.cython_dir, args.python_market)
    if "rerank" in only:
        bench_rerank(args.quick, reps)
    print()
    print_table(ROWS, ["function", "size", "original", "partdist.compat", "speed-up"])
    slow = [r for r in ROWS if float(r[-1][:-1]) < 1.0]
    print(f"\n{len(ROWS) - len(slow)} of {len(ROWS)} at least as fast as the original" +
          ("" if not slow else "; slower: " + "; ".join(f"{r[0]} {r[1]} ({r[-1]})" for r in slow)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
