"""Part features beyond stripes: pooling a feature map over arbitrary parts.

* :func:`part_pool` - pool a map ``[N, C, H, W]`` over horizontal stripes, a grid, boxes
  (``torchvision.ops.roi_align``) or soft masks (SPReID-style weighted average) into
  ``(feats [N, P, C], visibility [N, P] bool)``;
* :func:`keypoints_to_parts` - 14-keypoint skeletons -> part boxes + visibility
  (Spindle Net 7 parts, GLAD 3, PDC 6);
* :func:`bilinear_pool` - PABP-style bilinear pooling of an appearance map and a part map.

Boxes are pooled by torchvision's ``roi_align`` (CPU and CUDA kernels, autocast rules); the rest
is plain PyTorch. All of it is differentiable with respect to the feature map (and the masks).
``partdist.reference`` holds loop versions that the tests compare against. Invisible parts get feature 0 and ``visibility = False``, never NaN;
a visibility-aware part distance can then skip them (see ``part_dist``).

Keypoint order (LSP, as used by Spindle Net; AI Challenger's 14 points are the same joints in
another order): ``0`` r-ankle, ``1`` r-knee, ``2`` r-hip, ``3`` l-hip, ``4`` l-knee,
``5`` l-ankle, ``6`` r-wrist, ``7`` r-elbow, ``8`` r-shoulder, ``9`` l-shoulder, ``10`` l-elbow,
``11`` l-wrist, ``12`` neck, ``13`` head-top. Keypoints are ``(x, y, score)`` in pixels of the
image (x to the right, y down).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._checks import _shape, check_floating, check_pos_int, check_tensor

__all__ = [
    "part_pool",
    "keypoints_to_parts",
    "bilinear_pool",
    "KEYPOINT_NAMES",
    "PART_SCHEMES",
]

#: The 14 keypoints, in the order ``keypoints_to_parts`` expects (LSP order).
KEYPOINT_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
    "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
    "neck", "head_top",
)
_K = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
_HEAD = ("head_top", "neck")
_TORSO = ("neck", "r_shoulder", "l_shoulder", "r_hip", "l_hip")
_LOWER = ("r_hip", "l_hip", "r_knee", "l_knee", "r_ankle", "l_ankle")
_R_ARM = ("r_shoulder", "r_elbow", "r_wrist")
_L_ARM = ("l_shoulder", "l_elbow", "l_wrist")
_R_LEG = ("r_hip", "r_knee", "r_ankle")
_L_LEG = ("l_hip", "l_knee", "l_ankle")

#: scheme -> list of (part name, keypoint names whose bounding box is the part box).
PART_SCHEMES: Dict[str, List[Tuple[str, Tuple[str, ...]]]] = {
    # Spindle Net (Zhao et al., CVPR 2017): 3 macro regions (head-shoulder, upper body, lower
    # body) and 4 micro regions (two arms, two legs).
    "spindle": [
        ("head", _HEAD + ("r_shoulder", "l_shoulder")),
        ("upper_body", _TORSO),
        ("lower_body", _LOWER),
        ("r_arm", _R_ARM),
        ("l_arm", _L_ARM),
        ("r_leg", _R_LEG),
        ("l_leg", _L_LEG),
    ],
    # GLAD (Wei et al., ACM MM 2017): head, upper body, lower body. GLAD itself uses four
    # keypoints (head top, neck, two hips) and full-width bands; here the upper body is the box
    # of neck, shoulders, arms and hips, the lower body the box of hips, knees and ankles.
    "glad": [
        ("head", _HEAD),
        ("upper_body", _TORSO + _R_ARM[1:] + _L_ARM[1:]),
        ("lower_body", _LOWER),
    ],
    # PDC (Su et al., ICCV 2017): six parts, head, upper body (torso), two arms, two legs.
    "pdc": [
        ("head", _HEAD),
        ("upper_body", _TORSO),
        ("r_arm", _R_ARM),
        ("l_arm", _L_ARM),
        ("r_leg", _R_LEG),
        ("l_leg", _L_LEG),
    ],
}


# ----------------------------------------------------------------------------- checks
def _check_pair(op, name, v, what):
    """A (a, b) pair of positive numbers."""
    if not (isinstance(v, (tuple, list, torch.Size)) and len(v) == 2):
        raise ValueError(f"{op}: {name} must be a pair {what}, got {v!r}")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
            raise ValueError(f"{op}: {name} must be a pair {what} of positive numbers, got {v!r}")
    return float(v[0]), float(v[1])


def _check_fmap(op, fmap):
    check_floating(op, "fmap", fmap)
    if fmap.dim() != 4:
        raise ValueError(f"{op}: fmap must be a 4-D tensor [N, C, H, W], got shape {_shape(fmap)}")
    if fmap.shape[2] < 1 or fmap.shape[3] < 1:
        raise ValueError(f"{op}: fmap must have H >= 1 and W >= 1 ([N, C, H, W]), got shape {_shape(fmap)}")


def _check_same_device(op, name, t, fmap):
    if t.device != fmap.device:
        raise ValueError(f"{op}: {name} must be on the same device as fmap ({fmap.device}), got {t.device}")


# ---------------------------------------------------------------------- part_pool
def _stripes_or_grid(fmap, gh, gw, mode):
    pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    out = pool(fmap, (gh, gw))  # [N, C, gh, gw]
    feats = out.flatten(2).transpose(1, 2)  # [N, gh*gw, C], parts in row-major order
    vis = torch.ones(feats.shape[:2], dtype=torch.bool, device=fmap.device)
    return feats, vis


def _boxes_to_map(op, boxes, fmap, spatial_scale, image_size):
    """Boxes in map coordinates, clipped to the map, and their visibility."""
    N, _, H, W = fmap.shape
    check_floating(op, "boxes", boxes)
    if boxes.dim() != 3 or boxes.shape[2] != 4:
        raise ValueError(f"{op}: boxes must be a 3-D tensor [N, P, 4] (x1, y1, x2, y2), got shape {_shape(boxes)}")
    if boxes.shape[0] != N:
        raise ValueError(
            f"{op}: boxes must hold one row per image of fmap ([{N}, P, 4]), got shape {_shape(boxes)}"
        )
    _check_same_device(op, "boxes", boxes, fmap)
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{op}: boxes must be finite (no NaN or inf)")
    if spatial_scale is not None and image_size is not None:
        raise ValueError(f"{op}: give spatial_scale or image_size, not both")
    if image_size is not None:
        h_img, w_img = _check_pair(op, "image_size", image_size, "(H_img, W_img)")
        sy, sx = H / h_img, W / w_img
    elif spatial_scale is not None:
        if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)) or not (
            math.isfinite(spatial_scale) and spatial_scale > 0
        ):
            raise ValueError(f"{op}: spatial_scale must be a positive finite number, got {spatial_scale!r}")
        sy = sx = float(spatial_scale)
    else:
        sy = sx = 1.0
    b = boxes.detach().to(fmap.dtype)
    x1 = (b[..., 0] * sx).clamp(0, W)
    x2 = (b[..., 2] * sx).clamp(0, W)
    y1 = (b[..., 1] * sy).clamp(0, H)
    y2 = (b[..., 3] * sy).clamp(0, H)
    vis = (x2 > x1) & (y2 > y1)
    return x1, y1, x2, y2, vis


def _grid_size(lo, hi):
    """torchvision's adaptive sampling grid of ``roi_align(aligned=True)`` with one output bin:
    ``ceil`` of the box extent (computed as torchvision does, from the half-pixel-shifted ends)."""
    return torch.ceil((hi - 0.5) - (lo - 0.5)).clamp_min(1).to(torch.int64)


def _pool_boxes(fmap, boxes, mode, sampling_ratio, spatial_scale, image_size, op):
    from torchvision.ops import roi_align

    N, C, H, W = fmap.shape
    x1, y1, x2, y2, vis = _boxes_to_map(op, boxes, fmap, spatial_scale, image_size)
    P = boxes.shape[1]
    if sampling_ratio is not None:
        check_pos_int(op, "sampling_ratio", sampling_ratio)
    if N * P == 0:
        return fmap.new_zeros(N, P, C), vis
    dtype = fmap.dtype
    if dtype == torch.bfloat16:  # roi_align has no bfloat16 kernels: pooled in float32, returned in bfloat16
        fmap, x1, y1, x2, y2 = (t.float() for t in (fmap, x1, y1, x2, y2))
    idx = torch.arange(N, dtype=fmap.dtype, device=fmap.device)[:, None].expand(N, P)
    # invisible boxes (no area; possibly inverted, which roi_align's adaptive grid cannot take) are
    # pooled as the unit box at the origin, then zeroed
    unit = (torch.zeros_like(x1), torch.zeros_like(y1), torch.ones_like(x2), torch.ones_like(y2))
    coords = [torch.where(vis, c, u) for c, u in zip((x1, y1, x2, y2), unit)]
    rois = torch.stack([idx, *coords], -1).reshape(N * P, 5)
    if mode == "avg":
        # sampling_ratio <= 0: torchvision's adaptive grid, ceil(box extent) samples per axis per box
        out = roi_align(fmap, rois, 1, 1.0, -1 if sampling_ratio is None else sampling_ratio, True)
        feats = out.reshape(N, P, C)
    elif sampling_ratio is not None:
        # one sample per output bin at the bin centre: the sampling_ratio^2 grid, maximized
        s = sampling_ratio
        feats = roi_align(fmap, rois, (s, s), 1.0, 1, True).amax((2, 3)).reshape(N, P, C)
    else:
        # the adaptive grid differs per box: one roi_align call per grid size
        gh, gw = _grid_size(rois[:, 2], rois[:, 4]), _grid_size(rois[:, 1], rois[:, 3])
        flat = fmap.new_zeros(N * P, C)
        for sh, sw in torch.unique(torch.stack([gh, gw], 1), dim=0).tolist():
            sel = ((gh == sh) & (gw == sw)).nonzero().squeeze(1)
            flat = flat.index_copy(0, sel, roi_align(fmap, rois[sel], (sh, sw), 1.0, 1, True).amax((2, 3)))
        feats = flat.reshape(N, P, C)
    feats = torch.where(vis[..., None], feats, torch.zeros((), dtype=feats.dtype, device=feats.device))
    return feats.to(dtype), vis


def _pool_masks(fmap, masks, mode, resize_masks, op):
    N, C, H, W = fmap.shape
    check_tensor(op, "masks", masks)
    if masks.dim() != 4:
        raise ValueError(f"{op}: masks must be a 4-D tensor [N, P, H, W], got shape {_shape(masks)}")
    if masks.dtype == torch.bool:
        masks = masks.to(fmap.dtype)
    elif not masks.is_floating_point():
        raise TypeError(f"{op}: masks must be a floating-point or bool tensor [N, P, H, W], got dtype {masks.dtype}")
    elif masks.dtype != fmap.dtype:
        raise TypeError(f"{op}: masks must have the dtype of fmap ({fmap.dtype}) or bool, got {masks.dtype}")
    if masks.shape[0] != N:
        raise ValueError(f"{op}: masks must hold one row per image of fmap ([{N}, P, H, W]), got shape {_shape(masks)}")
    _check_same_device(op, "masks", masks, fmap)
    if mode != "avg":
        raise ValueError(f"{op}: masks are pooled by weighted average only (mode='avg'), got mode={mode!r}")
    if not isinstance(resize_masks, bool):
        raise TypeError(f"{op}: resize_masks must be a bool, got {resize_masks!r}")
    if tuple(masks.shape[2:]) != (H, W):
        if not resize_masks:
            raise ValueError(
                f"{op}: masks must have the spatial size of fmap ([N, P, {H}, {W}]), got shape {_shape(masks)}; "
                "pass resize_masks=True to resize them (area interpolation)"
            )
        masks = F.adaptive_avg_pool2d(masks, (H, W))
    if not bool(torch.isfinite(masks).all()) or bool((masks < 0).any()):
        raise ValueError(f"{op}: masks must be finite and >= 0")
    weighted = torch.einsum("nphw,nchw->npc", masks, fmap)
    mass = masks.sum((2, 3))  # [N, P]
    vis = mass > 0
    safe = torch.where(vis, mass, torch.ones_like(mass))
    feats = torch.where(vis[..., None], weighted / safe[..., None], torch.zeros_like(weighted))
    return feats, vis


def part_pool(
    fmap: torch.Tensor,
    parts,
    mode: str = "avg",
    *,
    sampling_ratio: Optional[int] = None,
    spatial_scale: Optional[float] = None,
    image_size: Optional[Sequence[float]] = None,
    resize_masks: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pool ``fmap`` ``[N, C, H, W]`` over parts: ``-> (feats [N, P, C], visibility [N, P] bool)``.

    ``parts`` is one of

    * an int ``P``: horizontal stripes (PCB / AlignedReID). Stripe ``i`` covers rows
      ``floor(i H / P)`` to ``ceil((i + 1) H / P) - 1``, the bins of PyTorch's adaptive
      pooling: exactly ``adaptive_{avg,max}_pool2d(fmap, (P, 1))``. When ``H`` is divisible by
      ``P`` the stripes are disjoint and equal; otherwise neighbouring stripes share a row
      (and ``P > H`` repeats rows).
    * a pair ``(gh, gw)``: a grid of the same adaptive bins, ``P = gh * gw`` parts in row-major
      order (part ``r * gw + c`` is row ``r``, column ``c``).
    * boxes ``[N, P, 4]`` ``(x1, y1, x2, y2)``, floating point, pooled by
      ``torchvision.ops.roi_align(aligned=True)`` after clipping to the map: continuous coordinates
      in which map cell ``(i, j)`` covers ``[j, j+1] x [i, i+1]``, an evenly spaced grid of
      ``sh x sw`` bilinear samples inside the box, averaged (``"avg"``: one output bin) or
      maximized (``"max"``: ``sh x sw`` output bins of one sample each, then their maximum). Boxes are in map coordinates unless ``spatial_scale`` (one factor, as
      torchvision: map = box * spatial_scale) or ``image_size=(H_img, W_img)`` (per-axis factors
      ``H / H_img``, ``W / W_img``: boxes in image pixels) is given. Boxes are **clipped** to the
      map; a box with no area left (zero or negative width or height, or entirely outside the
      map) is invisible. ``sampling_ratio``: samples per axis; ``None`` (default) is
      torchvision's adaptive grid, one sample per map cell of each box (``ceil(height)`` x
      ``ceil(width)`` of the clipped box in map cells), so a box's feature does not depend on the
      other boxes of the batch. Not differentiable w.r.t. the boxes.
    * soft masks ``[N, P, H, W]`` (floating point of fmap's dtype, or bool), ``>= 0``:
      SPReID's weighted average ``sum m f / sum m`` (``mode="avg"`` only); a part whose mask
      sums to 0 is invisible. Masks must have the map's spatial size; ``resize_masks=True``
      resizes them by area interpolation (``adaptive_avg_pool2d``) first, e.g. image-sized
      masks onto a stride-16 map. Differentiable w.r.t. fmap and masks.

    Invisible parts get ``feats = 0`` and ``visibility = False`` (stripes and grid cells are
    always visible). Bad arguments raise ``ValueError`` / ``TypeError`` naming the argument.
    """
    op = "part_pool"
    _check_fmap(op, fmap)
    if mode not in ("avg", "max"):
        raise ValueError(f"{op}: mode must be 'avg' or 'max', got {mode!r}")
    is_boxes = isinstance(parts, torch.Tensor) and parts.dim() == 3
    if not is_boxes and (sampling_ratio is not None or spatial_scale is not None or image_size is not None):
        raise ValueError(f"{op}: sampling_ratio, spatial_scale and image_size apply to boxes [N, P, 4] only")
    is_masks = isinstance(parts, torch.Tensor) and parts.dim() == 4
    if not is_masks and resize_masks:
        raise ValueError(f"{op}: resize_masks applies to masks [N, P, H, W] only")
    if isinstance(parts, torch.Tensor):
        if is_boxes:
            return _pool_boxes(fmap, parts, mode, sampling_ratio, spatial_scale, image_size, op)
        if is_masks:
            return _pool_masks(fmap, parts, mode, resize_masks, op)
        raise ValueError(
            f"{op}: parts as a tensor must be boxes [N, P, 4] or masks [N, P, H, W], got shape {_shape(parts)}"
        )
    if isinstance(parts, bool):
        raise TypeError(f"{op}: parts must be an int, a (gh, gw) pair, boxes or masks, got {parts!r}")
    if isinstance(parts, int):
        check_pos_int(op, "parts (number of stripes)", parts)
        return _stripes_or_grid(fmap, parts, 1, mode)
    if isinstance(parts, (tuple, list)) and len(parts) == 2:
        gh = check_pos_int(op, "parts[0] (grid rows)", parts[0])
        gw = check_pos_int(op, "parts[1] (grid columns)", parts[1])
        return _stripes_or_grid(fmap, gh, gw, mode)
    raise TypeError(
        f"{op}: parts must be an int P (stripes), a (gh, gw) grid, boxes [N, P, 4] or masks [N, P, H, W], "
        f"got {type(parts).__name__}"
    )


