"""DMLI microbenchmark: partdist vs a per-pair Python loop vs vectorized PyTorch.

(a) training batch: 256 aligned pairs (128 anchors x one positive and one negative),
    m = n = 8, C = 128, forward + backward.
(a') small batches (1, 4, 32 pairs): the per-call cost (overhead) where the kernels are tiny.
(b) all pairs: 1000 x 5000 images, m = n = 8, C = 128, forward, with peak memory,
    against the bare stripe GEMM (x . y^T of all stripes, the floor for any method
    that computes these distances by GEMM) and the vectorized practice (chunked).

One run, the same inputs for every method, medians. CPU always; CUDA when present.

GPU targets (checked on --device cuda, printed met / missed, written with --json): the training
batch (a) at least 30x faster than the vectorized PyTorch version on the same GPU, in at most
0.15 ms, and faster than partdist's CPU kernels of the same machine (a run with both --device cuda
and --device cpu, at the CPU's default thread count). CPU targets (checked on a --device cpu run at 2 threads, the issue's AVX2 machines): the
training batch (a) at least 30x the vectorized version; all pairs (b) at most 1.0x the fastest
sgemm of the stripes the environment offers (torch.mm, numpy's BLAS with a fresh output, numpy's
BLAS into a reused output: all three are timed, the fastest counts). The kernels' instruction
set (torch.ops.partdist._cpu_isa(), see docs/speed.md) is printed with the CPU figures.

    python benchmarks/bench_dmli.py            # full sizes
    python benchmarks/bench_dmli.py --quick    # small sizes (smoke test)
    python benchmarks/bench_dmli.py --device cuda --device cpu --json dmli.json
    python benchmarks/bench_dmli.py --only a   # the training batch (a) alone, with its breakdown
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import (
    Results,
    add_device_arg,
    env_line,
    fmt_mem,
    fmt_time,
    median_time,
    peak_extra_memory,
    print_table,
    resolve_devices,
)

import partdist
from partdist import reference as R

TARGET_TRAIN = "DMLI training batch: partdist vs vectorized PyTorch, same GPU"
TARGET_TRAIN_TIME = "DMLI training batch 256 pairs 8x8 C=128 fwd+bwd time"
TARGET_TRAIN_VS_CPU = "DMLI training batch: partdist on the CPU of the same machine / on the GPU"
TARGET_CPU_TRAIN = "CPU 2 threads: DMLI training batch, vectorized PyTorch / partdist"
TARGET_CPU_ALLPAIRS = "CPU 2 threads: local_dist 1000x5000 / fastest sgemm of the stripes"


def train_kernels(x, y):
    """The forward and backward kernels a training step of batch_local_dist runs, as
    callables (no autograd): on the CPU the forward that also returns the cells and the
    backward that reads them (no dot products recomputed); elsewhere the plain ops."""
    ops = torch.ops.partdist
    gr = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    if x.device.type == "cpu":
        cells = ops._batch_local_dist_fwd_cells(x, y, True, 0.0, -1.0)[1]
        return (lambda: ops._batch_local_dist_fwd_cells(x, y, True, 0.0, -1.0),
                lambda: ops._batch_local_dist_backward_cells(gr, x, y, cells, True, 0.0, -1.0))
    return (lambda: ops.batch_local_dist(x, y, True, 0.0, -1.0, False),
            lambda: ops.batch_local_dist_backward(gr, x, y, True, 0.0, -1.0, False))


def training_batch(device, anchors, m, C, reps, loop_pairs, res):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(anchors, m, C, generator=g)
    p = torch.randn(anchors, m, C, generator=g)
    n = torch.randn(anchors, m, C, generator=g)
    x = torch.cat([a, a]).to(device)
    y = torch.cat([p, n]).to(device)

    def run(fn, xs, ys):
        def step():
            xr = xs.detach().requires_grad_()
            yr = ys.detach().requires_grad_()
            out = fn(xr, yr)
            out.sum().backward()
            return out

        return step

    t_pd = median_time(run(partdist.batch_local_dist, x, y), device, reps=reps * 10)
    t_vec = median_time(run(R.batch_local_dist_vectorized, x, y), device, reps=reps)

    # The per-pair loop: one Python DP per pair over the normalized distance matrix.
    def loop(xs, ys):
        return R.dmli_loop(R.normalize_dist(R.batch_euclidean_dist(xs, ys)))

    k = min(loop_pairs, x.shape[0])
    t_loop_k = median_time(run(loop, x[:k], y[:k]), device, reps=max(1, reps // 2), warmup=0)
    t_loop = t_loop_k * x.shape[0] / k

    # breakdown: the forward and backward kernels called directly (no autograd), the rest
    # of the fwd+bwd step is overhead (autograd graph, checks, the sum and its backward);
    # for comparison the plain forward (no gradient: no cells saved) and the backward op
    # that recomputes the dot products (batch_local_dist_backward)
    ops = torch.ops.partdist
    with torch.no_grad():
        fwd, bwd = train_kernels(x, y)
        t_fk = median_time(fwd, device, reps=reps * 10)
        t_bk = median_time(bwd, device, reps=reps * 10)
        t_fplain = median_time(lambda: ops.batch_local_dist(x, y, True, 0.0, -1.0, False), device, reps=reps * 10)
        gr = torch.ones(x.shape[0], dtype=x.dtype, device=device)
        t_brec = median_time(lambda: ops.batch_local_dist_backward(gr, x, y, True, 0.0, -1.0, False), device,
                             reps=reps * 10)

    # agreement check on the same inputs
    diff = (partdist.batch_local_dist(x, y) - R.batch_local_dist_vectorized(x, y)).abs().max().item()
    rows = [
        ["partdist.batch_local_dist", fmt_time(t_pd), "1.0x"],
        ["vectorized PyTorch (AlignedReID)", fmt_time(t_vec), f"{t_vec / t_pd:.1f}x"],
        [
            "Python loop (per pair)" + ("" if k == x.shape[0] else f", timed on {k} pairs, scaled"),
            fmt_time(t_loop),
            f"{t_loop / t_pd:.0f}x",
        ],
    ]
    print(f"\n(a) training batch, {x.shape[0]} aligned pairs, m=n={m}, C={C}, forward+backward [{device}]")
    print_table(rows, ["method", "median", "time / partdist"])
    print(f"breakdown of partdist's {fmt_time(t_pd)}: forward kernel {fmt_time(t_fk)}, backward kernel "
          f"{fmt_time(t_bk)} ({t_bk / t_fk:.2f}x the forward), overhead {fmt_time(max(0.0, t_pd - t_fk - t_bk))}")
    print(f"for comparison: plain forward (no gradient) {fmt_time(t_fplain)}, backward recomputing the dot "
          f"products {fmt_time(t_brec)} ({t_brec / t_fplain:.2f}x the plain forward)")
    print(f"max |partdist - vectorized| = {diff:.2e}")
    case = f"(a) training batch {x.shape[0]} pairs, m=n={m}, C={C}, fwd+bwd"
    res.add(case, device, "partdist.batch_local_dist", t_pd)
    res.add(case, device, "vectorized PyTorch", t_vec)
    res.add(case, device, "Python loop (scaled)", t_loop, note=f"timed on {k} pairs")
    res.add(case, device, "vectorized / partdist", t_vec / t_pd, unit="x")
    res.add(case, device, "max |partdist - vectorized|", diff, unit="")
    if (x.shape[0], m, C) == (256, 8, 128):  # the target's size (not --quick)
        res.measure(TARGET_TRAIN, t_vec / t_pd, device)
        res.measure(TARGET_TRAIN_TIME, t_pd, device)
        res.measure(TARGET_CPU_TRAIN, t_vec / t_pd, device)
    return t_pd, t_vec, t_loop


def small_batches(device, reps, res):
    """Per-call cost at tiny sizes, where the kernels are a few microseconds: the whole
    forward+backward step of batch_local_dist against its two kernels called directly."""
    rows = []
    for N, C in ((1, 8), (4, 128), (32, 128)):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(N, 8, C, generator=g).to(device)
        y = torch.randn(N, 8, C, generator=g).to(device)

        def step():
            xr, yr = x.detach().requires_grad_(), y.detach().requires_grad_()
            partdist.batch_local_dist(xr, yr).sum().backward()

        with torch.no_grad():
            fwd, bwd = train_kernels(x, y)
            t_fk = median_time(fwd, device, reps=reps)
            t_bk = median_time(bwd, device, reps=reps)
        t_step = median_time(step, device, reps=reps)
        rows.append([f"{N} pairs, C={C}", fmt_time(t_step), fmt_time(t_fk), fmt_time(t_bk),
                     fmt_time(max(0.0, t_step - t_fk - t_bk))])
        res.add(f"(a') small batch {N} pairs, m=n=8, C={C}, fwd+bwd", device, "partdist.batch_local_dist", t_step)
    print(f"\n(a') small batches, m=n=8, forward+backward [{device}]")
    print_table(rows, ["batch", "fwd+bwd step", "forward kernel", "backward kernel", "overhead"])


def all_pairs(device, M, N, m, C, reps, vec_chunk, res):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(M, m, C, generator=g).to(device)
    y = torch.randn(N, m, C, generator=g).to(device)
    x2, y2 = x.reshape(M * m, C), y.reshape(N * m, C)

    with torch.no_grad():
        fn_pd = lambda: partdist.local_dist(x, y)  # noqa: E731
        fn_gemm = lambda: torch.mm(x2, y2.t())  # noqa: E731
        fn_vec = lambda: R.local_dist_vectorized(x, y, chunk=vec_chunk)  # noqa: E731
        t_pd = median_time(fn_pd, device, reps=reps)
        t_gemm = median_time(fn_gemm, device, reps=reps)
        gemms = {"torch.mm": t_gemm}
        if torch.device(device).type == "cpu":  # numpy's BLAS (OpenBLAS in numpy's wheels)
            import numpy as np

            xn, yn = x2.numpy(), y2.numpy()
            reuse = np.empty((xn.shape[0], yn.shape[0]), dtype=xn.dtype)
            gemms["numpy matmul"] = median_time(lambda: np.matmul(xn, yn.T), device, reps=reps)
            gemms["numpy matmul, reused output"] = median_time(lambda: np.matmul(xn, yn.T, out=reuse), device,
                                                               reps=reps)
            del reuse
        t_vec = median_time(fn_vec, device, reps=max(1, reps // 2), max_seconds=60)
        mem_pd = peak_extra_memory(fn_pd, device)
        mem_gemm = peak_extra_memory(fn_gemm, device)
        mem_vec = peak_extra_memory(fn_vec, device)
        k = min(M, 50)
        diff = (partdist.local_dist(x[:k], y) - R.local_dist_vectorized(x[:k], y)).abs().max().item()

    out_bytes = M * N * x.element_size()
    best_name = min(gemms, key=gemms.get)
    t_best = gemms[best_name]
    rows = [["partdist.local_dist", fmt_time(t_pd), "1.0x", f"{t_pd / t_gemm:.2f}x", fmt_mem(mem_pd)]]
    for name, t in gemms.items():
        rows.append([f"bare stripe GEMM ({name})", fmt_time(t), f"{t / t_pd:.2f}x", f"{t / t_gemm:.2f}x",
                     fmt_mem(mem_gemm) if name == "torch.mm" else "-"])
    rows.append([
        f"vectorized PyTorch, {vec_chunk} gallery/chunk",
        fmt_time(t_vec),
        f"{t_vec / t_pd:.1f}x",
        f"{t_vec / t_gemm:.2f}x",
        fmt_mem(mem_vec),
    ])
    print(f"\n(b) all pairs {M} x {N}, m=n={m}, C={C}, forward [{device}]")
    print_table(rows, ["method", "median", "time / partdist", "time / torch.mm", "peak extra memory"])
    print(f"output [M, N] itself: {fmt_mem(out_bytes)}; max |partdist - vectorized| on {k} queries = {diff:.2e}")
    print(f"partdist / fastest GEMM ({best_name}): {t_pd / t_best:.2f}x")
    if (M, N, m, C) == (1000, 5000, 8, 128):
        res.measure(TARGET_CPU_ALLPAIRS, t_pd / t_best, device)
    case = f"(b) all pairs {M}x{N}, m=n={m}, C={C}, fwd"
    for method, t, mem in (("partdist.local_dist", t_pd, mem_pd), ("bare stripe GEMM", t_gemm, mem_gemm),
                           (f"vectorized PyTorch, {vec_chunk}/chunk", t_vec, mem_vec)):
        res.add(case, device, method, t)
        res.add(case, device, method + " peak extra memory", mem, unit="B")
    res.add(case, device, "partdist / GEMM", t_pd / t_gemm, unit="x")
    res.add(case, device, "partdist / fastest GEMM", t_pd / t_best, unit="x", note=best_name)
    res.add(case, device, "max |partdist - vectorized|", diff, unit="")
    return t_pd, t_gemm, t_vec


def variants(device, reps, quick, res):
    """Soft-DMLI and banded DMLI against the hard op, same inputs."""
    g = torch.Generator().manual_seed(2)
    N, M, G, m, C = (32, 40, 100, 8, 32) if quick else (256, 1000, 1000, 8, 128)
    x = torch.randn(N, m, C, generator=g).to(device)
    y = torch.randn(N, m, C, generator=g).to(device)
    q = torch.randn(M, m, C, generator=g).to(device)
    gal = torch.randn(G, m, C, generator=g).to(device)
    rows = []
    for name, kw in [("hard (gamma=0)", {}), ("soft, gamma=0.1", {"gamma": 0.1}), ("soft, gamma=1", {"gamma": 1.0}),
                     ("hard, band=2", {"band": 2.0}), ("unaligned", None)]:
        def step():
            xr, yr = x.detach().requires_grad_(), y.detach().requires_grad_()
            out = partdist.unaligned_dist(xr, yr) if kw is None else partdist.batch_local_dist(xr, yr, **kw)
            out.sum().backward()

        with torch.no_grad():
            allp = (lambda: partdist.unaligned_dist(q, gal, all_pairs=True)) if kw is None else (
                lambda: partdist.local_dist(q, gal, **kw))
            t_b = median_time(allp, device, reps=reps)
        t_a = median_time(step, device, reps=reps * 10)
        rows.append([name, fmt_time(t_a), fmt_time(t_b)])
        res.add(f"(c) variants, {N} pairs fwd+bwd", device, name, t_a)
        res.add(f"(c) variants, {M}x{G} fwd", device, name, t_b)
    print(f"\n(c) DP variants [{device}]: (a)-style training batch ({N} pairs, fwd+bwd) and all pairs {M} x {G} (fwd)")
    print_table(rows, ["variant", f"{N} pairs fwd+bwd", f"{M}x{G} fwd"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    add_device_arg(ap)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", action="store_true", help="also time soft-DMLI, band and unaligned")
    ap.add_argument("--only", choices=["a", "b"], help="run only (a) the training batch or (b) all pairs")
    args = ap.parse_args(argv)

    devices = resolve_devices(ap, args.device)
    res = Results(args.json, "dmli")
    res.target(TARGET_TRAIN, 30.0, ">=", unit="x")
    res.target(TARGET_TRAIN_TIME, 0.15e-3, "<=", unit="s")
    res.target(TARGET_TRAIN_VS_CPU, 1.0, ">", unit="x")
    train_time = {}  # device type -> partdist's training batch (a) at the target's size
    if "cpu" in devices and torch.get_num_threads() == 2:  # the CPU targets' setting
        res.target(TARGET_CPU_TRAIN, 30.0, ">=", unit="x", device="cpu")
        res.target(TARGET_CPU_ALLPAIRS, 1.0, "<=", unit="x", device="cpu")
    for device in devices:
        print(f"== {env_line(device)}")
        if torch.device(device).type == "cpu" and hasattr(torch.ops.partdist, "_cpu_isa"):
            print(f"CPU kernels' instruction set: {torch.ops.partdist._cpu_isa()}")
        if args.only != "b":
            if args.quick:
                training_batch(device, anchors=16, m=8, C=32, reps=2, loop_pairs=4, res=res)
            else:
                t_pd = training_batch(device, anchors=128, m=8, C=128, reps=args.reps, loop_pairs=32, res=res)[0]
                train_time[torch.device(device).type] = t_pd
            small_batches(device, reps=20 if args.quick else 40 * args.reps, res=res)
        if args.only != "a":
            if args.quick:
                all_pairs(device, M=40, N=100, m=8, C=32, reps=2, vec_chunk=50, res=res)
            else:
                all_pairs(device, M=1000, N=5000, m=8, C=128, reps=args.reps, vec_chunk=1000, res=res)
        if args.variants:
            variants(device, max(1, args.reps // 2), args.quick, res)
    if "cuda" in train_time and "cpu" in train_time:
        ratio = train_time["cpu"] / train_time["cuda"]
        print(f"training batch (a): partdist on the CPU ({torch.get_num_threads()} threads) "
              f"{fmt_time(train_time['cpu'])}, on the GPU {fmt_time(train_time['cuda'])}: {ratio:.2f}x")
        res.measure(TARGET_TRAIN_VS_CPU, ratio, "cuda")
    res.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
