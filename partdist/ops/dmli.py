"""Public functional ops of the DMLI family, with fake kernels and autograd.

The compiled kernels and their autograd are registered in C++ as
``torch.ops.partdist.*``; this module adds what torch.library needs from Python: a fake
(meta) implementation of every op so that ``torch.compile`` can trace them.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _C  # noqa: F401  (loads the shared library: registers torch.ops.partdist.*)
from .._checks import MAX_STRIPES, check_chunk_size, check_dist, check_gemm_dtype, check_rule, check_xy
from .._memory import check_dense_fits
from ._library import autocast_to_float32, contiguous_like

_STREAMING_HINT = (
    "partdist.local_dist_topk(x, y, k) (the k nearest per row, streaming), "
    "partdist.eval.distance_blocks(x, y, block_rows=...) (row blocks) or "
    "partdist.eval.re_ranking_features(...) (re-ranking without dense matrices)"
)

__all__ = [
    "local_dist_matrix",
    "dmli",
    "dmli_path",
    "batch_local_dist",
    "local_dist",
    "unaligned_dist",
    "MAX_STRIPES",
]

_ops = torch.ops.partdist


# ------------------------------------------------------------------ fake kernels
@torch.library.register_fake("partdist::local_dist_matrix")
def _(x, y, normalize=True):
    check_xy("partdist.local_dist_matrix", x, y, aligned=True, dp=False)
    return x.new_empty((x.shape[0], x.shape[1], y.shape[1]))


@torch.library.register_fake("partdist::local_dist_matrix_backward")
def _(grad, x, y, normalize):
    check_xy("partdist.local_dist_matrix_backward", x, y, aligned=True, dp=False)
    return contiguous_like(x), contiguous_like(y)


@torch.library.register_fake("partdist::dmli")
def _(dist, gamma=0.0, band=-1.0):
    check_dist("partdist.dmli", dist, flat=True)
    return dist.new_empty((dist.shape[0],))


@torch.library.register_fake("partdist::dmli_backward")
def _(grad, dist, gamma, band):
    check_dist("partdist.dmli_backward", dist, flat=True)
    return contiguous_like(dist)


@torch.library.register_fake("partdist::dmli_path")
def _(dist, gamma=0.0, band=-1.0):
    check_dist("partdist.dmli_path", dist, flat=True)
    return dist.new_empty(dist.shape, dtype=dist.dtype if gamma > 0 else torch.bool)


@torch.library.register_fake("partdist::batch_local_dist")
def _(x, y, normalize=True, gamma=0.0, band=-1.0, unaligned=False):
    check_xy("partdist.batch_local_dist", x, y, aligned=True, dp=True)
    return x.new_empty((x.shape[0],))


@torch.library.register_fake("partdist::batch_local_dist_backward")
def _(grad, x, y, normalize, gamma, band, unaligned):
    check_xy("partdist.batch_local_dist_backward", x, y, aligned=True, dp=True)
    return contiguous_like(x), contiguous_like(y)


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("partdist::_batch_local_dist_fwd_cells")
def _(x, y, normalize, gamma, band):
    check_xy("partdist._batch_local_dist_fwd_cells", x, y, aligned=True, dp=True)
    cells = x.new_empty((2, x.shape[0], x.shape[1], y.shape[1]), dtype=_compute_dtype(x))
    return x.new_empty((x.shape[0],)), cells


@torch.library.register_fake("partdist::_batch_local_dist_backward_cells")
def _(grad, x, y, cells, normalize, gamma, band):
    check_xy("partdist._batch_local_dist_backward_cells", x, y, aligned=True, dp=True)
    return contiguous_like(x), contiguous_like(y)


@torch.library.register_fake("partdist::local_dist")
def _(x, y, normalize=True, chunk_size=0, gamma=0.0, band=-1.0, unaligned=False, gemm_dtype=None):
    check_xy("partdist.local_dist", x, y, aligned=False, dp=True)
    return x.new_empty((x.shape[0], y.shape[0]))


@torch.library.register_fake("partdist::local_dist_backward")
def _(grad, x, y, normalize, chunk_size, gamma, band, unaligned, gemm_dtype=None):
    check_xy("partdist.local_dist_backward", x, y, aligned=False, dp=True)
    return contiguous_like(x), contiguous_like(y)


@torch.library.register_fake("partdist::_tf32_split_operands")
def _(a, b):
    k = a.shape[-1]
    return a.new_empty((*a.shape[:-1], 3 * k)), b.new_empty((*b.shape[:-2], 3 * k, b.shape[-1]))


# under torch.autocast: float32 in and out (see autocast_to_float32)
autocast_to_float32("local_dist_matrix", "dmli", "batch_local_dist", "local_dist")


# ---------------------------------------------------------------------- autograd
# local_dist_matrix, dmli, batch_local_dist and local_dist have their autograd in C++
# (csrc/dmli/dmli_autograd.cpp, at the Autograd dispatch key): the forward saves x, y
# (or dist) and the options, the backward calls the compiled *_backward op. No Python
# runs per call. The backward ops themselves have no autograd (no double backward).
# batch_local_dist (not unaligned; on the CPU, or on CUDA with at most kWarpPathMaxCells
# cells per pair, csrc/dmli/dmli_common.h), when a gradient is needed, runs
# _batch_local_dist_fwd_cells instead, saves its cells and calls
# _batch_local_dist_backward_cells (no stripe distances recomputed; on CUDA one warp
# kernel per direction).


# -------------------------------------------------------------------- public API
def local_dist_matrix(x: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Stripe-to-stripe distance matrices of aligned pairs of images.

    Args:
        x: ``[N, m, C]`` local features (m horizontal stripes of C channels).
        y: ``[N, n, C]`` local features of the images paired with ``x``.
        normalize: map each distance ``e`` to ``(exp(e) - 1) / (exp(e) + 1)``
            (``= tanh(e / 2)``, in ``[0, 1)``), as AlignedReID does.

    Returns:
        ``[N, m, n]``: entry ``(k, i, j)`` is ``||x[k, i] - y[k, j]||_2``, normalized
        if asked. Differentiable in ``x`` and ``y``. Where two stripes are identical
        (distance 0) the subgradient 0 is used, so the gradient stays finite.
    """
    check_xy("partdist.local_dist_matrix", x, y, aligned=True, dp=False)
    return _ops.local_dist_matrix(x, y, bool(normalize))


