"""Balanced pair sampling for verification training (same / different person)."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["BalancedPairSampler"]


class BalancedPairSampler:
    """Batches of image-index pairs, half positives (same person) and half negatives.

    Args:
        pids: ``[N]`` person ID of every image of the training set.
        camids: optional ``[N]`` camera IDs; with ``cross_camera`` the two images of a
            positive pair are taken from different cameras whenever that person was
            seen by more than one camera (as IDLA's training pairs, which match the
            two camera views).
        batch_size: pairs per batch (even: ``batch_size // 2`` positives, the rest negatives).
        num_batches: batches per epoch (default: enough for ``N`` pairs).
        seed: RNG seed; each epoch (each ``iter()``) draws new pairs, reproducibly.

    Iterating yields ``(idx_a, idx_b, label)`` LongTensors of length ``batch_size``,
    ``label`` 1 for a positive pair and 0 for a negative one, positives and negatives
    shuffled together. Persons with a single image give no positives (they still
    appear in negatives); at least one person needs two images and two persons are
    needed.
    """

    def __init__(
        self,
        pids: Sequence[int],
        camids: Optional[Sequence[int]] = None,
        batch_size: int = 64,
        num_batches: Optional[int] = None,
        cross_camera: bool = True,
        seed: int = 0,
    ):
        pids = np.asarray(torch.as_tensor(pids).cpu(), dtype=np.int64).reshape(-1)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
            raise ValueError(f"BalancedPairSampler: batch_size must be an int >= 2, got {batch_size!r}")
        cams = None if camids is None else np.asarray(torch.as_tensor(camids).cpu(), dtype=np.int64).reshape(-1)
        if cams is not None and cams.shape != pids.shape:
            raise ValueError(
                f"BalancedPairSampler: camids must have one entry per image ({pids.shape[0]}), got {cams.shape[0]}"
            )
        self.batch_size = batch_size
        self.num_batches = num_batches if num_batches is not None else max(1, pids.shape[0] // batch_size)
        self.cross_camera = cross_camera and cams is not None
        self.seed = seed
        self._epoch = 0
        self.pids, self.cams = pids, cams
        self.by_pid = {int(p): np.flatnonzero(pids == p) for p in np.unique(pids)}
        self.pos_pids = np.array([p for p, idx in self.by_pid.items() if idx.shape[0] >= 2], dtype=np.int64)
        if self.pos_pids.shape[0] == 0:
            raise ValueError("BalancedPairSampler: no person has two images: no positive pair exists")
        if len(self.by_pid) < 2:
            raise ValueError("BalancedPairSampler: at least two persons are needed for negative pairs")

    def __len__(self) -> int:
        return self.num_batches

    def _positive(self, rng) -> Tuple[int, int]:
        idx = self.by_pid[int(rng.choice(self.pos_pids))]
        a = int(rng.choice(idx))
        others = idx[idx != a]
        if self.cross_camera:
            other_cam = others[self.cams[others] != self.cams[a]]
            if other_cam.shape[0]:
                others = other_cam
        return a, int(rng.choice(others))

    def _negative(self, rng) -> Tuple[int, int]:
        n = self.pids.shape[0]
        while True:
            a, b = int(rng.integers(n)), int(rng.integers(n))
            if self.pids[a] != self.pids[b]:
                return a, b

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self._epoch])
        self._epoch += 1
        n_pos = self.batch_size // 2
        for _ in range(self.num_batches):
            pairs = [self._positive(rng) + (1,) for _ in range(n_pos)]
            pairs += [self._negative(rng) + (0,) for _ in range(self.batch_size - n_pos)]
            perm = rng.permutation(len(pairs))
            t = torch.as_tensor(np.asarray(pairs, dtype=np.int64)[perm])
            yield t[:, 0], t[:, 1], t[:, 2]
