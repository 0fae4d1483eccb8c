"""SyntheticReID: an offline, seeded generator of person-like ReID images.

Each identity is a figure with a head (skin tone, hair colour and length), a torso
(shirt colour and texture: plain, horizontal or vertical stripes, checks), arms,
legs (trouser colour, plain / denim-like noise / stripes, or shorts) and shoes,
sometimes a bag, all drawn from a per-identity random stream. Each image puts the
figure in front of background clutter (a floor, a wall and random boxes and
ellipses) and applies the **camera's** geometry and lighting:

* ``shift_y``: vertical misalignment: the figure's top moves by this fraction of
  the image height (positive: down, the feet leave the frame; negative: up, the head
  does), plus a uniform per-image jitter of +-``shift_jitter``;
* ``scale``: the figure's height relative to the nominal 0.88 x image height
  (``< 1``: a small, far person; ``> 1``: a close one, cut by the frame), times a
  per-image factor in ``1 +- scale_jitter``;
* ``occlusion_prob`` / ``occlusion_frac`` / ``occlusion_side``: with that
  probability an occluder (a car, a bench: a textured box) hides a fraction, drawn
  uniformly from the ``occlusion_frac`` range, of the figure from that side
  (``"bottom"``, ``"top"``, ``"left"``, ``"right"``);
* ``brightness`` and ``color_cast``: per-camera illumination (multiplicative).

These are the failure modes that the dynamic matching of local features (DMLI)
exists for: the same body part lands at different heights in different cameras.
:func:`default_camera_params` lists the defaults (camera 1 aligned, 2 shifted down,
3 small and high, 4 occluded from the bottom, further cameras cycle through these
with other values); pass ``camera_params`` to choose your own. ``setting="hard"``
(:data:`SETTINGS`) makes alignment and parts matter more: :func:`hard_camera_params` (stronger
shifts and scale changes, occlusion in every camera, stronger light) and muted clothing colours;
the default setting is unchanged.

Output is the Market-1501 layout (``bounding_box_train``, ``query``,
``bounding_box_test``, files ``{pid:04d}_c{cam}s1_{frame:06d}_{idx:02d}.jpg``), so
:func:`partdist.data.market1501` reads it. Identities ``1 .. num_train_ids`` are for
training, the others are for testing; each test identity gives one query image per
camera (image 0 of each camera when ``imgs_per_id_cam >= 2``, else one camera's image)
and the rest to the gallery, so every query has a match in another camera. Optional
distractors (pid 0) join the gallery and junk images (pid -1) the gallery too.

Ground-truth parts: ``generate`` also writes ``synthetic_parts.npz`` beside the manifest, with
three parts per image (head, upper body, lower body; :data:`SYNTHETIC_PARTS`) as the figure was
drawn, after the camera's shift, scale and occlusion: visible-pixel masks, their boxes, a
visibility flag and 14 keypoints (LSP order, :data:`partdist.pooling.KEYPOINT_NAMES`).
:func:`load_synthetic_parts` reads it. Recording them draws no random numbers, so the images
are the same as without them.

Everything is a function of ``seed`` and the parameters: every image has its own
random stream keyed by ``(seed, pid, camera, index)``, so images do not depend on
generation order, and two runs write identical files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .._checks import check_pos_int

__all__ = ["CameraParams", "default_camera_params", "hard_camera_params", "SyntheticReID", "make_grid",
           "load_synthetic_parts", "part_annotations", "SYNTHETIC_PARTS", "SETTINGS"]

_SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")
_MANIFEST = "synthetic_reid.json"
_PARTS_FILE = "synthetic_parts.npz"
#: The ground-truth parts of :class:`SyntheticReID`, in the order of its part arrays.
SYNTHETIC_PARTS = ("head", "upper_body", "lower_body")
#: A part is visible when at least this fraction of its pixels is in the frame and not occluded.
PART_MIN_VISIBLE = 0.5
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CameraParams:
    """Geometry and lighting of one camera (see the module docstring)."""

    shift_y: float = 0.0
    shift_jitter: float = 0.02
    scale: float = 1.0
    scale_jitter: float = 0.03
    occlusion_prob: float = 0.0
    occlusion_frac: Tuple[float, float] = (0.25, 0.4)
    occlusion_side: str = "bottom"
    brightness: float = 1.0
    color_cast: Tuple[float, float, float] = (1.0, 1.0, 1.0)

    def validate(self, where="CameraParams"):
        if not -0.5 <= self.shift_y <= 0.5:
            raise ValueError(f"{where}: shift_y must be in [-0.5, 0.5] (fraction of the height), got {self.shift_y}")
        if not 0.0 <= self.shift_jitter <= 0.2:
            raise ValueError(f"{where}: shift_jitter must be in [0, 0.2], got {self.shift_jitter}")
        if not 0.3 <= self.scale <= 2.0:
            raise ValueError(f"{where}: scale must be in [0.3, 2.0], got {self.scale}")
        if not 0.0 <= self.scale_jitter <= 0.5:
            raise ValueError(f"{where}: scale_jitter must be in [0, 0.5], got {self.scale_jitter}")
        if not 0.0 <= self.occlusion_prob <= 1.0:
            raise ValueError(f"{where}: occlusion_prob must be in [0, 1], got {self.occlusion_prob}")
        lo, hi = self.occlusion_frac
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"{where}: occlusion_frac must be (lo, hi) with 0 <= lo <= hi <= 1, got {self.occlusion_frac}")
        if self.occlusion_side not in ("bottom", "top", "left", "right"):
            raise ValueError(
                f"{where}: occlusion_side must be 'bottom', 'top', 'left' or 'right', got {self.occlusion_side!r}"
            )
        if not 0.2 <= self.brightness <= 2.0:
            raise ValueError(f"{where}: brightness must be in [0.2, 2.0], got {self.brightness}")
        if len(self.color_cast) != 3 or not all(0.2 <= c <= 2.0 for c in self.color_cast):
            raise ValueError(f"{where}: color_cast must be 3 factors in [0.2, 2.0], got {self.color_cast}")


_BASE_CAMERAS = (
    # 1: aligned, neutral light
    CameraParams(),
    # 2: misaligned downwards (the detector box starts above the head), darker, bluish
    CameraParams(shift_y=0.12, brightness=0.85, color_cast=(0.92, 0.97, 1.08)),
    # 3: far away: small figure, high in the frame, brighter, warm light
    CameraParams(shift_y=-0.06, scale=0.72, brightness=1.1, color_cast=(1.08, 1.0, 0.9)),
    # 4: close and occluded from below (cars, benches)
    CameraParams(shift_y=0.03, scale=1.08, occlusion_prob=0.7, occlusion_frac=(0.3, 0.45)),
)


def default_camera_params(num_cams: int) -> List[CameraParams]:
    """The default cameras: the four of the module docstring, then variations of them.

    Camera ``c >= 5`` takes the pattern of camera ``(c - 1) % 4 + 1`` with the
    misalignment mirrored and strengthened (shift up instead of down), the scale moved
    further from 1, occlusion from a side and a different light.
    """
    if isinstance(num_cams, bool) or not isinstance(num_cams, int) or num_cams < 1:
        raise ValueError(f"default_camera_params: num_cams must be a positive int, got {num_cams!r}")
    out = []
    sides = ("left", "right", "top", "bottom")
    for c in range(num_cams):
        base = _BASE_CAMERAS[c % 4]
        r = c // 4
        if r == 0:
            out.append(base)
            continue
        shift = float(np.clip(-base.shift_y * (1 + 0.3 * r) - 0.04 * (r % 2), -0.25, 0.25))
        scale = float(np.clip(1 + (base.scale - 1) * (1 + 0.3 * r) + (0.06 if r % 2 else -0.06), 0.6, 1.3))
        occ = 0.5 if c % 2 == 1 else base.occlusion_prob
        light = 1.0 + 0.12 * ((c * 7) % 5 - 2) / 2
        cast = tuple(float(1.0 + 0.06 * np.sin(c + k * 2.1)) for k in range(3))
        out.append(
            dataclasses.replace(
                base,
                shift_y=shift,
                scale=scale,
                occlusion_prob=occ,
                occlusion_side=sides[c % 4],
                brightness=float(np.clip(light, 0.7, 1.3)),
                color_cast=cast,
            )
        )
    return out


_HARD_CAMERAS = (
    # 1: nominal framing, but loose detections: large jitter of position and scale, some occlusion
    CameraParams(shift_jitter=0.06, scale_jitter=0.12, occlusion_prob=0.3, occlusion_frac=(0.25, 0.45)),
    # 2: strongly misaligned downwards, occluded from the left, dark and bluish
    CameraParams(shift_y=0.2, shift_jitter=0.05, scale=0.92, scale_jitter=0.1, occlusion_prob=0.4,
                 occlusion_frac=(0.25, 0.45), occlusion_side="left", brightness=0.75, color_cast=(0.88, 0.95, 1.15)),
    # 3: far away and high in the frame, occluded from the top, bright and warm
    CameraParams(shift_y=-0.14, shift_jitter=0.05, scale=0.6, scale_jitter=0.12, occlusion_prob=0.3,
                 occlusion_frac=(0.2, 0.35), occlusion_side="top", brightness=1.2, color_cast=(1.15, 1.0, 0.85)),
    # 4: very close (cut by the frame), mostly occluded from below
    CameraParams(shift_y=0.06, shift_jitter=0.05, scale=1.3, scale_jitter=0.1, occlusion_prob=0.75,
                 occlusion_frac=(0.35, 0.55), occlusion_side="bottom", brightness=0.9),
)

#: The settings of :class:`SyntheticReID`: ``"default"``, and ``"hard"`` (where alignment and
#: parts matter more): :func:`hard_camera_params` (stronger camera shifts and scale changes,
#: more and larger occlusion from every side, stronger light) and muted clothing colours (every
#: identity's colours pulled halfway to grey and towards mid-brightness, so that colour alone
#: separates identities less well).
SETTINGS = ("default", "hard")


def hard_camera_params(num_cams: int) -> List[CameraParams]:
    """The cameras of the ``"hard"`` setting: the four of ``_HARD_CAMERAS``, then the same with
    the misalignment mirrored (shift up instead of down) for cameras 5 to 8, and so on."""
    if isinstance(num_cams, bool) or not isinstance(num_cams, int) or num_cams < 1:
        raise ValueError(f"hard_camera_params: num_cams must be a positive int, got {num_cams!r}")
    out = []
    for c in range(num_cams):
        base = _HARD_CAMERAS[c % 4]
        if (c // 4) % 2:
            base = dataclasses.replace(base, shift_y=float(np.clip(-base.shift_y, -0.5, 0.5)))
        out.append(base)
    return out


def _muted(ident: dict, chroma: float = 0.5, contrast: float = 0.7) -> dict:
    """The identity with its clothing colours pulled towards grey (``chroma``) and towards
    mid-brightness (``contrast``); draws no random numbers."""
    out = dict(ident)
    for key in ("shirt", "shirt2", "pants", "pants2", "shoes", "bag_color"):
        c = np.asarray(ident[key], dtype=np.float32)
        grey = c.mean()
        c = grey + chroma * (c - grey)
        out[key] = (127.5 + contrast * (c - 127.5)).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------
# Identities and rendering
# --------------------------------------------------------------------------------------

_SKIN = np.array([[255, 224, 196], [234, 192, 155], [198, 144, 105], [141, 92, 62], [90, 60, 40]], dtype=np.float32)
_HAIR = np.array([[20, 15, 10], [60, 40, 25], [110, 75, 40], [200, 170, 110], [130, 130, 130], [150, 40, 20]],
                 dtype=np.float32)
_SHIRT_PATTERNS = ("plain", "hstripes", "vstripes", "checks")
_PANTS_PATTERNS = ("plain", "denim", "hstripes", "shorts")


def _hsv_color(rng, s_range=(0.35, 1.0), v_range=(0.25, 0.95)):
    h = rng.random()
    s = rng.uniform(*s_range)
    v = rng.uniform(*v_range)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255


def _identity(rng) -> dict:
    """Appearance of one identity, drawn from ``rng``."""
    return {
        "skin": _SKIN[rng.integers(len(_SKIN))],
        "hair": _HAIR[rng.integers(len(_HAIR))],
        "long_hair": bool(rng.random() < 0.35),
        "shirt": _hsv_color(rng),
        "shirt2": _hsv_color(rng, v_range=(0.1, 1.0)),
        "shirt_pattern": _SHIRT_PATTERNS[rng.integers(len(_SHIRT_PATTERNS))],
        "shirt_period": float(rng.uniform(0.02, 0.05)),  # fraction of the figure height
        "pants": _hsv_color(rng, s_range=(0.1, 0.8), v_range=(0.1, 0.7)),
        "pants2": _hsv_color(rng, v_range=(0.1, 1.0)),
        "pants_pattern": _PANTS_PATTERNS[rng.choice(4, p=[0.45, 0.25, 0.15, 0.15])],
        "shoes": _hsv_color(rng, s_range=(0.0, 0.5), v_range=(0.05, 0.9)),
        "width": float(rng.uniform(0.85, 1.15)),
        "bag": bool(rng.random() < 0.3),
        "bag_color": _hsv_color(rng, v_range=(0.15, 0.8)),
    }


def _texture(kind, c1, c2, v, u, period, noise_rng):
    """Colour per pixel (``[..., 3]``) of a texture in figure coordinates v (down), u (across)."""
    if kind == "plain":
        t = np.zeros_like(v)
    elif kind == "hstripes":
        t = (np.floor(v / period) % 2).astype(np.float32)
    elif kind == "vstripes":
        t = (np.floor(u / period) % 2).astype(np.float32)
    elif kind == "checks":
        t = ((np.floor(v / period) + np.floor(u / period)) % 2).astype(np.float32)
    elif kind == "denim":
        t = np.clip(noise_rng.normal(0.0, 0.25, size=v.shape), 0, 1).astype(np.float32)
    else:  # pragma: no cover - internal
        raise AssertionError(kind)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _figure_regions(v, u, wdt, long_hair):
    """Masks of the head (head, neck, hair), upper body (torso, arms) and lower body (legs,
    shoes) at figure coordinates ``v`` (down, 0 = top of the head) and ``u`` (across), the
    regions ``_render`` paints (later paint wins: the head covers the rest)."""
    au = np.abs(u)
    torso_half = 0.13 * wdt * (1 - 0.15 * np.clip((v - 0.17) / 0.38, 0, 1))
    torso = (v >= 0.17) & (v < 0.55) & (au < torso_half)
    arm = (v >= 0.18) & (v < 0.52) & (au >= torso_half) & (au < torso_half + 0.045)
    legs = ((v >= 0.55) & (v < 0.95) & (au < 0.115 * wdt) & (au > 0.012)) | (
        (v >= 0.55) & (v < 0.62) & (au < 0.115 * wdt)
    )
    shoes = (v >= 0.95) & (v < 1.0) & (au < 0.12 * wdt) & (au > 0.008)
    head = (((v - 0.085) / 0.075) ** 2 + (u / 0.058) ** 2 < 1) | ((v >= 0.15) & (v < 0.18) & (au < 0.025))
    if long_hair:
        head = head | ((v >= 0.05) & (v < 0.26) & (au < 0.075) & (au > 0.045))
    return head, (torso | arm) & ~head, (legs | shoes) & ~head


def _keypoints_uv(wdt):
    """The 14 keypoints (LSP order) in figure coordinates ``(u, v)``; the person faces the
    camera, so their right side is on the image's left (u < 0)."""
    half = lambda v: 0.13 * wdt * (1 - 0.15 * np.clip((v - 0.17) / 0.38, 0, 1))  # noqa: E731
    arm = lambda v: half(v) + 0.0225  # noqa: E731
    leg = 0.06 * wdt
    sh = 0.8 * half(0.19)
    return np.array([
        (-leg, 0.95), (-leg, 0.75), (-leg, 0.58), (leg, 0.58), (leg, 0.75), (leg, 0.95),  # ankle knee hip (r, l)
        (-arm(0.51), 0.51), (-arm(0.35), 0.35), (-sh, 0.19),  # r wrist, elbow, shoulder
        (sh, 0.19), (arm(0.35), 0.35), (arm(0.51), 0.51),  # l shoulder, elbow, wrist
        (0.0, 0.165), (0.0, 0.012),  # neck, head top
    ], dtype=np.float64)


