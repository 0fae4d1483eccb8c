"""A gallery index: global + stripe features, exact or two-stage search by the fused
distance ``global + lam * local``, sharded over ``torch.distributed``, saved in a
versioned, code-free file.

Exact search streams the fused distance over the whole gallery, chunk by chunk, with
:func:`partdist.eval.topk_distance` (the evaluation code's streaming top-k), and merges
the chunks' k best by (distance, global id). Two-stage search takes the ``shortlist``
nearest gallery items by the global distance (one GEMM per gallery chunk and a running
top-k, or a FAISS index), or by a cheap proxy of the fused distance (``pooled_weight``),
then the exact fused distance of the shortlist (:func:`partdist.batch_local_dist` of the
query x shortlisted pairs), then
optionally k-reciprocal re-ranking (:func:`partdist.eval.re_ranking_features`) of each
query against its shortlist only.

Sharding: under ``torch.distributed`` every rank holds a shard (any size, empty
included) of one gallery, with global ids. Every rank calls ``search`` with the same
queries; each computes its candidates, the ranks exchange ``k`` (or ``shortlist``)
candidates per query with their global ids, and every rank gets the answer one process
holding the whole gallery would give: ties are broken by the smaller global id, and the
distance of every pair is computed by the same kernels on the same inputs.
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
import re
import zipfile
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

import partdist.eval

from .._checks import check_pos_int as _check_pos_int
from ..eval.streaming import _check_feat as _feat
from ..ops.dmli import batch_local_dist
from . import _merge

__all__ = ["GalleryIndex", "SearchResult", "FORMAT", "FORMAT_VERSION", "rank_metrics"]

FORMAT = "partdist.search.GalleryIndex"
FORMAT_VERSION = 1

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
_METRICS = ("euclidean", "sqeuclidean", "cosine")
_MODES = ("exact", "two-stage")
_BACKENDS = ("torch", "faiss")
_CHUNK_BYTES = 128 << 20  # gallery rows converted to the compute dtype at a time (CPU)
_KEY_BYTES = 64 << 20  # shortlist keys [query block, gallery chunk] computed by one GEMM
_PAIR_BYTES = 64 << 20  # features of the shortlist pairs gathered at a time


class SearchResult(NamedTuple):
    """``distances [Q, k]`` (ascending; re-ranked distances with ``rerank=True``) and the
    global ``ids [Q, k]`` (int64) of the gallery items, on the index's device."""

    distances: torch.Tensor
    ids: torch.Tensor


def _dtype(op, dtype):
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"{op}: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"{op}: dtype must be torch.float16, torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _labels(op, name, v, n):
    if v is None:
        return None
    t = torch.as_tensor(v)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{op}: {name} must be {n} integers (one per gallery item), got {list(t.shape)} {t.dtype}")
    return t.to(torch.int64).cpu()


def _faiss_reason(e):
    """The useful part of a FAISS C++ error (``Error in <function> at <file>.cpp:<line>: <why>``)."""
    msg = " ".join(str(e).split())
    m = re.search(r"\.(?:cpp|h):\d+:\s*(.*)$", msg)
    return (m.group(1) if m else msg).rsplit(":", 1)[-1].strip() or type(e).__name__


def _stable_smallest(d: torch.Tensor, k: int):
    """The ``k`` smallest entries of each row of ``d`` (finite values), sorted, equal values by
    the smaller column (as a stable sort would): ``torch.topk`` of ``k + 1``, and rows whose
    k-th and (k+1)-th values are equal (``topk`` may have chosen among ties) sorted whole."""
    n = d.shape[1]
    if k >= n:
        return _merge.merge_topk(d, torch.arange(n, device=d.device).expand_as(d), k)
    v, i = torch.topk(d, k + 1, dim=1, largest=False, sorted=False)
    v, i = _merge.merge_topk(v, i, k + 1)
    for r in (v[:, k] == v[:, k - 1]).nonzero().flatten().tolist():
        o = torch.sort(d[r], stable=True).indices[:k]
        v[r, :k], i[r, :k] = d[r][o], o
    return v[:, :k], i[:, :k]


_POOLINGS = ("mean", "halves")


def _windows(h, pooling):
    """The stripe windows ``[(start, stop)]`` of a ``pooling`` over ``h`` stripes: ``"mean"`` all
    of them; ``"halves"`` an upper and a lower window of ``ceil(5 h / 8)`` stripes each, which
    overlap by about a quarter (``[0, 5)`` and ``[3, 8)`` for 8 stripes), so that a shift of a
    stripe moves little of either."""
    if pooling == "mean":
        return [(0, h)]
    n = -(-5 * h // 8)
    return [(0, n), (h - n, h)]


def _pool(local, pooling="mean"):
    """``[n, H, C] -> [n, P * C]``: the direction (L2-normalized) of the mean stripe of each of the
    ``P`` windows of ``pooling`` (:func:`_windows`), scaled by ``1 / sqrt(P)``: the local part of the
    ``pooled_weight`` shortlist score, ``|dp|^2`` then being the mean over the windows of their
    squared distances (normalized: its scale does not depend on how alike an item's stripes are,
    or on the pooling, so one weight suits galleries of different models)."""
    win = _windows(local.shape[1], pooling)
    parts = [torch.nn.functional.normalize(local[:, a:b].mean(1), dim=1) for a, b in win]
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, 1) * (1.0 / math.sqrt(len(parts)))


