// The CUDA backend of the mining family run on the CPU (DeviceKernels<emu::EmuExec>,
// mining_launch.h), registered in the partdist_cuda_emulated namespace for CPU tensors.
#include <torch/library.h>

#include "../common/emulate.h"
#include "mining_launch.h"

namespace partdist {
namespace mining {
template struct DeviceKernels<emu::EmuExec>;
}  // namespace mining
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist_cuda_emulated, CPU, m) {
  partdist::mining::register_impls<partdist::mining::EmulatedCudaKernels>(m);
}
