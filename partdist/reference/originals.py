"""The functions :mod:`partdist.compat` replaces, written from the public code's semantics.

What the compat tests (``tests/compat/``) check against and ``benchmarks/bench_compat.py``
times against, in one place: AlignedReID-Re-Production-Pytorch ``aligned_reid/model/loss.py``
and michuanhaohao/AlignedReID ``util/losses.py``, torchreid
``losses/hard_mine_triplet_loss.py`` and ``metrics/rank.py``, fast-reid 1.4
``modeling/losses/{triplet_loss,utils}.py`` and ``evaluation/rank.py``. They run on the
installed torch, so a comparison holds for whatever subgradient this torch's losses
use. No third-party code is copied; the formulas (op order included, which fixes the
rounding) are the originals'.

Where an original is already a reference of its family it is reused: ``shortest_dist``,
``batch_local_dist``, ``local_dist``, ``hard_example_mining`` (AlignedReID's view-based
mining) and ``torchreid_triplet_loss`` (the per-anchor loop). ``euclidean_dist`` and
``batch_euclidean_dist`` are written here with the originals' in-place ``addmm_`` /
``baddbmm_`` (the references of :mod:`partdist.reference.dmli` allocate one more
matrix), so that the benchmark times what the originals do.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .dmli import batch_local_dist_vectorized, local_dist_vectorized
from .dmli import shortest_dist as shortest_dist
from .mining import hard_example_mining_view, triplet_loss_loop

__all__ = [
    # AlignedReID (both repositories)
    "normalize", "euclidean_dist", "batch_euclidean_dist", "shortest_dist", "batch_local_dist", "local_dist",
    "hard_example_mining", "TripletLoss", "global_loss", "local_loss", "aligned_triplet_loss",
    # torchreid
    "torchreid_triplet_loss", "eval_market1501",
    # fast-reid
    "fastreid_cosine_dist", "fastreid_triplet_loss",
]

batch_local_dist = batch_local_dist_vectorized  # AlignedReID batch_local_dist
local_dist = local_dist_vectorized  # AlignedReID-Re-Production local_dist
torchreid_triplet_loss = triplet_loss_loop  # torchreid TripletLoss.forward (masked per-anchor max() / min())


# --------------------------------------------------------------- AlignedReID
def euclidean_dist(x, y):
    """AlignedReID / torchreid / fast-reid ``euclidean_dist``: ``[m, d] x [n, d] -> [m, n]``."""
    m, n = x.size(0), y.size(0)
    xx = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n)
    yy = torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
    dist = xx + yy
    dist.addmm_(x, y.t(), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def batch_euclidean_dist(x, y):
    """AlignedReID ``batch_euclidean_dist``: ``[N, m, d] x [N, n, d] -> [N, m, n]``."""
    N, m, d = x.size()
    n = y.size(1)
    xx = torch.pow(x, 2).sum(-1, keepdim=True).expand(N, m, n)
    yy = torch.pow(y, 2).sum(-1, keepdim=True).expand(N, n, m).permute(0, 2, 1)
    dist = xx + yy
    dist.baddbmm_(x, y.permute(0, 2, 1), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def normalize(x, axis=-1):
    """AlignedReID ``normalize``: ``x / (||x||_2 + 1e-12)``."""
    return 1.0 * x / (torch.norm(x, 2, axis, keepdim=True).expand_as(x) + 1e-12)


def hard_example_mining(dist_mat, labels, return_inds=False):
    """AlignedReID ``hard_example_mining`` (``view(N, -1)``: equal K); indices in the labels' dtype."""
    out = hard_example_mining_view(dist_mat, labels, return_inds)
    if not return_inds:
        return out
    ap, an, p, n = out
    return ap, an, p.to(labels.dtype), n.to(labels.dtype)


class TripletLoss:
    """huanghoujing ``TripletLoss(margin)``: ``MarginRankingLoss`` on ``(dist_an, dist_ap)``,
    ``SoftMarginLoss`` on ``dist_an - dist_ap`` for ``margin=None``."""

    def __init__(self, margin=None):
        self.margin = margin
        self.ranking_loss = torch.nn.MarginRankingLoss(margin=margin) if margin is not None else torch.nn.SoftMarginLoss()

    def __call__(self, dist_ap, dist_an):
        y = dist_an.new().resize_as_(dist_an).fill_(1)
        if self.margin is not None:
            return self.ranking_loss(dist_an, dist_ap, y)
        return self.ranking_loss(dist_an - dist_ap, y)


