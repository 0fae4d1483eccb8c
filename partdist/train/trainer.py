"""The trainer: one training run of a :class:`partdist.runs.TrainConfig` (see :mod:`partdist.train`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Callable, List, Optional

import torch
from torch import nn

from .. import distributed as pdist
from ..losses import AlignedTripletLoss, CrossEntropyLabelSmooth, TripletLoss
from ..models.zoo import MODEL_SPECS, model_spec
from ..runs import (
    BEST,
    CHECKPOINT,
    METRICS,
    TrainConfig,
    build_model,
    check_checkpoint_matches,
    load_checkpoint,
    save_checkpoint,
)
from .batches import check_share
from .progress import Progress

__all__ = ["Trainer", "train"]


def select_device(name: str, ddp: bool = False, rank: int = 0) -> torch.device:
    """The training device ``name`` (``cpu``, ``cuda``, ``cuda:N``), made the current CUDA device
    when it names one (``torch.cuda.set_device``), so that every kernel of the run, the
    partdist ops' included, launches on it. Under DDP a bare ``cuda`` is this process's GPU
    (``LOCAL_RANK``)."""
    dev = torch.device(name)
    if dev.type == "cuda":
        if ddp and dev.index is None:
            local = os.environ.get("LOCAL_RANK")
            dev = torch.device("cuda", int(local) if local is not None else rank % torch.cuda.device_count())
        if dev.index is not None:
            torch.cuda.set_device(dev)
    return dev


#: ``cfg.amp`` -> the autocast dtype
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _lr_lambda(cfg: TrainConfig):
    def f(epoch):
        warm = min(1.0, (epoch + 1) / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else 1.0
        return warm * cfg.lr_gamma ** sum(epoch >= m for m in cfg.milestones)

    return f


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
            check_share(cfg.p, self.world)
            if not self.spec.distributed:
                ok = ", ".join(n for n, s in MODEL_SPECS.items() if s.distributed)
                raise ValueError(f"distributed: model {cfg.model!r} trains in a single process only "
                                 f"(distributed training: {ok})")
        self.device = select_device(cfg.device, self.ddp, self.rank)
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
        # mixed precision (cfg.amp): autocast around the forward and the losses; float16 also
        # scales the loss (GradScaler) so that small gradients do not flush to zero
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        # cfg.compile: the forward and the losses through torch.compile (default backend);
        # the backward runs the compiled graph's backward
        self._step_loss = torch.compile(self._loss_parts) if cfg.compile else self._loss_parts
        self.epoch = 0
        self.history: List[dict] = []
        os.makedirs(cfg.out, exist_ok=True)
        self.ckpt_path = os.path.join(cfg.out, CHECKPOINT)
        self.metrics_path = os.path.join(cfg.out, METRICS)
        self.best_path = os.path.join(cfg.out, BEST)
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
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

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

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

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
        progress = Progress(cfg.progress if self.is_main else "off", f"epoch {epoch + 1}/{cfg.epochs}", total, self.log)
        lr = self.opt.param_groups[0]["lr"]  # this epoch's learning rate (the scheduler steps after it)
        try:
            for batch in self.batches(epoch):
                images, pids = batch[0].to(self.device), batch[1].to(self.device)
                part_locs = batch[2].to(self.device) if len(batch) > 2 else None
                with self._autocast():
                    parts = self._step_loss(images, pids, part_locs)
                loss = sum(parts.values()).detach()
                self.opt.zero_grad(set_to_none=True)
                if self.scaler is None:
                    self._objective(parts).backward()
                    self.opt.step()
                else:
                    self.scaler.scale(self._objective(parts)).backward()
                    self.scaler.step(self.opt)
                    self.scaler.update()
                n += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                sums["loss"] = sums.get("loss", 0.0) + float(loss)
                progress.update(float(loss))
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
                save_checkpoint(state, self.ckpt_path)
                if rec.get("best"):
                    save_checkpoint(state, self.best_path)
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
