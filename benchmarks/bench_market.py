"""Market-1501-scale evaluation benchmark: local query x gallery distances and
k-reciprocal re-ranking with local distances, on random unit-norm stripe features of
Market-1501's sizes (3,368 queries x 15,913 gallery, H = 8 stripes).

(a) local q x g distances, C = 128 (a trained local branch) and C = 2048 (raw stripes):
    partdist.local_dist (dense [Q, G] output), partdist.local_dist_topk (k = 100, no
    dense output), the bare stripe GEMM alone (x . y^T of all stripes, tile by tile into
    a reused buffer: the floor for any GEMM-based method), and the vectorized practice of
    public code (euclidean GEMM + normalize + the cell loop over 200 x 200-pair chunks).
    The vectorized chunks are timed on the first --ref-queries queries and scaled to Q
    (its cost is linear in the queries); the table says so.
(b) re-ranking with local distances (k1=20, k2=6, lambda=0.3): partdist
    (eval.re_ranking_features: distances streamed, top-k neighbour lists, sparse
    encodings) at full size, and the usual dense implementation
    (partdist.reference.re_ranking_dense, Zhong et al.'s code) on the dense local
    distances at Market proportions, scaled down: each size runs in a subprocess whose
    peak resident memory is reported; sizes whose predicted peak exceeds --dense-budget-gb
    are skipped, so the largest size shown is the largest that fits the budget.

(c) CUDA (and --quick): float32 features with the reduced-precision mode (gemm_dtype=float16 /
    bfloat16: rounded once, half GEMMs on tensor cores; time and largest difference from the
    float32 result), and the tile size: local_dist's default CUDA tiles for float32 features (a
    GEMM output of half the GPU's L2, so that the DP kernel reads the cells from L2) against
    tiles of 256 MiB (the budget for float16 / bfloat16 operands, and the float32 one on GPUs
    with under 16 MiB of L2) and of 1/4 of L2 (chunk_size): the measurement that checks the
    default tile budget; and the opt-in fused path (PARTDIST_FUSED_EPILOGUE=1: one kernel, the
    DP in the epilogue of its own GEMM tile), the measurement that decides whether it should
    be the default.

Each figure is one run (these are long; on CUDA after one untimed warm-up run); time and peak
extra memory come from the same run (CPU memory: page-level resident set, see
benchmarks/common.py). The usual dense re-ranking runs on the CPU only (numpy), so it is timed
in the CPU run.

GPU targets (checked on --device cuda, printed met / missed, written with --json): local q x g at
C = 128 under 0.25 s and within 1.05x of the bare stripe GEMM alone, with float16 / bfloat16
features in at most 8 ms each; local re-ranking at Market-1501 size under 5 s. CPU target (a
--device cpu run at 2 threads): local q x g at C = 128 within 1.1x of the faster of the two bare
GEMMs (torch.mm and numpy's BLAS, the same tiles).

    python benchmarks/bench_market.py --device cuda --device cpu --cpu-C 128 --json market.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Results, add_device_arg, env_line, fmt_mem, fmt_time, print_table, resolve_devices, time_and_peak  # noqa: E402

import partdist  # noqa: E402
import partdist.reference as R  # noqa: E402
from partdist.eval import re_ranking_features  # noqa: E402

Q_MARKET, G_MARKET = 3368, 15913
TARGET_QG_TIME = "Market local q x g, C=128: partdist.local_dist time"
TARGET_QG_GEMM = "Market local q x g, C=128: partdist.local_dist / bare stripe GEMM"
TARGET_RERANK = "Market local re-ranking (re_ranking_features, distances included)"
TARGET_QG_HALF = "Market local q x g, C=128, float16 / bfloat16 features: partdist.local_dist time"
TARGET_CPU_QG_GEMM = "CPU 2 threads: Market local q x g, C=128: partdist.local_dist / fastest bare stripe GEMM"


def unit_stripes(n, h, c, seed, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, c, generator=g)
    return torch.nn.functional.normalize(x, dim=2).to(device=device, dtype=dtype)


def bare_gemm(x, y, rows):
    """All stripe dot products x . y^T, ``rows`` queries at a time into one reused buffer."""
    Q, h, C = x.shape
    x2, y2t = x.reshape(Q * h, C), y.reshape(-1, C).t()
    buf = x.new_empty((rows * h, y2t.shape[1]))

    def fn():
        for s in range(0, Q, rows):
            a = x2[s * h : min(s + rows, Q) * h]
            torch.mm(a, y2t, out=buf[: a.shape[0]])
        return None

    return fn


def bare_gemm_numpy(x, y, rows):
    """bare_gemm with numpy's BLAS (CPU): the same tiles into one reused buffer."""
    import numpy as np

    Q, h, C = x.shape
    x2, y2t = x.reshape(Q * h, C).numpy(), y.reshape(-1, C).numpy().T
    buf = np.empty((rows * h, y2t.shape[1]), dtype=x2.dtype)

    def fn():
        for s in range(0, Q, rows):
            a = x2[s * h : min(s + rows, Q) * h]
            np.matmul(a, y2t, out=buf[: a.shape[0]])
        return None

    return fn