def _band(band):
    return -1.0 if band is None else float(band)


def dmli(dist: torch.Tensor, gamma: float = 0.0, band: Optional[float] = None) -> torch.Tensor:
    """DMLI distance: the shortest monotone path through distance matrices.

    ``S(0,0) = d(0,0)``; first row and column cumulative;
    ``S(i,j) = min(S(i-1,j), S(i,j-1)) + d(i,j)``; returns ``S(m-1, n-1)``.

    Args:
        dist: ``[..., m, n]`` (any number of leading batch dimensions),
            ``1 <= m, n <= MAX_STRIPES``.
        gamma: ``> 0`` gives soft-DMLI: the minimum is replaced by the smoothed
            minimum ``softmin_g(a, b) = -g log(e^{-a/g} + e^{-b/g})`` (as soft-DTW),
            so the gradient spreads over near-optimal paths; ``gamma -> 0`` tends to
            the hard value and ``gamma = 0`` is exactly it.
        band: if given, only cells with ``|i (n-1)/(m-1) - j| <= band`` may be on the
            path (a Sakoe-Chiba window bounding how far stripes may shift; with
            ``m == 1`` every cell is allowed). A band that leaves no path raises.

    Returns:
        ``[...]``. Hard minimum: the gradient flows along the chosen path; at a tie of
        the minimum it is split in half between both branches, exactly as autograd
        through the reference Python loop (``torch.min`` of two tensors) does. Soft
        minimum: the gradient is the expected alignment (soft-DTW's backward
        recursion adapted to the two moves).
    """
    check_dist("partdist.dmli", dist)
    check_rule("partdist.dmli", dist.shape[-2], dist.shape[-1], gamma, band)
    lead = dist.shape[:-2]
    flat = dist.reshape(-1, dist.shape[-2], dist.shape[-1])
    return _ops.dmli(flat, float(gamma), _band(band)).reshape(lead)


