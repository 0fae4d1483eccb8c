// CUDA launchers: one thread per pair, per-pair math from dmli_common.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../common/ptr.h"
#include "dmli_kernels.h"

namespace partdist {
namespace dmli {

namespace {
constexpr int kThreads = 128;

template <typename T>
__global__ void forward_kernel(PairLayout L, Mode mode, bool normalize, const T* xy,
                               const T* xx, const T* yy, T* out) {
  int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= L.num_pairs) return;
  T row[kMaxStripes];
  pair_forward<T>(L, p, mode, normalize, xy, xx, yy, out, row);
}

// table: m*n entries per pair, interleaved over pairs (entry k of pair p at
// table[k * num_pairs + p]) so that the threads of a warp touch adjacent words.
template <typename T>
__global__ void backward_kernel(PairLayout L, Mode mode, bool normalize, const T* gout,
                                const T* xy, const T* xx, const T* yy, T* w, T* table) {
  int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= L.num_pairs) return;
  T grow[kMaxStripes];
  pair_backward<T>(L, p, mode, normalize, gout, xy, xx, yy, w, table ? table + p : nullptr,
                    L.num_pairs, grow);
}

unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }
}  // namespace

void forward_cuda(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& xy,
                  const at::Tensor& xx, const at::Tensor& yy, const at::Tensor& out) {
  if (L.num_pairs == 0) return;
  TORCH_CHECK(L.m <= kMaxStripes && L.n <= kMaxStripes, "partdist: at most ", kMaxStripes,
              " stripes per image");
  c10::cuda::CUDAGuard guard(xy.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(xy.scalar_type(), "partdist_dmli_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(L.num_pairs), kThreads, 0, stream>>>(
        L, mode, normalize, xy.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(xx),
        ptr_or_null<scalar_t>(yy), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_cuda(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& gout,
                   const at::Tensor& xy, const at::Tensor& xx, const at::Tensor& yy,
                   const at::Tensor& w) {
  if (L.num_pairs == 0) return;
  TORCH_CHECK(L.m <= kMaxStripes && L.n <= kMaxStripes, "partdist: at most ", kMaxStripes,
              " stripes per image");
  c10::cuda::CUDAGuard guard(xy.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor table;
  if (mode != Mode::kCells)
    table = at::empty({int64_t(L.m) * L.n * L.num_pairs}, xy.options());
  AT_DISPATCH_FLOATING_TYPES(xy.scalar_type(), "partdist_dmli_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(L.num_pairs), kThreads, 0, stream>>>(
        L, mode, normalize, gout.const_data_ptr<scalar_t>(), xy.const_data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(xx), ptr_or_null<scalar_t>(yy), w.mutable_data_ptr<scalar_t>(),
        table.defined() ? table.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace dmli
}  // namespace partdist
