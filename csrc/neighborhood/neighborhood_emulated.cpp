// The CUDA backend of the neighborhood-difference family run on the CPU
// (DeviceKernels<emu::EmuExec>, neighborhood_launch.h), registered as the ops of the
// partdist_cuda_emulated namespace for CPU tensors (tests compare them with the CPU
// backend).
#include <torch/library.h>

#include "../common/emulate.h"
#include "neighborhood_launch.h"

namespace partdist {
namespace nbhd {
template struct DeviceKernels<emu::EmuExec>;
}  // namespace nbhd
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist_cuda_emulated, CPU, m) {
  partdist::nbhd::register_impls<partdist::nbhd::EmulatedCudaKernels>(m);
}
