"""ReID losses on the partdist kernels (``nn.Module``s).

* :class:`CrossEntropyLabelSmooth` - cross entropy with label smoothing.
* :class:`TripletLoss` - batch-hard triplet loss on Euclidean distances of global features.
* :class:`AlignedTripletLoss` - the AlignedReID loss: global batch-hard triplet loss, and
  the local (DMLI) triplet loss on the pairs mined by the global distance (or on its own
  hard pairs).

Mining follows :mod:`partdist.ops.mining` (any number of images per identity; anchors
without positive or negative are left out of the mean; the loss is 0 when no anchor is
valid). How the distances are computed: the ``N x N`` distance matrix is only used to
*choose* the pairs, so it is computed without autograd (one GEMM, mined by the kernel);
the distances of the ``2N`` chosen pairs are then recomputed with autograd from
explicit differences (global: ``torch.linalg.vector_norm``, whose gradient at zero
distance is 0, so duplicated features give a finite gradient; local:
:func:`partdist.batch_local_dist`). The gradient is the one autograd gives through the
full distance matrix (only the selected entries receive gradient), at ``O(N C)``
backward cost instead of ``O(N^2 C)``.

``all_ranks=True`` mines over the global batch of all ranks of a ``torch.distributed``
process group (see :mod:`partdist.distributed`, including the note on DDP averaging).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_features, check_labels, check_margin
from .distributed import all_gather_with_grad, is_distributed
from .ops.dmli import batch_local_dist, local_dist
from .ops.mining import HardMining, hard_example_mining, pair_loss

__all__ = [
    "CrossEntropyLabelSmooth",
    "TripletLoss",
    "AlignedTripletLoss",
    "AlignedTripletResult",
    "normalize_features",
    "mine_euclidean",
]


def normalize_features(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """``x / (||x||_2 + 1e-12)`` along ``axis`` (AlignedReID's ``normalize``)."""
    return x / (torch.linalg.vector_norm(x, 2, dim=axis, keepdim=True) + 1e-12)


def _pair_dist(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``||x[i] - x[idx[i]]||`` with autograd (0 and no gradient where idx is -1)."""
    # index_select: its backward (index_add) is much cheaper on CPU than advanced indexing's
    d = torch.linalg.vector_norm(x - x.index_select(0, idx.clamp_min(0)), 2, dim=-1)
    return torch.where(idx >= 0, d, torch.zeros((), dtype=d.dtype, device=d.device))


def mine_euclidean(features: torch.Tensor, labels: torch.Tensor, exclude_self: bool = False) -> HardMining:
    """Batch-hard mining on the Euclidean distances of ``features`` ``[N, C]``.

    The pairs are chosen on a GEMM-expanded distance matrix computed without autograd;
    ``dist_ap`` / ``dist_an`` of the returned :class:`HardMining` are recomputed with
    autograd from explicit differences (finite gradient at zero distance).
    """
    with torch.no_grad():
        x = features.detach()
        sq = (x * x).sum(1)
        # ||x_i - x_j||^2 - ||x_i||^2: row i's order is that of the distances (the row
        # constant is left out); clamping is not needed for the order.
        d = torch.addmm(sq[None, :], x, x.t(), alpha=-2)
        m = hard_example_mining(d, labels, exclude_self=exclude_self)
    return HardMining(_pair_dist(features, m.p_inds), _pair_dist(features, m.n_inds), m.p_inds, m.n_inds, m.valid)


def _gather(all_ranks, group, *tensors):
    if not (all_ranks and is_distributed(group)):
        return tensors
    return tuple(all_gather_with_grad(t, group) for t in tensors)


class CrossEntropyLabelSmooth(nn.Module):
    """Cross entropy with label smoothing: targets ``(1 - epsilon) * onehot + epsilon / num_classes``.

    ``forward(inputs [N, num_classes] logits, targets [N] int) -> scalar``: the mean
    over the batch of ``-sum_k target_k * log_softmax(inputs)_k`` (AlignedReID /
    torchreid ``CrossEntropyLabelSmooth``; computed by ``F.cross_entropy`` with
    ``label_smoothing``).
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"CrossEntropyLabelSmooth: num_classes must be a positive int, got {num_classes!r}")
        if not (0.0 <= float(epsilon) <= 1.0):
            raise ValueError(f"CrossEntropyLabelSmooth: epsilon must lie in [0, 1], got {epsilon!r}")
        self.num_classes = num_classes
        self.epsilon = float(epsilon)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        op = "CrossEntropyLabelSmooth"
        check_features(op, "inputs", inputs, "[N, num_classes]", 2)
        if inputs.shape[1] != self.num_classes:
            raise ValueError(
                f"{op}: inputs must have shape [N, {self.num_classes}] (num_classes), got {list(inputs.shape)}"
            )
        check_labels(op, "targets", targets, inputs.shape[0], "one class index per row of inputs")
        return F.cross_entropy(inputs, targets.long(), label_smoothing=self.epsilon)

    def extra_repr(self):
        return f"num_classes={self.num_classes}, epsilon={self.epsilon}"


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on the Euclidean distances of global features.

    Args:
        margin: float margin (``max(0, d_ap - d_an + margin)``), or ``None`` for the soft
            margin ``log(1 + exp(d_ap - d_an))``.
        normalize_feature: L2-normalize the features first (``x / (||x|| + 1e-12)``).
        all_ranks: mine over the global batch of all ranks (``torch.distributed``); the
            returned loss is the global one on every rank. Falls back to the local batch
            when no process group is initialized.
        process_group: the group for ``all_ranks`` (default: the world).

    ``forward(features [N, C], labels [N], return_mining=False)`` returns the mean over the
    valid anchors (0 if none), or ``(loss, HardMining)`` (on the global batch with
    ``all_ranks``). The anchor itself counts as a positive, as in AlignedReID / torchreid.
    """

    def __init__(
        self,
        margin: Optional[float] = 0.3,
        normalize_feature: bool = False,
        all_ranks: bool = False,
        process_group=None,
    ):
        super().__init__()
        check_margin("TripletLoss", margin)
        self.margin = None if margin is None else float(margin)
        self.normalize_feature = bool(normalize_feature)
        self.all_ranks = bool(all_ranks)
        self.process_group = process_group

    def forward(self, features: torch.Tensor, labels: torch.Tensor, return_mining: bool = False):
        op = "TripletLoss"
        check_features(op, "features", features, "[N, C]", 2)
        check_labels(op, "labels", labels, features.shape[0], "one label per row of features")
        if labels.device != features.device:
            raise ValueError(f"{op}: labels must be on the device of features ({features.device}), got {labels.device}")
        if self.normalize_feature:
            features = normalize_features(features)
        features, labels = _gather(self.all_ranks, self.process_group, features, labels)
        m = mine_euclidean(features, labels)
        loss = pair_loss(m.dist_ap, m.dist_an, m.valid, self.margin)
        return (loss, m) if return_mining else loss

    def extra_repr(self):
        return f"margin={self.margin}, normalize_feature={self.normalize_feature}, all_ranks={self.all_ranks}"


class AlignedTripletResult(NamedTuple):
    """Output of :class:`AlignedTripletLoss`."""

    global_loss: torch.Tensor
    local_loss: torch.Tensor
    global_mining: HardMining  #: mined on the global distance (differentiable dist_ap / dist_an)
    local_mining: HardMining  #: local DMLI distances of the pairs the local loss used


class AlignedTripletLoss(nn.Module):
    """The AlignedReID triplet loss (global + local, DMLI).

    The global Euclidean distance mines the hardest positive / negative of every anchor;
    the local loss is the triplet loss on the DMLI local distances
    (:func:`partdist.batch_local_dist`, normalized stripe distances) of those same pairs.
    With ``own_hard_samples=True`` the local loss mines its own pairs on the full ``N x N``
    local distance (:func:`partdist.local_dist`, computed without autograd; the chosen
    pairs are then recomputed with autograd).

    Args:
        margin: float, or ``None`` for the soft margin (both losses).
        normalize_feature: L2-normalize global features and each local stripe (over C).
        own_hard_samples: see above.
        all_ranks, process_group: mine over the global batch of all ranks, as
            :class:`TripletLoss`.
        gamma: ``> 0`` uses soft-DMLI (:func:`partdist.dmli` with a smoothed minimum)
            for the local distances; ``0`` (default) is DMLI.

    ``forward(global_feat [N, C], labels [N], local_feat [N, m, Cl])`` returns
    :class:`AlignedTripletResult` ``(global_loss, local_loss, global_mining, local_mining)``.
    """

    def __init__(
        self,
        margin: Optional[float] = 0.3,
        normalize_feature: bool = True,
        own_hard_samples: bool = False,
        all_ranks: bool = False,
        process_group=None,
        gamma: float = 0.0,
    ):
        super().__init__()
        check_margin("AlignedTripletLoss", margin)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0 or gamma == float("inf"):
            raise ValueError(f"AlignedTripletLoss: gamma must be a finite number >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.margin = None if margin is None else float(margin)
        self.normalize_feature = bool(normalize_feature)
        self.own_hard_samples = bool(own_hard_samples)
        self.all_ranks = bool(all_ranks)
        self.process_group = process_group

    def forward(self, global_feat: torch.Tensor, labels: torch.Tensor, local_feat: torch.Tensor) -> AlignedTripletResult:
        op = "AlignedTripletLoss"
        check_features(op, "global_feat", global_feat, "[N, C]", 2)
        N = global_feat.shape[0]
        check_labels(op, "labels", labels, N, "one label per row of global_feat")
        check_features(op, "local_feat", local_feat, "[N, m, C]", 3)
        if local_feat.shape[0] != N:
            raise ValueError(
                f"{op}: local_feat must hold one image per row of global_feat ([{N}, m, C]), got {list(local_feat.shape)}"
            )
        if local_feat.shape[1] < 1:
            raise ValueError(f"{op}: local_feat must have at least one stripe (dim 1 of [N, m, C])")
        for name, t in (("labels", labels), ("local_feat", local_feat)):
            if t.device != global_feat.device:
                raise ValueError(f"{op}: {name} must be on the device of global_feat ({global_feat.device}), got {t.device}")
        if self.normalize_feature:
            global_feat = normalize_features(global_feat)
            local_feat = normalize_features(local_feat)
        global_feat, local_feat, labels = _gather(self.all_ranks, self.process_group, global_feat, local_feat, labels)

        g = mine_euclidean(global_feat, labels)
        global_loss = pair_loss(g.dist_ap, g.dist_an, g.valid, self.margin)

        if self.own_hard_samples:
            with torch.no_grad():
                lf = local_feat.detach()
                lm = hard_example_mining(local_dist(lf, lf), labels)
            p_inds, n_inds, valid = lm.p_inds, lm.n_inds, lm.valid
        else:
            p_inds, n_inds, valid = g.p_inds, g.n_inds, g.valid
        # Both pair sets in one fused call: anchors against [positives; negatives].
        n = local_feat.shape[0]
        other = torch.cat([p_inds, n_inds]).clamp_min(0)
        d = batch_local_dist(torch.cat([local_feat, local_feat]), local_feat.index_select(0, other), gamma=self.gamma)
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        l_ap = torch.where(p_inds >= 0, d[:n], zero)
        l_an = torch.where(n_inds >= 0, d[n:], zero)
        local_loss = pair_loss(l_ap, l_an, valid, self.margin)
        return AlignedTripletResult(global_loss, local_loss, g, HardMining(l_ap, l_an, p_inds, n_inds, valid))

    def extra_repr(self):
        return (
            f"margin={self.margin}, normalize_feature={self.normalize_feature}, "
            f"own_hard_samples={self.own_hard_samples}, all_ranks={self.all_ranks}"
        )
