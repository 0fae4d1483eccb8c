"""Training of the reference ReID models (:data:`partdist.models.MODEL_SPECS`) with the partdist losses.

Embedding models train with the ID loss (one per classifier, averaged) + the batch-hard triplet
loss on ``global`` (+ DMLI for AlignedReID, + the model's ``extra_losses``); pair models
(IDLA, PersonNet, Gate Siamese) with their pair losses on the pairs of each P x K batch
(:mod:`partdist.models.pairs`); part models get ``(images, pids, parts)`` batches.

Checkpoints are written atomically at the end of every epoch (model, optimizer, scheduler,
RNG states, epoch, metrics; plain data and tensors only, read back with
``torch.load(weights_only=True)`` by :func:`load_checkpoint`); ``resume=True`` continues from the last one exactly: every epoch
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
import itertools
import json
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import nn

from . import distributed as pdist
from .losses import AlignedTripletLoss, CrossEntropyLabelSmooth, TripletLoss
from .models.backbones import BACKBONES, check_backbone_name
from .models.zoo import MODEL_SPECS, model_spec

__all__ = ["TrainConfig", "build_model", "Trainer", "train", "make_batches", "load_checkpoint", "CheckpointError", "MODELS"]

#: every model of :data:`partdist.models.MODEL_SPECS` (the ``--model`` choices)
MODELS = tuple(MODEL_SPECS)
PROGRESS_MODES = ("auto", "bar", "lines", "off")

# One line of help per field: the CLI's flag help (``partdist train --help``).
HELP = {
    "model": "model to train",
    "backbone": "backbone network: " + ", ".join(BACKBONES) + " or timm:NAME (timm installed); resnet50 as in "
    "the published Market-1501 recipes; compact: a small CNN for smoke tests and the CPU demo",
    "weights": "local state_dict file (torchvision's or timm's) to start the backbone from (ImageNet weights are "
    "never downloaded) (default: none: the backbone starts from random weights)",
    "last_stride": "stride of the backbone's last stage (default: 2 for aligned, 1 for the part models)",
    "height": "input image height in pixels",
    "width": "input image width in pixels",
    "p": "identities per batch (P of the P x K batch)",
    "k": "images per identity in a batch (K of the P x K batch; at least 2)",
    "epochs": "epochs to train",
    "iters_per_epoch": "exactly this many iterations per epoch: fewer than one pass stops early, more cycle "
    "through the training set again with a fresh order (default: one pass over the training set)",
    "optimizer": "adam, or sgd (momentum 0.9, as in the PCB recipe)",
    "lr": "base learning rate",
    "weight_decay": "weight decay",
    "warmup_epochs": "linear learning-rate warm-up over this many epochs",
    "milestones": "epochs at which the learning rate is multiplied by --lr-gamma",
    "lr_gamma": "learning-rate decay factor at each milestone",
    "margin": "triplet loss margin",
    "label_smooth": "label smoothing of the ID loss",
    "local_weight": "weight of the DMLI local triplet loss (aligned)",
    "local_gamma": "soft-DMLI temperature in the local loss (0: the hard minimum of DMLI)",
    "triplet_weight": "weight of the global triplet loss",
    "num_workers": "DataLoader worker processes",
    "seed": "random seed (sampler order, augmentation, initialization)",
    "device": "cpu, cuda or cuda:N",
    "out": "run folder: checkpoint.pt, best.pt, metrics.jsonl, run.json",
    "progress": "auto: a progress bar on a terminal, plain periodic lines otherwise; bar; lines; off",
    "eval_every": "evaluate on query/gallery every N epochs and keep the best checkpoint as best.pt (0: never)",
    "distributed": "initialize torch.distributed from the torchrun environment (automatic under torchrun)",
    "sync_bn": "DDP: convert BatchNorm to SyncBatchNorm (CUDA only)",
    "freeze_bn": "BatchNorm layers use and keep their running statistics (affine parameters still train)",
}

# Keys of configurations written by older versions, and what they are now.
_RENAMED = {"gamma": "lr_gamma"}


def resolved_last_stride(cfg: "TrainConfig") -> int:
    return cfg.last_stride or model_spec(cfg.model).default_last_stride


@dataclass
class TrainConfig:
    model: str = "aligned"
    backbone: str = "resnet50"
    weights: Optional[str] = None
    last_stride: Optional[int] = None
    height: int = 256
    width: int = 128
    p: int = 8
    k: int = 4
    epochs: int = 10
    iters_per_epoch: Optional[int] = None
    optimizer: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 2
    milestones: List[int] = field(default_factory=lambda: [40, 70])
    lr_gamma: float = 0.1
    margin: float = 0.3
    label_smooth: float = 0.1
    local_weight: float = 1.0
    local_gamma: float = 0.0
    triplet_weight: float = 1.0
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/train"
    progress: str = "auto"
    eval_every: int = 0
    distributed: bool = False
    sync_bn: bool = False
    freeze_bn: bool = False

    def __post_init__(self):
        if self.progress is True:
            self.progress = "auto"
        elif self.progress is False or self.progress is None:
            self.progress = "off"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from a dict (a JSON ``--config`` file, or a checkpoint's ``config``): renamed
        keys of older versions are accepted, unknown keys are an error naming them."""
        d = {_RENAMED.get(k, k): v for k, v in d.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(names))}")
        return cls(**d)

    def validate(self):
        model_spec(self.model)  # a clear error for an unknown name
        check_backbone_name(self.backbone)
        for name in ("p", "k", "epochs", "height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.k < 2:
            raise ValueError(f"k: the triplet losses need at least 2 images per identity, got {self.k}")
        if self.iters_per_epoch is not None and (not isinstance(self.iters_per_epoch, int) or self.iters_per_epoch < 1):
            raise ValueError(f"iters_per_epoch: expected a positive int, got {self.iters_per_epoch!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ValueError(f"eval_every: expected an int >= 0, got {self.eval_every!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive finite number, got {self.lr!r}")
        if self.progress not in PROGRESS_MODES:
            raise ValueError(f"progress: expected one of {', '.join(PROGRESS_MODES)}, got {self.progress!r}")
        return self


def build_model(cfg: TrainConfig, num_classes: Optional[int]) -> nn.Module:
    """The model ``cfg.model`` (:data:`partdist.models.MODEL_SPECS`)."""
    return model_spec(cfg.model).build(cfg, num_classes)


def _lr_lambda(cfg: TrainConfig):
    def f(epoch):
        warm = min(1.0, (epoch + 1) / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else 1.0
        return warm * cfg.lr_gamma ** sum(epoch >= m for m in cfg.milestones)

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
    ``(images, pids, parts)``; the parts follow the image through the training transforms
    (flip, pad + crop, random erasing: :mod:`partdist.data.transforms`).

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


def _atomic_save(obj, path):
    """Write to ``path.tmp``, flush it to disk, then rename over ``path``: a kill at any moment
    leaves either the previous complete file or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, not a checkpoint, unsafe to load, or
    trained with another configuration than the one asked for. The message is one line."""


# What decides the shapes of a model's weights: a checkpoint is only loaded into a model
# built with the same values (before any weight is read).
ARCH_FIELDS = ("model", "backbone", "last_stride")


def _flags(cfg_dict: dict, keys=ARCH_FIELDS) -> str:
    out = []
    for k in keys:
        v = cfg_dict.get(k)
        if v is not None:
            out.append(f"--{k.replace('_', '-')} {v}")
    return " ".join(out)


def load_checkpoint(path: str, map_location="cpu"):
    """``(state, cfg)`` of a checkpoint written by :class:`Trainer`, read safely.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain data only, so a
    checkpoint whose pickle would run code when loaded is refused, never run. A missing file, a
    text file, a truncated or corrupt file, a bare ``state_dict`` (weights without the training
    configuration) or a pickle holding other objects raise :class:`CheckpointError`."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder; give the checkpoint file inside it (e.g. {os.path.join(path, 'checkpoint.pt')})")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        kind = "an empty file" if not head else f"a file starting with {head!r}"
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({kind}; a checkpoint is written by `partdist train`)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain data, and partdist never runs code "
            f"from a checkpoint (torch.load weights_only=True refused it: {first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint (truncated or corrupt? {first})") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(
                f"{path} is a bare state_dict (weights without the training configuration); partdist needs a "
                "checkpoint written by `partdist train` (in Python: build_model(cfg, num_classes).load_state_dict(...))"
            )
        raise CheckpointError(f"{path} is not a partdist checkpoint (it has no 'config' and 'model'; write one with `partdist train`)")
    try:
        cfg = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its configuration is not one this version reads ({err})") from None
    return state, cfg


def check_checkpoint_matches(path: str, state: dict, cfg: "TrainConfig", num_classes: Optional[int] = None):
    """Raise :class:`CheckpointError` if the checkpoint at ``path`` (its loaded ``state``) was
    trained with another architecture (``ARCH_FIELDS``) or number of identities than ``cfg`` /
    ``num_classes`` ask for: checked before any weight is loaded."""
    saved = state["config"]
    have = {k: saved.get(k) for k in ARCH_FIELDS}
    if have["model"] in MODEL_SPECS:
        have["last_stride"] = have["last_stride"] or MODEL_SPECS[have["model"]].default_last_stride
    want = {k: getattr(cfg, k) for k in ARCH_FIELDS}
    want["last_stride"] = resolved_last_stride(cfg)
    if have != want:
        diff = [k for k in ARCH_FIELDS if have[k] != want[k]]
        raise CheckpointError(
            f"{path} was trained with {_flags(have, diff)}; this run asks for {_flags(want, diff)}: pass the "
            "checkpoint's flags to resume it, or another --out for a new run"
        )
    if num_classes is not None and state.get("num_classes") not in (None, num_classes):
        raise CheckpointError(
            f"{path} was trained on {state['num_classes']} identities; this training set has {num_classes} "
            "(another --data?): resume with the same data, or use another --out for a new run"
        )


def _test_stall(epoch: int, iteration: int):
    """Test hook: with ``PARTDIST_TEST_STALL_AT=E:I`` the run announces itself on stderr and
    sleeps (until killed) after iteration I (1-based) of epoch E (1-based): a deterministic
    "mid-epoch" for the interruption tests."""
    at = os.environ.get("PARTDIST_TEST_STALL_AT")
    if at and at == f"{epoch}:{iteration}":
        print(f"partdist test hook: stalled in epoch {epoch} after iteration {iteration}", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.05)


def _fmt_seconds(t: float) -> str:
    t = int(round(t))
    return f"{t // 3600}:{t // 60 % 60:02d}:{t % 60:02d}" if t >= 3600 else f"{t // 60}:{t % 60:02d}"


class _Progress:
    """Progress of one epoch. ``bar``: a tqdm bar with the total and the ETA (for a terminal);
    ``lines``: a plain line about every ``every_s`` seconds with the iteration, the total, the
    loss, the elapsed time and the ETA (for log files: no ``\\r`` frames; the epoch's summary
    line follows at its end); ``off``."""

    def __init__(self, mode: str, desc: str, total: Optional[int], log=print, every_s: float = 30.0):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.desc, self.total, self.log, self.every_s = mode, desc, total, log, every_s
        self.t0 = self.last = time.time()
        self.n = 0
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, loss: float):
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        elif self.mode == "lines":
            now = time.time()
            if now - self.last >= self.every_s:
                self.last = now
                self.log(self._line(loss, now))

    def _line(self, loss, now):
        el = now - self.t0
        tot = f"/{self.total}" if self.total else ""
        eta = f" eta {_fmt_seconds(el / self.n * (self.total - self.n))}" if self.total and self.n else ""
        return f"{self.desc} iter {self.n}{tot} loss {loss:.4f} elapsed {_fmt_seconds(el)}{eta}"

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """One training run. ``batches(epoch)`` must yield ``(images, pids)`` for that epoch and be a
    pure function of ``(seed, epoch)`` (see :func:`partdist.data` loaders) for exact resume.

    If a ``torch.distributed`` process group is initialized, training is data parallel (DDP;
    see the module docstring): ``batches`` must then yield this rank's share of each global
    batch (:func:`make_batches` does). ``self.model`` is the bare model (what checkpoints hold);
    ``self.net`` is what the training step calls (the DDP wrapper, or the model)."""

    def __init__(self, cfg: TrainConfig, num_classes: int, batches: Callable[[int], object], log=print,
                 overwrite: bool = False):
        self.cfg = cfg.validate()
        self.overwrite = overwrite
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
        self.best_path = os.path.join(cfg.out, "best.pt")
        self.best_key = "mAP"  # of the evaluate callback's result: higher is better

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
        state, _ = load_checkpoint(self.ckpt_path, map_location=self.device)
        check_checkpoint_matches(self.ckpt_path, state, self.cfg, self.num_classes)
        self.load_state_dict(state)
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
        total = self.batches.num_batches(epoch) if hasattr(self.batches, "num_batches") else None
        progress = _Progress(cfg.progress if self.is_main else "off", f"epoch {epoch + 1}/{cfg.epochs}", total, self.log)
        lr = self.opt.param_groups[0]["lr"]  # this epoch's learning rate (the scheduler steps after it)
        try:
            for batch in self.batches(epoch):
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
                progress.update(float(loss))
                _test_stall(epoch + 1, n)
        finally:
            progress.close()
        if self.ddp:  # report global-batch means: average the per-rank sums
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            sums = {k: v / self.world for k, v in zip(keys, t.tolist(), strict=True)}
        self.sched.step()
        self.epoch = epoch + 1
        rec = {"epoch": self.epoch, **{k: v / max(n, 1) for k, v in sums.items()},
               "lr": lr, "seconds": round(time.time() - t0, 2), "iters": n}
        return rec

    def _best_so_far(self):
        vals = [r[self.best_key] for r in self.history if isinstance(r.get(self.best_key), (int, float))]
        return max(vals) if vals else None

    def fit(self, evaluate: Optional[Callable[["Trainer"], dict]] = None, eval_every: Optional[int] = None):
        """Train until ``cfg.epochs``; checkpoint and log after every epoch (under DDP: rank 0
        evaluates, saves and logs while the other ranks wait at a barrier).

        ``evaluate(trainer) -> dict`` runs every ``eval_every`` epochs (default
        ``cfg.eval_every``) and after the last; its values join the epoch's metrics, and when
        its ``mAP`` is the best so far the checkpoint is also written to ``best.pt``.

        A new run (epoch 0) refuses an ``out`` folder that already holds a checkpoint unless
        the trainer was made with ``overwrite=True`` (then its metrics and best checkpoint are
        replaced as well); continue a run with :meth:`resume`."""
        eval_every = self.cfg.eval_every if eval_every is None else eval_every
        if self.epoch == 0:  # every rank checks (the out folder is shared), so all stop alike
            if os.path.exists(self.ckpt_path) and not self.overwrite:
                raise FileExistsError(
                    f"out: {self.cfg.out} already holds a run ({self.ckpt_path}); resume it (--resume), "
                    "replace it (--overwrite) or choose another --out"
                )
            self._barrier()
            if self.is_main:
                for path in (self.metrics_path, self.best_path):
                    if os.path.exists(path):
                        os.remove(path)
        self._barrier()
        while self.epoch < self.cfg.epochs:
            rec = self.train_epoch()
            if self.is_main and evaluate is not None and eval_every and (
                self.epoch % eval_every == 0 or self.epoch == self.cfg.epochs
            ):
                best = self._best_so_far()
                rec.update(evaluate(self))
                score = rec.get(self.best_key)
                if isinstance(score, (int, float)) and (best is None or score > best):
                    rec["best"] = True
            self.history.append(rec)
            if self.is_main:
                state = self.state_dict()
                _atomic_save(state, self.ckpt_path)
                if rec.get("best"):
                    _atomic_save(state, self.best_path)
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            self._barrier()
        return self.history


def train(cfg: TrainConfig, num_classes: int, batches, resume: bool = False, evaluate=None, eval_every=None, log=print,
          overwrite: bool = False):
    """Build a :class:`Trainer`, optionally resume it, and train; returns the trainer."""
    tr = Trainer(cfg, num_classes, batches, log=log, overwrite=overwrite)
    if resume:
        tr.resume()
    tr.fit(evaluate, eval_every)
    return tr
