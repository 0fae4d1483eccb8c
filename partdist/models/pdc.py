"""PDC: Pose-driven Deep Convolutional model (Su et al., ICCV 2017), at small scale.

* six pose parts (head, upper body, two arms, two legs) from 14 keypoints
  (:func:`partdist.keypoints_to_parts`, scheme ``"pdc"``);
* a pose transformer network (PTN): every part box gives an affine transform
  (:func:`partdist.models.posebox.box_thetas`), a small localization network looks at the
  part and predicts a correction ``theta = theta_box + dtheta`` (initialized at 0, so training
  starts from the boxes), and ``affine_grid`` / ``grid_sample`` warp the parts into a
  pose-normalized image (:data:`~partdist.models.posebox.POSE_LAYOUT_6`);
* two streams: the global image and the pose-normalized image, each through its own
  backbone, globally average pooled to ``F_global`` and ``F_part``;
* the fusion ``F_fused = [F_global, tanh(F_part * W + B)]`` (element-wise ``W``, ``B``, learned);
* three ID losses (global, part, fused; ``logits`` is a list of three) + the batch-hard
  triplet loss on ``global`` = ``F_fused`` (the retrieval feature).

Departures from the paper: GoogLeNet streams -> two :func:`partdist.models.build_backbone`
backbones (``compact`` on the CPU); keypoints come from the data set's annotations, not from a
pose estimator; the PTN is one shared 2-layer localization CNN with one zero-initialized
linear head per part, predicting a correction of the box transform (the paper's PTN refines
the whole modified image); the parts are warped straight into a fixed layout rather than
PDC's stitched-then-resized patches; the triplet loss is added (the paper trains with softmax
only) so that every model of the comparison sees the same losses; the schedule is the
comparison's (Adam, few iterations), not the paper's SGD schedule.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..pooling import keypoints_to_parts
from .backbones import build_backbone
from .posebox import POSE_LAYOUT_6, assemble_posebox, box_thetas
from .reid import _check_images

__all__ = ["PDC", "check_keypoints"]


def check_keypoints(name: str, x: torch.Tensor, kpts) -> torch.Tensor:
    """``kpts`` must be ``[N, 14, 3]`` (x, y, score) floating keypoints for images ``x``."""
    N = x.shape[0]
    if not isinstance(kpts, torch.Tensor):
        raise TypeError(f"{name}: parts must be keypoints [N, 14, 3] (x, y, score), got {type(kpts).__name__}")
    if kpts.dim() != 3 or tuple(kpts.shape) != (N, 14, 3) or not kpts.is_floating_point():
        raise ValueError(
            f"{name}: parts must be floating keypoints [N, 14, 3] = [{N}, 14, 3] (x, y, score in image pixels), "
            f"got {list(kpts.shape)} {kpts.dtype}"
        )
    return kpts


class PDC(nn.Module):
    """See the module docstring. ``forward(images, keypoints)``; outputs ``global``
    ``[N, 2 D]`` (the fused feature), ``local`` None, ``posebox`` (the pose-normalized images),
    and in training ``logits`` (global, part, fused)."""

    needs_parts = True
    num_parts = 6

    def __init__(self, num_classes: Optional[int] = None, backbone: str = "resnet50", last_stride: int = 1,
                 weights: Optional[str] = None, ptn: bool = True):
        super().__init__()
        self.base = build_backbone(backbone, last_stride, weights)
        self.part_base = build_backbone(backbone, last_stride, weights)
        d = self.base.out_channels
        self.ptn = ptn
        if ptn:
            self.loc = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                     nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.loc_heads = nn.ModuleList(nn.Linear(32, 6) for _ in range(6))
            for h in self.loc_heads:
                nn.init.zeros_(h.weight)
                nn.init.zeros_(h.bias)
        self.fuse_w = nn.Parameter(torch.ones(d))
        self.fuse_b = nn.Parameter(torch.zeros(d))
        self.classifiers = nn.ModuleList([nn.Linear(d, num_classes), nn.Linear(d, num_classes),
                                          nn.Linear(2 * d, num_classes)]) if num_classes else None
        self.feat_dim = 2 * d

    def pose_normalized(self, x, kpts):
        H, W = x.shape[-2:]
        boxes, vis = keypoints_to_parts(kpts, "pdc", image_size=(H, W))
        thetas = box_thetas(boxes.to(x.dtype), (H, W))
        if self.ptn:
            crops = assemble_posebox(x, thetas, vis, (32, 16 * 6), layout=[(0, 1, p / 6, (p + 1) / 6) for p in range(6)])
            crops = crops.view(x.shape[0], 3, 32, 6, 16).permute(0, 3, 1, 2, 4).reshape(-1, 3, 32, 16)
            code = self.loc(crops).view(x.shape[0], 6, -1)
            delta = torch.stack([h(code[:, p]) for p, h in enumerate(self.loc_heads)], 1).view(-1, 6, 2, 3)
            thetas = thetas + delta
        return assemble_posebox(x, thetas, vis, (H, W), POSE_LAYOUT_6), vis

    def forward(self, x, parts, visibility=None):
        _check_images("PDC", x)
        kpts = check_keypoints("PDC", x, parts)
        posebox, vis = self.pose_normalized(x, kpts)
        fg = F.adaptive_avg_pool2d(self.base(x), 1).flatten(1)
        fp = F.adaptive_avg_pool2d(self.part_base(posebox), 1).flatten(1)
        fused = torch.cat([fg, torch.tanh(fp * self.fuse_w + self.fuse_b)], 1)
        out = {"global": fused, "local": None, "posebox": posebox, "part_visibility": vis}
        if self.training and self.classifiers is not None:
            out["logits"] = [c(f) for c, f in zip(self.classifiers, (fg, fp, fused))]
        return out
