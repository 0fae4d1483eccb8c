"""Hard-example mining references (``csrc/mining``).

What the mining kernels (:func:`partdist.hard_example_mining` / :func:`partdist.triplet_hard_loss`)
and the losses are tested and benchmarked against:

* :func:`hard_example_mining_masked`: N x M boolean masks + torch.where + max / min, any
  number of images per identity, with the kernel's conventions for anchors without
  positive / negative (value 0, index -1, valid False), ties (first column) and NaN
  (propagates, first NaN);
* :func:`hard_example_mining_loop`: the per-anchor Python loop of torchreid / AlignedReID's
  TripletLoss (values only; raises where an anchor has no negative);
* :func:`hard_example_mining_view`: AlignedReID's formula (masked select + view(N, -1)),
  which needs the same number of images for every identity;
* compositions of the losses with nn.MarginRankingLoss / nn.SoftMarginLoss.
"""

from __future__ import annotations

import torch

from .dmli import batch_local_dist_vectorized, euclidean_dist

__all__ = [
    "hard_example_mining_masked",
    "hard_example_mining_loop",
    "hard_example_mining_view",
    "triplet_from_dists",
    "triplet_hard_loss_masked",
    "triplet_loss_loop",
    "aligned_triplet_loss_vectorized",
]


def _masked_select_first(dist_mat, cand, largest):
    """Value and first column of the max (largest) / min over the ``cand`` entries of each row.

    Same order as ``torch.max`` / ``torch.min`` along a dim restricted to the candidates:
    NaN wins (first NaN), ties go to the first column. Rows without candidate: (0, -1).
    """
    if dist_mat.shape[1] == 0:
        N = dist_mat.shape[0]
        return (
            dist_mat.new_zeros(N),
            torch.full((N,), -1, dtype=torch.long, device=dist_mat.device),
            torch.zeros(N, dtype=torch.bool, device=dist_mat.device),
        )
    fill = float("-inf") if largest else float("inf")
    masked = torch.where(cand, dist_mat, torch.full_like(dist_mat, fill))
    value = masked.max(1).values if largest else masked.min(1).values
    # First candidate column holding that value (NaN matches NaN); robust to +-inf values.
    hit = cand & ((dist_mat == value[:, None]) | (dist_mat.isnan() & value.isnan()[:, None]))
    idx = hit.to(torch.int8).argmax(1)
    has = cand.any(1)
    value = torch.where(has, value, torch.zeros_like(value))
    idx = torch.where(has, idx, torch.full_like(idx, -1))
    return value, idx, has


def hard_example_mining_masked(dist_mat, labels, labels_other=None, exclude_self=False):
    """Masked PyTorch batch-hard mining: ``(dist_ap, dist_an, p_inds, n_inds, valid)``.

    ``dist_mat`` ``[N, M]``; ``labels`` ``[N]``; ``labels_other`` ``[M]`` (default:
    ``labels``, square case). Builds the ``N x M`` positive / negative masks.
    """
    lo = labels if labels_other is None else labels_other
    is_pos = labels[:, None] == lo[None, :]
    is_neg = ~is_pos
    if exclude_self:
        is_pos = is_pos & ~torch.eye(dist_mat.shape[0], dtype=torch.bool, device=dist_mat.device)
    dist_ap, p_inds, has_p = _masked_select_first(dist_mat, is_pos, largest=True)
    dist_an, n_inds, has_n = _masked_select_first(dist_mat, is_neg, largest=False)
    return dist_ap, dist_an, p_inds, n_inds, has_p & has_n


def hard_example_mining_loop(dist_mat, labels):
    """Per-anchor Python loop, as torchreid's TripletLoss: ``(dist_ap, dist_an)``.

    The anchor itself counts as a positive. Raises where an anchor has no negative.
    """
    n = dist_mat.shape[0]
    mask = labels.expand(n, n).eq(labels.expand(n, n).t())
    dist_ap, dist_an = [], []
    for i in range(n):
        dist_ap.append(dist_mat[i][mask[i]].max().unsqueeze(0))
        dist_an.append(dist_mat[i][mask[i] == 0].min().unsqueeze(0))
    return torch.cat(dist_ap), torch.cat(dist_an)


