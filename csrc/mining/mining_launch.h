// DeviceKernels<Exec>: the CUDA backend of the mining family, written once against an
// executor (CudaExec in mining_cuda.cu, emu::EmuExec in mining_emulated.cpp). The
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
void DeviceKernels<Exec>::forward(const Shape& S, const LossSpec& L, const at::Tensor& dist,
                                  const at::Tensor& labels, const at::Tensor& labels_other,
                                  const at::Tensor& dist_ap, const at::Tensor& dist_an,
                                  const at::Tensor& p_inds, const at::Tensor& n_inds,
                                  const at::Tensor& valid, const at::Tensor& row_loss) {
  if (S.N == 0) return;
  for (const at::Tensor* t : {&dist_ap, &dist_an, &p_inds, &n_inds, &valid, &row_loss})
    Exec::output(*t);
  const bool column_major = S.col_stride != 1 && S.row_stride == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dist.scalar_type(), "partdist_mining_forward_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        const auto o = forward_out<scalar_t, A>(dist_ap, dist_an, p_inds, n_inds, valid, row_loss);
        const scalar_t* d = dist.const_data_ptr<scalar_t>();
        const int64_t* lab = labels.const_data_ptr<int64_t>();
        const int64_t* lo = labels_other.const_data_ptr<int64_t>();
        if (column_major)
          Exec().template run<ThreadRowKernel>(blocks_for(S.N, kCudaThreads), kCudaThreads, S,
                                               loss_args<A>(L), d, lab, lo, o);
        else
          Exec().template run_warps<WarpRowKernel>(blocks_for(S.N, kWarpsPerBlock), kCudaThreads, S,
                                                   loss_args<A>(L), d, lab, lo, o);
      });
}

template <typename Exec>
void DeviceKernels<Exec>::backward(const Shape& S, const LossSpec& L, const at::Tensor& loss_scale,
                                   const at::Tensor& grad_ap, const at::Tensor& grad_an,
                                   const at::Tensor& dist_ap, const at::Tensor& dist_an,
                                   const at::Tensor& p_inds, const at::Tensor& n_inds,
                                   const at::Tensor& valid, const at::Tensor& out) {
  if (S.N == 0 || S.M == 0) return;
  Exec::output(out);
  out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dist_ap.scalar_type(), "partdist_mining_backward_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        const auto b = backward_in<scalar_t, A>(loss_scale, grad_ap, grad_an, dist_ap, dist_an,
                                                p_inds, n_inds, valid);
        Exec().template run<ScatterKernel>(blocks_for(S.N, kCudaThreads), kCudaThreads, S,
                                           loss_args<A>(L), b, out.mutable_data_ptr<scalar_t>());
      });
}

}  // namespace mining
}  // namespace partdist
