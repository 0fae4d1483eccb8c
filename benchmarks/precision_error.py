"""Error of the reduced-precision mode (``gemm_dtype``) of local_dist and part_dist.

For float32 features, the default (float32) and ``gemm_dtype=torch.float16`` / ``torch.bfloat16``
against the float64 computation on the same features, over feature distributions of several
kinds (this project's generator is only one of them):

    gauss      N(0, 1) channels (pre-BN features)
    relu       |N(0, 1)| * 0.1 (pooled post-ReLU CNN stripes, non-negative; unsaturated cells)
    unit       stripes L2-normalized to norm 1 (cosine-style features)
    large      N(0, 30) channels (features far from unit scale, stripe norms ~ 340)
    near-dup   gallery image b = query b + 1e-3 N(0, 1) (distances near 0, where
               |a|^2 + |b|^2 - 2 a.b cancels); its errors are taken over those pairs

For each: the median distance and the largest absolute error of the DMLI value and of the part distance, and the
largest ratio of the error to the bound stated in the docstrings, (m + n - 1) * max over
cells of 0.5 u (|a_i| + |b_j|) (normalized cells; u = 2^-11 float16, 2^-8 bfloat16), beside
the float32 default's error. Nothing is timed; any CPU gives the same numbers up to rounding
order (and so does the CUDA path: the same float32 computation on the rounded features).

    python benchmarks/precision_error.py
    python benchmarks/precision_error.py --device cuda
"""

from __future__ import annotations

import argparse

import torch

import partdist

U = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def features(kind, n, m, C, gen):
    def g(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    if kind == "gauss":
        return g(n, m, C), g(2 * n, m, C)
    if kind == "relu":
        return g(n, m, C).abs() * 0.1, g(2 * n, m, C).abs() * 0.1
    if kind == "unit":
        x, y = g(n, m, C), g(2 * n, m, C)
        return x / x.norm(dim=-1, keepdim=True), y / y.norm(dim=-1, keepdim=True)
    if kind == "large":
        return g(n, m, C) * 30, g(2 * n, m, C) * 30
    if kind == "near-dup":
        x = g(n, m, C)
        return x, x + 1e-3 * g(n, m, C)
    raise ValueError(kind)


def dmli_bound(x, y, u):
    """(m + n - 1) * max_ij 0.5 u (|x_i| + |y_j|) per pair [M, N] (normalized cells)."""
    nx, ny = x.norm(dim=-1).amax(-1), y.norm(dim=-1).amax(-1)  # [M], [N]
    m, n = x.shape[1], y.shape[1]
    return (m + n - 1) * 0.5 * u * (nx[:, None] + ny[None, :])


def part_bound(x, y, u):
    """max_p u (|x_p| + |y_p|) per pair [M, N] (the visibility-weighted mean of part distances)."""
    return u * (x.norm(dim=-1)[:, None, :] + y.norm(dim=-1)[None, :, :]).amax(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=200, help="queries (the gallery has twice as many; near-dup: as many)")
    ap.add_argument("--m", type=int, default=8)
    ap.add_argument("--C", type=int, default=128)
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for kind in ("gauss", "relu", "unit", "large", "near-dup"):
        x64, y64 = features(kind, a.n, a.m, a.C, gen)
        x64, y64 = x64.to(a.device), y64.to(a.device)
        x, y = x64.float(), y64.float()
        vx = torch.ones(x.shape[:2], device=a.device)
        vy = torch.ones(y.shape[:2], device=a.device)
        # the pairs measured: all, or the near duplicates (the diagonal)
        sel = torch.eye(len(x), dtype=torch.bool, device=a.device) if kind == "near-dup" else ...
        d_ref = partdist.local_dist(x.double(), y.double())
        p_ref = partdist.part_dist(x.double(), y.double(), vx.double(), vy.double())

        def err(v, ref):
            return (v.double() - ref).abs()[sel]

        d32 = err(partdist.local_dist(x, y), d_ref).max().item()
        p32 = err(partdist.part_dist(x, y, vx, vy), p_ref).max().item()
        for dt in (torch.float16, torch.bfloat16):
            ed = err(partdist.local_dist(x, y, gemm_dtype=dt), d_ref)
            ep = err(partdist.part_dist(x, y, vx, vy, gemm_dtype=dt), p_ref)
            rd = (ed / dmli_bound(x.double(), y.double(), U[dt])[sel]).max().item()
            rp = (ep / part_bound(x.double(), y.double(), U[dt])[sel]).max().item()
            rows.append((kind, str(dt).replace("torch.", ""), d_ref[sel].median().item(), d32, ed.max().item(), rd,
                         p_ref[sel].median().item(), p32, ep.max().item(), rp))
    head = ("features", "gemm_dtype", "DMLI median", "float32 err", "err", "err/bound",
            "part median", "float32 err", "err", "err/bound")
    print(f"local_dist / part_dist, {a.n} x {2 * a.n} images, m = {a.m}, C = {a.C}, device {a.device};"
          " errors: largest |value - float64| over all pairs")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join([r[0], r[1]] + [f"{v:.3g}" for v in r[2:]]))


if __name__ == "__main__":
    main()
