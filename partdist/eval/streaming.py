"""Query x gallery distances at benchmark scale: row blocks, top-k, re-ranking from features.

Everything here streams over blocks of query rows: a block of ``block_rows`` queries is
compared with the whole gallery by :func:`partdist.local_dist` (which itself works tile
by tile: one GEMM of the stripes of a tile of pairs, then the fused normalize + DP
kernel), optionally fused with a global distance, and then either written into the
dense ``[Q, G]`` result, or reduced to each query's ``k`` nearest gallery items, or fed
to the k-reciprocal re-ranking. Memory is one block (``block_rows x G`` values, about
64 MiB by default) plus what is kept (``Q x k`` for top-k), never ``Q x G x H x H'``.

Distances (``d`` below) are, with local features ``[.., H, C]`` and global features
``[.., D]``, those a :class:`partdist.eval.Distance` describes:

* local only: the DMLI distance of :func:`partdist.local_dist`;
* global only: ``metric`` (``euclidean``, ``sqeuclidean`` or ``cosine``) as in
  :func:`partdist.eval.global_distance`;
* both: ``global + lam * local`` (AlignedReID's test-time fusion).

Every function takes either ``distance=Distance(...)`` or the separate keyword options
(``lam``, ``metric``, ``normalize``, ``gamma``, ``band``; the kind then follows from the
features given), not both.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from .._checks import check_feature_tensor as _check_feat
from .._checks import check_pos_int
from .._memory import check_dense_fits, progress_bar
from ..ops.dmli import local_dist
from .distance import Distance
from .reranking import rerank_source, topk_rows

__all__ = [
    "distance_blocks",
    "query_gallery_distance",
    "topk_distance",
    "local_dist_topk",
    "re_ranking_features",
]

_BLOCK_BYTES = 64 << 20


# --------------------------------------------------------------------------------------
# Features of one side (queries, gallery) and the pair distance
# --------------------------------------------------------------------------------------


class _Side:
    """Local ``[N, H, C]`` and/or global ``[N, D]`` features of a set of images."""

    def __init__(self, local, glob):
        self.local, self.glob = local, glob

    def __len__(self):
        return (self.local if self.local is not None else self.glob).shape[0]

    @property
    def device(self):
        return (self.local if self.local is not None else self.glob).device

    def rows(self, s, e):
        return _Side(
            None if self.local is None else self.local[s:e],
            None if self.glob is None else self.glob[s:e],
        )

    def take(self, idx):
        return _Side(
            None if self.local is None else self.local[idx],
            None if self.glob is None else self.glob[idx],
        )


def _all_pairs(dist: Distance, a: _Side, b: _Side, chunk_size=None) -> torch.Tensor:
    # local_dist by this module's name, looked up at each call (tests wrap it to count blocks)
    return dist.all_pairs(a.local, b.local, a.glob, b.glob, chunk_size=chunk_size, local_fn=local_dist)


def _pairs(dist: Distance, a: _Side, b: _Side) -> torch.Tensor:
    return dist.pairs(a.local, b.local, a.glob, b.glob)


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------


def _check_pair(op, kind, q, g, q_shape, g_shape, last):
    """q_<kind> and g_<kind>: both or neither, rank, the same last dim, one device."""
    qn, gn = f"q_{kind}", f"g_{kind}"
    if (q is None) != (g is None):
        raise ValueError(f"{op}: give both {qn} and {gn}, or neither")
    if q is None:
        return
    _check_feat(op, qn, q, len(q_shape), "[" + ", ".join(q_shape) + "]")
    _check_feat(op, gn, g, len(g_shape), "[" + ", ".join(g_shape) + "]")
    if q.shape[-1] != g.shape[-1]:
        raise ValueError(
            f"{op}: {qn} [{', '.join(q_shape)}] and {gn} [{', '.join(g_shape)}] must have the same {last}, "
            f"got {list(q.shape)} and {list(g.shape)}"
        )
    if q.device != g.device:
        raise ValueError(f"{op}: {qn} is on {q.device} but {gn} is on {g.device}")


_OPTIONS = ("lam", "metric", "normalize", "gamma", "band", "gemm_dtype")


class _Unset:
    """The default of a separate distance option: not given. The option then comes from
    ``distance=`` or, without it, from :class:`Distance`'s default for that field."""

    def __repr__(self):
        return "<Distance default>"


_UNSET = _Unset()


