// Backends of the mining family. The host drivers (mining_ops.cpp) are templates over
// a backend K with static members
//   forward(S, L, ForwardTensors)    the hardest positive / negative of every row
//   backward(S, L, BackwardTensors)  the gradient of dist
//   loss_mean(row_loss, valid, loss) the triplet loss: row_loss [N] (accumulate type) averaged
//                                    over the valid anchors (0 when none is), into the
//                                    0-dim loss (dtype of dist)
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

// The tensors of a forward. dist [N, M] with any strides (S), labels / labels_other
// contiguous int64; outputs contiguous: dist_ap, dist_an dtype of dist, p_inds /
// n_inds int64, valid bool, row_loss the accumulate type (float, or double for
// double), undefined when the loss is not wanted.
struct ForwardTensors {
  at::Tensor dist, labels, labels_other;
  at::Tensor dist_ap, dist_an, p_inds, n_inds, valid, row_loss;
};

// The tensors of a backward. The forward's outputs [N] contiguous; grad_ap, grad_an
// [N] dtype of dist_ap, loss_scale one value of the accumulate type, each may be
// undefined; out [N, M] contiguous, dtype of dist_ap, content undefined on entry,
// fully written (zeros except the two selected entries per row).
struct BackwardTensors {
  at::Tensor loss_scale, grad_ap, grad_an;
  at::Tensor dist_ap, dist_an, p_inds, n_inds, valid;
  at::Tensor out;
};

// The backward inputs as the per-row math wants them.
template <typename T, typename A>
BackwardIn<T, A> backward_in(const BackwardTensors& t) {
  return BackwardIn<T, A>{ptr_or_null<T>(t.grad_ap),          ptr_or_null<T>(t.grad_an),
                          ptr_or_null<A>(t.loss_scale),       t.dist_ap.const_data_ptr<T>(),
                          t.dist_an.const_data_ptr<T>(),      t.p_inds.const_data_ptr<int64_t>(),
                          t.n_inds.const_data_ptr<int64_t>(), t.valid.const_data_ptr<bool>()};
}

// The forward outputs as the per-row math wants them.
template <typename T, typename A>
ForwardOut<T, A> forward_out(const ForwardTensors& t) {
  return ForwardOut<T, A>{t.dist_ap.mutable_data_ptr<T>(),
                          t.dist_an.mutable_data_ptr<T>(),
                          t.p_inds.mutable_data_ptr<int64_t>(),
                          t.n_inds.mutable_data_ptr<int64_t>(),
                          t.valid.mutable_data_ptr<bool>(),
                          t.row_loss.defined() ? t.row_loss.mutable_data_ptr<A>() : nullptr};
}

#define PARTDIST_MINING_BACKEND_MEMBERS                                              \
  static void forward(const Shape& S, const LossSpec& L, const ForwardTensors& t);   \
  static void backward(const Shape& S, const LossSpec& L, const BackwardTensors& t); \
  static void loss_mean(const at::Tensor& row_loss, const at::Tensor& valid,         \
                        const at::Tensor& loss);

PARTDIST_DECLARE_BACKENDS(PARTDIST_MINING_BACKEND_MEMBERS)
#undef PARTDIST_MINING_BACKEND_MEMBERS

}  // namespace mining
}  // namespace partdist
