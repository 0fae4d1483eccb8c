"""Part-based ReID heads that take part locations as extra inputs.

* :class:`GLAD` - global + 3 part features (head, upper body, lower body) pooled from boxes;
* :class:`SpindleNet` - 7 part features fused with the global one (Spindle Net's fusion tree);
* :class:`SPReID` - global + mask-weighted part features (SPReID).

All share one backbone map (the part features are pooled from it with
:func:`partdist.part_pool`, RoIAlign-style for boxes, instead of re-running the network on image
crops as GLAD and Spindle Net do). ``forward(images, parts, visibility=None)``:

* GLAD / SpindleNet: ``parts`` is boxes ``[N, P, 4]`` in image pixels ``(x1, y1, x2, y2)``, or
  14-keypoint skeletons ``[N, 14, 3]`` (converted with :func:`partdist.keypoints_to_parts`, scheme
  ``"glad"`` / ``"spindle"``);
* SPReID: ``parts`` is soft masks ``[N, P, h, w]`` of any size (resized onto the map by area);
* ``visibility`` ``[N, P]`` bool (optional) marks parts known to be hidden (e.g. occluded); it is
  combined with the visibility :func:`partdist.part_pool` finds (empty boxes or masks).

Output dicts follow :mod:`partdist.models.reid`: ``global`` ``[N, D]`` (the retrieval feature:
invisible parts contribute zeros), ``local`` ``None`` (no stripes for DMLI), and in addition
``parts`` ``[N, P, C]`` and ``part_visibility`` ``[N, P]`` bool (for a visibility-aware part
distance, see ``part_dist``). In training mode with ``num_classes``: ``logits`` (a list for GLAD,
one per branch; a tensor for SpindleNet and SPReID). ``needs_parts = True`` tells
:func:`partdist.eval.extract_features` to pass the fourth item of each batch as ``parts``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..pooling import keypoints_to_parts, part_pool
from .backbones import build_backbone
from .reid import _check_images

__all__ = ["GLAD", "SpindleNet", "SPReID"]


def _check_visibility(name, visibility, n, p):
    if visibility is None:
        return None
    if not isinstance(visibility, torch.Tensor) or visibility.dtype != torch.bool:
        what = visibility.dtype if isinstance(visibility, torch.Tensor) else type(visibility).__name__
        raise TypeError(f"{name}: visibility must be a bool tensor [N, P] = [{n}, {p}], got {what}")
    if tuple(visibility.shape) != (n, p):
        raise ValueError(f"{name}: visibility must have shape [N, P] = [{n}, {p}], got {list(visibility.shape)}")
    return visibility


def _boxes_from_parts(name, x, parts, num_parts, scheme):
    """Boxes ``[N, P, 4]`` (image pixels) and keypoint visibility from boxes or keypoints."""
    N, _, H, W = x.shape
    if not isinstance(parts, torch.Tensor):
        raise TypeError(f"{name}: parts must be boxes [N, {num_parts}, 4] or keypoints [N, 14, 3], got "
                        f"{type(parts).__name__}")
    if parts.dim() == 3 and parts.shape[-1] == 3:
        if parts.shape[0] != N or parts.shape[1] != 14:
            raise ValueError(f"{name}: keypoints must have shape [N, 14, 3] = [{N}, 14, 3], got {list(parts.shape)}")
        return keypoints_to_parts(parts, scheme, image_size=(H, W))
    if parts.dim() != 3 or parts.shape[-1] != 4 or parts.shape[0] != N or parts.shape[1] != num_parts:
        raise ValueError(
            f"{name}: parts must be boxes [N, {num_parts}, 4] = [{N}, {num_parts}, 4] or keypoints [N, 14, 3], "
            f"got {list(parts.shape)}"
        )
    return parts, None


def _masked_max(feats, vis):
    """Element-wise max over dim 1 of the visible entries ``[N, K, D]`` (0 where none is visible)."""
    neg = torch.finfo(feats.dtype).min
    m = feats.masked_fill(~vis[..., None], neg).amax(1)
    return torch.where(vis.any(1)[:, None], m, torch.zeros_like(m))


class _PartModel(nn.Module):
    needs_parts = True

    def _base(self, backbone, last_stride, weights):
        self.base = build_backbone(backbone, last_stride, weights)
        return self.base.out_channels

    def _pool_boxes(self, name, x, fmap, parts, visibility, num_parts, scheme, pool):
        boxes, kvis = _boxes_from_parts(name, x, parts, num_parts, scheme)
        feats, vis = part_pool(fmap, boxes.to(fmap.dtype), pool, image_size=tuple(x.shape[-2:]))
        if kvis is not None:
            vis = vis & kvis
        given = _check_visibility(name, visibility, x.shape[0], num_parts)
        if given is not None:
            vis = vis & given.to(vis.device)
        return feats * vis[..., None].to(feats.dtype), vis


class GLAD(_PartModel):
    """GLAD-style model (Wei et al., ACM MM 2017): a global branch and three part branches
    (head, upper body, lower body), each pooled (``pool`` = ``"avg"``) from the shared map,
    each with its own ID classifier. ``global`` = concatenation of the four features
    ``[N, 4 C]``; ``logits`` = a list of 4 (global, head, upper, lower; the part classifiers
    also see invisible parts, as zero features)."""

    num_parts = 3

    def __init__(self, num_classes: Optional[int] = None, backbone: str = "resnet50", last_stride: int = 1,
                 weights: Optional[str] = None, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool: expected 'avg' or 'max', got {pool!r}")
        c = self._base(backbone, last_stride, weights)
        self.pool = pool
        self.classifiers = nn.ModuleList(nn.Linear(c, num_classes) for _ in range(4)) if num_classes else None
        self.feat_dim = 4 * c

    def forward(self, x, parts, visibility=None):
        _check_images("GLAD", x)
        fmap = self.base(x)
        g = F.adaptive_avg_pool2d(fmap, 1).flatten(1) if self.pool == "avg" else fmap.amax((2, 3))
        feats, vis = self._pool_boxes("GLAD", x, fmap, parts, visibility, 3, "glad", self.pool)
        out = {"global": torch.cat([g, feats.flatten(1)], 1), "local": None, "parts": feats, "part_visibility": vis}
        if self.training and self.classifiers is not None:
            out["logits"] = [clf(f) for clf, f in zip(self.classifiers, [g, *feats.unbind(1)])]
        return out


class SpindleNet(_PartModel):
    """Spindle-Net-style model (Zhao et al., CVPR 2017): 7 part features (head, upper body,
    lower body, right / left arm, right / left leg, boxes or ``"spindle"`` keypoints), each
    embedded to ``embed_dim``, fused by the tree of element-wise maxima (arms into the upper
    body, legs into the lower body, then head / upper / lower; invisible parts are left out of
    each max), concatenated with the embedded global feature and fused by a linear layer:
    ``global`` ``[N, embed_dim]``, one classifier on it."""

    num_parts = 7

    def __init__(self, num_classes: Optional[int] = None, backbone: str = "resnet50", last_stride: int = 1,
                 weights: Optional[str] = None, embed_dim: int = 256):
        super().__init__()
        c = self._base(backbone, last_stride, weights)
        self.global_embed = nn.Sequential(nn.Linear(c, embed_dim), nn.ReLU(inplace=True))
        self.part_embed = nn.ModuleList(
            nn.Sequential(nn.Linear(c, embed_dim), nn.ReLU(inplace=True)) for _ in range(7)
        )
        self.fuse = nn.Linear(2 * embed_dim, embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes) if num_classes else None
        self.feat_dim = embed_dim

    def forward(self, x, parts, visibility=None):
        _check_images("SpindleNet", x)
        fmap = self.base(x)
        g = self.global_embed(F.adaptive_avg_pool2d(fmap, 1).flatten(1))
        pooled, vis = self._pool_boxes("SpindleNet", x, fmap, parts, visibility, 7, "spindle", "avg")
        e = torch.stack([emb(pooled[:, p]) for p, emb in enumerate(self.part_embed)], 1)
        e = e * vis[..., None].to(e.dtype)

        def fuse(idx):
            return _masked_max(e[:, idx], vis[:, idx]), vis[:, idx].any(1)

        head, upper, lower, r_arm, l_arm, r_leg, l_leg = range(7)
        up, up_v = fuse([upper, r_arm, l_arm])
        low, low_v = fuse([lower, r_leg, l_leg])
        body = _masked_max(torch.stack([e[:, head], up, low], 1), torch.stack([vis[:, head], up_v, low_v], 1))
        fused = self.fuse(torch.cat([g, body], 1))
        out = {"global": fused, "local": None, "parts": e, "part_visibility": vis}
        if self.training and self.fc is not None:
            out["logits"] = self.fc(fused)
        return out


class SPReID(_PartModel):
    """SPReID-style model (Kalayeh et al., CVPR 2018): the global average of the map and
    ``num_parts`` mask-weighted part averages (:func:`partdist.part_pool` with soft masks,
    resized onto the map), concatenated into ``global`` ``[N, (1 + num_parts) C]``, with one
    classifier on it."""

    def __init__(self, num_classes: Optional[int] = None, num_parts: int = 3, backbone: str = "resnet50",
                 last_stride: int = 1, weights: Optional[str] = None):
        super().__init__()
        if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
            raise ValueError(f"num_parts: expected a positive int, got {num_parts!r}")
        c = self._base(backbone, last_stride, weights)
        self.num_parts = num_parts
        self.fc = nn.Linear((1 + num_parts) * c, num_classes) if num_classes else None
        self.feat_dim = (1 + num_parts) * c

    def forward(self, x, parts, visibility=None):
        _check_images("SPReID", x)
        N = x.shape[0]
        if not isinstance(parts, torch.Tensor) or parts.dim() != 4 or parts.shape[:2] != (N, self.num_parts):
            got = list(parts.shape) if isinstance(parts, torch.Tensor) else type(parts).__name__
            raise ValueError(f"SPReID: parts must be masks [N, P, h, w] = [{N}, {self.num_parts}, h, w], got {got}")
        fmap = self.base(x)
        g = F.adaptive_avg_pool2d(fmap, 1).flatten(1)
        masks = parts.to(fmap.dtype) if parts.dtype == torch.bool or parts.is_floating_point() else parts
        feats, vis = part_pool(fmap, masks, resize_masks=True)
        given = _check_visibility("SPReID", visibility, N, self.num_parts)
        if given is not None:
            vis = vis & given.to(vis.device)
            feats = feats * vis[..., None].to(feats.dtype)
        glob = torch.cat([g, feats.flatten(1)], 1)
        out = {"global": glob, "local": None, "parts": feats, "part_visibility": vis}
        if self.training and self.fc is not None:
            out["logits"] = self.fc(glob)
        return out
