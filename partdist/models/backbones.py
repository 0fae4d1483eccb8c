"""Backbones: torchvision's ResNet family, timm models (``timm:NAME``, when timm is installed)
and a compact CNN for quick CPU runs.

Every backbone maps ``[N, 3, H, W]`` to a feature map ``[N, out_channels, H/s, W/s]`` (no global
pooling, no classifier) and has an ``out_channels`` attribute.

* ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``, ``resnext50_32x4d``,
  ``resnext101_32x8d``, ``resnext101_64x4d``, ``wide_resnet50_2``, ``wide_resnet101_2``:
  ``torchvision.models`` trunks (stride s = 32, or 16 with ``last_stride=1``: the first block of
  ``layer4`` gets stride 1, as the ReID recipes PCB and BoT set it). IBN-Net variants
  (ResNet-50-IBN-a, used by fast-reid) are not in torchvision and are not offered.
* ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=0, global_pool="")``,
  its ``forward_features`` map; ``last_stride=1`` asks timm for ``output_stride=16`` (timm dilates
  the last stage; models without that option refuse it).
* ``compact``: a small 5-stage CNN (stride 32, or 16 with ``last_stride=1``), no pretrained weights.

Pretrained weights are never downloaded. ``weights`` is

* a local file: a ``state_dict`` (or ``{"state_dict": ...}``) read with
  ``torch.load(weights_only=True)``; torchvision's files (``resnet50-0676ba61.pth``,
  ``resnet50-11ad3fa6.pth``, ...) and timm's ``state_dict`` files load as they are (the classifier keys
  are ignored, every trunk key must be present);
* for torchvision backbones, the name of a member of the model's weights enum
  (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``, ``"DEFAULT"``) or the member itself: its file is read
  from torchvision's cache (``<torch.hub.get_dir()>/checkpoints/``) when it is there; otherwise
  the error names the file and the folder to put it in.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import nn

__all__ = [
    "ResNet",
    "TimmBackbone",
    "CompactCNN",
    "build_backbone",
    "check_backbone_name",
    "load_local_weights",
    "torchvision_cached_weights",
    "resnet18",
    "resnet50",
    "BACKBONES",
    "TORCHVISION_BACKBONES",
]

#: The torchvision trunks offered (all of torchvision's ResNet family).
TORCHVISION_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
#: Every backbone name (``timm:NAME`` is accepted besides these when timm is installed).
BACKBONES = TORCHVISION_BACKBONES + ("compact",)

_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _check_last_stride(last_stride):
    if isinstance(last_stride, bool) or last_stride not in (1, 2):
        raise ValueError(f"last_stride: expected 1 or 2, got {last_stride!r}")
    return int(last_stride)


def check_backbone_name(name) -> str:
    """``name`` if it names a backbone (one of :data:`BACKBONES` or ``timm:NAME``), else a
    ``ValueError`` that lists the names (or says to install timm)."""
    if isinstance(name, str) and name in BACKBONES:
        return name
    if isinstance(name, str) and name.startswith("timm:"):
        if not name[5:]:
            raise ValueError("backbone: 'timm:' needs a model name, e.g. 'timm:resnet50'")
        try:
            import timm
        except ImportError:
            raise ValueError(f"backbone: {name!r} needs timm (pip install timm)") from None
        if not timm.is_model(name[5:]):
            raise ValueError(f"backbone: timm has no model {name[5:]!r} (timm.list_models() lists them)")
        return name
    raise ValueError(f"backbone: expected one of {', '.join(BACKBONES)} or timm:NAME, got {name!r}")


# ------------------------------------------------------------------------------ weights
def _read_state_dict(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights: no such file {path!r}; pretrained weights are only loaded from a local "
            "file (nothing is downloaded)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights: {path!r} does not hold a state_dict (a dict of tensors)")
    return state


def load_local_weights(model: nn.Module, weights: Optional[str]) -> nn.Module:
    """Load a ``state_dict`` file into ``model`` (a backbone); keys ``model`` does not have (the
    classifier: ``fc.*``, ``head.*``, ...) are ignored, a missing trunk key is an error."""
    if weights is None:
        return model
    state = _read_state_dict(os.fspath(weights))
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f"weights: {weights!r} lacks {len(missing)} backbone keys, e.g. {missing[:3]}")
    model.load_state_dict(state)
    return model


def torchvision_cached_weights(arch: str, weights) -> str:
    """The path of torchvision's cached file for ``arch``'s weights ``weights`` (a member of the
    model's weights enum or its name, e.g. ``"IMAGENET1K_V2"`` or ``"DEFAULT"``). Nothing is
    downloaded: ``FileNotFoundError`` naming the file and the cache folder when it is absent."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    if isinstance(weights, str):
        try:
            member = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            names = ", ".join(["DEFAULT"] + [m.name for m in enum])
            raise ValueError(
                f"weights: {arch} has no weights {weights!r}; expected a local file or one of {names}"
            ) from None
    elif isinstance(weights, enum):
        member = weights
    else:
        raise TypeError(f"weights: expected a file path, a {enum.__name__} name or member, got {weights!r}")
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, os.path.basename(member.url))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights: {arch} {member.name} is not in torchvision's cache: put {os.path.basename(member.url)} "
            f"(from {member.url}) into {folder}, or pass the path of a local file (nothing is downloaded)"
        )
    return path


