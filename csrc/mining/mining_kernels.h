// Device launchers of the mining family. All tensors are already checked by the
// host driver (mining_ops.cpp): dist is [N, M] with arbitrary strides, labels /
// labels_other are contiguous int64, every output is contiguous.
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/ptr.h"
#include "mining_common.h"

namespace partdist {
namespace mining {

struct Shape {
  int64_t N = 0, M = 0;
  int64_t row_stride = 0, col_stride = 0;  // of dist (forward only)
  bool exclude_self = false;               // column i is not a positive of row i
};

struct LossSpec {
  bool enabled = false;
  bool soft = false;
  double margin = 0.0;
};

// dist_ap, dist_an: dtype of dist; p_inds, n_inds: int64; valid: bool;
// row_loss: float (float for reduced and single precision, double for double),
// undefined when the loss is not wanted.
using ForwardLauncher = void (*)(const Shape& S, const LossSpec& L, const at::Tensor& dist,
                                 const at::Tensor& labels, const at::Tensor& labels_other,
                                 const at::Tensor& dist_ap, const at::Tensor& dist_an,
                                 const at::Tensor& p_inds, const at::Tensor& n_inds,
                                 const at::Tensor& valid, const at::Tensor& row_loss);
// out: [N, M] contiguous, dtype of dist_ap, content undefined on entry; fully
// written (zeros except the two selected entries per row). grad_ap, grad_an,
// loss_scale may be undefined.
using BackwardLauncher = void (*)(const Shape& S, const LossSpec& L, const at::Tensor& loss_scale,
                                  const at::Tensor& grad_ap, const at::Tensor& grad_an,
                                  const at::Tensor& dist_ap, const at::Tensor& dist_an,
                                  const at::Tensor& p_inds, const at::Tensor& n_inds,
                                  const at::Tensor& valid, const at::Tensor& out);

// The loss options as the per-row math wants them.
template <typename A>
LossArgs<A> loss_args(const LossSpec& L) {
  return LossArgs<A>{L.enabled, L.soft, static_cast<A>(L.margin)};
}

// The backward inputs of the launchers as the per-row math wants them.
template <typename T, typename A>
BackwardIn<T, A> backward_in(const at::Tensor& loss_scale, const at::Tensor& grad_ap,
                             const at::Tensor& grad_an, const at::Tensor& dist_ap,
                             const at::Tensor& dist_an, const at::Tensor& p_inds,
                             const at::Tensor& n_inds, const at::Tensor& valid) {
  return BackwardIn<T, A>{ptr_or_null<T>(grad_ap),          ptr_or_null<T>(grad_an),
                          ptr_or_null<A>(loss_scale),       dist_ap.const_data_ptr<T>(),
                          dist_an.const_data_ptr<T>(),      p_inds.const_data_ptr<int64_t>(),
                          n_inds.const_data_ptr<int64_t>(), valid.const_data_ptr<bool>()};
}

struct Launchers {
  ForwardLauncher forward;
  BackwardLauncher backward;
};

void forward_cpu(const Shape& S, const LossSpec& L, const at::Tensor& dist,
                 const at::Tensor& labels, const at::Tensor& labels_other,
                 const at::Tensor& dist_ap, const at::Tensor& dist_an, const at::Tensor& p_inds,
                 const at::Tensor& n_inds, const at::Tensor& valid, const at::Tensor& row_loss);
void backward_cpu(const Shape& S, const LossSpec& L, const at::Tensor& loss_scale,
                  const at::Tensor& grad_ap, const at::Tensor& grad_an,
                  const at::Tensor& dist_ap, const at::Tensor& dist_an,
                  const at::Tensor& p_inds, const at::Tensor& n_inds, const at::Tensor& valid,
                  const at::Tensor& out);
#ifdef PARTDIST_WITH_CUDA
void forward_cuda(const Shape& S, const LossSpec& L, const at::Tensor& dist,
                  const at::Tensor& labels, const at::Tensor& labels_other,
                  const at::Tensor& dist_ap, const at::Tensor& dist_an, const at::Tensor& p_inds,
                  const at::Tensor& n_inds, const at::Tensor& valid, const at::Tensor& row_loss);
void backward_cuda(const Shape& S, const LossSpec& L, const at::Tensor& loss_scale,
                   const at::Tensor& grad_ap, const at::Tensor& grad_an,
                   const at::Tensor& dist_ap, const at::Tensor& dist_an,
                   const at::Tensor& p_inds, const at::Tensor& n_inds, const at::Tensor& valid,
                   const at::Tensor& out);
#endif

}  // namespace mining
}  // namespace partdist
