"""ImageDataset: a torch Dataset over ``(path, pid, camid)`` lists."""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import ReIDTransform, Transform

__all__ = ["ImageDataset", "PartImageDataset", "read_image"]


def read_image(path):
    """Open ``path`` as an RGB PIL image; a clear error if it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_image: image file {path!r} does not exist")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"read_image: cannot read {path!r} as an image: {err}") from None


class ImageDataset(Dataset):
    """``dataset[i] -> (image, pid, camid)`` for ``data[i] = (path, pid, camid)``.

    Args:
        data: a list of ``(path, pid, camid)`` items (a split of a
            :class:`~partdist.data.ReIDSplits`).
        transform: applied to the PIL image (default: none, the PIL image is returned).
            A :class:`~partdist.data.transforms.Transform` is called with a generator.
        seed: if given, item ``i`` of epoch ``e`` is transformed with a
            ``torch.Generator`` seeded from ``(seed, e, i)``, so augmentation is
            reproducible whatever the worker or the order (set ``e`` with
            :meth:`set_epoch`). If ``None``, random transforms use torch's global
            generator (which a ``DataLoader`` seeds per worker).
    """

    def __init__(self, data: Sequence, transform: Optional[Callable] = None, seed: Optional[int] = None):
        data = list(data)
        for i, item in enumerate(data):
            if not (isinstance(item, (tuple, list)) and len(item) >= 3 and isinstance(item[0], (str, os.PathLike))):
                raise TypeError(f"ImageDataset: data[{i}] must be a (path, pid, camid) item, got {item!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"ImageDataset: transform must be callable or None, got {type(transform).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"ImageDataset: seed must be an int >= 0 or None, got {seed!r}")
        self.data = data
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.data)

    def generator(self, index: int) -> Optional[torch.Generator]:
        """The generator used for item ``index`` in the current epoch (None without a seed)."""
        if self.seed is None:
            return None
        s = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, np.uint32).view(np.uint64)[0])
        return torch.Generator().manual_seed(s & ((1 << 63) - 1))

    def __getitem__(self, index):
        path, pid, camid = self.data[index][:3]
        img = read_image(path)
        if self.transform is not None:
            if isinstance(self.transform, Transform):
                img = self.transform(img, generator=self.generator(index))
            else:
                img = self.transform(img)
        return img, pid, camid


class PartImageDataset(ImageDataset):
    """``dataset[i] -> (image, pid, camid, parts[i])``: an :class:`ImageDataset` that also yields
    the part locations of each image, for the part models (``partdist.models.GLAD``,
    ``SpindleNet``, ``SPReID``).

    ``parts`` (array or tensor, one row per item of ``data``): boxes ``[M, P, 4]`` or keypoints
    ``[M, 14, 3]`` in pixels of the stored image, or masks ``[M, P, h, w]`` (any size). With a
    :class:`~partdist.data.transforms.ReIDTransform` (:func:`partdist.data.build_transforms`,
    training or test) the parts follow the image through every step (resize, flip, pad + crop;
    masks come out at the image's size). Another callable transform gets the image alone; then
    only resizing is followed (box and keypoint coordinates are scaled to the returned image
    tensor's size), so it must not flip or crop.
    """

    def __init__(self, data: Sequence, parts, transform: Optional[Callable] = None, seed: Optional[int] = None):
        super().__init__(data, transform, seed)
        parts = torch.as_tensor(np.asarray(parts) if not isinstance(parts, torch.Tensor) else parts)
        if parts.dim() < 3 or parts.shape[0] != len(self.data):
            raise ValueError(
                f"PartImageDataset: parts must hold one row per item of data ([{len(self.data)}, P, 4] boxes, "
                f"[{len(self.data)}, 14, 3] keypoints or [{len(self.data)}, P, h, w] masks), got {list(parts.shape)}"
            )
        if parts.dim() == 3 and parts.shape[-1] == 4:
            self.kind = "boxes"
        elif parts.dim() == 3 and parts.shape[1:] == (14, 3):
            self.kind = "keypoints"
        elif parts.dim() == 4:
            self.kind = "masks"
        else:
            raise ValueError(
                f"PartImageDataset: parts must be boxes [M, P, 4], keypoints [M, 14, 3] or masks [M, P, h, w], "
                f"got {list(parts.shape)}"
            )
        if self.kind != "masks" or parts.is_floating_point():
            parts = parts.float()
        self.parts = parts

    def __getitem__(self, index):
        path, pid, camid = self.data[index][:3]
        img = read_image(path)
        parts = self.parts[index]
        if isinstance(self.transform, ReIDTransform):
            img, parts = self.transform(img, parts, self.kind, generator=self.generator(index))
            return img, pid, camid, parts
        w0, h0 = img.size
        if self.transform is not None:
            if isinstance(self.transform, Transform):
                img = self.transform(img, generator=self.generator(index))
            else:
                img = self.transform(img)
        if self.kind != "masks" and isinstance(img, torch.Tensor) and img.dim() == 3:
            sx, sy = img.shape[2] / w0, img.shape[1] / h0
            if (sx, sy) != (1.0, 1.0):
                scale = [sx, sy, sx, sy] if self.kind == "boxes" else [sx, sy, 1.0]
                parts = parts * torch.tensor(scale, dtype=parts.dtype)
        return img, pid, camid, parts