def _distance(op, distance, has_local, has_global, options):
    """The :class:`Distance` of a call: ``distance``, or one made of the separate keyword
    ``options`` and the features given. ``options`` holds only the options the caller
    passed (an option left at its default is absent, or :data:`_UNSET`), so giving one
    together with ``distance`` is an error whatever its value."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"{op}() got an unexpected keyword argument {unknown[0]!r}")
    given = [name for name in _OPTIONS if name in options and options[name] is not _UNSET]
    if distance is None:
        return Distance.for_features(has_local, has_global, op, **{name: options[name] for name in given})
    if not isinstance(distance, Distance):
        raise TypeError(f"{op}: distance must be a partdist.eval.Distance, got {type(distance).__name__}")
    if given:
        raise ValueError(
            f"{op}: give distance=Distance(...) or the separate options, not both (got distance and "
            f"{', '.join(given)}); put {given[0]}= into the Distance"
        )
    uses = (("local", distance.uses_local, has_local), ("global", distance.uses_global, has_global))
    need = [name for name, used, have in uses if used and not have]
    if need:
        raise ValueError(
            f"{op}: a {distance.kind!r} distance needs {need[0]} features (q_{need[0]}, g_{need[0]})"
        )
    return distance


def _sides(op, q_local, g_local, q_global, g_global, distance, options, same_stripes=False):
    """Checked features and the :class:`Distance`; the features it does not use are dropped."""
    _check_pair(op, "local", q_local, g_local, ("Q", "H", "C"), ("G", "H'", "C"), "C")
    _check_pair(op, "global", q_global, g_global, ("Q", "D"), ("G", "D"), "D")
    if q_local is None and q_global is None:
        raise ValueError(f"{op}: give local features (q_local, g_local) and/or global features (q_global, g_global)")
    if q_local is not None and q_global is not None:
        for side, loc, glob in (("queries", q_local, q_global), ("gallery", g_local, g_global)):
            if loc.shape[0] != glob.shape[0]:
                raise ValueError(
                    f"{op}: local and global features must describe the same {side}, got {loc.shape[0]} "
                    f"and {glob.shape[0]} rows"
                )
        if q_local.device != q_global.device:
            raise ValueError(f"{op}: local features are on {q_local.device} but global ones on {q_global.device}")
    dist = _distance(op, distance, q_local is not None, q_global is not None, options)
    if not dist.uses_local:
        q_local = g_local = None
    if not dist.uses_global:
        q_global = g_global = None
    if same_stripes and q_local is not None and q_local.shape[1] != g_local.shape[1]:
        raise ValueError(
            f"{op}: q_local and g_local must have the same number of stripes H (query-query and "
            f"gallery-gallery distances are needed), got {list(q_local.shape)} and {list(g_local.shape)}"
        )
    q, g = _Side(q_local, q_global), _Side(g_local, g_global)
    if len(q) < 1 or len(g) < 1:
        raise ValueError(f"{op}: need at least one query and one gallery item, got {len(q)} and {len(g)}")
    return q, g, dist


def _default_rows(width, bytes_per_entry=4):
    return int(max(1, min(8192, _BLOCK_BYTES // (bytes_per_entry * max(1, width)))))


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

_COMMON_DOC = """
        q_local, g_local: local (stripe) features ``[Q, H, C]`` and ``[G, H', C]``.
        q_global, g_global: global features ``[Q, D]`` and ``[G, D]``.
            Give local and/or global features; with both the distance is
            ``global + lam * local``.
        distance: a :class:`partdist.eval.Distance` (kind, metric, ``lam``,
            ``normalize``, ``gamma``, ``band``, ``gemm_dtype``) instead of the separate
            options below.
        lam: weight of the local distance in the fusion (default 1.0).
        metric: global metric, ``euclidean`` (default), ``sqeuclidean`` or ``cosine``.
        normalize, gamma, band: of the local distance, as in :func:`partdist.local_dist`
            (defaults ``True``, ``0.0``, ``None``).
        gemm_dtype: the reduced-precision mode of :func:`partdist.local_dist` for float32
            local features (``torch.float16`` / ``torch.bfloat16``; default ``None``: off).
            The separate options left out take :class:`partdist.eval.Distance`'s
            defaults; giving any of them (even with its default value) together with
            ``distance`` is an error naming it.
        block_rows: queries per block (default: a block of about 64 MiB).
        chunk_size: pairs per tile inside :func:`partdist.local_dist`.
        progress: show a progress bar (tqdm)."""


def distance_blocks(
    q_local=None,
    g_local=None,
    q_global=None,
    g_global=None,
    *,
    lam: float = _UNSET,
    metric: str = _UNSET,
    normalize: bool = _UNSET,
    gamma: float = _UNSET,
    band: Optional[float] = _UNSET,
    gemm_dtype: Optional[torch.dtype] = _UNSET,
    block_rows: Optional[int] = None,
    chunk_size: Optional[int] = None,
    progress: bool = False,
    distance: Optional[Distance] = None,
) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, block)``: the distances ``[stop - start, G]`` of queries
    ``start:stop`` to the whole gallery, block after block (an iterator; the arguments are
    checked at the call).

    Args:"""
    options = dict(lam=lam, metric=metric, normalize=normalize, gamma=gamma, band=band, gemm_dtype=gemm_dtype)
    q, g, dist, rows = _prepare(
        "partdist.eval.distance_blocks", q_local, g_local, q_global, g_global, distance=distance,
        block_rows=block_rows, **options,
    )
    return _blocks(q, g, dist, chunk_size, rows, progress, "distances")


def _prepare(op, q_local, g_local, q_global, g_global, *, distance=None, block_rows=None, bytes_per_entry=4,
             **options):
    """Checked sides, the distance and the block height (``options``: the distance options given)."""
    q, g, dist = _sides(op, q_local, g_local, q_global, g_global, distance, options)
    rows = check_pos_int(op, "block_rows", block_rows, allow_none=True) or _default_rows(len(g), bytes_per_entry)
    return q, g, dist, rows


@torch.no_grad()
def _blocks(q, g, dist, chunk_size, rows, progress, desc):
    bar = progress_bar(progress, len(q), desc, unit="query")
    try:
        for s in range(0, len(q), rows):
            e = min(s + rows, len(q))
            yield s, e, _all_pairs(dist, q.rows(s, e), g, chunk_size)
            bar.update(e - s)
    finally:
        bar.close()


@torch.no_grad()
def query_gallery_distance(
    q_local=None, g_local=None, q_global=None, g_global=None, *, progress: bool = False, **options
) -> torch.Tensor:
    """The dense ``[Q, G]`` distance matrix, computed block by block (with a progress bar).

    Raises :class:`MemoryError` before computing anything when ``[Q, G]`` cannot fit,
    naming :func:`topk_distance` / :func:`distance_blocks` as the alternatives.

    ``options``: the keyword options of :func:`distance_blocks` (``distance``, or ``lam``,
    ``metric``, ``normalize``, ``gamma``, ``band``; ``block_rows``, ``chunk_size``)."""
    op = "partdist.eval.query_gallery_distance"
    chunk_size = options.pop("chunk_size", None)
    q, g, dist, rows = _prepare(op, q_local, g_local, q_global, g_global, **options)
    feats = [t for t in (q.local, q.glob) if t is not None]
    dtype = torch.promote_types(feats[0].dtype, feats[-1].dtype)
    if dtype in (torch.float16, torch.bfloat16) and q.local is not None:
        dtype = q.local.dtype
    check_dense_fits(
        op,
        (len(q), len(g)),
        dtype,
        q.device,
        "partdist.eval.topk_distance(..., k=...) (keeps the k nearest gallery items per query) or "
        "partdist.eval.distance_blocks(...) (yields [block_rows, G] blocks)",
    )
    out = None
    for s, e, blk in _blocks(q, g, dist, chunk_size, rows, progress, "distances"):
        if out is None:
            out = blk.new_empty((len(q), len(g)))
        out[s:e] = blk
    return out


distance_blocks.__doc__ += _COMMON_DOC


def _stable_topk(block: torch.Tensor, k: int, largest: bool):
    """``k`` smallest (largest) entries of each row, sorted; ties by the smaller index.
    NaN counts as larger than every number (as ``torch.topk`` / ``torch.sort``)."""
    if block.device.type == "cpu":
        a = block.float().numpy() if block.dtype in (torch.float16, torch.bfloat16) else block.numpy()
        nan_rows = np.isnan(a).any(axis=1)
        if not nan_rows.any():
            idx = torch.from_numpy(topk_rows(np.ascontiguousarray(-a if largest else a), k).astype(np.int64))
            return block.gather(1, idx), idx
    idx = torch.sort(block, dim=1, descending=largest, stable=True).indices[:, :k]
    return block.gather(1, idx), idx


@torch.no_grad()
def topk_distance(
    q_local=None,
    g_local=None,
    q_global=None,
    g_global=None,
    *,
    k: int,
    largest: bool = False,
    progress: bool = False,
    **options,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest gallery items of every query, without the dense ``[Q, G]`` matrix.

    Returns ``(values [Q, k], indices [Q, k])``, sorted by distance (ascending, or
    descending with ``largest=True``); among equal distances the smaller gallery index
    comes first. Memory: ``Q x k`` for the result plus one block.

    Args:
        k: how many gallery items to keep per query, ``1 <= k <= G``.
        largest: keep the ``k`` farthest instead.
        progress: show a progress bar (tqdm).
        options: the keyword options of :func:`distance_blocks` (``distance``, or ``lam``,
            ``metric``, ``normalize``, ``gamma``, ``band``, ``gemm_dtype``; ``block_rows``,
            ``chunk_size``)."""
    op = "partdist.eval.topk_distance"
    chunk_size = options.pop("chunk_size", None)
    q, g, dist, rows = _prepare(op, q_local, g_local, q_global, g_global, bytes_per_entry=16, **options)
    k = check_pos_int(op, "k", k)
    if k > len(g):
        raise ValueError(f"{op}: k must be at most the gallery size G = {len(g)}, got {k}")
    vals, inds = [], []
    for _, _, blk in _blocks(q, g, dist, chunk_size, rows, progress, "top-k"):
        v, i = _stable_topk(blk, k, largest)
        vals.append(v)
        inds.append(i)
    return torch.cat(vals), torch.cat(inds)


def local_dist_topk(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    normalize: bool = True,
    chunk_size: Optional[int] = None,
    gamma: float = 0.0,
    band: Optional[float] = None,
    largest: bool = False,
    block_rows: Optional[int] = None,
    progress: bool = False,
    gemm_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest DMLI distances of each ``x[a]`` to all of ``y`` (streaming).

    ``x`` ``[M, m, C]``, ``y`` ``[N, n, C]`` -> ``(values [M, k], indices [M, k])``, as
    ``torch.topk(partdist.local_dist(x, y), k, largest=False)`` but without the dense
    ``[M, N]`` result (memory ``M x k`` plus one block of ``block_rows x N``) and with
    ties ordered by index. Not differentiable (use :func:`partdist.local_dist` on the
    selected pairs for gradients). See :func:`topk_distance` for fused distances.
    ``gemm_dtype``: the reduced-precision mode of :func:`partdist.local_dist`.
    """
    return topk_distance(
        x,
        y,
        k=k,
        largest=largest,
        normalize=normalize,
        gamma=gamma,
        band=band,
        gemm_dtype=gemm_dtype,
        block_rows=block_rows,
        chunk_size=chunk_size,
        progress=progress,
    )


# --------------------------------------------------------------------------------------
# k-reciprocal re-ranking straight from features
# --------------------------------------------------------------------------------------


class _FeatureSource:
    """A :class:`partdist.eval.reranking.DistanceSource`: the ``(q+g) x (q+g)`` distances
    computed from features block by block instead of read from dense matrices."""

    def __init__(self, op: str, qs: _Side, gs: _Side, dist: Distance, bar):
        self.op, self.qs, self.gs, self.dist, self.bar = op, qs, gs, dist, bar
        self.q, self.g = len(qs), len(gs)
        self.n = self.q + self.g
        self.qg = None
        self.dtype = np.float32
        self.rows_done = 0

    def _sq(self, x):
        return np.power(np.asarray(x, dtype=self.dtype), 2).astype(np.float32, copy=False)

    def _rows_block(self, s, e):
        """Distances of items ``s:e`` of ``[queries; gallery]`` to all items, ``[e - s, N]`` numpy."""
        side = self.qs.rows(s, e) if e <= self.q else self.gs.rows(s - self.q, e - self.q)
        blk = torch.cat([_all_pairs(self.dist, side, self.qs), _all_pairs(self.dist, side, self.gs)], dim=1)
        if blk.dtype in (torch.float16, torch.bfloat16):
            blk = blk.float()
        out = blk.cpu().numpy()
        if not np.isfinite(out).all():
            bad = s + int(np.nonzero(~np.isfinite(out).all(axis=1))[0][0])
            raise ValueError(
                f"{self.op}: the distances of item {bad} of [queries; gallery] are not finite "
                "(NaN or inf in its features?)"
            )
        return out

    def columns(self, s, e):
        """Rows ``s:e`` of the squared distances (float32); keeps the query x gallery
        distances on the way."""
        raw = self._rows_block(s, e)
        if self.qg is None:
            self.dtype = raw.dtype
            self.qg = np.empty((self.q, self.g), dtype=raw.dtype)
        if e <= self.q:
            self.qg[s:e] = raw[:, self.q :]
        self.bar.update(e - s)
        self.rows_done += e - s
        if self.rows_done >= self.n:
            self.close_bar()
        return self._sq(raw)

    def close_bar(self):
        """Close the progress bar of the neighbour stage (once)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _items(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        isq = idx < self.q
        if bool(isq.all()):
            return self.qs.take(idx.to(self.qs.device))
        if not bool(isq.any()):
            return self.gs.take((idx - self.q).to(self.gs.device))
        a = self.qs.take(idx.clamp(max=self.q - 1).to(self.qs.device))
        b = self.gs.take((idx - self.q).clamp(min=0).to(self.gs.device))
        m = isq.to(self.qs.device)

        def mix(x, y):
            if x is None:
                return None
            return torch.where(m.view(-1, *([1] * (x.dim() - 1))), x, y)

        return _Side(mix(a.local, b.local), mix(a.glob, b.glob))

    def gather(self, j, i):
        """``d(item j, item i) ** 2`` (float32) for index arrays of equal shape."""
        j, i = np.asarray(j).ravel(), np.asarray(i).ravel()
        per_pair = 0
        for t in (self.qs.local, self.qs.glob):
            if t is not None:
                per_pair += 2 * t[0].numel() * 4
        step = max(1, _BLOCK_BYTES // max(1, per_pair))
        out = np.empty(j.shape, dtype=np.float32)
        for s in range(0, len(j), step):
            e = min(s + step, len(j))
            d = _pairs(self.dist, self._items(j[s:e]), self._items(i[s:e]))
            if d.dtype in (torch.float16, torch.bfloat16):
                d = d.float()
            out[s:e] = self._sq(d.cpu().numpy())
        return out

    def qg_sq(self, s, e):
        return self._sq(self.qg[s:e])


@torch.no_grad()
def re_ranking_features(
    q_local=None, g_local=None, q_global=None, g_global=None, *, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
    chunk_size: Optional[int] = None, progress: bool = False, distance: Optional[Distance] = None, **options
) -> torch.Tensor:
    """k-reciprocal re-ranking (Zhong et al. 2017) straight from features: local, global or fused.

    Equal to ``partdist.eval.re_ranking(d(q, g), d(q, q), d(g, g), k1, k2, lambda_value)``
    with ``d`` the (local, global or fused) distance, but the three dense matrices are
    never formed: the ``(q+g) x (q+g)`` distances are computed ``chunk_size`` rows at a
    time, each block reduced at once to its row's ``k1 + 1`` nearest neighbours and row
    maximum; the few entries the k-reciprocal encoding needs besides those are
    recomputed pair by pair (:func:`partdist.batch_local_dist`). Memory: the ``[q, g]``
    result and one more ``[q, g]`` copy of the original distances (in the features'
    precision), ``O((q+g) k)`` neighbour lists and sparse encodings, and blocks of about
    64 MiB (``chunk_size x (q+g)`` float32). Compute: all ``(q+g)^2`` ordered pairs (each
    unordered pair twice; for Market-1501, 3.7e8 DMLI distances).

    Local features must have the same number of stripes on both sides.

    Args:
        k1, k2, lambda_value: as in :func:`partdist.eval.re_ranking`.
        chunk_size: rows of the ``(q+g) x (q+g)`` distances per block (default: a block
            of about 64 MiB). The result does not depend on it.
        q_local, g_local, q_global, g_global, distance, progress: as in :func:`distance_blocks`.
        options: ``lam``, ``metric``, ``normalize``, ``gamma``, ``band`` as in
            :func:`distance_blocks` (or give ``distance``).

    Returns:
        The re-ranked ``[q, g]`` distance, a float32 tensor on the CPU.
    """
    op = "re_ranking_features"
    qs, gs, dist = _sides(op, q_local, g_local, q_global, g_global, distance, options, same_stripes=True)
    src = _FeatureSource(op, qs, gs, dist, progress_bar(progress, len(qs) + len(gs), "re-ranking: neighbours", "item"))
    try:
        return torch.from_numpy(rerank_source(src, k1, k2, lambda_value, chunk_size=chunk_size))
    finally:
        src.close_bar()
