"""Pieces shared by the compat shims: the GEMM-form Euclidean distance, the originals'
ranking losses, and batch-hard mining with the originals' gradient at ties.

Every function here computes what the originals' formulas compute (same arithmetic for
the distances, the installed torch's own loss functions for the hinge), only with less
work: fused forward / backward passes, one GEMM in the backward of a self-distance, and
mining that back-propagates through the ``2N`` chosen pairs instead of the ``N x N``
matrix.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..ops.mining import hard_example_mining as _mine

# clamp of the squared distance in the originals' ``dist.clamp(min=1e-12).sqrt()``
CLAMP = 1e-12


def _autocast_off(forward):
    """Run an ``autograd.Function.forward`` with autocast disabled on its input's device:
    the fused passes compute in the dtype of the tensors they are given (float32 features
    stay float32 under autocast; the backward, which autocast does not reach, then sees
    the forward's dtypes)."""

    @functools.wraps(forward)
    def wrapped(ctx, x, *args):
        dev = x.device.type
        if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return forward(ctx, x, *args)
        return forward(ctx, x, *args)

    return wrapped


# --------------------------------------------------------------- distances
def _sq_dist_(x: torch.Tensor, y: torch.Tensor, form: str = "addmm") -> torch.Tensor:
    """``||x_i||^2 + ||y_j||^2 - 2 x_i . y_j`` as the originals compute it ([m, n] or [N, m, n]).

    ``form="addmm"``: AlignedReID's / torchreid's ``(xx + yy).addmm_(x, y^T, alpha=-2)``;
    ``form="matmul"``: fast-reid's ``xx + yy - 2 * matmul(x, y^T)`` (another rounding of
    the last step, so a separate form).
    """
    xx = (x * x).sum(-1)
    yy = xx if y is x else (y * y).sum(-1)
    d = xx.unsqueeze(-1) + yy.unsqueeze(-2)  # the originals' order of operations
    if form == "matmul":
        return d.sub_(torch.matmul(x, y.transpose(-1, -2)).mul_(2))
    if x.dim() == 2:
        return d.addmm_(x, y.t(), alpha=-2)
    return d.baddbmm_(x, y.transpose(1, 2), alpha=-2)


def _clamped(d2):
    """Where the clamp of ``sqrt(clamp(d2, 1e-12))`` is active (no gradient passes): ``d2 <
    1e-12``, or ``d2 <= 0`` in float16, where 1e-12 rounds to 0 (the originals then take
    ``sqrt``'s infinite gradient at an exact 0, this its 0 subgradient)."""
    if torch.finfo(d2.dtype).smallest_normal * torch.finfo(d2.dtype).eps > CLAMP:
        return d2 <= 0
    return d2 < CLAMP


def _is_half(t):
    return t.dtype in (torch.float16, torch.bfloat16)


class _GemmEuclidean(torch.autograd.Function):
    """``sqrt(clamp(||x||^2 + ||y||^2 - 2 x.y, min=1e-12))`` with a fused backward.

    The value is the originals' formula; the backward is what autograd gives through it
    (sqrt, clamp - the gradient passes where the squared distance is >= 1e-12 - and the
    GEMM form), in two GEMMs, or one when ``x`` and ``y`` are the same tensor. Also
    returns the clamp mask (not differentiable).
    """

    @staticmethod
    @_autocast_off
    def forward(ctx, x, y, form="addmm"):
        same = y is x
        d2 = _sq_dist_(x, x if same else y, form)
        clamped = _clamped(d2)
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
            return _xgrad(x, s, x, s.sum(-1)), None, None
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = _xgrad(x, g, y, g.sum(-1))
        if ctx.needs_input_grad[1]:
            gy = _xgrad(y, g.transpose(-1, -2), x, g.sum(-2))
        return gx, gy, None


def _xgrad(x, g, y, rowsum):
    """``rowsum * x - g @ y`` (the gradient of ``sum g * d2 / 2`` w.r.t. x)."""
    if x.dim() == 2:
        return torch.addmm(x * rowsum[:, None], g, y, alpha=-1)
    return torch.baddbmm(x * rowsum[..., None], g, y, alpha=-1)


# Below this much work (output elements x channels) the plain formula (a few autograd
# nodes) is faster than a Python autograd.Function round trip; above, the fused backward
# wins (measured in benchmarks/bench_compat.py: [32, 128] x [32, 128] plain, [32, 2048]
# and [64, 128] fused).
_SMALL = 1 << 18


def _fused(x, y):
    """Whether :class:`_GemmEuclidean` beats the plain formula for these inputs."""
    return x.shape[-2] * y.shape[-2] * x.shape[-1] * (x.shape[0] if x.dim() == 3 else 1) >= _SMALL


def euclidean_dist(x: torch.Tensor, y: torch.Tensor, form: str = "addmm") -> torch.Tensor:
    """The originals' ``sqrt(clamp(xx + yy - 2 x.y, min=1e-12))``: ``[m, d] x [n, d] -> [m, n]``
    or batched ``[N, m, d] x [N, n, d] -> [N, m, n]`` (``form``: see :func:`_sq_dist_`).

    Without autograd: the formula in place. With autograd: the formula itself for small
    inputs (same nodes as the originals'), :class:`_GemmEuclidean`'s fused backward above
    :data:`_SMALL`; the same values and gradients either way.
    """
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        if _fused(x, y) or _is_half(x):  # half: the fused backward's 0 subgradient at d = 0
            return _GemmEuclidean.apply(x, y, form)[0]
        return _sq_dist_(x, y, form).clamp(min=CLAMP).sqrt()
    return _sq_dist_(x, x if y is x else y, form).clamp_min_(CLAMP).sqrt_()


def _normalized(x):
    """fast-reid's ``F.normalize(x, dim=1)``: ``x / max(||x||, 1e-12)``, and ``(||x||, den)``."""
    n = torch.linalg.vector_norm(x, 2, dim=1, keepdim=True)
    den = n.clamp_min(1e-12)
    return x / den, n, den


def _acc(t):
    """``t`` in float32 if it is float16 / bfloat16 (the per-row products of the
    normalization backward overflow float16 and lose bfloat16's few bits), else ``t``."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _normalized_grad(g, x, n, den):
    """``F.normalize``'s backward: ``g / den - x (g . x) / (den^2 ||x||)`` where ``||x|| >= 1e-12``
    (the clamp passes the gradient there), ``g / den`` elsewhere.

    Computed in float32 for half inputs and with one division at a time: ``den^2 ||x||``
    overflows float16 once ``||x||`` passes ~40 (2048-d features sit near 45).
    """
    dtype = g.dtype
    g, x, n, den = _acc(g), _acc(x), _acc(n), _acc(den)
    b = torch.where(n >= 1e-12, torch.linalg.vecdot(g, x).unsqueeze(1) / den / den / n,
                    torch.zeros((), dtype=n.dtype, device=n.device))
    return (g / den).sub_(x * b).to(dtype)


class _Cosine(torch.autograd.Function):
    """fast-reid's ``2 - 2 * normalize(x) @ normalize(y)^T`` with a fused backward (the
    ``-2`` applied to the ``[m, n]`` gradient, one GEMM per input, or one when ``x`` is
    ``y``, and ``F.normalize``'s backward in two passes)."""

    @staticmethod
    @_autocast_off
    def forward(ctx, x, y):
        same = y is x
        xn, nx, dx = _normalized(x)
        yn, ny, dy = (xn, nx, dx) if same else _normalized(y)
        ctx.same = same
        ctx.save_for_backward(x, xn, nx, dx, y, yn, ny, dy)
        return torch.mm(xn, yn.t()).mul_(-2).add_(2)

    @staticmethod
    def backward(ctx, grad):
        x, xn, nx, dx, y, yn, ny, dy = ctx.saved_tensors
        g = grad * -2
        if ctx.same:
            return _normalized_grad(torch.mm(g + g.t(), xn), x, nx, dx), None
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = _normalized_grad(torch.mm(g, yn), x, nx, dx)
        if ctx.needs_input_grad[1]:
            gy = _normalized_grad(torch.mm(g.t(), xn), y, ny, dy)
        return gx, gy


def cosine_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """fast-reid ``cosine_dist``: ``2 - 2 * normalize(x) @ normalize(y)^T`` (the same
    arithmetic: ``mm``, times -2, plus 2). With autograd above :data:`_SMALL`, through
    :class:`_Cosine`'s fused backward; below, the formula's own autograd nodes."""
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad) and _fused(x, y):
        return _Cosine.apply(x, y)
    xn = F.normalize(x, dim=1)
    yn = xn if y is x else F.normalize(y, dim=1)
    return torch.mm(xn, yn.t()).mul_(-2).add_(2)


