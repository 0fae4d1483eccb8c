"""Standard ReID image transforms, without torchvision.

Each transform is called as ``t(img, generator=None)``: ``img`` is a PIL image or a
``[C, H, W]`` tensor (``Resize``, ``RandomHorizontalFlip``, ``Pad``, ``RandomCrop``
take either; ``ToTensor`` takes PIL images, ``H x W x C`` uint8 arrays or tensors;
``Normalize`` and ``RandomErasing`` take float tensors). Random transforms draw from
``generator`` (a ``torch.Generator``) when given, else from torch's global generator,
so a seeded generator makes a pipeline reproducible. :class:`Compose` passes its
generator to each transform.

:func:`build_transforms` gives the usual ReID pipelines (torchreid / AlignedReID):
training = resize, random horizontal flip, pad 10 + random crop back to size,
to-tensor, ImageNet normalization, random erasing (Zhong et al. 2020); test = resize,
to-tensor, normalize.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import is_instance_of

__all__ = [
    "Transform",
    "Compose",
    "Resize",
    "RandomHorizontalFlip",
    "Pad",
    "RandomCrop",
    "ToTensor",
    "Normalize",
    "RandomErasing",
    "build_transforms",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_pil(img):
    return is_instance_of(img, "PIL.Image", "Image")


def _size(op, img):
    """(height, width) of a PIL image or a [C, H, W] tensor."""
    if _is_pil(img):
        return img.size[1], img.size[0]
    if isinstance(img, torch.Tensor):
        if img.dim() != 3:
            raise ValueError(f"{op}: a tensor image must be [C, H, W], got shape {list(img.shape)}")
        return img.shape[1], img.shape[2]
    raise TypeError(f"{op}: img must be a PIL image or a [C, H, W] torch.Tensor, got {type(img).__name__}")


def _rand(generator):
    return float(torch.rand((), generator=generator))


def _randint(lo, hi, generator):
    """Uniform int in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=generator))


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
    """Base class: ``t(img, generator=None)``."""

    def __call__(self, img, generator: Optional[torch.Generator] = None):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order, passing ``generator`` to those that are :class:`Transform`."""

    def __init__(self, transforms: Sequence):
        transforms = list(transforms)
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(f"Compose: transforms[{i}] must be callable, got {type(t).__name__}")
        self.transforms = transforms

    def __call__(self, img, generator=None):
        for t in self.transforms:
            img = t(img, generator=generator) if isinstance(t, Transform) else t(img)
        return img


class Resize(Transform):
    """Resize to ``size = (height, width)`` (bilinear; antialiased for tensors)."""

    def __init__(self, size):
        self.size = _pair("Resize", "size", size)

    def __call__(self, img, generator=None):
        h, w = self.size
        if _size("Resize", img) == (h, w):
            return img
        if _is_pil(img):
            from PIL import Image

            return img.resize((w, h), Image.BILINEAR)
        dtype = img.dtype
        x = img[None].float() if not img.is_floating_point() else img[None]
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        if not dtype.is_floating_point:
            x = x.round().clamp(0, 255).to(dtype)
        return x


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = _prob("RandomHorizontalFlip", "p", p)

    def __call__(self, img, generator=None):
        _size("RandomHorizontalFlip", img)
        if _rand(generator) >= self.p:
            return img
        if _is_pil(img):
            from PIL import Image

            return img.transpose(Image.FLIP_LEFT_RIGHT)
        return img.flip(-1)


class Pad(Transform):
    """Add ``padding`` pixels of value ``fill`` on every side."""

    def __init__(self, padding: int, fill: int = 0):
        if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or padding < 0:
            raise ValueError(f"Pad: padding must be an int >= 0, got {padding!r}")
        self.padding = int(padding)
        self.fill = fill

    def __call__(self, img, generator=None):
        _size("Pad", img)
        p = self.padding
        if p == 0:
            return img
        if _is_pil(img):
            from PIL import ImageOps

            return ImageOps.expand(img, border=p, fill=self.fill)
        return F.pad(img, (p, p, p, p), mode="constant", value=self.fill)


class RandomCrop(Transform):
    """Crop a random ``size = (height, width)`` window, after padding by ``padding`` if given."""

    def __init__(self, size, padding: int = 0, fill: int = 0):
        self.size = _pair("RandomCrop", "size", size)
        self.pad = Pad(padding, fill)

    def __call__(self, img, generator=None):
        img = self.pad(img)
        H, W = _size("RandomCrop", img)
        h, w = self.size
        if h > H or w > W:
            raise ValueError(f"RandomCrop: crop size {(h, w)} is larger than the (padded) image {(H, W)}")
        top = _randint(0, H - h, generator)
        left = _randint(0, W - w, generator)
        if _is_pil(img):
            return img.crop((left, top, left + w, top + h))
        return img[:, top : top + h, left : left + w]


class ToTensor(Transform):
    """PIL image / ``H x W x C`` uint8 array -> float ``[C, H, W]`` tensor in [0, 1]."""

    def __call__(self, img, generator=None):
        if _is_pil(img):
            img = np.asarray(img.convert("RGB") if img.mode not in ("RGB", "L") else img)
        if isinstance(img, np.ndarray):
            if img.ndim == 2:
                img = img[:, :, None]
            if img.ndim != 3:
                raise ValueError(f"ToTensor: an array image must be H x W x C, got shape {list(img.shape)}")
            t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        elif isinstance(img, torch.Tensor):
            _size("ToTensor", img)
            t = img
        else:
            raise TypeError(f"ToTensor: img must be a PIL image, a numpy array or a tensor, got {type(img).__name__}")
        if t.dtype == torch.uint8:
            return t.float().div_(255.0)
        if not t.is_floating_point():
            raise TypeError(f"ToTensor: expected uint8 or floating-point pixels, got {t.dtype}")
        return t.float()


class Normalize(Transform):
    """``(x - mean) / std`` per channel of a float ``[C, H, W]`` tensor."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"Normalize: mean and std must have the same length, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize: std must be positive, got {self.std}")

    def __call__(self, img, generator=None):
        if not isinstance(img, torch.Tensor) or not img.is_floating_point() or img.dim() != 3:
            raise TypeError("Normalize: img must be a float [C, H, W] tensor (apply ToTensor first)")
        if img.shape[0] != len(self.mean):
            raise ValueError(f"Normalize: img has {img.shape[0]} channels, mean/std have {len(self.mean)}")
        mean = torch.tensor(self.mean, dtype=img.dtype, device=img.device)[:, None, None]
        std = torch.tensor(self.std, dtype=img.dtype, device=img.device)[:, None, None]
        return (img - mean) / std


