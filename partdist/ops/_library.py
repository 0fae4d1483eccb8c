"""What the op modules register with ``torch.library`` beside the compiled kernels: helpers of
the fake (meta) kernels, which must return exactly the real ops' metadata, and the autocast rule
of the distance ops."""

import torch


def contiguous_like(t: torch.Tensor) -> torch.Tensor:
    """A new contiguous tensor of ``t``'s shape, dtype and device: what the compiled ops return
    for a gradient of an input, whatever that input's strides (permuted, sliced, expanded)."""
    return t.new_empty(t.shape)


def autocast_to_float32(*names: str) -> None:
    """Under ``torch.autocast`` (CPU and CUDA) the ops ``partdist::<name>`` cast their
    floating-point inputs to float32, compute and return float32, as torch's own distance and
    loss functions do: a half-precision distance near 9 would carry a rounding error of up to
    0.004 (float16) or 0.03 (bfloat16) into the triplet hinge. Outside autocast the ops keep
    the input dtype. Gradients flow back to the half-precision inputs in their dtype."""
    for name in names:
        for device_type in ("cpu", "cuda"):
            torch.library.register_autocast(f"partdist::{name}", device_type, torch.float32)
