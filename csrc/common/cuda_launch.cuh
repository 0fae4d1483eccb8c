// The device side of the launches (CUDA translation units only): the __global__
// shims that compute a thread's position and call a kernel body K::run (written once,
// host+device, in the families' *_common.h), and CudaExec, the executor the family
// launchers (<family>_launch.h) are written against (common/emulate.h has the CPU
// emulation's executor with the same interface).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "launch.h"

namespace partdist {

template <typename K, typename... Args>
__global__ void thread_kernel(Args... args) {
  K::run(ThreadPos{int64_t(blockIdx.x) * blockDim.x + threadIdx.x, int64_t(gridDim.x) * blockDim.x},
         args...);
}

struct DeviceWarp {
  template <typename V>
  __device__ __forceinline__ V shfl_down(V v, unsigned off) const {
    return __shfl_down_sync(0xffffffffu, v, off);
  }
};

template <typename K, typename... Args>
__global__ void warp_kernel(Args... args) {
  K::run(DeviceWarp{},
         ThreadPos{int64_t(blockIdx.x) * blockDim.x + threadIdx.x, int64_t(gridDim.x) * blockDim.x},
         args...);
}

// After a launch: a GPU this build has no kernel image for gets a message that says
// how to rebuild; any other launch error as c10 reports it.
inline void check_launch() {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction) {
    int dev = 0;
    cudaDeviceProp p{};
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&p, dev) == cudaSuccess)
      TORCH_CHECK(false, "partdist: this build has no CUDA kernel for the GPU ", p.name,
                  " (compute capability ", p.major, ".", p.minor,
                  "). Rebuild partdist for it, e.g. TORCH_CUDA_ARCH_LIST=\"", p.major, ".", p.minor,
                  "\" pip install --no-build-isolation -e . (", cudaGetErrorString(e), ")");
    TORCH_CHECK(false,
                "partdist: this build has no CUDA kernel for this GPU; rebuild with "
                "TORCH_CUDA_ARCH_LIST set to its compute capability (",
                cudaGetErrorString(e), ")");
  }
  C10_CUDA_CHECK(e);
}

struct CudaExec {
  static void output(const at::Tensor&) {}

  template <typename K, typename... Args>
  void run(int64_t blocks, int threads, const Args&... args) const {
    if (blocks == 0) return;
    thread_kernel<K, Args...>
        <<<unsigned(blocks), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
    check_launch();
  }

  template <typename K, typename... Args>
  void run_warps(int64_t blocks, int threads, const Args&... args) const {
    if (blocks == 0) return;
    warp_kernel<K, Args...>
        <<<unsigned(blocks), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
    check_launch();
  }
};

}  // namespace partdist
