"""partdist.compat vs the functions it replaces (AlignedReID, torchreid, fast-reid).

Each compat function is timed against the original formula, written below from the
public code's semantics (AlignedReID-Re-Production-Pytorch ``aligned_reid/model/loss.py``,
torchreid ``losses/hard_mine_triplet_loss.py`` and ``metrics/rank.py``, fast-reid 1.4
``modeling/losses`` and ``evaluation/rank.py``), on the same inputs, forward alone and
forward + backward, at a small and a large size; then the full AlignedReID loss step
(global 2048-d + local 8 x 128, N = 32 x 4, forward + backward) and the ranking
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
import torch.nn.functional as F
from common import env_line, fmt_time, print_table

from partdist import reference as R
from partdist.compat import alignedreid as A
from partdist.compat import fastreid as FR
from partdist.compat import torchreid as T


# =================================================================== originals
def o_normalize(x, axis=-1):
    return 1.0 * x / (torch.norm(x, 2, axis, keepdim=True).expand_as(x) + 1e-12)


def o_euclidean_dist(x, y):
    m, n = x.size(0), y.size(0)
    xx = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n)
    yy = torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
    dist = xx + yy
    dist.addmm_(x, y.t(), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def o_batch_euclidean_dist(x, y):
    N, m, d = x.size()
    n = y.size(1)
    xx = torch.pow(x, 2).sum(-1, keepdim=True).expand(N, m, n)
    yy = torch.pow(y, 2).sum(-1, keepdim=True).expand(N, n, m).permute(0, 2, 1)
    dist = xx + yy
    dist.baddbmm_(x, y.permute(0, 2, 1), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


# AlignedReID's shortest_dist loop, verbatim in partdist.reference
o_shortest_dist = R.shortest_dist


def o_batch_local_dist(x, y):
    dist_mat = o_batch_euclidean_dist(x, y)
    dist_mat = (torch.exp(dist_mat) - 1.0) / (torch.exp(dist_mat) + 1.0)
    return o_shortest_dist(dist_mat.permute(1, 2, 0))


def o_local_dist(x, y):
    M, m, d = x.size()
    N, n, d = y.size()
    x = x.contiguous().view(M * m, d)
    y = y.contiguous().view(N * n, d)
    dist_mat = o_euclidean_dist(x, y)
    dist_mat = (torch.exp(dist_mat) - 1.0) / (torch.exp(dist_mat) + 1.0)
    dist_mat = dist_mat.contiguous().view(M, m, N, n).permute(1, 3, 0, 2)
    return o_shortest_dist(dist_mat)


def o_hard_example_mining(dist_mat, labels, return_inds=False):
    N = dist_mat.size(0)
    is_pos = labels.expand(N, N).eq(labels.expand(N, N).t())
    is_neg = labels.expand(N, N).ne(labels.expand(N, N).t())
    dist_ap, relative_p_inds = torch.max(dist_mat[is_pos].contiguous().view(N, -1), 1, keepdim=True)
    dist_an, relative_n_inds = torch.min(dist_mat[is_neg].contiguous().view(N, -1), 1, keepdim=True)
    dist_ap, dist_an = dist_ap.squeeze(1), dist_an.squeeze(1)
    if return_inds:
        ind = labels.new().resize_as_(labels).copy_(torch.arange(0, N).long()).unsqueeze(0).expand(N, N)
        p_inds = torch.gather(ind[is_pos].contiguous().view(N, -1), 1, relative_p_inds.data)
        n_inds = torch.gather(ind[is_neg].contiguous().view(N, -1), 1, relative_n_inds.data)
        return dist_ap, dist_an, p_inds.squeeze(1), n_inds.squeeze(1)
    return dist_ap, dist_an


class OTripletLoss:
    """huanghoujing TripletLoss(margin): MarginRankingLoss on (dist_an, dist_ap)."""

    def __init__(self, margin=None):
        self.margin = margin
        self.ranking_loss = torch.nn.MarginRankingLoss(margin=margin) if margin is not None else torch.nn.SoftMarginLoss()

    def __call__(self, dist_ap, dist_an):
        y = dist_an.new().resize_as_(dist_an).fill_(1)
        if self.margin is not None:
            return self.ranking_loss(dist_an, dist_ap, y)
        return self.ranking_loss(dist_an - dist_ap, y)


def o_global_loss(tri_loss, global_feat, labels, normalize_feature=True):
    if normalize_feature:
        global_feat = o_normalize(global_feat, axis=-1)
    dist_mat = o_euclidean_dist(global_feat, global_feat)
    dist_ap, dist_an, p_inds, n_inds = o_hard_example_mining(dist_mat, labels, return_inds=True)
    loss = tri_loss(dist_ap, dist_an)
    return loss, p_inds, n_inds, dist_ap, dist_an, dist_mat


def o_local_loss(tri_loss, local_feat, p_inds=None, n_inds=None, labels=None, normalize_feature=True):
    if normalize_feature:
        local_feat = o_normalize(local_feat, axis=-1)
    if p_inds is None or n_inds is None:
        dist_mat = o_local_dist(local_feat, local_feat)
        dist_ap, dist_an = o_hard_example_mining(dist_mat, labels, return_inds=False)
        return tri_loss(dist_ap, dist_an), dist_ap, dist_an, dist_mat
    dist_ap = o_batch_local_dist(local_feat, local_feat[p_inds])
    dist_an = o_batch_local_dist(local_feat, local_feat[n_inds])
    return tri_loss(dist_ap, dist_an), dist_ap, dist_an


def o_torchreid_triplet(inputs, targets, margin=0.3):
    n = inputs.size(0)
    dist = torch.pow(inputs, 2).sum(dim=1, keepdim=True).expand(n, n)
    dist = dist + dist.t()
    dist.addmm_(inputs, inputs.t(), beta=1, alpha=-2)
    dist = dist.clamp(min=1e-12).sqrt()
    mask = targets.expand(n, n).eq(targets.expand(n, n).t())
    dist_ap, dist_an = [], []
    for i in range(n):
        dist_ap.append(dist[i][mask[i]].max().unsqueeze(0))
        dist_an.append(dist[i][mask[i] == 0].min().unsqueeze(0))
    dist_ap, dist_an = torch.cat(dist_ap), torch.cat(dist_an)
    y = torch.ones_like(dist_an)
    return torch.nn.MarginRankingLoss(margin=margin)(dist_an, dist_ap, y)


def o_aligned_triplet(inputs, targets, local_features, margin=0.3):
    """michuanhaohao TripletLossAlignedReID.forward (mutual_flag=False)."""
    ranking = torch.nn.MarginRankingLoss(margin=margin)
    dist = o_euclidean_dist(inputs, inputs)
    dist_ap, dist_an, p_inds, n_inds = o_hard_example_mining(dist, targets, return_inds=True)
    local_features = local_features.permute(0, 2, 1)
    p_local = local_features[p_inds]
    n_local = local_features[n_inds]
    local_dist_ap = o_batch_local_dist(local_features, p_local)
    local_dist_an = o_batch_local_dist(local_features, n_local)
    y = torch.ones_like(dist_an)
    return ranking(dist_an, dist_ap, y), ranking(local_dist_an, local_dist_ap, y)


def o_fr_cosine_dist(x, y):
    x = F.normalize(x, dim=1)
    y = F.normalize(y, dim=1)
    return 2 - 2 * torch.mm(x, y.t())


def o_fr_triplet(embedding, targets, margin, norm_feat, hard_mining):
    dist_mat = o_fr_cosine_dist(embedding, embedding) if norm_feat else o_euclidean_dist(embedding, embedding)
    N = dist_mat.size(0)
    is_pos = targets.view(N, 1).expand(N, N).eq(targets.view(N, 1).expand(N, N).t()).float()
    is_neg = targets.view(N, 1).expand(N, N).ne(targets.view(N, 1).expand(N, N).t()).float()
    assert hard_mining
    dist_ap, _ = torch.max(dist_mat * is_pos, dim=1)
    dist_an, _ = torch.min(dist_mat * is_neg + is_pos * 1e9, dim=1)
    y = dist_an.new().resize_as_(dist_an).fill_(1)
    if margin > 0:
        return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)
    loss = F.soft_margin_loss(dist_an - dist_ap, y)
    if loss == float("Inf"):
        loss = F.margin_ranking_loss(dist_an, dist_ap, y, margin=0.3)
    return loss


def o_eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """torchreid / fast-reid eval_market1501, Python version (fast-reid's return)."""
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1)
    all_cmc, all_AP, all_INP = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid, q_camid = q_pids[q_idx], q_camids[q_idx]
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)
        matches = (g_pids[order] == q_pid).astype(np.int32)
        raw_cmc = matches[keep]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        max_pos_idx = np.max(np.where(raw_cmc == 1))
        all_INP.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
        all_AP.append(tmp_cmc.sum() / num_rel)
    all_cmc = np.asarray(all_cmc).astype(np.float32)
    return all_cmc.sum(0) / num_valid_q, all_AP, all_INP


