// The CUDA backend of the part-distance family (DeviceKernels<CudaExec>,
// parts_launch.h) and its registration for the CUDA dispatch key.
#include <torch/library.h>

#include "../common/cuda_launch.cuh"
#include "parts_launch.h"

namespace partdist {
namespace parts {
template struct DeviceKernels<CudaExec>;
}  // namespace parts
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist, CUDA, m) {
  partdist::parts::register_impls<partdist::parts::CudaKernels>(m);
}
