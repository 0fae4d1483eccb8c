// Backends of the mining family. The host drivers (mining_ops.cpp) are templates over
// a backend K with static members
//   forward(S, L, dist, labels, labels_other, dist_ap, dist_an, p_inds, n_inds, valid,
//           row_loss)   dist [N, M] with any strides (S), labels / labels_other
//                       contiguous int64; outputs contiguous: dist_ap, dist_an dtype of
//                       dist, p_inds / n_inds int64, valid bool, row_loss the
//                       accumulate type (float, or double for double), undefined when
//                       the loss is not wanted.
//   backward(S, L, loss_scale, grad_ap, grad_an, dist_ap, dist_an, p_inds, n_inds,
//            valid, out)
//                       out [N, M] contiguous, dtype of dist_ap, content undefined on
//                       entry; fully written (zeros except the two selected entries per
//                       row). grad_ap, grad_an, loss_scale may be undefined.
// CpuKernels (mining_cpu.cpp) and DeviceKernels<Exec> (mining_launch.h: the CUDA
// kernels, launched by CudaExec on the GPU or by emu::EmuExec in the CPU emulation).
// Each backend's file registers the ops for its dispatch key (register_impls<K>).
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/backends.h"
#include "../common/ptr.h"
#include "mining_common.h"

namespace partdist {

namespace mining {

struct LossSpec {
  bool enabled = false;
  bool soft = false;
  double margin = 0.0;
};

// The loss options as the per-row math wants them.
template <typename A>
LossArgs<A> loss_args(const LossSpec& L) {
  return LossArgs<A>{L.enabled, L.soft, static_cast<A>(L.margin)};
}

// The backward inputs as the per-row math wants them.
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

// The forward outputs as the per-row math wants them.
template <typename T, typename A>
ForwardOut<T, A> forward_out(const at::Tensor& dist_ap, const at::Tensor& dist_an,
                             const at::Tensor& p_inds, const at::Tensor& n_inds,
                             const at::Tensor& valid, const at::Tensor& row_loss) {
  return ForwardOut<T, A>{dist_ap.mutable_data_ptr<T>(),
                          dist_an.mutable_data_ptr<T>(),
                          p_inds.mutable_data_ptr<int64_t>(),
                          n_inds.mutable_data_ptr<int64_t>(),
                          valid.mutable_data_ptr<bool>(),
                          row_loss.defined() ? row_loss.mutable_data_ptr<A>() : nullptr};
}

#define PARTDIST_MINING_BACKEND_MEMBERS                                                            \
  static void forward(const Shape& S, const LossSpec& L, const at::Tensor& dist,                   \
                      const at::Tensor& labels, const at::Tensor& labels_other,                    \
                      const at::Tensor& dist_ap, const at::Tensor& dist_an,                        \
                      const at::Tensor& p_inds, const at::Tensor& n_inds, const at::Tensor& valid, \
                      const at::Tensor& row_loss);                                                 \
  static void backward(const Shape& S, const LossSpec& L, const at::Tensor& loss_scale,            \
                       const at::Tensor& grad_ap, const at::Tensor& grad_an,                       \
                       const at::Tensor& dist_ap, const at::Tensor& dist_an,                       \
                       const at::Tensor& p_inds, const at::Tensor& n_inds,                         \
                       const at::Tensor& valid, const at::Tensor& out);

struct CpuKernels {
  PARTDIST_MINING_BACKEND_MEMBERS
};

template <typename Exec>
struct DeviceKernels {
  PARTDIST_MINING_BACKEND_MEMBERS
};
#undef PARTDIST_MINING_BACKEND_MEMBERS

using CudaKernels = DeviceKernels<CudaExec>;
using EmulatedCudaKernels = DeviceKernels<emu::EmuExec>;

void define_ops(torch::Library& m);
template <typename K>
void register_impls(torch::Library& m);

}  // namespace mining
}  // namespace partdist
