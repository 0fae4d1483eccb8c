"""The first stage of the two-stage search: the K' best gallery items of each query by a cheap
score, one GEMM per (gallery chunk, query block) and a running top-K'.

The score is the squared euclidean distance of ``x`` less ``|x_q|^2`` (the *key*
``|x_g|^2 - 2 x_q.x_g``; ``-q.g`` of the normalized features for ``cosine``), with ``x`` the
global features, or with ``pooled_weight = w > 0`` the global features followed by the pooled
stripes (:func:`pool`): the key of ``|dg|^2 + w |dp|^2``; with ``w = inf`` the pooled stripes
alone (the key of ``|dp|^2``, ``P C`` columns instead of ``D + P C``). Chunks and ranks are merged by
(key, id), so the shortlist does not depend on how the gallery is chunked or sharded.

Two running top-K' implementations give the same lists:

* :class:`RunningSmallest` (the CPU): after the lists fill up only the entries below a query's
  current K'-th key are picked (``numpy.flatnonzero``) and merged in batches;
* :func:`sync_free_step` (CUDA, and on the CPU on request): ``topk`` of an int64 composite of
  (key bits, column) per chunk and a merge with the running lists, with no host
  synchronization (no ``nonzero``, ``bincount``, ``.item()``): the GPU never waits for the host
  inside the loop. With float16 storage on CUDA the GEMM multiplies the stored float16 rows
  with float32 accumulation (``torch.mm(..., out_dtype=torch.float32)``), the query split into
  a float16 high part and a float16 remainder (two rows per query) so that the keys equal the
  float32 product of the float16 gallery and the float32 query up to the summation order.
"""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import torch

from .. import _C  # noqa: F401  (torch.ops.partdist)
from . import _merge

_ops = torch.ops.partdist

__all__ = ["windows", "pool", "RunningSmallest", "stable_smallest", "sync_free_step", "shortlist_keys",
           "key_to_distance", "split_query"]

_KEY_BYTES = 64 << 20  # CPU: shortlist keys [query block, gallery chunk] computed by one GEMM
_CUDA_KEY_SHARE = 4  # CUDA: a query block's buffers take at most 1/4 of the free memory ...
_CUDA_KEY_MAX = 8 << 30  # ... and at most 8 GiB
_CUDA_BYTES_PER_ENTRY = 24  # key (float32, twice with a split query) + composite (int64) + topk scratch


def windows(h, pooling):
    """The stripe windows ``[(start, stop)]`` of a ``pooling`` over ``h`` stripes: ``"mean"`` all
    of them; ``"halves"`` an upper and a lower window of ``ceil(5 h / 8)`` stripes each, which
    overlap by about a quarter (``[0, 5)`` and ``[3, 8)`` for 8 stripes), so that a shift of a
    stripe moves little of either."""
    if pooling == "mean":
        return [(0, h)]
    n = -(-5 * h // 8)
    return [(0, n), (h - n, h)]


def pool(local, pooling="mean"):
    """``[n, H, C] -> [n, P * C]``: the direction (L2-normalized) of the mean stripe of each of the
    ``P`` windows of ``pooling`` (:func:`windows`), scaled by ``1 / sqrt(P)``: the local part of the
    ``pooled_weight`` shortlist score, ``|dp|^2`` then being the mean over the windows of their
    squared distances (normalized: its scale does not depend on how alike an item's stripes are,
    or on the pooling)."""
    win = windows(local.shape[1], pooling)
    parts = [torch.nn.functional.normalize(local[:, a:b].mean(1), dim=1) for a, b in win]
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, 1) * (1.0 / math.sqrt(len(parts)))


def stable_smallest(d: torch.Tensor, k: int):
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


class RunningSmallest:
    """The ``k`` smallest keys of each query over the chunks of a gallery, by (value, id).

    ``add(key [Q, n], ids [n])`` takes a chunk (ids ascending and above those of earlier
    chunks); ``result()`` gives ``(values [Q, <= k], ids)``, sorted by (value, id). While the
    lists fill up a chunk's ``k`` smallest are merged at once. After that only the entries
    below a query's k-th value as of the last merge can enter (an equal value has a larger id:
    chunks come in id order), so those are picked by one comparison and kept aside; they are
    merged (one sort of ``[Q, k + pending]``) only once about ``4 k`` columns are pending, or
    at the end. A stale k-th value only lets a few more entries through: the answer is the
    same as merging every chunk. A chunk where many entries pass (e.g. a gallery in decreasing
    distance order) contributes its own ``k`` smallest instead. Synchronizes with the host per
    chunk (for the CPU; :func:`sync_free_step` is the GPU's)."""

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
            v, i = stable_smallest(key, min(k, n))
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
            v, i = stable_smallest(key, min(k, n))
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


