"""Batch-hard example mining and the fused batch-hard triplet loss.

The compiled kernels are registered in C++ as ``torch.ops.partdist.hard_example_mining``,
``torch.ops.partdist.triplet_hard_loss`` and their shared backward
``torch.ops.partdist.hard_example_mining_backward``, with their autograd
(``csrc/mining/mining_autograd.cpp``); this module adds their fake (meta) implementations for
``torch.compile`` and the public functions.

Conventions (the same on CPU and CUDA)
--------------------------------------
* Row ``i`` of ``dist_mat`` is anchor ``i``. Column ``j`` is a *positive* of anchor ``i``
  when ``labels_other[j] == labels[i]`` (``labels_other`` defaults to ``labels`` for a
  square matrix), a *negative* otherwise. In the square case the anchor itself is a
  positive (as in AlignedReID, torchreid and BoT code) unless ``exclude_self=True``.
* ``dist_ap[i]`` is the largest distance to a positive, ``dist_an[i]`` the smallest to a
  negative; ``p_inds`` / ``n_inds`` their columns. Ties go to the first column, as
  ``torch.max`` / ``torch.min`` along a dim. Any number of images per identity works.
* A NaN distance among the candidates is selected (the first NaN), as ``torch.max`` /
  ``torch.min`` do: NaN propagates into ``dist_ap`` / ``dist_an`` and the loss.
* An anchor without positive (only possible with ``exclude_self=True`` or an ``[N, M]``
  matrix) or without negative (every candidate has its label) has ``valid[i] = False``,
  and on the missing side value ``0`` and index ``-1``. The existing side is still
  filled in. Losses exclude invalid anchors, and are ``0`` (with a zero gradient) when
  no anchor is valid.
* The gradient reaches only the selected entries ``dist_mat[i, p_inds[i]]`` and
  ``dist_mat[i, n_inds[i]]``. Double backward is not supported.
* One pass per row with the label test inside the kernel: no ``N x M`` mask is built.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import _C  # noqa: F401  (loads the shared library: registers torch.ops.partdist.*)
from .._checks import check_margin, check_mining
from ._library import autocast_to_float32

__all__ = ["HardMining", "hard_example_mining", "triplet_hard_loss"]

_ops = torch.ops.partdist


class HardMining(NamedTuple):
    """Result of :func:`hard_example_mining` (all ``[N]``)."""

    dist_ap: torch.Tensor  #: distance to the hardest positive (0 where there is none)
    dist_an: torch.Tensor  #: distance to the hardest negative (0 where there is none)
    p_inds: torch.Tensor  #: int64 column of the hardest positive, -1 where there is none
    n_inds: torch.Tensor  #: int64 column of the hardest negative, -1 where there is none
    valid: torch.Tensor  #: bool, the anchor has both a positive and a negative


class HardMiningDists(NamedTuple):
    """Result of :func:`hard_example_mining` with ``return_inds=False``."""

    dist_ap: torch.Tensor
    dist_an: torch.Tensor
    valid: torch.Tensor


# ------------------------------------------------------------------ fake kernels
def _fake_mining(dist, labels, labels_other, exclude_self, op):
    check_mining(op, dist, labels, labels_other, exclude_self)
    N = dist.shape[0]
    return (
        dist.new_empty((N,)),
        dist.new_empty((N,)),
        dist.new_empty((N,), dtype=torch.int64),
        dist.new_empty((N,), dtype=torch.int64),
        dist.new_empty((N,), dtype=torch.bool),
    )


@torch.library.register_fake("partdist::hard_example_mining")
def _(dist, labels, labels_other=None, exclude_self=False):
    return _fake_mining(dist, labels, labels_other, exclude_self, "partdist.hard_example_mining")


@torch.library.register_fake("partdist::triplet_hard_loss")
def _(dist, labels, labels_other=None, margin=0.3, exclude_self=False):
    out = _fake_mining(dist, labels, labels_other, exclude_self, "partdist.triplet_hard_loss")
    return (dist.new_empty(()),) + out


@torch.library.register_fake("partdist::hard_example_mining_backward")
def _(grad_loss, grad_ap, grad_an, dist_ap, dist_an, p_inds, n_inds, valid, margin, num_cols):
    return dist_ap.new_empty((dist_ap.shape[0], num_cols))


# under torch.autocast: float32 in and out (the hinge sees float32 distances)
autocast_to_float32("hard_example_mining", "triplet_hard_loss")


# ---------------------------------------------------------------------- autograd
# Registered in C++ (csrc/mining/mining_autograd.cpp): the ops run in every training step on
# small matrices, where a Python setup_context / backward per call costs more than the kernels.


# -------------------------------------------------------------------- public API
def hard_example_mining(
    dist_mat: torch.Tensor,
    labels: torch.Tensor,
    return_inds: bool = True,
    *,
    labels_other: Optional[torch.Tensor] = None,
    exclude_self: bool = False,
):
    """Hardest positive and hardest negative of every anchor (batch-hard mining).

    Args:
        dist_mat: ``[N, N]`` distances of a batch to itself, or ``[N, M]`` distances
            of N anchors to M candidates (then ``labels_other`` is required).
            float32 / float64 (float16 / bfloat16 are accepted too), any strides.
        labels: ``[N]`` integer identities of the rows.
        return_inds: also return ``p_inds`` / ``n_inds``.
        labels_other: ``[M]`` integer identities of the columns.
        exclude_self: square case only: column ``i`` is not a positive of row ``i``
            (a singleton identity then has no positive and is invalid).

    Returns:
        :class:`HardMining` ``(dist_ap, dist_an, p_inds, n_inds, valid)``, or
        :class:`HardMiningDists` ``(dist_ap, dist_an, valid)`` with
        ``return_inds=False``. ``dist_ap`` / ``dist_an`` are differentiable: the
        gradient goes to ``dist_mat[i, p_inds[i]]`` / ``dist_mat[i, n_inds[i]]`` only.
        See the module docstring for ties, NaN and anchors without positive / negative.
    """
    op = "partdist.hard_example_mining"
    check_mining(op, dist_mat, labels, labels_other, exclude_self)
    out = HardMining(*_ops.hard_example_mining(dist_mat, labels, labels_other, exclude_self))
    if return_inds:
        return out
    return HardMiningDists(out.dist_ap, out.dist_an, out.valid)


def triplet_hard_loss(
    dist_mat: torch.Tensor,
    labels: torch.Tensor,
    margin: Optional[float] = 0.3,
    *,
    labels_other: Optional[torch.Tensor] = None,
    exclude_self: bool = False,
    return_mining: bool = False,
):
    """Batch-hard triplet loss from a distance matrix: fused mining + margin ranking loss.

    Per valid anchor ``i`` with ``z = dist_ap[i] - dist_an[i]``:

    * ``margin`` a float: ``max(0, z + margin)`` (``nn.MarginRankingLoss(margin)`` with
      ``y = 1`` on ``(dist_an, dist_ap)``); at the hinge point ``z + margin == 0`` the
      subgradient 0 is used (as ``torch.relu``; ``nn.MarginRankingLoss`` does the same
      from torch 2.14 on, torch 2.13 used 1 there);
    * ``margin=None``: the soft margin ``log(1 + exp(z))`` (``nn.SoftMarginLoss`` on
      ``dist_an - dist_ap``), evaluated without overflow.

    The loss is the mean over the valid anchors, 0 when none is valid (its gradient is
    then zero). One kernel call computes mining and per-anchor losses; the backward
    writes the gradient of the two selected entries per row.

    Args:
        dist_mat, labels, labels_other, exclude_self: as in :func:`hard_example_mining`.
        margin: float margin, or ``None`` for the soft margin.
        return_mining: also return the :class:`HardMining` result.

    Returns:
        The scalar loss (dtype of ``dist_mat``), or ``(loss, HardMining)``.
    """
    op = "partdist.triplet_hard_loss"
    check_mining(op, dist_mat, labels, labels_other, exclude_self)
    check_margin(op, margin)
    m = None if margin is None else float(margin)
    loss, *rest = _ops.triplet_hard_loss(dist_mat, labels, labels_other, m, exclude_self)
    if return_mining:
        return loss, HardMining(*rest)
    return loss


def pair_loss(dist_ap: torch.Tensor, dist_an: torch.Tensor, valid: torch.Tensor, margin: Optional[float]):
    """Triplet loss on given ``(dist_ap, dist_an)`` pairs, mean over ``valid`` (0 if none).

    The formula of :func:`triplet_hard_loss` for distances that were not mined by it
    (e.g. local DMLI distances of the pairs mined on global features). Plain torch ops.
    """
    z = dist_ap - dist_an
    if margin is None:
        per = torch.nn.functional.softplus(z)
    else:
        per = torch.relu(z + margin)  # subgradient 0 at the hinge point, as the kernel
    per = torch.where(valid, per, torch.zeros((), dtype=per.dtype, device=per.device))
    return per.sum() / valid.sum().clamp_min(1).to(per.dtype)
