"""Pieces shared by the compat shims: the GEMM-form Euclidean distance, the originals'
ranking losses, and batch-hard mining with the originals' gradient at ties.

Every function here computes what the originals' formulas compute (same arithmetic for
the distances, the installed torch's own loss functions for the hinge), only with less
work: fused forward / backward passes, one GEMM in the backward of a self-distance, and
mining that back-propagates through the ``2N`` chosen pairs instead of the ``N x N``
matrix.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..mining import hard_example_mining as _mine

# clamp of the squared distance in the originals' ``dist.clamp(min=1e-12).sqrt()``
CLAMP = 1e-12


# --------------------------------------------------------------- distances
def _sq_dist_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i||^2 + ||y_j||^2 - 2 x_i . y_j`` as the originals compute it ([m, n] or [N, m, n])."""
    xx = (x * x).sum(-1)
    yy = xx if y is x else (y * y).sum(-1)
    d = xx.unsqueeze(-1) + yy.unsqueeze(-2)  # the originals' order of operations
    if x.dim() == 2:
        return d.addmm_(x, y.t(), alpha=-2)
    return d.baddbmm_(x, y.transpose(1, 2), alpha=-2)


class _GemmEuclidean(torch.autograd.Function):
    """``sqrt(clamp(||x||^2 + ||y||^2 - 2 x.y, min=1e-12))`` with a fused backward.

    The value is the originals' formula; the backward is what autograd gives through it
    (sqrt, clamp - the gradient passes where the squared distance is >= 1e-12 - and the
    GEMM form), in two GEMMs, or one when ``x`` and ``y`` are the same tensor. Also
    returns the clamp mask (not differentiable).
    """

    @staticmethod
    def forward(ctx, x, y):
        same = y is x
        d2 = _sq_dist_(x, x if same else y)
        clamped = d2 < CLAMP
        d = d2.clamp_min_(CLAMP).sqrt_()
        ctx.same = same
        ctx.save_for_backward(x, y, d, clamped)
        ctx.mark_non_differentiable(clamped)
        return d, clamped

    @staticmethod
    def backward(ctx, grad, _g_clamped):
        x, y, d, clamped = ctx.saved_tensors
        # d(d)/d(d2) = 1 / (2 d), zero where the clamp is active; the factor 2 of d2's
        # gradient cancels the 1/2
        g = (grad / d).masked_fill_(clamped, 0)
        if ctx.same:
            s = g + g.transpose(-1, -2)
            return _xgrad(x, s, x, s.sum(-1)), None
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = _xgrad(x, g, y, g.sum(-1))
        if ctx.needs_input_grad[1]:
            gy = _xgrad(y, g.transpose(-1, -2), x, g.sum(-2))
        return gx, gy


def _xgrad(x, g, y, rowsum):
    """``rowsum * x - g @ y`` (the gradient of ``sum g * d2 / 2`` w.r.t. x)."""
    if x.dim() == 2:
        return torch.addmm(x * rowsum[:, None], g, y, alpha=-1)
    return torch.baddbmm(x * rowsum[..., None], g, y, alpha=-1)


# Below this many output elements the plain formula (a few autograd nodes) is faster
# than a Python autograd.Function round trip (measured in benchmarks/bench_compat.py).
_SMALL = 2048


def gemm_euclidean(x: torch.Tensor, y: torch.Tensor):
    """The originals' ``sqrt(clamp(xx + yy - 2 x.y, min=1e-12))`` and its clamp mask.

    ``[m, d] x [n, d] -> [m, n]`` or batched ``[N, m, d] x [N, n, d] -> [N, m, n]``;
    differentiable in the first output when an input requires grad.
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):
        with torch.no_grad():
            d2 = _sq_dist_(x, x if y is x else y)
            clamped = d2 < CLAMP
            return d2.clamp_min_(CLAMP).sqrt_(), clamped
    if x.shape[-2] * y.shape[-2] * (x.shape[0] if x.dim() == 3 else 1) < _SMALL:
        d2 = _sq_dist_(x, y)
        return d2.clamp(min=CLAMP).sqrt(), d2.detach() < CLAMP
    return _GemmEuclidean.apply(x, y)


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The originals' GEMM-form Euclidean distance (see :func:`gemm_euclidean`)."""
    return gemm_euclidean(x, y)[0]


def cosine_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """fast-reid ``cosine_dist``: ``2 - 2 * normalize(x) @ normalize(y)^T``."""
    xn = F.normalize(x, dim=1)
    yn = xn if y is x else F.normalize(y, dim=1)
    return torch.addmm(torch.full((), 2.0, dtype=xn.dtype, device=xn.device), xn, yn.t(), alpha=-2)


# ------------------------------------------------------------------ losses
def ranking_loss(dist_ap: torch.Tensor, dist_an: torch.Tensor, margin: Optional[float]) -> torch.Tensor:
    """``MarginRankingLoss(margin)(dist_an, dist_ap, 1)``, or ``SoftMarginLoss`` on
    ``dist_an - dist_ap`` for ``margin=None``: the installed torch's own functions, so the
    subgradient at the hinge point is the one of the original on this torch."""
    y = torch.ones_like(dist_an)
    if margin is None:
        return F.soft_margin_loss(dist_an - dist_ap, y)
    return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)