# ------------------------------------------------------------------ losses
def _loss_dtype(t):
    """The dtype torch's own losses return for input ``t``: float32 under autocast on
    ``t``'s device (autocast runs the losses in float32), else ``t``'s dtype."""
    dev = t.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.promote_types(t.dtype, torch.float32)
    return t.dtype


def _per_anchor(dist_ap, dist_an, margin):
    """The per-anchor terms of :func:`ranking_loss` (``reduction="none"``), in float32
    for half inputs (``exp`` in the soft margin overflows float16 at a difference of 11)."""
    dist_ap, dist_an = _acc(dist_ap), _acc(dist_an)
    y = torch.ones_like(dist_an)
    if margin is None:
        return F.soft_margin_loss(dist_an - dist_ap, y, reduction="none")
    return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin, reduction="none")


def ranking_loss(dist_ap: torch.Tensor, dist_an: torch.Tensor, margin: Optional[float]) -> torch.Tensor:
    """``MarginRankingLoss(margin)(dist_an, dist_ap, 1)``, or ``SoftMarginLoss`` on
    ``dist_an - dist_ap`` for ``margin=None``: the installed torch's own functions, so the
    subgradient at the hinge point is the one of the original on this torch. Half inputs
    are computed in float32 and the loss rounded once to their dtype (float32 under
    autocast, as torch's losses there)."""
    dtype = _loss_dtype(dist_an)
    dist_ap, dist_an = _acc(dist_ap), _acc(dist_an)
    y = torch.ones_like(dist_an)
    if margin is None:
        return F.soft_margin_loss(dist_an - dist_ap, y).to(dtype)
    return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin).to(dtype)


