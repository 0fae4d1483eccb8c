// The CUDA backend of the mining family (DeviceKernels<CudaExec>, mining_launch.h) and
// its registration for the CUDA dispatch key.
#include <torch/library.h>

#include "../common/cuda_launch.cuh"
#include "mining_launch.h"

namespace partdist {
namespace mining {
template struct DeviceKernels<CudaExec>;
}  // namespace mining
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist, CUDA, m) {
  partdist::mining::register_impls<partdist::mining::CudaKernels>(m);
}