class _RunningSmallest:
    """The ``k`` smallest keys of each query over the chunks of a gallery, by (value, id).

    ``add(key [Q, n], ids [n])`` takes a chunk (ids ascending and above those of earlier
    chunks); ``result()`` gives ``(values [Q, <= k], ids)``, sorted by (value, id). While the
    lists fill up a chunk's ``k`` smallest are merged at once. After that only the entries
    below a query's k-th value as of the last merge can enter (an equal value has a larger id:
    chunks come in id order), so those are picked by one comparison and kept aside; they are
    merged (one sort of ``[Q, k + pending]``) only once about ``4 k`` columns are pending, or
    at the end. A stale k-th value only lets a few more entries through: the answer is the
    same as merging every chunk. A chunk where many entries pass (e.g. a gallery in decreasing
    distance order) contributes its own ``k`` smallest instead."""

    def __init__(self, k: int):
        self.k = k
        self.best = None
        self.pending: List = []
        self.cols = 0

    def _merge(self):
        if self.pending:
            parts = ([self.best] if self.best is not None else []) + self.pending
            self.best = _merge.merge_topk(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1),
                                          self.k)
            self.pending, self.cols = [], 0

    def _keep(self, v, i):
        self.pending.append((v, i))
        self.cols += v.shape[1]
        if self.cols >= 4 * self.k:
            self._merge()

    def add(self, key, ids):
        Q, n = key.shape
        k = self.k
        if self.best is None or self.best[0].shape[1] < k:
            self._merge()
            v, i = _stable_smallest(key, min(k, n))
            part = (v, ids[i])
            self.best = part if self.best is None else _merge.merge_parts([self.best, part], k, Q, key.dtype,
                                                                         key.device)
            return
        thr = self.best[0][:, -1:]
        if key.device.type == "cpu":  # numpy's flatnonzero: several times faster than torch's nonzero here
            flat = torch.from_numpy(np.flatnonzero(key.numpy() < thr.numpy()))
            r, c = flat // n, flat % n
        else:
            r, c = (key < thr).nonzero(as_tuple=True)
        if r.numel() == 0:
            return
        cnt = torch.bincount(r, minlength=Q)
        m = int(cnt.max())
        if m > max(k, n // 32):
            v, i = _stable_smallest(key, min(k, n))
            self._keep(v, ids[i])
            return
        pos = torch.arange(r.numel(), device=key.device) - (cnt.cumsum(0) - cnt)[r]
        cv = torch.full((Q, m), float("inf"), dtype=key.dtype, device=key.device)
        ci = torch.full((Q, m), _merge.PAD_ID, dtype=torch.int64, device=key.device)
        cv[r, pos], ci[r, pos] = key[r, c], ids[c]
        self._keep(cv, ci)

    def result(self):
        self._merge()
        return self.best


class GalleryIndex:
    """Gallery features for search by ``global + lam * local``.

    Args:
        dtype: storage of the features, ``float16``, ``float32`` (default) or ``float64``
            (float16 halves the memory; distances are computed in float32, float64 for
            float64 storage).
        device: where the features live and the distances are computed (``"cpu"``,
            ``"cuda"``).
        lam, metric, normalize, gamma, band: defaults of :meth:`search` (the fusion weight,
            the global metric ``euclidean`` / ``sqeuclidean`` / ``cosine``, and the options
            of :func:`partdist.local_dist`); saved with the index.
        meta: free-form ``str -> str/int/float`` information saved with the index (e.g.
            the checkpoint the features came from).
    """

    def __init__(self, *, dtype="float32", device="cpu", lam: float = 1.0, metric: str = "euclidean",
                 normalize: bool = True, gamma: float = 0.0, band: Optional[float] = None,
                 meta: Optional[Dict] = None):
        op = "GalleryIndex"
        self.dtype = _dtype(op, dtype)
        self.device = torch.device(device)
        self._check_options(op, lam, metric)
        self.lam, self.metric = float(lam), metric
        self.normalize, self.gamma, self.band = bool(normalize), float(gamma), band
        self.meta = dict(meta or {})
        self.dim = self.stripes = self.channels = None
        self._glob: List[torch.Tensor] = []
        self._loc: List[torch.Tensor] = []
        self._ids: List[torch.Tensor] = []
        self._pids: Optional[List[torch.Tensor]] = []
        self._cams: Optional[List[torch.Tensor]] = []
        self._paths: Optional[List[str]] = []
        self._n = 0
        self._next_id = 0
        self._has_local: Optional[bool] = None
        self._faiss = self._pooled = self._sq = None

    # ----------------------------------------------------------------------------------
    # contents
    # ----------------------------------------------------------------------------------

    @staticmethod
    def _check_options(op, lam, metric):
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"{op}: lam must be a finite number >= 0, got {lam!r}")
        if metric not in _METRICS:
            raise ValueError(f"{op}: metric must be one of {_METRICS}, got {metric!r}")

    def __len__(self):
        """Items held by this process (this rank's shard under torch.distributed)."""
        return self._n

    @property
    def has_local(self) -> bool:
        return bool(self._has_local)

    def add(self, global_features: torch.Tensor, local_features: Optional[torch.Tensor] = None, *,
            ids=None, pids=None, camids=None, paths: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Add ``n`` gallery items; returns their ids.

        Args:
            global_features: ``[n, D]``.
            local_features: ``[n, H, C]`` stripe features, or ``None`` for a global-only
                index (every ``add`` must then omit them).
            ids: ``n`` distinct int64 global ids (default: following the largest id so far,
                from 0). Under torch.distributed give ids that are unique over all ranks
                (e.g. the item's position in the whole gallery).
            pids, camids: optional person / camera ids (for :func:`rank_metrics`).
            paths: optional image paths (shown by ``partdist search``).
        """
        op = "GalleryIndex.add"
        g = _feat(op, "global_features", global_features, 2, "[n, D]")
        n = g.shape[0]
        if self.dim is not None and g.shape[1] != self.dim:
            raise ValueError(f"{op}: global_features has D = {g.shape[1]} features but the index holds D = "
                             f"{self.dim} (features of one gallery must come from one model)")
        if local_features is not None:
            l_ = _feat(op, "local_features", local_features, 3, "[n, H, C]")
            if l_.shape[0] != n:
                raise ValueError(f"{op}: global_features and local_features must describe the same items, got "
                                 f"{n} and {l_.shape[0]} rows")
            if self._has_local is False:
                raise ValueError(f"{op}: the index was built without local_features; add every item without them")
            if self.stripes is not None and tuple(l_.shape[1:]) != (self.stripes, self.channels):
                raise ValueError(f"{op}: local_features has [H, C] = {list(l_.shape[1:])} but the index holds "
                                 f"[{self.stripes}, {self.channels}] (features of one gallery must come from one model)")
        elif self._has_local:
            raise ValueError(f"{op}: the index holds local (stripe) features: pass local_features [n, H, C]")
        if ids is None:
            ids_t = torch.arange(self._next_id, self._next_id + n, dtype=torch.int64)
        else:
            ids_t = torch.as_tensor(ids)
            if ids_t.dtype.is_floating_point or ids_t.dtype == torch.bool or ids_t.dim() != 1 or ids_t.shape[0] != n:
                raise ValueError(f"{op}: ids must be {n} integers, got {list(ids_t.shape)} {ids_t.dtype}")
            ids_t = ids_t.to(torch.int64).cpu()
            if n and (int(ids_t.min()) < 0 or int(ids_t.max()) == _merge.PAD_ID):
                raise ValueError(f"{op}: ids must be >= 0 and < 2**63 - 1")
        pids_t, cams_t = _labels(op, "pids", pids, n), _labels(op, "camids", camids, n)
        if paths is not None and len(paths) != n:
            raise ValueError(f"{op}: paths must have {n} entries, got {len(paths)}")
        gs = g.detach().to(self.device, self.dtype)
        ls = None if local_features is None else local_features.detach().to(self.device, self.dtype)
        for name, t in (("global_features", gs), ("local_features", ls)):
            if t is not None and n and not bool(torch.isfinite(t).all()):
                hint = " (or out of the float16 range: use dtype='float32')" if self.dtype == torch.float16 else ""
                raise ValueError(f"{op}: {name} has NaN or infinite values{hint}")
        # commit
        self.dim = g.shape[1]
        if ls is not None:
            self.stripes, self.channels = ls.shape[1], ls.shape[2]
        self._has_local = ls is not None
        self._glob.append(gs)
        if ls is not None:
            self._loc.append(ls)
        self._ids.append(ids_t)
        self._pids = None if (pids_t is None or self._pids is None) else self._pids + [pids_t]
        self._cams = None if (cams_t is None or self._cams is None) else self._cams + [cams_t]
        self._paths = None if (paths is None or self._paths is None) else self._paths + list(paths)
        self._n += n
        if n:
            self._next_id = max(self._next_id, int(ids_t.max()) + 1)
        self._faiss = self._pooled = self._sq = None
        return ids_t

    def _consolidate(self):
        """One tensor per field, rows sorted by id (ties in distance go to the smaller id)."""
        if len(self._ids) == 1 and getattr(self, "_sorted", False):
            return
        cat = lambda xs, empty: torch.cat(xs) if xs else empty  # noqa: E731
        ids = cat(self._ids, torch.empty(0, dtype=torch.int64))
        glob = cat(self._glob, torch.empty((0, self.dim or 0), dtype=self.dtype, device=self.device))
        loc = torch.cat(self._loc) if self._loc else None
        pids = cat(self._pids, torch.empty(0, dtype=torch.int64)) if self._pids is not None else None
        cams = cat(self._cams, torch.empty(0, dtype=torch.int64)) if self._cams is not None else None
        paths = self._paths
        if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
            order = torch.argsort(ids, stable=True)
            ids = ids[order]
            if bool((ids[1:] == ids[:-1]).any()):
                dup = int(ids[1:][ids[1:] == ids[:-1]][0])
                raise ValueError(f"GalleryIndex: id {dup} was added twice; every gallery item needs its own id")
            dev_order = order.to(self.device)
            glob = glob[dev_order]
            loc = None if loc is None else loc[dev_order]
            pids = None if pids is None else pids[order]
            cams = None if cams is None else cams[order]
            paths = None if paths is None else [paths[i] for i in order.tolist()]
        self._ids, self._glob = [ids], [glob]
        self._loc = [] if loc is None else [loc]
        self._pids = None if pids is None else [pids]
        self._cams = None if cams is None else [cams]
        self._paths = paths
        self._sorted = True

    @property
    def ids(self) -> torch.Tensor:
        """Global ids of this process's items, ascending (int64, CPU)."""
        self._consolidate()
        return self._ids[0]

    @property
    def global_features(self) -> torch.Tensor:
        self._consolidate()
        return self._glob[0]

    @property
    def local_features(self) -> Optional[torch.Tensor]:
        self._consolidate()
        return self._loc[0] if self._loc else None

    @property
    def pids(self) -> Optional[torch.Tensor]:
        self._consolidate()
        return None if self._pids is None or not self._n else self._pids[0]

    @property
    def camids(self) -> Optional[torch.Tensor]:
        self._consolidate()
        return None if self._cams is None or not self._n else self._cams[0]

    @property
    def paths(self) -> Optional[List[str]]:
        self._consolidate()
        return self._paths if self._n else None

    def memory_bytes(self) -> int:
        """Bytes of the stored features and ids of this process."""
        self._consolidate()
        n = self.global_features.numel() * self.global_features.element_size() + self._n * 8
        if self.local_features is not None:
            n += self.local_features.numel() * self.local_features.element_size()
        return n

    def to(self, device) -> "GalleryIndex":
        """Move the features to ``device`` (in place); returns ``self``."""
        self._consolidate()
        self.device = torch.device(device)
        self._glob = [t.to(self.device) for t in self._glob]
        self._loc = [t.to(self.device) for t in self._loc]
        self._faiss = self._pooled = self._sq = None
        return self

    def shard(self, rank: int, world_size: int) -> "GalleryIndex":
        """A new index with the ``rank``-th of ``world_size`` contiguous parts of this one (by
        id order; sizes differ by at most one, empty parts when ``world_size > len(self)``)."""
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"GalleryIndex.shard: need 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        s, e = (self._n * rank) // world_size, (self._n * (rank + 1)) // world_size
        return self._rows_copy(s, e)

    def _rows_copy(self, s, e):
        self._consolidate()
        out = GalleryIndex(dtype=self.dtype, device=self.device, lam=self.lam, metric=self.metric,
                           normalize=self.normalize, gamma=self.gamma, band=self.band, meta=self.meta)
        out.dim, out.stripes, out.channels, out._has_local = self.dim, self.stripes, self.channels, self._has_local
        out._ids, out._glob = [self.ids[s:e].clone()], [self.global_features[s:e].clone()]
        out._loc = [] if self.local_features is None else [self.local_features[s:e].clone()]
        out._pids = None if self._pids is None else [self._pids[0][s:e].clone()]
        out._cams = None if self._cams is None else [self._cams[0][s:e].clone()]
        out._paths = None if self._paths is None else self._paths[s:e]
        out._n, out._sorted = e - s, True
        out._next_id = int(out._ids[0].max()) + 1 if e > s else 0
        return out

    # ----------------------------------------------------------------------------------
    # save / load
    # ----------------------------------------------------------------------------------

    def state_dict(self) -> Dict:
        """The plain (code-free) dict that :meth:`save` writes."""
        self._consolidate()
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dtype": _dtype_name(self.dtype),
            "options": {"lam": self.lam, "metric": self.metric, "normalize": self.normalize, "gamma": self.gamma,
                        "band": self.band},
            "meta": dict(self.meta),
            "dim": self.dim,
            "stripes": self.stripes,
            "channels": self.channels,
            "ids": self.ids,
            "global": self.global_features.cpu(),
            "local": None if self.local_features is None else self.local_features.cpu(),
            "pids": self.pids,
            "camids": self.camids,
            "paths": self.paths,
        }

    def save(self, path, overwrite: bool = False) -> None:
        """Write the index (this process's shard) to ``path`` (``torch.save`` of a plain dict of
        tensors, strings and numbers; read back with ``weights_only=True``). An existing file
        is kept unless ``overwrite``; the file appears whole or not at all."""
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"GalleryIndex.save: {path!r} exists; pass overwrite=True (CLI: --overwrite) "
                                  "or choose another path")
        if self._n == 0 and self.dim is None:
            raise ValueError("GalleryIndex.save: the index is empty and has no feature sizes yet; add items first")
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path, *, device="cpu", shard=None, mmap: bool = True) -> "GalleryIndex":
        """Read an index written by :meth:`save`.

        Args:
            device: where to put the features.
            shard: ``(rank, world_size)`` keeps only that contiguous part of the file's items
                (see :meth:`shard`); with ``mmap`` only that part is read into memory.
            mmap: map the file instead of reading it whole.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a partdist gallery index, is corrupt or truncated,
                or was written in another format version.
        """
        op = "GalleryIndex.load"
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{op}: no index file at {path!r} (build one with `partdist index` or "
                                    "GalleryIndex.save)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
                AttributeError, TypeError, IndexError, MemoryError, OSError) as e:
            raise ValueError(f"{op}: {path!r} is not a readable partdist gallery index (corrupt or truncated "
                             f"file, or another kind of file): {type(e).__name__}: {str(e)[:300]}") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ValueError(f"{op}: {path!r} is not a partdist gallery index (no '{FORMAT}' format tag); "
                             "build one with `partdist index` or GalleryIndex.save")
        ver = obj.get("version")
        if ver != FORMAT_VERSION:
            raise ValueError(f"{op}: {path!r} is a gallery index of format version {ver!r}, but this partdist "
                             f"reads version {FORMAT_VERSION}; rebuild it with this version's `partdist index` "
                             "(or read it with the partdist version that wrote it)")
        idx = cls._from_state(op, path, obj, device)
        if shard is not None:
            if not (isinstance(shard, (tuple, list)) and len(shard) == 2):
                raise ValueError(f"{op}: shard must be (rank, world_size), got {shard!r}")
            idx = idx.shard(int(shard[0]), int(shard[1]))
        return idx.to(device)

    @classmethod
    def _from_state(cls, op, path, obj, device):
        def bad(what):
            return ValueError(f"{op}: {path!r} has an unexpected layout ({what}); it was not written by "
                              f"GalleryIndex.save of format version {FORMAT_VERSION}, or it was modified")

        need = ("dtype", "options", "meta", "dim", "stripes", "channels", "ids", "global", "local", "pids", "camids",
                "paths")
        missing = [k for k in need if k not in obj]
        if missing:
            raise bad(f"missing {', '.join(missing)}")
        if obj["dtype"] not in _DTYPES:
            raise bad(f"dtype {obj['dtype']!r}")
        o = obj["options"]
        if not isinstance(o, dict) or set(o) != {"lam", "metric", "normalize", "gamma", "band"}:
            raise bad("options")
        try:
            idx = cls(dtype=obj["dtype"], lam=o["lam"], metric=o["metric"], normalize=o["normalize"],
                      gamma=o["gamma"], band=o["band"], meta=obj["meta"])
        except (ValueError, TypeError) as e:
            raise bad(str(e)) from None
        ids, g, l_ = obj["ids"], obj["global"], obj["local"]
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.dim() != 1:
            raise bad("ids")
        n = ids.shape[0]
        dt = _DTYPES[obj["dtype"]]
        if not isinstance(g, torch.Tensor) or g.dtype != dt or g.dim() != 2 or g.shape[0] != n or g.shape[1] != obj["dim"]:
            raise bad("global features")
        if l_ is not None and (not isinstance(l_, torch.Tensor) or l_.dtype != dt or
                               tuple(l_.shape) != (n, obj["stripes"], obj["channels"])):
            raise bad("local features")
        for k in ("pids", "camids"):
            t = obj[k]
            if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or tuple(t.shape) != (n,)):
                raise bad(k)
        paths = obj["paths"]
        if paths is not None and (not isinstance(paths, list) or len(paths) != n):
            raise bad("paths")
        if n > 1 and not bool((ids[1:] > ids[:-1]).all()):
            raise bad("ids not strictly increasing")
        idx.dim, idx.stripes, idx.channels = obj["dim"], obj["stripes"], obj["channels"]
        idx._has_local = l_ is not None
        idx._ids, idx._glob = [ids], [g]
        idx._loc = [] if l_ is None else [l_]
        idx._pids = None if obj["pids"] is None else [obj["pids"]]
        idx._cams = None if obj["camids"] is None else [obj["camids"]]
        idx._paths = paths
        idx._n, idx._sorted = n, True
        idx._next_id = int(ids[-1]) + 1 if n else 0
        return idx

    # ----------------------------------------------------------------------------------
    # search
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

    def search(self, q_global: torch.Tensor, q_local: Optional[torch.Tensor] = None, k: int = 10, *,
               mode: str = "exact", shortlist: int = 100, pooled_weight: float = 0.0, pooling: str = "mean",
               rerank: bool = False,
               k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3, backend: str = "torch", faiss_factory: str = "Flat",
               faiss_params: str = "",
               lam: Optional[float] = None, metric: Optional[str] = None, distributed: Optional[bool] = None,
               group=None, block_queries: Optional[int] = None, chunk_rows: Optional[int] = None,
               progress: bool = False) -> SearchResult:
        """The ``k`` nearest gallery items of each query by ``global + lam * local``.

        Args:
            q_global: ``[Q, D]`` query global features.
            q_local: ``[Q, H', C]`` query stripe features; needed when ``lam > 0`` and the
                index holds local features.
            k: results per query, ``1 <= k <=`` gallery size (over all ranks).
            mode: ``"exact"`` (fused distance to every gallery item) or ``"two-stage"``
                (``shortlist`` nearest by the global distance, then the fused distance of
                those only).
            shortlist: K', the candidates per query of the two-stage mode (cut to the
                gallery size). With K' = gallery size the result equals the exact mode's.
            pooled_weight: two-stage, ``w >= 0``: with ``w > 0`` the shortlist is the ``shortlist``
                nearest by ``|dg|^2 + w * |dp|^2`` (``dg``: the global difference, normalized
                features for ``cosine``; ``dp``: the difference of the L2-normalized mean stripes), a
                cheap proxy of the fused distance computed by the same one GEMM (``D + C``
                columns instead of ``D``); the candidates are then scored by the exact fused
                distance as with ``w = 0`` (the global distance only).
            pooling: the stripes pooled for ``pooled_weight``: ``"mean"`` (all stripes, ``C``
                columns) or ``"halves"`` (the normalized means of an upper and a lower window of
                5/8 of the stripes each, overlapping, ``2 C`` columns; ``|dp|^2`` is the mean of the
                two windows' squared distances). ``"halves"`` follows a stripe's identity better
                under a shift of the crop (see docs/benchmarks.md, gallery search).
            rerank: two-stage only: k-reciprocal re-ranking (``k1``, ``k2``,
                ``lambda_value``) of each query against its shortlist; the returned
                distances are then the re-ranked ones.
            backend: shortlist search, ``"torch"`` (exact GEMM top-k) or ``"faiss"`` (a FAISS
                index built from ``faiss_factory``, e.g. ``"Flat"``, ``"SQfp16"``,
                ``"HNSW32"``, ``"IVF4096,SQfp16"``; ``pip install partdist[faiss]``). Built at the
                first FAISS search (IVF: trained on up to 2^18 items) and kept until the index changes.
            faiss_params: FAISS search parameters, e.g. ``"nprobe=32"`` (IVF) or
                ``"efSearch=128"`` (HNSW), set with ``faiss.ParameterSpace`` before each search.
            lam, metric: override the index's defaults.
            distributed: search the shards of all ranks of ``group`` (collective: every rank
                calls with the same queries). Default: when torch.distributed is
                initialized with more than one rank.
            block_queries: queries per streamed block (default: about 64 MiB a block).
            chunk_rows: gallery rows converted to the compute dtype at a time.
            progress: show progress bars (on rank 0).

        Returns:
            :class:`SearchResult` ``(distances [Q, k], ids [Q, k])``; equal ids in the order
            (distance, id). Every rank gets the same result.
        """
        op = "GalleryIndex.search"
        lam = self.lam if lam is None else lam
        metric = self.metric if metric is None else metric
        self._check_options(op, lam, metric)
        if mode not in _MODES:
            raise ValueError(f"{op}: mode must be one of {_MODES}, got {mode!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"{op}: backend must be one of {_BACKENDS}, got {backend!r}")
        if rerank and mode != "two-stage":
            raise ValueError(f"{op}: rerank=True needs mode='two-stage' (re-ranking is restricted to the shortlist)")
        k = _check_pos_int(op, "k", k)
        shortlist = _check_pos_int(op, "shortlist", shortlist)
        if (isinstance(pooled_weight, bool) or not isinstance(pooled_weight, numbers.Real)
                or not math.isfinite(pooled_weight) or pooled_weight < 0):
            raise ValueError(f"{op}: pooled_weight must be a finite number >= 0, got {pooled_weight!r}")
        pooled_weight = float(pooled_weight)
        if pooling not in _POOLINGS:
            raise ValueError(f"{op}: pooling must be one of {_POOLINGS}, got {pooling!r}")
        for name, v in (("faiss_factory", faiss_factory), ("faiss_params", faiss_params)):
            if not isinstance(v, str):
                raise TypeError(f"{op}: {name} must be a string, got {type(v).__name__}")
        if pooled_weight and backend == "faiss":
            raise ValueError(f"{op}: pooled_weight > 0 needs backend='torch' (the FAISS shortlist is by the global "
                             "distance only)")
        block_queries = _check_pos_int(op, "block_queries", block_queries, allow_none=True)
        chunk_rows = _check_pos_int(op, "chunk_rows", chunk_rows, allow_none=True)
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
        if pooled_weight and not use_local:
            raise ValueError(f"{op}: pooled_weight > 0 scores the shortlist with the stripe features: it needs an "
                             "index with local features, q_local and lam > 0 (or pooled_weight=0)")
        cd = self._compute_dtype()
        qg = qg.detach().to(self.device, cd)
        ql = q_local.detach().to(self.device, cd) if use_local else None
        for name, t in (("q_global", qg), ("q_local", ql)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{op}: {name} has NaN or infinite values")

        # sizes over all ranks; every rank must search the same queries
        if use_dist:
            info = _merge.all_gather_ints([self._n, qg.shape[0], qg.shape[1], k, shortlist, int(use_local),
                                           _MODES.index(mode), int(rerank)], group)
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
        if qg.shape[0] == 0:
            e = torch.empty((0, k), device=self.device)
            return SearchResult(e.to(cd), e.to(torch.int64))
        opts = dict(lam=float(lam), metric=metric, use_local=use_local, block_queries=block_queries,
                    chunk_rows=self._chunk_rows(chunk_rows), show=progress and rank == 0)
        if mode == "exact":
            v, i = self._exact_shard(qg, ql, k, **opts)
            if use_dist:
                v, i = _merge.merge_ranks(v, i, k, group)
            return SearchResult(v, i)
        kk = min(shortlist, total)
        if rerank and kk <= k1:
            raise ValueError(f"{op}: rerank needs a shortlist longer than k1 = {k1}, got {kk} (raise shortlist, "
                             "or lower k1)")
        if backend == "faiss":
            sk, si = self._faiss_shortlist(qg, kk, metric, faiss_factory, faiss_params)
        else:
            sk, si = self._shortlist_keys(qg, ql, kk, metric, pooled_weight, pooling, block_queries,
                                          opts["chunk_rows"], opts["show"])
        if use_dist:
            sk, si = _merge.merge_ranks(sk, si, kk, group)
        rows, own = self._locate(si)
        if backend == "faiss" or pooled_weight:  # keys are not the global distances: compute those
            sv = self._shortlist_pairs(qg, rows, own, False, metric, opts["show"])
            if use_dist:
                sv = _merge.sum_owned(sv, group)
        else:
            sv = self._key_to_distance(sk, qg, metric)
        fused = sv
        if use_local:
            loc = self._shortlist_pairs(ql, rows, own, True, metric, opts["show"])
            if use_dist:
                loc = _merge.sum_owned(loc, group)
            fused = sv + lam * loc
        if rerank:
            fused = self._rerank(qg, ql, rows, own, k1, k2, lambda_value, lam, metric, use_dist, group, rank, world,
                                 opts["show"])
        v, i = _merge.merge_topk(fused, si, k)
        return SearchResult(v, i)

    def _exact_shard(self, qg, ql, k, *, lam, metric, use_local, block_queries, chunk_rows, show):
        """This process's ``min(k, len)`` best by the fused (or global) distance, chunk by chunk."""
        Q = qg.shape[0]
        best = (torch.empty((Q, 0), dtype=qg.dtype, device=self.device),
                torch.empty((Q, 0), dtype=torch.int64, device=self.device))
        ids_dev = self.ids.to(self.device)
        from tqdm import tqdm

        desc = "search (fused)" if use_local else "search (global)"
        with tqdm(total=self._n, desc=desc, unit="item", unit_scale=True, disable=not show, leave=False) as bar:
            for s in range(0, self._n, chunk_rows):
                e = min(s + chunk_rows, self._n)
                gg, gl = self._rows(s, e, local=use_local)
                v, i = partdist.eval.topk_distance(
                    ql, gl, qg, gg, k=min(k, e - s), lam=lam, metric=metric, normalize=self.normalize,
                    gamma=self.gamma, band=self.band, block_rows=block_queries,
                )
                best = _merge.merge_parts([best, (v, ids_dev[s:e][i])], k, Q, qg.dtype, self.device)
                bar.update(e - s)
        return best

    def _pooled_features(self, pooling="mean"):
        """:func:`_pool` of each item's stripes ``[n, P * C]`` (storage dtype), cached per pooling:
        the local part of the ``pooled_weight`` shortlist score."""
        if self._pooled is None:
            self._pooled = {}
        if pooling not in self._pooled:
            cd = self._compute_dtype()
            lf = self.local_features
            width = self.channels * len(_windows(lf.shape[1], pooling))
            out = torch.empty((self._n, width), dtype=self.dtype, device=self.device)
            for s in range(0, self._n, 1 << 16):
                out[s : s + (1 << 16)] = _pool(lf[s : s + (1 << 16)].to(cd), pooling)
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

    def _shortlist_keys(self, qg, ql, kk, metric, pooled_weight, pooling, block_queries, chunk_rows, show):
        """This process's ``min(kk, len)`` best by the shortlist score: one GEMM per (gallery
        chunk, query block) into a reused buffer, each chunk converted to the compute dtype
        once for all queries, and a running top-``kk`` per query.

        The key is ``|x_g|^2 - 2 x_q.x_g`` (the squared euclidean distance less ``|x_q|^2``)
        with ``x`` the global features (``-q.g`` of the normalized features for ``cosine``), and
        with ``pooled_weight = w > 0`` the global features followed by ``sqrt(w)``
        times the pooled stripes (:func:`_pool`): the key of ``|dg|^2 + w |dpooled|^2``, one GEMM
        of ``D + P C`` columns. Chunks and ranks are merged by (key, id),
        so the shortlist does not depend on how the gallery is chunked or sharded. Returns
        ``(keys, ids)``; :meth:`_key_to_distance` gives the global distances (``w = 0``)."""
        from tqdm import tqdm

        Q = qg.shape[0]
        cd = qg.dtype
        if self._n == 0:
            return (torch.empty((Q, 0), dtype=cd, device=self.device),
                    torch.empty((Q, 0), dtype=torch.int64, device=self.device))
        cosine = metric == "cosine"
        qx = torch.nn.functional.normalize(qg, dim=1) if cosine else qg
        pooled = None
        if pooled_weight:
            sw = math.sqrt(pooled_weight)
            qx = torch.cat([qx, sw * _pool(ql, pooling)], 1)
            pooled = self._pooled_features(pooling)
        width = qx.shape[1]
        cr = min(chunk_rows, self._n)
        # all queries in one block when the key buffer stays within _KEY_BYTES
        qb = block_queries or max(1, min(Q, _KEY_BYTES // (chunk_rows * qx.element_size())))
        buf = torch.empty((min(qb, Q), cr), dtype=cd, device=self.device)
        gx = torch.empty((cr, width), dtype=cd, device=self.device)
        ids_dev = self.ids.to(self.device)
        best = [_RunningSmallest(kk) for _ in range((Q + qb - 1) // qb)]
        with tqdm(total=self._n, desc="shortlist", unit="item", unit_scale=True, disable=not show,
                  leave=False) as bar:
            for s in range(0, self._n, cr):
                e = min(s + cr, self._n)
                g = gx[: e - s]
                g[:, : self.dim].copy_(self.global_features[s:e])
                if cosine:
                    g[:, : self.dim] = torch.nn.functional.normalize(g[:, : self.dim], dim=1)
                if pooled is not None:
                    g[:, self.dim :].copy_(pooled[s:e]).mul_(sw)
                bias = torch.zeros((1, e - s), dtype=cd, device=self.device)
                if not cosine:  # cosine: |g|^2 = 1, the key is -q.g (+ the pooled part)
                    bias += self._sq_norms()[s:e]
                if pooled is not None:
                    bias += pooled_weight * self._sq_norms(pooling)[s:e]
                alpha = -1 if cosine and pooled is None else -2
                for j, a in enumerate(range(0, Q, qb)):
                    b = min(a + qb, Q)
                    key = buf[: b - a, : e - s]
                    torch.addmm(bias, qx[a:b], g.t(), beta=1, alpha=alpha, out=key)
                    best[j].add(key, ids_dev[s:e])
                bar.update(e - s)
        best = [b.result() for b in best]
        return torch.cat([b[0] for b in best]), torch.cat([b[1] for b in best])

    @staticmethod
    def _key_to_distance(key, qg, metric):
        """Global distance from the shortlist key (padding stays +inf)."""
        if metric == "cosine":
            return key + 1
        sq = (key + qg.pow(2).sum(1, keepdim=True)).clamp_min(0)
        return sq.sqrt() if metric == "euclidean" else sq

    def _locate(self, ids):
        """Rows of this process holding ``ids`` ``[Q, K]``: ``(rows, owned)``."""
        mine = self.ids.to(ids.device)
        if mine.numel() == 0:
            z = torch.zeros_like(ids)
            return z, torch.zeros_like(ids, dtype=torch.bool)
        rows = torch.searchsorted(mine, ids).clamp_(max=mine.numel() - 1)
        return rows.to(self.device), (mine[rows] == ids).to(self.device)

    def _shortlist_pairs(self, q, rows, own, local, metric, show):
        """Distance of each query to its owned shortlist entries, zeros elsewhere: the DMLI
        distance (:func:`partdist.batch_local_dist`, ``local``) or the global ``metric``
        (:func:`partdist.eval.global_distance`, paired); blocks of pairs, one call per block."""
        from tqdm import tqdm

        Q, K = rows.shape
        cd = self._compute_dtype()
        out = torch.zeros(Q * K, dtype=cd, device=self.device)
        pos = own.flatten().nonzero().flatten()
        qpos, gpos = pos // K, rows.flatten()[pos]
        store = self.local_features if local else self.global_features
        per_pair = (math.prod(q.shape[1:]) + math.prod(store.shape[1:])) * q.element_size()
        blk = max(1, _PAIR_BYTES // per_pair)
        desc = "shortlist: local distance" if local else "shortlist: global distance"
        # the gathered pairs go into buffers reused block after block (fresh memory for every
        # block cost more than the distances: first touch of each page)
        nb = min(blk, pos.numel())
        a_buf = torch.empty((nb, *q.shape[1:]), dtype=q.dtype, device=q.device)
        b_buf = torch.empty((nb, *store.shape[1:]), dtype=cd, device=store.device)
        b_raw = b_buf if store.dtype == cd else torch.empty((nb, *store.shape[1:]), dtype=store.dtype,
                                                            device=store.device)
        with tqdm(total=pos.numel(), desc=desc, unit="pair", unit_scale=True, disable=not show, leave=False) as bar:
            for s in range(0, pos.numel(), blk):
                e = min(s + blk, pos.numel())
                a, b, raw = a_buf[: e - s], b_buf[: e - s], b_raw[: e - s]
                torch.index_select(q, 0, qpos[s:e], out=a)
                torch.index_select(store, 0, gpos[s:e], out=raw)
                if raw is not b:
                    b.copy_(raw)
                if local:
                    out[pos[s:e]] = batch_local_dist(a, b, self.normalize, gamma=self.gamma, band=self.band)
                else:
                    out[pos[s:e]] = partdist.eval.global_distance(a, b, metric, paired=True)
                bar.update(e - s)
        return out.view(Q, K)

    def _rerank(self, qg, ql, rows, own, k1, k2, lambda_value, lam, metric, use_dist, group, rank, world, show):
        """k-reciprocal re-ranking of each query against its shortlist (queries split over the ranks)."""
        from tqdm import tqdm

        Q, K = rows.shape
        cd = self._compute_dtype()
        out = torch.zeros((Q, K), dtype=torch.float32, device=self.device)
        blk = max(1, min(Q, (32 << 20) // max(1, K * 4 * (self.dim + (self.stripes or 0) * (self.channels or 0)))))
        lf = self.local_features if ql is not None else None
        bar = tqdm(total=Q, desc="shortlist: re-ranking", unit="query", disable=not show, leave=False)
        for s in range(0, Q, blk):
            e = min(s + blk, Q)
            own_b, rows_b = own[s:e], rows[s:e]
            gb = torch.zeros((e - s, K, self.dim), dtype=cd, device=self.device)
            gb[own_b] = self.global_features[rows_b[own_b]].to(cd)
            lb = None
            if lf is not None:
                lb = torch.zeros((e - s, K, self.stripes, self.channels), dtype=cd, device=self.device)
                lb[own_b] = lf[rows_b[own_b]].to(cd)
            if use_dist:
                gb = _merge.sum_owned(gb, group)
                lb = None if lb is None else _merge.sum_owned(lb, group)
            for i in range(s, e):
                if i % world != rank:
                    continue
                out[i] = partdist.eval.re_ranking_features(
                    None if lb is None else ql[i : i + 1], None if lb is None else lb[i - s], qg[i : i + 1],
                    gb[i - s], k1=k1, k2=k2, lambda_value=lambda_value, lam=lam, metric=metric,
                    normalize=self.normalize, gamma=self.gamma, band=self.band,
                )[0].to(self.device)
            bar.update(e - s)
        bar.close()
        return _merge.sum_owned(out, group) if use_dist else out

    def _faiss_shortlist(self, qg, kk, metric, factory, params=""):
        op = "GalleryIndex.search"
        try:
            import faiss
        except ImportError:
            raise ImportError(f"{op}: backend='faiss' needs the faiss package: pip install 'partdist[faiss]' "
                              "(or faiss-cpu), or use backend='torch'") from None
        Q = qg.shape[0]
        k_here = min(kk, self._n)
        if k_here == 0:
            return (torch.empty((Q, 0), dtype=qg.dtype, device=self.device),
                    torch.empty((Q, 0), dtype=torch.int64, device=self.device))
        # faiss_params stay set on the cached index: going back to no parameters (FAISS's
        # defaults) rebuilds it rather than keep the last search's parameters silently
        if self._faiss is None or self._faiss[0] != (metric, factory) or (not params and self._faiss[2]):
            fm = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
            try:
                index = faiss.index_factory(self.dim, factory, fm)
            except RuntimeError as e:
                raise ValueError(f"{op}: faiss_factory {factory!r} is not a FAISS index factory string for D = "
                                 f"{self.dim} ({_faiss_reason(e)}); e.g. 'Flat', 'SQfp16', 'HNSW32', "
                                 "'IVF1024,Flat'") from None

            def rows(s, e):
                x = self.global_features[s:e].float().cpu()
                if metric == "cosine":
                    x = torch.nn.functional.normalize(x, dim=1)
                return np.ascontiguousarray(x.numpy())

            if not index.is_trained:  # e.g. IVF: trained on (at most) the first 2**18 items
                index.train(rows(0, min(self._n, 1 << 18)))
            for s in range(0, self._n, 1 << 16):
                index.add(rows(s, min(s + (1 << 16), self._n)))
            self._faiss = ((metric, factory), index, "")
        if params:
            try:
                faiss.ParameterSpace().set_index_parameters(self._faiss[1], params)
            except RuntimeError as e:
                raise ValueError(f"{op}: faiss_params {params!r} do not apply to the {factory!r} index "
                                 f"({_faiss_reason(e)}); e.g. 'nprobe=32' for IVF, 'efSearch=128' for HNSW") from None
            self._faiss = self._faiss[:2] + (params,)
        x = qg.float().cpu()
        if metric == "cosine":
            x = torch.nn.functional.normalize(x, dim=1)
        D, I = self._faiss[1].search(np.ascontiguousarray(x.numpy()), k_here)
        D, I = torch.from_numpy(D), torch.from_numpy(I)
        if metric == "cosine":
            D = -D  # similarity -> a distance order
        ids = torch.where(I >= 0, self.ids[I.clamp(min=0)], torch.full_like(I, _merge.PAD_ID))
        D = torch.where(I >= 0, D, torch.full_like(D, float("inf")))
        v, i = _merge.merge_topk(D.to(qg.dtype), ids, k_here)
        return v.to(self.device), i.to(self.device)

    # ----------------------------------------------------------------------------------
    # labels over all ranks (for evaluation)
    # ----------------------------------------------------------------------------------

    def all_labels(self, distributed: Optional[bool] = None, group=None):
        """``(ids, pids, camids)`` of the whole gallery (all ranks), sorted by id (CPU int64);
        pids / camids are ``None`` when the index has none."""
        op = "GalleryIndex.all_labels"
        use_dist, group = _merge.resolve_group(distributed, group, op)
        self._consolidate()
        has = self._pids is not None and self._cams is not None
        cols = [self.ids] + ([self.pids if self._n else torch.empty(0, dtype=torch.int64),
                              self.camids if self._n else torch.empty(0, dtype=torch.int64)] if has else [])
        mat = torch.stack(cols, 1)
        if use_dist:
            sizes = _merge.all_gather_ints([self._n, int(has)], group)
            if not bool((sizes[:, 1] == int(has)).all()):
                raise ValueError(f"{op}: some ranks' shards have pids/camids and others not")
            m = int(sizes[:, 0].max())
            pad = torch.full((m, mat.shape[1]), -1, dtype=torch.int64)
            pad[: self._n] = mat
            dev = _merge.comm_device(group)
            bufs = [torch.empty_like(pad, device=dev) for _ in range(len(sizes))]
            dist.all_gather(bufs, pad.to(dev), group=group)
            allm = torch.cat([b[: int(n)].cpu() for b, n in zip(bufs, sizes[:, 0])])
            mat = allm[torch.argsort(allm[:, 0])]
        if not has:
            return mat[:, 0].contiguous(), None, None
        return mat[:, 0].contiguous(), mat[:, 1].contiguous(), mat[:, 2].contiguous()


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
    return partdist.eval.evaluate_rank(d, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, ap=ap)
