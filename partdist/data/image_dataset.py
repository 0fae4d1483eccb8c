"""ImageDataset: a torch Dataset over ``(path, pid, camid)`` lists."""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import Transform

__all__ = ["ImageDataset", "read_image"]


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