def global_loss(tri_loss, global_feat, labels, normalize_feature=True):
    """huanghoujing ``global_loss``: ``(loss, p_inds, n_inds, dist_ap, dist_an, dist_mat)``."""
    if normalize_feature:
        global_feat = normalize(global_feat, axis=-1)
    dist_mat = euclidean_dist(global_feat, global_feat)
    dist_ap, dist_an, p_inds, n_inds = hard_example_mining(dist_mat, labels, return_inds=True)
    loss = tri_loss(dist_ap, dist_an)
    return loss, p_inds, n_inds, dist_ap, dist_an, dist_mat


def local_loss(tri_loss, local_feat, p_inds=None, n_inds=None, labels=None, normalize_feature=True):
    """huanghoujing ``local_loss``: ``(loss, dist_ap, dist_an)`` or, mining its own pairs,
    ``(loss, dist_ap, dist_an, dist_mat)``."""
    if normalize_feature:
        local_feat = normalize(local_feat, axis=-1)
    if p_inds is None or n_inds is None:
        dist_mat = local_dist(local_feat, local_feat)
        dist_ap, dist_an = hard_example_mining(dist_mat, labels, return_inds=False)
        return tri_loss(dist_ap, dist_an), dist_ap, dist_an, dist_mat
    dist_ap = batch_local_dist(local_feat, local_feat[p_inds])
    dist_an = batch_local_dist(local_feat, local_feat[n_inds])
    return tri_loss(dist_ap, dist_an), dist_ap, dist_an


def aligned_triplet_loss(inputs, targets, local_features, margin=0.3):
    """michuanhaohao ``TripletLossAlignedReID.forward`` (``mutual_flag=False``):
    ``(global_loss, local_loss)``; ``local_features [N, c, H]``."""
    ranking = torch.nn.MarginRankingLoss(margin=margin)
    dist = euclidean_dist(inputs, inputs)
    dist_ap, dist_an, p_inds, n_inds = hard_example_mining(dist, targets, return_inds=True)
    local_features = local_features.permute(0, 2, 1)
    local_dist_ap = batch_local_dist(local_features, local_features[p_inds])
    local_dist_an = batch_local_dist(local_features, local_features[n_inds])
    y = torch.ones_like(dist_an)
    return ranking(dist_an, dist_ap, y), ranking(local_dist_an, local_dist_ap, y)


# ------------------------------------------------------------------ fast-reid
def fastreid_cosine_dist(x, y):
    """fast-reid ``cosine_dist``: ``2 - 2 * normalize(x) @ normalize(y)^T``."""
    x = F.normalize(x, dim=1)
    y = F.normalize(y, dim=1)
    return 2 - 2 * torch.mm(x, y.t())


def _softmax_weights(dist, mask):
    max_v = torch.max(dist * mask, dim=1, keepdim=True)[0]
    diff = dist - max_v
    Z = torch.sum(torch.exp(diff) * mask, dim=1, keepdim=True) + 1e-6
    return torch.exp(diff) * mask / Z


def fastreid_triplet_loss(embedding, targets, margin, norm_feat, hard_mining):
    """fast-reid ``triplet_loss``: masked hard mining (or softmax-weighted mining),
    margin ranking loss for ``margin > 0``, else soft margin falling back to 0.3 on Inf."""
    dist_mat = fastreid_cosine_dist(embedding, embedding) if norm_feat else euclidean_dist(embedding, embedding)
    N = dist_mat.size(0)
    is_pos = targets.view(N, 1).expand(N, N).eq(targets.view(N, 1).expand(N, N).t()).float()
    is_neg = targets.view(N, 1).expand(N, N).ne(targets.view(N, 1).expand(N, N).t()).float()
    if hard_mining:
        dist_ap, _ = torch.max(dist_mat * is_pos, dim=1)
        dist_an, _ = torch.min(dist_mat * is_neg + is_pos * 1e9, dim=1)
    else:
        dist_ap = dist_mat * is_pos
        dist_an = dist_mat * is_neg
        dist_ap = torch.sum(dist_ap * _softmax_weights(dist_ap, is_pos), dim=1)
        dist_an = torch.sum(dist_an * _softmax_weights(-dist_an, is_neg), dim=1)
    y = dist_an.new().resize_as_(dist_an).fill_(1)
    if margin > 0:
        return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)
    loss = F.soft_margin_loss(dist_an - dist_ap, y)
    if loss == float("Inf"):
        loss = F.margin_ranking_loss(dist_an, dist_ap, y, margin=0.3)
    return loss


