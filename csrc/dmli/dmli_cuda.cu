// The CUDA backend of the DMLI family (DeviceKernels<CudaExec>, dmli_launch.h) and its
// registration for the CUDA dispatch key.
#include <torch/library.h>

#include "../common/cuda_launch.cuh"
#include "dmli_launch.h"

namespace partdist {
namespace dmli {
template struct DeviceKernels<CudaExec>;
}  // namespace dmli
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist, CUDA, m) {
  partdist::dmli::register_impls<partdist::dmli::CudaKernels>(m);
}
