"""Drop-in replacements for torchreid (KaiyangZhou/deep-person-reid), computed by partdist.

Usage: ``from partdist.compat.torchreid import TripletLoss`` in place of
``from torchreid.losses import TripletLoss``.
"""

from __future__ import annotations

from torch import nn

from .._checks import check_features, check_labels, check_margin
from ..losses import mine_euclidean
from ..ops.mining import pair_loss

__all__ = ["TripletLoss", "evaluate_rank"]


class TripletLoss(nn.Module):
    """Triplet loss with hard positive / negative mining.

    Replaces torchreid ``losses/hard_mine_triplet_loss.py``: ``TripletLoss(margin=0.3)``
    with ``forward(inputs, targets)``: ``inputs [batch_size, feat_dim]`` features,
    ``targets [batch_size]`` integer labels -> scalar
    ``MarginRankingLoss(margin)(dist_an, dist_ap, 1)`` over the hardest positive (the
    anchor counts as its own positive) and hardest negative of every anchor on the
    Euclidean distances.

    Computed by the partdist mining kernel instead of torchreid's per-anchor Python loop.
    Anchors without negative (where torchreid raises) are left out of the mean; the loss
    is 0 when none is left.
    """

    def __init__(self, margin=0.3):
        super().__init__()
        check_margin("torchreid.TripletLoss", margin)
        self.margin = margin
        self.ranking_loss = nn.MarginRankingLoss(margin=margin)

    def forward(self, inputs, targets):
        op = "torchreid.TripletLoss"
        check_features(op, "inputs", inputs, "[batch_size, feat_dim]", 2)
        check_labels(op, "targets", targets, inputs.shape[0], "one label per row of inputs")
        m = mine_euclidean(inputs, targets)
        return pair_loss(m.dist_ap, m.dist_an, m.valid, self.margin)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False,
                  use_cython=True):
    """Replaces ``torchreid.metrics.evaluate_rank``: returns ``(all_cmc, mAP)``.

    Market-1501 protocol (gallery items with the query's pid and camera are dropped) or,
    with ``use_metric_cuhk03``, the CUHK03 single-shot protocol (CMC averaged over 10 random
    draws of one gallery image per identity). ``use_cython`` is accepted and ignored (this is
    NumPy). See :func:`partdist.eval.evaluate_rank` for the details and the extra options
    (devkit AP, mINP).
    """
    from ..eval.rank import evaluate_rank as _evaluate_rank

    return _evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                          use_metric_cuhk03=use_metric_cuhk03)
