// The device side of the launches (CUDA translation units only): the __global__
// shim that computes a thread's position and calls a kernel body K::run (written once,
// host+device, in the families' *_common.h), CudaExec, the executor the family
// launchers (<family>_launch.h) are written against (common/emulate.h has the CPU
// emulation's executor with the same interface), and the registration of a family's
// CUDA backend (PARTDIST_CUDA_BACKEND).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "launch.h"
#include "registration.h"

namespace partdist {

struct DeviceWarp {
  template <typename V>
  __device__ __forceinline__ V shfl_down(V v, unsigned off) const {
    return __shfl_down_sync(0xffffffffu, v, off);
  }
  template <typename V>
  __device__ __forceinline__ V shfl_xor(V v, unsigned mask) const {
    return __shfl_xor_sync(0xffffffffu, v, mask);
  }
  __device__ __forceinline__ void sync() const { __syncwarp(); }
};

// The block of a block-cooperative kernel (K::run(Block&, args...), see launch.h).
struct DeviceBlock {
  unsigned char* smem;
  int64_t block;
  int threads;
  template <typename T>
  struct PerThread {  // this thread's value: registers
    T v;
    __device__ explicit PerThread(const DeviceBlock&) {}
    __device__ __forceinline__ T& operator[](int) { return v; }
  };
  template <typename F>
  __device__ __forceinline__ void each(const F& f) const {
    f(int(threadIdx.x));
    __syncthreads();
  }
  template <typename T>
  __device__ __forceinline__ T* shared() const {
    return reinterpret_cast<T*>(smem);
  }
};

template <typename K, typename... Args>
__global__ void block_kernel(Args... args) {
  extern __shared__ __align__(16) unsigned char smem[];
  DeviceBlock blk{smem, int64_t(blockIdx.x), int(blockDim.x)};
  K::run(blk, args...);
}

// K::run(pos, args...), or K::run(DeviceWarp{}, pos, args...) for kernels that use
// warp shuffles (kWarps), at the thread's position in the 1-D grid.
template <bool kWarps, typename K, typename... Args>
__global__ void grid_kernel(Args... args) {
  const ThreadPos pos{int64_t(blockIdx.x) * blockDim.x + threadIdx.x,
                      int64_t(gridDim.x) * blockDim.x};
  if constexpr (kWarps)
    K::run(DeviceWarp{}, pos, args...);
  else
    K::run(pos, args...);
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
  // The outputs of a launch (the emulation poisons them first).
  template <typename... Tensors>
  static void output(const Tensors&...) {}

  // The current GPU's L2 cache in bytes (the ops' device guard makes it the inputs' GPU).
  static int64_t l2_cache_bytes() {
    int bytes = 0;
    C10_CUDA_CHECK(
        cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, c10::cuda::current_device()));
    return bytes;
  }

  template <typename K, typename... Args>
  void run(int64_t blocks, int threads, const Args&... args) const {
    launch<false, K>(blocks, threads, args...);
  }

  template <typename K, typename... Args>
  void run_warps(int64_t blocks, int threads, const Args&... args) const {
    launch<true, K>(blocks, threads, args...);
  }

  // K::run(block, args...) for `blocks` blocks of `threads` threads with smem_bytes
  // (at most 48 KiB) of shared memory each.
  template <typename K, typename... Args>
  void run_blocks(int64_t blocks, int threads, size_t smem_bytes, const Args&... args) const {
    if (blocks == 0) return;
    block_kernel<K, Args...>
        <<<unsigned(blocks), threads, smem_bytes, c10::cuda::getCurrentCUDAStream()>>>(args...);
    check_launch();
  }

 private:
  template <bool kWarps, typename K, typename... Args>
  static void launch(int64_t blocks, int threads, const Args&... args) {
    if (blocks == 0) return;
    grid_kernel<kWarps, K, Args...>
        <<<unsigned(blocks), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
    check_launch();
  }
};

}  // namespace partdist

// At global scope in <family>_cuda.cu: the family's CUDA backend (DeviceKernels on
// CudaExec, <family>_launch.h) instantiated and registered for the CUDA dispatch key.
#define PARTDIST_CUDA_BACKEND(FAMILY)                                      \
  template struct ::partdist::FAMILY::DeviceKernels<::partdist::CudaExec>; \
  PARTDIST_REGISTER_BACKEND(FAMILY, CUDA, CudaKernels)
