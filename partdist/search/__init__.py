"""Searching large galleries: :class:`GalleryIndex` (exact or two-stage search by the fused
distance ``global + lam * local``, tuned on the gallery itself, sharded over
``torch.distributed``, saved in a versioned code-free file), its options
(:class:`SearchParams`), its tuning (:class:`Tuning`) and :func:`rank_metrics` (CMC / mAP of
search results). The user guide is docs/search.md.

The ``partdist index`` and ``partdist search`` commands are in :mod:`partdist.search.cli`.
"""

from .index import FORMAT, FORMAT_VERSION, GalleryIndex, SearchResult, Tuning, rank_metrics
from .params import SearchParams

__all__ = ["GalleryIndex", "SearchParams", "SearchResult", "Tuning", "rank_metrics", "FORMAT", "FORMAT_VERSION"]
