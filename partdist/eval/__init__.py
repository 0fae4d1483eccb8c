"""Evaluation: ranking metrics (:mod:`partdist.eval.rank`) and feature extraction /
query x gallery distances (:mod:`partdist.eval.features`)."""

from .rank import evaluate_rank

__all__ = ["evaluate_rank"]
