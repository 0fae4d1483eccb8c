"""Visibility-aware part distance and the DSR distance: wrappers, fake
kernels and autograd of ``torch.ops.partdist.part_dist`` / ``dsr_dist``.

The compiled kernels live in ``csrc/parts/``; this module adds the Python-side
argument checks, the fake (meta) kernels for ``torch.compile`` and the autograd
formulas (``part_dist`` calls the compiled ``part_dist_backward`` op; ``dsr_dist``
calls ``dsr_dist_backward``, a Python custom op defined here: implicit differentiation
of the Lasso codes, recomputed by a batched PyTorch FISTA).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _C  # noqa: F401  (loads the shared library: registers torch.ops.partdist.*)
from .._checks import (
    _shape,
    check_chunk_size,
    check_gemm_dtype,
    check_same_device_dtype,
    check_stripes,
    check_tensor,
)
from ._library import autocast_to_float32, contiguous_like

__all__ = ["part_dist", "dsr_dist", "MAX_DSR_CELLS"]

#: Largest number of gallery cells ``Lg`` accepted by :func:`dsr_dist`.
MAX_DSR_CELLS = 256

_ops = torch.ops.partdist


# ------------------------------------------------------------------------ checks
def _check_feats(op, name, t, layout, what):
    check_stripes(op, name, t, layout, what)


def _check_parts(op, x, y):
    _check_feats(op, "x", x, "[M, P, C]", "part")
    _check_feats(op, "y", y, "[N, P, C]", "part")
    check_same_device_dtype(op, "y", y, "x", x)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"{op}: x and y must have the same number of parts P (dim 1) and channels C (dim 2), "
            f"got x {_shape(x)} and y {_shape(y)}"
        )


def _check_vis(op, name, v, feats, feats_name, n_name):
    check_tensor(op, name, v)
    if v.dtype != torch.bool and not v.is_floating_point():
        raise TypeError(f"{op}: {name} must be a bool or floating-point tensor [{n_name}, P], got dtype {v.dtype}")
    expected = [feats.shape[0], feats.shape[1]]
    if list(v.shape) != expected:
        raise ValueError(
            f"{op}: {name} must have shape [{n_name}, P] = {expected} (one visibility per part of {feats_name}), "
            f"got shape {_shape(v)}"
        )
    if v.device != feats.device:
        raise ValueError(f"{op}: {name} must be on the same device as {feats_name} ({feats.device}), got {v.device}")


def _check_empty_value(op, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise ValueError(f"{op}: empty_value must be a number (inf allowed, NaN not), got {v!r}")


def _check_dsr(op, x, y, beta, max_iter, tol, chunk_size):
    _check_feats(op, "x", x, "[M, Lq, C]", "query cell")
    _check_feats(op, "y", y, "[N, Lg, C]", "gallery cell")
    check_same_device_dtype(op, "y", y, "x", x)
    if x.shape[2] != y.shape[2]:
        raise ValueError(
            f"{op}: x and y must have the same number of channels C (dim 2), got x {_shape(x)} and y {_shape(y)}"
        )
    if y.shape[1] > MAX_DSR_CELLS:
        raise ValueError(f"{op}: at most {MAX_DSR_CELLS} gallery cells Lg (dim 1 of y) are supported, got {_shape(y)}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"{op}: beta must be a finite number >= 0, got {beta!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int):
        raise TypeError(f"{op}: max_iter must be an int >= 1, got {max_iter!r}")
    if max_iter < 1 or max_iter > 2**30:
        raise ValueError(f"{op}: max_iter must be an int >= 1, got {max_iter}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"{op}: tol must be a finite number >= 0, got {tol!r}")
    check_chunk_size(op, chunk_size)


# ------------------------------------------------------------------ fake kernels
@torch.library.register_fake("partdist::part_dist")
def _(x, y, vis_x, vis_y, empty_value, chunk_size=0, gemm_dtype=None):
    return x.new_empty((x.shape[0], y.shape[0]))


@torch.library.register_fake("partdist::part_dist_backward")
def _(grad, x, y, vis_x, vis_y, empty_value, chunk_size, vis_grad, gemm_dtype=None):
    return contiguous_like(x), contiguous_like(y), contiguous_like(vis_x), contiguous_like(vis_y)


@torch.library.register_fake("partdist::dsr_dist")
def _(x, y, beta, max_iter=200, tol=1e-5, chunk_size=0):
    return x.new_empty((x.shape[0], y.shape[0]))


# under torch.autocast: float32 in and out (see autocast_to_float32)
autocast_to_float32("part_dist", "dsr_dist")


# ---------------------------------------------------------------------- autograd
def _setup_part(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.extra = inputs[4:]  # empty_value, chunk_size[, gemm_dtype]


def _backward_part(ctx, grad):
    if torch.is_grad_enabled():  # create_graph=True: part_dist_backward has no autograd
        raise RuntimeError("partdist.part_dist has no double backward (a backward with create_graph=True); "
                           "take its gradient with create_graph=False")
    x, y, vx, vy = ctx.saved_tensors
    vis_grad = bool(ctx.needs_input_grad[2] or ctx.needs_input_grad[3])
    empty_value, chunk_size, *gemm_dtype = ctx.extra
    gx, gy, gvx, gvy = _ops.part_dist_backward(
        grad.contiguous(), x, y, vx, vy, empty_value, chunk_size, vis_grad, *gemm_dtype
    )
    if not vis_grad:
        gvx = gvy = None
    return (gx, gy, gvx, gvy) + (None,) * len(ctx.extra)


torch.library.register_autograd("partdist::part_dist", _backward_part, setup_context=_setup_part)


# The DSR backward (implicit differentiation of the Lasso, see dsr_dist's docstring) is a
# Python custom op, so that torch.compile / AOT autograd see one opaque op with a fake
# kernel instead of tracing its data-dependent parts (FISTA's stopping rule, the pairs
# with a nonzero incoming gradient).

#: Relative threshold on |w| below which a FISTA coefficient counts as zero in backward
#: (times ``max_k |w_k|`` of the same query cell; see :func:`dsr_dist`).
_DSR_ACTIVE_RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def _dsr_tile_pairs(Lq, Lg, C, device, chunk_size):
    # the batched masked solve holds ~3 Lq Lg^2 values per pair (matrix, LU, copies), the
    # FISTA iterates and the gradient pieces O(Lq (Lg + C) + Lg C) more
    per_pair = Lq * (3 * Lg * Lg + 12 * Lg + 4 * C) + 3 * Lg * C
    budget = 2**26 if device.type == "cuda" else 2**22
    pairs = max(1, budget // per_pair)
    return min(pairs, chunk_size) if chunk_size else pairs


_FISTA_CHECK_EVERY = 25


def lasso_fista(G, b, beta, lip, max_iter=200, tol=1e-5):
    """FISTA for ``min_w 1/2 w^T G w - b^T w + beta ||w||_1`` (= ``1/2 ||x - Y w||^2 + beta ||w||_1``
    up to a constant, with ``G = Y^T Y``, ``b = Y^T x``), batched.

    G ``[..., L, L]``, b ``[..., L, K]`` (K right-hand sides sharing G), lip ``[...]`` the
    step constant (largest eigenvalue of G). The stopping rule of the kernel, per column:
    stop after ``max_iter`` iterations or once ``||w_k+1 - w_k|| <= tol ||w_k+1||``
    (a stopped column keeps its value). Returns w ``[..., L, K]``.

    On the CPU the loop ends as soon as every column has stopped. On a GPU it asks whether any
    column is still running only every ``_FISTA_CHECK_EVERY`` iterations (each question is a
    host synchronization); the stopped columns keep their values, so the result is the same.
    """
    lip = lip[..., None, None]
    live_lip = lip > 0
    step = torch.where(live_lip, 1 / torch.where(live_lip, lip, torch.ones_like(lip)), torch.zeros_like(lip))
    thr = beta * step
    w = torch.zeros_like(b)
    z = torch.zeros_like(b)
    active = torch.ones(b.shape[:-2] + (1, b.shape[-1]), dtype=torch.bool, device=b.device) & live_lip
    t = 1.0
    check_every = 1 if b.device.type == "cpu" else _FISTA_CHECK_EVERY
    for it in range(max_iter):
        if it % check_every == 0 and not bool(active.any()):
            break
        u = z - step * (G @ z - b)
        wn = torch.sign(u) * (u.abs() - thr).clamp_min(0)
        tn = (1 + math.sqrt(1 + 4 * t * t)) / 2
        mom = (t - 1) / tn
        t = tn
        diff2 = (wn - w).pow(2).sum(-2, keepdim=True)
        norm2 = wn.pow(2).sum(-2, keepdim=True)
        zn = wn + mom * (wn - w)
        w = torch.where(active, wn, w)
        z = torch.where(active, zn, z)
        active = active & ~(diff2 <= tol * tol * norm2)
    return w


def _dsr_backward_impl(grad, x, y, beta, max_iter, tol, chunk_size):
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):  # the forward computes these in float32
        x, y, grad = x.float(), y.float(), grad.float()
    grad = grad.to(x.dtype)
    gx = x.new_zeros(x.shape)  # contiguous whatever x's strides, as the fake kernel says
    gy = y.new_zeros(y.shape)
    M, Lq, C = x.shape
    N, Lg, _ = y.shape
    pairs = torch.nonzero(grad)  # only pairs that receive gradient: [P, 2] (a, b)
    if pairs.shape[0] == 0:
        return gx.to(out_dtype), gy.to(out_dtype)
    G_all = y @ y.transpose(1, 2)  # [N, Lg, Lg]
    lip_all = torch.linalg.eigvalsh(G_all)[..., -1].clamp_min(0)  # [N], as the forward
    rtol = _DSR_ACTIVE_RTOL.get(x.dtype, 1e-5)
    cut = 100 * Lg * torch.finfo(x.dtype).eps  # relative pivot / eigenvalue cutoff of the solve
    step = _dsr_tile_pairs(Lq, Lg, C, x.device, chunk_size)
    for p0 in range(0, pairs.shape[0], step):
        ai, bi = pairs[p0 : p0 + step, 0], pairs[p0 : p0 + step, 1]
        xs, ys, G = x[ai], y[bi], G_all[bi]  # [p, Lq, C], [p, Lg, C], [p, Lg, Lg]
        B = ys @ xs.transpose(1, 2)  # [p, Lg, Lq] = Y^T x_n per column
        w = lasso_fista(G, B, beta, lip_all[bi], max_iter, tol)  # the forward's codes, [p, Lg, Lq]
        # active set: nonzero (up to FISTA's tiny not-yet-zero entries) coefficients
        wt = w.transpose(1, 2)  # [p, Lq, Lg]
        act = wt.abs() > rtol * wt.abs().amax(-1, keepdim=True)
        act = act & (wt != 0)
        a = act.to(x.dtype)
        s = torch.sign(wt) * a
        # closed form on the active set: H_A w_A = Y_A^T x - beta s_A, H_A q_A = beta s_A
        # (q = H_A^-1 Y_A^T r by the KKT conditions); inactive rows/cols -> scale * identity, rhs 0
        scale = torch.diagonal(G, dim1=-2, dim2=-1).amax(-1).clamp_min(torch.finfo(x.dtype).tiny)  # [p]
        A = G.unsqueeze(1) * (a.unsqueeze(-1) * a.unsqueeze(-2)) + torch.diag_embed((1 - a) * scale.view(-1, 1, 1))
        rhs = torch.stack(((B.transpose(1, 2) - beta * s) * a, beta * s), -1)  # [p, Lq, Lg, 2]
        # Cholesky (A is SPD when Y_A has full column rank); a (numerically) rank-deficient
        # Y_A -- more active cells than channels, duplicate cells, an unconverged FISTA
        # active set -- is flagged by a tiny pivot and solved by the pseudo-inverse instead
        # (the Lasso fit Y w is unique even when w is not; this gives its min-norm codes)
        chol, info = torch.linalg.cholesky_ex(A)
        piv = torch.diagonal(chol, dim1=-2, dim2=-1).pow(2)
        bad = (info != 0) | (piv.amin(-1) <= cut * scale.view(-1, 1))
        sol = torch.cholesky_solve(rhs, chol)
        if bool(bad.any()):
            sol[bad] = torch.linalg.pinv(A[bad], hermitian=True, rtol=cut) @ rhs[bad]
        wA, q = sol[..., 0] * a, sol[..., 1] * a  # [p, Lq, Lg]
        r = xs - wA @ ys  # residuals x_n - Y w_n, [p, Lq, C]
        v = q @ ys  # Y q_n, [p, Lq, C]
        g = (grad[ai, bi] * (2.0 / Lq)).view(-1, 1, 1)
        gx.index_add_(0, ai, g * (r - v))
        gy.index_add_(0, bi, g * (wA.transpose(1, 2) @ v - (wA + q).transpose(1, 2) @ r))
    return gx.to(out_dtype), gy.to(out_dtype)


@torch.library.custom_op("partdist::dsr_dist_backward", mutates_args=())
def _dsr_dist_backward(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, beta: float, max_iter: int, tol: float, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return _dsr_backward_impl(grad, x, y, beta, max_iter, tol, chunk_size)


@_dsr_dist_backward.register_fake
def _(grad, x, y, beta, max_iter, tol, chunk_size):
    return contiguous_like(x), contiguous_like(y)


def _setup_dsr(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.extra = inputs[2:]


def _backward_dsr(ctx, grad):
    x, y = ctx.saved_tensors
    if grad is None:
        return (None,) * (2 + len(ctx.extra))
    gx, gy = _ops.dsr_dist_backward(grad.contiguous(), x, y, *ctx.extra)
    return (gx if ctx.needs_input_grad[0] else None, gy if ctx.needs_input_grad[1] else None) + (None,) * len(
        ctx.extra
    )


torch.library.register_autograd("partdist::dsr_dist", _backward_dsr, setup_context=_setup_dsr)


# -------------------------------------------------------------------- public API
def part_dist(
    x: torch.Tensor,
    y: torch.Tensor,
    vis_x: torch.Tensor,
    vis_y: torch.Tensor,
    chunk_size: Optional[int] = None,
    empty_value: float = math.inf,
    gemm_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Visibility-aware part distance of all pairs (every ``x[a]`` against every ``y[b]``).

    ``D[a, b] = sum_p v_p ||x[a, p] - y[b, p]||_2 / sum_p v_p`` with
    ``v_p = vis_x[a, p] * vis_y[b, p]``: the mean distance over the parts both images
    show (the part-level distance of VPM / partial-ReID methods).

    Args:
        x: ``[M, P, C]`` part features (e.g. queries); y: ``[N, P, C]`` (e.g. gallery),
            same dtype and device. float32/float64; float16/bfloat16 are computed in
            float32 and returned in their dtype.
        vis_x: ``[M, P]``, vis_y: ``[N, P]``: part visibilities, ``bool`` (visible or
            not) or floating weights, meant in ``[0, 1]`` (any weights ``>= 0`` give a
            weighted mean; they are not checked, to avoid a device sync). A part with
            weight 0 is ignored entirely, even if its features are NaN.
        chunk_size: at most this many pairs per tile (one batched GEMM of their parts
            followed by the fused kernel). ``None``/``0``: ``max(64, 2**18 // P)`` on CPU,
            ``2**24 // P`` on CUDA. Extra memory is ``P * chunk_size`` values per tile
            (per CPU thread in the forward; twice that in backward), never ``M * N * P``.
        empty_value: the distance of a pair that shares no visible part
            (``sum_p v_p == 0``). Default ``+inf``: such a pair carries no evidence, so
            it ranks after every pair that does. Any non-NaN number is allowed.
        gemm_dtype: ``None`` (default) or, for float32 features, ``torch.float16`` /
            ``torch.bfloat16``: the reduced-precision mode of :func:`partdist.local_dist`
            (features rounded once; the part GEMMs on tensor cores on CUDA; norms, result
            and gradients in float32 from the rounded values). A part distance moves by at
            most ``u (|x_p| + |y_p|)`` (``u = 2**-11`` float16, ``2**-8`` bfloat16), and so
            does their visibility-weighted mean.

    Returns:
        ``[M, N]`` in the dtype of ``x``. Differentiable in ``x`` and ``y`` and, when
        they are floating tensors that require grad, in ``vis_x`` / ``vis_y``
        (``dD/dvis_x[a, p] = vis_y[b, p] (d_p - D) / sum_p v_p``). The gradient of a pair
        without a shared visible part is 0 everywhere; where two parts coincide
        (``d_p = 0``) the subgradient 0 is used.
    """
    op = "partdist.part_dist"
    _check_parts(op, x, y)
    _check_vis(op, "vis_x", vis_x, x, "x", "M")
    _check_vis(op, "vis_y", vis_y, y, "y", "N")
    check_chunk_size(op, chunk_size if chunk_size != 0 else None)
    _check_empty_value(op, empty_value)
    gemm_dtype = check_gemm_dtype(op, gemm_dtype, x)
    vx = vis_x.to(x.dtype)
    vy = vis_y.to(x.dtype)
    return _ops.part_dist(x, y, vx, vy, float(empty_value), int(chunk_size or 0), gemm_dtype)


