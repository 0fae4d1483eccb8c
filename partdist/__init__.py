"""partdist: fast part-based person re-identification distances for PyTorch.

Ops (CPU and CUDA, differentiable, registered as ``torch.ops.partdist.*``):

* :func:`local_dist_matrix` - normalized stripe-to-stripe distance matrices
* :func:`dmli` - shortest monotone path (DMLI) through distance matrices
* :func:`dmli_path` - the cells of that path
* :func:`batch_local_dist` - fused local distance + DMLI for aligned pairs
* :func:`local_dist` - the same for all query x gallery pairs, tile by tile
* :func:`local_dist_topk` - the k nearest per query without the dense result
* :func:`part_dist` - visibility-aware mean part distance of all pairs
* :func:`dsr_dist` - DSR (deep spatial reconstruction) distance of all pairs
* :func:`neighborhood_diff`, :func:`cross_neighborhood_diff` - IDLA's cross-input
  neighborhood differences (``partdist.models.IDLA`` uses them)

Part features (plain PyTorch, :mod:`partdist.pooling`):

* :func:`part_pool` - pool a feature map over stripes, a grid, boxes (RoIAlign-style) or soft masks
* :func:`keypoints_to_parts` - 14-keypoint skeletons -> part boxes + visibility
* :func:`bilinear_pool` - part-aligned bilinear pooling (PABP)

``partdist.reference`` holds the pure-PyTorch implementations they are tested against.
"""

from . import losses
from ._version import __version__ as __version__
from .eval.evaluate import FeatureExtractor
from .eval.streaming import local_dist_topk
from .ops.dmli import MAX_STRIPES, batch_local_dist, dmli, dmli_path, local_dist, local_dist_matrix, unaligned_dist
from .ops.mining import hard_example_mining, triplet_hard_loss
from .ops.neighborhood import cross_neighborhood_diff, neighborhood_diff
from .ops.parts import MAX_DSR_CELLS, dsr_dist, part_dist
from .pooling import bilinear_pool, keypoints_to_parts, part_pool

__all__ = [
    "MAX_DSR_CELLS",
    "MAX_STRIPES",
    "batch_local_dist",
    "bilinear_pool",
    "cross_neighborhood_diff",
    "dmli",
    "dmli_path",
    "dsr_dist",
    "hard_example_mining",
    "keypoints_to_parts",
    "local_dist",
    "local_dist_matrix",
    "local_dist_topk",
    "neighborhood_diff",
    "part_pool",
    "part_dist",
    "triplet_hard_loss",
    "unaligned_dist",
    "FeatureExtractor",
    "losses",
]

