// The CUDA backend of the neighborhood-difference family (DeviceKernels<CudaExec>,
// neighborhood_launch.h) and its registration for the CUDA dispatch key.
#include <torch/library.h>

#include "../common/cuda_launch.cuh"
#include "neighborhood_launch.h"

namespace partdist {
namespace nbhd {
template struct DeviceKernels<CudaExec>;
}  // namespace nbhd
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist, CUDA, m) {
  partdist::nbhd::register_impls<partdist::nbhd::CudaKernels>(m);
}
