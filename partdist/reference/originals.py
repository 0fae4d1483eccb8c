"""The functions :mod:`partdist.compat` replaces, written from the public code's semantics.

What the compat tests (``tests/compat/``) check against and ``benchmarks/bench_compat.py``
times against, in one place: AlignedReID-Re-Production-Pytorch ``aligned_reid/model/loss.py``
and michuanhaohao/AlignedReID ``util/losses.py``, torchreid
``losses/hard_mine_triplet_loss.py`` and ``metrics/rank.py``, fast-reid 1.4
``modeling/losses/{triplet_loss,utils}.py``, ``evaluation/{rank,roc}.py`` and
``utils/compute_dist.py``, and the numpy utilities of both AlignedReID repositories
(``aligned_reid/utils/{distance,metric}.py``, ``util/{distance,eval_metrics,re_ranking}.py``).
They run on the
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
def fastreid_euclidean_dist(x, y):
    """fast-reid ``euclidean_dist``: ``xx + yy - 2 * matmul(x, y^T)``, clamp, sqrt."""
    m, n = x.size(0), y.size(0)
    xx = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n)
    yy = torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
    dist = xx + yy - 2 * torch.matmul(x, y.t())
    return dist.clamp(min=1e-12).sqrt()


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
    dist_mat = fastreid_cosine_dist(embedding, embedding) if norm_feat else fastreid_euclidean_dist(embedding, embedding)
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


# ------------------------------------------- AlignedReID numpy utilities (both repositories)
def np_compute_dist(array1, array2, type="euclidean"):
    """``utils/distance.compute_dist`` (numpy): cosine similarity or clamped Euclidean."""
    if type == "cosine":
        a = array1 / (np.linalg.norm(array1, axis=1, keepdims=True) + np.finfo(np.float32).eps)
        b = array2 / (np.linalg.norm(array2, axis=1, keepdims=True) + np.finfo(np.float32).eps)
        return np.matmul(a, b.T)
    square1 = np.sum(np.square(array1), axis=1)[..., np.newaxis]
    square2 = np.sum(np.square(array2), axis=1)[np.newaxis, ...]
    squared = -2 * np.matmul(array1, array2.T) + square1 + square2
    squared[squared < 0] = 0
    return np.sqrt(squared)


def np_shortest_dist(dist_mat):
    """``utils/distance.shortest_dist`` (numpy): DP over the first two dims."""
    m, n = dist_mat.shape[:2]
    dist = np.zeros_like(dist_mat)
    for i in range(m):
        for j in range(n):
            if i == 0 and j == 0:
                dist[i, j] = dist_mat[i, j]
            elif i == 0:
                dist[i, j] = dist[i, j - 1] + dist_mat[i, j]
            elif j == 0:
                dist[i, j] = dist[i - 1, j] + dist_mat[i, j]
            else:
                dist[i, j] = np.min(np.stack([dist[i - 1, j], dist[i, j - 1]], axis=0), axis=0) + dist_mat[i, j]
    return dist[-1, -1].copy()


def np_unaligned_dist(dist_mat):
    """michuanhaohao ``util/distance.unaligned_dist``."""
    m = dist_mat.shape[0]
    dist = np.zeros_like(dist_mat[0])
    for i in range(m):
        dist[i] = dist_mat[i][i]
    return np.sum(dist, axis=0).copy()


def np_local_dist(x, y, aligned=True):
    """``utils/distance.local_dist`` (michuanhaohao's with ``aligned``; huanghoujing's is
    ``aligned=True``): 2-D through ``dist_mat[np.newaxis]``, 3-D all pairs."""
    if x.ndim == 2:
        eu = np_compute_dist(x, y, "euclidean")
        dm = (np.exp(eu) - 1.0) / (np.exp(eu) + 1.0)
        return (np_shortest_dist if aligned else np_unaligned_dist)(dm[np.newaxis])[0]
    M, m, d = x.shape
    N, n, _ = y.shape
    dm = np_compute_dist(x.reshape([M * m, d]), y.reshape([N * n, d]), "euclidean")
    dm = (np.exp(dm) - 1.0) / (np.exp(dm) + 1.0)
    dm = dm.reshape([M, m, N, n]).transpose([1, 3, 0, 2])
    return (np_shortest_dist if aligned else np_unaligned_dist)(dm)


def sklearn_average_precision(y_true, y_score):
    """scikit-learn's ``average_precision_score`` (>= 0.19): precision-recall points at each
    distinct score, ``sum (R_k - R_{k-1}) P_k`` from the highest score down."""
    thresholds = np.unique(y_score)[::-1]
    P = y_true.sum()
    ap, prev_r = 0.0, 0.0
    for t in thresholds:
        sel = y_score >= t
        tp = (y_true & sel).sum()
        r, p = tp / P, tp / sel.sum()
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def openreid_cmc(distmat, query_ids, gallery_ids, query_cams, gallery_cams, topk=100, separate_camera_set=False,
                 single_gallery_shot=False, first_match_break=False, average=True, kind="quicksort"):
    """huanghoujing ``utils/metric.cmc`` (open-reid's, 100 single-shot repeats)."""
    from collections import defaultdict

    m, _ = distmat.shape
    indices = np.argsort(distmat, axis=1, kind=kind)
    matches = gallery_ids[indices] == query_ids[:, np.newaxis]
    ret = np.zeros([m, topk])
    is_valid_query = np.zeros(m)
    num_valid = 0
    for i in range(m):
        valid = (gallery_ids[indices[i]] != query_ids[i]) | (gallery_cams[indices[i]] != query_cams[i])
        if separate_camera_set:
            valid &= gallery_cams[indices[i]] != query_cams[i]
        if not np.any(matches[i, valid]):
            continue
        is_valid_query[i] = 1
        if single_gallery_shot:
            repeat = 100
            gids = gallery_ids[indices[i][valid]]
            inds = np.where(valid)[0]
            ids_dict = defaultdict(list)
            for j, x in zip(inds, gids):
                ids_dict[x].append(j)
        else:
            repeat = 1
        for _ in range(repeat):
            if single_gallery_shot:
                mask = np.zeros(len(valid), dtype=bool)
                for _, idx in ids_dict.items():
                    mask[np.random.choice(idx)] = True
                index = np.nonzero(matches[i, valid & mask])[0]
            else:
                index = np.nonzero(matches[i, valid])[0]
            delta = 1.0 / (len(index) * repeat)
            for j, k in enumerate(index):
                if k - j >= topk:
                    break
                if first_match_break:
                    ret[i, k - j] += 1
                    break
                ret[i, k - j] += delta
        num_valid += 1
    ret = ret.cumsum(axis=1)
    if average:
        return np.sum(ret, axis=0) / num_valid
    return ret, is_valid_query


def openreid_mean_ap(distmat, query_ids, gallery_ids, query_cams, gallery_cams, average=True):
    """huanghoujing ``utils/metric.mean_ap`` with scikit-learn's current AP."""
    m, _ = distmat.shape
    indices = np.argsort(distmat, axis=1)
    matches = gallery_ids[indices] == query_ids[:, np.newaxis]
    aps, is_valid = np.zeros(m), np.zeros(m)
    for i in range(m):
        valid = (gallery_ids[indices[i]] != query_ids[i]) | (gallery_cams[indices[i]] != query_cams[i])
        y_true = matches[i, valid]
        if not np.any(y_true):
            continue
        is_valid[i] = 1
        aps[i] = sklearn_average_precision(y_true, -distmat[i][indices[i]][valid])
    if average:
        return float(np.sum(aps)) / np.sum(is_valid)
    return aps, is_valid


def michuanhaohao_eval_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, N=100, kind="quicksort"):
    """michuanhaohao ``util/eval_metrics.eval_cuhk03``."""
    from collections import defaultdict

    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind=kind)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP = [], []
    for q_idx in range(num_q):
        order = indices[q_idx]
        keep = np.invert((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx]))
        orig_cmc = matches[q_idx][keep]
        if not np.any(orig_cmc):
            continue
        kept = g_pids[order][keep]
        d = defaultdict(list)
        for idx, pid in enumerate(kept):
            d[pid].append(idx)
        cmc, AP = 0.0, 0.0
        for _ in range(N):
            mask = np.zeros(len(orig_cmc), dtype=bool)
            for _, idxs in d.items():
                mask[np.random.choice(idxs)] = True
            mo = orig_cmc[mask]
            c = mo.cumsum()
            c[c > 1] = 1
            cmc += c[:max_rank].astype(np.float32)
            tmp = np.asarray([x / (i + 1.0) for i, x in enumerate(mo.cumsum())]) * mo
            AP += tmp.sum() / mo.sum()
        all_cmc.append(cmc / N)
        all_AP.append(AP / N)
    return np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc), np.mean(all_AP)


