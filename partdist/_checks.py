"""Argument checks of the public API.

Every public function checks its arguments here, before any kernel runs, and raises
``ValueError`` (bad shape, value or device) or ``TypeError`` (bad type or dtype) with
a message that names the function, the argument and what was expected. The C++ ops
repeat the essential checks (as ``RuntimeError``) so that calling
``torch.ops.partdist.*`` directly cannot crash either.
"""

from __future__ import annotations

import numbers
import sys

import torch

#: Largest m or n accepted by the DP ops (dmli, dmli_path, batch_local_dist, local_dist).
MAX_STRIPES = 128


def is_instance_of(x, module: str, cls: str) -> bool:
    """``isinstance(x, module.cls)`` without importing ``module`` (``"PIL.Image"``, ``"torch"``):
    while the module is not loaded, no object of its classes can exist."""
    mod = sys.modules.get(module)
    return mod is not None and isinstance(x, getattr(mod, cls))


def check_pos_int(op, name, v, lo=1, allow_none=False, what=None):
    """``int(v)`` for an integer ``v >= lo`` (``None`` passes with ``allow_none``): ``TypeError``
    for another type (``bool`` included), ``ValueError`` below ``lo``. The message names ``op``,
    ``name`` and ``what`` was expected (default: "a positive int" for ``lo = 1``, else
    "an int >= lo")."""
    if v is None and allow_none:
        return None
    what = what or ("a positive int" if lo == 1 else f"an int >= {lo}")
    if allow_none:
        what += " or None"
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{op}: {name} must be {what}, got {v!r}")
    if v < lo:
        raise ValueError(f"{op}: {name} must be {what}, got {v!r}")
    return int(v)


def _shape(t):
    return list(t.shape)


def check_tensor(op, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_floating(op, name, t):
    check_tensor(op, name, t)
    if not t.is_floating_point():
        raise TypeError(
            f"{op}: {name} must be a floating-point tensor (float32/float64, or "
            f"float16/bfloat16), got dtype {t.dtype}"
        )


def check_same_device_dtype(op, name, t, ref_name, ref):
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} must have the same dtype as {ref_name} ({ref.dtype}), got {t.dtype}")


def check_stripes(op, name, t, layout, what="stripe"):
    """A floating ``[.., K, C]`` tensor with K >= 1 (``what``: the name of dim 1) and C >= 1."""
    check_floating(op, name, t)
    if t.dim() != 3:
        raise ValueError(f"{op}: {name} must be a 3-D tensor {layout}, got shape {_shape(t)}")
    if t.shape[1] < 1:
        raise ValueError(f"{op}: {name} must have at least one {what} (dim 1 of {layout}), got shape {_shape(t)}")
    if t.shape[2] < 1:
        raise ValueError(
            f"{op}: {name} must have at least one feature channel (dim 2 of {layout}), got shape {_shape(t)}"
        )


def check_max_stripes(op, m, n):
    if m > MAX_STRIPES or n > MAX_STRIPES:
        raise ValueError(f"{op}: at most {MAX_STRIPES} stripes per image are supported, got m={m}, n={n}")


def check_xy(op, x, y, aligned, dp):
    """x ``[N, m, C]`` / y ``[N, n, C]`` (aligned pairs) or x ``[M, m, C]`` (all pairs)."""
    check_stripes(op, "x", x, "[N, m, C]" if aligned else "[M, m, C]")
    check_stripes(op, "y", y, "[N, n, C]")
    check_same_device_dtype(op, "y", y, "x", x)
    if x.shape[2] != y.shape[2]:
        raise ValueError(
            f"{op}: x and y must have the same number of channels C (dim 2), got x {_shape(x)} and y {_shape(y)}"
        )
    if aligned and x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{op}: x and y must hold the same number of images N (dim 0), got x {_shape(x)} and y {_shape(y)}"
        )
    if dp:
        check_max_stripes(op, x.shape[1], y.shape[1])


