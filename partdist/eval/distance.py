"""The one description of a query x gallery distance used by evaluation.

:class:`Distance` names the distance (global, local DMLI, or their fusion
``global + lam * local``) and its options; the dense, streaming, top-k and re-ranking
code all compute it through :meth:`Distance.all_pairs` (every query x gallery pair) and
:meth:`Distance.pairs` (row ``k`` of one side with row ``k`` of the other). The global
part of both comes from the one formula in :func:`global_distance`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .._checks import GEMM_DTYPES, check_gemm_dtype
from ..ops.dmli import batch_local_dist, local_dist

__all__ = ["Distance", "KINDS", "METRICS", "global_distance"]

KINDS = ("global", "local", "fused")
METRICS = ("euclidean", "sqeuclidean", "cosine")


def global_distance(
    qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean", *, paired: bool = False
) -> torch.Tensor:
    """``[Q, D] x [G, D] -> [Q, G]``; metric ``euclidean``, ``sqeuclidean`` or ``cosine`` (1 - cos).

    With ``paired=True``: ``[N, D] x [N, D] -> [N]``, the distance of ``qf[k]`` to ``gf[k]``
    (the same formula, per pair)."""
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1] or (paired and qf.shape[0] != gf.shape[0]):
        want = "qf [N, D] and gf [N, D]" if paired else "qf [Q, D] and gf [G, D]"
        raise ValueError(f"global_distance: expected {want}, got {list(qf.shape)} and {list(gf.shape)}")
    if metric not in METRICS:
        raise ValueError(f"global_distance: metric must be 'euclidean', 'sqeuclidean' or 'cosine', got {metric!r}")
    if metric == "cosine":
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    dot = (qf * gf).sum(1) if paired else qf @ gf.t()
    if metric == "cosine":
        return 1 - dot
    qn, gn = qf.pow(2).sum(1), gf.pow(2).sum(1)
    sq = (qn + gn - 2 * dot) if paired else (qn[:, None] + gn[None] - 2 * dot)
    sq = sq.clamp_min(0)
    return sq if metric == "sqeuclidean" else sq.sqrt()


def _check_fields(op, kind, metric, lam, gemm_dtype=None):
    if gemm_dtype is not None and (not isinstance(gemm_dtype, torch.dtype) or gemm_dtype not in GEMM_DTYPES):
        raise TypeError(f"{op}: gemm_dtype must be torch.float16, torch.bfloat16 or None, got {gemm_dtype!r}")
    if kind not in KINDS:
        raise ValueError(f"{op}: kind must be one of {KINDS}, got {kind!r}")
    if metric not in METRICS:
        raise ValueError(f"{op}: metric must be one of {METRICS}, got {metric!r}")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam):
        raise TypeError(f"{op}: lam must be a finite real number, got {lam!r}")


@dataclass(frozen=True)
class Distance:
    """A query x gallery distance: what to compute from local ``[N, H, C]`` and global
    ``[N, D]`` features.

    Args:
        kind: ``"global"`` (``metric`` on the global features), ``"local"`` (the DMLI
            distance of :func:`partdist.local_dist` on the local features) or ``"fused"``
            (``global + lam * local``, AlignedReID's test-time fusion).
        metric: global metric, ``euclidean``, ``sqeuclidean`` or ``cosine``.
        lam: weight of the local distance in the fusion.
        normalize, gamma, band: of the local distance, as in :func:`partdist.local_dist`.
        gemm_dtype: the reduced-precision mode of :func:`partdist.local_dist` for float32
            local features (``torch.float16`` / ``torch.bfloat16``; ``None``: off). The paired
            distance (:meth:`pairs`) takes the same rounded features, so both agree.

    The features a kind does not use are ignored, so one set of features serves every kind.
    """

    kind: str = "fused"
    metric: str = "euclidean"
    lam: float = 1.0
    normalize: bool = True
    gamma: float = 0.0
    band: Optional[float] = None
    gemm_dtype: Optional[torch.dtype] = None

    def __post_init__(self):
        self.check("partdist.eval.Distance")

    def check(self, op: str) -> None:
        """Raise ``ValueError`` / ``TypeError`` (message prefixed with ``op``) for a bad field."""
        _check_fields(op, self.kind, self.metric, self.lam, self.gemm_dtype)

    @classmethod
    def for_features(cls, has_local: bool, has_global: bool, op: str = "partdist.eval.Distance", **options):
        """The distance the given features describe: fused with both, else the one given
        (``options``: the other fields; errors prefixed with ``op``)."""
        kind = "fused" if has_local and has_global else ("local" if has_local else "global")
        _check_fields(op, kind, options.get("metric", "euclidean"), options.get("lam", 1.0),
                      options.get("gemm_dtype"))
        return cls(kind=kind, **options)

    @property
    def uses_local(self) -> bool:
        return self.kind in ("local", "fused")

    @property
    def uses_global(self) -> bool:
        return self.kind in ("global", "fused")

    def _fuse(self, glob, loc):
        if glob is None:
            return loc
        if loc is None:
            return glob
        return glob.to(torch.promote_types(glob.dtype, loc.dtype)) + self.lam * loc

    def all_pairs(
        self, q_local=None, g_local=None, q_global=None, g_global=None, *, chunk_size=None, local_fn=None
    ) -> torch.Tensor:
        """``[Q, G]``: the distance of every query to every gallery item (``chunk_size``:
        pairs per tile inside :func:`partdist.local_dist`; ``local_fn``: the function called
        in its place, with its arguments, e.g. a wrapper)."""
        glob = global_distance(q_global, g_global, self.metric) if self.uses_global else None
        loc = None
        if self.uses_local:
            fn = local_dist if local_fn is None else local_fn
            extra = {} if self.gemm_dtype is None else {"gemm_dtype": self.gemm_dtype}
            loc = fn(q_local, g_local, self.normalize, chunk_size, gamma=self.gamma, band=self.band, **extra)
        return self._fuse(glob, loc)

    def pairs(self, a_local=None, b_local=None, a_global=None, b_global=None) -> torch.Tensor:
        """``[N]``: the distance of row ``k`` of ``a`` to row ``k`` of ``b``."""
        glob = global_distance(a_global, b_global, self.metric, paired=True) if self.uses_global else None
        loc = None
        if self.uses_local:
            if self.gemm_dtype is not None:  # the features all_pairs' local_dist rounds
                check_gemm_dtype("partdist.eval.Distance.pairs", self.gemm_dtype, a_local)
                a_local, b_local = (t.to(self.gemm_dtype).to(t.dtype) for t in (a_local, b_local))
            loc = batch_local_dist(a_local, b_local, self.normalize, gamma=self.gamma, band=self.band)
        return self._fuse(glob, loc)
