"""Data utilities: pair sampling for verification models."""

from .pairs import BalancedPairSampler

__all__ = ["BalancedPairSampler"]
