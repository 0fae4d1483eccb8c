"""Drop-in replacements for the AlignedReID code, computed by the partdist kernels.

Replaces, with the same names, signatures, argument order, shape conventions, defaults
and return tuples:

* michuanhaohao/AlignedReID: ``aligned/local_dist.py`` (``batch_euclidean_dist``,
  ``shortest_dist``, ``hard_example_mining``, ``euclidean_dist``, ``batch_local_dist``)
  and ``util/losses.py`` (``TripletLoss``, ``TripletLossAlignedReID``);
* huanghoujing/AlignedReID-Re-Production-Pytorch: ``aligned_reid/model/loss.py``
  (``normalize``, ``euclidean_dist``, ``batch_euclidean_dist``, ``shortest_dist``,
  ``local_dist``, ``batch_local_dist``, ``hard_example_mining``, ``global_loss``,
  ``local_loss``) and ``aligned_reid/model/TripletLoss.py`` (``TripletLoss``).

Usage: ``from partdist.compat.alignedreid import global_loss, local_loss, TripletLoss``
in place of the original imports.

Same behaviour as the originals: the global distances are the originals' GEMM formula
(same values, zero gradient where the clamp is active); mining picks the first of tied
columns where the original uses ``torch.max(.., dim)`` and splits the gradient among
tied entries where it uses a full ``max()`` (the feature call of ``TripletLoss``); the
margin losses are the installed torch's ``margin_ranking_loss`` / ``soft_margin_loss``
(so the hinge subgradient is the original's); indices have the labels' dtype.

Differences from the originals:

* Batches whose identities have different numbers of images work (the originals'
  ``view(N, -1)`` crashes), and so do anchors without a negative; such anchors get
  ``dist_an = 0`` / ``n_inds = -1`` from :func:`hard_example_mining` and are left out
  of the losses (0 with a zero gradient when no anchor is left).
* Stripe distances inside the local distances are ``sqrt(max(d2, 0))`` instead of
  ``sqrt(clamp(d2, 1e-12))``, with ``d2`` the GEMM form ``|x|^2 + |y|^2 - 2 x.y``. The
  two differ where ``d2`` is tiny: for (near-)identical stripes ``d2`` is a rounding
  residue of order ``eps * |x|^2`` in both, so such a cell is not 0 but up to about
  ``sqrt(eps) * |x| / 2`` (float32: ~2e-4 for unit stripes, ~5e-3 for stripes of norm
  30), in the originals as here, and the two round differently there.
* An anchor without negative (one identity in the batch) gets ``n_inds = -1`` from
  :func:`hard_example_mining` / :func:`global_loss`. This module's :func:`local_loss`
  leaves it out; the *original* ``local_loss`` would index ``local_feat[-1]`` (the last
  image) with it, so do not mix this ``global_loss`` with the original ``local_loss`` on
  batches where an identity has no negative (the original ``global_loss`` raises there).
* The losses back-propagate through the chosen pairs only (the gradient the original
  formula gives there, from explicit differences): ``O(N C)`` instead of the
  ``N x N`` matrix's GEMMs. Equal to the originals up to rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import MAX_STRIPES, check_features, check_labels, check_margin
from ..ops.dmli import batch_local_dist as _batch_local_dist
from ..ops.dmli import dmli as _dmli
from ..ops.dmli import local_dist as _local_dist
from ..ops.mining import hard_example_mining as _mine
from ._common import euclidean_dist as _euclidean
from ._common import mined_dist, ranking_loss, ranking_loss_valid
from ._common import normalize as _normalize

__all__ = [
    "normalize",
    "euclidean_dist",
    "batch_euclidean_dist",
    "shortest_dist",
    "batch_local_dist",
    "local_dist",
    "hard_example_mining",
    "TripletLoss",
    "global_loss",
    "local_loss",
    "TripletLossAlignedReID",
]


# ------------------------------------------------------------------ distances
def normalize(x, axis=-1):
    """Unit length along ``axis``: ``x / (||x||_2 + 1e-12)``.

    Replaces huanghoujing ``loss.normalize(x, axis=-1)``.
    """
    return _normalize(x, axis)


def euclidean_dist(x, y):
    """``[m, d] x [n, d] -> [m, n]`` Euclidean distances.

    Replaces ``euclidean_dist(x, y)`` (both repositories): ``sqrt(clamp(||x||^2 + ||y||^2
    - 2 x.y, min=1e-12))``, the same formula (same values, zero gradient where the clamp
    is active) with a fused backward (one GEMM when ``x`` is ``y``).
    """
    op = "alignedreid.euclidean_dist"
    check_features(op, "x", x, "[m, d]", 2)
    check_features(op, "y", y, "[n, d]", 2)
    return _euclidean(x, y)


def batch_euclidean_dist(x, y):
    """``[N, m, d] x [N, n, d] -> [N, m, n]`` Euclidean distances of aligned pairs.

    Replaces ``batch_euclidean_dist(x, y)`` (both repositories): the same batched GEMM
    formula as :func:`euclidean_dist`, with its fused backward.
    """
    op = "alignedreid.batch_euclidean_dist"
    check_features(op, "x", x, "[N, m, d]", 3)
    check_features(op, "y", y, "[N, n, d]", 3)
    if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2]:
        raise ValueError(f"{op}: y must be [N, n, d] with x's N and d ({list(x.shape)}), got {list(y.shape)}")
    return _euclidean(x, y)


def shortest_dist(dist_mat):
    """Shortest monotone path (DMLI) with the DP dimensions FIRST.

    Replaces ``shortest_dist(dist_mat)`` (both repositories): ``dist_mat`` is ``[m, n]``
    (returns a scalar) or ``[m, n, *]`` (returns ``[*]``). Computed by :func:`partdist.dmli`
    (which takes the DP dimensions last); the gradient at ties of the minimum is split in
    half as autograd through the original loop does. More than ``partdist.MAX_STRIPES``
    rows or columns take a slower path (one vectorized step per anti-diagonal, autograd
    through ``torch.minimum``, which splits ties the same way).
    """
    if not isinstance(dist_mat, torch.Tensor) or dist_mat.dim() < 2:
        raise ValueError(
            "alignedreid.shortest_dist: dist_mat must be a tensor [m, n] or [m, n, *], got "
            + (f"shape {list(dist_mat.shape)}" if isinstance(dist_mat, torch.Tensor) else type(dist_mat).__name__)
        )
    d = dist_mat.movedim((0, 1), (-2, -1))
    if d.shape[-2] > MAX_STRIPES or d.shape[-1] > MAX_STRIPES:
        return _dmli_diagonals(d)
    return _dmli(d)


def _dmli_diagonals(d):
    """Shortest monotone path of ``d [..., m, n]`` by anti-diagonals (any m, n)."""
    m, n = d.shape[-2], d.shape[-1]
    inf = torch.full(d.shape[:-2] + (1,), float("inf"), dtype=d.dtype, device=d.device)
    prev, a_prev = d[..., :1, 0], 0  # diagonal 0: cell (0, 0); a_prev = its first row index
    for k in range(1, m + n - 1):
        a, b = max(0, k - n + 1), min(k, m - 1)
        rows = torch.arange(a, b + 1, device=d.device)
        cell = d[..., rows, k - rows]
        # p[r] is cell (a_prev - 1 + r) of the previous diagonal (inf outside)
        p = torch.cat([inf, prev, inf], dim=-1)
        up = p[..., a - a_prev: b - a_prev + 1]  # (i - 1, j)
        left = p[..., a - a_prev + 1: b - a_prev + 2]  # (i, j - 1)
        prev, a_prev = torch.minimum(up, left) + cell, a
    return prev[..., 0]


def batch_local_dist(x, y):
    """``[N, m, d] x [N, n, d] -> [N]`` local (DMLI) distance of aligned pairs.

    Replaces ``batch_local_dist(x, y)`` (both repositories): normalized stripe distances
    ``(e^d - 1) / (e^d + 1)`` and the shortest path, fused in :func:`partdist.batch_local_dist`.
    """
    return _batch_local_dist(x, y, True)


def local_dist(x, y):
    """Local (DMLI) distance of all pairs: ``[M, m, d] x [N, n, d] -> [M, N]``.

    Replaces huanghoujing ``loss.local_dist(x, y)`` (torch tensors). Two 2-D tensors
    ``[m, d] x [n, d]`` give the DMLI distance of that one pair (a 0-d tensor). The numpy
    ``utils/distance.local_dist`` of both repositories (whose 2-D form computes something
    else) is in :mod:`partdist.compat.alignedreid_repro_utils` and
    :mod:`partdist.compat.alignedreid_util`. Computed tile by tile by
    :func:`partdist.local_dist`.
    """
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dim() == 2 and y.dim() == 2:
        return _local_dist(x[None], y[None], True)[0, 0]
    return _local_dist(x, y, True)


# ------------------------------------------------------------------- mining
def hard_example_mining(dist_mat, labels, return_inds=False):
    """For each anchor, the hardest positive and negative sample.

    Replaces ``hard_example_mining(dist_mat, labels, return_inds=False)`` (both
    repositories): ``dist_mat [N, N]``, ``labels [N]`` -> ``(dist_ap, dist_an)`` or, with
    ``return_inds``, ``(dist_ap, dist_an, p_inds, n_inds)``, all ``[N]``, the indices in
    the labels' dtype. The anchor is its own positive, ties go to the first index (which
    gets the gradient), as in the original.

    Unlike the original this works for any number of images per identity. An anchor
    without negative gets ``dist_an = 0`` and ``n_inds = -1`` (check ``n_inds >= 0``
    before indexing with it; :func:`partdist.hard_example_mining` also returns a
    ``valid`` mask).
    """
    m = _mine(dist_mat, labels, True)
    if return_inds:
        return m.dist_ap, m.dist_an, m.p_inds.to(labels.dtype), m.n_inds.to(labels.dtype)
    return m.dist_ap, m.dist_an


# ------------------------------------------------------------------- losses
_UNSET = object()


def _ranking(margin):
    return nn.SoftMarginLoss() if margin is None else nn.MarginRankingLoss(margin=margin)


class TripletLoss(nn.Module):
    """Triplet loss of both AlignedReID codebases (their two call conventions).

    Replaces:

    * huanghoujing ``TripletLoss(margin=None)`` with ``__call__(dist_ap, dist_an)``:
      ``MarginRankingLoss(margin)(dist_an, dist_ap, 1)``, or ``SoftMarginLoss`` on
      ``dist_an - dist_ap`` when ``margin`` is None; and
    * michuanhaohao ``TripletLoss(margin=0.3, mutual_flag=False)`` with
      ``forward(inputs, targets)``: batch-hard triplet loss of features ``[N, d]`` with
      integer labels; returns the loss, or ``(loss, dist)`` with ``mutual_flag`` (dist
      the ``[N, N]`` Euclidean distance matrix, differentiable).

    The call is told apart by ``targets``: an integer tensor means features and labels,
    a floating one means two distance vectors. The default margin is the one of the
    codebase whose convention is used: 0.3 for ``(inputs, targets)``, None (soft margin)
    for ``(dist_ap, dist_an)``; an explicit ``margin`` applies to both.

    With features, anchors without negative are left out of the mean (see the module
    docstring); with distance vectors, every given pair counts, as in the original.
    """

    def __init__(self, margin=_UNSET, mutual_flag=False):
        super().__init__()
        if margin is not _UNSET:
            check_margin("alignedreid.TripletLoss", margin)
        self._margin_arg = margin
        self.mutual = bool(mutual_flag)
        self.margin = 0.3 if margin is _UNSET else margin
        self.ranking_loss = _ranking(self.margin)

    def _margin(self, features):
        if self._margin_arg is _UNSET:
            return 0.3 if features else None
        return self._margin_arg

    def forward(self, inputs, targets):
        if isinstance(targets, torch.Tensor) and targets.is_floating_point():
            # huanghoujing: (dist_ap, dist_an)
            margin = self._margin(False)
            return ranking_loss(inputs, targets, margin)
        loss, dist = _feature_triplet("alignedreid.TripletLoss", inputs, targets, self._margin(True), self.mutual)
        return (loss, dist) if self.mutual else loss

    def _dist_loss(self, dist_ap, dist_an, valid):
        """Loss over the valid anchors of mined distance vectors (used by global_loss / local_loss)."""
        return ranking_loss_valid(dist_ap, dist_an, valid, self._margin(False))


def _feature_triplet(op, inputs, targets, margin, with_dist=False):
    """Batch-hard triplet loss of features (michuanhaohao: per-anchor masked ``max()`` /
    ``min()``, so tied hardest samples share the gradient); also the differentiable
    ``[N, N]`` distance if asked."""
    check_features(op, "inputs", inputs, "[N, d]", 2)
    check_labels(op, "targets", targets, inputs.shape[0], "one label per row of inputs")
    dist, m = mined_dist(inputs, targets, split_ties=True)
    return ranking_loss_valid(m.dist_ap, m.dist_an, m.valid, margin), (dist if with_dist else None)


def _original_margin(tri_loss):
    """``(True, margin)`` for huanghoujing's ``TripletLoss`` (a ``ranking_loss`` that is a
    ``MarginRankingLoss`` or, for ``margin=None``, a ``SoftMarginLoss``), else ``(False, None)``."""
    rl = getattr(tri_loss, "ranking_loss", None)
    if type(tri_loss).__name__ != "TripletLoss" or not hasattr(tri_loss, "margin"):
        return False, None
    if type(rl) is nn.MarginRankingLoss:
        return True, rl.margin
    if type(rl) is nn.SoftMarginLoss:
        return True, None
    return False, None


def _tri(tri_loss, dist_ap, dist_an, valid):
    """Apply a user's ``tri_loss(dist_ap, dist_an)`` to the valid anchors only.

    This module's :class:`TripletLoss` and huanghoujing's ``TripletLoss`` (recognized by
    its ``ranking_loss``) are computed by :func:`ranking_loss_valid`, without a host
    synchronization; any other callable is called on the valid anchors, which needs one
    (``valid.all()``)."""
    if isinstance(tri_loss, TripletLoss):
        return tri_loss._dist_loss(dist_ap, dist_an, valid)
    known, margin = _original_margin(tri_loss)
    if known:
        return ranking_loss_valid(dist_ap, dist_an, valid, margin)
    if bool(valid.all()):
        return tri_loss(dist_ap, dist_an)
    if not bool(valid.any()):
        return (dist_ap * 0).sum() + (dist_an * 0).sum()
    return tri_loss(dist_ap[valid], dist_an[valid])


def global_loss(tri_loss, global_feat, labels, normalize_feature=True):
    """Global triplet loss with batch-hard mining.

    Replaces huanghoujing ``global_loss(tri_loss, global_feat, labels,
    normalize_feature=True)``: ``global_feat [N, C]``, ``labels [N]`` ->
    ``(loss, p_inds, n_inds, dist_ap, dist_an, dist_mat)`` with ``dist_mat`` the
    differentiable ``[N, N]`` Euclidean distance. ``tri_loss`` is a ``TripletLoss`` (this
    module's or any object called as ``tri_loss(dist_ap, dist_an)``); it is applied to
    the valid anchors only. The loss back-propagates through the chosen pairs only
    (the gradient the formula gives there); ``dist_mat`` has the full backward.
    """
    op = "alignedreid.global_loss"
    check_features(op, "global_feat", global_feat, "[N, C]", 2)
    check_labels(op, "labels", labels, global_feat.shape[0], "one label per row of global_feat")
    if normalize_feature:
        global_feat = normalize(global_feat, axis=-1)
    dist_mat, m = mined_dist(global_feat, labels)
    loss = _tri(tri_loss, m.dist_ap, m.dist_an, m.valid)
    return loss, m.p_inds.to(labels.dtype), m.n_inds.to(labels.dtype), m.dist_ap, m.dist_an, dist_mat


def local_loss(tri_loss, local_feat, p_inds=None, n_inds=None, labels=None, normalize_feature=True):
    """Local (DMLI) triplet loss.

    Replaces huanghoujing ``local_loss(tri_loss, local_feat, p_inds=None, n_inds=None,
    labels=None, normalize_feature=True)``: ``local_feat [N, H, c]``.

    * With ``p_inds`` and ``n_inds`` (e.g. from :func:`global_loss`): the local distances
      of those pairs; returns ``(loss, dist_ap, dist_an)``. Anchors whose index is -1 are
      left out of the loss (their distance is reported as 0).
    * Otherwise the local distance mines its own hard samples with ``labels``; returns
      ``(loss, dist_ap, dist_an, dist_mat)`` with ``dist_mat`` the differentiable
      ``[N, N]`` local distance. The loss itself back-propagates through the ``2N`` chosen
      pairs only (recomputed by :func:`partdist.batch_local_dist`).
    """
    if normalize_feature:
        local_feat = normalize(local_feat, axis=-1)
    own = p_inds is None or n_inds is None
    if own:
        dist_mat = local_dist(local_feat, local_feat)
        with torch.no_grad():
            m = _mine(dist_mat.detach(), labels, True)
        p_inds, n_inds, valid = m.p_inds.to(labels.dtype), m.n_inds.to(labels.dtype), m.valid
    else:
        valid = (p_inds >= 0) & (n_inds >= 0)
    N = local_feat.shape[0]
    other = torch.cat([p_inds, n_inds]).clamp_min(0).long()
    d = _batch_local_dist(torch.cat([local_feat, local_feat]), local_feat.index_select(0, other), True)
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    dist_ap = torch.where(p_inds >= 0, d[:N], zero)
    dist_an = torch.where(n_inds >= 0, d[N:], zero)
    loss = _tri(tri_loss, dist_ap, dist_an, valid)
    if own:
        return loss, dist_ap, dist_an, dist_mat
    return loss, dist_ap, dist_an


class TripletLossAlignedReID(nn.Module):
    """Global + local triplet loss of michuanhaohao/AlignedReID.

    Replaces ``TripletLossAlignedReID(margin=0.3, mutual_flag=False)`` with
    ``forward(inputs, targets, local_features)``: ``inputs [N, d]`` global features
    (not normalized, as in the original), ``targets [N]`` labels, ``local_features
    [N, c, H]`` (channels first, as the original model outputs them). The global
    Euclidean distance mines the hard pairs, the local (DMLI) distances of those pairs
    give the local loss. Returns ``(global_loss, local_loss)``, or with ``mutual_flag``
    ``(global_loss + local_loss, dist)`` with ``dist`` the differentiable ``[N, N]``
    global distance.
    """

    def __init__(self, margin=0.3, mutual_flag=False):
        super().__init__()
        check_margin("alignedreid.TripletLossAlignedReID", margin)
        self.margin = margin
        self.ranking_loss = _ranking(margin)
        self.ranking_loss_local = _ranking(margin)
        self.mutual = bool(mutual_flag)

    def forward(self, inputs, targets, local_features):
        op = "alignedreid.TripletLossAlignedReID"
        check_features(op, "inputs", inputs, "[N, d]", 2)
        check_labels(op, "targets", targets, inputs.shape[0], "one label per row of inputs")
        check_features(op, "local_features", local_features, "[N, c, H]", 3)
        if local_features.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"{op}: local_features must hold one image per row of inputs ([{inputs.shape[0]}, c, H]), "
                f"got {list(local_features.shape)}"
            )
        dist, m = mined_dist(inputs, targets)  # the original's view-based hard_example_mining
        gl = ranking_loss_valid(m.dist_ap, m.dist_an, m.valid, self.margin)
        lf = local_features.permute(0, 2, 1)
        N = lf.shape[0]
        other = torch.cat([m.p_inds, m.n_inds]).clamp_min(0)
        d = _batch_local_dist(torch.cat([lf, lf]), lf.index_select(0, other), True)
        ll = ranking_loss_valid(d[:N], d[N:], m.valid, self.margin)
        if self.mutual:
            return gl + ll, dist
        return gl, ll
