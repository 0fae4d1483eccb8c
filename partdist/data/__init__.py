"""Data: dataset parsers, the synthetic ReID generator, the P x K sampler, transforms.

* :mod:`~partdist.data.datasets`: Market-1501, DukeMTMC-reID, CUHK03-np and MSMT17
  folder layouts -> ``(train, query, gallery)`` lists of ``(path, pid, camid)``;
* :class:`SyntheticReID`: seeded offline person-like images in the Market-1501 layout, with
  ground-truth part boxes, masks and keypoints (:func:`load_synthetic_parts`);
* :class:`RandomIdentitySampler`: batches of P identities x K images;
* :mod:`~partdist.data.transforms`: resize, flip, pad + crop, random erasing, to-tensor,
  normalize (no torchvision);
* :class:`ImageDataset`: a torch Dataset over ``(path, pid, camid)`` lists;
* :class:`BalancedPairSampler`: balanced positive / negative pairs (verification models);
* :func:`check_images`: every image's header read once, the unreadable files listed.
"""

from . import transforms
from .check import check_images
from .datasets import (
    DATASETS,
    ReIDSplits,
    cuhk03_np,
    dukemtmc_reid,
    load_dataset,
    market1501,
    market_layout,
    msmt17,
    parse_image_folder,
)
from .image_dataset import ImageDataset, PartImageDataset, read_image
from .pairs import BalancedPairSampler
from .sampler import RandomIdentitySampler
from .synthetic import (
    SETTINGS,
    SYNTHETIC_PARTS,
    CameraParams,
    SyntheticReID,
    default_camera_params,
    hard_camera_params,
    load_synthetic_parts,
    make_grid,
    part_annotations,
)
from .transforms import build_transforms

__all__ = [
    "BalancedPairSampler",
    "check_images",
    "DATASETS",
    "ReIDSplits",
    "cuhk03_np",
    "dukemtmc_reid",
    "load_dataset",
    "market1501",
    "market_layout",
    "msmt17",
    "parse_image_folder",
    "ImageDataset",
    "PartImageDataset",
    "read_image",
    "RandomIdentitySampler",
    "CameraParams",
    "SyntheticReID",
    "default_camera_params",
    "make_grid",
    "load_synthetic_parts",
    "SYNTHETIC_PARTS",
    "SETTINGS",
    "hard_camera_params",
    "part_annotations",
    "build_transforms",
    "transforms",
]