def ranking_loss_valid(dist_ap, dist_an, valid, margin):
    """:func:`ranking_loss` over the valid anchors (0 with a zero gradient when none is)."""
    if bool(valid.all()):
        return ranking_loss(dist_ap, dist_an, margin)
    if not bool(valid.any()):
        return (dist_ap * 0).sum() + (dist_an * 0).sum()
    return ranking_loss(dist_ap[valid], dist_an[valid], margin)


# ------------------------------------------------------------------- mining
class Mined(NamedTuple):
    dist_ap: torch.Tensor
    dist_an: torch.Tensor
    p_inds: torch.Tensor
    n_inds: torch.Tensor
    valid: torch.Tensor


def selected_sq_dist(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, d: torch.Tensor, clamped: torch.Tensor):
    """Entries ``(i, j)`` of the originals' matrix ``sqrt(clamp(d2, 1e-12))`` with their gradient.

    ``d`` (the originals' values, no autograd) is returned as is; the gradient is the one
    of the formula, ``(x_i - x_j) / d`` per side (0 where the clamp is active), from the
    explicit difference: ``O(len(i) C)`` backward instead of the ``N x N`` matrix's GEMMs.
    """
    diff = x.index_select(0, i) - x.index_select(0, j)
    s = (diff * diff).sum(-1)
    scale = torch.where(clamped, torch.zeros((), dtype=d.dtype, device=d.device), 0.5 / d)
    return d + (s - s.detach()) * scale


def selected_cos_dist(xn: torch.Tensor, i: torch.Tensor, j: torch.Tensor, d: torch.Tensor):
    """Entries ``(i, j)`` of ``2 - 2 xn xn^T`` (values ``d``) with their gradient through ``xn``."""
    c = -2 * (xn.index_select(0, i) * xn.index_select(0, j)).sum(-1)
    return d + (c - c.detach())


def mine_split_ties(features: torch.Tensor, labels: torch.Tensor, matrix=None) -> Mined:
    """Batch-hard mining on the originals' Euclidean matrix, gradient split at ties.

    The hardest positive of anchor i is ``dist[i][mask[i]].max()`` and the hardest
    negative ``dist[i][mask[i] == 0].min()`` (torchreid, michuanhaohao): a full
    reduction, whose gradient is shared evenly by all tied entries. The matrix is the
    originals' (same GEMM formula: the same values, so the same ties), computed without
    autograd; the gradient of the chosen entries comes from :func:`selected_sq_dist`.
    Anchors without a negative get ``valid = False`` (the originals raise there).
    ``matrix``: ``gemm_euclidean(features, features)`` if already computed.
    """
    x = features
    D, clamped = gemm_euclidean(x.detach(), x.detach()) if matrix is None else (matrix[0].detach(), matrix[1])
    with torch.no_grad():
        m = _mine(D, labels, True)
        pos = labels[:, None] == labels[None, :]
        tie_p = (D == m.dist_ap[:, None]) & pos
        tie_n = (D == m.dist_an[:, None]) & ~pos & m.valid[:, None]
        cnt_p, cnt_n = tie_p.sum(1), tie_n.sum(1)
        ties = bool((cnt_p > 1).any() | (cnt_n > 1).any())
    N = x.shape[0]
    if not ties:
        return mine_first_index(x, labels, (D, clamped), m)
    out = []
    for tie, cnt in ((tie_p, cnt_p), (tie_n, cnt_n)):
        i, j = tie.nonzero(as_tuple=True)
        w = 1.0 / cnt.to(D.dtype)[i]
        d = selected_sq_dist(x, i, j, D[i, j], clamped[i, j])
        # the tied values are equal: their weighted sum is the value, the gradient is split
        out.append(torch.zeros(N, dtype=d.dtype, device=x.device).index_add(0, i, d * w))
    return Mined(out[0], out[1], m.p_inds, m.n_inds, m.valid)


def mine_first_index(features: torch.Tensor, labels: torch.Tensor, matrix=None, mined=None) -> Mined:
    """Batch-hard mining as ``torch.max`` / ``torch.min`` along a dim (AlignedReID's
    ``hard_example_mining``): ties go to the first column, which gets all the gradient.
    Same matrix and gradient as :func:`mine_split_ties` otherwise."""
    x = features
    D, clamped = gemm_euclidean(x.detach(), x.detach()) if matrix is None else (matrix[0].detach(), matrix[1])
    with torch.no_grad():
        m = _mine(D, labels, True) if mined is None else mined
    ar = torch.arange(x.shape[0], device=x.device)
    pi, ni = m.p_inds, m.n_inds.clamp_min(0)
    ap = selected_sq_dist(x, ar, pi, D[ar, pi], clamped[ar, pi])
    an = selected_sq_dist(x, ar, ni, D[ar, ni], clamped[ar, ni])
    an = torch.where(m.valid, an, torch.zeros((), dtype=an.dtype, device=an.device))
    return Mined(ap, an, m.p_inds, m.n_inds, m.valid)
