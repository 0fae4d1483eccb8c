"""Cross-rank (cross-GPU) gathering for batch-hard mining over the global batch.

:func:`all_gather_with_grad` concatenates a tensor over all ranks of a process group
and keeps the gradient path to this rank's shard: its backward returns the slice of
the incoming gradient that belongs to the local rows (no communication in backward).

How the losses use it (``all_ranks=True`` in :mod:`partdist.losses`): every rank
gathers the features and labels of all ranks and computes the loss of the *global*
batch, so the loss value is the same on every rank and equal to the single-process
loss on the concatenated batch, and the gradient that reaches this rank's features is
exactly the single-process gradient of that loss for these rows (the other ranks'
rows are constants here; their own ranks compute their gradient).

Note on DistributedDataParallel: DDP *averages* parameter gradients over the W
ranks. Each rank back-propagates the global loss through its own shard only, so
the averaged parameter gradient of this loss is ``1/W`` of the single-process one;
multiply the loss by ``W`` (``torch.distributed.get_world_size()``) to reproduce
single-process training on the global batch.

Ranks may hold different numbers of rows; they are gathered in rank order.

:func:`init_distributed` sets up the default process group for training from the
environment that ``torchrun`` provides (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``): NCCL on CUDA (one GPU per process, from
``LOCAL_RANK``), gloo on the CPU.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["all_gather_with_grad", "is_distributed", "world_size", "rank", "launched_by_torchrun",
           "init_distributed"]

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed(group=None) -> bool:
    """True when torch.distributed is initialized (then the losses gather over ``group``)."""
    return dist.is_available() and dist.is_initialized()


def world_size(group=None) -> int:
    return dist.get_world_size(group) if is_distributed(group) else 1


def rank(group=None) -> int:
    return dist.get_rank(group) if is_distributed(group) else 0


def launched_by_torchrun() -> bool:
    """True when the process was started by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device="cpu", timeout_s: float = 1800) -> Tuple[int, int, torch.device]:
    """Initialize the default process group from the ``torchrun`` environment.

    ``device`` ``"cuda"`` (or ``"cuda:i"``): backend NCCL, this process uses GPU ``LOCAL_RANK``;
    ``"cpu"``: backend gloo. Returns ``(rank, world_size, device)``. If the group is already
    initialized it is kept.
    """
    dev = torch.device(device)
    if not is_distributed():
        missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"distributed training: the environment lacks {', '.join(missing)}; launch with "
                "`torchrun --nproc_per_node N ...` (or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)"
            )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("distributed training: device 'cuda' requested but CUDA is not available")
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if not is_distributed():
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), dev


def _gather_rows(x: torch.Tensor, group) -> tuple[torch.Tensor, int]:
    """Concatenation of ``x`` over the ranks of ``group`` along dim 0, and this rank's offset."""
    W = dist.get_world_size(group)
    rank = dist.get_rank(group)
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(W)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s.item()) for s in sizes]
    nmax = max(sizes)
    xp = x.contiguous()
    if x.shape[0] < nmax:  # all_gather needs equal shapes: pad, then trim
        xp = torch.cat([xp, xp.new_zeros((nmax - x.shape[0],) + tuple(x.shape[1:]))])
    bufs = [torch.empty_like(xp) for _ in range(W)]
    dist.all_gather(bufs, xp, group=group)
    out = torch.cat([b[:s] for b, s in zip(bufs, sizes)])
    return out, sum(sizes[:rank])


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        out, offset = _gather_rows(x, group)
        ctx.offset, ctx.n = offset, x.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.offset : ctx.offset + ctx.n], None


def all_gather_with_grad(x: torch.Tensor, group: Optional[object] = None) -> torch.Tensor:
    """``torch.cat`` of ``x`` over all ranks of ``group`` (dim 0), differentiable for the local shard.

    Args:
        x: ``[n_r, ...]`` on this rank (``n_r`` may differ between ranks; the other
            dims must agree). Any dtype; integer tensors (labels) are gathered too.
        group: process group (default: the world).

    Returns:
        ``[sum_r n_r, ...]`` in rank order. Rows of this rank carry the gradient back
        to ``x``; rows of other ranks are constants. Without an initialized process
        group, ``x`` itself is returned.
    """
    if not is_distributed(group):
        return x
    if x.requires_grad:
        return _AllGatherWithGrad.apply(x, group)
    return _gather_rows(x, group)[0]