def _part_annotation(H, W, top, ph, cx, wdt, long_hair, occluded_at):
    """Visible-pixel masks ``[3, H, W]``, boxes ``[3, 4]`` (x1, y1, x2, y2; pixel edges, 0 if
    nothing is visible), visibility ``[3]`` and keypoints ``[14, 3]`` of one image.
    ``occluded_at(yy, xx)`` -> bool mask of the occluder."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    regions = _figure_regions((yy - top) / ph, (xx - cx) / ph, wdt, long_hair)
    free = ~occluded_at(yy, xx)
    # the whole figure on a canvas large enough to hold it: the part sizes before the frame cuts
    y0, y1 = int(np.floor(min(0.0, top))) - 1, int(np.ceil(max(H, top + ph))) + 1
    x0, x1 = int(np.floor(min(0.0, cx - 0.3 * ph))) - 1, int(np.ceil(max(W, cx + 0.3 * ph))) + 1
    ey, ex = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    full = _figure_regions((ey - top) / ph, (ex - cx) / ph, wdt, long_hair)
    masks = np.stack([r & free for r in regions])
    boxes = np.zeros((3, 4), dtype=np.float32)
    vis = np.zeros(3, dtype=bool)
    for p in range(3):
        rows, cols = np.nonzero(masks[p])
        if rows.size:
            boxes[p] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        vis[p] = rows.size > 0 and rows.size >= PART_MIN_VISIBLE * max(1, int(full[p].sum()))
    uv = _keypoints_uv(wdt)
    kx, ky = cx + uv[:, 0] * ph, top + uv[:, 1] * ph
    inside = (kx >= 0) & (kx < W) & (ky >= 0) & (ky < H)
    score = inside & ~occluded_at(ky.astype(np.float32), kx.astype(np.float32))
    kpts = np.stack([kx, ky, score.astype(np.float64)], 1).astype(np.float32)
    return masks, boxes, vis, kpts


def _render(height, width, ident, cam: CameraParams, rngs):
    """One ``height x width x 3`` uint8 image of identity ``ident`` seen by camera ``cam``.

    ``rngs``: four generators (background, figure, occluder, noise), so that changing
    one aspect leaves the random draws of the others alone. Returns the image and a
    dict with the figure's geometry (``top``, ``height``, ``cx`` in pixels) and the
    occlusion drawn (``occluded``, ``occlusion_frac``).
    """
    H, W = height, width
    rng, fig_rng, occ_rng, noise_rng = rngs
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)

    # background: wall + floor with a gradient, then clutter boxes / ellipses
    wall = _hsv_color(rng, s_range=(0.0, 0.4), v_range=(0.3, 0.9))
    floor = _hsv_color(rng, s_range=(0.0, 0.3), v_range=(0.2, 0.7))
    horizon = rng.uniform(0.45, 0.8) * H
    img = np.where((yy < horizon)[..., None], wall, floor).astype(np.float32)
    img *= (0.85 + 0.3 * (yy / H))[..., None]
    for _ in range(int(rng.integers(3, 9))):
        col = _hsv_color(rng, s_range=(0.0, 0.9), v_range=(0.1, 1.0))
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(0.04, 0.25) * H, rng.uniform(0.05, 0.35) * W
        y0, y1 = max(0, int(cy - ry)), min(H, int(np.ceil(cy + ry)) + 1)
        x0, x1 = max(0, int(cx - rx)), min(W, int(np.ceil(cx + rx)) + 1)
        sy, sx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        if rng.random() < 0.5:
            m = (np.abs(sy - cy) < ry) & (np.abs(sx - cx) < rx)
        else:
            m = ((sy - cy) / ry) ** 2 + ((sx - cx) / rx) ** 2 < 1
        img[y0:y1, x0:x1][m] = col

    # figure geometry (camera misalignment and scale, per-image jitter)
    rng = fig_rng
    ph = 0.88 * H * cam.scale * (1 + rng.uniform(-cam.scale_jitter, cam.scale_jitter))
    top = (H - 0.88 * H) / 2 + (cam.shift_y + rng.uniform(-cam.shift_jitter, cam.shift_jitter)) * H
    top += (0.88 * H - ph) / 2 * 0.3  # smaller figures stand a bit lower (feet on the floor)
    cx = W / 2 + rng.uniform(-0.06, 0.06) * W
    v = (yy - top) / ph  # 0 at the top of the head, 1 under the shoes
    u = (xx - cx) / ph
    au = np.abs(u)
    facing = 1.0 if rng.random() < 0.5 else -1.0  # which side the bag hangs on
    wdt = ident["width"]

    torso_half = 0.13 * wdt * (1 - 0.15 * np.clip((v - 0.17) / 0.38, 0, 1))
    torso = (v >= 0.17) & (v < 0.55) & (au < torso_half)
    arm = (v >= 0.18) & (v < 0.52) & (au >= torso_half) & (au < torso_half + 0.045)
    sleeve = arm & (v < 0.33)
    legs = (v >= 0.55) & (v < 0.95) & (au < 0.115 * wdt) & (au > 0.012)
    hips = (v >= 0.55) & (v < 0.62) & (au < 0.115 * wdt)
    legs = legs | hips
    shoes = (v >= 0.95) & (v < 1.0) & (au < 0.12 * wdt) & (au > 0.008)
    head = ((v - 0.085) / 0.075) ** 2 + (u / 0.058) ** 2 < 1
    neck = (v >= 0.15) & (v < 0.18) & (au < 0.025)
    hair_limit = 0.13 if ident["long_hair"] else 0.05
    hair = (head & (v < hair_limit) & ((v < 0.04) | (au > 0.035) | (v < 0.05))) | (
        ident["long_hair"] & (v >= 0.05) & (v < 0.26) & (au < 0.075) & (au > 0.045)
    )

    img[torso] = _texture(ident["shirt_pattern"], ident["shirt"], ident["shirt2"], v[torso], u[torso],
                          ident["shirt_period"], rng)
    img[arm] = ident["skin"]
    img[sleeve] = ident["shirt"]
    pants_kind = ident["pants_pattern"]
    if pants_kind == "shorts":
        img[legs] = ident["skin"]
        short = legs & (v < 0.72)
        img[short] = ident["pants"]
    else:
        img[legs] = _texture(pants_kind, ident["pants"], ident["pants2"], v[legs], u[legs], 0.04, rng)
    img[shoes] = ident["shoes"]
    img[neck | head] = ident["skin"]
    img[hair] = ident["hair"]
    if ident["bag"]:
        bag = (v >= 0.35) & (v < 0.55) & (facing * u > 0.12 * wdt) & (facing * u < 0.12 * wdt + 0.09)
        img[bag] = ident["bag_color"]

    # occlusion
    rng = occ_rng
    occluded = bool(rng.random() < cam.occlusion_prob)
    frac = 0.0

    def occluded_at(py, px):
        """The occluder's pixels (none when this image is not occluded)."""
        if not occluded:
            return np.zeros(np.shape(py), dtype=bool)
        left, right = cx - 0.2 * ph, cx + 0.2 * ph
        side = cam.occlusion_side
        if side == "bottom":
            return py >= top + ph * (1 - frac)
        if side == "top":
            return py < top + ph * frac
        if side == "left":
            return px < left + (right - left) * frac
        return px >= right - (right - left) * frac

    if occluded:
        frac = rng.uniform(*cam.occlusion_frac)
        col = _hsv_color(rng, s_range=(0.0, 0.6), v_range=(0.15, 0.8))
        occ = occluded_at(yy, xx)
        stripes = (np.floor(yy / max(2.0, 0.03 * H)) % 2)[..., None]
        img[occ] = (col * (0.85 + 0.15 * stripes))[occ]

    img *= cam.brightness * np.asarray(cam.color_cast, dtype=np.float32)
    img += noise_rng.normal(0.0, 5.0, size=img.shape).astype(np.float32)
    info = {"top": float(top), "height": float(ph), "cx": float(cx), "occluded": occluded, "occlusion_frac": float(frac)}
    info["parts"] = dict(zip(("masks", "boxes", "visibility", "keypoints"),
                             _part_annotation(H, W, top, ph, cx, wdt, ident["long_hair"], occluded_at)))
    return np.clip(img, 0, 255).astype(np.uint8), info


