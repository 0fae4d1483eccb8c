"""``csrc/rank``: the per-query ranking metrics of the Market-1501 protocol (first true match,
average precision, inverse negative penalty), behind :func:`partdist.eval.evaluate_rank`.

The op has no autograd (its outputs are ranks and metrics); this module adds its fake kernel."""

from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (loads the shared library: registers torch.ops.partdist.*)

__all__ = ["rank_metrics"]


@torch.library.register_fake("partdist::rank_metrics")
def _(distmat, q_pids, g_pids, q_camids, g_camids, drop_junk, devkit):
    Q = distmat.shape[0]
    return (distmat.new_empty(Q, dtype=torch.int64), distmat.new_empty(Q, dtype=torch.float64),
            distmat.new_empty(Q, dtype=torch.float64))


def rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, drop_junk: bool, devkit: bool):
    """``(first, ap, inp)`` per query of ``distmat`` ``[Q, G]`` with int64 ids: the rank of the
    first true match (0: none), the average precision (devkit's definition with ``devkit``)
    and the inverse negative penalty; junk gallery items (pid -1) left out with ``drop_junk``."""
    return torch.ops.partdist.rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, drop_junk, devkit)
