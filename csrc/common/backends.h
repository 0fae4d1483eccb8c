// What the op families' backend headers (<family>_kernels.h) share: the executors
// their device backends are instantiated with, and the declaration of a family's
// backends and registration entry points (host code only).
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

// In a family's namespace: its backends, each with the static members MEMBERS (the
// declarations the family's host drivers call; a member may read kOnDevice):
//   CpuKernels            <family>_cpu.cpp
//   DeviceKernels<Exec>   <family>_launch.h, the CUDA kernels written once against an
//                         executor: CudaKernels (on the GPU, <family>_cuda.cu) and
//                         EmulatedCudaKernels (the CPU emulation, emulated.cpp)
// and the registration entry points (defined by PARTDIST_FAMILY_OPS, common/registration.h).
#define PARTDIST_DECLARE_BACKENDS(MEMBERS)                             \
  struct CpuKernels {                                                  \
    static constexpr bool kOnDevice = false;                           \
    MEMBERS                                                            \
  };                                                                   \
  template <typename Exec>                                             \
  struct DeviceKernels {                                               \
    static constexpr bool kOnDevice = true;                            \
    MEMBERS                                                            \
  };                                                                   \
  using CudaKernels = DeviceKernels<::partdist::CudaExec>;             \
  using EmulatedCudaKernels = DeviceKernels<::partdist::emu::EmuExec>; \
  void define_ops(torch::Library& m);                                  \
  template <typename K>                                                \
  void register_impls(torch::Library& m);
