"""Benchmark of batch-hard mining and the AlignedReID loss step.

1. Mining + triplet loss, forward + backward from a distance matrix ``[N, N]``
   (requires grad), K = 4 images per identity, float32, N = 128, 512, 4096:

   * ``partdist``: :func:`partdist.triplet_hard_loss` (one kernel pass + scatter backward);
   * ``masked``: the masked PyTorch version as BoT-style code writes it for any K
     (``N x N`` label mask, ``torch.where`` + ``max`` / ``min``, ``nn.MarginRankingLoss``);
   * ``loop``: the per-anchor Python loop of torchreid's TripletLoss. Its backward
     costs O(N^3) (each ``dist[i]`` select allocates an ``N x N`` gradient), so above
     ``--loop-max-n`` (512) only its forward is timed, a lower bound.

2. The AlignedReID loss step, forward + backward from the features: global batch-hard
   mining on the Euclidean distances of global features ``[N, G]`` and the local DMLI
   triplet loss of the mined pairs on local features ``[N, m, C]`` (N=128, m=8, C=128,
   G=2048, K=4):

   * ``partdist``: :class:`partdist.losses.AlignedTripletLoss`;
   * ``vectorized``: :func:`partdist.reference.aligned_triplet_loss_vectorized`, the
     AlignedReID practice (GEMM distances, ``view(N, -1)`` mining, vectorized DP cell
     loop, ``nn.MarginRankingLoss``).

Every contender runs on the same inputs; medians of the repetitions are printed with
the ratio to partdist. CUDA rows are added when a GPU is present.

GPU targets (checked on --device cuda, printed met / missed, written with --json): mining +
triplet loss at N = 4096 at least 3x faster than the masked version on the same GPU, and the
AlignedReID loss step at least 20x faster than the vectorized version.

    python benchmarks/bench_mining.py [--quick] [--device cpu|cuda|all ...] [--json PATH]
"""

from __future__ import annotations

import argparse

import torch
from common import Results, add_device_arg, env_line, median_time, print_table, resolve_devices  # noqa: E402
from common import fmt_time as fmt  # noqa: E402

import partdist
from partdist import reference as R
from partdist.losses import AlignedTripletLoss

TARGET_MINING = "Mining + triplet loss fwd+bwd, N=4096: masked PyTorch / partdist, same GPU"
TARGET_ALIGNED = "AlignedReID loss step fwd+bwd, N=128: vectorized PyTorch / partdist, same GPU"


# ------------------------------------------------------------------ contenders
def masked_triplet(dist_mat, labels, margin=0.3):
    """Masked PyTorch batch-hard triplet loss (any K), as BoT-style code writes it."""
    is_pos = labels[:, None] == labels[None, :]
    dist_ap = torch.where(is_pos, dist_mat, float("-inf")).max(1).values
    dist_an = torch.where(is_pos, float("inf"), dist_mat).min(1).values
    return torch.nn.functional.margin_ranking_loss(dist_an, dist_ap, torch.ones_like(dist_an), margin=margin)


def loop_triplet(dist_mat, labels, margin=0.3):
    """torchreid's per-anchor loop on a given distance matrix."""
    dist_ap, dist_an = R.hard_example_mining_loop(dist_mat, labels)
    return R.triplet_from_dists(dist_ap, dist_an, margin)


def fwd_bwd(loss_fn, dist_mat, labels):
    def run():
        dist_mat.grad = None
        loss_fn(dist_mat, labels).backward()

    return run


