"""Searching large galleries: :class:`GalleryIndex` (exact or two-stage search by the fused
distance ``global + lam * local``, sharded over ``torch.distributed``, saved in a
versioned code-free file) and :func:`rank_metrics` (CMC / mAP of search results).

The ``partdist index`` and ``partdist search`` commands are in :mod:`partdist.search.cli`.
"""

from .index import FORMAT, FORMAT_VERSION, GalleryIndex, SearchResult, rank_metrics

__all__ = ["GalleryIndex", "SearchResult", "rank_metrics", "FORMAT", "FORMAT_VERSION"]
