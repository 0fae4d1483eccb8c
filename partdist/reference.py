"""Pure-PyTorch reference implementations (what the kernels are tested and benchmarked against).

Two styles are kept on purpose:

* the **seed loop**: the DMLI recurrence written as a Python loop over the m x n
  cells of one distance matrix, exactly as AlignedReID code has it
  (``torch.min`` of two tensors, so autograd splits the gradient in half at a tie),
  called once per pair: :func:`dmli_seed`;
* the **vectorized practice** of AlignedReID codebases: the same Python loop over
  the cells, but every cell is a tensor holding all pairs at once
  (:func:`dmli_vectorized`, :func:`batch_local_dist_vectorized`,
  :func:`local_dist_vectorized`), with the GEMM-expanded Euclidean distance
  clamped at 1e-12 (:func:`euclidean_dist`, :func:`batch_euclidean_dist`).

:func:`local_dist_matrix` computes stripe distances from explicit differences (no
GEMM expansion), the most accurate formulation, for checking values.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "normalize_dist",
    "euclidean_dist",
    "batch_euclidean_dist",
    "local_dist_matrix",
    "shortest_dist",
    "dmli_seed",
    "dmli_vectorized",
    "dmli_path",
    "batch_local_dist",
    "batch_local_dist_vectorized",
    "local_dist",
    "local_dist_vectorized",
]


def normalize_dist(d: torch.Tensor) -> torch.Tensor:
    """AlignedReID's normalization ``(e^d - 1) / (e^d + 1)``, as written in the seed."""
    return (torch.exp(d) - 1.0) / (torch.exp(d) + 1.0)


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[m, d] x [n, d] -> [m, n]`` Euclidean distances, AlignedReID style (GEMM, clamp 1e-12)."""
    m, n = x.size(0), y.size(0)
    xx = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n)
    yy = torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
    dist = xx + yy
    dist = torch.addmm(dist, x, y.t(), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def batch_euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[N, m, d] x [N, n, d] -> [N, m, n]``, AlignedReID style (batched GEMM, clamp 1e-12)."""
    N, m, _ = x.size()
    n = y.size(1)
    xx = torch.pow(x, 2).sum(-1, keepdim=True).expand(N, m, n)
    yy = torch.pow(y, 2).sum(-1, keepdim=True).expand(N, n, m).permute(0, 2, 1)
    dist = xx + yy
    dist = torch.baddbmm(dist, x, y.permute(0, 2, 1), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def local_dist_matrix(x: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``[N, m, C] x [N, n, C] -> [N, m, n]`` from explicit differences (norm subgradient 0 at 0)."""
    d = torch.linalg.vector_norm(x[:, :, None, :] - y[:, None, :, :], dim=-1)
    return normalize_dist(d) if normalize else d


def shortest_dist(dist_mat: torch.Tensor) -> torch.Tensor:
    """The seed's loop: DMLI over ``dist_mat`` of shape ``[m, n]`` or ``[m, n, *]``.

    Verbatim AlignedReID (DP dimensions first). Returns a scalar or ``[*]``.
    """
    m, n = dist_mat.size()[:2]
    dist = [[0 for _ in range(n)] for _ in range(m)]
    for i in range(m):
        for j in range(n):
            if (i == 0) and (j == 0):
                dist[i][j] = dist_mat[i, j]
            elif (i == 0) and (j > 0):
                dist[i][j] = dist[i][j - 1] + dist_mat[i, j]
            elif (i > 0) and (j == 0):
                dist[i][j] = dist[i - 1][j] + dist_mat[i, j]
            else:
                dist[i][j] = torch.min(dist[i - 1][j], dist[i][j - 1]) + dist_mat[i, j]
    dist = dist[-1][-1]
    return dist


def dmli_seed(dist: torch.Tensor) -> torch.Tensor:
    """``[..., m, n] -> [...]``: the seed loop called once per pair (the pure-Python baseline)."""
    lead = dist.shape[:-2]
    flat = dist.reshape(-1, dist.shape[-2], dist.shape[-1])
    if flat.shape[0] == 0:
        return dist.new_zeros(lead)
    out = torch.stack([shortest_dist(flat[p]) for p in range(flat.shape[0])])
    return out.reshape(lead)


def dmli_vectorized(dist: torch.Tensor) -> torch.Tensor:
    """``[..., m, n] -> [...]``: the seed loop with every cell batched over all pairs."""
    return shortest_dist(dist.movedim((-2, -1), (0, 1)))


def dmli_path(dist: torch.Tensor) -> torch.Tensor:
    """Cells that receive gradient from the DMLI value (autograd through the seed loop)."""
    d = dist.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(dmli_vectorized(d).sum(), d)
    return g != 0


def batch_local_dist(x: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Aligned pairs, exact stripe distances, seed-loop DP batched over pairs."""
    return dmli_vectorized(local_dist_matrix(x, y, normalize))


def batch_local_dist_vectorized(x: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Aligned pairs, the AlignedReID practice (batched GEMM distances + cell loop)."""
    d = batch_euclidean_dist(x, y)
    if normalize:
        d = normalize_dist(d)
    return shortest_dist(d.permute(1, 2, 0))


def local_dist(x: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """All pairs ``[M, m, C] x [N, n, C] -> [M, N]``, exact stripe distances (memory M*N*m*n*C)."""
    d = torch.linalg.vector_norm(x[:, None, :, None, :] - y[None, :, None, :, :], dim=-1)
    if normalize:
        d = normalize_dist(d)
    return dmli_vectorized(d)


def local_dist_vectorized(
    x: torch.Tensor, y: torch.Tensor, normalize: bool = True, chunk: int | None = None
) -> torch.Tensor:
    """All pairs, the AlignedReID practice: one GEMM of all stripes, then the cell loop.

    With ``chunk`` the gallery is processed ``chunk`` images at a time (as public
    evaluation code does to bound memory).
    """
    M, m, d = x.size()
    N, n, _ = y.size()
    if chunk is not None and chunk < N:
        return torch.cat(
            [local_dist_vectorized(x, y[s : s + chunk], normalize) for s in range(0, N, chunk)], dim=1
        )
    dist_mat = euclidean_dist(x.reshape(M * m, d), y.reshape(N * n, d))
    if normalize:
        dist_mat = normalize_dist(dist_mat)
    dist_mat = dist_mat.reshape(M, m, N, n).permute(1, 3, 0, 2)
    return shortest_dist(dist_mat)


# =============================================================================
# Cross-input neighborhood differences (IDLA, issue 4)
#
# Three pure-PyTorch formulations of partdist.neighborhood_diff, all returning the
# tiled IDLA layout [B, C, H*k, W*k] (block (y, x) holds f(y, x) - g(y+u-r, x+v-r),
# g = 0 outside the map, r = k // 2):
#
# * neighborhood_diff_loop:    explicit loop over cells and offsets (checking values);
# * neighborhood_diff_unfold:  zero-pad g, im2col with F.unfold, subtract, permute
#                              into the tiled layout (the usual "pad + unfold");
# * neighborhood_diff_slice:   zero-pad g, stack the k*k shifted slices (pad + slice);
# * neighborhood_diff_expand:  zero-pad g, Tensor.unfold views [B, C, H, W, k, k] of
#                              the neighborhoods minus f expanded over the block.
# =============================================================================

__all__ += [
    "neighborhood_diff_loop",
    "neighborhood_diff_unfold",
    "neighborhood_diff_slice",
    "neighborhood_diff_expand",
    "cross_neighborhood_diff",
]


def _blocks_to_tiled(d: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W, k, k] -> [B, C, H*k, W*k]`` (copy)."""
    B, C, H, W, k, _ = d.shape
    return d.permute(0, 1, 2, 4, 3, 5).reshape(B, C, H * k, W * k)


def neighborhood_diff_loop(f: torch.Tensor, g: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """Loop reference: one assignment per (y, x, u, v), batched over B and C."""
    B, C, H, W = f.shape
    k, r = kernel_size, kernel_size // 2
    out = f.new_empty((B, C, H * k, W * k))
    for y in range(H):
        for x in range(W):
            for u in range(k):
                for v in range(k):
                    gy, gx = y + u - r, x + v - r
                    if 0 <= gy < H and 0 <= gx < W:
                        out[:, :, y * k + u, x * k + v] = f[:, :, y, x] - g[:, :, gy, gx]
                    else:
                        out[:, :, y * k + u, x * k + v] = f[:, :, y, x]
    return out


def neighborhood_diff_unfold(f: torch.Tensor, g: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """Pad + ``F.unfold`` (im2col) version."""
    B, C, H, W = f.shape
    k, r = kernel_size, kernel_size // 2
    patches = torch.nn.functional.unfold(torch.nn.functional.pad(g, (r, r, r, r)), k)  # [B, C*k*k, H*W]
    patches = patches.view(B, C, k, k, H, W)
    d = f[:, :, None, None, :, :] - patches  # [B, C, k(u), k(v), H, W]
    return d.permute(0, 1, 4, 2, 5, 3).reshape(B, C, H * k, W * k)


def neighborhood_diff_slice(f: torch.Tensor, g: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """Pad + slice version: the k*k shifted copies of the padded g, stacked."""
    B, C, H, W = f.shape
    k, r = kernel_size, kernel_size // 2
    gp = torch.nn.functional.pad(g, (r, r, r, r))
    shifted = torch.stack([gp[:, :, u : u + H, v : v + W] for u in range(k) for v in range(k)], dim=2)
    d = f[:, :, None] - shifted  # [B, C, k*k, H, W]
    return d.view(B, C, k, k, H, W).permute(0, 1, 4, 2, 5, 3).reshape(B, C, H * k, W * k)


def neighborhood_diff_expand(f: torch.Tensor, g: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """Expand-based version: ``f`` expanded over each k x k block minus the neighborhoods
    of the padded ``g`` taken as ``Tensor.unfold`` views (no im2col copy)."""
    B, C, H, W = f.shape
    k, r = kernel_size, kernel_size // 2
    gp = torch.nn.functional.pad(g, (r, r, r, r))
    nb = gp.unfold(2, k, 1).unfold(3, k, 1)  # [B, C, H, W, k, k] view
    d = f[..., None, None].expand(B, C, H, W, k, k) - nb
    return _blocks_to_tiled(d)


def cross_neighborhood_diff(f: torch.Tensor, g: torch.Tensor, kernel_size: int = 5, impl=None):
    """``(K, K')`` with ``K = N(f, g)``, ``K' = N(g, f)`` (default impl: the unfold version)."""
    impl = impl or neighborhood_diff_unfold
    return impl(f, g, kernel_size), impl(g, f, kernel_size)


# ======================================================================================
# DMLI variants (soft minimum, band, unaligned), written with plain tensor ops and
# torch.logsumexp, for the tests of the variants.
# ======================================================================================
def band_mask(m: int, n: int, band, device=None) -> torch.Tensor:
    """``[m, n]`` bool: cells with ``|i (n-1)/(m-1) - j| <= band`` (all cells if band is None or m == 1)."""
    if band is None or m == 1:
        return torch.ones(m, n, dtype=torch.bool, device=device)
    i = torch.arange(m, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    return (i * (n - 1) / (m - 1) - j).abs() <= band + 1e-9


def dmli_soft(dist: torch.Tensor, gamma: float = 0.0, band=None) -> torch.Tensor:
    """``[..., m, n] -> [...]``: DMLI with ``softmin_gamma`` (``-gamma * logsumexp(-[a, b] / gamma)``)
    instead of ``min`` when ``gamma > 0``, and cells outside ``band`` excluded (+inf)."""
    m, n = dist.shape[-2:]
    mask = band_mask(m, n, band, dist.device)
    inf = torch.full(dist.shape[:-2], float("inf"), dtype=dist.dtype, device=dist.device)
    S = [[None] * n for _ in range(m)]
    for i in range(m):
        for j in range(n):
            if not mask[i, j]:
                S[i][j] = inf
                continue
            d = dist[..., i, j]
            if i == 0 and j == 0:
                S[i][j] = d
            elif i == 0:
                S[i][j] = S[i][j - 1] + d
            elif j == 0:
                S[i][j] = S[i - 1][j] + d
            elif gamma > 0:
                both = torch.stack([S[i - 1][j], S[i][j - 1]], -1)
                S[i][j] = -gamma * torch.logsumexp(-both / gamma, -1) + d
            else:
                S[i][j] = torch.min(S[i - 1][j], S[i][j - 1]) + d
    return S[m - 1][n - 1]


def unaligned_dist(x: torch.Tensor, y: torch.Tensor, normalize: bool = True, all_pairs: bool = False):
    """``sum_i d(i, i)`` from exact stripe distances; aligned pairs ``[N]`` or all pairs ``[M, N]``."""
    if all_pairs:
        d = torch.linalg.vector_norm(x[:, None] - y[None], dim=-1)  # [M, N, m]
    else:
        d = torch.linalg.vector_norm(x - y, dim=-1)  # [N, m]
    return (normalize_dist(d) if normalize else d).sum(-1)

# ======================================================================================
# k-reciprocal re-ranking: the usual dense implementation (Zhong et al., CVPR 2017, in the
# distance-matrix form that ReID codebases use). Reference for partdist.eval.re_ranking;
# it builds several (q+g) x (q+g) matrices and an argsort of one, so it is for small
# inputs only. Not listed in __all__ above on purpose (import it by name).
# ======================================================================================


def re_ranking_dense(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Dense k-reciprocal re-ranking; numpy arrays in (torch tensors are converted), float32 q x g out."""
    import numpy as np

    def arr(x):
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    q_g, q_q, g_g = arr(q_g_dist), arr(q_q_dist), arr(g_g_dist)
    num_q = q_g.shape[0]
    num_all = q_g.shape[0] + q_g.shape[1]
    full = np.concatenate(
        [np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0
    )
    full = np.power(full, 2).astype(np.float32)
    original = np.transpose(full / np.max(full, axis=0))
    rank = np.argsort(original, axis=1).astype(np.int32)
    half = int(np.around(k1 / 2.0))

    def k_reciprocal(i, k):
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    V = np.zeros_like(original, dtype=np.float32)
    for i in range(num_all):
        recip = k_reciprocal(i, k1)
        expansion = recip
        for cand in recip:
            cand_recip = k_reciprocal(cand, half)
            if len(np.intersect1d(cand_recip, recip)) > 2.0 / 3 * len(cand_recip):
                expansion = np.append(expansion, cand_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = weight / np.sum(weight)

    original = original[:num_q]
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(num_all):
            V_qe[i] = np.mean(V[rank[i, :k2]], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, j] != 0)[0] for j in range(num_all)]

    jaccard = np.zeros_like(original, dtype=np.float32)
    for i in range(num_q):
        temp_min = np.zeros(num_all, dtype=np.float32)
        nonzero = np.where(V[i] != 0)[0]
        for f in nonzero:
            rows = inv_index[f]
            temp_min[rows] += np.minimum(V[i, f], V[rows, f])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)

    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:, num_q:]

# =====================================================================================
# Hard-example mining references (issue 3)
#
# What the mining kernels (partdist.hard_example_mining / triplet_hard_loss) and the
# losses are tested and benchmarked against:
#
# * hard_example_mining_masked: N x M boolean masks + torch.where + max / min, any
#   number of images per identity, with the kernel's conventions for anchors without
#   positive / negative (value 0, index -1, valid False), ties (first column) and NaN
#   (propagates, first NaN);
# * hard_example_mining_loop: the per-anchor Python loop of torchreid / AlignedReID's
#   TripletLoss (values only; raises where an anchor has no negative);
# * hard_example_mining_view: AlignedReID's formula (masked select + view(N, -1)),
#   which needs the same number of images for every identity;
# * compositions of the losses with nn.MarginRankingLoss / nn.SoftMarginLoss.
# =====================================================================================

__all__ += [
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


# ---- part pooling (issue 7) ----
# Loop versions of partdist.part_pool / partdist.bilinear_pool: one image, one part, one
# sample at a time, with the bin rule, the RoIAlign sampling and the bilinear interpolation
# written out as their definitions say (torchvision-style four-neighbour interpolation).
# Not listed in __all__ above on purpose (import them by name).

import math  # noqa: E402


def _adaptive_bin(i: int, n: int, size: int):
    """Rows / columns of bin ``i`` of ``n`` over ``size``: PyTorch's adaptive pooling rule."""
    start = (i * size) // n
    end = -((-(i + 1) * size) // n)  # ceil((i + 1) * size / n)
    return start, end


def part_pool_stripes_loop(fmap: torch.Tensor, parts, mode: str = "avg"):
    """Stripes (int ``parts``) or grid (``(gh, gw)``) -> ``(feats [N, P, C], visibility [N, P])``."""
    gh, gw = (parts, 1) if isinstance(parts, int) else parts
    N, C, H, W = fmap.shape
    feats = []
    for n in range(N):
        row = []
        for r in range(gh):
            y0, y1 = _adaptive_bin(r, gh, H)
            for c in range(gw):
                x0, x1 = _adaptive_bin(c, gw, W)
                cell = fmap[n, :, y0:y1, x0:x1].reshape(C, -1)
                row.append(cell.mean(1) if mode == "avg" else cell.max(1).values)
        feats.append(torch.stack(row))
    feats = torch.stack(feats)
    return feats, torch.ones(feats.shape[:2], dtype=torch.bool)


def _bilinear_loop(f: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """``f`` ``[C, H, W]`` at index coordinates ``(y, x)`` (clamped to the map), four neighbours."""
    H, W = f.shape[1:]
    y = min(max(y, 0.0), H - 1.0)
    x = min(max(x, 0.0), W - 1.0)
    y0, x0 = int(y), int(x)
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * f[:, y0, x0]
        + (1 - ly) * lx * f[:, y0, x1]
        + ly * (1 - lx) * f[:, y1, x0]
        + ly * lx * f[:, y1, x1]
    )


def part_pool_boxes_loop(fmap, boxes, mode="avg", sampling_ratio=None, spatial_scale=None, image_size=None):
    """Boxes ``[N, P, 4]`` pooled RoIAlign-style, one sample at a time (see ``partdist.part_pool``)."""
    N, C, H, W = fmap.shape
    if image_size is not None:
        sy, sx = H / image_size[0], W / image_size[1]
    else:
        sy = sx = 1.0 if spatial_scale is None else float(spatial_scale)
    clipped, vis = [], []
    for n in range(N):
        for p in range(boxes.shape[1]):
            bx1, by1, bx2, by2 = (float(v) for v in boxes[n, p])
            x1, x2 = min(max(bx1 * sx, 0.0), W), min(max(bx2 * sx, 0.0), W)
            y1, y2 = min(max(by1 * sy, 0.0), H), min(max(by2 * sy, 0.0), H)
            clipped.append((x1, y1, x2, y2))
            vis.append(x2 > x1 and y2 > y1)
    if sampling_ratio is None:  # one sample per cell of the largest visible box
        sh = max([1] + [math.ceil(b[3] - b[1] - 1e-6) for b, v in zip(clipped, vis) if v])
        sw = max([1] + [math.ceil(b[2] - b[0] - 1e-6) for b, v in zip(clipped, vis) if v])
    else:
        sh = sw = sampling_ratio
    feats = torch.zeros(N, boxes.shape[1], C, dtype=fmap.dtype)
    k = 0
    for n in range(N):
        for p in range(boxes.shape[1]):
            x1, y1, x2, y2 = clipped[k]
            if vis[k]:
                samples = []
                for iy in range(sh):
                    y = y1 + (iy + 0.5) * (y2 - y1) / sh - 0.5
                    for ix in range(sw):
                        x = x1 + (ix + 0.5) * (x2 - x1) / sw - 0.5
                        samples.append(_bilinear_loop(fmap[n], y, x))
                s = torch.stack(samples)
                feats[n, p] = s.mean(0) if mode == "avg" else s.max(0).values
            k += 1
    return feats, torch.tensor(vis, dtype=torch.bool).reshape(N, boxes.shape[1])


def part_pool_masks_loop(fmap: torch.Tensor, masks: torch.Tensor):
    """Soft masks ``[N, P, H, W]``: ``sum m f / sum m`` per part, 0 and invisible where ``sum m = 0``."""
    N, C, H, W = fmap.shape
    masks = masks.to(fmap.dtype)
    feats = torch.zeros(N, masks.shape[1], C, dtype=fmap.dtype)
    vis = torch.zeros(N, masks.shape[1], dtype=torch.bool)
    for n in range(N):
        for p in range(masks.shape[1]):
            num = torch.zeros(C, dtype=fmap.dtype)
            den = torch.zeros((), dtype=fmap.dtype)
            for i in range(H):
                for j in range(W):
                    num = num + masks[n, p, i, j] * fmap[n, :, i, j]
                    den = den + masks[n, p, i, j]
            if den > 0:
                feats[n, p] = num / den
                vis[n, p] = True
    return feats, vis


def bilinear_pool_loop(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(1 / HW) sum_xy vec(a_xy outer p_xy)``, one location at a time."""
    N, Ca, H, W = a.shape
    out = torch.zeros(N, Ca * p.shape[1], dtype=a.dtype)
    for n in range(N):
        acc = torch.zeros(Ca, p.shape[1], dtype=a.dtype)
        for i in range(H):
            for j in range(W):
                acc = acc + torch.outer(a[n, :, i, j], p[n, :, i, j])
        out[n] = (acc / (H * W)).reshape(-1)
    return out

# ---- part distances and DSR (issue 7) ----
def part_dist_loop(x, y, vis_x, vis_y, empty_value=float("inf")):
    """Visibility-weighted mean part distance, pair by pair, part by part (the definition).

    ``D[a, b] = sum_p v_p ||x[a,p] - y[b,p]|| / sum_p v_p``, ``v_p = vis_x[a,p] vis_y[b,p]``;
    ``empty_value`` where ``sum_p v_p == 0``. Norms by ``torch.linalg.vector_norm``
    (subgradient 0 at 0), so autograd through this is the reference gradient
    (including ``dD/dv`` of a part whose weight is 0; the gradient of an empty pair is 0).
    """
    vx, vy = vis_x.to(x.dtype), vis_y.to(x.dtype)
    M, N, P = x.shape[0], y.shape[0], x.shape[1]
    rows = []
    for a in range(M):
        row = []
        for b in range(N):
            num = x.new_zeros(())
            den = x.new_zeros(())
            for p in range(P):
                v = vx[a, p] * vy[b, p]
                num = num + v * torch.linalg.vector_norm(x[a, p] - y[b, p])
                den = den + v
            if den.item() > 0:
                row.append(num / den)
            else:
                row.append(x.new_tensor(empty_value) + 0 * num)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def part_dist_vectorized(x, y, vis_x, vis_y, empty_value=float("inf"), chunk_size=None):
    """The same, as PyTorch practice writes it: per-part distances from one GEMM per
    part (``sqrt(clamp(|a|^2 + |b|^2 - 2ab, 0))``, ``[P, M, N]``) reduced with the
    visibility weights; ``chunk_size`` queries at a time bounds the ``P x chunk x N``
    intermediate. Forward reference for large inputs (its gradient is NaN where a
    part distance is exactly 0)."""
    vx, vy = vis_x.to(x.dtype), vis_y.to(x.dtype)
    xp, yp = x.transpose(0, 1), y.transpose(0, 1)  # [P, M, C], [P, N, C]
    yy = yp.pow(2).sum(-1).unsqueeze(1)  # [P, 1, N]
    step = x.shape[0] if not chunk_size else chunk_size
    outs = []
    for a0 in range(0, x.shape[0], max(step, 1)):
        xa = xp[:, a0 : a0 + step]
        xx = xa.pow(2).sum(-1).unsqueeze(2)
        d = (xx + yy - 2 * torch.bmm(xa, yp.transpose(1, 2))).clamp_min(0).sqrt()  # [P, m, N]
        v = vx[a0 : a0 + step].t().unsqueeze(2) * vy.t().unsqueeze(1)  # [P, m, N]
        den = v.sum(0)
        num = (v * d).sum(0)
        safe = torch.where(den > 0, den, torch.ones_like(den))
        outs.append(torch.where(den > 0, num / safe, torch.full_like(den, empty_value)))
    return torch.cat(outs, 0)


def lasso_fista(G, b, beta, lip, max_iter=200, tol=1e-5):
    """FISTA for ``min_w 1/2 w^T G w - b^T w + beta ||w||_1`` (= ``1/2 ||x - Y w||^2 + beta ||w||_1``
    up to a constant, with ``G = Y^T Y``, ``b = Y^T x``), batched.

    G ``[..., L, L]``, b ``[..., L, K]`` (K right-hand sides sharing G), lip ``[...]`` the
    step constant (largest eigenvalue of G). The stopping rule of the kernel, per column:
    stop after ``max_iter`` iterations or once ``||w_k+1 - w_k|| <= tol ||w_k+1||``
    (a stopped column keeps its value). Returns w ``[..., L, K]``.
    """
    lip = lip[..., None, None]
    live_lip = lip > 0
    step = torch.where(live_lip, 1 / torch.where(live_lip, lip, torch.ones_like(lip)), torch.zeros_like(lip))
    thr = beta * step
    w = torch.zeros_like(b)
    z = torch.zeros_like(b)
    active = torch.ones(b.shape[:-2] + (1, b.shape[-1]), dtype=torch.bool, device=b.device) & live_lip
    t = 1.0
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        u = z - step * (G @ z - b)
        wn = torch.sign(u) * (u.abs() - thr).clamp_min(0)
        tn = (1 + math.sqrt(1 + 4 * t * t)) / 2
        mom = (t - 1) / tn
        t = tn
        diff2 = (wn - w).pow(2).sum(-2, keepdim=True)
        norm2 = wn.pow(2).sum(-2, keepdim=True)
        zn = wn + mom * (wn - w)
        w = torch.where(active, wn, w)
        z = torch.where(active, zn, z)
        active = active & ~(diff2 <= tol * tol * norm2)
    return w


def lasso_cd(G, b, beta, iters=2000, tol=1e-15):
    """Plain cyclic coordinate descent for the same Lasso, one problem (G ``[L, L]``, b ``[L]``):
    ``w_k = soft(b_k - sum_{j != k} G_kj w_j, beta) / G_kk``, until a sweep changes no
    coordinate by more than ``tol`` or ``iters`` sweeps. Slow and simple; for tests."""
    G, b = G.tolist(), b.tolist()
    L = len(b)
    w = [0.0] * L
    for _ in range(iters):
        change = 0.0
        for k in range(L):
            if G[k][k] <= 0:
                continue
            r = b[k] - sum(G[k][j] * w[j] for j in range(L) if j != k)
            v = math.copysign(max(abs(r) - beta, 0.0), r) / G[k][k]
            change = max(change, abs(v - w[k]))
            w[k] = v
        if change <= tol:
            break
    return torch.tensor(w, dtype=torch.float64)


def lasso_objective(x, Y, w, beta):
    """``1/2 ||x - Y w||^2 + beta ||w||_1`` (x ``[C]``, Y ``[C, L]``, w ``[L]``)."""
    return 0.5 * (x - Y @ w).pow(2).sum() + beta * w.abs().sum()


def dsr_dist_vectorized(x, y, beta=0.1, max_iter=200, tol=1e-5, chunk_size=None):
    """DSR distance of all pairs in PyTorch: Gram matrices by GEMM, batched FISTA over
    every (query, gallery, query cell) at once (``chunk_size`` queries at a time), the
    same solver, step and stopping rule as the kernel. x ``[M, Lq, C]``, y ``[N, Lg, C]``
    -> ``[M, N]`` = mean over query cells of ``||x_n - Y w_n||^2``."""
    G = y @ y.transpose(1, 2)  # [N, Lg, Lg]
    lip = torch.linalg.eigvalsh(G)[..., -1].clamp_min(0)  # [N]
    step = x.shape[0] if not chunk_size else chunk_size
    outs = []
    for a0 in range(0, x.shape[0], max(step, 1)):
        xa = x[a0 : a0 + step]
        B = y.unsqueeze(0) @ xa.transpose(1, 2).unsqueeze(1)  # [m, N, Lg, Lq]
        w = lasso_fista(G.unsqueeze(0), B, beta, lip.unsqueeze(0), max_iter, tol)
        xx = xa.pow(2).sum(-1).unsqueeze(1)  # [m, 1, Lq]
        err = xx - 2 * (w * B).sum(-2) + (w * (G.unsqueeze(0) @ w)).sum(-2)
        outs.append(err.clamp_min(0).mean(-1))
    return torch.cat(outs, 0)
