"""Drop-in replacements for fast-reid (JDAI-CV/fast-reid, the ``fastreid`` 1.4 package).

Replaces, with the same names, signatures, defaults and return values:

* ``fastreid.modeling.losses.triplet_loss(embedding, targets, margin, norm_feat, hard_mining)``;
* ``fastreid.modeling.losses.utils.euclidean_dist(x, y)`` / ``cosine_dist(x, y)``;
* ``fastreid.evaluation.rank.evaluate_rank(...)`` -> ``(cmc, all_AP, all_INP)``;
* ``fastreid.evaluation.rerank.re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``.

fast-reid's own code binds these names at import time (its meta-architectures
star-import ``triplet_loss``, its evaluator imports ``evaluate_rank`` when it runs), so
changing one import in a user's script does not reach them. :func:`install` rebinds
them in fast-reid's modules::

    import partdist.compat.fastreid as pdfr
    pdfr.install()            # after importing fastreid, before building the trainer
    # ... fast-reid training / evaluation as usual; pdfr.uninstall() restores the originals
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import torch

from .._checks import check_features, check_labels
from ._common import cosine_dist as _cosine_dist
from ._common import euclidean_dist as _euclidean
from ._common import mined_dist, ranking_loss

__all__ = ["triplet_loss", "euclidean_dist", "cosine_dist", "evaluate_rank", "re_ranking", "install", "uninstall"]


# ---------------------------------------------------------------- distances
def euclidean_dist(x, y):
    """fast-reid ``euclidean_dist``: ``sqrt(clamp(xx + yy - 2 x y^T, min=1e-12))`` ``[m, n]``.

    The same formula (same values, zero gradient where the clamp is active), with a
    fused backward (one GEMM when ``x`` is ``y``).
    """
    return _euclidean(x, y)


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
        _, m = mined_dist(embedding, targets)
    ap, an = m.dist_ap.to(dtype), m.dist_an.to(dtype)
    big = torch.full((), 1e9, dtype=dtype, device=an.device)
    return ap, torch.where(m.valid, an, big)


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
    if hard_mining:
        dist_ap, dist_an = _hard_mined(embedding, targets, norm_feat, dtype)
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
                  use_cython=True):
    """fast-reid ``evaluate_rank``: ``(cmc, all_AP, all_INP)``.

    Market-1501 protocol as fast-reid (and torchreid): same-pid-same-camera gallery items
    are dropped, pid ``-1`` items stay as non-matches, ``cmc`` has
    ``min(max_rank, num_gallery)`` entries; ``all_AP`` / ``all_INP`` hold one value per
    query with a true match. With ``use_metric_cuhk03`` fast-reid returns ``(cmc, mAP)``,
    and so does this. ``use_cython`` is accepted and ignored (:func:`partdist.eval.evaluate_rank`'s C++
    operator, which sorts no row, is faster than fast-reid's Cython code).
    """
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


# ------------------------------------------------------------------ install
# Where fast-reid binds each replaced name (module -> names), beyond the module that
# defines it: the meta-architectures star-import ``triplet_loss`` from
# ``fastreid.modeling.losses``; the evaluator imports ``evaluate_rank`` from
# ``fastreid.evaluation.rank`` inside ``ReidEvaluator.evaluate`` (so rebinding it in that
# module is enough).
_TARGETS = {
    "fastreid.modeling.losses.utils": ("euclidean_dist", "cosine_dist"),
    "fastreid.modeling.losses.triplet_loss": ("triplet_loss", "euclidean_dist", "cosine_dist"),
    "fastreid.modeling.losses": ("triplet_loss",),
    "fastreid.modeling.meta_arch.baseline": ("triplet_loss",),
    "fastreid.modeling.meta_arch.mgn": ("triplet_loss",),
    "fastreid.evaluation.rank": ("evaluate_rank",),
    "fastreid.evaluation.rerank": ("re_ranking",),
}
_saved = []  # (module, name, original) of the current install


def install(extra_modules=()):
    """Rebind fast-reid's ``triplet_loss``, ``euclidean_dist``, ``cosine_dist``,
    ``evaluate_rank`` and ``re_ranking`` to this module's, wherever fast-reid bound them.

    Imports the fast-reid modules listed in ``_TARGETS`` (skipping those this fast-reid
    does not have), then also rebinds the names in every already imported
    ``fastreid.*`` module and in ``extra_modules`` (modules or module names, e.g. a
    project's own module that did ``from fastreid.modeling.losses import *``) wherever
    they hold the original function. Idempotent; :func:`uninstall` restores the originals.

    Returns the list of ``"module.name"`` that were rebound.

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
    ours = {n: globals()[n] for n in ("triplet_loss", "euclidean_dist", "cosine_dist", "evaluate_rank", "re_ranking")}
    originals = {}
    for mod_name, names in _TARGETS.items():
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for n in names:
            f = getattr(mod, n, None)
            if callable(f) and f is not ours[n] and not isinstance(f, type(sys)):
                originals.setdefault(n, set()).add(f)
    modules = [m for k, m in list(sys.modules.items()) if m is not None and (k == "fastreid" or k.startswith("fastreid."))]
    for m in extra_modules:
        modules.append(importlib.import_module(m) if isinstance(m, str) else m)
    done = []
    for mod in modules:
        for n, fs in originals.items():
            f = mod.__dict__.get(n)
            if f is not None and any(f is o for o in fs):
                _saved.append((mod, n, f))
                setattr(mod, n, ours[n])
                done.append(f"{mod.__name__}.{n}")
    return done


def uninstall():
    """Restore what :func:`install` rebound."""
    while _saved:
        mod, n, f = _saved.pop()
        setattr(mod, n, f)
