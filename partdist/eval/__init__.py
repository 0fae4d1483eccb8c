"""Evaluation: ranking metrics (:mod:`partdist.eval.rank`), k-reciprocal re-ranking
(:mod:`partdist.eval.reranking`), feature extraction and query x gallery distances
(:mod:`partdist.eval.features`), and their streaming forms for benchmark-size sets
(:mod:`partdist.eval.streaming`: row blocks, top-k, re-ranking from features), all of
them computing the distance a :class:`Distance` describes (:mod:`partdist.eval.distance`), and a
model's evaluation (:func:`evaluate_model`) and features of image files (:class:`FeatureExtractor`)."""

from .distance import Distance
from .evaluate import FeatureExtractor, evaluate_model, features_for, format_table
from .features import extract_features, fused_distance, global_distance, local_distance
from .rank import evaluate_rank
from .reranking import DistanceSource, re_ranking
from .streaming import distance_blocks, query_gallery_distance, re_ranking_features, topk_distance

__all__ = [
    "Distance",
    "DistanceSource",
    "evaluate_rank",
    "re_ranking",
    "extract_features",
    "global_distance",
    "local_distance",
    "fused_distance",
    "distance_blocks",
    "query_gallery_distance",
    "topk_distance",
    "re_ranking_features",
    "evaluate_model",
    "features_for",
    "format_table",
    "FeatureExtractor",
]
