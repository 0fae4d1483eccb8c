// Float32 GEMMs at float32 accuracy whatever the user's TF32 setting (host code only).
#pragma once

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bitwise_and.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/logical_and.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sub.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace partdist {

// The stripe / part distances are computed as sqrt(|a|^2 + |b|^2 - 2 a.b): with TF32 GEMMs
// (10-bit mantissa) the cancellation leaves almost no accurate digits for near stripes.
// The user's TF32 setting is process-global and is read here, never changed (another
// thread's GEMMs keep the precision their owner chose).
//
// Where cuBLAS may run a float32 GEMM in TF32, the product is taken as three TF32-exact
// terms in one GEMM over a 3x longer reduction: a = a_hi + a_lo exactly, a_hi with the low
// 13 mantissa bits cleared (a TF32 value), and
//   a.b ~ a_hi.b_hi + a_hi.b_lo + a_lo.b_hi = [a_hi, a_hi, a_lo] . [b_hi, b_lo, b_hi].
// a_hi * b_hi is exact in float32; the lo terms carry at most 13 significant bits, of which
// TF32 keeps 11, and a_lo * b_lo (<= 2^-20 |a||b|) is dropped: each product is off by at most
// ~2^-20 of |a||b|, against 2^-24 for a float32 product and 2^-11 for a TF32 one (the
// accumulation is float32 in every case). Elsewhere (CPU, float64, TF32 off) the plain GEMM.
inline bool tf32_may_round(const at::Tensor& a) {
  return a.is_cuda() && a.scalar_type() == at::kFloat && at::globalContext().allowTF32CuBLAS();
}

// a = hi + lo exactly (float32), hi a TF32 value.
inline std::tuple<at::Tensor, at::Tensor> tf32_split(const at::Tensor& a) {
  const at::Tensor hi =
      at::bitwise_and(a.contiguous().view(at::kInt), int64_t(int32_t(0xFFFFE000))).view(at::kFloat);
  return {hi, at::sub(a, hi)};
}

// The operands of the three-term product: A' = [a_hi, a_hi, a_lo] along a's last dim and
// B' = [b_hi; b_lo; b_hi] along b's second-to-last dim, so that A' B' = the split product.
inline std::tuple<at::Tensor, at::Tensor> tf32_split_operands(const at::Tensor& a,
                                                              const at::Tensor& b) {
  auto [ah, al] = tf32_split(a);
  auto [bh, bl] = tf32_split(b);
  return {at::cat({ah, ah, al}, -1), at::cat({bh, bl, bh}, -2)};
}

inline at::Tensor fp32_mm(const at::Tensor& a, const at::Tensor& b) {
  if (!tf32_may_round(a)) return at::mm(a, b);
  auto [A, B] = tf32_split_operands(a, b);
  return at::mm(A, B);
}

inline at::Tensor& fp32_mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!tf32_may_round(a)) return at::mm_out(out, a, b);
  auto [A, B] = tf32_split_operands(a, b);
  return at::mm_out(out, A, B);
}

inline at::Tensor fp32_bmm(const at::Tensor& a, const at::Tensor& b) {
  if (!tf32_may_round(a)) return at::bmm(a, b);
  auto [A, B] = tf32_split_operands(a, b);
  return at::bmm(A, B);
}

// Stripe GEMMs whose operands may be float16 / bfloat16 (both of one dtype), with float32
// accumulation and a float32 result: the product of two halves is exact in float32, so
// this equals the float32 GEMM of the upcast operands up to the order of the sums. On
// CUDA the half operands go to cuBLAS as they are (tensor cores); elsewhere (the CPU
// emulation of the CUDA path) they are upcast first. float32 / float64 operands: fp32_mm.
inline bool is_half(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

inline at::Tensor& stripe_mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!is_half(a)) return fp32_mm_out(out, a, b);
  if (a.is_cuda()) return at::mm_out(out, a, b, at::kFloat);
  return at::mm_out(out, a.to(at::kFloat), b.to(at::kFloat));
}

inline at::Tensor stripe_bmm(const at::Tensor& a, const at::Tensor& b) {
  if (!is_half(a)) return fp32_bmm(a, b);
  if (a.is_cuda()) return at::bmm(a, b, at::kFloat);
  return at::bmm(a.to(at::kFloat), b.to(at::kFloat));
}

// The reduced-precision mode of the all-pairs ops (argument gemm_dtype: float16 or
// bfloat16, for float32 features): x and y are rounded once to gemm_dtype, and everything
// after (the GEMM operands, the squared norms, the chain rule) takes the rounded values, so
// that a distance is exactly the float32 computation on the rounded features: near distance
// 0 the cancellation in |a|^2 + |b|^2 - 2 a.b is that of float32, and each stripe distance
// moves by at most |a - a_r| + |b - b_r| (triangle inequality). On CUDA the rounded operands
// go to cuBLAS as half (tensor cores, float32 accumulation). Returns x, y rounded, or as they
// are without gemm_dtype. A float32 value beyond float16's range raises (it would become
// inf); gradients are those of the rounded features (the rounding is taken as the identity).
inline std::tuple<at::Tensor, at::Tensor> round_for_gemm(const char* op, const at::Tensor& x,
                                                         const at::Tensor& y,
                                                         std::optional<at::ScalarType> gemm_dtype) {
  if (!gemm_dtype.has_value() || *gemm_dtype == x.scalar_type()) return {x, y};
  const at::ScalarType g = *gemm_dtype;
  TORCH_CHECK(g == at::kHalf || g == at::kBFloat16, op,
              ": gemm_dtype must be torch.float16, torch.bfloat16 or None, got ", g);
  TORCH_CHECK(x.scalar_type() == at::kFloat, op,
              ": gemm_dtype rounds float32 features; x and y are ", x.scalar_type(),
              " (leave gemm_dtype=None, or pass float32 features)");
  at::Tensor xr = x.to(g), yr = y.to(g);
  if (g == at::kHalf) {
    for (const auto& [name, t, r] : {std::make_tuple("x", x, xr), std::make_tuple("y", y, yr)})
      TORCH_CHECK(!at::logical_and(at::isinf(r), at::isfinite(t)).any().item().toBool(), op, ": ",
                  name,
                  " has values beyond float16's range (|v| > 65504), which gemm_dtype="
                  "torch.float16 would turn into inf; use gemm_dtype=torch.bfloat16 (float32's "
                  "range) or scale the features");
  }
  return {xr, yr};
}

inline at::Tensor fp32_matmul(const at::Tensor& a, const at::Tensor& b) {
  if (!tf32_may_round(a)) return at::matmul(a, b);
  auto [A, B] = tf32_split_operands(a, b);
  return at::matmul(A, B);
}

}  // namespace partdist
