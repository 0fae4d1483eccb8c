"""Drop-in replacements for fast-reid (JDAI-CV/fast-reid, the ``fastreid`` 1.4 package).

Replaces, with the same names, signatures, defaults and return values:

* ``fastreid.modeling.losses.triplet_loss(embedding, targets, margin, norm_feat, hard_mining)``;
* ``fastreid.modeling.losses.utils.euclidean_dist(x, y)`` / ``cosine_dist(x, y)``;
* ``fastreid.evaluation.rank.evaluate_rank(...)`` -> ``(cmc, all_AP, all_INP)``;
* ``fastreid.evaluation.rerank.re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``;
* ``fastreid.evaluation.roc.evaluate_roc(...)`` -> ``(scores, labels)``;
* ``fastreid.utils.compute_dist.build_dist(feat_1, feat_2, metric, **kwargs)`` and
  ``compute_jaccard_distance(features, k1, k2, search_option, fp16)`` (the re-ranking
  fast-reid's evaluator runs with ``TEST.RERANK.ENABLED``), on any device, without faiss.

fast-reid's own code binds these names at import time (its meta-architectures
star-import ``triplet_loss``, its evaluator imports ``build_dist`` at import and
``evaluate_rank`` when it runs), so changing one import in a user's script does not reach
them. :func:`install` rebinds them in fast-reid's modules and says what it did::

    import partdist.compat.fastreid as pdfr
    report = pdfr.install()   # after importing fastreid, before building the trainer
    print(report)             # what was replaced, and what could not be (and why)
    # ... fast-reid training / evaluation as usual; pdfr.uninstall() restores the originals
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import torch

from .._checks import check_features, check_labels
from ._common import _fused, mined_dist, ranking_loss
from ._common import cosine_dist as _cosine_dist
from ._common import euclidean_dist as _euclidean

__all__ = ["triplet_loss", "euclidean_dist", "cosine_dist", "evaluate_rank", "re_ranking", "evaluate_roc",
           "build_dist", "compute_jaccard_distance", "install", "uninstall", "InstallReport"]


# ---------------------------------------------------------------- distances
def euclidean_dist(x, y):
    """fast-reid ``euclidean_dist``: ``sqrt(clamp(xx + yy - 2 * matmul(x, y^T), min=1e-12))`` ``[m, n]``.

    The same operations in the same order (the same values, zero gradient where the
    clamp is active), with a fused backward (one GEMM when ``x`` is ``y``).
    """
    return _euclidean(x, y, "matmul")


def cosine_dist(x, y):
    """fast-reid ``cosine_dist``: ``2 - 2 * normalize(x) @ normalize(y)^T`` ``[m, n]``."""
    return _cosine_dist(x, y)


# ------------------------------------------------------------------- losses
def _softmax_weights(dist, mask):
    max_v = torch.max(dist * mask, dim=1, keepdim=True)[0]
    diff = dist - max_v
    Z = torch.sum(torch.exp(diff) * mask, dim=1, keepdim=True) + 1e-6
    return torch.exp(diff) * mask / Z


def _hard_mined(embedding, targets, norm_feat, dtype):
    """``(dist_ap, dist_an)`` of fast-reid's ``hard_example_mining`` on the masked matrix,
    in ``dtype`` (fast-reid's ``dist * is_pos`` with a float32 mask promotes half
    distances to float32).

    fast-reid takes ``max(dist * is_pos, dim=1)`` and ``min(dist * is_neg + is_pos * 1e9,
    dim=1)``: the first of tied columns gets the gradient; an anchor without negative
    gets ``1e9`` (no gradient); a non-positive column multiplies to 0 and wins the max
    when every positive distance is below 0 (possible for the cosine distance through
    rounding) or is 0 and comes later. The matrix is computed without autograd and the
    gradient of the chosen entries is the formula's, from the two selected rows.
    """
    if norm_feat:
        _, m = mined_dist(embedding, targets, "cosine", zero_ap=True)
    else:
        _, m = mined_dist(embedding, targets, "euclidean_matmul")
    return m.dist_ap.to(dtype), torch.where(m.valid, m.dist_an.to(dtype), 1e9)


def triplet_loss(embedding, targets, margin, norm_feat, hard_mining):
    """fast-reid ``triplet_loss(embedding, targets, margin, norm_feat, hard_mining)``.

    ``embedding [N, C]``, ``targets [N]``. Distances: ``2 - 2 cos`` with ``norm_feat``,
    else Euclidean. ``hard_mining``: batch-hard (see :func:`_hard_mined`), else fast-reid's
    softmax-weighted mining. Loss: ``margin_ranking_loss(dist_an, dist_ap, 1, margin)``
    averaged over all anchors for ``margin > 0``; else ``soft_margin_loss(dist_an -
    dist_ap, 1)``, falling back to margin 0.3 when that is infinite. The installed torch's
    loss functions, so the hinge subgradient is fast-reid's.

    With hard mining the ``N x N`` matrix is computed without autograd and the loss
    back-propagates through the ``2N`` chosen entries only (the gradient autograd gives
    through fast-reid's masked matrix, which is zero elsewhere).
    """
    op = "fastreid.triplet_loss"
    check_features(op, "embedding", embedding, "[N, C]", 2)
    check_labels(op, "targets", targets, embedding.shape[0], "one label per row of embedding")
    # fast-reid's float32 masks promote half distances: the mining and the loss run in float32
    dtype = torch.promote_types(embedding.dtype, torch.float32)
    if hard_mining and (_fused(embedding, embedding) or embedding.dtype in (torch.float16, torch.bfloat16)):
        dist_ap, dist_an = _hard_mined(embedding, targets, norm_feat, dtype)
    elif hard_mining:
        # small float32 / float64 batches: fast-reid's masked max / min itself (fewer
        # operations than the fused mining's, which pays off from _common._SMALL on)
        # (masked_fill gives the same values and gradient as fast-reid's products with
        # 0 / 1 masks, in fewer operations)
        # (under autocast the distance may come out half: fast-reid's float32 masks promote it)
        dist_mat = cosine_dist(embedding, embedding) if norm_feat else euclidean_dist(embedding, embedding)
        dist_mat = dist_mat.to(torch.promote_types(dist_mat.dtype, dtype))
        pos = targets[:, None] == targets[None, :]
        dist_ap = torch.max(dist_mat.masked_fill(~pos, 0), dim=1)[0]
        dist_an = torch.min(dist_mat.masked_fill(pos, 1e9), dim=1)[0]
    else:
        dist_mat = cosine_dist(embedding, embedding) if norm_feat else euclidean_dist(embedding, embedding)
        dist_mat = dist_mat.to(dtype)
        N = dist_mat.size(0)
        is_pos = targets.view(N, 1).eq(targets.view(1, N)).to(dtype)
        is_neg = 1 - is_pos
        dist_ap = dist_mat * is_pos
        dist_an = dist_mat * is_neg
        dist_ap = torch.sum(dist_ap * _softmax_weights(dist_ap, is_pos), dim=1)
        dist_an = torch.sum(dist_an * _softmax_weights(-dist_an, is_neg), dim=1)
    if margin > 0:
        return ranking_loss(dist_ap, dist_an, margin)
    # soft margin; fast-reid falls back to margin 0.3 when it is +inf (chosen on the device:
    # no host synchronization)
    with torch.no_grad():
        overflow = ranking_loss(dist_ap, dist_an, None) == float("inf")
    # the soft margin on zeros where it overflows, so that its backward (NaN at an
    # overflow) is not reached there
    soft = ranking_loss(torch.where(overflow, 0, dist_ap), torch.where(overflow, 0, dist_an), None)
    return torch.where(overflow, ranking_loss(dist_ap, dist_an, 0.3), soft)


# --------------------------------------------------------------- evaluation
def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False,
                  use_cython=True, kind="stable"):
    """fast-reid ``evaluate_rank``: ``(cmc, all_AP, all_INP)``.

    Market-1501 protocol as fast-reid (and torchreid): same-pid-same-camera gallery items
    are dropped, pid ``-1`` items stay as non-matches, ``cmc`` has
    ``min(max_rank, num_gallery)`` entries; ``all_AP`` / ``all_INP`` hold one value per
    query with a true match. With ``use_metric_cuhk03`` fast-reid returns ``(cmc, mAP)``,
    and so does this.

    Tied distances: ``kind="stable"`` (default) ranks them by gallery index, computed by
    :func:`partdist.eval.evaluate_rank`'s C++ operator (no sort of the rows, faster than
    fast-reid's Cython code); ``kind="quicksort"`` sorts every row with numpy's default
    sort as fast-reid does (fast-reid's numbers on a matrix with ties, for the installed
    numpy). ``use_cython`` is accepted and ignored.
    """
    if kind != "stable" and not use_metric_cuhk03:
        from ._rank import rank_with_sort

        return rank_with_sort(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, kind)
    from ..eval.rank import evaluate_rank as _evaluate_rank

    if use_metric_cuhk03:
        return _evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                              use_metric_cuhk03=True, drop_junk=False)
    return _evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, drop_junk=False,
                          per_query=True)


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3):
    """fast-reid ``re_ranking`` (k-reciprocal re-ranking, numpy arrays in, ``[q, g]`` float32 out).

    Computed by :func:`partdist.eval.re_ranking` without the ``(q+g)^2`` intermediates;
    equal to the original up to float32 rounding.
    """
    from ..eval.reranking import re_ranking as _re_ranking

    out = _re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=k1, k2=k2, lambda_value=lambda_value)
    return out.cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def evaluate_roc(distmat, q_pids, g_pids, q_camids, g_camids, use_cython=True, kind="stable"):
    """fast-reid ``evaluate_roc``: ``(scores, labels)`` for a ROC curve.

    For every query (gallery items with its pid and camera dropped), the distances of its
    true matches, then, after those of all queries, the distances of the non-matches;
    ``labels`` is 0 for a match and 1 for a non-match (float64), as fast-reid. Each query's
    entries come in order of distance, ties by gallery index (``kind``: the argsort kind;
    ``"quicksort"`` is numpy's default, fast-reid's order; the ROC curve does not depend
    on it). ``use_cython`` is accepted and ignored (one vectorized pass).
    """
    d = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    order = np.argsort(d, axis=1, kind=kind)
    sd = np.take_along_axis(d, order, axis=1)
    gp, gc = g_pids[order], g_camids[order]
    match = gp == q_pids[:, None]
    keep = ~(match & (gc == q_camids[:, None]))
    scores = np.concatenate([sd[keep & match], sd[keep & ~match]])
    n_pos = int((keep & match).sum())
    labels = np.concatenate([np.zeros(n_pos), np.ones(scores.shape[0] - n_pos)])
    return scores, labels


def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
    """fast-reid ``compute_jaccard_distance``: ``[N, N]`` k-reciprocal Jaccard distance of
    ``features [N, d]`` (numpy, float32; float16 with ``fp16``).

    Computed on the features' device without faiss and without the original's ``N x N``
    dense encodings (see :mod:`partdist.compat._jaccard`); ``search_option`` (which faiss
    index the original uses; options 0-2 need a GPU) is accepted and ignored. Neighbours
    at equal distance are ordered by index. Equal to the original up to float32 rounding
    where no neighbour list changes.
    """
    from ._jaccard import jaccard_distance

    out = jaccard_distance(torch.as_tensor(features), int(k1), int(k2))
    return out.astype(np.float16) if fp16 else out


@torch.no_grad()
def build_dist(feat_1, feat_2, metric="euclidean", **kwargs):
    """fast-reid ``build_dist(feat_1, feat_2, metric="euclidean", **kwargs)`` -> numpy
    ``[m, n]``: ``"euclidean"`` the *squared* distance ``xx + yy - 2 x.y`` (as fast-reid),
    ``"cosine"`` ``1 - cos``, ``"jaccard"`` the query x gallery block of
    :func:`compute_jaccard_distance` of both sets (``k1``, ``k2`` from ``kwargs``).
    """
    if metric not in ("cosine", "euclidean", "jaccard"):
        raise ValueError(f"fastreid.build_dist: metric must be 'cosine', 'euclidean' or 'jaccard', got {metric!r}")
    if metric == "euclidean":
        m, n = feat_1.size(0), feat_2.size(0)
        d = (feat_1 * feat_1).sum(1, keepdim=True).expand(m, n) + (feat_2 * feat_2).sum(1, keepdim=True).expand(n, m).t()
        return d.addmm_(feat_1, feat_2.t(), beta=1, alpha=-2).cpu().numpy()
    if metric == "cosine":
        import torch.nn.functional as F

        return (1 - torch.mm(F.normalize(feat_1, p=2, dim=1), F.normalize(feat_2, p=2, dim=1).t())).cpu().numpy()
    for k in ("k1", "k2"):
        if k not in kwargs:
            raise ValueError(f"fastreid.build_dist: metric='jaccard' needs {k}= (as fast-reid's)")
    feat = torch.cat((feat_1, feat_2), dim=0)
    dist = compute_jaccard_distance(feat, k1=kwargs["k1"], k2=kwargs["k2"], search_option=0)
    return dist[: feat_1.size(0), feat_1.size(0):]


# ------------------------------------------------------------------ install
# Where fast-reid binds each replaced name (module -> names), beyond the module that
# defines it: the meta-architectures star-import ``triplet_loss`` from
# ``fastreid.modeling.losses``; ``reid_evaluation`` imports ``build_dist`` at import and
# ``evaluate_rank`` / ``evaluate_roc`` inside ``ReidEvaluator.evaluate`` (so rebinding them
# in their own modules is enough); ``build_dist`` calls ``compute_jaccard_distance``
# through its module.
_TARGETS = {
    "fastreid.modeling.losses.utils": ("euclidean_dist", "cosine_dist"),
    "fastreid.modeling.losses.triplet_loss": ("triplet_loss", "euclidean_dist", "cosine_dist"),
    "fastreid.modeling.losses": ("triplet_loss",),
    "fastreid.modeling.meta_arch.baseline": ("triplet_loss",),
    "fastreid.modeling.meta_arch.mgn": ("triplet_loss",),
    "fastreid.evaluation.rank": ("evaluate_rank",),
    "fastreid.evaluation.rerank": ("re_ranking",),
    "fastreid.evaluation.roc": ("evaluate_roc",),
    "fastreid.utils.compute_dist": ("build_dist", "compute_jaccard_distance"),
    "fastreid.evaluation.reid_evaluation": ("build_dist",),
}
_NAMES = ("triplet_loss", "euclidean_dist", "cosine_dist", "evaluate_rank", "re_ranking", "evaluate_roc",
          "build_dist", "compute_jaccard_distance")
_saved = []  # (module, name, original) of the current install


class InstallReport(list):
    """What :func:`install` did: the list of ``"module.name"`` it rebound, plus

    * ``failed``: ``{module: reason}`` for each module it could not import (with a hint
      where the cause is known, e.g. fast-reid's ``from collections import Mapping`` on
      Python >= 3.10);
    * ``absent``: modules this version of the package does not have (nothing to replace);
    * ``missing``: ``"module.name"`` expected in an imported module but not found there;
    * ``not_replaced``: the replaceable names rebound nowhere (their originals keep running).

    ``str(report)`` is a readable summary; ``report.ok`` is True when nothing failed.
    """

    def __init__(self, package="fast-reid"):
        super().__init__()
        self.package = package
        self.failed = {}
        self.absent = []
        self.missing = []
        self.not_replaced = []

    @property
    def ok(self):
        return not self.failed and not self.missing and not self.not_replaced

    def __str__(self):
        lines = [f"partdist.compat install for {self.package}: {len(self)} binding(s) replaced"]
        lines += [f"  replaced {n}" for n in self]
        lines += [f"  FAILED to import {m}: {why}" for m, why in self.failed.items()]
        lines += [f"  absent from this version: {m}" for m in self.absent]
        lines += [f"  not found: {n}" for n in self.missing]
        lines += [f"  NOT replaced anywhere: {n}" for n in self.not_replaced]
        return "\n".join(lines)

    __repr__ = __str__


def _import_reason(err):
    msg = f"{type(err).__name__}: {err}"
    if "Mapping" in str(err) and "collections" in str(err):
        msg += (" (the package imports collections.Mapping, removed in Python 3.10: run "
                "`import collections, collections.abc; collections.Mapping = collections.abc.Mapping` "
                "before importing it)")
    elif "faiss" in str(err):
        msg += " (fast-reid's compute_dist needs faiss: pip install faiss-cpu)"
    return msg


def rebind(targets, ours, prefix, extra_modules, report, saved=None):
    """Import ``targets`` (module -> names), collect the original functions bound there,
    and rebind every binding of them in ``prefix*`` modules and ``extra_modules``
    (recorded in ``saved``, this module's install record by default)."""
    saved = _saved if saved is None else saved
    originals = {}
    for mod_name, names in targets.items():
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name is not None and mod_name.startswith(e.name):  # not in this version of the package
                report.absent.append(mod_name)
            else:
                report.failed[mod_name] = _import_reason(e)
            continue
        except Exception as e:  # noqa: BLE001 - reported, never silent
            report.failed[mod_name] = _import_reason(e)
            continue
        for n in names:
            f = getattr(mod, n, None)
            if f is None:
                report.missing.append(f"{mod_name}.{n}")
            elif callable(f) and f is not ours[n] and not isinstance(f, type(sys)):
                originals.setdefault(n, set()).add(f)
    modules = [m for k, m in list(sys.modules.items())
               if m is not None and (k == prefix or k.startswith(prefix + "."))]
    for m in extra_modules:
        modules.append(importlib.import_module(m) if isinstance(m, str) else m)
    bound = set()
    for mod in modules:
        for n, fs in originals.items():
            f = mod.__dict__.get(n)
            if f is not None and any(f is o for o in fs):
                saved.append((mod, n, f))
                setattr(mod, n, ours[n])
                report.append(f"{mod.__name__}.{n}")
        for n in ours:
            if mod.__dict__.get(n) is ours[n]:
                bound.add(n)
    report.not_replaced = [n for n in ours if n not in bound]
    return report


def install(extra_modules=(), verbose=False):
    """Rebind fast-reid's ``triplet_loss``, ``euclidean_dist``, ``cosine_dist``,
    ``evaluate_rank``, ``re_ranking``, ``evaluate_roc``, ``build_dist`` and
    ``compute_jaccard_distance`` to this module's, wherever fast-reid bound them.

    Imports the fast-reid modules listed in ``_TARGETS``, then rebinds the names in every
    imported ``fastreid.*`` module and in ``extra_modules`` (modules or module names,
    e.g. a project's own module that did ``from fastreid.modeling.losses import *``)
    wherever they hold the original function. Idempotent; :func:`uninstall` restores the
    originals.

    Returns an :class:`InstallReport`: the list of ``"module.name"`` rebound by this call,
    with ``failed`` (modules that did not import, and why), ``missing`` and
    ``not_replaced``. A module that fails to import is never skipped silently: it is in
    the report, and with ``verbose`` (or when anything failed) the report is also
    emitted as a :class:`RuntimeWarning`.

    Raises:
        ImportError: fast-reid (``fastreid``) is not importable.
    """
    try:
        importlib.import_module("fastreid")
    except ImportError as e:
        raise ImportError(
            "partdist.compat.fastreid.install: fast-reid is not installed (`import fastreid` failed); "
            "install it, or use the functions of partdist.compat.fastreid directly"
        ) from e
    ours = {n: globals()[n] for n in _NAMES}
    report = rebind(_TARGETS, ours, "fastreid", extra_modules, InstallReport("fast-reid"))
    _warn(report, verbose)
    return report


def _warn(report, verbose):
    if verbose or report.failed or report.missing:
        import warnings

        warnings.warn(str(report), RuntimeWarning, stacklevel=3)


def uninstall():
    """Restore what :func:`install` rebound."""
    while _saved:
        mod, n, f = _saved.pop()
        setattr(mod, n, f)
