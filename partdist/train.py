"""Training of the reference ReID models (:data:`partdist.models.MODEL_SPECS`) with the partdist losses.

Embedding models train with the ID loss (one per classifier, averaged) + the batch-hard triplet
loss on ``global`` (+ DMLI for AlignedReID, + the model's ``extra_losses``); pair models
(IDLA, PersonNet, Gate Siamese) with their pair losses on the pairs of each P x K batch
(:mod:`partdist.models.pairs`); part models get ``(images, pids, parts)`` batches.

Checkpoints are written atomically at the end of every epoch (model, optimizer, scheduler,
RNG states, epoch, metrics); ``resume=True`` continues from the last one exactly: every epoch
re-seeds its sampler, augmentations and dropout from ``(seed, epoch)``, so training 2 epochs
equals training 1, stopping, resuming and training 1 more. A kill or Ctrl-C mid-epoch loses at
most the current epoch. Metrics go to ``<out>/metrics.jsonl``, one JSON object per epoch.

Distributed data parallel (``torchrun``): when a ``torch.distributed`` process group is
initialized (``partdist train`` does it under ``torchrun`` or with ``--distributed``), the
:class:`Trainer` wraps the model in ``DistributedDataParallel``. The global batch is the
single-process P x K batch; rank ``r`` of ``W`` takes the ``P / W`` identities at positions
``r * P / W ...`` of it (whole identities, ``P`` must be divisible by ``W``) and loads only those
images. The triplet losses mine over the global batch (``all_ranks=True``, their loss is
multiplied by ``W`` to undo DDP's gradient averaging) and the ID loss is a mean over equal shards,
so a step equals the single-process step on the same global batch (up to float summation order;
exactly so only where BatchNorm does not use per-rank batch statistics: ``freeze_bn``, or
``sync_bn`` on CUDA). Only rank 0 writes checkpoints, metrics, logs and progress bars; every rank
resumes from the same checkpoint, and since the global batches are a function of
``(seed, epoch)`` a run may be resumed with another number of ranks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import nn

from . import distributed as pdist
from .losses import AlignedTripletLoss, CrossEntropyLabelSmooth, TripletLoss
from .models.zoo import MODEL_SPECS, model_spec

__all__ = ["TrainConfig", "build_model", "Trainer", "train", "make_batches"]

#: every model of :data:`partdist.models.MODEL_SPECS` (the ``--model`` choices)
MODELS = tuple(MODEL_SPECS)


@dataclass
class TrainConfig:
    model: str = "aligned"  # a name of MODELS (partdist.models.MODEL_SPECS)
    backbone: str = "compact"  # resnet50 | resnet18 | compact
    weights: Optional[str] = None  # local torchvision-style state_dict for the backbone
    last_stride: Optional[int] = None  # default: 2 for aligned, 1 for pcb
    height: int = 128
    width: int = 64
    p: int = 8  # identities per batch
    k: int = 4  # images per identity
    epochs: int = 10
    iters_per_epoch: Optional[int] = None  # default: len(train) // (p * k)
    optimizer: str = "adam"  # adam | sgd (momentum 0.9, as in the PCB recipe)
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 2
    milestones: List[int] = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1
    margin: float = 0.3
    label_smooth: float = 0.1
    local_weight: float = 1.0  # weight of the DMLI local triplet loss (aligned)
    local_gamma: float = 0.0  # > 0: soft-DMLI in the local loss
    triplet_weight: float = 1.0
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/train"
    progress: bool = True
    distributed: bool = False  # init torch.distributed from the torchrun environment (automatic under torchrun)
    sync_bn: bool = False  # DDP: convert BatchNorm to SyncBatchNorm (CUDA only)
    freeze_bn: bool = False  # BatchNorm layers use and keep their running statistics (affine params still train)

    def validate(self):
        model_spec(self.model)  # a clear error for an unknown name
        for name in ("p", "k", "epochs", "height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.k < 2:
            raise ValueError(f"k: the triplet losses need at least 2 images per identity, got {self.k}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive finite number, got {self.lr!r}")
        return self


def build_model(cfg: TrainConfig, num_classes: Optional[int]) -> nn.Module:
    """The model ``cfg.model`` (:data:`partdist.models.MODEL_SPECS`)."""
    return model_spec(cfg.model).build(cfg, num_classes)


def _lr_lambda(cfg: TrainConfig):
    def f(epoch):
        warm = min(1.0, (epoch + 1) / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else 1.0
        return warm * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)

    return f


def _check_share(p: int, world: int):
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


def make_batches(train_items, cfg: "TrainConfig", rank: Optional[int] = None, world_size: Optional[int] = None,
                 parts=None):
    """``epoch -> iterator of (images, pids)``: P x K batches of the training items with the
    training transforms, a pure function of ``(cfg.seed, epoch)`` (sampler order and
    augmentations are both keyed on them), so a resumed run sees the same batches.

    ``parts`` (one row per training item: keypoints ``[M, 14, 3]``, boxes or masks, e.g. from
    :func:`partdist.data.part_annotations`) is required by the models that take parts
    (``needs`` in :data:`partdist.models.MODEL_SPECS`); the batches are then
    ``(images, pids, parts)`` and the training transforms keep the geometry (resize and random
    erasing only: no flip, no pad + crop, which the part locations would not follow).

    With ``world_size`` W > 1 (default: that of the initialized process group) it yields this
    ``rank``'s share of each global P x K batch: the P / W identities (K images each) at
    positions ``rank * P / W ...``; the W shares concatenated in rank order are the
    single-process batch (same images, same augmentations)."""
    from torch.utils.data import DataLoader

    from .data import ImageDataset, RandomIdentitySampler, build_transforms

    rank = pdist.rank() if rank is None else int(rank)
    world = pdist.world_size() if world_size is None else int(world_size)
    if not 0 <= rank < world:
        raise ValueError(f"rank: expected 0 <= rank < world_size ({world}), got {rank}")
    _check_share(cfg.p, world)
    items = list(train_items)
    needs = model_spec(cfg.model).needs
    if needs and parts is None:
        raise ValueError(f"parts: model {cfg.model!r} needs {needs} for every training image; pass "
                         "parts=partdist.data.part_annotations(root, train_items, ...)")
    if parts is not None:
        from .data import PartImageDataset

        tf = build_transforms(cfg.height, cfg.width, is_train=True, flip_p=0.0, pad=0)
        ds = PartImageDataset(items, parts, tf, seed=cfg.seed)
    else:
        ds = ImageDataset(items, build_transforms(cfg.height, cfg.width, is_train=True), seed=cfg.seed)
    sampler = RandomIdentitySampler(items, batch_size=cfg.p * cfg.k, num_instances=cfg.k, seed=cfg.seed)
    share = sampler if world == 1 else _RankShare(sampler, cfg.p * cfg.k, rank, world)

    def batches(epoch):
        ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=cfg.p * cfg.k // world, sampler=share, num_workers=cfg.num_workers,
                            drop_last=True)
        for k, batch in enumerate(loader):
            if cfg.iters_per_epoch is not None and k >= cfg.iters_per_epoch:
                break
            yield (batch[0], torch.as_tensor(batch[1])) + tuple(batch[3:4])

    return batches


def _atomic_save(obj, path):
    """Write to ``path.tmp``, flush it to disk, then rename over ``path``: a kill at any moment
    leaves either the previous complete file or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _test_stall(epoch: int, iteration: int):
    """Test hook: with ``PARTDIST_TEST_STALL_AT=E:I`` the run announces itself on stderr and
    sleeps (until killed) after iteration I (1-based) of epoch E (1-based): a deterministic
    "mid-epoch" for the interruption tests."""
    at = os.environ.get("PARTDIST_TEST_STALL_AT")
    if at and at == f"{epoch}:{iteration}":
        print(f"partdist test hook: stalled in epoch {epoch} after iteration {iteration}", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.05)


