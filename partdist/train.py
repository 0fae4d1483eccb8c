"""Training of the reference ReID models (AlignedReID, PCB, PCB+RPP) with the partdist losses.

Checkpoints are written atomically at the end of every epoch (model, optimizer, scheduler,
RNG states, epoch, metrics); ``resume=True`` continues from the last one exactly: every epoch
re-seeds its sampler, augmentations and dropout from ``(seed, epoch)``, so training 2 epochs
equals training 1, stopping, resuming and training 1 more. A kill or Ctrl-C mid-epoch loses at
most the current epoch. Metrics go to ``<out>/metrics.jsonl``, one JSON object per epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import nn

from .losses import AlignedTripletLoss, CrossEntropyLabelSmooth, TripletLoss
from .models import PCB, AlignedReID

__all__ = ["TrainConfig", "build_model", "Trainer", "train", "make_batches"]

MODELS = ("aligned", "pcb", "pcb_rpp")


@dataclass
class TrainConfig:
    model: str = "aligned"  # aligned | pcb | pcb_rpp
    backbone: str = "compact"  # resnet50 | resnet18 | compact
    weights: Optional[str] = None  # local torchvision-style state_dict for the backbone
    last_stride: Optional[int] = None  # default: 2 for aligned, 1 for pcb
    height: int = 128
    width: int = 64
    p: int = 8  # identities per batch
    k: int = 4  # images per identity
    epochs: int = 10
    iters_per_epoch: Optional[int] = None  # default: len(train) // (p * k)
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

    def validate(self):
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {self.model!r}")
        for name in ("p", "k", "epochs", "height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.k < 2:
            raise ValueError(f"k: the triplet losses need at least 2 images per identity, got {self.k}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive finite number, got {self.lr!r}")
        return self


def build_model(cfg: TrainConfig, num_classes: Optional[int]) -> nn.Module:
    if cfg.model == "aligned":
        return AlignedReID(num_classes, cfg.backbone, cfg.last_stride or 2, cfg.weights)
    return PCB(num_classes, backbone=cfg.backbone, last_stride=cfg.last_stride or 1, weights=cfg.weights,
               rpp=cfg.model == "pcb_rpp")


def _lr_lambda(cfg: TrainConfig):
    def f(epoch):
        warm = min(1.0, (epoch + 1) / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else 1.0
        return warm * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)

    return f


def make_batches(train_items, cfg: "TrainConfig"):
    """``epoch -> iterator of (images, pids)``: P x K batches of the training items with the
    training transforms, a pure function of ``(cfg.seed, epoch)`` (sampler order and
    augmentations are both keyed on them), so a resumed run sees the same batches."""
    from torch.utils.data import DataLoader

    from .data import ImageDataset, RandomIdentitySampler, build_transforms

    items = list(train_items)
    ds = ImageDataset(items, build_transforms(cfg.height, cfg.width, is_train=True), seed=cfg.seed)
    sampler = RandomIdentitySampler(items, batch_size=cfg.p * cfg.k, num_instances=cfg.k, seed=cfg.seed)

    def batches(epoch):
        ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=cfg.p * cfg.k, sampler=sampler, num_workers=cfg.num_workers, drop_last=True)
        for k, (images, pids, _cams) in enumerate(loader):
            if cfg.iters_per_epoch is not None and k >= cfg.iters_per_epoch:
                break
            yield images, torch.as_tensor(pids)

    return batches


def _atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """One training run. ``batches(epoch)`` must yield ``(images, pids)`` for that epoch and be a
    pure function of ``(seed, epoch)`` (see :func:`partdist.data` loaders) for exact resume."""

    def __init__(self, cfg: TrainConfig, num_classes: int, batches: Callable[[int], object], log=print):
        self.cfg = cfg.validate()
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, num_classes).to(self.device)
        self.num_classes = num_classes
        self.batches = batches
        self.log = log
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg))
        self.id_loss = CrossEntropyLabelSmooth(num_classes, cfg.label_smooth)
        self.aligned_loss = AlignedTripletLoss(margin=cfg.margin, gamma=cfg.local_gamma)
        self.triplet = TripletLoss(margin=cfg.margin)
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
        }

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])

    def resume(self) -> bool:
        """Load ``<out>/checkpoint.pt`` if it exists; returns whether it did."""
        if not os.path.exists(self.ckpt_path):
            return False
        self.load_state_dict(torch.load(self.ckpt_path, map_location=self.device, weights_only=False))
        # the metrics file may hold lines of an epoch that was interrupted after the checkpoint
        with open(self.metrics_path, "w") as f:
            for rec in self.history:
                f.write(json.dumps(rec) + "\n")
        self.log(f"resumed from {self.ckpt_path} after epoch {self.epoch}")
        return True

    # ------------------------------------------------------------------- step
    def loss(self, images, pids):
        out = self.model(images)
        parts = {}
        logits = out["logits"]
        if isinstance(logits, list):
            parts["id"] = sum(self.id_loss(lg, pids) for lg in logits) / len(logits)
        else:
            parts["id"] = self.id_loss(logits, pids)
        if self.cfg.model == "aligned":
            res = self.aligned_loss(out["global"], pids, out["local"])
            parts["global"] = res.global_loss * self.cfg.triplet_weight
            parts["local"] = res.local_loss * self.cfg.local_weight
        else:
            parts["global"] = self.triplet(out["global"], pids) * self.cfg.triplet_weight
        return sum(parts.values()), parts

    def train_epoch(self):
        cfg = self.cfg
        epoch = self.epoch
        torch.manual_seed(cfg.seed * 100003 + epoch)  # dropout etc.: a function of (seed, epoch)
        self.model.train()
        sums, n, t0 = {}, 0, time.time()
        it = self.batches(epoch)
        if cfg.progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for images, pids in it:
            images, pids = images.to(self.device), pids.to(self.device)
            loss, parts = self.loss(images, pids)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            if cfg.progress and hasattr(it, "set_postfix"):
                it.set_postfix(loss=f"{float(loss):.3f}")
        self.sched.step()
        self.epoch = epoch + 1
        rec = {"epoch": self.epoch, **{k: v / max(n, 1) for k, v in sums.items()},
               "lr": self.opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2), "iters": n}
        return rec

    def fit(self, evaluate: Optional[Callable[["Trainer"], dict]] = None, eval_every: int = 0):
        """Train until ``cfg.epochs``; checkpoint and log after every epoch."""
        while self.epoch < self.cfg.epochs:
            rec = self.train_epoch()
            if evaluate is not None and eval_every and (self.epoch % eval_every == 0 or self.epoch == self.cfg.epochs):
                rec.update(evaluate(self))
            self.history.append(rec)
            _atomic_save(self.state_dict(), self.ckpt_path)
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        return self.history


def train(cfg: TrainConfig, num_classes: int, batches, resume: bool = False, evaluate=None, eval_every=0, log=print):
    """Build a :class:`Trainer`, optionally resume it, and train; returns the trainer."""
    tr = Trainer(cfg, num_classes, batches, log=log)
    if resume:
        tr.resume()
    tr.fit(evaluate, eval_every)
    return tr