# =================================================================== timing
# --clock cpu: time.process_time (CPU time of this process, all its threads): with
# --threads 1 it equals the wall time on a quiet machine and is far less disturbed by
# other processes on a loaded one
CLOCK = time.perf_counter


def paired(fa, fb, reps, warmup=1, max_seconds=None):
    """Medians of fa() and fb() timed alternately (A B A B ...)."""
    for _ in range(warmup):
        fa()
        fb()
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
        compare("euclidean_dist(x, x) fwd", s, fwd(A.euclidean_dist, x, x), fwd(o_euclidean_dist, x, x), reps)
        compare("euclidean_dist(x, x) fwd+bwd", s, fwd_bwd(lambda a: A.euclidean_dist(a, a), x),
                fwd_bwd(lambda a: o_euclidean_dist(a, a), x), reps)
        compare("euclidean_dist(x, y) fwd+bwd", s, fwd_bwd(A.euclidean_dist, x, y), fwd_bwd(o_euclidean_dist, x, y), reps)
        compare("fastreid.cosine_dist fwd+bwd", s, fwd_bwd(FR.cosine_dist, x, y), fwd_bwd(o_fr_cosine_dist, x, y), reps)
    for N in ([32, 256] if not quick else [8]):
        x, y = randn(N, 8, 128), randn(N, 8, 128, seed=1)
        s = f"[{N},8,128]"
        compare("batch_euclidean_dist fwd", s, fwd(A.batch_euclidean_dist, x, y), fwd(o_batch_euclidean_dist, x, y), reps)
        compare("batch_euclidean_dist fwd+bwd", s, fwd_bwd(A.batch_euclidean_dist, x, y),
                fwd_bwd(o_batch_euclidean_dist, x, y), reps)


