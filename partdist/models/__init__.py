"""Reference ReID models built on the partdist kernels."""

from .backbones import CompactCNN, ResNet, build_backbone, resnet18, resnet50
from .reid import ICNN, PCB, AlignedReID
from .idla import IDLA, evaluate_idla, idla_distance_matrix, verification_step
from .part_heads import GLAD, SPReID, SpindleNet

__all__ = ["AlignedReID", "PCB", "ICNN", "ResNet", "CompactCNN", "build_backbone", "resnet18", "resnet50",
           "IDLA", "verification_step", "idla_distance_matrix", "evaluate_idla", "GLAD", "SpindleNet", "SPReID"]
