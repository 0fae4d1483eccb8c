"""ReID image transforms on torchvision's ``transforms.v2``, with the part annotations as
``tv_tensors`` so that they follow the image.

:func:`build_transforms` gives the usual ReID pipelines (torchreid / AlignedReID):

* training: resize, random horizontal flip, pad 10 + random crop back to size, to float,
  ImageNet normalization, random erasing (Zhong et al. 2020; torchreid's area 0.02-0.4, aspect
  0.3-3.33 and fill values);
* test: resize, to float, normalize.

The result, a :class:`ReIDTransform`, is called as ``t(img, generator=None)`` -> ``[3, H, W]``
float tensor, or ``t(img, parts, kind, generator=None)`` -> ``(image, parts)`` where ``parts``
are the image's part annotations in pixels of ``img``:

* ``kind="boxes"``: ``[P, 4]`` ``(x1, y1, x2, y2)`` (``tv_tensors.BoundingBoxes``); boxes are
  clipped to the image, a box cropped away becomes ``(0, 0, 0, 0)`` (invisible);
* ``kind="keypoints"``: ``[14, 3]`` ``(x, y, score)`` (``tv_tensors.KeyPoints`` for x, y);
  a keypoint moved out of the image gets score 0; a flip mirrors x and swaps the left and right
  joints (:data:`KEYPOINT_FLIP`), as a pose estimator would name them on the mirrored image;
* ``kind="masks"``: ``[P, h, w]`` bool or float (``tv_tensors.Mask``); masks of another size
  than the image are first resized to it (nearest).

Coordinates are continuous: pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]`` (a box around that one
pixel is ``(j, i, j+1, i+1)``, its centre is ``(j + 0.5, i + 0.5)``), the convention of
:func:`partdist.part_pool` and of the synthetic data set's annotations; a flip maps ``x`` to
``W - x``. Random erasing changes pixels only: the annotations stay where they are.

Random draws come from torch's global generator, or, when ``generator`` (a ``torch.Generator``)
is given, from a seed drawn from it (the global generator is left as it was), so a seeded
generator makes a pipeline reproducible (:class:`~partdist.data.ImageDataset` passes one per
item and epoch).
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..pooling import KEYPOINT_NAMES

__all__ = [
    "Transform",
    "ReIDTransform",
    "RandomHorizontalFlip",
    "build_transforms",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ERASE_VALUE",
    "KEYPOINT_FLIP",
    "PART_KINDS",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The fill of random erasing (torchreid's and the original implementation's constants, applied
#: after normalization as there).
ERASE_VALUE = (0.4914, 0.4822, 0.4465)
PART_KINDS = ("boxes", "keypoints", "masks")


def _mirror(name):
    return name.replace("r_", "@").replace("l_", "r_").replace("@", "l_")


#: Keypoint order after a horizontal flip: entry ``i`` is the keypoint that takes the name
#: ``KEYPOINT_NAMES[i]`` (left and right joints swap).
KEYPOINT_FLIP = tuple(KEYPOINT_NAMES.index(_mirror(n)) for n in KEYPOINT_NAMES)


def _pair(op, name, v):
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = (int(v), int(v))
    if (
        not isinstance(v, (tuple, list))
        or len(v) != 2
        or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1 for x in v)
    ):
        raise ValueError(f"{op}: {name} must be a positive int or a (height, width) pair of positive ints, got {v!r}")
    return int(v[0]), int(v[1])


def _prob(op, name, p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: {name} must be a probability in [0, 1], got {p!r}")
    return float(p)


class Transform:
    """Base class of partdist's transforms: called with a ``generator`` keyword (see
    :class:`~partdist.data.ImageDataset`)."""

    def __call__(self, img, generator: Optional[torch.Generator] = None):  # pragma: no cover - abstract
        raise NotImplementedError


class RandomHorizontalFlip(v2.Transform):
    """Mirror left-right with probability ``p``: images, boxes and masks by torchvision's
    ``horizontal_flip``; keypoints (continuous coordinates, see the module docstring) to
    ``W - x``, reordered by ``keypoint_flip`` (default :data:`KEYPOINT_FLIP`; ``None`` keeps the
    order). Given a dict, its ``"keypoint_scores"`` entry is reordered with the keypoints."""

    def __init__(self, p: float = 0.5, keypoint_flip: Optional[Sequence[int]] = KEYPOINT_FLIP):
        super().__init__()
        self.p = _prob("RandomHorizontalFlip", "p", p)
        self.keypoint_flip = None if keypoint_flip is None else list(keypoint_flip)

    def _flip(self, x):
        if isinstance(x, tv_tensors.KeyPoints):
            out = x.as_subclass(torch.Tensor).clone()
            out[..., 0] = x.canvas_size[1] - out[..., 0]
            if self.keypoint_flip is not None:
                out = out[..., self.keypoint_flip, :]
            return tv_tensors.wrap(out, like=x)
        return TF.horizontal_flip(x)

    def forward(self, *inputs):
        sample = inputs if len(inputs) > 1 else inputs[0]
        if float(torch.rand(())) >= self.p:
            return sample
        if isinstance(sample, dict):
            out = {k: (v if k == "keypoint_scores" else self._flip(v)) for k, v in sample.items()}
            if "keypoint_scores" in sample and self.keypoint_flip is not None:
                out["keypoint_scores"] = sample["keypoint_scores"][..., self.keypoint_flip]
            return out
        if isinstance(sample, tuple):
            return tuple(self._flip(v) for v in sample)
        return self._flip(sample)


def _wrap_parts(parts, kind, canvas):
    """Part annotations of one image -> a dict of tv_tensors (and the keypoint scores)."""
    parts = torch.as_tensor(parts)
    if kind == "boxes":
        if parts.dim() != 2 or parts.shape[-1] != 4:
            raise ValueError(f"parts: boxes must be [P, 4] (x1, y1, x2, y2), got shape {list(parts.shape)}")
        return {"parts": tv_tensors.BoundingBoxes(parts.float(), format="XYXY", canvas_size=canvas)}
    if kind == "keypoints":
        if parts.dim() != 2 or parts.shape[-1] != 3:
            raise ValueError(f"parts: keypoints must be [K, 3] (x, y, score), got shape {list(parts.shape)}")
        parts = parts.float()
        return {"parts": tv_tensors.KeyPoints(parts[:, :2], canvas_size=canvas), "keypoint_scores": parts[:, 2]}
    if kind == "masks":
        if parts.dim() != 3:
            raise ValueError(f"parts: masks must be [P, h, w], got shape {list(parts.shape)}")
        mask = tv_tensors.Mask(parts)
        if tuple(parts.shape[-2:]) != tuple(canvas):
            mask = TF.resize(mask, list(canvas), interpolation=v2.InterpolationMode.NEAREST)
        return {"parts": mask}
    raise ValueError(f"kind: expected one of {', '.join(PART_KINDS)}, got {kind!r}")


def _unwrap_parts(sample, kind, size):
    parts = sample["parts"].as_subclass(torch.Tensor)
    if kind == "keypoints":
        h, w = size
        x, y = parts[:, 0], parts[:, 1]
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        scores = torch.where(inside, sample["keypoint_scores"], torch.zeros_like(sample["keypoint_scores"]))
        return torch.cat([parts, scores[:, None]], 1)
    return parts


class ReIDTransform(Transform):
    """``geometry`` (applied to the image and its parts together), then ``pixels`` (applied to
    the image alone), as ``t(img, parts=None, kind=None, generator=None)`` (module docstring).

    ``img``: a PIL image or a ``[C, H, W]`` tensor (uint8 or float in [0, 1])."""

    def __init__(self, geometry: Sequence, pixels: Sequence):
        self.geometry = v2.Compose([v2.ToImage(), *geometry])
        self.pixels = v2.Compose(list(pixels))

    def __repr__(self):
        return f"ReIDTransform(geometry={self.geometry!r}, pixels={self.pixels!r})"

    def _run(self, img, parts, kind):
        if isinstance(img, torch.Tensor) and img.dim() != 3:
            raise ValueError(f"ReIDTransform: a tensor image must be [C, H, W], got shape {list(img.shape)}")
        if parts is None:
            return self.pixels(self.geometry(img))
        if kind is None:
            raise ValueError(f"kind: parts were given without their kind ({', '.join(PART_KINDS)})")
        canvas = TF.get_size(img)  # [H, W] of a PIL image or a tensor
        sample = self.geometry({"image": img, **_wrap_parts(parts, kind, tuple(canvas))})
        image = sample["image"]
        return self.pixels(image), _unwrap_parts(sample, kind, tuple(image.shape[-2:]))

    def __call__(self, img, parts=None, kind: Optional[str] = None, generator: Optional[torch.Generator] = None):
        if generator is None:
            return self._run(img, parts, kind)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._run(img, parts, kind)


def build_transforms(
    height: int = 256,
    width: int = 128,
    is_train: bool = True,
    flip_p: float = 0.5,
    pad: int = 10,
    random_erase: bool = True,
    erase_p: float = 0.5,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> ReIDTransform:
    """The usual ReID pipeline (see the module docstring); ``pad=0`` leaves out the pad + crop,
    ``flip_p=0`` the flip, ``random_erase=False`` the erasing."""
    size = _pair("build_transforms", "(height, width)", (height, width))
    flip_p = _prob("build_transforms", "flip_p", flip_p)
    erase_p = _prob("build_transforms", "erase_p", erase_p)
    if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or pad < 0:
        raise ValueError(f"build_transforms: pad must be an int >= 0, got {pad!r}")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"build_transforms: mean and std need one value per channel, std > 0; got {mean}, {std}")
    pixels = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    geometry = [v2.Resize(size, antialias=True)]
    if is_train:
        if flip_p > 0:
            geometry.append(RandomHorizontalFlip(flip_p))
        if pad:
            geometry.append(v2.RandomCrop(size, padding=int(pad), fill=0))
        if random_erase and erase_p > 0:
            pixels.append(v2.RandomErasing(p=erase_p, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=list(ERASE_VALUE)))
    return ReIDTransform(geometry, pixels)
