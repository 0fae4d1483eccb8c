"""Merging top-k candidate lists (from gallery chunks or from ranks) by ``(distance, id)``.

A candidate list is ``(values [Q, n], ids [Q, n])``. Merging keeps, per query, the ``k``
candidates that come first in the order *increasing distance, then increasing global
id* (NaN after every number). Because that order is a total order on the candidates,
the k best of a union are the k best of the per-part k best: a gallery split into chunks
or shards in any way gives the same answer as the whole gallery at once, as long as every
pair's distance is computed the same way.

Padding (a shard with fewer than ``k`` items, or none) is ``(+inf, PAD_ID)``: it sorts
after every real candidate with a finite distance.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

PAD_ID = torch.iinfo(torch.int64).max


def merge_topk(values: torch.Tensor, ids: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` first candidates of each row of ``(values, ids)`` by (distance, id)."""
    order = torch.argsort(ids, dim=1, stable=True)
    values, ids = values.gather(1, order), ids.gather(1, order)
    order = torch.argsort(values, dim=1, stable=True)[:, :k]
    return values.gather(1, order), ids.gather(1, order)


def merge_parts(parts: List[Tuple[torch.Tensor, torch.Tensor]], k: int, num_queries: int, dtype, device):
    """Merge a list of candidate lists (each ``[Q, n_i]``, possibly empty) into ``[Q, min(k, sum n_i)]``."""
    parts = [p for p in parts if p[0].shape[1] > 0]
    if not parts:
        return (torch.empty((num_queries, 0), dtype=dtype, device=device),
                torch.empty((num_queries, 0), dtype=torch.int64, device=device))
    if len(parts) == 1 and parts[0][0].shape[1] <= k:
        return merge_topk(parts[0][0], parts[0][1], k)
    return merge_topk(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), k)


def pad_to(values: torch.Tensor, ids: torch.Tensor, k: int):
    """Pad ``[Q, n <= k]`` candidate lists to ``[Q, k]`` with ``(+inf, PAD_ID)``."""
    q, n = values.shape
    if n == k:
        return values, ids
    v = torch.full((q, k), float("inf"), dtype=values.dtype, device=values.device)
    i = torch.full((q, k), PAD_ID, dtype=torch.int64, device=ids.device)
    v[:, :n], i[:, :n] = values, ids
    return v, i


# --------------------------------------------------------------------------------------
# torch.distributed
# --------------------------------------------------------------------------------------


def comm_device(group=None) -> torch.device:
    """The device collectives of ``group`` use: the current GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(t: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenation over the ranks of equally shaped ``t`` along dim 1 (rank order)."""
    dev = comm_device(group)
    x = t.to(dev).contiguous()
    bufs = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(bufs, x, group=group)
    return torch.cat(bufs, 1).to(t.device)


def all_gather_ints(values, group=None) -> torch.Tensor:
    """``[W, len(values)]`` int64: the small integer lists of every rank."""
    dev = comm_device(group)
    x = torch.tensor([int(v) for v in values], dtype=torch.int64, device=dev)
    bufs = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(bufs, x, group=group)
    return torch.stack(bufs).cpu()


def sum_owned(t: torch.Tensor, group=None) -> torch.Tensor:
    """All-reduce SUM of a tensor that each rank fills only where it owns the entry (zeros
    elsewhere): exact (``x + 0 = x``), so every rank gets the owners' values bit for bit."""
    dev = comm_device(group)
    x = t.to(dev).contiguous()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x.to(t.device)


def merge_ranks(values: torch.Tensor, ids: torch.Tensor, k: int, group=None):
    """Each rank's ``[Q, k]`` (padded) candidates -> the global ``[Q, k]`` on every rank."""
    v, i = pad_to(values, ids, k)
    return merge_topk(all_gather_cat(v, group), all_gather_cat(i, group), k)


def resolve_group(distributed: Optional[bool], group, op: str):
    """``(use_collectives, group)``. ``distributed=None``: collectives when a process group
    with more than one rank is initialized."""
    ready = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = ready and dist.get_world_size(group) > 1
    if distributed and not ready:
        raise RuntimeError(
            f"{op}: distributed=True needs an initialized torch.distributed process group "
            "(launch with torchrun and call partdist.distributed.init_distributed(), or pass distributed=False)"
        )
    return bool(distributed), group
