"""DMLI references (``csrc/dmli``): what :mod:`partdist.ops.dmli` is tested and benchmarked against.

Two styles are kept on purpose:

* **the AlignedReID loop**: the DMLI recurrence written as a Python loop over the m x n
  cells of one distance matrix, exactly as AlignedReID code has it
  (``torch.min`` of two tensors, so autograd splits the gradient in half at a tie),
  called once per pair: :func:`dmli_loop` (the pure-Python baseline);
* the **vectorized practice** of AlignedReID codebases: the same Python loop over
  the cells, but every cell is a tensor holding all pairs at once
  (:func:`dmli_vectorized`, :func:`batch_local_dist_vectorized`,
  :func:`local_dist_vectorized`), with the GEMM-expanded Euclidean distance
  clamped at 1e-12 (:func:`euclidean_dist`, :func:`batch_euclidean_dist`).

:func:`local_dist_matrix` computes stripe distances from explicit differences (no
GEMM expansion), the most accurate formulation, for checking values. The variants
(soft minimum, band, unaligned) are written with plain tensor ops and
``torch.logsumexp``: :func:`dmli_soft`, :func:`band_mask`, :func:`unaligned_dist`.
"""

from __future__ import annotations

import torch

__all__ = [
    "normalize_dist",
    "euclidean_dist",
    "batch_euclidean_dist",
    "local_dist_matrix",
    "shortest_dist",
    "dmli_loop",
    "dmli_vectorized",
    "dmli_path",
    "batch_local_dist",
    "batch_local_dist_vectorized",
    "local_dist",
    "local_dist_vectorized",
    "band_mask",
    "dmli_soft",
    "unaligned_dist",
]


def normalize_dist(d: torch.Tensor) -> torch.Tensor:
    """AlignedReID's normalization ``(e^d - 1) / (e^d + 1)``, as AlignedReID writes it."""
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
    """AlignedReID's loop (``shortest_dist``): DMLI over ``dist_mat`` of shape ``[m, n]`` or ``[m, n, *]``.

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


def dmli_loop(dist: torch.Tensor) -> torch.Tensor:
    """``[..., m, n] -> [...]``: the AlignedReID loop called once per pair (the pure-Python baseline)."""
    lead = dist.shape[:-2]
    flat = dist.reshape(-1, dist.shape[-2], dist.shape[-1])
    if flat.shape[0] == 0:
        return dist.new_zeros(lead)
    out = torch.stack([shortest_dist(flat[p]) for p in range(flat.shape[0])])
    return out.reshape(lead)


def dmli_vectorized(dist: torch.Tensor) -> torch.Tensor:
    """``[..., m, n] -> [...]``: the AlignedReID loop with every cell batched over all pairs."""
    return shortest_dist(dist.movedim((-2, -1), (0, 1)))


def dmli_path(dist: torch.Tensor) -> torch.Tensor:
    """Cells that receive gradient from the DMLI value (autograd through the AlignedReID loop)."""
    d = dist.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(dmli_vectorized(d).sum(), d)
    return g != 0


def batch_local_dist(x: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Aligned pairs, exact stripe distances, the AlignedReID loop batched over pairs."""
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

