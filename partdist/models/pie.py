"""PIE: Pose Invariant Embedding (Zheng et al., 2017), at small scale.

* PoseBox: the parts of a 14-keypoint skeleton (scheme ``"pdc"`` of
  :func:`partdist.keypoints_to_parts`: head, torso, two arms, two legs) are warped by fixed
  affine transforms (``affine_grid`` / ``grid_sample``, no learning) into a standard pose
  image (:data:`~partdist.models.posebox.POSE_LAYOUT_6`);
* the PoseBox Fusion (PBF) network: an image stream and a PoseBox stream (each its own
  backbone, globally pooled) and the pose confidences (the 14 keypoint scores) are
  concatenated and fused by a fully connected layer into the PIE descriptor;
* three ID losses (image, PoseBox, fused; ``logits`` a list of three), plus the batch-hard
  triplet loss on ``global`` = the fused descriptor (the retrieval feature).

Departures from the paper: ResNet-50 streams -> :func:`partdist.models.build_backbone`
backbones (``compact`` on the CPU); 6 PoseBox parts instead of PIE's 10 (the head, torso, and
upper / lower arm and leg segments; here one box per limb); keypoints from the data set's
annotations, not from a convolutional pose machine; the triplet loss is added (PIE trains
with softmax only) so that every model of the comparison sees the same losses; the
comparison's schedule.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..pooling import keypoints_to_parts
from .backbones import build_backbone
from .pdc import check_keypoints
from .posebox import POSE_LAYOUT_6, assemble_posebox, box_thetas
from .reid import _check_images

__all__ = ["PIE"]


class PIE(nn.Module):
    """See the module docstring. ``forward(images, keypoints)``; outputs ``global``
    ``[N, embed_dim]``, ``local`` None, ``posebox``, and in training ``logits``."""

    needs_parts = True
    num_parts = 6

    def __init__(self, num_classes: Optional[int] = None, backbone: str = "resnet50", last_stride: int = 1,
                 weights: Optional[str] = None, embed_dim: int = 256):
        super().__init__()
        self.base = build_backbone(backbone, last_stride, weights)
        self.pose_base = build_backbone(backbone, last_stride, weights)
        d = self.base.out_channels
        self.fuse = nn.Sequential(nn.Linear(2 * d + 14, embed_dim), nn.BatchNorm1d(embed_dim), nn.ReLU(inplace=True))
        self.classifiers = nn.ModuleList([nn.Linear(d, num_classes), nn.Linear(d, num_classes),
                                          nn.Linear(embed_dim, num_classes)]) if num_classes else None
        self.feat_dim = embed_dim

    def forward(self, x, parts, visibility=None):
        _check_images("PIE", x)
        kpts = check_keypoints("PIE", x, parts)
        H, W = x.shape[-2:]
        boxes, vis = keypoints_to_parts(kpts, "pdc", image_size=(H, W))
        posebox = assemble_posebox(x, box_thetas(boxes.to(x.dtype), (H, W)), vis, (H, W), POSE_LAYOUT_6)
        fi = F.adaptive_avg_pool2d(self.base(x), 1).flatten(1)
        fp = F.adaptive_avg_pool2d(self.pose_base(posebox), 1).flatten(1)
        conf = kpts[..., 2].clamp(0, 1).to(fi.dtype)
        fused = self.fuse(torch.cat([fi, fp, conf], 1))
        out = {"global": fused, "local": None, "posebox": posebox, "part_visibility": vis}
        if self.training and self.classifiers is not None:
            out["logits"] = [c(f) for c, f in zip(self.classifiers, (fi, fp, fused))]
        return out
