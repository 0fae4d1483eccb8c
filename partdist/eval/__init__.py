"""Evaluation: ranking metrics (:mod:`partdist.eval.rank`), k-reciprocal re-ranking
(:mod:`partdist.eval.reranking`), feature extraction and query x gallery distances
(:mod:`partdist.eval.features`)."""

from .features import extract_features, fused_distance, global_distance, local_distance
from .rank import evaluate_rank
from .reranking import re_ranking

__all__ = ["evaluate_rank", "re_ranking", "extract_features", "global_distance", "local_distance", "fused_distance"]