def ranking_loss_valid(dist_ap, dist_an, valid, margin):
    """:func:`ranking_loss` averaged over the valid anchors (0 with a zero gradient when
    none is), without a host synchronization: the per-anchor terms of the installed
    torch's loss (``reduction="none"``, the same elementwise function and subgradient as
    the mean), invalid ones replaced by 0, summed and divided by the number of valid
    anchors (at least 1); for half inputs in float32, rounded once to their dtype
    (float32 under autocast, as torch's losses there)."""
    terms = _per_anchor(dist_ap, dist_an, margin)
    terms = torch.where(valid, terms, torch.zeros((), dtype=terms.dtype, device=terms.device))
    return (terms.sum() / valid.sum().clamp_min(1).to(terms.dtype)).to(_loss_dtype(dist_an))


# ------------------------------------------------------------------- mining
class Mined(NamedTuple):
    dist_ap: torch.Tensor
    dist_an: torch.Tensor
    p_inds: torch.Tensor
    n_inds: torch.Tensor
    valid: torch.Tensor


class _MinedDist(torch.autograd.Function):
    """Distance matrix of a batch with itself + batch-hard mining, one fused backward.

    ``kind="euclidean"``: the originals' ``sqrt(clamp(xx + xx^T - 2 x x^T, 1e-12))`` of ``x``
    (``"euclidean_matmul"``: fast-reid's rounding of it, see :func:`_sq_dist_`);
    ``kind="cosine"``: fast-reid's ``2 - 2 xn xn^T`` of ``xn = F.normalize(x, dim=1)``.
    Outputs ``(dist [N, N], dist_ap, dist_an, p_inds, n_inds, valid)``; ``dist_ap`` /
    ``dist_an`` are entries of ``dist`` (0 where there is none), and their gradient goes
    to those entries: to the first tied column (``split_ties=False``, ``torch.max`` /
    ``torch.min`` along a dim) or shared evenly by all tied columns (``split_ties=True``,
    a full ``max()`` / ``min()`` of the masked row). ``zero_ap``: fast-reid's
    ``max(dist * is_pos)`` picks a 0 of a non-positive column when it wins (cosine only).
    The backward is the gradient autograd gives through the formula: one ``N x N x C``
    GEMM, whatever receives gradient (the originals' autograd takes two, plus
    ``N x C`` temporaries).
    """

    @staticmethod
    @_autocast_off
    def forward(ctx, x, labels, kind, split_ties, zero_ap):
        if kind in ("euclidean", "euclidean_matmul"):
            d2 = _sq_dist_(x, x, "matmul" if kind == "euclidean_matmul" else "addmm")
            clamped = _clamped(d2)
            D = d2.clamp_min_(CLAMP).sqrt_()
        else:  # fast-reid: F.normalize (x / max(||x||, 1e-12)), then 2 - 2 xn xn^T
            xn, n, den = _normalized(x)
            D = torch.mm(xn, xn.t()).mul_(-2).add_(2)
            clamped = (xn, n, den)
        m = _mine(D, labels, True)
        ap, an, valid = m.dist_ap, m.dist_an, m.valid
        # no host synchronization: the tie weights and the zero-ap fix are computed
        # whether or not they change anything (O(N^2), against the O(N^2 C) GEMM)
        wp = wn = None
        if split_ties:
            pos = labels[:, None] == labels[None, :]
            tie_p = (D == ap[:, None]) & pos
            tie_n = (D == an[:, None]) & ~pos & valid[:, None]
            wp = tie_p.to(D.dtype) / tie_p.sum(1).clamp_min(1).to(D.dtype)[:, None]
            wn = tie_n.to(D.dtype) / tie_n.sum(1).clamp_min(1).to(D.dtype)[:, None]
        keep_ap = None
        p_inds = m.p_inds
        if zero_ap:
            # fast-reid's max(dist * is_pos, dim=1) itself: a non-positive column (0 after
            # the mask) wins where the positives are below 0 or tie at 0 later; the
            # gradient passes only where the winner is a positive column
            ap, p_inds = (D * (labels[:, None] == labels[None, :])).max(1)
            keep_ap = labels[p_inds] == labels
        ctx.kind = kind
        if kind == "cosine":
            ctx.cos = clamped
            clamped = None
        ctx.save_for_backward(x, D, clamped, p_inds, m.n_inds, valid, wp, wn, keep_ap)
        ctx.mark_non_differentiable(p_inds, m.n_inds, valid)
        ctx.set_materialize_grads(False)
        return D, ap, an, p_inds, m.n_inds, valid

    @staticmethod
    def backward(ctx, gD, g_ap, g_an, _gp, _gn, _gv):
        x, D, clamped, p_inds, n_inds, valid, wp, wn, keep_ap = ctx.saved_tensors
        G = torch.zeros_like(D) if gD is None else gD.clone()
        if g_ap is not None:
            if keep_ap is not None:
                g_ap = g_ap * keep_ap
            if wp is not None:
                G.addcmul_(wp, g_ap[:, None])
            else:
                G.scatter_add_(1, p_inds[:, None], g_ap[:, None])
        if g_an is not None:
            # no gradient to anchors without negative (n_inds -1)
            g_an = torch.where(valid, g_an, 0.0)
            n_inds = n_inds.clamp_min(0)
            if wn is not None:
                G.addcmul_(wn, g_an[:, None])
            else:
                G.scatter_add_(1, n_inds[:, None], g_an[:, None])
        if ctx.kind != "cosine":
            # d D / d d2 = 1 / (2 D), 0 where clamped; d d2 / dx brings the 2 back
            G.div_(D).masked_fill_(clamped, 0)
            S = G + G.t()
            return _xgrad(x, S, x, S.sum(1)), None, None, None, None
        xn, n, den = ctx.cos
        S = G + G.t()
        return _normalized_grad(torch.mm(S, xn).mul_(-2), x, n, den), None, None, None, None


