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

    python benchmarks/bench_mining.py [--quick] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import os

import torch

import partdist
from partdist import reference as R
from partdist.losses import AlignedTripletLoss

from common import median_time, sync  # noqa: E402  (benchmarks/common.py)




def fmt(s):
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} us"


def print_table(rows, headers):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


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


def bench_mining(device, sizes, quick, loop_max_n):
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
    print_table(
        rows, ["device", "N", "partdist", "masked PyTorch", "speedup vs masked", "per-anchor loop", "speedup vs loop"]
    )


def bench_aligned(device, quick, N=128, m=8, C=128, G=2048):
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
    print_table(
        [[device, f"N={N} m={m} C={C} G={G}", fmt(t_ours), fmt(t_vec), f"{t_vec / t_ours:.1f}x"]],
        ["device", "shape", "partdist", "vectorized PyTorch", "speedup"],
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--sizes", default="128,512,4096", help="N values of the mining benchmark")
    ap.add_argument(
        "--loop-max-n",
        type=int,
        default=512,
        help="largest N at which the per-anchor loop runs forward + backward (its backward is O(N^3))",
    )
    args = ap.parse_args()
    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    sizes = [int(s) for s in args.sizes.split(",")]
    for dev in devices:
        name = torch.cuda.get_device_name() if dev == "cuda" else f"{torch.get_num_threads()} threads, {os.cpu_count()} cores"
        print(f"\n## {dev}: torch {torch.__version__}, {name}\n")
        print("Mining + triplet loss, forward + backward from dist_mat [N, N] (float32, K=4):\n")
        bench_mining(dev, sizes, args.quick, args.loop_max_n)
        print("\nAlignedReID loss step (global mining + local DMLI on mined pairs), forward + backward:\n")
        bench_aligned(dev, args.quick)


if __name__ == "__main__":
    main()
