"""Storage and persistence of a gallery index: the features, ids and labels of this process's
items (rows kept sorted by global id), and the versioned, code-free file format.

:class:`GalleryStore` holds the data; :class:`partdist.search.GalleryIndex` adds the search
strategies on top of it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import zipfile
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from .._checks import check_feature_tensor as _feat
from . import _merge
from .params import check_lam_metric

__all__ = ["GalleryStore", "FORMAT", "FORMAT_VERSION", "device_guard", "on_index_device"]

FORMAT = "partdist.search.GalleryIndex"
FORMAT_VERSION = 2  # 2: the tuning record ("tuning", None when the index was never tuned)
_READABLE_VERSIONS = (1, 2)

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def device_guard(device: torch.device):
    """``torch.cuda.device(device)`` for a CUDA device (kernels, cuBLAS handles, the current
    stream and NCCL's device then follow the index's GPU, not whichever is current), else a no-op."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def on_index_device(method):
    """Run ``method`` under :func:`device_guard` of the index's device."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with device_guard(self.device):
            return method(self, *args, **kwargs)

    run.__on_index_device__ = True
    return run


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



class GalleryStore:
    """Gallery features for search by ``global + lam * local``: storage and persistence.

    Args:
        dtype: storage of the features, ``float16``, ``float32`` (default) or ``float64``
            (float16 halves the memory; distances are computed in float32, float64 for
            float64 storage).
        device: where the features live and the distances are computed (``"cpu"``,
            ``"cuda"``, ``"cuda:1"``; every computation on a GPU runs with that GPU current).
        lam, metric, normalize, gamma, band: defaults of the search (the fusion weight,
            the global metric ``euclidean`` / ``sqeuclidean`` / ``cosine``, and the options
            of :func:`partdist.local_dist`); saved with the index.
        meta: free-form ``str -> str/int/float`` information saved with the index (e.g.
            the checkpoint the features came from).
    """

    def __init__(self, *, dtype="float32", device="cpu", lam: float = 1.0, metric: str = "euclidean",
                 normalize: bool = True, gamma: float = 0.0, band: Optional[float] = None,
                 meta: Optional[Dict] = None):
        op = type(self).__name__
        self.dtype = _dtype(op, dtype)
        self.device = torch.device(device)
        check_lam_metric(op, lam, metric)
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
        self._tuning_state: Optional[Dict] = None
        self._clear_caches()

    def _clear_caches(self):
        """Forget what was derived from the features (the gallery changed or moved)."""
        self._faiss = self._pooled = self._sq = None

    # ----------------------------------------------------------------------------------
    # contents
    # ----------------------------------------------------------------------------------

    def __len__(self):
        """Items held by this process (this rank's shard under torch.distributed)."""
        return self._n

    @property
    def has_local(self) -> bool:
        return bool(self._has_local)

    @on_index_device

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
        self._clear_caches()
        self._tuning_state = None  # tuned on another gallery
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

    def to(self, device) -> "GalleryStore":
        """Move the features to ``device`` (in place); returns ``self``."""
        self._consolidate()
        self.device = torch.device(device)
        with device_guard(self.device):
            self._glob = [t.to(self.device) for t in self._glob]
            self._loc = [t.to(self.device) for t in self._loc]
        self._clear_caches()
        return self


    def shard(self, rank: int, world_size: int) -> "GalleryStore":
        """A new index with the ``rank``-th of ``world_size`` contiguous parts of this one (by
        id order; sizes differ by at most one, empty parts when ``world_size > len(self)``)."""
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"GalleryIndex.shard: need 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        s, e = (self._n * rank) // world_size, (self._n * (rank + 1)) // world_size
        return self._rows_copy(s, e)

    def _rows_copy(self, s, e):
        self._consolidate()
        out = type(self)(dtype=self.dtype, device=self.device, lam=self.lam, metric=self.metric,
                         normalize=self.normalize, gamma=self.gamma, band=self.band, meta=self.meta)
        out.dim, out.stripes, out.channels, out._has_local = self.dim, self.stripes, self.channels, self._has_local
        out._ids, out._glob = [self.ids[s:e].clone()], [self.global_features[s:e].clone()]
        out._loc = [] if self.local_features is None else [self.local_features[s:e].clone()]
        out._pids = None if self._pids is None else [self._pids[0][s:e].clone()]
        out._cams = None if self._cams is None else [self._cams[0][s:e].clone()]
        out._paths = None if self._paths is None else self._paths[s:e]
        out._n, out._sorted = e - s, True
        out._next_id = int(out._ids[0].max()) + 1 if e > s else 0
        out._tuning_state = self._tuning_state  # measured on the whole gallery: valid for its shards
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
            "tuning": self._tuning_state,
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
    def load(cls, path, *, device="cpu", shard=None, mmap: bool = True) -> "GalleryStore":
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
        if ver not in _READABLE_VERSIONS:
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
        tuning = obj.get("tuning")
        need_t = ("version", "k", "lam", "metric", "gallery_size", "max_shortlist", "configs", "widths", "pair_cost",
                  "positions")
        if tuning is not None and (not isinstance(tuning, dict) or any(k not in tuning for k in need_t)
                                   or not isinstance(tuning["positions"], torch.Tensor)
                                   or tuning["positions"].dim() != 3
                                   or tuning["positions"].shape[0] != len(tuning["configs"])):
            raise bad("tuning")
        idx._tuning_state = tuning
        idx._n, idx._sorted = n, True
        idx._next_id = int(ids[-1]) + 1 if n else 0
        return idx

    # ----------------------------------------------------------------------------------
    # labels over all ranks (for evaluation)
    # ----------------------------------------------------------------------------------

    @on_index_device
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

