"""Reference ReID models built on the partdist kernels."""

from .backbones import CompactCNN, ResNet, build_backbone, resnet18, resnet50
from .reid import PCB, AlignedReID

__all__ = ["AlignedReID", "PCB", "ResNet", "CompactCNN", "build_backbone", "resnet18", "resnet50"]