def vectorized_chunks(x, y, chunk=200):
    """Public code's practice: 200 x 200-pair chunks, GEMM + normalize + cell loop."""

    def fn():
        out = x.new_empty((x.shape[0], y.shape[0]))
        for s in range(0, x.shape[0], chunk):
            for t in range(0, y.shape[0], chunk):
                out[s : s + chunk, t : t + chunk] = R.local_dist_vectorized(x[s : s + chunk], y[t : t + chunk])
        return out

    return fn


def local_qg(device, Q, G, C, ref_queries, dtype=torch.float32, topk=100, res=None):
    x = unit_stripes(Q, 8, C, 1, device, dtype)
    y = unit_stripes(G, 8, C, 2, device, dtype)
    rows_gemm = max(1, (256 << 20) // (8 * G * 8 * 4))  # ~256 MiB buffer
    with torch.no_grad():
        t_pd, m_pd, d = time_and_peak(lambda: partdist.local_dist(x, y), device)
        t_tk, m_tk, _ = time_and_peak(lambda: partdist.local_dist_topk(x, y, topk), device)
        t_gm, m_gm, _ = time_and_peak(bare_gemm(x, y, rows_gemm), device)
        t_np = None
        if torch.device(device).type == "cpu" and dtype == torch.float32:
            t_np, _, _ = time_and_peak(bare_gemm_numpy(x, y, rows_gemm), device)
        nq = min(Q, ref_queries)
        xs = x[:nq].float()
        t_vec, m_vec, dv = time_and_peak(vectorized_chunks(xs, y.float()), device)
        t_vec_full = t_vec * Q / nq
        err = (d[:nq].float() - dv).abs().max().item()
    name = {torch.float32: "", torch.float16: " (float16 in)", torch.bfloat16: " (bfloat16 in)"}[dtype]
    rows = [
        [f"partdist.local_dist{name}", fmt_time(t_pd), f"{t_pd / t_gm:.2f}x", "1.0x", fmt_mem(m_pd)],
        [f"partdist.local_dist_topk, k={topk}", fmt_time(t_tk), f"{t_tk / t_gm:.2f}x", f"{t_pd / t_tk:.2f}x", fmt_mem(m_tk)],
        ["bare stripe GEMM (tiled, output discarded)", fmt_time(t_gm), "1.00x", f"{t_pd / t_gm:.2f}x", fmt_mem(m_gm)],
    ]
    if t_np is not None:
        rows.append(["the same with numpy's BLAS", fmt_time(t_np), f"{t_np / t_gm:.2f}x", f"{t_pd / t_np:.2f}x", "-"])
    rows += [
        [
            f"vectorized, 200x200 chunks (timed on {nq} queries, x{Q / nq:.1f})" if nq < Q else "vectorized, 200x200 chunks",
            fmt_time(t_vec_full),
            f"{t_vec_full / t_gm:.2f}x",
            f"{t_pd / t_vec_full:.3f}x",
            fmt_mem(m_vec),
        ],
    ]
    print(f"\n(a) local q x g distances {Q} x {G}, H=8, C={C} [{device}{name}]")
    print_table(rows, ["method", "time", "time / GEMM", "local_dist time / this", "peak extra memory"])
    print(f"dense output [Q, G]: {fmt_mem(Q * G * 4)}; max |partdist - vectorized| on {nq} queries = {err:.2e}")
    if res is not None:
        case = f"(a) local q x g {Q}x{G}, H=8, C={C}{name}"
        for method, t, mem in (("partdist.local_dist", t_pd, m_pd), (f"partdist.local_dist_topk k={topk}", t_tk, m_tk),
                               ("bare stripe GEMM", t_gm, m_gm), ("vectorized 200x200 chunks", t_vec_full, m_vec)):
            res.add(case, device, method, t, note=f"timed on {nq} queries, scaled" if "vectorized" in method and nq < Q else "")
            res.add(case, device, method + " peak extra memory", mem, unit="B")
        res.add(case, device, "partdist / GEMM", t_pd / t_gm, unit="x")
        res.add(case, device, "max |partdist - vectorized|", err, unit="")
        if t_np is not None:
            res.add(case, device, "bare stripe GEMM (numpy)", t_np)
        if (Q, G, C, dtype) == (Q_MARKET, G_MARKET, 128, torch.float32):
            res.measure(TARGET_QG_TIME, t_pd, device)
            res.measure(TARGET_QG_GEMM, t_pd / t_gm, device)
            res.measure(TARGET_CPU_QG_GEMM, t_pd / min(t_gm, t_np or t_gm), device)
        if (Q, G, C) == (Q_MARKET, G_MARKET, 128) and dtype in (torch.float16, torch.bfloat16):
            res.measure(TARGET_QG_HALF, t_pd, device)
    return {"C": C, "device": device, "dtype": str(dtype), "partdist_s": t_pd, "topk_s": t_tk, "gemm_s": t_gm,
            "vectorized_s": t_vec_full, "partdist_mem": m_pd, "topk_mem": m_tk, "gemm_mem": m_gm}


FUSED_ENV = "PARTDIST_FUSED_EPILOGUE"


def _local_dist_variant(x, y, fused=False, **kw):
    """local_dist(x, y, **kw); fused: with the opt-in fused CUDA path (the variable is read at
    every call)."""
    if not fused:
        return partdist.local_dist(x, y, **kw)
    old = os.environ.get(FUSED_ENV)
    os.environ[FUSED_ENV] = "1"
    try:
        return partdist.local_dist(x, y, **kw)
    finally:
        if old is None:
            del os.environ[FUSED_ENV]
        else:
            os.environ[FUSED_ENV] = old


def qg_variants(device, Q, G, C, res=None):
    """(c): the reduced-precision mode and other tile sizes, each against local_dist's default."""
    x = unit_stripes(Q, 8, C, 1, device)
    y = unit_stripes(G, 8, C, 2, device)
    with torch.no_grad():
        t32, m32, d32 = time_and_peak(lambda: partdist.local_dist(x, y), device)
        rows = [["float32, default tiles", fmt_time(t32), "1.00x", "-", fmt_mem(m32)]]
        variants = [(f"gemm_dtype={str(dt)[6:]}", dict(gemm_dtype=dt)) for dt in (torch.float16, torch.bfloat16)]
        if torch.device(device).type == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (40 << 20)
            rows[0][0] = f"float32, default tiles (L2/2; L2 {l2 >> 20} MiB)" if l2 >= 16 << 20 else rows[0][0]
            for name, tile_bytes in (("256 MiB", 256 << 20), ("L2/4", l2 // 4)):
                pairs = max(1, tile_bytes // (8 * 8 * 4))
                variants.append((f"tiles of {name} ({pairs} pairs)", dict(chunk_size=pairs)))
            variants.append((f"{FUSED_ENV}=1 (the DP in the GEMM's epilogue)", dict(fused=True)))
        for name, kw in variants:
            t, m, d = time_and_peak(lambda: _local_dist_variant(x, y, **kw), device)
            err = (d - d32).abs().max().item()
            rows.append([name, fmt_time(t), f"{t / t32:.2f}x", f"{err:.2e}", fmt_mem(m)])
            if res is not None:
                case = f"(c) local q x g {Q}x{G}, H=8, C={C}, float32 features"
                res.add(case, device, f"partdist.local_dist {name}", t)
                res.add(case, device, f"{name} / default", t / t32, unit="x")
                res.add(case, device, f"{name}: max |difference from float32|", err, unit="")
    print(f"\n(c) local q x g {Q} x {G}, H=8, C={C}, float32 features [{device}]: precision mode and tile size")
    print_table(rows, ["local_dist", "time", "time / default", "max |d - float32 default|", "peak extra memory"])


def _split(n):
    q = max(1, round(n * Q_MARKET / (Q_MARKET + G_MARKET)))
    return q, n - q


def rerank_partdist(device, Q, G, C):
    ql, gl = unit_stripes(Q, 8, C, 3, device), unit_stripes(G, 8, C, 4, device)
    t, m, _ = time_and_peak(lambda: re_ranking_features(ql, gl, progress=False), device)
    return t, m


_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch, partdist
import partdist.reference as R
from common import peak_extra_memory
from bench_market import unit_stripes
q, g, C = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ql, gl = unit_stripes(q, 8, C, 3, "cpu"), unit_stripes(g, 8, C, 4, "cpu")
with torch.no_grad():
    t0 = time.perf_counter()
    qg, qq, gg = (partdist.local_dist(a, b).numpy() for a, b in ((ql, gl), (ql, ql), (gl, gl)))
    t_dist = time.perf_counter() - t0
box = {}
def run():
    t0 = time.perf_counter(); R.re_ranking_dense(qg, qq, gg); box["t"] = time.perf_counter() - t0
m = peak_extra_memory(run)
print(json.dumps({"t": box["t"], "mem": m, "t_dist": t_dist}))
"""


def rerank_dense(Q, G, C):
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", _CHILD, here, str(Q), str(G), str(C)], capture_output=True, text=True)
    if out.returncode != 0:
        return None, None, out.stderr.strip().splitlines()[-1] if out.stderr else f"exit {out.returncode}"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["t"], r["mem"], None


def rerank(device, C, sizes, budget_gb, full=True, res=None):
    rows = []
    case = f"(b) re-ranking with local distances, C={C}"
    for n in sizes:
        q, g = _split(n)
        predicted = 28 * n * n  # ~7 dense N x N float32/int32 arrays live at the peak
        t_pd, m_pd = rerank_partdist(device, q, g, C)
        if res is not None:
            res.add(case, device, f"partdist re_ranking_features {q}x{g}", t_pd)
            res.add(case, device, f"partdist re_ranking_features {q}x{g} peak extra memory", m_pd, unit="B")
        if predicted > budget_gb * 2**30:
            rows.append([f"{q} x {g}", fmt_time(t_pd), fmt_mem(m_pd), f"skipped (needs ~{predicted / 2**30:.1f} GiB)", "-", "-"])
            continue
        t_d, m_d, err = rerank_dense(q, g, C)
        if err:
            rows.append([f"{q} x {g}", fmt_time(t_pd), fmt_mem(m_pd), f"failed: {err}", "-", "-"])
        else:
            rows.append([f"{q} x {g}", fmt_time(t_pd), fmt_mem(m_pd), fmt_time(t_d), fmt_mem(m_d), f"{t_d / t_pd:.1f}x"])
            if res is not None:
                res.add(case, "cpu", f"usual dense re-ranking {q}x{g}", t_d, note="numpy, distances precomputed")
                res.add(case, "cpu", f"usual dense re-ranking {q}x{g} peak extra memory", m_d, unit="B")
    if full:
        t_pd, m_pd = rerank_partdist(device, Q_MARKET, G_MARKET, C)
        if res is not None:
            res.add(case, device, f"partdist re_ranking_features {Q_MARKET}x{G_MARKET} (Market-1501)", t_pd)
            res.add(case, device, f"partdist re_ranking_features {Q_MARKET}x{G_MARKET} peak extra memory", m_pd, unit="B")
            res.measure(TARGET_RERANK, t_pd, device)
        rows.append([f"{Q_MARKET} x {G_MARKET} (Market-1501)", fmt_time(t_pd), fmt_mem(m_pd),
                     f"not run (needs ~{28 * (Q_MARKET + G_MARKET) ** 2 / 2**30:.1f} GiB)", "-", "-"])
    print(f"\n(b) re-ranking with local DMLI distances, H=8, C={C}, k1=20 k2=6 lambda=0.3 [{device}]")
    print("    partdist: distances included; usual dense implementation: re-ranking only, on precomputed dense "
          "q x g, q x q, g x g local distances")
    print_table(rows, ["q x g", "partdist (streaming)", "partdist peak", "usual dense", "usual peak", "dense / partdist"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    add_device_arg(ap)
    ap.add_argument("--C", type=int, action="append", help="stripe channels (default: 128 and 2048)")
    ap.add_argument("--cpu-C", type=int, action="append",
                    help="stripe channels of the CPU run only (default: as --C; C=2048 takes minutes on a CPU)")
    ap.add_argument("--ref-queries", type=int, default=200, help="queries the vectorized chunks are timed on")
    ap.add_argument("--dense-sizes", default="1500,3000,6000,9000", help="q+g sizes for the dense re-ranking")
    ap.add_argument("--dense-budget-gb", type=float, default=4.0)
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--skip-rerank", action="store_true")
    args = ap.parse_args(argv)

    devices = resolve_devices(ap, args.device)
    res = Results(args.json, "market")
    res.target(TARGET_QG_TIME, 0.25, "<", unit="s")
    res.target(TARGET_QG_GEMM, 1.05, "<=", unit="x")
    res.target(TARGET_QG_HALF, 8e-3, "<=", unit="s")
    if "cpu" in devices and torch.get_num_threads() == 2:  # the CPU target's setting (AVX2 machines)
        res.target(TARGET_CPU_QG_GEMM, 1.1, "<=", unit="x", device="cpu")
    res.target(TARGET_RERANK, 5.0, "<", unit="s")
    for device in devices:
        print(f"== {env_line(device)}")
        if args.quick:
            local_qg(device, 60, 300, 32, ref_queries=20, topk=10, res=res)
            qg_variants(device, 60, 300, 32, res=res)
            rerank(device, 32, [200] if device == "cpu" else [], 1.0, full=False, res=res)
            continue
        if not args.skip_local:
            Cs = (args.cpu_C or args.C or [128, 2048]) if device == "cpu" else (args.C or [128, 2048])
            for C in Cs:
                local_qg(device, Q_MARKET, G_MARKET, C, args.ref_queries, res=res)
            if device == "cuda":
                for dt in (torch.float16, torch.bfloat16):
                    local_qg(device, Q_MARKET, G_MARKET, 128, args.ref_queries, dtype=dt, res=res)
                qg_variants(device, Q_MARKET, G_MARKET, 128, res=res)
        if not args.skip_rerank:
            # the usual dense implementation is numpy on the CPU: timed in the CPU run only
            sizes = [int(s) for s in args.dense_sizes.split(",") if s] if device == "cpu" else []
            rerank(device, 128, sizes, args.dense_budget_gb, res=res)
    res.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
