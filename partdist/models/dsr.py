"""DSR: Deep Spatial feature Reconstruction (He et al., CVPR 2018), at small scale.

A fully convolutional backbone; every image is a set of cell features (the map pooled to a
``grid`` of cells with :func:`partdist.part_pool`, L2-normalized), and two images are compared
by the DSR distance :func:`partdist.dsr_dist` (each query cell reconstructed sparsely from the
gallery's cells; no alignment needed, any image sizes). Outputs: ``global`` (the map's average,
for the ID loss and a global baseline) and ``local`` = the cells ``[N, gh * gw, C]``; evaluate
with the ``dsr`` distance (:mod:`partdist.eval.model_eval`).

Training: ID loss + batch-hard triplet on ``global`` (the comparison's losses) plus, with
``dsr_weight > 0``, the batch-hard triplet loss on the DSR distances of the batch
(:meth:`DSRNet.extra_losses`; :func:`partdist.dsr_dist` is differentiable), DSR's own loss.

Departures from the paper: ResNet-50 FCN -> :func:`partdist.models.build_backbone` (``compact``
on the CPU); the cells are a pooled ``gh x gw`` grid (4 x 2 by default) instead of every map
cell plus multi-scale blocks (so the Lasso stays small on the CPU); ``beta = 0.1``, FISTA
stops at ``max_iter = 50`` in training; the comparison's schedule.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch.nn.functional as F
from torch import nn

from ..ops.mining import triplet_hard_loss
from ..ops.parts import dsr_dist
from ..pooling import part_pool
from .backbones import build_backbone
from .reid import _map_and_global

__all__ = ["DSRNet"]


class DSRNet(nn.Module):
    eval_distance = "dsr"

    def __init__(self, num_classes: Optional[int] = None, backbone: str = "resnet50", last_stride: int = 1,
                 weights: Optional[str] = None, grid: Tuple[int, int] = (4, 2), dsr_weight: float = 1.0,
                 beta: float = 0.1, margin: float = 0.3):
        super().__init__()
        self.base = build_backbone(backbone, last_stride, weights)
        c = self.base.out_channels
        self.grid, self.dsr_weight, self.beta, self.margin = tuple(grid), float(dsr_weight), float(beta), margin
        self.fc = nn.Linear(c, num_classes) if num_classes else None
        self.feat_dim = c

    def forward(self, x):
        fmap, g = _map_and_global("DSRNet", self.base, x)
        cells, _ = part_pool(fmap, self.grid)
        out = {"global": g, "local": cells}
        if self.training and self.fc is not None:
            out["logits"] = self.fc(g)
        return out

    def extra_losses(self, out, pids):
        """The batch-hard triplet loss on the DSR distances of the batch's cells (0 terms
        when ``dsr_weight == 0``)."""
        if self.dsr_weight <= 0:
            return {}
        z = F.normalize(out["local"], dim=-1)
        d = dsr_dist(z, z, beta=self.beta, max_iter=50)
        return {"dsr": self.dsr_weight * triplet_hard_loss(d, pids, self.margin)}
