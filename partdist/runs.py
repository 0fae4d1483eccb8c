"""A training run on disk: its configuration and its checkpoints, for every command.

* :class:`TrainConfig`: the run's settings (``partdist train``'s flags, ``run.json``'s
  ``config``, a checkpoint's ``config``): read from a dict with :meth:`TrainConfig.from_dict`
  (keys renamed since a configuration was written are migrated, unknown keys are an error),
  checked with :meth:`TrainConfig.validate`;
* :func:`build_model`: the model a configuration names (:data:`partdist.models.MODEL_SPECS`);
* :func:`save_checkpoint` / :func:`load_checkpoint`: a checkpoint written atomically and read
  with ``torch.load(weights_only=True)`` (tensors and plain data only: nothing in the file runs);
  :func:`load_model`: the evaluation-ready model of a checkpoint;
  :func:`check_checkpoint_matches`: a checkpoint is only resumed by a run of the same
  architecture and number of identities;
* :func:`write_json`: ``run.json`` and results files, written atomically.

A run folder holds ``checkpoint.pt`` (every epoch), ``best.pt`` (the best evaluated epoch),
``metrics.jsonl`` (one JSON object per epoch) and ``run.json`` (the configuration and the data
set's statistics).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from .models.backbones import BACKBONES, check_backbone_name
from .models.zoo import MODEL_SPECS, model_spec

__all__ = ["TrainConfig", "build_model", "resolved_last_stride", "CheckpointError", "load_checkpoint",
           "save_checkpoint", "load_model", "check_checkpoint_matches", "write_json", "MODELS", "BACKBONES",
           "PROGRESS_MODES", "AMP_MODES", "HELP", "ARCH_FIELDS", "CHECKPOINT", "BEST", "METRICS", "RUN_JSON"]

#: the files of a run folder
CHECKPOINT, BEST, METRICS, RUN_JSON = "checkpoint.pt", "best.pt", "metrics.jsonl", "run.json"

#: every model of :data:`partdist.models.MODEL_SPECS` (the ``--model`` choices)
MODELS = tuple(MODEL_SPECS)
PROGRESS_MODES = ("auto", "bar", "lines", "off")
#: ``--amp``: no autocast, bfloat16 autocast, float16 autocast with a gradient scaler
AMP_MODES = ("off", "bf16", "fp16")

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
    "amp": "mixed precision: off; bf16 (bfloat16 autocast); fp16 (float16 autocast and a gradient scaler). "
    "The partdist distances compute in float32 under autocast",
    "compile": "run the model and loss step through torch.compile (the default inductor backend)",
}

# Migration of configurations: keys that were renamed, and their names in TrainConfig.
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
    amp: str = "off"
    compile: bool = False

    def __post_init__(self):
        if self.progress is True:
            self.progress = "auto"
        elif self.progress is False or self.progress is None:
            self.progress = "off"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from a dict (a JSON ``--config`` file, or a checkpoint's ``config``): renamed
        keys are migrated to their names, missing keys take their defaults, unknown keys are an
        error naming them."""
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
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: expected one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile: expected true or false, got {self.compile!r}")
        if self.progress not in PROGRESS_MODES:
            raise ValueError(f"progress: expected one of {', '.join(PROGRESS_MODES)}, got {self.progress!r}")
        return self


def build_model(cfg: TrainConfig, num_classes: Optional[int]) -> nn.Module:
    """The model ``cfg.model`` (:data:`partdist.models.MODEL_SPECS`)."""
    return model_spec(cfg.model).build(cfg, num_classes)


def save_checkpoint(obj, path):
    """Write ``obj`` (tensors and plain data: what :func:`load_checkpoint` reads back) to
    ``path.tmp``, flush it to disk, then rename it over ``path``: a kill at any moment leaves
    either the previous complete file or the new one."""
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
    """``(state, cfg)`` of a checkpoint written by :class:`partdist.train.Trainer`, read safely.

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


def load_model(path: str, device="cpu"):
    """``(model, cfg, state)`` of a checkpoint written by ``partdist train``: the model of its
    configuration with its weights, on ``device``, in eval mode. Raises :class:`CheckpointError`
    for a file that is not such a checkpoint (:func:`load_checkpoint`) or whose weights do not fit
    its configuration."""
    state, cfg = load_checkpoint(path, map_location=device)
    try:
        model = build_model(cfg, state["num_classes"]).to(device)
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: its weights do not fit its configuration ({first})") from None
    return model.eval(), cfg, state


def write_json(path: str, obj):
    """``obj`` as indented JSON at ``path``, written to ``path.tmp`` and renamed over ``path``."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
