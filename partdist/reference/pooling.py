"""Part pooling references (loop versions of :mod:`partdist.pooling`).

Loop versions of :func:`partdist.part_pool` / :func:`partdist.bilinear_pool`: one image,
one part, one sample at a time, with the bin rule, the RoIAlign sampling and the bilinear
interpolation written out as their definitions say (torchvision-style four-neighbour
interpolation).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "part_pool_stripes_loop",
    "part_pool_boxes_loop",
    "part_pool_masks_loop",
    "bilinear_pool_loop",
]


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
    """Boxes ``[N, P, 4]`` pooled as ``torchvision.ops.roi_align(aligned=True)`` after clipping, one
    bilinear sample at a time (see ``partdist.part_pool``)."""
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
    feats = torch.zeros(N, boxes.shape[1], C, dtype=fmap.dtype)
    k = 0
    for n in range(N):
        for p in range(boxes.shape[1]):
            x1, y1, x2, y2 = clipped[k]
            if vis[k]:
                if sampling_ratio is None:  # one sample per map cell of this box (torchvision's grid)
                    sh = max(1, math.ceil((y2 - 0.5) - (y1 - 0.5)))
                    sw = max(1, math.ceil((x2 - 0.5) - (x1 - 0.5)))
                else:
                    sh = sw = sampling_ratio
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