# ----------------------------------------------------------------- ranking
def eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, kind="quicksort"):
    """torchreid / fast-reid ``eval_market1501`` (the Python version): ``(cmc, all_AP, all_INP)``.

    ``kind``: the ``np.argsort`` kind; the originals use the default (``"quicksort"``,
    order of ties unspecified); ``"stable"`` breaks ties by gallery order, as
    :func:`partdist.eval.evaluate_rank` does.
    """
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1, kind=kind)
    all_cmc, all_AP, all_INP = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid, q_camid = q_pids[q_idx], q_camids[q_idx]
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)
        raw_cmc = (g_pids[order] == q_pid).astype(np.int32)[keep]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        max_pos_idx = np.max(np.where(raw_cmc == 1))
        all_INP.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
        all_AP.append(tmp_cmc.sum() / num_rel)
    all_cmc = np.asarray(all_cmc).astype(np.float32)
    return all_cmc.sum(0) / num_valid_q, all_AP, all_INP


def fastreid_evaluate_roc(distmat, q_pids, g_pids, q_camids, g_camids, kind="quicksort"):
    """fast-reid ``evaluate_roc_py``: per query (same pid and camera dropped) the distances of
    the matches in ranked order, then those of the non-matches; labels 0 / 1."""
    indices = np.argsort(distmat, axis=1, kind=kind)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    pos, neg = [], []
    for q_idx in range(distmat.shape[0]):
        order = indices[q_idx]
        keep = np.invert((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx]))
        raw_cmc = matches[q_idx][keep]
        sort_idx = order[keep]
        q_dist = distmat[q_idx]
        pos.extend(q_dist[sort_idx[np.where(raw_cmc == 1)[0]]])
        neg.extend(q_dist[sort_idx[np.where(raw_cmc == 0)[0]]])
    return np.hstack((pos, neg)), np.hstack((np.zeros(len(pos)), np.ones(len(neg))))


def _k_reciprocal_neigh(initial_rank, i, k1):
    forward = initial_rank[i, : k1 + 1]
    backward = initial_rank[forward, : k1 + 1]
    return forward[np.where(backward == i)[0]]


def fastreid_compute_jaccard_distance(features, k1=20, k2=6):
    """fast-reid ``compute_jaccard_distance`` with the faiss search replaced by a brute-force
    k1-nearest search (squared L2, stable order): dense ``V``, per-row loops."""
    features = torch.as_tensor(features)
    N = features.size(0)
    d2 = euclidean_dist(features, features).pow(2)  # only the order is used
    initial_rank = np.argsort(d2.double().numpy(), axis=1, kind="stable")[:, :k1]
    nn_k1 = [_k_reciprocal_neigh(initial_rank, i, k1) for i in range(N)]
    nn_k1_half = [_k_reciprocal_neigh(initial_rank, i, int(np.around(k1 / 2))) for i in range(N)]
    V = np.zeros((N, N), dtype=np.float32)
    for i in range(N):
        k_rec = nn_k1[i]
        exp = k_rec
        for candidate in k_rec:
            cand = nn_k1_half[candidate]
            if len(np.intersect1d(cand, k_rec)) > 2 / 3 * len(cand):
                exp = np.append(exp, cand)
        exp = np.unique(exp)
        x = features[i].unsqueeze(0)
        y = features[exp]
        m, n = x.size(0), y.size(0)
        dist = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n) + torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
        dist.addmm_(x, y.t(), beta=1, alpha=-2)
        V[i, exp] = F.softmax(-dist, dim=1).view(-1).numpy()
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(N):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    inv = [np.where(V[:, i] != 0)[0] for i in range(N)]
    jaccard = np.zeros((N, N), dtype=np.float32)
    for i in range(N):
        temp_min = np.zeros((1, N), dtype=np.float32)
        nz = np.where(V[i, :] != 0)[0]
        for j in range(len(nz)):
            temp_min[0, inv[nz[j]]] += np.minimum(V[i, nz[j]], V[inv[nz[j]], nz[j]])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    jaccard[jaccard < 0] = 0.0
    return jaccard