# --------------------------------------------------------------------------------------
# the loop without host synchronization
# --------------------------------------------------------------------------------------


def _order_key(key: torch.Tensor) -> torch.Tensor:
    """int64 whose order is that of the float32 ``key`` (finite values; -0.0 just below +0.0)
    in the high 32 bits, ready for a column index in the low 32 bits."""
    b = key.view(torch.int32).to(torch.int64)
    b = torch.where(b < 0, -(b & 0x7FFFFFFF) - 1, b)
    return b * (1 << 32)


def chunk_smallest(key: torch.Tensor, k: int):
    """``(values, columns)`` of the ``k`` smallest entries of each row of ``key``, sorted by (value,
    column), with no host synchronization: ``topk`` of the int64 composite (key bits, column)
    for float32 keys, a stable sort of the rows for float64 keys."""
    n = key.shape[1]
    k = min(k, n)
    if key.dtype == torch.float32:
        comp = _order_key(key) + torch.arange(n, device=key.device)
        cols = torch.topk(comp, k, dim=1, largest=False, sorted=True).indices
    else:
        cols = torch.sort(key, dim=1, stable=True).indices[:, :k]
    return key.gather(1, cols), cols


def sync_free_step(best, key: torch.Tensor, ids: torch.Tensor, k: int):
    """The running ``k`` smallest ``best = (values [Q, <= k], ids)`` (or ``None``) merged with a
    chunk's keys ``key [Q, n]`` of the items ``ids [n]``; no host synchronization."""
    v, c = chunk_smallest(key, k)
    part = (v, ids[c])
    if best is None:
        return part
    return _merge.merge_topk(torch.cat([best[0], part[0]], 1), torch.cat([best[1], part[1]], 1), k)


_HALF_GEMM = {}


def split_query(q: torch.Tensor) -> torch.Tensor:
    """``[Q, W]`` float32 -> ``[2 Q, W]`` float16: the rounded rows, then the remainders. With
    float32 accumulation, ``hi . g + lo . g`` equals the float32 ``q . g`` of a float16 ``g`` to
    about 2^-22 relative (the remainder's own rounding), where ``hi . g`` alone is off by 2^-11."""
    hi = q.to(torch.float16)
    return torch.cat([hi, (q - hi.to(q.dtype)).to(torch.float16)], 0)


def half_gemm_available(device: torch.device) -> bool:
    """Whether ``torch.mm(float16, float16, out_dtype=torch.float32)`` runs on ``device``
    (checked once per device, outside any loop)."""
    if device.type != "cuda":
        return False
    key = str(device)
    if key not in _HALF_GEMM:
        try:
            a = torch.zeros((1, 8), dtype=torch.float16, device=device)
            torch.mm(a, a.t(), out_dtype=torch.float32)
            _HALF_GEMM[key] = True
        except (RuntimeError, TypeError, NotImplementedError):
            _HALF_GEMM[key] = False
    return _HALF_GEMM[key]


def _cuda_block(Q, rows, width_factor, device):
    """Queries per block on CUDA: the block's buffers within a share of the free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    budget = min(free // _CUDA_KEY_SHARE, _CUDA_KEY_MAX)
    return max(1, min(Q, budget // (_CUDA_BYTES_PER_ENTRY * width_factor * max(1, rows))))


# --------------------------------------------------------------------------------------
# the shortlist
# --------------------------------------------------------------------------------------


def tf32_may_round(device, dtype) -> bool:
    """Whether cuBLAS may run a float32 GEMM on ``device`` in TF32 under the user's setting
    (read, never changed). The shortlist GEMM then multiplies the TF32-exact split operands that
    partdist's own GEMMs use (``torch.ops.partdist._tf32_split_operands``, csrc/common/matmul.h):
    float32-accurate keys at three TF32 products' cost."""
    return torch.device(device).type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32


