// The CUDA backend of the part-distance family run on the CPU (DeviceKernels<emu::EmuExec>,
// parts_launch.h), registered as the ops of the partdist_cuda_emulated namespace for
// CPU tensors (tests compare them with the CPU backend).
#include <torch/library.h>

#include "../common/emulate.h"
#include "parts_launch.h"

namespace partdist {
namespace parts {
template struct DeviceKernels<emu::EmuExec>;
}  // namespace parts
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist_cuda_emulated, CPU, m) {
  partdist::parts::register_impls<partdist::parts::EmulatedCudaKernels>(m);
}