def bench_mining(device, sizes, quick, loop_max_n, res):
    rows = []
    for N in sizes:
        g = torch.Generator().manual_seed(N)
        x = torch.randn(N, 128, generator=g)
        d = torch.cdist(x, x).to(device).requires_grad_()
        labels = (torch.arange(N) // 4)[torch.randperm(N, generator=g)].to(device)
        # same results first
        ref = masked_triplet(d, labels)
        ours = partdist.triplet_hard_loss(d, labels, 0.3)
        torch.testing.assert_close(ours, ref)
        big = N >= 4096
        reps = 3 if quick else (5 if big else 30)
        t_ours = median_time(fwd_bwd(lambda a, b: partdist.triplet_hard_loss(a, b, 0.3), d, labels), device, reps)
        t_mask = median_time(fwd_bwd(masked_triplet, d, labels), device, reps)
        if N <= loop_max_n:
            t_loop = median_time(fwd_bwd(loop_triplet, d, labels), device, 2 if quick else 5, max_seconds=20)
            loop_cells = [fmt(t_loop), f"{t_loop / t_ours:.0f}x"]
        else:
            # The loop's backward costs O(N^3): every `dist[i]` select allocates an
            # N x N gradient. Only its forward is timed here (a lower bound).
            with torch.no_grad():
                t_loop = median_time(lambda: loop_triplet(d, labels), device, 1, warmup=0)
            loop_cells = [f"> {fmt(t_loop)} (forward only)", f"> {t_loop / t_ours:.0f}x"]
        rows.append([device, N, fmt(t_ours), fmt(t_mask), f"{t_mask / t_ours:.1f}x"] + loop_cells)
        case = f"mining + triplet loss fwd+bwd, N={N}, K=4"
        res.add(case, device, "partdist.triplet_hard_loss", t_ours)
        res.add(case, device, "masked PyTorch", t_mask)
        res.add(case, device, "per-anchor loop" + (" (forward only, lower bound)" if N > loop_max_n else ""), t_loop)
        res.add(case, device, "masked / partdist", t_mask / t_ours, unit="x")
        if N == 4096:
            res.measure(TARGET_MINING, t_mask / t_ours, device)
    print_table(
        rows, ["device", "N", "partdist", "masked PyTorch", "speedup vs masked", "per-anchor loop", "speedup vs loop"]
    )


def bench_aligned(device, quick, res, N=128, m=8, C=128, G=2048):
    g = torch.Generator().manual_seed(0)
    gf = torch.randn(N, G, generator=g).to(device).requires_grad_()
    lf = torch.randn(N, m, C, generator=g).to(device).requires_grad_()
    labels = (torch.arange(N) // 4)[torch.randperm(N, generator=g)].to(device)
    loss = AlignedTripletLoss(0.3, normalize_feature=True)

    def ours():
        gf.grad = lf.grad = None
        r = loss(gf, labels, lf)
        (r.global_loss + r.local_loss).backward()

    def vectorized():
        gf.grad = lf.grad = None
        a, b = R.aligned_triplet_loss_vectorized(gf, lf, labels, 0.3, True)
        (a + b).backward()

    r = loss(gf, labels, lf)
    a, b = R.aligned_triplet_loss_vectorized(gf, lf, labels, 0.3, True)
    torch.testing.assert_close(r.global_loss, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r.local_loss, b, rtol=1e-4, atol=1e-4)
    reps = 5 if quick else 30
    t_ours = median_time(ours, device, reps)
    t_vec = median_time(vectorized, device, reps)
    case = f"AlignedReID loss step fwd+bwd, N={N} m={m} C={C} G={G}"
    res.add(case, device, "partdist AlignedTripletLoss", t_ours)
    res.add(case, device, "vectorized PyTorch", t_vec)
    res.add(case, device, "vectorized / partdist", t_vec / t_ours, unit="x")
    if not quick:
        res.measure(TARGET_ALIGNED, t_vec / t_ours, device)
    print_table(
        [[device, f"N={N} m={m} C={C} G={G}", fmt(t_ours), fmt(t_vec), f"{t_vec / t_ours:.1f}x"]],
        ["device", "shape", "partdist", "vectorized PyTorch", "speedup"],
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    add_device_arg(ap)
    ap.add_argument("--sizes", default="128,512,4096", help="N values of the mining benchmark")
    ap.add_argument(
        "--loop-max-n",
        type=int,
        default=512,
        help="largest N at which the per-anchor loop runs forward + backward (its backward is O(N^3))",
    )
    args = ap.parse_args(argv)
    devices = resolve_devices(ap, args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    res = Results(args.json, "mining")
    res.target(TARGET_MINING, 3.0, ">=", unit="x")
    res.target(TARGET_ALIGNED, 20.0, ">=", unit="x")
    for dev in devices:
        print(f"\n## {dev}: {env_line(dev)}\n")
        print("Mining + triplet loss, forward + backward from dist_mat [N, N] (float32, K=4):\n")
        bench_mining(dev, sizes, args.quick, args.loop_max_n, res)
        print("\nAlignedReID loss step (global mining + local DMLI on mined pairs), forward + backward:\n")
        bench_aligned(dev, args.quick, res)
    res.finish()


if __name__ == "__main__":
    main()