def dmli_path(dist: torch.Tensor, gamma: float = 0.0, band: Optional[float] = None) -> torch.Tensor:
    """The optimal DMLI path of each matrix ``[..., m, n]``.

    ``gamma == 0``: a boolean mask of the cells on the optimal path. Where the minimum
    ties, every tied optimal branch is marked: the mask is exactly the set of cells
    through which :func:`dmli` sends gradient. (In float32 a cell reached only through
    more than ~120 consecutive ties can be dropped: its share of the gradient, 2^-k,
    underflows.)

    ``gamma > 0``: the expected alignment matrix of soft-DMLI (values in [0, 1], the
    gradient of the soft-DMLI value with respect to ``dist``), in the dtype of ``dist``.
    Not differentiable.
    """
    check_dist("partdist.dmli_path", dist)
    check_rule("partdist.dmli_path", dist.shape[-2], dist.shape[-1], gamma, band)
    flat = dist.reshape(-1, dist.shape[-2], dist.shape[-1])
    return _ops.dmli_path(flat, float(gamma), _band(band)).reshape(dist.shape)


def batch_local_dist(
    x: torch.Tensor, y: torch.Tensor, normalize: bool = True, gamma: float = 0.0, band: Optional[float] = None
) -> torch.Tensor:
    """DMLI distance of aligned pairs: ``dmli(local_dist_matrix(x, y, normalize), gamma, band)``, fused.

    Args:
        x: ``[N, m, C]``, y: ``[N, n, C]`` (pair k is ``x[k]`` with ``y[k]``).
        gamma, band: as in :func:`dmli`.

    Returns:
        ``[N]``, differentiable in ``x`` and ``y``. On CUDA the ``[N, m, n]`` stripe dot
        products come from one batched GEMM; on the CPU each pair is done in one pass
        (dot products, cells, DP; when a gradient is needed the forward keeps the cells,
        ``2 N m n`` values, and the backward runs the DP backward on them and the chain
        rule along the path only, without recomputing the dot products).
    """
    check_xy("partdist.batch_local_dist", x, y, aligned=True, dp=True)
    check_rule("partdist.batch_local_dist", x.shape[1], y.shape[1], gamma, band)
    return _ops.batch_local_dist(x, y, bool(normalize), float(gamma), _band(band), False)


