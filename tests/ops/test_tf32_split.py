"""The float32 GEMMs of the ops under TF32 (csrc/common/matmul.h): where cuBLAS may use TF32,
each operand is split into a TF32 value and a remainder and the product taken as three TF32-exact
terms. No GPU here: the split operands the C++ code builds are read through
``torch.ops.partdist._tf32_split_operands`` and multiplied in a TF32 emulation (operands rounded
to 10 mantissa bits, products and sums in float64)."""

import pytest
import torch

import partdist  # noqa: F401  (registers torch.ops.partdist.*)


def tf32(t):
    """Round float32 values to TF32 (10 explicit mantissa bits), to nearest even."""
    i = t.contiguous().view(torch.int32).to(torch.int64)
    lsb = (i >> 13) & 1
    r = ((i + 0xFFF + lsb) >> 13) << 13
    return r.to(torch.int32).view(torch.float32)


def emulated_tf32_mm(a, b):
    return tf32(a).double() @ tf32(b).double()


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e4])
def test_split_is_exact_and_tf32_representable(scale):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 33, generator=gen) * scale
    b = torch.randn(33, 5, generator=gen) * scale
    A, B = torch.ops.partdist._tf32_split_operands(a, b)
    K = a.shape[1]
    assert A.shape == (7, 3 * K) and B.shape == (3 * K, 5)
    hi, hi2, lo = A[:, :K], A[:, K:2 * K], A[:, 2 * K:]
    assert torch.equal(hi, hi2)
    assert torch.equal(hi + lo, a)  # exact
    assert torch.equal(tf32(hi), hi)  # hi is a TF32 value
    assert torch.equal(B[:K] + B[K:2 * K], b) and torch.equal(B[:K], B[2 * K:])


def test_split_product_under_tf32_is_float32_accurate():
    """Near-identical stripes: the GEMM-form squared distance |a|^2 + |b|^2 - 2 a.b. A TF32 GEMM
    loses it; the split product under the same TF32 GEMM is within a few float32 ulps of |a||b|."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(64, 128, generator=gen)
    b = a + 1e-3 * torch.randn(64, 128, generator=gen)
    truth = a.double() @ b.double().T
    plain = emulated_tf32_mm(a, b.T)
    A, B = torch.ops.partdist._tf32_split_operands(a, b.T.contiguous())
    split = emulated_tf32_mm(A, B)
    full32 = (a @ b.T).double()
    scale = a.norm(dim=1, keepdim=True).double() * b.norm(dim=1).double()
    err = lambda c: float(((c - truth).abs() / scale).max())  # noqa: E731
    assert err(split) <= 2.0 ** -19
    assert err(plain) > 2.0 ** -15 and err(plain) > 64 * err(split)  # the loss the split avoids
    assert err(split) <= 16 * max(err(full32), 2.0 ** -24)


def test_split_operands_reject_other_dtypes():
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.partdist._tf32_split_operands(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, 2))
