"""Backbones: ResNet-18/50 (torchvision's architecture, written out so that torchvision is not
needed) and a compact CNN for quick CPU runs.

ImageNet weights are never downloaded: pass ``weights="/path/to/resnet50.pth"`` (a torchvision
``state_dict``, e.g. ``resnet50-0676ba61.pth`` or ``resnet50-19c8e357.pth``) to load them from a
local file. The state_dict keys are torchvision's, so such files load as they are.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

__all__ = ["ResNet", "resnet18", "resnet50", "CompactCNN", "build_backbone"]


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # stride on the 3x3 (torchvision v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet(nn.Module):
    """ResNet trunk (no avgpool / fc): ``[N, 3, H, W] -> [N, out_channels, H/s, W/s]``.

    ``last_stride=1`` keeps layer4 at the resolution of layer3 (s = 16 instead of 32), the usual
    ReID trick (PCB, BoT) for finer stripes.
    """

    def __init__(self, block, layers, last_stride=2):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=last_stride)
        self.out_channels = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes, blocks, stride=1):
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_local_weights(model: nn.Module, weights: Optional[str]) -> nn.Module:
    """Load a torchvision-style state_dict from a local file (``fc.*`` keys are ignored)."""
    if weights is None:
        return model
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"weights: no such file {weights!r}; pretrained weights are only loaded from a local "
            "file (nothing is downloaded)"
        )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"weights: {weights!r} lacks {len(missing)} backbone keys, e.g. {missing[:3]}")
    return model


def resnet18(last_stride=2, weights=None):
    return load_local_weights(ResNet(BasicBlock, [2, 2, 2, 2], last_stride), weights)


def resnet50(last_stride=2, weights=None):
    return load_local_weights(ResNet(Bottleneck, [3, 4, 6, 3], last_stride), weights)


class CompactCNN(nn.Module):
    """A small 5-stage CNN (total stride 32, or 16 with ``last_stride=1``) for CPU demos and tests."""

    def __init__(self, width=32, last_stride=2, out_channels=256):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4, out_channels]
        strides = [2, 2, 2, 2, last_stride]
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


BACKBONES = {"resnet50": resnet50, "resnet18": resnet18, "compact": None}


def build_backbone(name="resnet50", last_stride=2, weights=None):
    """``name`` in ``resnet50``, ``resnet18``, ``compact``; ``weights`` a local file or None."""
    if name not in BACKBONES:
        raise ValueError(f"backbone: expected one of {sorted(BACKBONES)}, got {name!r}")
    if name == "compact":
        if weights is not None:
            raise ValueError("weights: the compact backbone has no pretrained weights")
        return CompactCNN(last_stride=last_stride)
    return BACKBONES[name](last_stride=last_stride, weights=weights)
