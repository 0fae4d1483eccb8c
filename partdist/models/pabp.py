"""PABP: part-aligned bilinear representations (Suh et al., ECCV 2018), at small scale.

* appearance map: the backbone map reduced by a 1x1 conv (+ BN + ReLU) to ``app_channels``;
* part map: Gaussian heat maps of the 14 keypoints on the backbone map's grid (each scaled
  by its score), plus one constant channel (the whole image), passed through a learned 1x1
  conv + ReLU to ``part_channels`` part detectors;
* :func:`partdist.bilinear_pool` of the two maps (``[N, app_channels * part_channels]``),
  signed square root and L2 normalization: ``global``.

Trained with the batch-hard triplet loss on ``global`` (PABP's loss) and an ID classifier.

Departures from the paper: GoogLeNet appearance stream -> :func:`partdist.models.build_backbone`
(``compact`` on the CPU); the part stream is *not* an OpenPose network on the image: it
is a 1x1 conv on heat maps rendered from the data set's keypoint annotations (no pose network
is available offline); the ID loss is added (PABP trains with the triplet loss only) so that
every model of the comparison sees the same losses; the comparison's schedule.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..pooling import bilinear_pool
from .backbones import build_backbone
from .pdc import check_keypoints
from .reid import _check_images

__all__ = ["PABP", "keypoint_heatmaps"]


def keypoint_heatmaps(kpts: torch.Tensor, image_size, map_size, sigma: float = 1.0) -> torch.Tensor:
    """Keypoints ``[N, K, 3]`` (pixels, score) -> heat maps ``[N, K, h, w]`` on a map of
    ``map_size`` covering an image of ``image_size``: ``score * exp(-d^2 / (2 sigma^2))``
    with ``d`` in map cells (0 for non-finite or out-of-image keypoints' scores)."""
    H, W = image_size
    h, w = map_size
    x = kpts[..., 0] * (w / W) - 0.5
    y = kpts[..., 1] * (h / H) - 0.5
    s = torch.where(torch.isfinite(x) & torch.isfinite(y), kpts[..., 2].clamp(0, 1), torch.zeros_like(x))
    x, y = torch.nan_to_num(x), torch.nan_to_num(y)
    gy = torch.arange(h, dtype=kpts.dtype, device=kpts.device)[:, None]
    gx = torch.arange(w, dtype=kpts.dtype, device=kpts.device)[None, :]
    d2 = (gy - y[..., None, None]) ** 2 + (gx - x[..., None, None]) ** 2
    return s[..., None, None] * torch.exp(-d2 / (2 * sigma ** 2))


class PABP(nn.Module):
    """See the module docstring. ``forward(images, keypoints)``."""

    needs_parts = True

    def __init__(self, num_classes: Optional[int] = None, backbone: str = "resnet50", last_stride: int = 1,
                 weights: Optional[str] = None, app_channels: int = 64, part_channels: int = 16):
        super().__init__()
        self.base = build_backbone(backbone, last_stride, weights)
        c = self.base.out_channels
        self.app = nn.Sequential(nn.Conv2d(c, app_channels, 1, bias=False), nn.BatchNorm2d(app_channels),
                                 nn.ReLU(inplace=True))
        self.part = nn.Sequential(nn.Conv2d(15, part_channels, 1), nn.ReLU(inplace=True))
        self.feat_dim = app_channels * part_channels
        self.fc = nn.Linear(self.feat_dim, num_classes) if num_classes else None

    def forward(self, x, parts, visibility=None):
        _check_images("PABP", x)
        kpts = check_keypoints("PABP", x, parts)
        fmap = self.base(x)
        a = self.app(fmap)
        heat = keypoint_heatmaps(kpts.to(a.dtype), x.shape[-2:], a.shape[-2:])
        p = self.part(torch.cat([heat, torch.ones_like(heat[:, :1])], 1))
        z = bilinear_pool(a, p)
        z = F.normalize(torch.sign(z) * torch.sqrt(z.abs() + 1e-12), dim=1)
        out = {"global": z, "local": None}
        if self.training and self.fc is not None:
            out["logits"] = self.fc(z)
        return out
