"""Reference ReID models: AlignedReID, PCB / PCB+RPP and ICNN (PCB parts + a global branch).

Every model returns a dict. In training mode: ``global`` ``[N, D]``, ``local`` ``[N, H, C]`` (or
``None``), ``logits`` (a tensor, or a list of tensors for per-part classifiers); ICNN adds
``global_logits`` (the global branch's classifier). In eval mode: ``global`` and ``local`` only
(the features used for retrieval).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone

__all__ = ["AlignedReID", "PCB", "ICNN"]


def _check_images(name, x):
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected images [N, 3, H, W], got {shape}")


def _map_and_global(name, base, x):
    """Images ``x`` (checked; an error names the model ``name``) through the backbone ``base``:
    its map ``[N, C, h, w]`` and the map's global average ``[N, C]``."""
    _check_images(name, x)
    fmap = base(x)
    return fmap, F.adaptive_avg_pool2d(fmap, 1).flatten(1)


class AlignedReID(nn.Module):
    """AlignedReID (Zhang et al. 2017): a global branch and a local (stripe) branch.

    * global: global average pooling of the backbone map -> ``[N, D]`` (+ a linear classifier
      when ``num_classes`` is given, for the ID loss);
    * local: horizontal pooling of each row of the map (``local_pool`` = ``"avg"`` as in the
      widely used PyTorch reproduction, or ``"max"`` as in the paper) -> 1x1 conv to
      ``local_channels`` -> BN -> ReLU -> ``[N, H, local_channels]``; H is the map height (8 for
      256x128 inputs at stride 32) unless ``num_stripes`` resamples it.

    Train with ID (+ label smoothing) + TriHard on the global feature + the DMLI triplet loss on
    the local feature (``partdist.batch_local_dist`` on the mined pairs); test with the global
    distance, optionally fused with ``partdist.local_dist``.
    """

    def __init__(
        self,
        num_classes: Optional[int] = None,
        backbone: str = "resnet50",
        last_stride: int = 2,
        weights: Optional[str] = None,
        local_channels: int = 128,
        local_pool: str = "avg",
        num_stripes: Optional[int] = None,
    ):
        super().__init__()
        if local_pool not in ("avg", "max"):
            raise ValueError(f"local_pool: expected 'avg' or 'max', got {local_pool!r}")
        self.base = build_backbone(backbone, last_stride, weights)
        planes = self.base.out_channels
        self.local_pool = local_pool
        self.num_stripes = num_stripes
        self.local_conv = nn.Conv2d(planes, local_channels, 1)
        self.local_bn = nn.BatchNorm2d(local_channels)
        self.fc = nn.Linear(planes, num_classes) if num_classes else None
        self.feat_dim = planes

    def forward(self, x):
        fmap, g = _map_and_global("AlignedReID", self.base, x)
        if self.local_pool == "avg":
            rows = fmap.mean(-1, keepdim=True)
        else:
            rows = fmap.amax(-1, keepdim=True)
        if self.num_stripes is not None:
            rows = F.adaptive_avg_pool2d(rows, (self.num_stripes, 1))
        local = F.relu(self.local_bn(self.local_conv(rows))).squeeze(-1).permute(0, 2, 1)
        out = {"global": g, "local": local.contiguous()}
        if self.training and self.fc is not None:
            out["logits"] = self.fc(g)
        return out


