"""PersonNet (Wu, Shen, van den Hengel, 2016): a deeper cross-input difference network.

PersonNet keeps IDLA's design (:class:`partdist.models.IDLA`: tied convolutions, cross-input
neighborhood differences, patch summary, across-patch features, a 2-way same / different
softmax) and makes it deeper with small 3x3 filters:

1. tied trunk: conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> max-pool 2, twice (``width`` maps,
   padding 1): ``[N, width, H/4, W/4]``;
2. cross-input neighborhood differences in both directions (:func:`partdist.cross_neighborhood_diff`,
   ``kernel_size`` k) -> ReLU;
3. patch summary: conv k x k stride k (one per direction) -> ReLU;
4. across-patch features: two conv 3x3 layers (padding 1) -> ReLU, then max-pool 2 (one per
   direction);
5. the two flattened, fully connected ``fc_dim`` -> ReLU -> fully connected 2.

A pair model (:mod:`partdist.models.pairs`): trained with the 2-way cross-entropy on the
pairs of each P x K batch (every positive, as many random negatives); the ranking
evaluation runs the trunk once per image and the head on all ``Q x G`` pairs.

Departures from the paper: the layer widths (``width = 16``, ``fc_dim = 256``) and depths are
ours, chosen to keep the ``Q x G`` head cheap on the CPU, not the paper's; any input size
(the paper: 160 x 60); no data augmentation or hard-negative schedule; the comparison's
schedule (Adam, few iterations).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.neighborhood import cross_neighborhood_diff
from .pairs import verification_terms
from .reid import _check_images

__all__ = ["PersonNet"]


def _conv_relu(cin, cout, k=3, stride=1, padding=1):
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=padding), nn.ReLU(inplace=True)]


class PersonNet(nn.Module):
    SAME = 1
    DIFFERENT = 0
    pair_model = True

    def __init__(self, num_classes: Optional[int] = None, input_size: Tuple[int, int] = (128, 64), width: int = 16,
                 kernel_size: int = 5, fc_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"PersonNet: kernel_size must be an odd int >= 1, got {kernel_size!r}")
        h, w = (int(s) for s in input_size)
        if h < 16 or w < 16:
            raise ValueError(f"PersonNet: input_size must be at least 16 x 16, got {tuple(input_size)}")
        self.input_size, self.kernel_size = (h, w), kernel_size
        c = width
        self.trunk = nn.Sequential(*_conv_relu(3, c), *_conv_relu(c, c), nn.MaxPool2d(2),
                                   *_conv_relu(c, c), *_conv_relu(c, c), nn.MaxPool2d(2))
        k = kernel_size
        self.patch = nn.ModuleList(nn.Sequential(*_conv_relu(c, c, k, k, 0)) for _ in range(2))
        self.across = nn.ModuleList(
            nn.Sequential(*_conv_relu(c, c), *_conv_relu(c, c), nn.MaxPool2d(2)) for _ in range(2)
        )
        mh, mw = h // 4 // 2, w // 4 // 2
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc1 = nn.Linear(2 * c * mh * mw, fc_dim)
        self.fc2 = nn.Linear(fc_dim, 2)

    def _check(self, name, x):
        _check_images("PersonNet", x)
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"PersonNet: {name} must be images [N, 3, {self.input_size[0]}, {self.input_size[1]}] "
                             f"(input_size), got {list(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check("x", x)
        return self.trunk(x)

    def head(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        K, Kp = cross_neighborhood_diff(f, g, self.kernel_size)
        z = [self.across[d](self.patch[d](F.relu(t))).flatten(1) for d, t in enumerate((K, Kp))]
        return self.fc2(F.relu(self.fc1(self.dropout(torch.cat(z, 1)))))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        self._check("x2", x2)
        if x1.shape[0] != x2.shape[0]:
            raise ValueError(f"PersonNet: x1 and x2 must hold the same number of images, got {x1.shape[0]} and {x2.shape[0]}")
        f = self.features(torch.cat([x1, x2]))
        return self.head(f[: x1.shape[0]], f[x1.shape[0]:])

    def pair_distance(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        logits = self.head(f, g)
        return logits[:, self.DIFFERENT] - logits[:, self.SAME]

    def pair_loss_terms(self, images: torch.Tensor, pids: torch.Tensor) -> dict:
        return verification_terms(self, images, pids)