def hard_example_mining_view(dist_mat, labels, return_inds=False):
    """AlignedReID's mining formula (masked select + ``view(N, -1)``): equal K only.

    Returns ``(dist_ap, dist_an)`` or ``(dist_ap, dist_an, p_inds, n_inds)``.
    """
    N = dist_mat.size(0)
    is_pos = labels.expand(N, N).eq(labels.expand(N, N).t())
    is_neg = labels.expand(N, N).ne(labels.expand(N, N).t())
    dist_ap, rel_p = torch.max(dist_mat[is_pos].contiguous().view(N, -1), 1, keepdim=True)
    dist_an, rel_n = torch.min(dist_mat[is_neg].contiguous().view(N, -1), 1, keepdim=True)
    dist_ap, dist_an = dist_ap.squeeze(1), dist_an.squeeze(1)
    if not return_inds:
        return dist_ap, dist_an
    ind = torch.arange(N, device=labels.device).unsqueeze(0).expand(N, N)
    p_inds = torch.gather(ind[is_pos].contiguous().view(N, -1), 1, rel_p).squeeze(1)
    n_inds = torch.gather(ind[is_neg].contiguous().view(N, -1), 1, rel_n).squeeze(1)
    return dist_ap, dist_an, p_inds, n_inds


def triplet_from_dists(dist_ap, dist_an, margin=0.3):
    """``nn.MarginRankingLoss(margin)(dist_an, dist_ap, 1)``, or ``nn.SoftMarginLoss`` for ``margin=None``."""
    y = torch.ones_like(dist_an)
    if margin is None:
        return torch.nn.SoftMarginLoss()(dist_an - dist_ap, y)
    return torch.nn.MarginRankingLoss(margin=margin)(dist_an, dist_ap, y)


def triplet_hard_loss_masked(dist_mat, labels, margin=0.3, labels_other=None, exclude_self=False):
    """Masked mining followed by the ranking loss over the valid anchors (0 if none)."""
    dist_ap, dist_an, _, _, valid = hard_example_mining_masked(dist_mat, labels, labels_other, exclude_self)
    if not bool(valid.any()):
        return (dist_ap * 0).sum()
    return triplet_from_dists(dist_ap[valid], dist_an[valid], margin)


def triplet_loss_loop(inputs, targets, margin=0.3):
    """torchreid / AlignedReID ``TripletLoss.forward``: GEMM distances, per-anchor loop, MarginRankingLoss."""
    dist = euclidean_dist(inputs, inputs)
    dist_ap, dist_an = hard_example_mining_loop(dist, targets)
    return triplet_from_dists(dist_ap, dist_an, margin)


def aligned_triplet_loss_vectorized(global_feat, local_feat, labels, margin=0.3, normalize_feature=True):
    """The AlignedReID loss step as its codebases write it: ``(global_loss, local_loss)``.

    Global Euclidean distances (GEMM, clamp 1e-12), masked mining with ``view(N, -1)``
    (equal K only), local DMLI distances of the mined pairs with the vectorized cell
    loop, margin ranking losses. ``local_feat`` is ``[N, m, C]``.
    """
    if normalize_feature:
        global_feat = global_feat / (torch.norm(global_feat, 2, -1, keepdim=True) + 1e-12)
        local_feat = local_feat / (torch.norm(local_feat, 2, -1, keepdim=True) + 1e-12)
    dist_mat = euclidean_dist(global_feat, global_feat)
    dist_ap, dist_an, p_inds, n_inds = hard_example_mining_view(dist_mat, labels, return_inds=True)
    g = triplet_from_dists(dist_ap, dist_an, margin)
    l_ap = batch_local_dist_vectorized(local_feat, local_feat[p_inds])
    l_an = batch_local_dist_vectorized(local_feat, local_feat[n_inds])
    return g, triplet_from_dists(l_ap, l_an, margin)