def bench_local(quick, reps):
    for N in ([32, 256] if not quick else [8]):
        d = torch.rand(8, 8, N, generator=torch.Generator().manual_seed(2))
        s = f"[8,8,{N}]"
        compare("shortest_dist fwd", s, fwd(A.shortest_dist, d), fwd(o_shortest_dist, d), reps)
        compare("shortest_dist fwd+bwd", s, fwd_bwd(A.shortest_dist, d), fwd_bwd(o_shortest_dist, d), reps)
        x, y = randn(N, 8, 128), randn(N, 8, 128, seed=1)
        s = f"{N} pairs 8x128"
        compare("batch_local_dist fwd", s, fwd(A.batch_local_dist, x, y), fwd(o_batch_local_dist, x, y), reps)
        compare("batch_local_dist fwd+bwd", s, fwd_bwd(A.batch_local_dist, x, y), fwd_bwd(o_batch_local_dist, x, y), reps)
    for M in ([16, 128] if not quick else [6]):
        x = randn(M, 8, 128)
        s = f"{M}x{M}, 8x128"
        compare("local_dist fwd", s, fwd(A.local_dist, x, x), fwd(o_local_dist, x, x), max(1, reps // 2))
        compare("local_dist fwd+bwd", s, fwd_bwd(A.local_dist, x, x), fwd_bwd(o_local_dist, x, x), max(1, reps // 2))


def bench_mining_losses(quick, reps):
    for P, K, C in ([(8, 4, 128), (32, 4, 2048)] if not quick else [(4, 4, 32)]):
        N = P * K
        lab = labels_pk(P, K)
        x = randn(N, C)
        dm = o_euclidean_dist(x, x)
        s = f"N={N}"
        compare("hard_example_mining fwd+bwd", s,
                fwd_bwd(lambda d: A.hard_example_mining(d, lab), dm, loss=lambda o: o[0].sum() + o[1].sum()),
                fwd_bwd(lambda d: o_hard_example_mining(d, lab), dm, loss=lambda o: o[0].sum() + o[1].sum()), reps)
        s = f"N={N}, C={C}"
        tri, otri = A.TripletLoss(margin=0.3), OTripletLoss(margin=0.3)
        compare("global_loss fwd+bwd", s, fwd_bwd(lambda f: A.global_loss(tri, f, lab)[0], x),
                fwd_bwd(lambda f: o_global_loss(otri, f, lab)[0], x), reps)
        compare("torchreid.TripletLoss fwd+bwd", s, fwd_bwd(lambda f: T.TripletLoss(0.3)(f, lab), x),
                fwd_bwd(lambda f: o_torchreid_triplet(f, lab, 0.3), x), reps)
        compare("alignedreid.TripletLoss(feat) fwd+bwd", s, fwd_bwd(lambda f: A.TripletLoss(0.3)(f, lab), x),
                fwd_bwd(lambda f: o_torchreid_triplet(f, lab, 0.3), x), reps)
        for norm in (False, True):
            compare(f"fastreid.triplet_loss norm_feat={norm} fwd+bwd", s,
                    fwd_bwd(lambda f: FR.triplet_loss(f, lab, 0.3, norm, True), x),
                    fwd_bwd(lambda f: o_fr_triplet(f, lab, 0.3, norm, True), x), reps)
        lf = randn(N, 8, 128, seed=3)
        _, p, n, _, _, _ = o_global_loss(otri, x, lab)
        s = f"N={N}, 8x128"
        compare("local_loss(p_inds, n_inds) fwd+bwd", s, fwd_bwd(lambda f: A.local_loss(tri, f, p, n)[0], lf),
                fwd_bwd(lambda f: o_local_loss(otri, f, p, n)[0], lf), reps)
        lfc = lf.permute(0, 2, 1).contiguous()
        compare("TripletLossAlignedReID fwd+bwd", f"N={N}, C={C}, 8x128",
                fwd_bwd(lambda f, l: sum(A.TripletLossAlignedReID()(f, lab, l)), x, lfc),
                fwd_bwd(lambda f, l: sum(o_aligned_triplet(f, lab, l)), x, lfc), reps)


def bench_step(quick, reps):
    """The AlignedReID loss step: global 2048-d + local 8 x 128, N = 32 x 4, fwd + bwd."""
    P, K, C = (32, 4, 2048) if not quick else (4, 4, 64)
    N = P * K
    lab = labels_pk(P, K)
    g, lf = randn(N, C), randn(N, 8, 128, seed=1)
    tri, otri = A.TripletLoss(margin=0.3), OTripletLoss(margin=0.3)

    def step(gl, ll, t):
        def run():
            gr, lr = g.detach().requires_grad_(), lf.detach().requires_grad_()
            loss, p, n, _, _, _ = gl(t, gr, lab)
            l_loss = ll(t, lr, p, n)[0]
            (loss + l_loss).backward()

        return run

    return compare("FULL AlignedReID loss step fwd+bwd", f"N={N}, {C}-d + 8x128",
                   step(A.global_loss, A.local_loss, tri), step(o_global_loss, o_local_loss, otri), reps)


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
            compare("evaluate_rank vs Python eval_market1501", s, ours, lambda: o_eval_market1501(*data), r, w)
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


SECTIONS = ["distances", "local", "losses", "step", "rank", "rerank"]


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