def check_dist(op, dist, flat=False):
    """dist ``[..., m, n]`` (or exactly ``[P, m, n]`` with ``flat``)."""
    check_floating(op, "dist", dist)
    if flat and dist.dim() != 3:
        raise ValueError(f"{op}: dist must be a 3-D tensor [P, m, n], got shape {_shape(dist)}")
    if dist.dim() < 2:
        raise ValueError(f"{op}: dist must have at least 2 dimensions [..., m, n], got shape {_shape(dist)}")
    m, n = dist.shape[-2], dist.shape[-1]
    if m < 1 or n < 1:
        raise ValueError(f"{op}: dist must have m >= 1 and n >= 1 (its last two dims), got shape {_shape(dist)}")
    check_max_stripes(op, m, n)


def band_has_path(m, n, band):
    """Whether a monotone path of cells with ``|i (n-1)/(m-1) - j| <= band`` joins the corners."""
    if m == 1:
        return True
    reach = [False] * n
    for i in range(m):
        for j in range(n):
            ok = abs(i * (n - 1) / (m - 1) - j) <= band + 1e-9
            came = (i == 0 and j == 0) or (i > 0 and reach[j]) or (j > 0 and reach[j - 1])
            reach[j] = ok and came
    return reach[n - 1]


def check_rule(op, m, n, gamma, band, unaligned=False):
    """DP options: gamma >= 0 (0 = hard minimum), band None or >= 0 leaving a path."""
    import math

    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"{op}: gamma must be a finite number >= 0 (0 = hard minimum), got {gamma!r}")
    if band is not None:
        if isinstance(band, bool) or not isinstance(band, (int, float)) or not math.isfinite(band) or band < 0:
            raise ValueError(f"{op}: band must be None or a finite number >= 0, got {band!r}")
        if not band_has_path(int(m), int(n), float(band)):
            raise ValueError(
                f"{op}: band={band} leaves no monotone path from (0, 0) to (m-1, n-1) for m={m}, n={n} "
                "(cells must satisfy |i*(n-1)/(m-1) - j| <= band); use a wider band"
            )
    if unaligned and m != n:
        raise ValueError(f"{op}: x and y must have the same number of stripes (m == n), got m={m}, n={n}")


def check_chunk_size(op, chunk_size):
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"{op}: chunk_size must be a positive int or None, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int or None, got {chunk_size}")


GEMM_DTYPES = (torch.float16, torch.bfloat16)


def check_gemm_dtype(op, gemm_dtype, x):
    """``gemm_dtype`` (the all-pairs ops' reduced-precision mode): ``None``, ``torch.float16`` or
    ``torch.bfloat16``, for float32 features (or features already of that dtype)."""
    if gemm_dtype is None:
        return None
    if not isinstance(gemm_dtype, torch.dtype) or gemm_dtype not in GEMM_DTYPES:
        raise TypeError(f"{op}: gemm_dtype must be torch.float16, torch.bfloat16 or None, got {gemm_dtype!r}")
    if x.dtype not in (torch.float32, gemm_dtype):
        raise TypeError(
            f"{op}: gemm_dtype rounds float32 features; x and y are {x.dtype} "
            "(leave gemm_dtype=None, or pass float32 features)"
        )
    return gemm_dtype


