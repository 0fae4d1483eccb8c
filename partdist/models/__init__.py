"""Reference ReID models built on the partdist kernels (:data:`MODEL_SPECS` lists them all).

The models import the ops, the pooling and each other only: their training lives in
:mod:`partdist.train`, their evaluation in :mod:`partdist.eval`."""

from .backbones import CompactCNN, ResNet, build_backbone, resnet18, resnet50
from .dsr import DSRNet
from .gate_siamese import GateSiamese
from .idla import IDLA, idla_distance_matrix
from .pabp import PABP
from .part_heads import GLAD, SpindleNet, SPReID
from .pdc import PDC
from .personnet import PersonNet
from .pie import PIE
from .reid import ICNN, PCB, AlignedReID
from .scpnet import SCPNet
from .zoo import MODEL_SPECS, ModelSpec, model_spec

__all__ = ["AlignedReID", "PCB", "ICNN", "ResNet", "CompactCNN", "build_backbone", "resnet18", "resnet50",
           "IDLA", "idla_distance_matrix", "GLAD", "SpindleNet", "SPReID",
           "SCPNet", "GateSiamese", "PDC", "PIE", "PABP", "PersonNet", "DSRNet", "MODEL_SPECS", "ModelSpec",
           "model_spec"]