# --------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------


def _at_least(name, v, lo):
    return check_pos_int("SyntheticReID", name, v, lo, what=f"an int >= {lo}")


class SyntheticReID:
    """Seeded synthetic ReID data set in the Market-1501 layout (see the module docstring).

    Args:
        root: output folder (created; see :meth:`generate` for an existing one).
        num_ids: identities (ids ``1 .. num_ids``).
        num_cams: cameras.
        imgs_per_id_cam: images of each identity in each camera.
        height, width: image size.
        seed: the random seed; everything is a function of it and the parameters.
        num_train_ids: identities used for training (default ``num_ids // 2``); the
            others are the test identities (query + gallery). At least one of each.
        camera_params: one :class:`CameraParams` per camera (default
            :func:`default_camera_params`).
        num_distractors: extra gallery images of random one-off people, pid 0.
        num_junk: extra gallery images with pid -1 (junk: mostly background, a
            fragment of a person), dropped by the parsers as in Market-1501.
        image_format: ``"jpg"`` (quality 92) or ``"png"``.
        setting: ``"default"`` or ``"hard"`` (:data:`SETTINGS`): the hard setting's cameras
            (:func:`hard_camera_params`, unless ``camera_params`` is given) and muted colours.
            The default setting writes exactly what earlier versions wrote.
    """

    def __init__(
        self,
        root,
        num_ids: int = 100,
        num_cams: int = 4,
        imgs_per_id_cam: int = 2,
        height: int = 256,
        width: int = 128,
        seed: int = 0,
        num_train_ids: Optional[int] = None,
        camera_params: Optional[Sequence[CameraParams]] = None,
        num_distractors: int = 0,
        num_junk: int = 0,
        image_format: str = "jpg",
        setting: str = "default",
    ):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"SyntheticReID: root must be a path (str or os.PathLike), got {type(root).__name__}")
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.num_ids = _at_least("num_ids", num_ids, 2)
        self.num_cams = _at_least("num_cams", num_cams, 1)
        self.imgs_per_id_cam = _at_least("imgs_per_id_cam", imgs_per_id_cam, 1)
        self.height = _at_least("height", height, 16)
        self.width = _at_least("width", width, 8)
        self.seed = _at_least("seed", seed, 0)
        if num_train_ids is None:
            num_train_ids = self.num_ids // 2
        self.num_train_ids = _at_least("num_train_ids", num_train_ids, 1)
        if self.num_train_ids >= self.num_ids:
            raise ValueError(
                f"SyntheticReID: num_train_ids must be < num_ids ({self.num_ids}) to leave test identities, "
                f"got {self.num_train_ids}"
            )
        if self.num_cams * self.imgs_per_id_cam < 2:
            raise ValueError(
                "SyntheticReID: num_cams * imgs_per_id_cam must be >= 2 (each test identity needs a query "
                f"and a gallery image), got {self.num_cams} * {self.imgs_per_id_cam}"
            )
        if setting not in SETTINGS:
            raise ValueError(f"SyntheticReID: setting must be one of {SETTINGS}, got {setting!r}")
        self.setting = setting
        if camera_params is None:
            camera_params = (hard_camera_params if setting == "hard" else default_camera_params)(self.num_cams)
        camera_params = list(camera_params)
        if len(camera_params) != self.num_cams:
            raise ValueError(
                f"SyntheticReID: camera_params must hold num_cams = {self.num_cams} CameraParams, "
                f"got {len(camera_params)}"
            )
        for c, p in enumerate(camera_params):
            if not isinstance(p, CameraParams):
                raise TypeError(f"SyntheticReID: camera_params[{c}] must be a CameraParams, got {type(p).__name__}")
            p.validate(f"SyntheticReID: camera_params[{c}]")
        self.camera_params = camera_params
        self.num_distractors = _at_least("num_distractors", num_distractors, 0)
        self.num_junk = _at_least("num_junk", num_junk, 0)
        if image_format not in ("jpg", "png"):
            raise ValueError(f"SyntheticReID: image_format must be 'jpg' or 'png', got {image_format!r}")
        self.image_format = image_format

    # -- description ------------------------------------------------------------------

    def config(self) -> dict:
        """The parameters, as written to the manifest ``synthetic_reid.json``."""
        return {
            "format_version": _FORMAT_VERSION,
            "num_ids": self.num_ids,
            "num_cams": self.num_cams,
            "imgs_per_id_cam": self.imgs_per_id_cam,
            "height": self.height,
            "width": self.width,
            "seed": self.seed,
            "num_train_ids": self.num_train_ids,
            "camera_params": [dataclasses.asdict(p) for p in self.camera_params],
            "num_distractors": self.num_distractors,
            "num_junk": self.num_junk,
            "image_format": self.image_format,
            **({"setting": self.setting} if self.setting != "default" else {}),
        }

    def identity(self, pid: int) -> dict:
        """The appearance attributes of identity ``pid`` (colours, patterns, ...)."""
        ident = _identity(np.random.default_rng([self.seed, 1, pid]))
        return _muted(ident) if self.setting == "hard" else ident

    def _name(self, pid, cam, idx):
        p = "-1" if pid == -1 else f"{pid:04d}"
        return f"{p}_c{cam + 1}s1_{idx + 1:06d}_{idx % 100:02d}.{self.image_format}"

    def plan(self) -> List[Tuple[str, int, int, int]]:
        """The images to write: ``(split folder, pid, cam, idx)`` (cam 0-based)."""
        out = []
        n, ipc = self.num_cams, self.imgs_per_id_cam
        for pid in range(1, self.num_ids + 1):
            for cam in range(n):
                for idx in range(ipc):
                    if pid <= self.num_train_ids:
                        split = "bounding_box_train"
                    elif (ipc >= 2 and idx == 0) or (ipc == 1 and cam == pid % n):
                        split = "query"
                    else:
                        split = "bounding_box_test"
                    out.append((split, pid, cam, idx))
        for i in range(self.num_distractors):
            out.append(("bounding_box_test", 0, i % n, i))
        for i in range(self.num_junk):
            out.append(("bounding_box_test", -1, i % n, i))
        return out

    def render(self, pid: int, cam: int, idx: int) -> np.ndarray:
        """The ``height x width x 3`` uint8 image ``idx`` of ``pid`` in camera ``cam`` (0-based)."""
        return self._render(pid, cam, idx)[0]

    def parts(self, pid: int, cam: int, idx: int) -> dict:
        """Ground-truth parts of that image: ``masks`` ``[3, H, W]`` bool (visible pixels of head,
        upper body, lower body), ``boxes`` ``[3, 4]`` float32 (their bounding boxes in pixels,
        ``(x1, y1, x2, y2)`` with pixel edges, zeros when no pixel is visible), ``visibility``
        ``[3]`` bool (at least :data:`PART_MIN_VISIBLE` of the part in the frame and not occluded)
        and ``keypoints`` ``[14, 3]`` float32 (x, y, score 1 if in the frame and not occluded,
        else 0; LSP order)."""
        return self._render(pid, cam, idx)[1]["parts"]

    def _render(self, pid, cam, idx, camera=None, ident=None):
        """Image and geometry; ``camera`` / ``ident`` override the camera or the appearance."""
        rngs = [np.random.default_rng([self.seed, 2, pid + 1, cam, idx, k]) for k in range(4)]
        cp = self.camera_params[cam] if camera is None else camera
        if ident is not None:
            pass
        elif pid > 0:
            ident = self.identity(pid)
        else:  # distractors and junk: one-off people
            ident = _identity(np.random.default_rng([self.seed, 3, pid + 1, cam, idx]))
            ident = _muted(ident) if self.setting == "hard" else ident
        if pid == -1:  # junk: a badly placed detection, mostly background
            cp = dataclasses.replace(cp, shift_y=0.5 * (1 if idx % 2 else -1), shift_jitter=0.0, occlusion_prob=0.0)
        return _render(self.height, self.width, ident, cp, rngs)

    # -- writing ----------------------------------------------------------------------

    def _matches_existing(self):
        path = os.path.join(self.root, _MANIFEST)
        if not os.path.isfile(path):
            return False
        try:
            with open(path, "r", encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            return False
        want = json.loads(json.dumps(self.config()))
        if cfg != want:
            return False
        return all(os.path.isfile(os.path.join(self.root, s, self._name(p, c, i))) for s, p, c, i in self.plan())

    def generate(self, overwrite: bool = False) -> str:
        """Write the images (if needed) and return the root.

        If ``root`` already holds a data set generated with the same parameters (its
        manifest matches and every file is there), nothing is written. If it holds
        anything else, :class:`FileExistsError` is raised unless ``overwrite=True``,
        which deletes the three split folders and the manifest (nothing else) first.
        """
        from PIL import Image

        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise FileExistsError(f"SyntheticReID.generate: root {self.root!r} exists and is not a directory")
        if self._matches_existing():
            if not os.path.isfile(os.path.join(self.root, _PARTS_FILE)):  # written by an older version
                self._write_parts([(split, pid, cam, idx, self.parts(pid, cam, idx))
                                   for split, pid, cam, idx in self.plan()])
            return self.root
        if os.path.isdir(self.root) and os.listdir(self.root):
            if not overwrite:
                raise FileExistsError(
                    f"SyntheticReID.generate: root {self.root!r} is not empty and does not hold a data set "
                    f"generated with these parameters; pass overwrite=True to replace "
                    f"{', '.join(_SPLIT_DIRS)}, {_MANIFEST} and {_PARTS_FILE} there, or choose an empty folder"
                )
            for d in _SPLIT_DIRS:
                shutil.rmtree(os.path.join(self.root, d), ignore_errors=True)
            for name in (_MANIFEST, _PARTS_FILE):
                if os.path.exists(os.path.join(self.root, name)):
                    os.remove(os.path.join(self.root, name))
        for d in _SPLIT_DIRS:
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        annotations = []
        for split, pid, cam, idx in self.plan():
            arr, info = self._render(pid, cam, idx)
            annotations.append((split, pid, cam, idx, info["parts"]))
            path = os.path.join(self.root, split, self._name(pid, cam, idx))
            im = Image.fromarray(arr)
            if self.image_format == "jpg":
                im.save(path, format="JPEG", quality=92)
            else:
                im.save(path, format="PNG")
        self._write_parts(annotations)
        # the manifest last: its presence marks a complete data set
        with open(os.path.join(self.root, _MANIFEST), "w", encoding="utf-8") as f:
            json.dump(self.config(), f, indent=1)
        return self.root

    def _write_parts(self, annotations):
        """``synthetic_parts.npz``: the parts of every image, rows in :meth:`plan` order."""
        arrays = {
            "names": np.array([f"{split}/{self._name(pid, cam, idx)}" for split, pid, cam, idx, _ in annotations]),
            "part_names": np.array(SYNTHETIC_PARTS),
        }
        for key in ("boxes", "visibility", "masks", "keypoints"):
            arrays[key] = np.stack([a[key] for *_, a in annotations])
        tmp = os.path.join(self.root, _PARTS_FILE + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, os.path.join(self.root, _PARTS_FILE))


def load_synthetic_parts(root, items=None) -> dict:
    """Read the ground-truth parts that :meth:`SyntheticReID.generate` wrote to ``root``.

    Returns a dict of numpy arrays: ``boxes`` ``[M, 3, 4]`` float32 (pixels), ``visibility``
    ``[M, 3]`` bool, ``masks`` ``[M, 3, H, W]`` bool, ``keypoints`` ``[M, 14, 3]`` float32,
    ``names`` ``[M]`` (``"split/file"``) and ``part_names`` (:data:`SYNTHETIC_PARTS`). With
    ``items`` (a list of ``(path, pid, camid)``, e.g. a split of
    :func:`partdist.data.market1501` of ``root``), the rows are those of ``items``, in order.
    """
    path = os.path.join(os.fspath(root), _PARTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"load_synthetic_parts: no {_PARTS_FILE} in {os.fspath(root)!r}; run SyntheticReID(...).generate() "
            "there (it writes the parts of the data sets it generates)"
        )
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    out["names"] = out["names"].astype(str)
    if items is None:
        return out
    index = {name: i for i, name in enumerate(out["names"])}
    rows = []
    for k, item in enumerate(items):
        p = os.path.abspath(os.fspath(item[0]))
        key = f"{os.path.basename(os.path.dirname(p))}/{os.path.basename(p)}"
        if key not in index:
            raise KeyError(f"load_synthetic_parts: items[{k}] ({item[0]!r}) is not an image of the data set in {root!r}")
        rows.append(index[key])
    rows = np.asarray(rows, dtype=np.int64)
    return {k: (v[rows] if k != "part_names" else v) for k, v in out.items()}


_PART_KINDS = ("keypoints", "boxes", "masks")


def part_annotations(root, items, kind: str, model: Optional[str] = None):
    """The ``kind`` part annotations (``"keypoints"`` ``[M, 14, 3]`` float32, ``"boxes"``
    ``[M, 3, 4]`` float32 or ``"masks"`` ``[M, 3, H, W]`` bool) of ``items`` (``(path, pid,
    camid)`` of the data set in ``root``) as a torch tensor, for the part models
    (``partdist train --model glad`` etc.). Raises ``ValueError`` with the fix when the data
    set has no annotations (only data sets written by :class:`SyntheticReID` /
    ``partdist synthetic`` carry them) or lacks one of the images."""
    import torch

    if kind not in _PART_KINDS:
        raise ValueError(f"part_annotations: kind must be one of {_PART_KINDS}, got {kind!r}")
    who = f"model {model!r}" if model else "this model"
    if not os.path.isfile(os.path.join(os.fspath(root), _PARTS_FILE)):
        raise ValueError(
            f"{who} needs {kind} for every image, but the data set in {os.fspath(root)!r} has no part "
            f"annotations ({_PARTS_FILE}); only synthetic data sets (`partdist synthetic --out DIR`, "
            f"SyntheticReID(...).generate()) carry them. Use such a data set, or a model that needs no parts "
            f"(e.g. --model aligned, pcb, scpnet, idla)"
        )
    try:
        ann = load_synthetic_parts(root, items)
    except KeyError as err:
        raise ValueError(f"{who} needs {kind} for every image: {err.args[0]}") from None
    return torch.from_numpy(np.ascontiguousarray(ann[kind]))


def make_grid(images: Iterable, ncols: int = 8, pad: int = 2, background=(255, 255, 255)):
    """Tile images (paths, PIL images or ``H x W x 3`` uint8 arrays) into one PIL image.

    Images are resized to the size of the first one.
    """
    from PIL import Image

    ims = []
    for x in images:
        if isinstance(x, (tuple, list)):  # (path, pid, camid) items
            x = x[0]
        if isinstance(x, (str, os.PathLike)):
            x = Image.open(x).convert("RGB")
        elif isinstance(x, np.ndarray):
            x = Image.fromarray(x)
        ims.append(x)
    if not ims:
        raise ValueError("make_grid: images is empty")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"make_grid: ncols must be a positive int, got {ncols!r}")
    w, h = ims[0].size
    nrows = (len(ims) + ncols - 1) // ncols
    ncols = min(ncols, len(ims))
    grid = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + pad) + pad), background)
    for k, im in enumerate(ims):
        r, c = divmod(k, ncols)
        if im.size != (w, h):
            im = im.resize((w, h))
        grid.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
