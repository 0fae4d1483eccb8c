"""Pose-normalized images from part boxes (shared by :class:`~partdist.models.PDC` and
:class:`~partdist.models.PIE`).

A part box ``(x1, y1, x2, y2)`` (image pixels, e.g. from :func:`partdist.keypoints_to_parts`)
defines an affine sampling grid (:func:`torch.nn.functional.affine_grid`) that maps the part's
rectangle of the pose-normalized image onto the box; :func:`torch.nn.functional.grid_sample`
then warps every part into a fixed place. The layout (:data:`POSE_LAYOUT_6`) follows PDC's
"modified" image: head on top, torso in the middle with the two arms beside it, the two legs
below; invisible parts stay black (zero after normalization).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["POSE_LAYOUT_6", "box_thetas", "assemble_posebox"]

#: Target rectangles ``(y0, y1, x0, x1)`` (fractions of the output image) of the six parts of
#: the ``"pdc"`` scheme of :func:`partdist.keypoints_to_parts`: head, upper body, right arm,
#: left arm, right leg, left leg (the person faces the camera: their right is the image's left).
POSE_LAYOUT_6 = (
    (0.0, 0.2, 0.25, 0.75),
    (0.2, 0.55, 0.25, 0.75),
    (0.2, 0.55, 0.0, 0.25),
    (0.2, 0.55, 0.75, 1.0),
    (0.55, 1.0, 0.0, 0.5),
    (0.55, 1.0, 0.5, 1.0),
)


def box_thetas(boxes: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Boxes ``[N, P, 4]`` in pixels -> affine matrices ``[N, P, 2, 3]`` for ``affine_grid``
    (``align_corners=False``) that sample exactly the box from an image of ``image_size``."""
    H, W = image_size
    x1, y1, x2, y2 = boxes.unbind(-1)
    z = torch.zeros_like(x1)
    row0 = torch.stack([(x2 - x1) / W, z, (x1 + x2) / W - 1], -1)
    row1 = torch.stack([z, (y2 - y1) / H, (y1 + y2) / H - 1], -1)
    return torch.stack([row0, row1], -2)


def assemble_posebox(
    images: torch.Tensor,
    thetas: torch.Tensor,
    visibility: torch.Tensor,
    out_size: Optional[Tuple[int, int]] = None,
    layout: Sequence[Tuple[float, float, float, float]] = POSE_LAYOUT_6,
) -> torch.Tensor:
    """Warp each part of ``images`` ``[N, 3, H, W]`` with ``thetas`` ``[N, P, 2, 3]`` into its
    rectangle of ``layout`` on an ``out_size`` canvas (default: the input size); parts with
    ``visibility`` ``[N, P]`` False stay 0. Differentiable in the images and the thetas."""
    N, C, H, W = images.shape
    P = thetas.shape[1]
    if len(layout) != P:
        raise ValueError(f"assemble_posebox: layout has {len(layout)} rectangles for {P} parts")
    oh, ow = out_size or (H, W)
    canvas = images.new_zeros(N, C, oh, ow)
    for p, (fy0, fy1, fx0, fx1) in enumerate(layout):
        y0, y1, x0, x1 = round(fy0 * oh), round(fy1 * oh), round(fx0 * ow), round(fx1 * ow)
        grid = F.affine_grid(thetas[:, p], [N, C, y1 - y0, x1 - x0], align_corners=False)
        crop = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        crop = crop * visibility[:, p, None, None, None].to(crop.dtype)
        canvas[:, :, y0:y1, x0:x1] = crop
    return canvas
