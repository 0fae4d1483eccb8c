"""Gate Siamese: a siamese stripe-LSTM with a matching gate between the branches, after
Varior et al. (ECCV 2016): "A Siamese Long Short-Term Memory Architecture for Human
Re-Identification" (stripe features fed in order to an LSTM, contrastive loss on pairs) and
"Gated Siamese Convolutional Neural Network Architecture for Human Re-Identification" (a
matching gate that compares the two branches row by row and boosts the rows that match).

* trunk (tied, run once per image): backbone map -> ``stripes`` horizontal stripes
  (:func:`partdist.part_pool`) -> a linear layer + ReLU to ``stripe_dim``: ``[N, P, d]``;
* matching gate (per pair): ``g_p = exp(-||s_p - s'_p||^2 / (d * 2 sigma^2))`` of the two
  images' stripe ``p`` (``sigma`` learned), and each branch becomes ``s_p + s_p * g_p``
  (the Gated S-CNN's boosting), so the features of one image depend on the other;
* an LSTM over the gated stripes, top to bottom; the embedding is the concatenation of all
  its hidden states, L2-normalized; the distance is Euclidean;
* loss: the contrastive loss (margin ``margin``) on the pairs of each P x K batch
  (:func:`partdist.models.pairs.batch_pairs`: every positive pair, as many random negatives).

A pair model (:mod:`partdist.models.pairs`): the ranking evaluation runs the trunk once per
image and the gate + LSTM on all ``Q x G`` pairs. ``forward(x)`` (no gate) gives
``global`` = the ungated embedding, ``local`` = the stripes, for a cheap approximation.

Departures from the papers: the two papers are combined (the gate of the Gated S-CNN on the
stripe inputs of the LSTM model); the gate acts on pooled stripe features at the end of the
backbone, not on a mid-level convolution map; the backbone is
:func:`partdist.models.build_backbone` (``compact`` on the CPU) instead of the papers'
hand-crafted LOMO / Color-Names features (LSTM paper) or small siamese CNN (Gated S-CNN);
the comparison's schedule (Adam, few iterations).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..pooling import part_pool
from .backbones import build_backbone
from .pairs import batch_pairs, contrastive_loss
from .reid import _check_images

__all__ = ["GateSiamese"]


class GateSiamese(nn.Module):
    pair_model = True

    def __init__(self, num_classes: Optional[int] = None, backbone: str = "resnet50", last_stride: int = 1,
                 weights: Optional[str] = None, stripes: int = 8, stripe_dim: int = 64, hidden: int = 64,
                 margin: float = 1.0, gate: bool = True):
        super().__init__()
        if isinstance(stripes, bool) or not isinstance(stripes, int) or stripes < 1:
            raise ValueError(f"GateSiamese: stripes must be a positive int, got {stripes!r}")
        self.base = build_backbone(backbone, last_stride, weights)
        self.stripes, self.margin, self.gate_on = stripes, float(margin), bool(gate)
        self.reduce = nn.Sequential(nn.Linear(self.base.out_channels, stripe_dim), nn.ReLU(inplace=True))
        self.log_sigma = nn.Parameter(torch.zeros(()))
        self.lstm = nn.LSTM(stripe_dim, hidden, batch_first=True)
        self.feat_dim = stripes * hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Tied trunk: ``[N, 3, H, W] -> [N, stripes, stripe_dim]``."""
        _check_images("GateSiamese", x)
        s, _ = part_pool(self.base(x), self.stripes)
        return self.reduce(s)

    def embed(self, s: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(s)
        return F.normalize(h.flatten(1), dim=1)

    def gate(self, a: torch.Tensor, b: torch.Tensor):
        """The matching gate of pairs of stripe features ``[n, P, d]`` x 2 -> gated ``(a, b)``."""
        if not self.gate_on:
            return a, b
        d2 = (a - b).pow(2).mean(-1, keepdim=True)
        g = torch.exp(-d2 / (2 * torch.exp(2 * self.log_sigma)))
        return a + a * g, b + b * g

    def pair_distance(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        a, b = self.gate(fa, fb)
        return (self.embed(a) - self.embed(b)).pow(2).sum(1).clamp_min(1e-12).sqrt()

    def pair_loss_terms(self, images: torch.Tensor, pids: torch.Tensor) -> dict:
        f = self.features(images)
        i, j, same = batch_pairs(pids)
        return {"contrastive": contrastive_loss(self.pair_distance(f[i], f[j]), same, self.margin)}

    def forward(self, x: torch.Tensor):
        s = self.features(x)
        return {"global": self.embed(s), "local": s}
