"""SCPNet: Spatial-Channel Parallelism Network (Fan et al., ACCV 2018), at small scale.

* global branch: global average pooling of the backbone map, ``[N, C]``, with an ID
  classifier; its channels are split into ``parts`` groups of ``C / parts``;
* local branch: ``parts`` horizontal stripes (:func:`partdist.part_pool`), each reduced by its
  own linear layer + BN + ReLU to ``C / parts`` and classified by its own classifier;
* the spatial-channel parallelism (SCP) loss ``scp_weight * mean_n sum_k ||g_k - s_k||^2``
  makes channel group ``k`` of the global feature regress stripe ``k``: the global feature
  learns the local (spatial) structure, so at test time the global feature alone is used
  (``global``; ``local`` = the stripes ``[N, parts, C / parts]`` for DMLI if wanted).

The SCP loss is :meth:`SCPNet.extra_losses` (the trainer adds it to the ID and triplet losses).

Departures from the paper: ResNet-50 -> :func:`partdist.models.build_backbone` (``compact``
on the CPU; its 256 channels in 4 groups by default instead of 2048 in 4); the stripe features
are the regression *targets* and are detached in the SCP loss (the local branch is trained by
its ID losses; the paper's gradient flow into the local branch is not reproduced); the
batch-hard triplet loss on the global feature is added so that every model of the comparison
sees the same losses; the comparison's schedule.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..pooling import part_pool
from .backbones import build_backbone
from .reid import _map_and_global

__all__ = ["SCPNet"]


class SCPNet(nn.Module):
    def __init__(self, num_classes: Optional[int] = None, parts: int = 4, backbone: str = "resnet50",
                 last_stride: int = 1, weights: Optional[str] = None, scp_weight: float = 1.0):
        super().__init__()
        if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
            raise ValueError(f"SCPNet: parts must be a positive int, got {parts!r}")
        self.base = build_backbone(backbone, last_stride, weights)
        c = self.base.out_channels
        if c % parts:
            raise ValueError(f"SCPNet: parts ({parts}) must divide the backbone's {c} channels (the channel groups)")
        self.parts, self.group = parts, c // parts
        self.scp_weight = float(scp_weight)
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Linear(c, self.group), nn.BatchNorm1d(self.group), nn.ReLU(inplace=True))
            for _ in range(parts)
        )
        self.fc = nn.Linear(c, num_classes) if num_classes else None
        self.part_fc = nn.ModuleList(nn.Linear(self.group, num_classes) for _ in range(parts)) if num_classes else None
        self.feat_dim = c

    def forward(self, x):
        fmap, g = _map_and_global("SCPNet", self.base, x)
        stripes, _ = part_pool(fmap, self.parts)
        s = torch.stack([red(stripes[:, k]) for k, red in enumerate(self.reduce)], 1)  # [N, P, C / P]
        out = {"global": g, "local": s}
        if self.training and self.fc is not None:
            out["logits"] = [self.fc(g)] + [fc(s[:, k]) for k, fc in enumerate(self.part_fc)]
        return out

    def extra_losses(self, out, pids):
        """The SCP loss of a training forward's output (the trainer adds it to the ID and
        triplet losses)."""
        g, s = out["global"], out["local"]
        groups = g.view(g.shape[0], self.parts, self.group)
        return {"scp": self.scp_weight * (groups - s.detach()).pow(2).sum(-1).mean()}