def dsr_dist(
    x: torch.Tensor,
    y: torch.Tensor,
    beta: float = 0.1,
    max_iter: int = 200,
    tol: float = 1e-5,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """DSR distance (He et al., CVPR 2018) of all query x gallery pairs.

    Every query cell ``x_n`` (a row of ``x[a]``) is reconstructed from the gallery's
    cells ``Y = y[b]^T`` (``C x Lg``) by the Lasso

        ``w_n = argmin_w 1/2 ||x_n - Y w||_2^2 + beta ||w||_1``   (the 1/2 is included)

    and ``D[a, b] = mean_n ||x_n - Y w_n||_2^2``: the mean squared reconstruction error
    (the paper's distance; neither the 1/2 nor ``beta ||w||_1`` is in it).

    Solver: FISTA (Beck & Teboulle) from ``w = 0``, step ``1/L`` with ``L`` the exact
    largest eigenvalue of ``Y^T Y`` (``torch.linalg.eigvalsh`` per gallery image), run
    per query cell until ``||w_k+1 - w_k||_2 <= tol * ||w_k+1||_2`` or ``max_iter``
    iterations. The Gram matrices ``Y^T Y`` and ``Y^T X`` come from GEMMs, tile by tile
    (``chunk_size`` pairs per tile; ``None``: ``2**21 // (Lg * Lq)`` on CPU, ``2**26 //
    (Lg * Lq)`` on CUDA), the iterations run in the kernel.

    Args:
        x: ``[M, Lq, C]`` query cell features; y: ``[N, Lg, C]`` gallery cell features,
            ``Lg <= MAX_DSR_CELLS``; same dtype and device.
        beta: the sparsity weight, ``>= 0`` (``0``: least squares by FISTA).

    Returns:
        ``[M, N]`` in the dtype of ``x``, differentiable in ``x`` and ``y``.

    Gradient (implicit differentiation of the Lasso). With the active set
    ``A = {k: w_k != 0}`` and signs ``s_A`` of a code held fixed, the Lasso solution is
    locally ``w_A = (Y_A^T Y_A)^-1 (Y_A^T x_n - beta s_A)``, ``w_{not A} = 0``, and ``D`` is
    differentiated through this closed form. That is the exact gradient wherever the active
    set is locally stable (almost everywhere: not where a coefficient is just entering or
    leaving, i.e. ``|Y_k^T r_n| = beta`` with ``w_k = 0``). By the KKT conditions
    (``Y_A^T r_n = beta s_A``, ``r_n = x_n - Y w_n``), with ``q = beta (Y_A^T Y_A)^-1 s_A``:
    ``dD_n/dx_n = 2 (r_n - Y q)`` and ``dD_n/dY = -2 r_n (w_n + q)^T + 2 (Y q) w_n^T``
    (zero in the columns of inactive cells; ``beta = 0`` gives ``q = 0``; ``w = 0`` gives
    ``dD/dx_n = 2 x_n / Lq``, ``dD/dy = 0``).

    The backward recomputes the codes of the pairs with a nonzero incoming gradient only,
    with a batched PyTorch FISTA run to the forward's stopping rule (same ``beta``,
    ``max_iter``, ``tol``, step ``1/L``), so the active set is the forward's (up to rounding
    differences between the kernel and the GEMMs). FISTA's soft-thresholding sets most
    inactive coefficients exactly to 0, but an unconverged iterate can carry tiny
    not-yet-zero ones: a coefficient counts as active only if
    ``|w_k| > rtol * max_k |w_k|`` of its query cell (``rtol = 1e-9`` in float64, ``1e-5``
    in float32; float16/bfloat16 are computed in float32). ``w_A`` and ``q`` then come from
    one batched masked solve per (pair, query cell), ``(G * a a^T + diag(1 - a) c) [w, q] =
    [(Y^T x_n - beta s) * a, beta s * a]`` (Cholesky; ``a`` the active mask, ``c`` a scale),
    so the gradient is that of ``D`` at the exact Lasso solution on FISTA's active set. If
    ``Y_A`` is numerically rank deficient (more active cells than channels ``C`` -- only
    possible for an unconverged FISTA, duplicate gallery cells, ...) that solve uses the
    pseudo-inverse (min-norm codes; the Lasso fit ``Y w`` is unique even then). With the
    default loose ``tol``/``max_iter`` the active set can differ from the exact Lasso's
    near the kinks, and the gradient with it; converge tighter for an exact gradient.
    Memory of the backward: tiles of pairs, each pair about ``Lq (3 Lg^2 + 12 Lg + 4 C)
    + 3 Lg C`` values, at most ``2**22`` values per tile on CPU and ``2**26`` on CUDA
    (at least one pair; ``chunk_size``, if given, also caps the pairs per tile), plus the
    ``[N, Lg, Lg]`` Gram matrices. The backward itself is not differentiable (no double
    backward).
    """
    op = "partdist.dsr_dist"
    _check_dsr(op, x, y, beta, max_iter, tol, chunk_size if chunk_size != 0 else None)
    return _ops.dsr_dist(x, y, float(beta), int(max_iter), float(tol), int(chunk_size or 0))