class PCB(nn.Module):
    """PCB (Sun et al. 2018): ``parts`` uniform horizontal parts, each reduced (1x1 conv + BN +
    ReLU to ``reduce_dim``) and classified by its own classifier. ``rpp=True`` gives PCB+RPP
    (refined part pooling): a 1x1 conv + softmax assigns every location of the map softly to the
    parts, and each part feature is the assignment-weighted average of the map.

    Eval features: ``global`` = concatenation of the reduced part features ``[N, parts*reduce_dim]``,
    ``local`` = the part features as stripes ``[N, parts, reduce_dim]`` (usable with DMLI).
    Default input 384x192 with last stride 1 (24x12 map).
    """

    def __init__(
        self,
        num_classes: Optional[int] = None,
        parts: int = 6,
        backbone: str = "resnet50",
        last_stride: int = 1,
        weights: Optional[str] = None,
        reduce_dim: int = 256,
        rpp: bool = False,
        dropout: float = 0.5,
    ):
        super().__init__()
        if parts < 1:
            raise ValueError(f"parts: expected >= 1, got {parts}")
        self.base = build_backbone(backbone, last_stride, weights)
        planes = self.base.out_channels
        self.parts = parts
        self.rpp = rpp
        self.dropout = nn.Dropout(dropout)
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(planes, reduce_dim, 1, bias=False), nn.BatchNorm2d(reduce_dim), nn.ReLU(True))
            for _ in range(parts)
        )
        self.classifiers = (
            nn.ModuleList(nn.Linear(reduce_dim, num_classes) for _ in range(parts)) if num_classes else None
        )
        self.part_classifier = nn.Conv2d(planes, parts, 1) if rpp else None
        self.feat_dim = parts * reduce_dim

    def pool_parts(self, fmap):
        """``[N, C, H, W] -> [N, C, parts, 1]``: uniform stripes or RPP soft assignment."""
        if not self.rpp:
            return F.adaptive_avg_pool2d(fmap, (self.parts, 1))
        prob = self.part_classifier(fmap).softmax(1)  # [N, P, H, W]
        weighted = torch.einsum("nphw,nchw->ncp", prob, fmap)
        mass = prob.sum((2, 3)).clamp_min(1e-6)[:, None, :]
        return (weighted / mass).unsqueeze(-1)

    def part_features(self, fmap):
        """``[N, C, H, W]`` map -> list of ``parts`` reduced part features ``[N, reduce_dim]``."""
        pooled = self.dropout(self.pool_parts(fmap)) if self.training else self.pool_parts(fmap)
        return [self.reduce[p](pooled[:, :, p : p + 1]).flatten(1) for p in range(self.parts)]

    def forward(self, x):
        _check_images("PCB", x)
        feats = self.part_features(self.base(x))
        local = torch.stack(feats, 1)  # [N, parts, reduce_dim]
        out = {"global": local.flatten(1), "local": local}
        if self.training and self.classifiers is not None:
            out["logits"] = [clf(f) for clf, f in zip(self.classifiers, feats)]
        return out


class ICNN(PCB):
    """ICNN-style model: the PCB part branch plus a global branch on the same backbone map.

    * parts: as :class:`PCB` (uniform stripes, or RPP with ``rpp=True``), each reduced and
      classified by its own classifier (ID loss per part);
    * global: global average pooling of the map -> ``[N, D]`` (D = backbone channels), trained
      with the batch-hard triplet loss and an ID classifier (``global_logits``).

    Outputs: ``global`` = the global-branch feature (the one the triplet loss sees, in training
    and at test time), ``local`` = the part features ``[N, parts, reduce_dim]`` (DMLI / fused
    distances in :mod:`partdist.eval`), and in training ``logits`` (list, one per part) and
    ``global_logits``.
    """

    def __init__(self, num_classes: Optional[int] = None, parts: int = 6, backbone: str = "resnet50",
                 last_stride: int = 1, weights: Optional[str] = None, reduce_dim: int = 256, rpp: bool = False,
                 dropout: float = 0.5):
        super().__init__(num_classes, parts, backbone, last_stride, weights, reduce_dim, rpp, dropout)
        planes = self.base.out_channels
        self.global_classifier = nn.Linear(planes, num_classes) if num_classes else None
        self.feat_dim = planes

    def forward(self, x):
        fmap, g = _map_and_global("ICNN", self.base, x)
        feats = self.part_features(fmap)
        out = {"global": g, "local": torch.stack(feats, 1)}
        if self.training and self.classifiers is not None:
            out["logits"] = [clf(f) for clf, f in zip(self.classifiers, feats)]
            out["global_logits"] = self.global_classifier(g)
        return out
