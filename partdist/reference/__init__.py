"""Pure-PyTorch reference implementations: what the kernels are tested and benchmarked against.

One module per family, as :mod:`partdist.ops`:

* :mod:`partdist.reference.dmli` - local distances and DMLI: the AlignedReID loop
  (:func:`dmli_loop`), the vectorized AlignedReID practice, exact-difference versions, the
  variants (soft minimum, band, unaligned);
* :mod:`partdist.reference.mining` - batch-hard mining and triplet losses;
* :mod:`partdist.reference.neighborhood` - IDLA neighborhood differences;
* :mod:`partdist.reference.parts` - part distances, DSR and Lasso solvers;
* :mod:`partdist.reference.pooling` - loop versions of the part pooling;
* :mod:`partdist.reference.reranking` - dense k-reciprocal re-ranking.

Every name is re-exported here (``partdist.reference.<name>``). Production code never
imports from here, and nothing here imports production code: a reference shares no solver
with what it checks.
"""

from . import dmli, mining, neighborhood, parts, pooling, reranking
from .dmli import (
    band_mask,
    batch_euclidean_dist,
    batch_local_dist,
    batch_local_dist_vectorized,
    dmli_loop,
    dmli_path,
    dmli_soft,
    dmli_vectorized,
    euclidean_dist,
    local_dist,
    local_dist_matrix,
    local_dist_vectorized,
    normalize_dist,
    shortest_dist,
    unaligned_dist,
)
from .mining import (
    aligned_triplet_loss_vectorized,
    hard_example_mining_loop,
    hard_example_mining_masked,
    hard_example_mining_view,
    triplet_from_dists,
    triplet_hard_loss_masked,
    triplet_loss_loop,
)
from .neighborhood import (
    cross_neighborhood_diff,
    neighborhood_diff_expand,
    neighborhood_diff_loop,
    neighborhood_diff_slice,
    neighborhood_diff_unfold,
)
from .parts import (
    dsr_dist_vectorized,
    lasso_cd,
    lasso_fista_reference,
    lasso_objective,
    part_dist_loop,
    part_dist_vectorized,
)
from .pooling import bilinear_pool_loop, part_pool_boxes_loop, part_pool_masks_loop, part_pool_stripes_loop
from .reranking import re_ranking_dense

__all__ = dmli.__all__ + mining.__all__ + neighborhood.__all__ + parts.__all__ + pooling.__all__ + reranking.__all__
