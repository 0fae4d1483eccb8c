"""k-reciprocal re-ranking reference: the usual dense implementation (Zhong et al., CVPR
2017, in the distance-matrix form that ReID codebases use), what
:func:`partdist.eval.re_ranking` is tested against. It builds several (q+g) x (q+g)
matrices and an argsort of one, so it is for small inputs only.
"""

from __future__ import annotations

import torch

__all__ = ["re_ranking_dense"]


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
