"""Drop-in replacements for torchreid (KaiyangZhou/deep-person-reid), computed by partdist.

Usage: ``from partdist.compat.torchreid import TripletLoss`` in place of
``from torchreid.losses import TripletLoss``, and
``from partdist.compat.torchreid import evaluate_rank`` in place of
``from torchreid.metrics import evaluate_rank``.
"""

from __future__ import annotations

from torch import nn

from .._checks import check_features, check_labels, check_margin
from ._common import mine_split_ties, ranking_loss_valid

__all__ = ["TripletLoss", "evaluate_rank"]


class TripletLoss(nn.Module):
    """Triplet loss with hard positive / negative mining.

    Replaces torchreid ``losses/hard_mine_triplet_loss.py``: ``TripletLoss(margin=0.3)``
    with ``forward(inputs, targets)``: ``inputs [batch_size, feat_dim]`` features,
    ``targets [batch_size]`` integer labels -> scalar
    ``MarginRankingLoss(margin)(dist_an, dist_ap, 1)`` over the hardest positive (the
    anchor counts as its own positive) and hardest negative of every anchor on the
    Euclidean distances.

    Same values and gradients as torchreid's: the same distance formula
    (``sqrt(clamp(.., 1e-12))`` of the GEMM form), tied hardest samples share the
    gradient (torchreid's ``dist[i][mask[i]].max()`` is a full reduction), and the hinge
    is the installed torch's ``margin_ranking_loss``. Computed without torchreid's
    per-anchor Python loop, and backward through the chosen pairs only. Anchors without
    negative (where torchreid raises) are left out of the mean; the loss is 0 when none
    is left.
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
        m = mine_split_ties(inputs, targets)
        return ranking_loss_valid(m.dist_ap, m.dist_an, m.valid, self.margin)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False,
                  use_cython=True):
    """Replaces ``torchreid.metrics.evaluate_rank``: returns ``(all_cmc, mAP)``.

    Market-1501 protocol as torchreid: gallery items with the query's pid and camera are
    dropped, pid ``-1`` gallery items stay (as non-matches), the CMC has
    ``min(max_rank, num_gallery)`` entries. With ``use_metric_cuhk03``, the CUHK03
    single-shot protocol (CMC averaged over 10 random draws of one gallery image per
    identity). ``use_cython`` is accepted and ignored: :func:`partdist.eval.evaluate_rank`'s C++
    operator (no sort of the rows) is faster than torchreid's Cython evaluation.
    """
    from ..eval.rank import evaluate_rank as _evaluate_rank

    return _evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                          use_metric_cuhk03=use_metric_cuhk03, drop_junk=False)
