// What the op families' backend headers (<family>_kernels.h) share: the executors
// their device backends are instantiated with, and the explicit instantiations of a
// family's register_impls<K> for its backends (host code only).
#pragma once

namespace torch {
class Library;
}

namespace partdist {
struct CudaExec;  // common/cuda_launch.cuh: launches on the GPU
namespace emu {
struct EmuExec;  // common/emulate.h: the CPU emulation of those launches
}
}  // namespace partdist

#ifdef PARTDIST_WITH_CUDA
#define PARTDIST_IF_CUDA(...) __VA_ARGS__
#else
#define PARTDIST_IF_CUDA(...)
#endif

// In a family's namespace, after the definition of register_impls.
#define PARTDIST_INSTANTIATE_REGISTER_IMPLS                           \
  template void register_impls<CpuKernels>(torch::Library&);          \
  template void register_impls<EmulatedCudaKernels>(torch::Library&); \
  PARTDIST_IF_CUDA(template void register_impls<CudaKernels>(torch::Library&);)
