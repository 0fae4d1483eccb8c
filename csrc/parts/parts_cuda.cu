// CUDA launchers: one thread per pair (part_dist) or per (pair, query cell) task
// (dsr_dist); the math is in parts_common.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "parts_kernels.h"

namespace partdist {
namespace parts {

namespace {
constexpr int kThreads = 128;

template <typename T>
__global__ void part_forward_kernel(PartTile<T> L, T* out) {
  int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= L.num_pairs()) return;
  part_pair_forward(L, q, out);
}

template <typename T>
__global__ void part_backward_kernel(PartTile<T> L, const T* gout, T* cw, T* ce) {
  int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= L.num_pairs()) return;
  part_pair_backward(L, q, gout, cw, ce);
}

// Consecutive threads take consecutive query cells of one pair: they share the
// gallery's Gram matrix (broadcast reads) and read adjacent entries of B.
template <typename T>
__global__ void dsr_kernel(DsrTile<T> L, T* err) {
  int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= L.num_tasks()) return;
  T w[kMaxCells], wn[kMaxCells], z[kMaxCells];
  err[q] = dsr_task(L, q, w, wn, z);
}

unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }
}  // namespace

void part_forward_cuda(const PartArgs& a, const at::Tensor& out) {
  const int64_t n = a.mc * a.nc;
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(a.xy.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.xy.scalar_type(), "partdist_part_forward_cuda", [&] {
    part_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        part_tile<scalar_t>(a), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void part_backward_cuda(const PartArgs& a, const at::Tensor& gout, const at::Tensor& cw,
                        const at::Tensor& ce) {
  const int64_t n = a.mc * a.nc;
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(a.xy.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.xy.scalar_type(), "partdist_part_backward_cuda", [&] {
    part_backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        part_tile<scalar_t>(a), gout.const_data_ptr<scalar_t>(), cw.mutable_data_ptr<scalar_t>(),
        ce.defined() ? ce.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void dsr_forward_cuda(const DsrArgs& a, const at::Tensor& err) {
  const int64_t n = a.mc * a.nc * a.Lq;
  if (n == 0) return;
  TORCH_CHECK(a.Lg <= kMaxCells, "partdist.dsr_dist: at most ", kMaxCells, " gallery cells");
  c10::cuda::CUDAGuard guard(a.G.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.G.scalar_type(), "partdist_dsr_forward_cuda", [&] {
    dsr_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(dsr_tile<scalar_t>(a),
                                                                 err.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace parts
}  // namespace partdist
