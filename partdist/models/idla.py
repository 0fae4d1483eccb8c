"""IDLA: the "improved deep learning architecture" for person re-identification.

Ahmed, Jones, Marks, "An Improved Deep Learning Architecture for Person
Re-Identification", CVPR 2015. A siamese *verification* network: it takes two images
and outputs two logits, ``[different, same]``.

Layers (input 3 x 160 x 60, the sizes in brackets are for that input):

1. tied convolutions, applied to both images with the same weights:
   conv 5x5, 20 maps -> ReLU -> max-pool 2  [20 x 78 x 28];
   conv 5x5, 25 maps -> ReLU -> max-pool 2  [25 x 37 x 12];
2. cross-input neighborhood differences in both directions,
   ``K = f * 1(5,5) - N[g]`` and ``K' = g * 1(5,5) - N[f]``
   (:func:`partdist.cross_neighborhood_diff`, tiled layout) -> ReLU  [25 x 185 x 60 each];
3. patch summary features: conv 5x5 stride 5, 25 maps (one per direction) -> ReLU
   [25 x 37 x 12 each];
4. across-patch features: conv 3x3, 25 maps (one per direction) -> ReLU ->
   max-pool 2 (ceil)  [25 x 18 x 5 each];
5. higher-order relationships: the two concatenated and flattened (4500) ->
   fully connected 500 -> ReLU -> fully connected 2 (softmax: same / different).

Not reproduced from the paper: its data augmentation and its hard-negative mining
schedule; training here is plain cross-entropy on balanced pairs
(:class:`partdist.data.BalancedPairSampler`, :func:`partdist.train.verification_step`), or, in
``partdist train --model idla``, on the pairs formed within each P x K batch (every positive
pair and as many random negatives, :mod:`partdist.models.pairs`). IDLA is a pair model
(``pair_model = True``): its ranking evaluation scores all Q x G pairs
(:func:`idla_distance_matrix`; :func:`partdist.eval.evaluate_model` with ``name="idla"``).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.neighborhood import cross_neighborhood_diff
from .pairs import image_features, pair_distance_matrix, verification_terms

__all__ = ["IDLA", "idla_distance_matrix"]


class IDLA(nn.Module):
    """The IDLA network (see the module docstring for the layers).

    Args:
        input_size: ``(H, W)`` of the input images (160 x 60 in the paper).
        kernel_size: neighborhood size k of the cross-input differences (5).
        dropout: dropout probability before the first fully connected layer (0: none,
            as described in the paper).

    ``forward(x1, x2)`` takes two ``[N, 3, H, W]`` batches and returns ``[N, 2]`` logits,
    index 1 = "same person". The tied trunk can be run once per image
    (:meth:`features`) and the pair head on the maps (:meth:`head`), which is what the
    ranking evaluation does.
    """

    SAME = 1
    DIFFERENT = 0
    pair_model = True  # see partdist.models.pairs

    def __init__(self, input_size: Tuple[int, int] = (160, 60), kernel_size: int = 5, dropout: float = 0.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"IDLA: kernel_size must be an odd int >= 1, got {kernel_size}")
        self.input_size = tuple(int(s) for s in input_size)
        self.kernel_size = k = kernel_size
        self.conv1 = nn.Conv2d(3, 20, 5)
        self.conv2 = nn.Conv2d(20, 25, 5)
        self.patch = nn.Conv2d(25, 25, k, stride=k)  # on K
        self.patch_p = nn.Conv2d(25, 25, k, stride=k)  # on K'
        self.across = nn.Conv2d(25, 25, 3)
        self.across_p = nn.Conv2d(25, 25, 3)
        h, w = self.input_size
        h, w = (h - 4) // 2, (w - 4) // 2  # conv1 + pool
        h, w = (h - 4) // 2, (w - 4) // 2  # conv2 + pool
        if h < 3 or w < 3:
            raise ValueError(f"IDLA: input_size {self.input_size} is too small (feature maps {h} x {w})")
        self.map_size = (h, w)
        h, w = math.ceil((h - 2) / 2), math.ceil((w - 2) / 2)  # across-patch conv + pool
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc1 = nn.Linear(2 * 25 * h * w, 500)
        self.fc2 = nn.Linear(500, 2)

    def _check(self, name, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.input_size:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"IDLA: {name} must be images [N, 3, {self.input_size[0]}, {self.input_size[1]}], got {shape}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Tied convolutions: ``[N, 3, H, W] -> [N, 25, h, w]`` (37 x 12 for 160 x 60)."""
        self._check("x", x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return F.max_pool2d(F.relu(self.conv2(x)), 2)

    def head(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Pair head on two batches of tied-trunk maps: ``[N, 25, h, w]`` x 2 -> ``[N, 2]`` logits."""
        K, Kp = cross_neighborhood_diff(f, g, self.kernel_size)
        L = F.relu(self.patch(F.relu(K)))
        Lp = F.relu(self.patch_p(F.relu(Kp)))
        M = F.max_pool2d(F.relu(self.across(L)), 2, ceil_mode=True)
        Mp = F.max_pool2d(F.relu(self.across_p(Lp)), 2, ceil_mode=True)
        z = torch.cat([M.flatten(1), Mp.flatten(1)], 1)
        return self.fc2(F.relu(self.fc1(self.dropout(z))))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        self._check("x1", x1)
        self._check("x2", x2)
        if x1.shape[0] != x2.shape[0]:
            raise ValueError(f"IDLA: x1 and x2 must hold the same number of images, got {x1.shape[0]} and {x2.shape[0]}")
        f = self.features(torch.cat([x1, x2]))  # one trunk pass for both images
        return self.head(f[: x1.shape[0]], f[x1.shape[0] :])

    def pair_distance(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Distances of pairs of trunk maps (:meth:`features`): :meth:`distance` of :meth:`head`."""
        return self.distance(self.head(f, g))

    def pair_loss_terms(self, images: torch.Tensor, pids: torch.Tensor) -> dict:
        """Training losses of a P x K batch: cross-entropy on the batch's pairs
        (:func:`partdist.models.pairs.verification_terms`)."""
        return verification_terms(self, images, pids)

    @staticmethod
    def distance(logits: torch.Tensor) -> torch.Tensor:
        """Ranking distance of pairs from their logits: ``logit[different] - logit[same]``
        (= log p(different) / p(same), increasing in p(different); no saturation to 0/1)."""
        return logits[:, IDLA.DIFFERENT] - logits[:, IDLA.SAME]


@torch.no_grad()
def idla_distance_matrix(
    model: IDLA,
    query: torch.Tensor,
    gallery: torch.Tensor,
    batch_size: int = 256,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """``[Q, G]`` distances (:meth:`IDLA.distance`) of all query x gallery pairs.

    The tied trunk runs once per image; the pair head on ``batch_size`` pairs at a time
    (:func:`partdist.models.pairs.pair_distance_matrix`; its memory is two
    ``[batch, 25, 185, 60]`` difference maps per batch), so Q x G can be large. Returns a
    float32 tensor on the CPU.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"idla_distance_matrix: batch_size must be a positive int, got {batch_size!r}")
    was_training = model.training
    model.eval()
    fq = image_features(model, query, batch_size, device)
    fg = image_features(model, gallery, batch_size, device)
    out = pair_distance_matrix(model, fq, fg, batch_size)
    model.train(was_training)
    return out
