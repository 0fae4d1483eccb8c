"""Neighborhood-difference references (``csrc/neighborhood``, IDLA).

Pure-PyTorch formulations of :func:`partdist.neighborhood_diff`, all returning the
tiled IDLA layout ``[B, C, H*k, W*k]`` (block (y, x) holds f(y, x) - g(y+u-r, x+v-r),
g = 0 outside the map, r = k // 2):

* :func:`neighborhood_diff_loop`: explicit loop over cells and offsets (checking values);
* :func:`neighborhood_diff_unfold`: zero-pad g, im2col with ``F.unfold``, subtract, permute
  into the tiled layout (the usual "pad + unfold");
* :func:`neighborhood_diff_slice`: zero-pad g, stack the k*k shifted slices (pad + slice);
* :func:`neighborhood_diff_expand`: zero-pad g, ``Tensor.unfold`` views ``[B, C, H, W, k, k]``
  of the neighborhoods minus f expanded over the block.
"""

from __future__ import annotations

import torch

__all__ = [
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
