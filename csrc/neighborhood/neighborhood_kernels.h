// Backends of the neighborhood-difference family. The host drivers
// (neighborhood_ops.cpp) are templates over a backend K with static members
//   forward(G, f, g, out)              f, g contiguous [B, C, H, W]; out contiguous
//                                      [B, C, H*k, W*k]
//   backward(G, grad, grad_f, grad_g)  grad [B, C, H*k, W*k] with any strides (in G);
//                                      grad_f, grad_g contiguous [B, C, H, W]
// All tensors share one floating dtype and device. CpuKernels
// (neighborhood_cpu.cpp) and DeviceKernels<Exec> (neighborhood_launch.h: the CUDA
// kernels, launched by CudaExec on the GPU or by emu::EmuExec in the CPU emulation).
// Each backend's file registers the ops for its dispatch key (register_impls<K>).
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/backends.h"
#include "neighborhood_common.h"

namespace partdist {

namespace nbhd {

#define PARTDIST_NBHD_BACKEND_MEMBERS                                                   \
  static void forward(const Geom& G, const at::Tensor& f, const at::Tensor& g,          \
                      const at::Tensor& out);                                           \
  static void backward(const Geom& G, const at::Tensor& grad, const at::Tensor& grad_f, \
                       const at::Tensor& grad_g);

PARTDIST_DECLARE_BACKENDS(PARTDIST_NBHD_BACKEND_MEMBERS)
#undef PARTDIST_NBHD_BACKEND_MEMBERS

}  // namespace nbhd
}  // namespace partdist
