"""Cross-input neighborhood differences (IDLA): public ops, fake kernels and autograd.

Ahmed, Jones, Marks, "An Improved Deep Learning Architecture for Person
Re-Identification", CVPR 2015: for feature maps ``f``, ``g`` of two images,

    K(x, y) = f(x, y) * 1(k, k) - N[g(x, y)]

where ``N[g(x, y)]`` is the k x k neighborhood of ``g`` centred at ``(x, y)`` (zero
outside the map). The compiled kernels (``torch.ops.partdist.neighborhood_diff`` and
``neighborhood_diff_backward``, CPU and CUDA) write the result directly in the
tiled layout the IDLA network convolves over; this module adds the fake kernels
(for ``torch.compile``), the autograd formula and the checked public wrappers.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .. import _C  # noqa: F401  (loads the shared library: registers torch.ops.partdist.*)
from .._checks import check_kernel_size, check_layout, check_maps, check_tiled_grad

__all__ = ["neighborhood_diff", "cross_neighborhood_diff", "tiled_to_blocks"]

_ops = torch.ops.partdist


# ------------------------------------------------------------------ fake kernels
@torch.library.register_fake("partdist::neighborhood_diff")
def _(f, g, kernel_size=5):
    check_maps("partdist.neighborhood_diff", f, g)
    check_kernel_size("partdist.neighborhood_diff", kernel_size)
    B, C, H, W = f.shape
    return f.new_empty((B, C, H * kernel_size, W * kernel_size))


@torch.library.register_fake("partdist::neighborhood_diff_backward")
def _(grad, kernel_size):
    check_kernel_size("partdist.neighborhood_diff_backward", kernel_size)
    check_tiled_grad("partdist.neighborhood_diff_backward", grad, kernel_size)
    B, C, Hk, Wk = grad.shape
    shape = (B, C, Hk // kernel_size, Wk // kernel_size)
    return grad.new_empty(shape), grad.new_empty(shape)


# ---------------------------------------------------------------------- autograd
def _setup(ctx, inputs, output):
    # Nothing is saved: the backward needs only the incoming gradient and k.
    ctx.kernel_size = inputs[2]


def _backward(ctx, grad):
    grad_f, grad_g = _ops.neighborhood_diff_backward(grad, ctx.kernel_size)
    return grad_f, grad_g, None


torch.library.register_autograd("partdist::neighborhood_diff", _backward, setup_context=_setup)


# The backward map grad -> (grad_f, grad_g) is linear and its adjoint is the forward
# op itself: <grad, K(a, b)> = <grad_f, a> + <grad_g, b>. So double backward is one
# more forward call (this makes gradgradcheck, Hessian-vector products, ... work).
def _setup_bwd(ctx, inputs, output):
    ctx.kernel_size = inputs[1]
    ctx.shape = output[0].shape


def _backward_bwd(ctx, gbar_f, gbar_g):
    if gbar_f is None and gbar_g is None:
        return None, None
    if gbar_f is None:
        gbar_f = torch.zeros_like(gbar_g)
    if gbar_g is None:
        gbar_g = torch.zeros_like(gbar_f)
    return _ops.neighborhood_diff(gbar_f, gbar_g, ctx.kernel_size), None


torch.library.register_autograd(
    "partdist::neighborhood_diff_backward", _backward_bwd, setup_context=_setup_bwd
)


# -------------------------------------------------------------------- public API
def tiled_to_blocks(K: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """View a tiled ``[B, C, H*k, W*k]`` map as ``[B, C, H, W, k, k]`` (no copy).

    Entry ``[b, c, y, x, u, v]`` is tiled entry ``[b, c, y*k + u, x*k + v]``. The
    result is a strided view of ``K`` (``view`` + ``permute``): free, differentiable,
    and non-contiguous for ``k > 1``; call ``.contiguous()`` if a dense
    ``[B, C, H, W, k, k]`` copy is needed (that costs one more output-sized tensor).
    """
    B, C, Hk, Wk = K.shape
    k = kernel_size
    return K.view(B, C, Hk // k, k, Wk // k, k).permute(0, 1, 2, 4, 3, 5)


def neighborhood_diff(
    f: torch.Tensor, g: torch.Tensor, kernel_size: int = 5, *, layout: str = "tiled"
) -> torch.Tensor:
    """IDLA neighborhood differences ``K = f * 1(k, k) - N[g]``.

    Args:
        f, g: ``[B, C, H, W]`` feature maps of the two images (same shape, dtype
            and device; float32/float64 on CPU and CUDA, float16/bfloat16 too,
            computed in float32).
        kernel_size: k, odd and >= 1 (IDLA uses 5); the neighborhood radius is
            ``r = k // 2``.
        layout: ``"tiled"`` (default) returns ``[B, C, H*k, W*k]``: the k x k block
            at block position ``(y, x)`` holds ``f[y, x] - g[y + u - r, x + v - r]``
            for ``u, v`` in ``0..k-1``, with ``g`` taken as 0 outside the map (the
            layout IDLA's ``k x k``, stride ``k`` patch-summary convolution reads).
            ``"blocks"`` returns the same tensor viewed as ``[B, C, H, W, k, k]``
            (entry ``[b, c, y, x, u, v]``); see :func:`tiled_to_blocks`: no copy,
            no extra memory, but not contiguous.

    Returns:
        The differences, differentiable in ``f`` and ``g``. The backward is one
        compiled kernel: ``dL/df`` sums each k x k block; ``dL/dg`` gathers, for
        each element of ``g``, the cells that read it (no atomics). Nothing is
        saved for backward. NaN in ``f`` or ``g`` gives NaN in every cell that
        reads it.
    """
    op = "partdist.neighborhood_diff"
    check_maps(op, f, g)
    check_kernel_size(op, kernel_size)
    check_layout(op, layout)
    K = _ops.neighborhood_diff(f, g, kernel_size)
    return tiled_to_blocks(K, kernel_size) if layout == "blocks" else K


def cross_neighborhood_diff(
    f: torch.Tensor, g: torch.Tensor, kernel_size: int = 5, *, layout: str = "tiled"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both directions, as the IDLA network uses them: ``(K, K')`` with
    ``K = neighborhood_diff(f, g)`` and ``K' = neighborhood_diff(g, f)``.

    Arguments and layouts as in :func:`neighborhood_diff`.
    """
    op = "partdist.cross_neighborhood_diff"
    check_maps(op, f, g)
    check_kernel_size(op, kernel_size)
    check_layout(op, layout)
    K = _ops.neighborhood_diff(f, g, kernel_size)
    Kp = _ops.neighborhood_diff(g, f, kernel_size)
    if layout == "blocks":
        return tiled_to_blocks(K, kernel_size), tiled_to_blocks(Kp, kernel_size)
    return K, Kp
