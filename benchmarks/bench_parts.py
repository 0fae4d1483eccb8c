"""Benchmark of the part distances: part_dist and dsr_dist.

1. ``part_dist`` all pairs, retrieval (forward): x ``[M, P, C]`` queries against y
   ``[N, P, C]`` gallery with random bool visibilities, float32:

   * ``partdist``: :func:`partdist.part_dist` (per-part GEMM tile by tile, fused
     visibility-weighted reduction; memory ``O(M N + tile)``);
   * ``vectorized``: :func:`partdist.reference.part_dist_vectorized`, the PyTorch
     practice (one GEMM per part, ``[P, chunk, N]`` distances, weighted sum), 100
     queries per chunk.

2. ``part_dist`` training step (forward + backward to features and float visibilities),
   a batch against itself shifted (no zero distances, so the reference's gradient is
   finite).

3. ``dsr_dist`` all pairs (forward): grid features x ``[M, Lq, C]`` against y ``[N, Lg, C]``,
   same FISTA (beta, max_iter, tol) in both:

   * ``partdist``: :func:`partdist.dsr_dist` (Gram matrices by GEMM, FISTA per query cell
     in the kernel);
   * ``vectorized``: :func:`partdist.reference.dsr_dist_vectorized` (batched FISTA over
     all pairs and cells with batched matmuls, per-cell stopping masks), 8 queries per chunk.

Every contender runs once per repetition on the same inputs; medians are printed with the
ratio ``contender / partdist``. CUDA rows are added when a GPU is present.

    python benchmarks/bench_parts.py [--quick] [--device cpu|cuda|all ...] [--json PATH]
"""

from __future__ import annotations

import argparse

import torch
from common import Results, add_device_arg, env_line, fmt_time, median_time, print_table, resolve_devices  # noqa: E402

import partdist
from partdist import reference as R


def _compare(res, case, device, ours, ref_name, ref, err, reps, max_seconds, relative=False):
    """Median times of ``ours`` and of the reference ``ref``, recorded in ``res`` with their ratio
    and the largest difference ``err`` (relative or absolute); the two table rows."""
    t_ours = median_time(ours, device, reps=reps, max_seconds=max_seconds)
    t_ref = median_time(ref, device, reps=reps, max_seconds=max_seconds)
    res.add(case, device, "partdist", t_ours)
    res.add(case, device, ref_name, t_ref)
    res.add(case, device, "vectorized / partdist", t_ref / t_ours, unit="x")
    res.add(case, device, "max diff", err, unit="", note="relative" if relative else "")
    return [
        [case, "partdist", fmt_time(t_ours), "1.00", f"{err:.1e}" + (" rel" if relative else "")],
        ["", ref_name, fmt_time(t_ref), f"{t_ref / t_ours:.2f}", ""],
    ]


def inputs_parts(M, N, P, C, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, P, C, generator=g).to(device)
    y = torch.randn(N, P, C, generator=g).to(device)
    vx = (torch.rand(M, P, generator=g) > 0.3).to(device)
    vy = (torch.rand(N, P, generator=g) > 0.3).to(device)
    return x, y, vx, vy


def bench_part_retrieval(device, quick, res):
    M, N, P, C = (100, 1000, 6, 256) if quick else (500, 5000, 6, 256)
    if device == "cuda":
        M, N = (1000, 10000) if not quick else (200, 2000)
    x, y, vx, vy = inputs_parts(M, N, P, C, device)
    ours = lambda: partdist.part_dist(x, y, vx, vy)  # noqa: E731
    ref = lambda: R.part_dist_vectorized(x, y, vx, vy, chunk_size=100)  # noqa: E731
    a, b = ours(), ref()
    err = (a - b).abs().nan_to_num(0.0, posinf=0.0).max().item()
    return _compare(res, f"part_dist fwd {M}x{N}, P={P}, C={C}", device, ours, "vectorized (100 queries/chunk)", ref,
                    err, reps=3, max_seconds=20)


def bench_part_train(device, quick, res):
    B, P, C = (64, 6, 256) if quick else (128, 6, 256)
    x, y, _, _ = inputs_parts(B, B, P, C, device, seed=1)
    g = torch.Generator().manual_seed(2)
    vx = torch.rand(B, P, generator=g).to(device)
    vy = torch.rand(B, P, generator=g).to(device)

    def step(fn):
        def run():
            args = [t.detach().requires_grad_() for t in (x, y, vx, vy)]
            fn(*args).sum().backward()
            return args

        return run

    ours = step(lambda a, b, c, d: partdist.part_dist(a, b, c, d))
    ref = step(lambda a, b, c, d: R.part_dist_vectorized(a, b, c, d))
    ga, gb = ours(), ref()
    err = max((u.grad - v.grad).abs().max().item() for u, v in zip(ga, gb))
    return _compare(res, f"part_dist fwd+bwd {B}x{B}, P={P}, C={C}", device, ours, "vectorized (autograd)", ref, err,
                    reps=10, max_seconds=10)


def bench_dsr(device, quick, res):
    M, N, Lq, Lg, C = (8, 32, 24, 24, 128) if quick else (16, 64, 24, 24, 128)
    if device == "cuda":
        M, N = (64, 512) if not quick else (16, 128)
    beta, it, tol = 0.1, 100, 1e-4
    g = torch.Generator().manual_seed(3)
    x = torch.randn(M, Lq, C, generator=g).to(device)
    y = torch.randn(N, Lg, C, generator=g).to(device)
    ours = lambda: partdist.dsr_dist(x, y, beta, it, tol)  # noqa: E731
    ref = lambda: R.dsr_dist_vectorized(x, y, beta, it, tol, chunk_size=8)  # noqa: E731
    a, b = ours(), ref()
    err = ((a - b).abs() / b.abs().clamp_min(1e-6)).max().item()
    return _compare(res, f"dsr_dist fwd {M}x{N}, Lq=Lg={Lq}, C={C}, {it} it", device, ours, "vectorized batched FISTA",
                    ref, err, reps=3, max_seconds=20, relative=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    add_device_arg(ap)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = resolve_devices(ap, args.device)
    res = Results(args.json, "parts")
    for device in devices:
        print(f"\n## {device}: {env_line(device)}\n")
        rows = []
        with torch.no_grad():
            rows += bench_part_retrieval(device, args.quick, res)
        rows += bench_part_train(device, args.quick, res)
        with torch.no_grad():
            rows += bench_dsr(device, args.quick, res)
        print_table(rows, ["case", "contender", "median", "contender / partdist", "max diff"])
    res.finish()


if __name__ == "__main__":
    main()