def local_dist(
    x: torch.Tensor,
    y: torch.Tensor,
    normalize: bool = True,
    chunk_size: Optional[int] = None,
    gamma: float = 0.0,
    band: Optional[float] = None,
    gemm_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """DMLI distance of all pairs (every ``x[a]`` against every ``y[b]``).

    Args:
        x: ``[M, m, C]`` (e.g. queries), y: ``[N, n, C]`` (e.g. gallery).
        normalize: as in :func:`local_dist_matrix`.
        chunk_size: at most this many pairs are processed per tile (a GEMM of
            their stripes followed by the fused normalize + DP kernel). ``None``
            sizes the tiles by bytes instead: 1 MiB per CPU thread in the forward,
            8 MiB of tile buffers in the CPU backward; on CUDA half the GPU's L2 cache
            for float32 / float64 features (so that the DP reads the GEMM's output from
            L2), 256 MiB for float16 / bfloat16 GEMMs and on GPUs with under 16 MiB of
            L2. Extra memory is one tile, ``chunk_size * m * n`` values per CPU thread
            (twice that in backward), never ``M * N * m * n``.
        gamma, band: as in :func:`dmli`.
        gemm_dtype: ``None`` (default) or, for float32 features, ``torch.float16`` /
            ``torch.bfloat16``: the opt-in reduced-precision mode, described below.

    Returns:
        ``[M, N]``, differentiable in ``x`` and ``y``.

    Reduced precision (``gemm_dtype``): ``x`` and ``y`` are rounded once to ``gemm_dtype``
    and everything after (the stripe GEMMs, the squared norms, the cells, the DP, the chain
    rule) takes the rounded values in float32: the result is the float32 computation on the
    rounded features, returned in float32, and its gradients are those of the rounded
    features (float32). On CUDA the stripe GEMMs then run on tensor cores (half operands,
    float32 accumulation). On a CPU with AVX512_BF16 (the ``avx512bf16`` level of
    docs/speed.md) bfloat16 runs the forward's dot products two channels per instruction
    (about 1.5x faster); elsewhere on the CPU the mode is no faster, and lets the error be
    checked before a GPU run. Because the norms come from the rounded values, two
    features that round alike are still at distance 0 up to float32 rounding. Error bound
    (from the triangle inequality): a stripe distance moves by at most ``u (|a| + |b|)``
    (``|a|``, ``|b|`` the stripes' norms; ``u = 2**-11`` for float16, plus ``2**-25`` per
    channel where values are below float16's normal range, ``u = 2**-8`` for bfloat16), a
    normalized cell by half that, and the DMLI value by at most ``m + n - 1`` times the
    largest cell error. Measured (``benchmarks/precision_error.py``: 200 x 200-400 images,
    m = 8, C = 128, five feature distributions, against float64): at most 0.12 of this bound;
    on unit-norm stripes (DMLI values near 9) the largest error was 3e-4 with float16 and
    2.5e-3 with bfloat16, against 2.6e-6 in float32; at near-duplicate pairs the float32
    cancellation of every mode dominates (1.1e-2 in float32 and float16, 6.9e-2 in bfloat16).
    float16 raises for a value beyond its range (``|v| > 65504``: use bfloat16), which costs
    one device synchronization per call on CUDA.
    """
    check_xy("partdist.local_dist", x, y, aligned=False, dp=True)
    check_chunk_size("partdist.local_dist", chunk_size)
    check_rule("partdist.local_dist", x.shape[1], y.shape[1], gamma, band)
    gemm_dtype = check_gemm_dtype("partdist.local_dist", gemm_dtype, x)
    check_dense_fits("partdist.local_dist", (x.shape[0], y.shape[0]), x.dtype, x.device, _STREAMING_HINT)
    return _ops.local_dist(
        x, y, bool(normalize), int(chunk_size or 0), float(gamma), _band(band), False, gemm_dtype
    )


def unaligned_dist(
    x: torch.Tensor,
    y: torch.Tensor,
    normalize: bool = True,
    all_pairs: bool = False,
    chunk_size: Optional[int] = None,
    gemm_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The unaligned local distance ``sum_i d(i, i)`` (stripe i against stripe i, no DP).

    The "unaligned" test option of AlignedReID code, to measure what alignment buys.
    ``x`` ``[N, m, C]`` and ``y`` ``[N, m, C]`` -> ``[N]`` (aligned pairs), or with
    ``all_pairs=True`` ``[M, m, C]`` x ``[N, m, C]`` -> ``[M, N]``. Needs ``m == n``.
    Same kernels as :func:`batch_local_dist` / :func:`local_dist`; differentiable.
    ``gemm_dtype`` (``all_pairs=True`` only): the reduced-precision mode of :func:`local_dist`.
    """
    op = "partdist.unaligned_dist"
    check_xy(op, x, y, aligned=not all_pairs, dp=True)
    check_rule(op, x.shape[1], y.shape[1], 0.0, None, unaligned=True)
    if all_pairs:
        check_chunk_size(op, chunk_size)
        gemm_dtype = check_gemm_dtype(op, gemm_dtype, x)
        check_dense_fits(op, (x.shape[0], y.shape[0]), x.dtype, x.device, _STREAMING_HINT)
        return _ops.local_dist(x, y, bool(normalize), int(chunk_size or 0), 0.0, -1.0, True, gemm_dtype)
    if gemm_dtype is not None:
        raise ValueError(f"{op}: gemm_dtype applies to all pairs (all_pairs=True), got gemm_dtype={gemm_dtype}")
    return _ops.batch_local_dist(x, y, bool(normalize), 0.0, -1.0, True)
