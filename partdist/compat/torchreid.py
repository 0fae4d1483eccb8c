"""Drop-in replacements for torchreid (KaiyangZhou/deep-person-reid), computed by partdist.

Replaces, with the same names, signatures, defaults and return values:

* ``losses.TripletLoss(margin=0.3)`` (``losses/hard_mine_triplet_loss.py``);
* ``metrics.evaluate_rank(...)`` -> ``(all_cmc, mAP)``;
* ``metrics.compute_distance_matrix(input1, input2, metric="euclidean")``;
* ``utils.re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)``.

In a script of your own, change the import: ``from partdist.compat.torchreid import
TripletLoss`` in place of ``from torchreid.reid.losses import TripletLoss`` (pip's
torchreid 0.2.5 keeps its modules under ``torchreid.reid``; the GitHub source under
``torchreid`` directly). torchreid's engines bind these names at import time
(``ImageTripletEngine`` builds its ``TripletLoss`` itself, ``Engine.test`` calls
``metrics.evaluate_rank``, ``metrics.compute_distance_matrix`` and ``re_ranking``), so to
reach a ``torchreid.engine`` run, call :func:`install` before building the engine::

    import partdist.compat.torchreid as pdtr
    print(pdtr.install())   # what was replaced, and what could not be (and why)
    engine = torchreid.engine.ImageTripletEngine(datamanager, model, optimizer, ...)
    engine.run(...)         # pdtr.uninstall() restores the originals
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_features, check_margin
from ._common import _sq_dist_, mine_split_ties, ranking_loss_valid

__all__ = ["TripletLoss", "evaluate_rank", "compute_distance_matrix", "re_ranking", "install", "uninstall"]


def _labels(op, targets, n):
    """torchreid compares labels with ``eq``: integer or floating labels; floating ones are
    mapped to integer ids (``torch.unique``, which synchronizes with a GPU)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{op}: targets must be a tensor of labels, got {type(targets).__name__}")
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ValueError(f"{op}: targets must have shape [{n}] (one label per row of inputs), got {list(targets.shape)}")
    if targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"{op}: targets must be integer (or floating) labels, got dtype {targets.dtype}")
    if targets.is_floating_point():
        return torch.unique(targets, return_inverse=True)[1]
    return targets


class TripletLoss(nn.Module):
    """Triplet loss with hard positive / negative mining.

    Replaces torchreid ``losses/hard_mine_triplet_loss.py``: ``TripletLoss(margin=0.3)``
    with ``forward(inputs, targets)``: ``inputs [batch_size, feat_dim]`` features,
    ``targets [batch_size]`` labels (integer, or floating as torchreid's ``eq`` allows)
    -> scalar ``MarginRankingLoss(margin)(dist_an, dist_ap, 1)`` over the hardest positive
    (the anchor counts as its own positive) and hardest negative of every anchor on the
    Euclidean distances.

    Same values and gradients as torchreid's: the same distance formula
    (``sqrt(clamp(.., 1e-12))`` of the GEMM form), tied hardest samples share the
    gradient (torchreid's ``dist[i][mask[i]].max()`` is a full reduction), and the hinge
    is the installed torch's ``margin_ranking_loss``. Computed without torchreid's
    per-anchor Python loop and without a host synchronization, backward through the
    chosen pairs only. Anchors without negative (where torchreid raises) are left out of
    the mean; the loss is 0 when none is left. float16 / bfloat16 features: the loss is
    accumulated in float32 and rounded once (float32 under autocast, as torch's losses).
    """

    def __init__(self, margin=0.3):
        super().__init__()
        check_margin("torchreid.TripletLoss", margin)
        self.margin = margin
        self.ranking_loss = nn.MarginRankingLoss(margin=margin)

    def forward(self, inputs, targets):
        op = "torchreid.TripletLoss"
        check_features(op, "inputs", inputs, "[batch_size, feat_dim]", 2)
        targets = _labels(op, targets, inputs.shape[0])
        m = mine_split_ties(inputs, targets)
        return ranking_loss_valid(m.dist_ap, m.dist_an, m.valid, self.margin)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False,
                  use_cython=True, kind="stable"):
    """Replaces ``torchreid.metrics.evaluate_rank``: returns ``(all_cmc, mAP)``.

    Market-1501 protocol as torchreid: gallery items with the query's pid and camera are
    dropped, pid ``-1`` gallery items stay (as non-matches), the CMC has
    ``min(max_rank, num_gallery)`` entries. With ``use_metric_cuhk03``, the CUHK03
    single-shot protocol (CMC averaged over 10 random draws of one gallery image per
    identity; partdist's own draws, so not the same numbers as torchreid's).

    Tied distances: ``kind="stable"`` (default) ranks them by gallery index, computed by
    :func:`partdist.eval.evaluate_rank`'s C++ operator (no sort of the rows, faster than
    torchreid's Cython code); ``kind="quicksort"`` sorts every row with numpy's default
    sort as torchreid does, which gives torchreid's numbers on a matrix with ties (for the
    installed numpy). ``use_cython`` is accepted and ignored.
    """
    if kind != "stable" and not use_metric_cuhk03:
        from ._rank import rank_with_sort

        cmc, aps, _ = rank_with_sort(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, kind)
        return cmc, float(np.mean(aps))
    from ..eval.rank import evaluate_rank as _evaluate_rank

    return _evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                          use_metric_cuhk03=use_metric_cuhk03, drop_junk=False)


