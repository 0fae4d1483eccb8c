// Float32 GEMMs at float32 accuracy whatever the user's TF32 setting (host code only).
#pragma once

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bitwise_and.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sub.h>

#include <cstdint>
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

inline at::Tensor fp32_matmul(const at::Tensor& a, const at::Tensor& b) {
  if (!tf32_may_round(a)) return at::matmul(a, b);
  auto [A, B] = tf32_split_operands(a, b);
  return at::matmul(A, B);
}

}  // namespace partdist
