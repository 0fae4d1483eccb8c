"""A gallery index: global + stripe features, exact or two-stage search by the fused
distance ``global + lam * local``, self-tuned, sharded over ``torch.distributed``, saved in a
versioned, code-free file.

The modules: :mod:`.storage` (the features, ids, labels and the file format),
:mod:`.params` (:class:`SearchParams`, the options of a search), :mod:`.shortlist` (the first
stage: a cheap score, one GEMM per gallery chunk and a running top-K'), :mod:`.faiss_backend`
(the first stage by a FAISS index), :mod:`.rescore` (the exact fused distance: the whole-gallery
scan, the second stage, re-ranking), :mod:`.tune` (choosing the shortlist on the gallery itself).

Exact search streams the fused distance over the whole gallery, chunk by chunk, with
:func:`partdist.eval.topk_distance` (the evaluation code's streaming top-k), and merges
the chunks' k best by (distance, global id). Two-stage search takes the K' nearest gallery items
by a shortlist score (the global distance, or a proxy of the fused distance made of the global
and the pooled stripe features), then the exact fused distance of those (query x shortlisted
pairs, :func:`partdist.batch_local_dist`), then optionally k-reciprocal re-ranking
(:func:`partdist.eval.re_ranking_features`) of each query against its shortlist only. The
settings left ``None`` (by default: all) are chosen by the index's tuning (:meth:`GalleryIndex.tune`),
measured on the gallery at the first two-stage search that needs it and kept (and saved) with the
index.

Sharding: under ``torch.distributed`` every rank holds a shard (any size, empty
included) of one gallery, with global ids. Every rank calls ``search`` with the same
queries; each computes its candidates, the ranks exchange ``k`` (or K') candidates per query
with their global ids, and every rank gets the answer one process holding the whole gallery
would give: ties are broken by the smaller global id, every pair's distance is computed by the
same kernels on the same inputs, and the tuning draws the same pseudo-queries.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

from .._checks import check_feature_tensor as _feat
from .._checks import check_pos_int
from ..eval import evaluate_rank
from . import _merge
from . import tune as _tune
from .faiss_backend import faiss_shortlist
from .params import MODES, SearchParams, check_lam_metric
from .rescore import exact_shard, locate, rerank, shortlist_pairs
from .shortlist import key_to_distance, pool, shortlist_keys, windows
from .storage import FORMAT, FORMAT_VERSION, GalleryStore, on_index_device

__all__ = ["GalleryIndex", "SearchResult", "SearchParams", "Tuning", "FORMAT", "FORMAT_VERSION", "rank_metrics"]

Tuning = _tune.Tuning
_CHUNK_BYTES = 128 << 20  # gallery rows converted to the compute dtype at a time (CPU)


class SearchResult(NamedTuple):
    """``distances [Q, k]`` (ascending; re-ranked distances with ``rerank=True``) and the
    global ``ids [Q, k]`` (int64) of the gallery items, on the index's device."""

    distances: torch.Tensor
    ids: torch.Tensor


