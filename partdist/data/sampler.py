"""RandomIdentitySampler: batches of P identities x K images (the triplet-loss sampler).

Semantics are torchreid's / AlignedReID's: every epoch, the images of each identity
are shuffled and cut into groups of ``K = num_instances`` (an identity with fewer
than K images is sampled with replacement up to K; a last incomplete group is
dropped); then, while at least ``P = batch_size // K`` identities still have a group
left, P of them are drawn at random without replacement and one group of each is
emitted. So each consecutive ``batch_size`` indices hold exactly P distinct
identities with K images each.

Unlike torchreid's, it is deterministic and resumable: the order of epoch ``e`` is a
function of ``(seed, e)`` only. The epoch advances by itself when an iteration runs to
its end (or set it with :meth:`set_epoch`, as for ``DistributedSampler``), and
:meth:`state_dict` / :meth:`load_state_dict` carry ``seed``, ``epoch`` and the
position inside the epoch. ``len(sampler)`` is the exact number of indices the next
iteration yields (computed when needed); as in torchreid it varies a little from
epoch to epoch (an epoch ends when fewer than P identities have images left). An
iteration abandoned half-way resumes where it stopped on the next ``iter()``.

Note for resuming mid-epoch: a ``DataLoader`` draws indices ahead of the batches the
training loop has consumed (``prefetch_factor * num_workers`` batches). Save the
state at an epoch boundary, or restore it and then call
``set_epoch(epoch, start_batch=batches_trained)``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["RandomIdentitySampler"]


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"RandomIdentitySampler: {name} must be an int >= {lo}, got {v!r}")
    if v < lo:
        raise ValueError(f"RandomIdentitySampler: {name} must be an int >= {lo}, got {v}")
    return int(v)


class RandomIdentitySampler(Sampler):
    """Yield dataset indices in batches of P identities x K instances.

    Args:
        data_source: a sequence of items whose element ``[1]`` is the identity, such as
            the ``(path, pid, camid)`` lists of :mod:`partdist.data.datasets` (or an
            object with such a ``.data`` attribute, like :class:`ImageDataset`).
        batch_size: ``P * K``; must be a multiple of ``num_instances``.
        num_instances: ``K``, images per identity in a batch.
        seed: base seed (an int, or a ``torch.Generator`` whose ``initial_seed()`` is
            used). Default 0.
    """

    def __init__(self, data_source, batch_size: int, num_instances: int, seed=0):
        if hasattr(data_source, "data") and not isinstance(data_source, (list, tuple)):
            data_source = data_source.data
        try:
            n = len(data_source)
        except TypeError:
            raise TypeError(
                "RandomIdentitySampler: data_source must be a sequence of (path, pid, camid) items, "
                f"got {type(data_source).__name__}"
            ) from None
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.num_instances = _check_int("num_instances", num_instances, 1)
        if self.batch_size % self.num_instances != 0:
            raise ValueError(
                f"RandomIdentitySampler: batch_size ({self.batch_size}) must be a multiple of "
                f"num_instances ({self.num_instances})"
            )
        self.num_pids_per_batch = self.batch_size // self.num_instances
        if isinstance(seed, torch.Generator):
            seed = seed.initial_seed()
        self.seed = _check_int("seed", seed, 0)

        index_dic = defaultdict(list)
        for i in range(n):
            try:
                pid = data_source[i][1]
            except (TypeError, IndexError, KeyError):
                raise TypeError(
                    f"RandomIdentitySampler: data_source[{i}] must be a (path, pid, camid) item, "
                    f"got {data_source[i]!r}"
                ) from None
            if isinstance(pid, torch.Tensor):
                pid = pid.item()
            index_dic[int(pid)].append(i)
        self.pids = sorted(index_dic)
        self.index_dic = {p: np.asarray(index_dic[p], dtype=np.int64) for p in self.pids}
        if len(self.pids) < self.num_pids_per_batch:
            raise ValueError(
                f"RandomIdentitySampler: data_source has {len(self.pids)} identities, fewer than the "
                f"{self.num_pids_per_batch} per batch that batch_size={self.batch_size} / "
                f"num_instances={self.num_instances} needs"
            )
        self.epoch = 0
        self._start = 0  # index position to resume from inside the current epoch
        self._cache = None  # (epoch, indices)

    # -- epoch order -------------------------------------------------------------------

    def epoch_indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """All indices of ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, 0)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        K, P = self.num_instances, self.num_pids_per_batch
        groups = {}
        for pid in self.pids:
            idxs = self.index_dic[pid]
            if len(idxs) < K:
                idxs = rng.choice(idxs, size=K, replace=True)
            idxs = rng.permutation(idxs)
            usable = len(idxs) - len(idxs) % K
            groups[pid] = [idxs[s : s + K] for s in range(0, usable, K)]
        avail = list(self.pids)
        out = []
        while len(avail) >= P:
            chosen = rng.choice(len(avail), size=P, replace=False)
            selected = [avail[c] for c in chosen]
            for pid in selected:
                out.append(groups[pid].pop(0))
            avail = [p for p in avail if groups[p]]
        indices = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        self._cache = (epoch, indices)
        return indices

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        start = self._start
        for pos in range(start, len(indices)):
            self._start = pos + 1
            yield int(indices[pos])
        # a full pass: next iteration is the next epoch
        self.epoch += 1
        self._start = 0

    def __len__(self) -> int:
        """Indices left in the current epoch (all of them unless resumed mid-epoch)."""
        return max(0, len(self.epoch_indices()) - self._start)

    # -- resuming ------------------------------------------------------------------------

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration run epoch ``epoch`` from batch ``start_batch``."""
        self.epoch = _check_int("epoch", epoch, 0)
        start_batch = _check_int("start_batch", start_batch, 0)
        self._start = start_batch * self.batch_size

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self._start,
            "batch_size": self.batch_size,
            "num_instances": self.num_instances,
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not {"seed", "epoch", "position"} <= set(state):
            raise ValueError(
                "RandomIdentitySampler.load_state_dict: state must be a dict from state_dict() with "
                f"'seed', 'epoch' and 'position', got {state!r}"
            )
        for key in ("batch_size", "num_instances"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"RandomIdentitySampler.load_state_dict: state has {key}={state[key]}, "
                    f"this sampler has {getattr(self, key)}"
                )
        self.seed = _check_int("seed", state["seed"], 0)
        self.epoch = _check_int("epoch", state["epoch"], 0)
        self._start = _check_int("position", state["position"], 0)
        self._cache = None
