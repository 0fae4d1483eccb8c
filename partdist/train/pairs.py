"""Training of a pair (verification) model on batches of image pairs, e.g. from
:class:`partdist.data.BalancedPairSampler` (``partdist train`` forms the pairs within each
P x K batch instead: :mod:`partdist.models.pairs`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["verification_step"]


def verification_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x1: torch.Tensor, x2: torch.Tensor, labels: torch.Tensor
) -> float:
    """One training step of a verification model (``model(x1, x2)`` -> ``[N, 2]`` logits, such
    as :class:`partdist.models.IDLA`) on a batch of pairs: 2-way cross-entropy (label 1 = same
    person). Returns the loss before the update.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x1, x2), labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
