"""The options of :meth:`GalleryIndex.search <partdist.search.GalleryIndex.search>` in one
object, checked once when it is made (as FAISS's ``SearchParameters``)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional

from .._checks import check_pos_int

__all__ = ["SearchParams", "MODES", "BACKENDS", "POOLINGS", "METRICS"]

MODES = ("exact", "two-stage")
BACKENDS = ("torch", "faiss")
POOLINGS = ("mean", "halves")
METRICS = ("euclidean", "sqeuclidean", "cosine")


def check_lam_metric(op, lam, metric):
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"{op}: lam must be a finite number >= 0, got {lam!r}")
    if metric not in METRICS:
        raise ValueError(f"{op}: metric must be one of {METRICS}, got {metric!r}")


def _real(op, name, v, lo, hi=math.inf, lo_open=False):
    if (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < lo
            or (lo_open and v == lo) or v > hi):
        rng = f"> {lo:g}" if lo_open else f">= {lo:g}"
        rng += f" and <= {hi:g}" if hi != math.inf else ""
        raise ValueError(f"{op}: {name} must be a finite number {rng}, got {v!r}")
    return float(v)


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """How :meth:`GalleryIndex.search <partdist.search.GalleryIndex.search>` searches.

    Every field is checked when the object is made (a bad value raises ``ValueError`` /
    ``TypeError`` naming the field); ``dataclasses.replace(params, field=value)`` or
    ``search(..., params, field=value)`` give a checked variant.

    Search strategy:
        mode: ``"exact"`` (the fused distance ``global + lam * local`` to every gallery item) or
            ``"two-stage"`` (a shortlist of K' candidates per query by a cheap score, then the exact
            fused distance of those only).
        shortlist: K', the candidates per query of the two-stage mode (cut to the gallery size;
            with K' = gallery size the result equals the exact mode's). ``None``: chosen by the
            index's tuning (:meth:`GalleryIndex.tune <partdist.search.GalleryIndex.tune>`).
        pooled_weight: the shortlist score, ``w >= 0``: ``0`` the global distance alone; ``w > 0``
            ``|dg|^2 + w * |dp|^2`` (``dg`` the global difference, normalized features for
            ``cosine``; ``dp`` the difference of the L2-normalized pooled stripes of ``pooling``),
            a proxy of the fused distance computed by the same one GEMM (``D + P C`` columns);
            ``math.inf`` the pooled stripes alone, ``|dp|^2`` (``P C`` columns: the cheapest
            score). ``None``: chosen by the tuning.
        pooling: the stripes pooled for ``pooled_weight > 0``: ``"mean"`` (all stripes, ``C``
            columns) or ``"halves"`` (an upper and a lower window of 5/8 of the stripes each,
            overlapping, ``2 C`` columns; ``|dp|^2`` the mean of the two windows' squared
            distances). ``None``: chosen by the tuning.
        target_recall: the recall@k (of the two-stage search against the exact one) that the tuning's
            choice of the settings left ``None`` must reach, ``0 < target <= 1`` (default 0.99).
        rerank: two-stage only: k-reciprocal re-ranking (``k1``, ``k2``, ``lambda_value``) of each
            query against its shortlist; the returned distances are then the re-ranked ones.
        backend: the shortlist search, ``"torch"`` (exact GEMM top-K') or ``"faiss"`` (a FAISS index
            of the global features built from ``faiss_factory``, e.g. ``"Flat"``, ``"SQfp16"``,
            ``"HNSW32"``, ``"IVF4096,SQfp16"``; ``pip install partdist[faiss]``; the shortlist score is
            then the global distance). Built at the first FAISS search (IVF: trained on up to 2^18
            items) and kept until the index changes.
        faiss_params: FAISS search parameters, e.g. ``"nprobe=32"`` (IVF) or ``"efSearch=128"``
            (HNSW), set with ``faiss.ParameterSpace`` before each search.

    Distance (``None``: the index's default, saved with it):
        lam: weight of the local (DMLI) distance, ``>= 0`` (``0``: global distance only).
        metric: the global distance, ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.

    Execution:
        block_queries: queries per streamed block (default: sized by memory).
        chunk_rows: gallery rows per chunk (default: sized by memory).
        progress: progress bars (on rank 0).
    """

    mode: str = "exact"
    shortlist: Optional[int] = None
    pooled_weight: Optional[float] = None
    pooling: Optional[str] = None
    target_recall: float = 0.99
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    backend: str = "torch"
    faiss_factory: str = "Flat"
    faiss_params: str = ""
    lam: Optional[float] = None
    metric: Optional[str] = None
    block_queries: Optional[int] = None
    chunk_rows: Optional[int] = None
    progress: bool = False

    def __post_init__(self):
        op = "SearchParams"
        set_ = lambda name, v: object.__setattr__(self, name, v)  # noqa: E731 (frozen)
        if self.mode not in MODES:
            raise ValueError(f"{op}: mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.shortlist is not None:
            set_("shortlist", check_pos_int(op, "shortlist", self.shortlist, allow_none=True))
        if self.pooled_weight is not None:
            w = self.pooled_weight
            alone = isinstance(w, numbers.Real) and not isinstance(w, bool) and w == math.inf
            if not alone:
                try:
                    w = _real(op, "pooled_weight", w, 0.0)
                except ValueError as e:
                    raise ValueError(f"{e} (or math.inf: the pooled stripes alone)") from None
            set_("pooled_weight", math.inf if alone else w)
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"{op}: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        set_("target_recall", _real(op, "target_recall", self.target_recall, 0.0, 1.0, lo_open=True))
        for name in ("rerank", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{op}: {name} must be True or False, got {getattr(self, name)!r}")
        if self.rerank and self.mode != "two-stage":
            raise ValueError(f"{op}: rerank=True needs mode='two-stage' (re-ranking is restricted to the shortlist)")
        set_("k1", check_pos_int(op, "k1", self.k1))
        set_("k2", check_pos_int(op, "k2", self.k2))
        set_("lambda_value", _real(op, "lambda_value", self.lambda_value, 0.0, 1.0))
        for name in ("faiss_factory", "faiss_params"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{op}: {name} must be a string, got {type(getattr(self, name)).__name__}")
        if self.backend == "faiss" and self.pooled_weight:
            raise ValueError(f"{op}: pooled_weight > 0 needs backend='torch' (the FAISS shortlist is by the global "
                             "distance only)")
        if self.lam is not None or self.metric is not None:
            check_lam_metric(op, 1.0 if self.lam is None else self.lam,
                             METRICS[0] if self.metric is None else self.metric)
            if self.lam is not None:
                set_("lam", float(self.lam))
        set_("block_queries", check_pos_int(op, "block_queries", self.block_queries, allow_none=True))
        set_("chunk_rows", check_pos_int(op, "chunk_rows", self.chunk_rows, allow_none=True))

    def replace(self, **changes) -> "SearchParams":
        """A checked copy with ``changes`` (field names; anything else is a ``TypeError``)."""
        names = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(changes) - names)
        if bad:
            raise TypeError(f"GalleryIndex.search() got an unexpected keyword argument {bad[0]!r} (the options are "
                            f"the fields of SearchParams: {', '.join(sorted(names))})")
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def needs_tuning(self) -> bool:
        """Whether a two-stage search with these options leaves a shortlist setting to the tuning."""
        if self.mode != "two-stage":
            return False
        if self.backend == "faiss":
            return self.shortlist is None
        return self.shortlist is None or self.pooled_weight is None or (self.pooling is None and
                                                                          self.pooled_weight != 0)
