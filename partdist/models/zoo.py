"""The registry of reference models: every system of the seed lecture on local features for
person ReID, by the name ``partdist train --model NAME`` takes.

Each :class:`ModelSpec` says how to build the model from a :class:`partdist.runs.TrainConfig`,
which part annotations it needs from the data set (``None``, ``"keypoints"`` or ``"masks"``),
whether it is a pair model (:mod:`partdist.models.pairs`), which distance the evaluation
(:func:`partdist.eval.evaluate_model`) uses by default (``"global"``, ``"global + DMLI"``,
``"dsr"`` or ``"pair"``) or whether it reports the whole table of stripe distances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from torch import nn

__all__ = ["ModelSpec", "MODEL_SPECS", "model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    system: str  # the paper's name
    family: str  # stripes | pose | segmentation | grid
    build: Callable[..., nn.Module]  # (cfg, num_classes) -> model
    needs: Optional[str] = None  # None | "keypoints" | "masks"
    pair: bool = False
    distance: str = "global"
    default_last_stride: int = 1
    distributed: bool = False  # trains under DDP (see partdist.train)
    distance_table: bool = False  # evaluated with every stripe distance (global, DMLI, fused, re-ranked, ...)


def _bb(cfg, default):
    return dict(backbone=cfg.backbone, last_stride=cfg.last_stride or default, weights=cfg.weights)


def _no_weights(cfg, name):
    if cfg.weights is not None:
        raise ValueError(f"weights: model {name!r} has its own small trunk, not a backbone; it takes no --weights")


def _aligned(cfg, n):
    from .reid import AlignedReID

    return AlignedReID(n, cfg.backbone, cfg.last_stride or 2, cfg.weights)


def _pcb(rpp):
    def build(cfg, n):
        from .reid import PCB

        return PCB(n, rpp=rpp, **_bb(cfg, 1))

    return build


def _simple(cls_path, **kw):
    def build(cfg, n):
        import importlib

        mod, cls = cls_path.rsplit(".", 1)
        return getattr(importlib.import_module(mod, __package__), cls)(n, **_bb(cfg, 1), **kw)

    return build


def _idla(cfg, n):
    from .idla import IDLA

    _no_weights(cfg, "idla")
    return IDLA(input_size=(cfg.height, cfg.width))


def _personnet(cfg, n):
    from .personnet import PersonNet

    _no_weights(cfg, "personnet")
    return PersonNet(n, input_size=(cfg.height, cfg.width))


_SPECS = [
    ModelSpec("aligned", "AlignedReID", "stripes", _aligned, distance="global + DMLI", default_last_stride=2,
              distributed=True, distance_table=True),
    ModelSpec("pcb", "PCB", "stripes", _pcb(False), distributed=True, distance_table=True),
    ModelSpec("pcb_rpp", "PCB+RPP", "stripes", _pcb(True), distributed=True, distance_table=True),
    ModelSpec("icnn", "ICNN", "stripes", _simple(".reid.ICNN"), distributed=True, distance_table=True),
    ModelSpec("scpnet", "SCPNet", "stripes", _simple(".scpnet.SCPNet")),
    ModelSpec("gate_siamese", "Gate Siamese (siamese LSTM + matching gate)", "stripes",
              _simple(".gate_siamese.GateSiamese"), pair=True, distance="pair"),
    ModelSpec("glad", "GLAD", "pose", _simple(".part_heads.GLAD"), needs="keypoints"),
    ModelSpec("spindle", "Spindle Net", "pose", _simple(".part_heads.SpindleNet"), needs="keypoints"),
    ModelSpec("pdc", "PDC", "pose", _simple(".pdc.PDC"), needs="keypoints"),
    ModelSpec("pie", "PIE", "pose", _simple(".pie.PIE"), needs="keypoints"),
    ModelSpec("pabp", "PABP", "pose", _simple(".pabp.PABP"), needs="keypoints"),
    ModelSpec("spreid", "SPReID", "segmentation", _simple(".part_heads.SPReID"), needs="masks"),
    ModelSpec("idla", "IDLA", "grid", _idla, pair=True, distance="pair"),
    ModelSpec("personnet", "PersonNet", "grid", _personnet, pair=True, distance="pair"),
    ModelSpec("dsr", "DSR", "grid", _simple(".dsr.DSRNet"), distance="dsr"),
]

#: name -> :class:`ModelSpec`, in the lecture's order (stripes, pose, segmentation, grid).
MODEL_SPECS: Dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def model_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise ValueError(f"model: expected one of {', '.join(MODEL_SPECS)}, got {name!r}")
    return MODEL_SPECS[name]