def shortlist_keys(index, qg, ql, kk, metric, pooled_weight, pooling, block_queries, chunk_rows, show,
                   sync_free: Optional[bool] = None):
    """This process's ``min(kk, len)`` best by the shortlist score of ``(pooled_weight, pooling)``:
    ``(keys [Q, <= kk], ids)`` sorted by (key, id); :func:`key_to_distance` gives the global
    distances (``pooled_weight = 0``). ``sync_free``: the loop without host synchronization
    (default: on CUDA)."""
    from tqdm import tqdm

    Q = qg.shape[0]
    cd = qg.dtype
    dev = index.device
    n_items = len(index)
    if n_items == 0:
        return (torch.empty((Q, 0), dtype=cd, device=dev), torch.empty((Q, 0), dtype=torch.int64, device=dev))
    sync_free = dev.type == "cuda" if sync_free is None else bool(sync_free)
    cosine = metric == "cosine"
    qx = torch.nn.functional.normalize(qg, dim=1) if cosine else qg
    w = float(pooled_weight or 0.0)
    pooled = None
    alone = math.isinf(w)  # the pooled stripes alone: no global columns
    if alone:
        qx = pool(ql, pooling).to(cd)
        pooled = index._pooled_features(pooling)
    elif w:
        qx = torch.cat([qx, w * pool(ql, pooling)], 1)  # the weight on the query side: x_g is stored as is
        pooled = index._pooled_features(pooling)
    width = qx.shape[1]
    dim = 0 if alone else index.dim
    cr = min(chunk_rows, n_items)
    # float16 storage on CUDA: float16 GEMMs, float32 accumulation and output (cosine: float32 GEMMs,
    # as the gallery rows are normalized in float32)
    half = sync_free and index.dtype == torch.float16 and (alone or not cosine) and half_gemm_available(dev)
    if half:
        qx = split_query(qx)
    if block_queries:
        qb = block_queries
    elif dev.type == "cuda":
        qb = _cuda_block(Q, cr, 2 if half else 1, dev)
    else:  # all queries in one block when the key buffer stays within _KEY_BYTES
        qb = max(1, min(Q, _KEY_BYTES // (chunk_rows * torch.finfo(cd).bits // 8)))
    tf32 = not half and tf32_may_round(dev, cd)
    gdt = torch.float16 if half else cd
    gx = None if (half and pooled is None) else torch.empty((cr, width), dtype=gdt, device=dev)
    buf = None if sync_free else torch.empty((min(qb, Q), cr), dtype=cd, device=dev)
    ids_dev = index.ids.to(dev)
    sq = None if alone else index._sq_norms()  # alone: the key |p_g|^2 - 2 p_q.p_g, whatever the metric
    sqp = index._sq_norms(pooling) if pooled is not None else None
    alpha = -1 if cosine and pooled is None else -2
    n_blocks = (Q + qb - 1) // qb
    best = [None] * n_blocks if sync_free else [RunningSmallest(kk) for _ in range(n_blocks)]
    with tqdm(total=n_items, desc="shortlist", unit="item", unit_scale=True, disable=not show,
              leave=False) as bar:
        for s in range(0, n_items, cr):
            e = min(s + cr, n_items)
            if gx is None:  # float16 global rows, used in place
                g = index.global_features[s:e]
            else:
                g = gx[: e - s]
                if not alone:
                    g[:, :dim].copy_(index.global_features[s:e])
                    if cosine:
                        g[:, :dim] = torch.nn.functional.normalize(g[:, :dim], dim=1)
                if pooled is not None:
                    g[:, dim:].copy_(pooled[s:e])
            bias = torch.zeros((1, e - s), dtype=cd, device=dev)
            if alone:
                bias += sqp[s:e]
            else:
                if not cosine:  # cosine: |g|^2 = 1, the key is -q.g (+ the pooled part)
                    bias += sq[s:e]
                if pooled is not None:
                    bias += w * sqp[s:e]
            for j, a in enumerate(range(0, Q, qb)):
                b = min(a + qb, Q)
                if half:
                    two = torch.mm(torch.cat([qx[a:b], qx[Q + a : Q + b]]), g.t(), out_dtype=torch.float32)
                    key = torch.add(two[: b - a], two[b - a :]).mul_(alpha).add_(bias)
                    best[j] = sync_free_step(best[j], key, ids_dev[s:e], kk)
                elif sync_free:
                    # under TF32 the split operands of partdist's GEMMs (float32-accurate keys)
                    qa, gb = _ops._tf32_split_operands(qx[a:b], g.t()) if tf32 else (qx[a:b], g.t())
                    key = torch.addmm(bias, qa, gb, beta=1, alpha=alpha)
                    best[j] = sync_free_step(best[j], key, ids_dev[s:e], kk)
                else:
                    key = buf[: b - a, : e - s]
                    qa, gb = _ops._tf32_split_operands(qx[a:b], g.t()) if tf32 else (qx[a:b], g.t())
                    torch.addmm(bias, qa, gb, beta=1, alpha=alpha, out=key)
                    best[j].add(key, ids_dev[s:e])
            bar.update(e - s)
    if not sync_free:
        best = [b.result() for b in best]
    return torch.cat([b[0] for b in best]), torch.cat([b[1] for b in best])


def key_to_distance(key, qg, metric):
    """Global distance from the shortlist key of ``pooled_weight = 0`` (padding stays +inf)."""
    if metric == "cosine":
        return key + 1
    sq = (key + qg.pow(2).sum(1, keepdim=True)).clamp_min(0)
    return sq.sqrt() if metric == "euclidean" else sq