def compute_distance_matrix(input1, input2, metric="euclidean"):
    """torchreid ``metrics.compute_distance_matrix``: ``[m, d] x [n, d] -> [m, n]`` tensor,
    ``"euclidean"`` the *squared* distance ``xx + yy - 2 x.y`` (as torchreid) or
    ``"cosine"`` ``1 - cos``; the same formulas, one fused accumulation."""
    op = "torchreid.compute_distance_matrix"
    check_features(op, "input1", input1, "[m, d]", 2)
    check_features(op, "input2", input2, "[n, d]", 2)
    if input1.shape[1] != input2.shape[1]:
        raise ValueError(f"{op}: input1 and input2 must have the same feature dim, got {input1.shape[1]} and "
                         f"{input2.shape[1]}")
    if metric == "euclidean":
        return _sq_dist_(input1, input2)
    if metric == "cosine":
        return 1 - torch.mm(F.normalize(input1, p=2, dim=1), F.normalize(input2, p=2, dim=1).t())
    raise ValueError(f'{op}: unknown distance metric {metric!r}; choose "euclidean" or "cosine"')


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """torchreid ``utils.re_ranking`` (k-reciprocal re-ranking): ``[q, g]`` float32 numpy.

    Takes numpy arrays or tensors (torchreid's ``Engine.test`` passes a numpy ``q_g`` and
    tensor ``q_q`` / ``g_g``). Computed by :func:`partdist.eval.re_ranking` without the
    ``(q+g)^2`` intermediates; equal to the original up to float32 rounding (ties in a
    distance row ordered by index).
    """
    from ..eval.reranking import re_ranking as _re_ranking

    out = _re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=k1, k2=k2, lambda_value=lambda_value)
    return out.cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


# ------------------------------------------------------------------ install
def _prefix():
    """``torchreid.reid`` (pip's torchreid 0.2.5) or ``torchreid`` (the GitHub source)."""
    try:
        importlib.import_module("torchreid.reid")
        return "torchreid.reid"
    except ImportError:
        return "torchreid"


def _targets(p):
    return {
        f"{p}.losses.hard_mine_triplet_loss": ("TripletLoss",),
        f"{p}.losses": ("TripletLoss",),
        f"{p}.engine.image.triplet": ("TripletLoss",),
        f"{p}.metrics.rank": ("evaluate_rank",),
        f"{p}.metrics.distance": ("compute_distance_matrix",),
        f"{p}.metrics": ("evaluate_rank", "compute_distance_matrix"),
        f"{p}.utils.rerank": ("re_ranking",),
        f"{p}.utils": ("re_ranking",),
        f"{p}.engine.engine": ("re_ranking",),
    }


def install(extra_modules=(), verbose=False):
    """Rebind torchreid's ``TripletLoss``, ``evaluate_rank``, ``compute_distance_matrix``
    and ``re_ranking`` to this module's, wherever torchreid bound them (both layouts:
    ``torchreid.reid.*`` of pip's 0.2.5 and ``torchreid.*`` of the source tree), so that
    ``ImageTripletEngine`` builds this ``TripletLoss`` and ``Engine.test`` ranks and
    re-ranks with partdist. Call it before building the engine (an engine built earlier
    keeps the loss it built). ``extra_modules``: more modules (or names) to rebind in.

    Returns an :class:`partdist.compat.fastreid.InstallReport` (a list of the
    ``"module.name"`` rebound, with ``failed``, ``absent``, ``missing``,
    ``not_replaced``); warns when a module failed to import (or always with ``verbose``).
    Idempotent; :func:`uninstall` restores the originals.

    Raises:
        ImportError: torchreid is not importable.
    """
    from . import fastreid as _fr

    try:
        importlib.import_module("torchreid")
    except ImportError as e:
        raise ImportError(
            "partdist.compat.torchreid.install: torchreid is not installed (`import torchreid` failed); "
            "install it, or use the functions of partdist.compat.torchreid directly"
        ) from e
    ours = {"TripletLoss": TripletLoss, "evaluate_rank": evaluate_rank,
            "compute_distance_matrix": compute_distance_matrix, "re_ranking": re_ranking}
    report = _fr.rebind(_targets(_prefix()), ours, "torchreid", extra_modules, _fr.InstallReport("torchreid"),
                        _saved)
    _fr._warn(report, verbose)
    return report


_saved = []  # (module, name, original) of the current install


def uninstall():
    """Restore what :func:`install` rebound."""
    while _saved:
        mod, n, f = _saved.pop()
        setattr(mod, n, f)
