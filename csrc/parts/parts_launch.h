// DeviceKernels<Exec>: the CUDA backend of the part-distance family, written once
// against an executor (CudaExec in parts_cuda.cu, emu::EmuExec in
// emulated.cpp). The kernel bodies are in parts_common.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include "parts_kernels.h"

namespace partdist {
namespace parts {

template <typename Exec>
void DeviceKernels<Exec>::part_forward(const PartArgs& a, const at::Tensor& out) {
  const int64_t n = a.mc * a.nc;
  if (n == 0) return;
  Exec::output(out);
  AT_DISPATCH_FLOATING_TYPES(a.xy.scalar_type(), "partdist_part_forward_cuda", [&] {
    Exec().template run<PartForwardKernel>(blocks_for(n, kCudaThreads), kCudaThreads,
                                           part_tile<scalar_t>(a),
                                           out.mutable_data_ptr<scalar_t>());
  });
}

template <typename Exec>
void DeviceKernels<Exec>::part_backward(const PartArgs& a, const at::Tensor& gout,
                                        const at::Tensor& cw, const at::Tensor& ce) {
  const int64_t n = a.mc * a.nc;
  if (n == 0) return;
  Exec::output(cw, ce);
  AT_DISPATCH_FLOATING_TYPES(a.xy.scalar_type(), "partdist_part_backward_cuda", [&] {
    Exec().template run<PartBackwardKernel>(
        blocks_for(n, kCudaThreads), kCudaThreads, part_tile<scalar_t>(a),
        gout.const_data_ptr<scalar_t>(), cw.mutable_data_ptr<scalar_t>(),
        ce.defined() ? ce.mutable_data_ptr<scalar_t>() : static_cast<scalar_t*>(nullptr));
  });
}

template <typename Exec>
void DeviceKernels<Exec>::dsr_forward(const DsrArgs& a, const at::Tensor& err) {
  const int64_t n = a.mc * a.nc * a.Lq;
  if (n == 0) return;
  TORCH_CHECK(a.Lg <= kMaxCells, "partdist.dsr_dist: at most ", kMaxCells, " gallery cells");
  Exec::output(err);
  AT_DISPATCH_FLOATING_TYPES(a.G.scalar_type(), "partdist_dsr_forward_cuda", [&] {
    with_dsr_kernel(a.Lg, [&](auto kernel) {
      Exec().template run<decltype(kernel)>(blocks_for(n, kCudaThreads), kCudaThreads,
                                            dsr_tile<scalar_t>(a),
                                            err.mutable_data_ptr<scalar_t>());
    });
  });
}

}  // namespace parts
}  // namespace partdist
