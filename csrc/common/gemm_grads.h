// Chain rule of the GEMM-form distances as matrix products (host code only).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/matmul.h>

#include "matmul.h"

namespace partdist {

// With W[..., r, s] the weight of cell (x_r, y_s), i.e. dL/d(cell) = W (x_r - y_s)
// for the distance's gradient direction: gx_r += sum_s W_rs (x_r - y_s),
// gy_s -= sum_r W_rs (x_r - y_s). For a batch ([B, R, S], bmm) and for a 2-D tile
// ([R, S], mm); gx, gy may be views.
inline void accumulate_grads(const at::Tensor& W, const at::Tensor& x, const at::Tensor& y,
                             at::Tensor gx, at::Tensor gy) {
  gx.addcmul_(W.sum(-1, true), x).sub_(fp32_matmul(W, y));
  gy.addcmul_(W.sum(-2).unsqueeze(-1), y).sub_(fp32_matmul(W.transpose(-1, -2), x));
}

}  // namespace partdist
