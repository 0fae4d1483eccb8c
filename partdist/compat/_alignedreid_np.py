"""numpy-in / numpy-out pieces shared by :mod:`partdist.compat.alignedreid_repro_utils`
(AlignedReID-Re-Production-Pytorch ``aligned_reid/utils``) and
:mod:`partdist.compat.alignedreid_util` (michuanhaohao/AlignedReID ``util``)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..ops.dmli import local_dist as _local_dist
from ..ops.dmli import unaligned_dist as _unaligned_dist


def normalize(nparray, order=2, axis=0):
    """``nparray / (||nparray||_order + float32 eps)`` along ``axis`` (the originals' numpy
    ``normalize``)."""
    norm = np.linalg.norm(nparray, ord=order, axis=axis, keepdims=True)
    return nparray / (norm + np.finfo(np.float32).eps)


def compute_dist(array1, array2, type="euclidean"):
    """``[m1, n] x [m2, n] -> [m1, m2]``: ``"euclidean"`` ``sqrt(max(-2 a.b + |a|^2 + |b|^2, 0))``
    or ``"cosine"`` the cosine *similarity* of the normalized rows (as the originals);
    the same operations in the same order, in place (one ``[m1, m2]`` buffer)."""
    if type not in ("cosine", "euclidean"):
        raise ValueError(f"compute_dist: type must be 'cosine' or 'euclidean', got {type!r}")
    if type == "cosine":
        return np.matmul(normalize(array1, axis=1), normalize(array2, axis=1).T)
    square1 = np.sum(np.square(array1), axis=1)[..., np.newaxis]
    square2 = np.sum(np.square(array2), axis=1)[np.newaxis, ...]
    d = np.matmul(array1, array2.T)
    d *= -2
    d += square1
    d += square2
    np.maximum(d, 0, out=d)
    return np.sqrt(d, out=d)


def shortest_dist(dist_mat):
    """Shortest monotone path through the first two dims of ``dist_mat [m, n, *]`` (numpy);
    returns ``[*]`` (a 0-d array for ``[m, n]``). Computed by :func:`partdist.dmli`."""
    from ..ops.dmli import dmli

    a = np.asarray(dist_mat)
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, (0, 1), (-2, -1))))
    if t.shape[-1] > 128 or t.shape[-2] > 128:
        from .alignedreid import _dmli_diagonals

        return _dmli_diagonals(t).numpy().astype(a.dtype, copy=False)
    return dmli(t).numpy().astype(a.dtype, copy=False)


def unaligned_dist(dist_mat):
    """``sum_i dist_mat[i, i]`` over the first ``m`` rows (michuanhaohao ``unaligned_dist``):
    ``[m, n, *] -> [*]`` with ``m <= n``."""
    a = np.asarray(dist_mat)
    m = a.shape[0]
    if m > a.shape[1]:
        raise ValueError(f"unaligned_dist: dist_mat [m, n, *] needs m <= n, got shape {list(a.shape)}")
    return a[np.arange(m), np.arange(m)].sum(axis=0)


def _tanh_form(d):
    return (np.exp(d) - 1.0) / (np.exp(d) + 1.0)


def meta_local_dist(x, y, aligned=True):
    """The originals' 2-D ``local_dist`` (``x [m, d]``, ``y [n, d]``), value for value.

    Note: the originals pass ``dist_mat[np.newaxis]`` (shape ``[1, m, n]``) to
    ``shortest_dist`` / ``unaligned_dist``, which take the first two dims as the grid, so
    the result is not the DMLI distance of the pair: aligned it is ``sum_i d(x_i, y_0)``
    (x's stripes against y's first stripe), unaligned ``d(x_0, y_0)``, with
    ``d = tanh(||x_i - y_j|| / 2)``. This function returns exactly that; the DMLI distance
    of one pair is ``local_dist(x[None], y[None])[0, 0]``.
    """
    dm = _tanh_form(compute_dist(x, y, "euclidean"))
    return dm[:, 0].sum(axis=0) if aligned else dm[0, 0]


def parallel_local_dist(x, y, aligned=True):
    """``x [M, m, d]``, ``y [N, n, d]`` -> ``[M, N]`` local distance (numpy, the inputs'
    float dtype): the stripe distances ``tanh(||x_i - y_j|| / 2)``, then the shortest
    path (``aligned``) or ``sum_i d(x_i, y_i)`` (not aligned, ``m <= n``). Computed tile by
    tile by :func:`partdist.local_dist` / :func:`partdist.unaligned_dist` (no
    ``M m x N n`` matrix)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 3 or y.ndim != 3 or x.shape[2] != y.shape[2]:
        raise ValueError(f"local_dist: x [M, m, d] and y [N, n, d] with the same d, got {list(x.shape)} and "
                         f"{list(y.shape)}")
    dtype = np.result_type(x.dtype, y.dtype)
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    tx = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))
    ty = torch.from_numpy(np.ascontiguousarray(y, dtype=dtype))
    if x.shape[0] == 0 or y.shape[0] == 0:
        return np.zeros((x.shape[0], y.shape[0]), dtype=dtype)
    with torch.no_grad():
        if aligned:
            out = _local_dist(tx, ty, True)
        else:
            m = x.shape[1]
            if m > y.shape[1]:
                raise ValueError(f"local_dist: aligned=False needs m <= n stripes, got m={m}, n={y.shape[1]}")
            out = _unaligned_dist(tx, ty[:, :m].contiguous(), True, all_pairs=True)
    return out.numpy()


def local_dist(x, y, aligned=True):
    """2-D inputs: :func:`meta_local_dist`; 3-D: :func:`parallel_local_dist`."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 2 and y.ndim == 2:
        return meta_local_dist(x, y, aligned)
    if x.ndim == 3 and y.ndim == 3:
        return parallel_local_dist(x, y, aligned)
    raise NotImplementedError("Input shape not supported.")


def low_memory_local_dist(x, y, aligned=True):
    """``[M, N]`` local distance of ``x [M, m, d]`` and ``y [N, n, d]`` (numpy): the
    originals split the work in blocks of 200 to bound memory, :func:`partdist.local_dist`
    tiles it (memory bounded by a tile); no progress printing."""
    return parallel_local_dist(x, y, aligned)


# ------------------------------------------------------------- rankings
def sorted_rows(distmat, kind):
    """Per query, the gallery order by distance (``kind``: the ``np.argsort`` kind)."""
    return np.argsort(distmat, axis=1, kind=kind)


def sklearn_ap(y_true, d_sorted):
    """scikit-learn's ``average_precision_score(y_true, -d)`` for distances sorted
    ascending: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct distances (ties form one
    threshold)."""
    if not y_true.any():
        return 0.0
    last = np.r_[d_sorted[1:] != d_sorted[:-1], True]  # the end of each run of equal distances
    tp = np.cumsum(y_true)[last]
    n = (np.nonzero(last)[0] + 1).astype(np.float64)
    new = np.diff(np.r_[0, tp])
    return float(np.sum(new / tp[-1] * (tp / n)))


def single_shot_mask(valid_positions, ids_in_order, length):
    """One random item per identity (``np.random.choice``, in the originals' call order)."""
    ids_dict = defaultdict(list)
    for j, x in zip(valid_positions, ids_in_order):
        ids_dict[x].append(j)
    mask = np.zeros(length, dtype=bool)
    for _, indices in ids_dict.items():
        mask[np.random.choice(indices)] = True
    return mask
