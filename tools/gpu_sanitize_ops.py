"""Launch every partdist CUDA kernel once, forward and backward, at small sizes.

Meant to run under ``compute-sanitizer`` (``tools/gpu_check.py --stage sanitize`` runs it once per
tool: memcheck, racecheck, initcheck, synccheck), where a pytest run would be slow. Each case
runs on ``--device`` and on the CPU with the same inputs and compares values and gradients, so
the run is also a quick check that the GPU computes what the CPU computes.

    python3 tools/gpu_sanitize_ops.py --device cuda [--json PATH] [--only NAME,...]
    python3 tools/gpu_sanitize_ops.py --device cpu   # CPU against itself: exercises the script

Exit status 0 when every case ran and matched, 1 otherwise; the last line is
``SANITIZE-OPS: <passed>/<total> cases passed``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _grad_case(fn, inputs, grad_seed=99):
    """``fn(*inputs)`` and the gradients of ``sum(out * w)`` (random ``w``) to the float inputs."""

    def run(device, dtype):
        xs = [t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in inputs]
        leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in xs]
        out = fn(*leaves)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        first = outs[0]
        w = torch.rand(first.shape, generator=_gen(grad_seed), dtype=torch.float64).to(device=device, dtype=first.dtype)
        need = [t for t in leaves if t.is_floating_point()]
        grads = torch.autograd.grad((first * w).sum(), need, allow_unused=True)
        return list(outs) + [g if g is not None else torch.zeros(()) for g in grads]

    return run


def _fused(fn):
    """fn with the opt-in fused local_dist path (PARTDIST_FUSED_EPILOGUE=1, read at every call)."""

    def run(*args):
        old = os.environ.get("PARTDIST_FUSED_EPILOGUE")
        os.environ["PARTDIST_FUSED_EPILOGUE"] = "1"
        try:
            return fn(*args)
        finally:
            if old is None:
                del os.environ["PARTDIST_FUSED_EPILOGUE"]
            else:
                os.environ["PARTDIST_FUSED_EPILOGUE"] = old

    return run


def _fwd_case(fn, inputs):
    def run(device, dtype):
        xs = [t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in inputs]
        with torch.no_grad():
            out = fn(*xs)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    return run


def _cells_pair(x, y, g, normalize=True, gamma=0.0, band=-1.0):
    """The training pair of batch_local_dist called directly: its outputs and the gradients
    for the incoming gradient g[::2] (strided)."""
    ops = torch.ops.partdist
    out, cells = ops._batch_local_dist_fwd_cells(x, y, normalize, gamma, band)
    return [out, cells, *ops._batch_local_dist_backward_cells(g[::2], x, y, cells, normalize, gamma, band)]


def cases():
    """(name, runner, dtypes) for every CUDA op and the main variants of each."""
    import partdist
    from partdist.eval import re_ranking_features

    N, m, n, C = 6, 8, 7, 16
    x, y = _rand(N, m, C, seed=1), _rand(N, n, C, seed=2)
    qx, gy = _rand(5, m, C, seed=3), _rand(9, m, C, seed=4)
    dist = torch.rand(N, m, n, generator=_gen(5), dtype=torch.float64)
    big_x, big_y = _rand(2, 130, 8, seed=6), _rand(2, 131, 8, seed=7)  # stripes > 128 (no DP)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1])
    dmat = torch.cdist(_rand(10, 4, seed=8), _rand(10, 4, seed=9))
    f, g = _rand(2, 3, 6, 5, seed=10), _rand(2, 3, 6, 5, seed=11)
    px, py = _rand(4, 3, 12, seed=12), _rand(5, 3, 12, seed=13)
    vx, vy = torch.rand(4, 3, generator=_gen(14)), torch.rand(5, 3, generator=_gen(15))
    bvx, bvy = vx > 0.3, vy > 0.3
    dx, dy = _rand(3, 6, 8, seed=16), _rand(4, 5, 8, seed=17)
    gpair = _rand(N, seed=20)
    g2pair = _rand(2 * N, seed=21)
    g2pair[::4] = 0  # pairs 0, 2, 4 get no gradient
    both = (torch.float32, torch.float64)
    f32 = (torch.float32,)
    # the ops' float16 / bfloat16 paths (compute in float32, cast back) under the sanitizers too
    every = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    return [
        ("local_dist_matrix", _grad_case(partdist.local_dist_matrix, [x, y]), every),
        ("local_dist_matrix, 130x131 stripes", _grad_case(partdist.local_dist_matrix, [big_x, big_y]), f32),
        ("dmli", _grad_case(partdist.dmli, [dist]), every),
        ("dmli, gamma=0.1 (soft)", _grad_case(lambda d: partdist.dmli(d, gamma=0.1), [dist]), both),
        ("dmli, band=2", _grad_case(lambda d: partdist.dmli(d, band=2.0), [dist]), both),
        ("dmli_path", _fwd_case(partdist.dmli_path, [dist]), both),
        ("batch_local_dist", _grad_case(partdist.batch_local_dist, [x, y]), every),
        ("batch_local_dist, gamma=0.1", _grad_case(lambda a, b: partdist.batch_local_dist(a, b, gamma=0.1), [x, y]), f32),
        ("batch_local_dist, band=2", _grad_case(lambda a, b: partdist.batch_local_dist(a, b, band=2.0), [x, y]), f32),
        ("batch_local_dist, normalize=False",
         _grad_case(lambda a, b: partdist.batch_local_dist(a, b, normalize=False), [x, y]), f32),
        # batch_local_dist's autograd runs the cells pair below on CUDA at these shapes; the ops
        # of the GEMM path (larger m * n) called directly
        ("batch_local_dist, GEMM path ops",
         _fwd_case(lambda a, b, g: [torch.ops.partdist.batch_local_dist(a, b, True, 0.0, -1.0, False),
                                    *torch.ops.partdist.batch_local_dist_backward(g, a, b, True, 0.0, -1.0, False)],
                   [x, y, gpair]), both),
        ("_batch_local_dist_fwd_cells, _backward_cells (warp kernels), strided grad with zeros",
         _fwd_case(_cells_pair, [x, y, g2pair]), both),
        ("_batch_local_dist_fwd_cells, gamma=0.1, band=2, normalize=False",
         _fwd_case(lambda a, b, g: _cells_pair(a, b, g, False, 0.1, 2.0), [x, y, g2pair]), f32),
        ("local_dist", _grad_case(partdist.local_dist, [qx, gy]), every),
        ("local_dist, chunk_size=4", _grad_case(lambda a, b: partdist.local_dist(a, b, chunk_size=4), [qx, gy]), f32),
        ("local_dist, gamma=0.1", _grad_case(lambda a, b: partdist.local_dist(a, b, gamma=0.1), [qx, gy]), f32),
        # the reduced-precision mode: float32 features rounded once, half GEMMs forward and backward
        *((f"local_dist, gemm_dtype={str(dt)[6:]}, chunk_size=4",
           _grad_case(lambda a, b, dt=dt: partdist.local_dist(a, b, chunk_size=4, gemm_dtype=dt), [qx, gy]), f32)
          for dt in (torch.float16, torch.bfloat16)),
        ("unaligned_dist", _grad_case(partdist.unaligned_dist, [_rand(N, m, C, seed=18), _rand(N, m, C, seed=19)]), f32),
        ("unaligned_dist, all pairs",
         _grad_case(lambda a, b: partdist.unaligned_dist(a, b, all_pairs=True), [qx, gy]), f32),
        # the DP in the GEMM's epilogue: several blocks, partial tiles (13 x 70 images of 6 x 5
        # stripes: 10 x 12 images per tile), C not a multiple of the channel chunk
        ("local_dist, PARTDIST_FUSED_EPILOGUE=1",
         _fwd_case(_fused(partdist.local_dist), [_rand(13, 6, 19, seed=22), _rand(70, 5, 19, seed=23)]), both),
        ("local_dist_topk, k=3", _fwd_case(lambda a, b: partdist.local_dist_topk(a, b, 3), [qx, gy]), f32),
        ("hard_example_mining",
         _grad_case(lambda d, lab: partdist.hard_example_mining(d, lab)[:2], [dmat, labels]), both),
        ("triplet_hard_loss", _grad_case(lambda d, lab: partdist.triplet_hard_loss(d, lab, 0.3), [dmat, labels]), every),
        ("triplet_hard_loss, soft margin",
         _grad_case(lambda d, lab: partdist.triplet_hard_loss(d, lab, None), [dmat, labels]), f32),
        ("neighborhood_diff", _grad_case(lambda a, b: partdist.neighborhood_diff(a, b, 5), [f, g]), every),
        ("neighborhood_diff, k=3", _grad_case(lambda a, b: partdist.neighborhood_diff(a, b, 3), [f, g]), f32),
        ("cross_neighborhood_diff", _grad_case(lambda a, b: partdist.cross_neighborhood_diff(a, b, 5), [f, g]), f32),
        ("part_dist, float visibilities", _grad_case(partdist.part_dist, [px, py, vx, vy]), every),
        ("part_dist, bool visibilities", _fwd_case(partdist.part_dist, [px, py, bvx, bvy]), f32),
        ("part_dist, gemm_dtype=bfloat16",
         _grad_case(lambda a, b, c, d: partdist.part_dist(a, b, c, d, gemm_dtype=torch.bfloat16), [px, py, vx, vy]), f32),
        ("dsr_dist", _grad_case(lambda a, b: partdist.dsr_dist(a, b, 0.1, 50, 1e-5), [dx, dy]), both),
        ("re_ranking_features (local)",
         _fwd_case(lambda a, b: re_ranking_features(a, b, k1=4, k2=2, progress=False), [qx, gy]), f32),
    ]


def _compare(got, want, dtype):
    tol = {torch.float32: dict(rtol=1e-3, atol=1e-4), torch.float64: dict(rtol=1e-7, atol=1e-9),
           torch.float16: dict(rtol=1e-2, atol=1e-2), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}[dtype]
    if len(got) != len(want):
        return f"{len(got)} outputs on the device, {len(want)} on the CPU"
    worst = 0.0
    for i, (a, b) in enumerate(zip(got, want)):
        a = a.detach().cpu()
        b = b.detach().cpu()
        if a.shape != b.shape:
            return f"output {i}: shape {tuple(a.shape)} on the device, {tuple(b.shape)} on the CPU"
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return f"output {i}: integer outputs differ"
            continue
        try:
            torch.testing.assert_close(a, b, equal_nan=True, **tol)
        except AssertionError as e:
            return f"output {i}: {str(e).splitlines()[0]}"
        finite = torch.isfinite(a) & torch.isfinite(b)
        if finite.any():
            worst = max(worst, (a[finite] - b[finite]).abs().max().item())
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="write per-case results here")
    ap.add_argument("--only", help="comma-separated substrings of case names to run")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_sanitize_ops: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    results = []
    selected = [c for c in cases() if not args.only or any(s.strip() in c[0] for s in args.only.split(","))]
    for name, run, dtypes in selected:
        for dtype in dtypes:
            label = f"{name} [{str(dtype).replace('torch.', '')}]"
            t0 = time.perf_counter()
            rec = {"case": label, "ok": False}
            try:
                got = run(args.device, dtype)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                want = run("cpu", dtype)
                cmp = _compare(got, want, dtype)
                if isinstance(cmp, str):
                    rec["error"] = "mismatch against the CPU: " + cmp
                else:
                    rec.update(ok=True, max_abs_diff=cmp)
            except Exception as e:  # noqa: BLE001  (every failure is reported, the run goes on)
                rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                rec["traceback"] = traceback.format_exc(limit=4)
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            results.append(rec)
            print(("ok   " if rec["ok"] else "FAIL ") + label + ("" if rec["ok"] else ": " + rec["error"]), flush=True)
    passed = sum(r["ok"] for r in results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": args.device, "torch": torch.__version__, "cases": results}, fh, indent=1)
    print(f"SANITIZE-OPS: {passed}/{len(results)} cases passed", flush=True)
    return 0 if passed == len(results) and results else 1


if __name__ == "__main__":
    sys.exit(main())