# -------------------------------------------------------------- keypoints_to_parts
def keypoints_to_parts(
    kpts: torch.Tensor,
    scheme: str = "spindle",
    score_thresh: float = 0.3,
    image_size: Optional[Sequence[float]] = None,
    margin: float = 0.05,
    min_keypoints: int = 2,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """14-keypoint skeletons ``[N, 14, 3]`` ``(x, y, score)`` -> part boxes ``[N, P, 4]`` + visibility ``[N, P]``.

    Keypoints follow the LSP order of :data:`KEYPOINT_NAMES` (module docstring). Schemes
    (:data:`PART_SCHEMES` lists the keypoints of each part):

    * ``"spindle"`` (7): head (head top, neck, shoulders), upper body (neck, shoulders, hips),
      lower body (hips, knees, ankles), right arm, left arm, right leg, left leg;
    * ``"glad"`` (3): head (head top, neck), upper body (neck, shoulders, elbows, wrists, hips),
      lower body (hips, knees, ankles);
    * ``"pdc"`` (6): head, upper body (torso), right arm, left arm, right leg, left leg.

    A keypoint counts when its score is ``>= score_thresh`` and its x, y are finite. A part box
    is the bounding box of its counted keypoints, padded by ``margin * H_img`` pixels on every
    side and clipped to the image ``[0, W_img] x [0, H_img]``. A part with fewer than
    ``min_keypoints`` counted keypoints, or whose clipped box has no area, is invisible and its
    box is ``(0, 0, 0, 0)`` (which :func:`part_pool` also treats as invisible).
    ``image_size=(H_img, W_img)`` is required. Boxes have kpts' dtype; visibility is bool.
    """
    op = "keypoints_to_parts"
    check_floating(op, "kpts", kpts)
    if kpts.dim() != 3 or kpts.shape[1] != 14 or kpts.shape[2] != 3:
        raise ValueError(f"{op}: kpts must be a 3-D tensor [N, 14, 3] (x, y, score), got shape {_shape(kpts)}")
    if scheme not in PART_SCHEMES:
        raise ValueError(f"{op}: scheme must be one of {sorted(PART_SCHEMES)}, got {scheme!r}")
    if image_size is None:
        raise ValueError(f"{op}: image_size=(H_img, W_img) is required (boxes are clipped to the image)")
    h_img, w_img = _check_pair(op, "image_size", image_size, "(H_img, W_img)")
    for name, v in (("score_thresh", score_thresh), ("margin", margin)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{op}: {name} must be a finite number, got {v!r}")
    if margin < 0:
        raise ValueError(f"{op}: margin must be >= 0 (a fraction of the image height), got {margin}")
    check_pos_int(op, "min_keypoints", min_keypoints)

    groups = PART_SCHEMES[scheme]
    member = torch.zeros(len(groups), 14, dtype=torch.bool, device=kpts.device)
    for p, (_, names) in enumerate(groups):
        member[p, [_K[n] for n in names]] = True
    x, y, s = kpts.unbind(-1)  # [N, 14]
    ok = (s >= score_thresh) & torch.isfinite(x) & torch.isfinite(y)
    use = member[None] & ok[:, None, :]  # [N, P, 14]
    inf = torch.tensor(float("inf"), dtype=kpts.dtype, device=kpts.device)
    xs, ys = x[:, None, :].expand_as(use), y[:, None, :].expand_as(use)
    pad = margin * h_img
    x1 = (torch.where(use, xs, inf).amin(-1) - pad).clamp(0, w_img)
    y1 = (torch.where(use, ys, inf).amin(-1) - pad).clamp(0, h_img)
    x2 = (torch.where(use, xs, -inf).amax(-1) + pad).clamp(0, w_img)
    y2 = (torch.where(use, ys, -inf).amax(-1) + pad).clamp(0, h_img)
    vis = (use.sum(-1) >= min_keypoints) & (x2 > x1) & (y2 > y1)
    boxes = torch.stack([x1, y1, x2, y2], -1)
    boxes = torch.where(vis[..., None], boxes, torch.zeros_like(boxes))
    return boxes, vis


# -------------------------------------------------------------------- bilinear_pool
def bilinear_pool(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Part-aligned bilinear pooling (PABP, Suh et al. 2018): ``[N, Ca, H, W] x [N, Cp, H, W] -> [N, Ca * Cp]``.

    ``out[n] = (1 / HW) sum_xy vec(a_xy outer p_xy)``, one batched matmul; entry
    ``i * Cp + j`` is ``mean_xy a[n, i, y, x] p[n, j, y, x]``. (PABP then applies the signed
    square root and L2 normalization; do that on the result if you want it.)
    """
    op = "bilinear_pool"
    for name, t, layout in (("a", a, "[N, Ca, H, W]"), ("p", p, "[N, Cp, H, W]")):
        check_floating(op, name, t)
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be a 4-D tensor {layout}, got shape {_shape(t)}")
    if p.device != a.device:
        raise ValueError(f"{op}: p must be on the same device as a ({a.device}), got {p.device}")
    if p.dtype != a.dtype:
        raise TypeError(f"{op}: p must have the same dtype as a ({a.dtype}), got {p.dtype}")
    if a.shape[0] != p.shape[0] or a.shape[2:] != p.shape[2:]:
        raise ValueError(
            f"{op}: a [N, Ca, H, W] and p [N, Cp, H, W] must agree in N, H and W, got a {_shape(a)} and p {_shape(p)}"
        )
    N, Ca, H, W = a.shape
    hw = H * W
    if hw == 0:
        raise ValueError(f"{op}: a and p must have H >= 1 and W >= 1, got a {_shape(a)}")
    out = torch.bmm(a.reshape(N, Ca, hw), p.reshape(N, p.shape[1], hw).transpose(1, 2)) / hw
    return out.reshape(N, Ca * p.shape[1])