# ------------------------------------------------------------ neighborhood (IDLA)
def check_kernel_size(op, kernel_size):
    """``kernel_size``: an odd int >= 1 (bool rejected)."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"{op}: kernel_size must be an odd int >= 1, got {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{op}: kernel_size must be an odd int >= 1, got {kernel_size}")


def check_maps(op, f, g):
    """f, g: floating ``[B, C, H, W]`` of the same shape, dtype and device."""
    for name, t in (("f", f), ("g", g)):
        check_floating(op, name, t)
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be a 4-D tensor [B, C, H, W], got shape {_shape(t)}")
    check_same_device_dtype(op, "g", g, "f", f)
    if f.shape != g.shape:
        raise ValueError(
            f"{op}: f and g must have the same shape [B, C, H, W], got f {_shape(f)} and g {_shape(g)}"
        )


def check_tiled_grad(op, grad, kernel_size):
    """grad of the tiled output: floating ``[B, C, H*k, W*k]``."""
    check_floating(op, "grad", grad)
    if grad.dim() != 4 or grad.shape[2] % kernel_size or grad.shape[3] % kernel_size:
        raise ValueError(
            f"{op}: grad must be a 4-D tensor [B, C, H*k, W*k] with k = kernel_size = {kernel_size}, "
            f"got shape {_shape(grad)}"
        )


def check_layout(op, layout):
    if layout not in ("tiled", "blocks"):
        raise ValueError(f"{op}: layout must be 'tiled' or 'blocks', got {layout!r}")

# ------------------------------------------------------------------ mining
def check_labels(op, name, t, n, what):
    """An integer label vector of length ``n``."""
    check_tensor(op, name, t)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{op}: {name} must be an integer tensor (e.g. int64), got dtype {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{op}: {name} must have shape [{n}] ({what}), got shape {_shape(t)}")


def check_mining(op, dist_mat, labels, labels_other=None, exclude_self=False):
    """dist_mat ``[N, M]`` with labels ``[N]`` and labels_other ``[M]``, or ``[N, N]`` and labels alone."""
    check_floating(op, "dist_mat", dist_mat)
    if dist_mat.dim() != 2:
        raise ValueError(f"{op}: dist_mat must be a 2-D tensor [N, M], got shape {_shape(dist_mat)}")
    N, M = dist_mat.shape
    check_labels(op, "labels", labels, N, "one label per row of dist_mat")
    if labels.device != dist_mat.device:
        raise ValueError(
            f"{op}: labels must be on the same device as dist_mat ({dist_mat.device}), got {labels.device}"
        )
    if labels_other is None:
        if N != M:
            raise ValueError(
                f"{op}: dist_mat must be square [N, N] when labels_other is not given, got shape "
                f"{_shape(dist_mat)} (pass labels_other [M] for an [N, M] matrix)"
            )
    else:
        check_labels(op, "labels_other", labels_other, M, "one label per column of dist_mat")
        if labels_other.device != dist_mat.device:
            raise ValueError(
                f"{op}: labels_other must be on the same device as dist_mat ({dist_mat.device}), "
                f"got {labels_other.device}"
            )
        if exclude_self:
            raise ValueError(
                f"{op}: exclude_self needs the square case (dist_mat [N, N] with labels_other=None)"
            )
    if not isinstance(exclude_self, bool):
        raise TypeError(f"{op}: exclude_self must be a bool, got {exclude_self!r}")


def check_margin(op, margin):
    """A finite real margin, or None (soft margin)."""
    if margin is None:
        return
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"{op}: margin must be a float or None (soft margin), got {margin!r}")
    if margin != margin or margin in (float("inf"), float("-inf")):
        raise ValueError(f"{op}: margin must be finite, got {margin}")


def check_features(op, name, t, layout, rank):
    """A floating-point feature tensor of the given rank with at least one channel."""
    check_floating(op, name, t)
    if t.dim() != rank:
        raise ValueError(f"{op}: {name} must be a {rank}-D tensor {layout}, got shape {_shape(t)}")
    if t.shape[-1] < 1:
        raise ValueError(f"{op}: {name} must have at least one channel (last dim of {layout}), got shape {_shape(t)}")


def check_feature_tensor(op, name, t, dims, what):
    """A floating-point tensor of ``dims`` dimensions (``what``: its layout, e.g. ``"[Q, D]"``);
    returns ``t``. Shared by the evaluation and search APIs."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor {what}, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor {what}, got dtype {t.dtype}")
    if t.dim() != dims:
        raise ValueError(f"{op}: {name} must have shape {what}, got {list(t.shape)}")
    return t
