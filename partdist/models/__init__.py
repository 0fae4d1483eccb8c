"""Reference ReID models built on the partdist kernels (:data:`MODEL_SPECS` lists them all)."""

from .backbones import CompactCNN, ResNet, build_backbone, resnet18, resnet50
from .dsr import DSRNet
from .gate_siamese import GateSiamese
from .idla import IDLA, evaluate_idla, idla_distance_matrix, verification_step
from .pabp import PABP
from .part_heads import GLAD, SpindleNet, SPReID
from .pdc import PDC
from .personnet import PersonNet
from .pie import PIE
from .reid import ICNN, PCB, AlignedReID
from .scpnet import SCPNet
from .zoo import MODEL_SPECS, ModelSpec, model_spec

__all__ = ["AlignedReID", "PCB", "ICNN", "ResNet", "CompactCNN", "build_backbone", "resnet18", "resnet50",
           "IDLA", "verification_step", "idla_distance_matrix", "evaluate_idla", "GLAD", "SpindleNet", "SPReID",
           "SCPNet", "GateSiamese", "PDC", "PIE", "PABP", "PersonNet", "DSRNet", "MODEL_SPECS", "ModelSpec",
           "model_spec"]


def __getattr__(name):  # the old partdist.models.parts (moved to part_heads), one release
    from .._moved import moved_attribute

    module = moved_attribute(__name__, name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return module
