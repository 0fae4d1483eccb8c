// DeviceKernels<Exec>: the CUDA backend of the mining family, written once against an
// executor (CudaExec in mining_cuda.cu, emu::EmuExec in emulated.cpp). The
// kernel bodies are in mining_common.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include "mining_kernels.h"

namespace partdist {
namespace mining {

// Forward: one warp per row when dist is row-major (adjacent lanes read adjacent
// columns), one thread per row when it is column-major, e.g. dist.t() (adjacent
// threads read adjacent rows): reads are coalesced either way.
template <typename Exec>
void DeviceKernels<Exec>::forward(const Shape& S, const LossSpec& L, const ForwardTensors& t) {
  if (S.N == 0) return;
  Exec::output(t.dist_ap, t.dist_an, t.p_inds, t.n_inds, t.valid, t.row_loss);
  const bool column_major = S.col_stride != 1 && S.row_stride == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, t.dist.scalar_type(), "partdist_mining_forward_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        const auto o = forward_out<scalar_t, A>(t);
        const scalar_t* d = t.dist.const_data_ptr<scalar_t>();
        const int64_t* lab = t.labels.const_data_ptr<int64_t>();
        const int64_t* lo = t.labels_other.const_data_ptr<int64_t>();
        if (column_major)
          Exec().template run<ThreadRowKernel>(blocks_for(S.N, kCudaThreads), kCudaThreads, S,
                                               loss_args<A>(L), d, lab, lo, o);
        else
          Exec().template run_warps<WarpRowKernel>(blocks_for(S.N, kWarpsPerBlock), kCudaThreads, S,
                                                   loss_args<A>(L), d, lab, lo, o);
      });
}

template <typename Exec>
void DeviceKernels<Exec>::backward(const Shape& S, const LossSpec& L, const BackwardTensors& t) {
  if (S.N == 0 || S.M == 0) return;
  Exec::output(t.out);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, t.dist_ap.scalar_type(), "partdist_mining_backward_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        const auto b = backward_in<scalar_t, A>(t);
        Exec().template run<DenseGradKernel>(blocks_for(S.N * S.M, kCudaThreads), kCudaThreads, S,
                                             loss_args<A>(L), b,
                                             t.out.mutable_data_ptr<scalar_t>());
      });
}

template <typename Exec>
void DeviceKernels<Exec>::loss_mean(const at::Tensor& row_loss, const at::Tensor& valid,
                                    const at::Tensor& loss) {
  Exec::output(loss);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, loss.scalar_type(), "partdist_mining_loss_mean_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        Exec().template run_warps<LossMeanKernel>(
            1, kWarpSize, row_loss.size(0), row_loss.const_data_ptr<A>(),
            valid.const_data_ptr<bool>(), loss.mutable_data_ptr<scalar_t>());
      });
}

}  // namespace mining
}  // namespace partdist
