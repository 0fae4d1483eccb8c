"""P x K training batches: a pure function of ``(seed, epoch)``, and each rank's share of them
under data-parallel training (see :mod:`partdist.train`)."""

from __future__ import annotations

import itertools
from typing import Optional

import torch

from .. import distributed as pdist
from ..models.zoo import model_spec
from ..runs import TrainConfig

__all__ = ["make_batches", "check_share"]


def check_share(p: int, world: int):
    if p % world != 0:
        raise ValueError(
            f"p: the {p} identities of a batch must divide evenly among the {world} ranks "
            "(each rank takes whole identities); choose p divisible by the number of processes"
        )


class _RankShare(torch.utils.data.Sampler):
    """Of every ``batch_size`` consecutive indices of ``sampler`` (a P x K batch, identities in
    runs of K), the ``batch_size / world`` at positions ``rank * batch_size / world ...``: whole
    identities, the same split on every rank."""

    def __init__(self, sampler, batch_size: int, rank: int, world: int):
        self.sampler, self.batch_size, self.rank, self.world = sampler, batch_size, rank, world
        self.share = batch_size // world

    def __iter__(self):
        lo, buf = self.rank * self.share, []
        for i in self.sampler:
            buf.append(i)
            if len(buf) == self.batch_size:
                yield from buf[lo : lo + self.share]
                buf = []

    def __len__(self):
        return len(self.sampler) // self.batch_size * self.share


def make_batches(train_items, cfg: TrainConfig, rank: Optional[int] = None, world_size: Optional[int] = None,
                 parts=None):
    """``epoch -> iterator of (images, pids)``: P x K batches of the training items with the
    training transforms, a pure function of ``(cfg.seed, epoch)`` (sampler order and
    augmentations are both keyed on them), so a resumed run sees the same batches.

    ``parts`` (one row per training item: keypoints ``[M, 14, 3]``, boxes or masks, e.g. from
    :func:`partdist.data.part_annotations`) is required by the models that take parts
    (``needs`` in :data:`partdist.models.MODEL_SPECS`); the batches are then
    ``(images, pids, parts)``; the parts follow the image through the training transforms
    (flip, pad + crop, random erasing: :mod:`partdist.data.transforms`).

    With ``world_size`` W > 1 (default: that of the initialized process group) it yields this
    ``rank``'s share of each global P x K batch: the P / W identities (K images each) at
    positions ``rank * P / W ...``; the W shares concatenated in rank order are the
    single-process batch (same images, same augmentations)."""
    from torch.utils.data import DataLoader

    from ..data import ImageDataset, RandomIdentitySampler, build_transforms

    rank = pdist.rank() if rank is None else int(rank)
    world = pdist.world_size() if world_size is None else int(world_size)
    if not 0 <= rank < world:
        raise ValueError(f"rank: expected 0 <= rank < world_size ({world}), got {rank}")
    check_share(cfg.p, world)
    items = list(train_items)
    needs = model_spec(cfg.model).needs
    if needs and parts is None:
        raise ValueError(f"parts: model {cfg.model!r} needs {needs} for every training image; pass "
                         "parts=partdist.data.part_annotations(root, train_items, ...)")
    if parts is not None:
        from ..data import PartImageDataset

        ds = PartImageDataset(items, parts, build_transforms(cfg.height, cfg.width, is_train=True), seed=cfg.seed)
    else:
        ds = ImageDataset(items, build_transforms(cfg.height, cfg.width, is_train=True), seed=cfg.seed)
    sampler = RandomIdentitySampler(items, batch_size=cfg.p * cfg.k, num_instances=cfg.k, seed=cfg.seed)
    share = sampler if world == 1 else _RankShare(sampler, cfg.p * cfg.k, rank, world)

    per_rank = cfg.p * cfg.k // world

    def one_pass(key):
        ds.set_epoch(key)
        sampler.set_epoch(key)
        loader = DataLoader(ds, batch_size=per_rank, sampler=share, num_workers=cfg.num_workers, drop_last=True)
        for batch in loader:
            yield (batch[0], torch.as_tensor(batch[1])) + tuple(batch[3:4])

    def batches(epoch):
        """One pass over the training set, or with ``cfg.iters_per_epoch`` exactly that many
        batches: the first passes' order is that of epoch ``epoch``, further passes (when
        more iterations are asked than one pass holds) get orders of their own, keyed on
        ``(epoch, pass)``, so the batches stay a pure function of ``(seed, epoch)``."""
        want = cfg.iters_per_epoch
        done = 0
        for cycle in itertools.count():
            key = epoch if cycle == 0 else epoch + cycle * _CYCLE_STRIDE
            got = 0
            for batch in one_pass(key):
                if want is not None and done >= want:
                    return
                yield batch
                done += 1
                got += 1
            if want is None or done >= want or got == 0:
                return

    def num_batches(epoch):
        if cfg.iters_per_epoch is not None:
            return cfg.iters_per_epoch
        return len(sampler.epoch_indices(epoch)) // (cfg.p * cfg.k)

    batches.num_batches = num_batches
    batches.pass_length = num_batches(0) if cfg.iters_per_epoch is None else len(sampler.epoch_indices(0)) // (cfg.p * cfg.k)
    return batches


# Sampler epoch keys of the extra passes of an epoch (``--iters-per-epoch`` above one pass):
# far from the epoch numbers of any real run, so no two passes share an order.
_CYCLE_STRIDE = 1 << 24