def _is_weights_file(weights) -> bool:
    return isinstance(weights, os.PathLike) or (isinstance(weights, str) and (os.sep in weights or os.path.isfile(weights)
                                                                              or weights.endswith((".pth", ".pt"))))


# ------------------------------------------------------------------------------ trunks
class ResNet(nn.Module):
    """A ``torchvision.models`` ResNet-family trunk (no avgpool / fc):
    ``[N, 3, H, W] -> [N, out_channels, H/s, W/s]``.

    The modules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so a
    torchvision ``state_dict`` loads as it is. ``last_stride=1`` gives the first block of
    ``layer4`` (its strided convolution and its downsample) stride 1: s = 16 instead of 32.
    """

    def __init__(self, arch: str = "resnet50", last_stride: int = 2):
        super().__init__()
        if arch not in TORCHVISION_BACKBONES:
            raise ValueError(f"backbone: expected one of {', '.join(TORCHVISION_BACKBONES)}, got {arch!r}")
        from torchvision.models import get_model

        net = get_model(arch, weights=None)
        for name in _TRUNK:
            setattr(self, name, getattr(net, name))
        if _check_last_stride(last_stride) == 1:
            first = self.layer4[0]
            for m in first.modules():
                if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                    m.stride = (1, 1)
            first.stride = 1
        self.arch = arch
        self.out_channels = net.fc.in_features

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TimmBackbone(nn.Module):
    """A timm model's feature map (``forward_features``); ``state_dict`` keys are timm's under
    ``model.``, and a timm ``state_dict`` file loads through :func:`build_backbone`."""

    def __init__(self, name: str, last_stride: int = 2):
        super().__init__()
        import timm

        kw = {"output_stride": 16} if _check_last_stride(last_stride) == 1 else {}
        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **kw)
        except TypeError as err:
            raise ValueError(f"last_stride: timm model {name!r} cannot run with last_stride=1 ({err})") from None
        self.out_channels = self.model.num_features

    def forward(self, x):
        return self.model.forward_features(x)


class CompactCNN(nn.Module):
    """A small 5-stage CNN (total stride 32, or 16 with ``last_stride=1``) for CPU demos and tests."""

    def __init__(self, width=32, last_stride=2, out_channels=256):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4, out_channels]
        strides = [2, 2, 2, 2, _check_last_stride(last_stride)]
        layers = []
        for cin, cout, s in zip(chans[:-1], chans[1:], strides):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x):
        return self.body(x)


def resnet18(last_stride=2, weights=None):
    """torchvision's ResNet-18 trunk; ``weights`` as in :func:`build_backbone`."""
    return build_backbone("resnet18", last_stride, weights)


def resnet50(last_stride=2, weights=None):
    """torchvision's ResNet-50 trunk; ``weights`` as in :func:`build_backbone`."""
    return build_backbone("resnet50", last_stride, weights)


def build_backbone(name: str = "resnet50", last_stride: int = 2, weights: Union[None, str, os.PathLike] = None):
    """A backbone by name (module docstring): one of :data:`BACKBONES` or ``timm:NAME``.

    ``weights``: ``None`` (random initial weights), a local ``state_dict`` file, or for the
    torchvision trunks a weights-enum name (``"IMAGENET1K_V1"``, ``"DEFAULT"``, ...) or member read
    from torchvision's cache. Nothing is downloaded.
    """
    check_backbone_name(name)
    if name == "compact":
        if weights is not None:
            raise ValueError("weights: the compact backbone has no pretrained weights")
        return CompactCNN(last_stride=last_stride)
    if name.startswith("timm:"):
        model = TimmBackbone(name[5:], last_stride)
        if weights is not None:
            if not _is_weights_file(weights):
                raise ValueError(f"weights: for a timm backbone, a local state_dict file, got {weights!r}")
            load_local_weights(model.model, weights)
        return model
    model = ResNet(name, last_stride)
    if weights is None:
        return model
    path = weights if _is_weights_file(weights) else torchvision_cached_weights(name, weights)
    return load_local_weights(model, path)