class GalleryIndex(GalleryStore):
    """Gallery features for search by ``global + lam * local``.

    Args:
        dtype: storage of the features, ``float16``, ``float32`` (default) or ``float64``
            (float16 halves the memory; distances are computed in float32, float64 for
            float64 storage).
        device: where the features live and the distances are computed (``"cpu"``,
            ``"cuda"``, ``"cuda:1"``: every computation of the index runs with that GPU current).
        lam, metric, normalize, gamma, band: defaults of :meth:`search` (the fusion weight,
            the global metric ``euclidean`` / ``sqeuclidean`` / ``cosine``, and the options
            of :func:`partdist.local_dist`); saved with the index.
        meta: free-form ``str -> str/int/float`` information saved with the index (e.g.
            the checkpoint the features came from).

    Storage, ``add``, ``save`` / ``load``, ``shard`` and ``all_labels`` are those of
    :class:`partdist.search.storage.GalleryStore`.
    """

    # ----------------------------------------------------------------------------------
    # derived data (cached until the gallery changes)
    # ----------------------------------------------------------------------------------

    def _compute_dtype(self):
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def _chunk_rows(self, chunk_rows):
        if chunk_rows is not None:
            return chunk_rows
        per_row = 4 * ((self.dim or 1) + (self.stripes or 0) * (self.channels or 0))
        rows = max(1024, _CHUNK_BYTES // per_row)
        return 1 << 18 if self.device.type == "cuda" else 1 << int(math.log2(rows))

    def _rows(self, s, e, local=True):
        """Features of rows ``s:e`` in the compute dtype (a view when no conversion is needed)."""
        cd = self._compute_dtype()
        g = self.global_features[s:e].to(cd)
        lf = self.local_features
        return g, (lf[s:e].to(cd) if (local and lf is not None) else None)

    def _pooled_features(self, pooling="mean"):
        """:func:`~partdist.search.shortlist.pool` of each item's stripes ``[n, P * C]`` (storage
        dtype), cached per pooling: the local part of the ``pooled_weight`` shortlist score."""
        if self._pooled is None:
            self._pooled = {}
        if pooling not in self._pooled:
            cd = self._compute_dtype()
            lf = self.local_features
            width = self.channels * len(windows(lf.shape[1], pooling))
            out = torch.empty((self._n, width), dtype=self.dtype, device=self.device)
            for s in range(0, self._n, 1 << 16):
                out[s : s + (1 << 16)] = pool(lf[s : s + (1 << 16)].to(cd), pooling)
            self._pooled[pooling] = out
        return self._pooled[pooling]

    def _sq_norms(self, pooling=None):
        """Squared norms ``[n]`` (compute dtype) of the global features (``pooling=None``) or of
        the pooled stripes of ``pooling``, cached: the bias of the shortlist GEMM."""
        if self._sq is None:
            self._sq = {}
        if pooling not in self._sq:
            cd = self._compute_dtype()
            src = self.global_features if pooling is None else self._pooled_features(pooling)
            out = torch.empty(self._n, dtype=cd, device=self.device)
            for s in range(0, self._n, 1 << 16):
                out[s : s + (1 << 16)] = src[s : s + (1 << 16)].to(cd).pow(2).sum(1)
            self._sq[pooling] = out
        return self._sq[pooling]

    # ----------------------------------------------------------------------------------
    # tuning
    # ----------------------------------------------------------------------------------

    @property
    def tuning(self) -> Optional[Tuning]:
        """The tuning (:class:`~partdist.search.tune.Tuning`: the chosen shortlist setting, its
        estimated recall@k, the lower bound and the sample size) for its ``k`` and a target of
        0.99, or ``None`` when the index was not tuned (or changed since)."""
        st = self._tuning_state
        return None if st is None else Tuning(st, st["k"])

    @on_index_device
    def tune(self, k: int = 10, *, target_recall: float = 0.99, sample: int = 256, seed: int = 0,
             max_shortlist: int = 2000, weights=_tune.WEIGHTS, lam: Optional[float] = None,
             metric: Optional[str] = None, distributed: Optional[bool] = None, group=None,
             block_queries: Optional[int] = None, chunk_rows: Optional[int] = None,
             exact: Optional[bool] = None, progress: bool = False) -> Tuning:
        """Measure the two-stage search on the gallery itself and keep the result (saved with
        the index); :meth:`search` then takes the settings it leaves ``None`` from it.

        ``sample`` gallery items (drawn with ``seed``; the same ones whatever the sharding)
        serve as pseudo-queries: their exact fused top ``k`` without themselves, and their
        shortlists of up to ``max_shortlist`` by every score (the global distance; the pooled
        ``"mean"`` and ``"halves"`` stripes at each of ``weights``, ``math.inf`` the pooled stripes
        alone) give the recall@k of every
        (score, K'). The reference top ``k``: exact (``exact=True``; by default while
        ``sample x gallery size <= 2**22``), else the fused top ``k`` within the union of the
        measured shortlists (see :mod:`partdist.search.tune`). Costs ``sample x (1 + 2
        len(weights))`` shortlist queries and ``sample`` exact queries or ``sample`` x the union
        size fused pairs. Collective under torch.distributed (every rank calls it).

        Returns:
            the :class:`~partdist.search.tune.Tuning` for ``k`` and ``target_recall`` (also
            :attr:`tuning`); ``.summary()`` is a one-line report.
        """
        op = "GalleryIndex.tune"
        k = check_pos_int(op, "k", k)
        sample = check_pos_int(op, "sample", sample)
        max_shortlist = check_pos_int(op, "max_shortlist", max_shortlist)
        p = SearchParams(mode="two-stage", target_recall=target_recall, lam=lam, metric=metric)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{op}: seed must be an int, got {seed!r}")
        ws = tuple(float(w) for w in weights)
        if not ws or any(math.isnan(w) or w <= 0 for w in ws):
            raise ValueError(f"{op}: weights must be numbers > 0 (math.inf: the pooled stripes alone), "
                             f"got {weights!r}")
        lam = self.lam if p.lam is None else p.lam
        metric = self.metric if p.metric is None else p.metric
        if not self.has_local or lam == 0:
            raise ValueError(f"{op}: only the fused distance (an index with local features, lam > 0) needs tuning; "
                             "a global-only shortlist is exact with K' = k")
        use_dist, group = _merge.resolve_group(distributed, group, op)
        self._consolidate()
        self._run_tuning(k, lam, metric, use_dist, group, sample=sample, seed=seed, max_shortlist=max_shortlist,
                         weights=ws, block_queries=block_queries, chunk_rows=self._chunk_rows(chunk_rows),
                         exact=exact, show=progress and (not use_dist or dist.get_rank(group) == 0))
        if self._tuning_state is None:
            raise ValueError(f"{op}: the gallery needs at least 2 items to be tuned")
        return Tuning(self._tuning_state, min(k, self._tuning_state["k"]), p.target_recall)

    def _run_tuning(self, k, lam, metric, use_dist, group, *, sample=256, seed=0, max_shortlist=2000,
                    weights=_tune.WEIGHTS, block_queries=None, chunk_rows=None, exact=None, show=False):
        self._tuning_state = _tune.run(self, k=k, lam=lam, metric=metric, sample=sample, seed=seed,
                                       max_shortlist=max_shortlist, weights=weights, use_dist=use_dist, group=group,
                                       block_queries=block_queries, chunk_rows=chunk_rows, show=show, exact=exact)

    def _tuned(self, k, lam, metric, total, pooled_weight):
        return _tune.matches(self._tuning_state, k=k, lam=lam, metric=metric, normalize=self.normalize,
                             gamma=self.gamma, band=self.band, gallery_size=total, pooled_weight=pooled_weight)

    def resolve(self, k: int, params: Optional[SearchParams] = None, **options) -> SearchParams:
        """The options a :meth:`search` with these arguments uses: those left ``None`` filled in
        (the index's ``lam`` / ``metric``; the shortlist setting from the tuning, which must
        exist and match for a two-stage search of the fused distance: run :meth:`tune` or a
        search first). For one process or the whole gallery of this process."""
        p = self._params(params, options)
        lam = self.lam if p.lam is None else p.lam
        metric = self.metric if p.metric is None else p.metric
        p = p.replace(lam=lam, metric=metric)
        if p.mode != "two-stage" or not p.needs_tuning:
            return p
        use_local = self.has_local and lam > 0
        total = self._tuning_state["gallery_size"] if self._tuning_state else self._n
        kk, w, pooling = self._settings(p, k, use_local, total)
        if kk is None:
            return p.replace(mode="exact")
        return p.replace(shortlist=kk, pooled_weight=w, pooling=pooling)

    def _settings(self, p: SearchParams, k, use_local, total):
        """``(K', pooled_weight, pooling)`` of a two-stage search: the fixed ones, the rest from
        the tuning (which must match, see :meth:`_tuned`)."""
        if not use_local:  # the shortlist score is the final distance: K' = k finds the exact top k
            return (p.shortlist or min(k, total)), (p.pooled_weight or 0.0), (p.pooling or "mean")
        if not p.needs_tuning:
            return p.shortlist, p.pooled_weight, p.pooling or "mean"
        lam = self.lam if p.lam is None else p.lam
        metric = self.metric if p.metric is None else p.metric
        if not self._tuned(k, lam, metric, total, p.pooled_weight):
            raise ValueError("GalleryIndex.search: the index has no tuning for this search; run index.tune(k)")
        fixed = dict(shortlist=p.shortlist, pooled_weight=0.0 if p.backend == "faiss" else p.pooled_weight,
                     pooling=p.pooling)
        ch = Tuning(self._tuning_state, k, p.target_recall, **fixed)
        if not ch.reached and p.shortlist is None and not p.rerank and p.backend == "torch":
            # no measured shortlist reaches the target: the exact search (recall 1) rather than a
            # silent loss of neighbours; fixing a setting or lowering target_recall overrides it
            return None, None, None
        kk = ch.shortlist
        if p.rerank and p.shortlist is None:  # re-ranking needs neighbours of the neighbours in the list
            kk = max(kk, 5 * p.k1)
        return kk, ch.pooled_weight, ch.pooling

    # ----------------------------------------------------------------------------------
    # search
    # ----------------------------------------------------------------------------------

    @staticmethod
    def _params(params, options) -> SearchParams:
        if params is None:
            params = SearchParams()
        elif not isinstance(params, SearchParams):
            raise TypeError(f"GalleryIndex.search: params must be a partdist.search.SearchParams, got "
                            f"{type(params).__name__}")
        return params.replace(**options)

    @on_index_device
    def search(self, q_global: torch.Tensor, q_local: Optional[torch.Tensor] = None, k: int = 10,
               params: Optional[SearchParams] = None, *, distributed: Optional[bool] = None, group=None,
               **options) -> SearchResult:
        """The ``k`` nearest gallery items of each query by ``global + lam * local``.

        Args:
            q_global: ``[Q, D]`` query global features.
            q_local: ``[Q, H', C]`` query stripe features; needed when ``lam > 0`` and the
                index holds local features.
            k: results per query, ``1 <= k <=`` gallery size (over all ranks).
            params: a :class:`SearchParams` (default: ``SearchParams()``, the exact search).
            options: fields of :class:`SearchParams` that replace those of ``params``
                (``search(qg, ql, 10, mode="two-stage")``), checked the same way.
            distributed: search the shards of all ranks of ``group`` (collective: every rank
                calls with the same queries and options). Default: when torch.distributed is
                initialized with more than one rank.

        A two-stage search whose shortlist settings are left ``None`` takes them from the
        index's tuning (:attr:`tuning`), measured by :meth:`tune` at the first such search (and
        again when the gallery, ``lam``, ``metric`` or a larger ``k`` make it stale). When no
        measured shortlist reaches ``target_recall`` (and K' is not fixed), the search is exact.

        Returns:
            :class:`SearchResult` ``(distances [Q, k], ids [Q, k])``; equal ids in the order
            (distance, id). Every rank gets the same result.
        """
        op = "GalleryIndex.search"
        p = self._params(params, options)
        lam = self.lam if p.lam is None else p.lam
        metric = self.metric if p.metric is None else p.metric
        check_lam_metric(op, lam, metric)
        k = check_pos_int(op, "k", k)
        use_dist, group = _merge.resolve_group(distributed, group, op)
        rank = dist.get_rank(group) if use_dist else 0
        world = dist.get_world_size(group) if use_dist else 1
        self._consolidate()

        qg = _feat(op, "q_global", q_global, 2, "[Q, D]")
        if self.dim is not None and qg.shape[1] != self.dim:
            raise ValueError(f"{op}: q_global has D = {qg.shape[1]} features but the index holds D = {self.dim}; "
                             "extract query and gallery features with the same model")
        use_local = bool(self._has_local) and lam > 0
        if use_local:
            if q_local is None:
                raise ValueError(f"{op}: lam = {lam} > 0 and the index holds local features: pass q_local "
                                 "[Q, H, C] (the queries' stripe features), or lam=0 for a global-only search")
            _feat(op, "q_local", q_local, 3, "[Q, H, C]")
            if q_local.shape[0] != qg.shape[0]:
                raise ValueError(f"{op}: q_global and q_local must describe the same queries, got {qg.shape[0]} and "
                                 f"{q_local.shape[0]} rows")
            if q_local.shape[2] != self.channels:
                raise ValueError(f"{op}: q_local has C = {q_local.shape[2]} channels per stripe but the index holds "
                                 f"C = {self.channels}; extract query and gallery features with the same model")
        if p.mode == "two-stage" and p.pooled_weight and not use_local:
            raise ValueError(f"{op}: pooled_weight > 0 scores the shortlist with the stripe features: it needs an "
                             "index with local features, q_local and lam > 0 (or pooled_weight=0)")
        cd = self._compute_dtype()
        qg = qg.detach().to(self.device, cd)
        ql = q_local.detach().to(self.device, cd) if use_local else None
        for name, t in (("q_global", qg), ("q_local", ql)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{op}: {name} has NaN or infinite values")
        k_tune = max(k, 10)

        # sizes over all ranks; every rank must search the same queries
        if use_dist:
            info = _merge.all_gather_ints([self._n, qg.shape[0], qg.shape[1], k, p.shortlist or 0, int(use_local),
                                           MODES.index(p.mode), int(p.rerank)], group)
            fresh = [r for r in range(info.shape[0]) if info[r, 0] == 0 and info[r, 5] != info[:, 5].max()]
            if fresh:
                raise ValueError(f"{op}: the shard of rank(s) {fresh} is empty and was never given features, so it "
                                 "does not know the feature sizes: add zero rows there, "
                                 "index.add(torch.empty(0, D), torch.empty(0, H, C))")
            if not bool((info[:, 1:] == info[0, 1:]).all()):
                raise ValueError(f"{op}: every rank must call search with the same queries and options "
                                 f"(Q, D, k, shortlist, lam > 0, mode, rerank per rank: {info[:, 1:].tolist()})")
            total = int(info[:, 0].sum())
        else:
            total = self._n
        if total == 0:
            raise ValueError(f"{op}: the index is empty; add gallery items first")
        if k > total:
            raise ValueError(f"{op}: k = {k} is more than the gallery size {total}")
        chunk_rows = self._chunk_rows(p.chunk_rows)
        show = p.progress and rank == 0
        if p.mode == "two-stage" and use_local and p.needs_tuning:
            tuned = int(self._tuned(k, lam, metric, total, p.pooled_weight))
            if use_dist:  # one rank without a matching tuning: all tune (the same sample: the same result)
                tuned = int(_merge.all_gather_ints([tuned], group).min())
            if not tuned:
                ws = _tune.WEIGHTS
                if p.pooled_weight and p.pooled_weight not in ws:
                    ws = tuple(sorted(ws + (p.pooled_weight,)))
                self._run_tuning(k_tune, lam, metric, use_dist, group, weights=ws, block_queries=p.block_queries,
                                 chunk_rows=chunk_rows, show=show)
        if qg.shape[0] == 0:
            e = torch.empty((0, k), device=self.device)
            return SearchResult(e.to(cd), e.to(torch.int64))
        settings = self._settings(p, k, use_local, total) if p.mode == "two-stage" else (None,)
        if settings[0] is None:  # exact, or two-stage whose tuning reaches the target with no shortlist
            v, i = exact_shard(self, qg, ql, k, lam=float(lam), metric=metric, use_local=use_local,
                               block_queries=p.block_queries, chunk_rows=chunk_rows, show=show)
            if use_dist:
                v, i = _merge.merge_ranks(v, i, k, group)
            return SearchResult(v, i)
        shortlist, pooled_weight, pooling = settings
        kk = min(shortlist, total)
        if p.rerank and kk <= p.k1:
            raise ValueError(f"{op}: rerank needs a shortlist longer than k1 = {p.k1}, got {kk} (raise shortlist, "
                             "or lower k1)")
        if p.backend == "faiss":
            sk, si = faiss_shortlist(self, qg, kk, metric, p.faiss_factory, p.faiss_params)
        else:
            sk, si = shortlist_keys(self, qg, ql, kk, metric, pooled_weight, pooling, p.block_queries, chunk_rows,
                                    show)
        if use_dist:
            sk, si = _merge.merge_ranks(sk, si, kk, group)
        rows, own = locate(self, si)
        if p.backend == "faiss" or pooled_weight:  # keys are not the global distances: compute those
            sv = shortlist_pairs(self, qg, rows, own, False, metric, show)
            if use_dist:
                sv = _merge.sum_owned(sv, group)
        else:
            sv = key_to_distance(sk, qg, metric)
        fused = sv
        if use_local:
            loc = shortlist_pairs(self, ql, rows, own, True, metric, show)
            if use_dist:
                loc = _merge.sum_owned(loc, group)
            fused = sv + lam * loc
        if p.rerank:
            fused = rerank(self, qg, ql, rows, own, p.k1, p.k2, p.lambda_value, lam, metric, use_dist, group, rank,
                           world, show)
        v, i = _merge.merge_topk(fused, si, k)
        return SearchResult(v, i)


def rank_metrics(result: SearchResult, q_pids, q_camids, gallery_ids, g_pids, g_camids, max_rank: int = 50,
                 ap: str = "torchreid"):
    """CMC and mAP (:func:`partdist.eval.evaluate_rank`) of search results.

    The gallery items a query's list does not hold count as ranked after it, in id order
    (distance +inf). With ``k`` = the gallery size the lists are full rankings and the
    metrics are those of the dense distance matrix; with a smaller ``k``, CMC up to rank
    ``k`` is exact and mAP counts the missing true matches as found after the list.

    Args:
        result: a :class:`SearchResult`.
        q_pids, q_camids: ``[Q]`` of the queries.
        gallery_ids, g_pids, g_camids: ``[G]`` of the whole gallery (see
            :meth:`GalleryIndex.all_labels`), ``gallery_ids`` ascending.
    Returns:
        ``(cmc, mAP)`` as :func:`partdist.eval.evaluate_rank`.
    """
    gids = torch.as_tensor(gallery_ids).cpu()
    ids = result.ids.cpu()
    cols = torch.searchsorted(gids, ids.clamp(max=int(gids.max()) if gids.numel() else 0))
    if gids.numel() == 0 or not bool((gids[cols.clamp(max=gids.numel() - 1)] == ids).all()):
        raise ValueError("rank_metrics: result ids not found in gallery_ids (pass the ids of the whole gallery)")
    d = torch.full((ids.shape[0], gids.numel()), float("inf"), dtype=torch.float64)
    d.scatter_(1, cols, result.distances.detach().cpu().to(torch.float64))
    return evaluate_rank(d, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, ap=ap)
