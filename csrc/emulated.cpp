// The CUDA backends run on the CPU: each family's DeviceKernels<emu::EmuExec>
// (<family>_launch.h with the executor of common/emulate.h), registered as the ops of
// the partdist_cuda_emulated namespace (same names and schemas as partdist's) for CPU
// tensors. Tests compare them with the CPU backends (tests/ops/test_cuda_emulation.py).
#include <torch/library.h>

#include "common/emulate.h"
#include "dmli/dmli_launch.h"
#include "mining/mining_launch.h"
#include "neighborhood/neighborhood_launch.h"
#include "parts/parts_launch.h"

namespace partdist {
template struct dmli::DeviceKernels<emu::EmuExec>;
template struct mining::DeviceKernels<emu::EmuExec>;
template struct nbhd::DeviceKernels<emu::EmuExec>;
template struct parts::DeviceKernels<emu::EmuExec>;

namespace {
// Fault injection for the tests (see emu::Fault); 0 turns it off.
void set_fault(int64_t mode) { emu::fault().store(mode); }
}  // namespace
}  // namespace partdist

TORCH_LIBRARY(partdist_cuda_emulated, m) {
  partdist::dmli::define_ops(m);
  partdist::mining::define_ops(m);
  partdist::nbhd::define_ops(m);
  partdist::parts::define_ops(m);
  m.def("_set_fault(int mode) -> ()", &partdist::set_fault);
}

TORCH_LIBRARY_IMPL(partdist_cuda_emulated, CPU, m) {
  partdist::dmli::register_impls<partdist::dmli::EmulatedCudaKernels>(m);
  partdist::mining::register_impls<partdist::mining::EmulatedCudaKernels>(m);
  partdist::nbhd::register_impls<partdist::nbhd::EmulatedCudaKernels>(m);
  partdist::parts::register_impls<partdist::parts::EmulatedCudaKernels>(m);
}
