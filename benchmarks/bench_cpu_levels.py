"""The CPU kernels at every instruction-set level this CPU runs (docs/speed.md), one thread,
CPU time (the least disturbed figure on a shared machine):

(1) local_dist M x N (default 300 x 1500), m = n = 8, C = 128, unit stripes: float32 features,
    bfloat16 features and float32 features with gemm_dtype=torch.bfloat16 (the avx512bf16
    level's kernel), beside numpy's BLAS GEMM of the float32 stripes alone (1 thread);
(2) the training kernels of batch_local_dist (_batch_local_dist_fwd_cells and
    _batch_local_dist_backward_cells), 256 pairs, m = n = 8, per call, at channel counts that the
    vector widths (8, 16) divide and do not divide.

Best of --reps runs (the minimum: these are CPU times of deterministic work).

    python benchmarks/bench_cpu_levels.py
    python benchmarks/bench_cpu_levels.py --quick
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS at 1 thread, set before it loads
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import print_table  # noqa: E402

import partdist  # noqa: E402

LEVELS = ["generic", "avx2", "avx512", "avx512bf16"]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def best_cpu_time(fn, reps, calls=1):
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t) / calls)
    return best


def runnable():
    ops = torch.ops.partdist
    prev, out = ops._cpu_isa(""), []
    for lv in LEVELS:
        try:
            ops._cpu_isa(lv)
            out.append(lv)
        except RuntimeError:
            pass
    ops._cpu_isa(prev)
    return out, prev


def unit(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 8, c, generator=g), dim=2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke run)")
    ap.add_argument("--M", type=int, default=300)
    ap.add_argument("--N", type=int, default=1500)
    ap.add_argument("--channels", default="8,12,100,128", help="C of the training kernels (2)")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)
    if a.quick:
        a.M, a.N, a.reps, a.channels = 20, 60, 2, "12,16"
    torch.set_num_threads(1)
    ops = torch.ops.partdist
    levels, default = runnable()
    print(f"{cpu_name()}; torch {torch.__version__}; 1 thread, CPU time, best of {a.reps}; "
          f"levels this CPU runs: {', '.join(levels)} (default {default})")

    x, y = unit(a.M, 128, 1), unit(a.N, 128, 2)
    xb, yb = x.bfloat16(), y.bfloat16()
    xs, ys = x.reshape(-1, 128).numpy(), np.ascontiguousarray(y.reshape(-1, 128).numpy().T)
    out = np.empty((xs.shape[0], ys.shape[1]), np.float32)
    t_gemm = best_cpu_time(lambda: np.matmul(xs, ys, out=out), a.reps)
    rows = []
    try:
        for lv in levels:
            ops._cpu_isa(lv)
            cells = [best_cpu_time(f, a.reps) for f in (
                lambda: partdist.local_dist(x, y),
                lambda: partdist.local_dist(xb, yb),
                lambda: partdist.local_dist(x, y, gemm_dtype=torch.bfloat16))]
            rows.append([lv] + [f"{t * 1e3:.1f} ms ({t / t_gemm:.2f}x)" for t in cells])
    finally:
        ops._cpu_isa(default)
    print(f"\n(1) local_dist {a.M} x {a.N}, m = n = 8, C = 128; numpy's BLAS GEMM of the float32 stripes "
          f"alone: {t_gemm * 1e3:.1f} ms (the ratios are to it)")
    print_table(rows, ["level", "float32 features", "bfloat16 features", "gemm_dtype=bfloat16"])

    rows = []
    try:
        for C in [int(c) for c in a.channels.split(",")]:
            g = torch.Generator().manual_seed(C)
            px, py = torch.randn(256, 8, C, generator=g), torch.randn(256, 8, C, generator=g)
            gr = torch.ones(256)
            cells = ops._batch_local_dist_fwd_cells(px, py, True, 0.0, -1.0)[1]
            for lv in levels:
                ops._cpu_isa(lv)
                f = best_cpu_time(lambda: ops._batch_local_dist_fwd_cells(px, py, True, 0.0, -1.0), a.reps, 100)
                b = best_cpu_time(
                    lambda: ops._batch_local_dist_backward_cells(gr, px, py, cells, True, 0.0, -1.0), a.reps, 100)
                rows.append([C, lv, f"{f * 1e6:.1f} us", f"{b * 1e6:.1f} us"])
    finally:
        ops._cpu_isa(default)
    print("\n(2) training kernels, 256 pairs, m = n = 8, per call")
    print_table(rows, ["C", "level", "forward", "backward"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