def michuanhaohao_re_ranking(probFea, galFea, k1, k2, lambda_value, local_distmat=None, only_local=False,  # noqa: N803
                             v_dtype=np.float16):
    """michuanhaohao ``util/re_ranking.re_ranking`` (features in, distances not squared);
    ``v_dtype``: the dtype of V and of the Jaccard accumulation (the original: float16).
    The neighbour ranking uses a stable argsort (the original's default sort leaves ties
    in any order)."""
    query_num = probFea.size(0)
    all_num = query_num + galFea.size(0)
    if only_local:
        original_dist = local_distmat
    else:
        feat = torch.cat([probFea, galFea])
        distmat = torch.pow(feat, 2).sum(dim=1, keepdim=True).expand(all_num, all_num) + \
            torch.pow(feat, 2).sum(dim=1, keepdim=True).expand(all_num, all_num).t()
        distmat.addmm_(feat, feat.t(), beta=1, alpha=-2)
        original_dist = distmat.numpy()
        if local_distmat is not None:
            original_dist = original_dist + local_distmat
    gallery_num = original_dist.shape[0]
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(v_dtype)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    for i in range(all_num):
        fwd = initial_rank[i, :k1 + 1]
        bwd = initial_rank[fwd, :k1 + 1]
        k_rec = fwd[np.where(bwd == i)[0]]
        exp = k_rec
        for cand in k_rec:
            cf = initial_rank[cand, :int(np.around(k1 / 2)) + 1]
            cb = initial_rank[cf, :int(np.around(k1 / 2)) + 1]
            ck = cf[np.where(cb == cand)[0]]
            if len(np.intersect1d(ck, k_rec)) > 2 / 3 * len(ck):
                exp = np.append(exp, ck)
        exp = np.unique(exp)
        w = np.exp(-original_dist[i, exp])
        V[i, exp] = w / np.sum(w)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=v_dtype)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    inv = [np.where(V[:, i] != 0)[0] for i in range(gallery_num)]
    jaccard = np.zeros_like(original_dist, dtype=v_dtype)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=v_dtype)
        nz = np.where(V[i, :] != 0)[0]
        for j in range(len(nz)):
            temp_min[0, inv[nz[j]]] = temp_min[0, inv[nz[j]]] + np.minimum(V[i, nz[j]], V[inv[nz[j]], nz[j]])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist * lambda_value
    return final[:query_num, query_num:]