def mined_dist(x, labels, kind="euclidean", split_ties=False, zero_ap=False) -> tuple:
    """``(dist, Mined)`` of :class:`_MinedDist` (``dist`` differentiable)."""
    D, ap, an, p, n, valid = _MinedDist.apply(x, labels, kind, split_ties, zero_ap)
    return D, Mined(ap, an, p, n, valid)


def mine_split_ties(features: torch.Tensor, labels: torch.Tensor) -> Mined:
    """Batch-hard mining on the originals' Euclidean matrix, gradient split at ties
    (torchreid's / michuanhaohao's per-anchor ``dist[i][mask[i]].max()`` and
    ``dist[i][mask[i] == 0].min()``: full reductions). Anchors without a negative get
    ``valid = False`` (the originals raise there)."""
    return mined_dist(features, labels, "euclidean", True)[1]


def mine_first_index(features: torch.Tensor, labels: torch.Tensor) -> Mined:
    """Batch-hard mining as ``torch.max`` / ``torch.min`` along a dim (AlignedReID's
    ``hard_example_mining``): ties go to the first column, which gets all the gradient."""
    return mined_dist(features, labels, "euclidean", False)[1]


class _Normalize(torch.autograd.Function):
    """``x / (||x||_2 + 1e-12)`` along the last dim, with a fused backward (one ``x``-sized
    temporary instead of the autograd chain's several)."""

    @staticmethod
    @_autocast_off
    def forward(ctx, x):
        n = torch.linalg.vector_norm(x, 2, dim=-1, keepdim=True)
        den = n + 1e-12
        ctx.save_for_backward(x, n, den)
        return x / den

    @staticmethod
    def backward(ctx, g):
        x, n, den = ctx.saved_tensors
        # d/dx [x / (||x|| + e)] = g / den - x (g . x) / (den^2 ||x||)   (0 at x = 0 as torch.norm);
        # in float32 for half inputs, one division at a time (den^2 ||x|| overflows float16)
        dtype = g.dtype
        g, x, n, den = _acc(g), _acc(x), _acc(n), _acc(den)
        gx_dot = torch.linalg.vecdot(g, x).unsqueeze(-1)
        b = torch.where(n > 0, gx_dot / den / den / n, torch.zeros((), dtype=n.dtype, device=n.device))
        return (g / den).sub_(x * b).to(dtype)


def normalize(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """AlignedReID ``normalize``: ``x / (||x||_2 + 1e-12)`` along ``axis`` (same values).

    float16 / bfloat16 ``x``: computed in float32 and rounded once to ``x``'s dtype (the
    original rounds the norm, then the quotient; its backward overflows float16)."""
    if _is_half(x):
        xf = x.float()
        return (xf / (torch.linalg.vector_norm(xf, 2, dim=axis, keepdim=True) + 1e-12)).to(x.dtype)
    if axis in (-1, x.dim() - 1) and torch.is_grad_enabled() and x.requires_grad:
        return _Normalize.apply(x)
    return x / (torch.linalg.vector_norm(x, 2, dim=axis, keepdim=True) + 1e-12)