class RandomErasing(Transform):
    """Random erasing (Zhong et al.), with torchreid's parameter names and defaults.

    With probability ``probability``, a rectangle of area ``uniform(sl, sh)`` times the
    image area and aspect ratio ``uniform(r1, 1 / r1)`` is filled with ``mean`` (one
    value per channel; the original implementation's constants, applied after
    normalization as there), or with uniform noise if ``mean == "random"``. Up to 100
    tries to place it; the image is returned unchanged if none fits. Returns a copy.
    """

    def __init__(self, probability=0.5, sl=0.02, sh=0.4, r1=0.3, mean=(0.4914, 0.4822, 0.4465)):
        self.probability = _prob("RandomErasing", "probability", probability)
        if not 0.0 < sl <= sh <= 1.0:
            raise ValueError(f"RandomErasing: need 0 < sl <= sh <= 1 (area fractions), got sl={sl}, sh={sh}")
        if not 0.0 < r1 <= 1.0:
            raise ValueError(f"RandomErasing: r1 (smallest aspect ratio) must be in (0, 1], got {r1}")
        if mean != "random":
            mean = tuple(float(m) for m in mean)
        self.sl, self.sh, self.r1, self.mean = float(sl), float(sh), float(r1), mean

    def __call__(self, img, generator=None):
        if not isinstance(img, torch.Tensor) or not img.is_floating_point() or img.dim() != 3:
            raise TypeError("RandomErasing: img must be a float [C, H, W] tensor (apply ToTensor first)")
        if _rand(generator) >= self.probability:
            return img
        C, H, W = img.shape
        if self.mean != "random" and len(self.mean) not in (1, C):
            raise ValueError(f"RandomErasing: mean has {len(self.mean)} values, the image {C} channels")
        area = H * W
        for _ in range(100):
            target = (self.sl + (self.sh - self.sl) * _rand(generator)) * area
            aspect = self.r1 + (1.0 / self.r1 - self.r1) * _rand(generator)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < h < H and 0 < w < W:
                y = _randint(0, H - h, generator)
                x = _randint(0, W - w, generator)
                out = img.clone()
                if self.mean == "random":
                    out[:, y : y + h, x : x + w] = torch.rand((C, h, w), generator=generator).to(img)
                else:
                    val = torch.tensor(self.mean, dtype=img.dtype, device=img.device)
                    out[:, y : y + h, x : x + w] = val.expand(C)[:, None, None] if len(self.mean) == 1 else val[:, None, None]
                return out
        return img


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
) -> Compose:
    """The usual ReID pipeline (see the module docstring)."""
    size = _pair("build_transforms", "(height, width)", (height, width))
    if not is_train:
        return Compose([Resize(size), ToTensor(), Normalize(mean, std)])
    ts = [Resize(size), RandomHorizontalFlip(flip_p)]
    if pad:
        ts.append(RandomCrop(size, padding=pad))
    ts += [ToTensor(), Normalize(mean, std)]
    if random_erase:
        ts.append(RandomErasing(probability=erase_p))
    return Compose(ts)