class Trainer:
    """One training run. ``batches(epoch)`` must yield ``(images, pids)`` for that epoch and be a
    pure function of ``(seed, epoch)`` (see :func:`partdist.data` loaders) for exact resume.

    If a ``torch.distributed`` process group is initialized, training is data parallel (DDP;
    see the module docstring): ``batches`` must then yield this rank's share of each global
    batch (:func:`make_batches` does). ``self.model`` is the bare model (what checkpoints hold);
    ``self.net`` is what the training step calls (the DDP wrapper, or the model)."""

    def __init__(self, cfg: TrainConfig, num_classes: int, batches: Callable[[int], object], log=print):
        self.cfg = cfg.validate()
        self.rank, self.world = pdist.rank(), pdist.world_size()
        self.ddp = pdist.is_distributed()
        self.is_main = self.rank == 0
        self.spec = model_spec(cfg.model)
        if self.ddp:
            _check_share(cfg.p, self.world)
            if not self.spec.distributed:
                ok = ", ".join(n for n, s in MODEL_SPECS.items() if s.distributed)
                raise ValueError(f"distributed: model {cfg.model!r} trains in a single process only "
                                 f"(distributed training: {ok})")
        self.device = torch.device(cfg.device)
        if self.ddp and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank % torch.cuda.device_count())))
        if cfg.sync_bn and self.ddp and self.device.type != "cuda":
            raise ValueError("sync_bn: SyncBatchNorm needs CUDA devices (use freeze_bn, or plain BN, on the CPU)")
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, num_classes)
        if cfg.sync_bn and self.ddp:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.net = self.model
        self.num_classes = num_classes
        self.batches = batches
        self.log = log if self.is_main else (lambda *a, **k: None)
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg))
        self.id_loss = CrossEntropyLabelSmooth(num_classes, cfg.label_smooth)
        # under DDP the triplet losses mine over the global batch of all ranks
        self.aligned_loss = AlignedTripletLoss(margin=cfg.margin, gamma=cfg.local_gamma, all_ranks=self.ddp)
        self.triplet = TripletLoss(margin=cfg.margin, all_ranks=self.ddp)
        self.epoch = 0
        self.history: List[dict] = []
        os.makedirs(cfg.out, exist_ok=True)
        self.ckpt_path = os.path.join(cfg.out, "checkpoint.pt")
        self.metrics_path = os.path.join(cfg.out, "metrics.jsonl")

    # ------------------------------------------------------------------ state
    def state_dict(self):
        return {
            "config": dataclasses.asdict(self.cfg),
            "num_classes": self.num_classes,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "world_size": self.world,
        }

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])

    def _barrier(self):
        if self.ddp:
            torch.distributed.barrier()

    def resume(self) -> bool:
        """Load ``<out>/checkpoint.pt`` if it exists; returns whether it did. Under DDP every rank
        loads the same file (the out folder must be shared by the ranks)."""
        found = os.path.exists(self.ckpt_path)
        if self.ddp:  # all ranks must agree, or they would train from different states
            flag = torch.tensor([int(found)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            if bool(flag.item()) != found:
                raise RuntimeError(f"resume: {self.ckpt_path} is not visible from every rank; use a shared --out")
        if not found:
            return False
        self.load_state_dict(torch.load(self.ckpt_path, map_location=self.device, weights_only=False))
        if self.is_main:
            # the metrics file may hold lines of an epoch that was interrupted after the checkpoint
            with open(self.metrics_path, "w") as f:
                for rec in self.history:
                    f.write(json.dumps(rec) + "\n")
        self.log(f"resumed from {self.ckpt_path} after epoch {self.epoch}")
        self._barrier()
        return True

    # ------------------------------------------------------------------- step
    def _loss_parts(self, images, pids, part_locs=None):
        if self.spec.pair:  # pairs formed within the P x K batch (partdist.models.pairs)
            return self.model.pair_loss_terms(images, pids)
        if self.spec.needs:
            if part_locs is None:
                raise ValueError(f"model {self.cfg.model!r} needs {self.spec.needs}: the batches must be "
                                 "(images, pids, parts) (make_batches(..., parts=...))")
            out = self.net(images, part_locs)
        else:
            out = self.net(images)
        parts = {}
        logits = out["logits"]
        if isinstance(logits, list):
            parts["id"] = sum(self.id_loss(lg, pids) for lg in logits) / len(logits)
        else:
            parts["id"] = self.id_loss(logits, pids)
        if "global_logits" in out:  # ICNN: the global branch's classifier
            parts["id_global"] = self.id_loss(out["global_logits"], pids)
        if self.cfg.model == "aligned":
            res = self.aligned_loss(out["global"], pids, out["local"])
            parts["global"] = res.global_loss * self.cfg.triplet_weight
            parts["local"] = res.local_loss * self.cfg.local_weight
        else:
            parts["global"] = self.triplet(out["global"], pids) * self.cfg.triplet_weight
        if hasattr(self.model, "extra_losses"):  # SCPNet's SCP loss, DSR's DSR triplet loss
            parts.update(self.model.extra_losses(out, pids))
        return parts

    def loss(self, images, pids, part_locs=None):
        """``(loss, parts)`` for a batch (this rank's share under DDP, where ``loss`` is the
        global-batch loss: the ID terms are this rank's mean, the triplet terms global)."""
        parts = self._loss_parts(images, pids, part_locs)
        return sum(parts.values()), parts

    def _objective(self, parts):
        """What is back-propagated: under DDP the triplet terms (already global losses, whose
        gradient here flows only into this rank's rows) are multiplied by W, so that DDP's
        averaging over ranks yields the single-process gradient of the global batch."""
        if not self.ddp:
            return sum(parts.values())
        return sum(v if k.startswith("id") else v * self.world for k, v in parts.items())

    def _set_train_mode(self):
        self.model.train()
        if self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def train_epoch(self):
        cfg = self.cfg
        epoch = self.epoch
        # dropout etc.: a function of (seed, epoch, rank)
        torch.manual_seed(cfg.seed * 100003 + epoch + 7919 * self.rank)
        self._set_train_mode()
        sums, n, t0 = {}, 0, time.time()
        it = self.batches(epoch)
        if cfg.progress and self.is_main:
            from tqdm import tqdm

            it = tqdm(it, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for batch in it:
            images, pids = batch[0].to(self.device), batch[1].to(self.device)
            part_locs = batch[2].to(self.device) if len(batch) > 2 else None
            parts = self._loss_parts(images, pids, part_locs)
            loss = sum(parts.values()).detach()
            self.opt.zero_grad(set_to_none=True)
            self._objective(parts).backward()
            self.opt.step()
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss)
            if cfg.progress and hasattr(it, "set_postfix"):
                it.set_postfix(loss=f"{float(loss):.3f}")
            _test_stall(epoch + 1, n)
        if self.ddp:  # report global-batch means: average the per-rank sums
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            sums = {k: v / self.world for k, v in zip(keys, t.tolist())}
        self.sched.step()
        self.epoch = epoch + 1
        rec = {"epoch": self.epoch, **{k: v / max(n, 1) for k, v in sums.items()},
               "lr": self.opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2), "iters": n}
        return rec

    def fit(self, evaluate: Optional[Callable[["Trainer"], dict]] = None, eval_every: int = 0):
        """Train until ``cfg.epochs``; checkpoint and log after every epoch (under DDP: rank 0
        evaluates, saves and logs while the other ranks wait at a barrier)."""
        while self.epoch < self.cfg.epochs:
            rec = self.train_epoch()
            if self.is_main and evaluate is not None and eval_every and (
                self.epoch % eval_every == 0 or self.epoch == self.cfg.epochs
            ):
                rec.update(evaluate(self))
            self.history.append(rec)
            if self.is_main:
                _atomic_save(self.state_dict(), self.ckpt_path)
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            self._barrier()
        return self.history


def train(cfg: TrainConfig, num_classes: int, batches, resume: bool = False, evaluate=None, eval_every=0, log=print):
    """Build a :class:`Trainer`, optionally resume it, and train; returns the trainer."""
    tr = Trainer(cfg, num_classes, batches, log=log)
    if resume:
        tr.resume()
    tr.fit(evaluate, eval_every)
    return tr
