"""Benchmark of partdist.neighborhood_diff (IDLA cross-input neighborhood differences).

Compares, on the same inputs and in one run, forward and forward+backward of

* ``partdist``  the compiled kernel (``partdist.neighborhood_diff``),
* ``expand``    f expanded over each k x k block minus ``Tensor.unfold`` views of the
                zero-padded g, then permuted into the tiled layout,
* ``unfold``    zero-pad g + ``F.unfold`` (im2col), subtract, permute,
* ``slice``     zero-pad g + stack of the k*k shifted slices, subtract, permute,

(``partdist.reference``), at IDLA's sizes (B=64, C=25, H=37, W=12, k=5) and a larger map,
on CPU and on CUDA when present. Variants are timed round-robin (one call of each in
turn, repeated) so that they see the same machine load; medians are reported, with
the ratio ``best PyTorch median / partdist median``.

Peak memory of one forward+backward (``benchmarks/common.py: peak_extra_memory``), with
the inputs and the incoming gradient already allocated:

* CPU: peak resident set size during the call minus the resident set just before it
  (Linux: the peak ``VmHWM`` is reset by writing 5 to ``/proc/self/clear_refs``);
  tracemalloc cannot see torch's allocations. Large tensors (> 32 MiB here) are
  mmap'ed and unmapped when freed, so they are counted exactly; small ones (e.g. the
  two [B, C, H, W] input gradients, 2.8 MiB each at IDLA's size) may reuse heap pages
  that are already resident and then do not show: page-level, a lower bound.
* CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocation before the call.

``peak - output`` is the memory beyond the output tensor itself: what the target
"extra memory no more than the output" is about.

Usage:  python benchmarks/bench_neighborhood.py [--device cpu|cuda|all ...] [--repeats N] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import (  # benchmarks/common.py
    Results,
    add_device_arg,
    env_line,
    peak_extra_memory,
    print_table,
    resolve_devices,
)

import partdist
from partdist import reference as R

VARIANTS = {
    "partdist": partdist.neighborhood_diff,
    "expand": R.neighborhood_diff_expand,
    "unfold": R.neighborhood_diff_unfold,
    "slice": R.neighborhood_diff_slice,
}

SIZES = {
    "idla": (64, 25, 37, 12, 5),  # IDLA: conv2 maps of a 160x60 input, 5x5 neighborhoods
    "large": (16, 32, 64, 32, 5),  # a larger map
    "tiny": (4, 5, 9, 6, 3),  # --quick (smoke test)
}


def make_inputs(size, device, dtype=torch.float32, seed=0):
    B, C, H, W, k = size
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(B, C, H, W, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    g = torch.randn(B, C, H, W, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    go = torch.randn(B, C, H * k, W * k, generator=gen, dtype=dtype).to(device)
    return f, g, go, k


from common import sync  # noqa: E402


def run_fwd(fn, f, g, go, k):
    return fn(f, g, k)


def run_fwd_bwd(fn, f, g, go, k):
    out = fn(f, g, k)
    return torch.autograd.grad(out, (f, g), go)


def time_round_robin(fns, args, device, repeats):
    times = {name: [] for name in fns}
    for _ in range(2 if device == "cuda" else 1):  # warm-up (CUDA: lazy loading, allocator)
        for fn in fns.values():
            fn(*args)
    sync(device)
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            res = fn(*args)
            sync(device)
            times[name].append(time.perf_counter() - t0)
            del res
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def check_values(f, g, go, k):
    ref = R.neighborhood_diff_loop(f[:2, :3].detach(), g[:2, :3].detach(), k)
    for name, fn in VARIANTS.items():
        out = fn(f[:2, :3].detach(), g[:2, :3].detach(), k)
        if not torch.equal(out, ref):
            raise SystemExit(f"{name} differs from the loop reference")
    grads = {name: run_fwd_bwd(fn, f, g, go, k) for name, fn in VARIANTS.items()}
    base = grads["partdist"]
    for _name, gr in grads.items():
        for a, b in zip(base, gr):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------- main
def fmt_mb(b):
    return "-" if b is None else f"{b / 2**20:.1f}"


def bench(device, size_name, repeats, res):
    size = SIZES[size_name]
    f, g, go, k = make_inputs(size, device)
    check_values(f, g, go, k)
    out_bytes = go.numel() * go.element_size()
    fwd = time_round_robin({n: (lambda fn=fn: run_fwd(fn, f, g, go, k)) for n, fn in VARIANTS.items()}, (), device, repeats)
    fb = time_round_robin(
        {n: (lambda fn=fn: run_fwd_bwd(fn, f, g, go, k)) for n, fn in VARIANTS.items()}, (), device, repeats
    )
    peaks = {n: peak_extra_memory(lambda fn=fn: run_fwd_bwd(fn, f, g, go, k), device) for n, fn in VARIANTS.items()}
    B, C, H, W, k = size
    print(f"\n{device} {size_name}: B={B} C={C} H={H} W={W} k={k}, float32, output {fmt_mb(out_bytes)} MiB; "
          + env_line(device))
    rows = []
    for n in VARIANTS:
        extra = None if peaks[n] is None else peaks[n] - out_bytes
        rows.append([n, f"{fwd[n]:.2f}", f"{fb[n]:.2f}", f"{fb[n] / fb['partdist']:.2f}x", fmt_mb(peaks[n]),
                     fmt_mb(extra)])
    print_table(rows, ["variant", "fwd ms", "fwd+bwd ms", "fwd+bwd / partdist", "peak MiB", "peak - output MiB"])
    case = f"{size_name}: B={B} C={C} H={H} W={W} k={k}"
    for n in VARIANTS:
        res.add(case + ", fwd", device, n, fwd[n] / 1e3)
        res.add(case + ", fwd+bwd", device, n, fb[n] / 1e3)
        res.add(case + ", fwd+bwd peak extra memory", device, n, peaks[n], unit="B")
    if device == "cpu":
        print("(CPU peak: resident pages (VmHWM), resolution ~1 MiB; a value slightly below the output "
              "size means no memory beyond the output; small tensors reusing resident heap pages do not show)")
    best = min((n for n in VARIANTS if n != "partdist"), key=lambda n: fb[n])
    best_f = min((n for n in VARIANTS if n != "partdist"), key=lambda n: fwd[n])
    print(f"speed-up over the best PyTorch version: fwd+bwd {fb[best] / fb['partdist']:.2f}x (vs {best}), "
          f"fwd {fwd[best_f] / fwd['partdist']:.2f}x (vs {best_f})")
    res.add(case + ", fwd+bwd", device, f"best PyTorch ({best}) / partdist", fb[best] / fb["partdist"], unit="x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(ap)
    ap.add_argument("--quick", action="store_true", help="a tiny map and 3 repeats (smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per variant (default 7 CPU, 50 CUDA)")
    ap.add_argument("--sizes", default="idla,large", help="comma-separated of: " + ",".join(SIZES))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = resolve_devices(ap, args.device)
    bad = [s for s in args.sizes.split(",") if s not in SIZES]
    if bad:
        ap.error(f"--sizes: unknown size(s) {bad}; use some of {', '.join(SIZES)}")
    if args.quick:
        args.sizes, args.repeats = "tiny", args.repeats or 3
    res = Results(args.json, "neighborhood")
    print(f"partdist {partdist.__version__}; times: medians of {args.repeats or '7 (CPU) / 50 (CUDA)'} "
          "round-robin calls; float32")
    for device in devices:
        repeats = args.repeats or (7 if device == "cpu" else 50)
        for size_name in args.sizes.split(","):
            bench(device, size_name, repeats, res)
    res.finish()


if __name__ == "__main__":
    main()
