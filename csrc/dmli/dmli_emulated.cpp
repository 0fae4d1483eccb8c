// The CUDA backend of the DMLI family run on the CPU (DeviceKernels<emu::EmuExec>,
// dmli_launch.h), registered as the ops of the partdist_cuda_emulated namespace for
// CPU tensors (tests compare them with the CPU backend).
#include <torch/library.h>

#include "../common/emulate.h"
#include "dmli_launch.h"

namespace partdist {
namespace dmli {
template struct DeviceKernels<emu::EmuExec>;
}  // namespace dmli
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist_cuda_emulated, CPU, m) {
  partdist::dmli::register_impls<partdist::dmli::EmulatedCudaKernels>(m);
}
