// CUDA launchers: one warp per row (anchor) for the forward, each lane scanning
// a strided set of columns and a warp-shuffle reduction merging the lanes'
// selections; one thread per row for the backward scatter. Per-row math from
// mining_common.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../common/ptr.h"
#include "mining_kernels.h"

namespace partdist {
namespace mining {

namespace {
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 256;

template <bool kMax, typename A>
__device__ __forceinline__ void warp_merge(Best<A>& b) {
  for (int off = kWarp / 2; off > 0; off /= 2) {
    Best<A> o;
    o.v = __shfl_down_sync(0xffffffffu, b.v, off);
    o.j = static_cast<int64_t>(
        __shfl_down_sync(0xffffffffu, static_cast<long long>(b.j), off));
    merge<kMax>(b, o);
  }
}

template <typename T, typename A>
__global__ void forward_kernel(Shape S, LossArgs<A> L, const T* dist, const int64_t* labels,
                               const int64_t* lo, ForwardOut<T, A> o) {
  const int lane = threadIdx.x % kWarp;
  const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (i >= S.N) return;  // whole warps leave together
  Best<A> pos = none<A>(), neg = none<A>();
  scan_row<A>(dist + i * S.row_stride, S.col_stride, S.M, lane, kWarp, labels[i], lo,
              S.exclude_self ? i : -1, pos, neg);
  warp_merge<true>(pos);
  warp_merge<false>(neg);
  if (lane == 0) finish_row<T, A>(i, pos, neg, L, o);
}

template <typename T, typename A>
__global__ void backward_kernel(Shape S, LossArgs<A> L, BackwardIn<T, A> b, T* g) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= S.N) return;
  A g_ap, g_an;
  row_grads<T, A>(i, b, L, g_ap, g_an);
  const int64_t p = b.p_inds[i], n = b.n_inds[i];
  if (p >= 0 && p < S.M) g[i * S.M + p] = static_cast<T>(static_cast<A>(g[i * S.M + p]) + g_ap);
  if (n >= 0 && n < S.M) g[i * S.M + n] = static_cast<T>(static_cast<A>(g[i * S.M + n]) + g_an);
}

}  // namespace

void forward_cuda(const Shape& S, const LossSpec& L, const at::Tensor& dist,
                  const at::Tensor& labels, const at::Tensor& labels_other,
                  const at::Tensor& dist_ap, const at::Tensor& dist_an, const at::Tensor& p_inds,
                  const at::Tensor& n_inds, const at::Tensor& valid, const at::Tensor& row_loss) {
  if (S.N == 0) return;
  c10::cuda::CUDAGuard guard(dist.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = unsigned((S.N + kWarpsPerBlock - 1) / kWarpsPerBlock);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dist.scalar_type(), "partdist_mining_forward_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        ForwardOut<scalar_t, A> o{dist_ap.mutable_data_ptr<scalar_t>(),
                                  dist_an.mutable_data_ptr<scalar_t>(),
                                  p_inds.mutable_data_ptr<int64_t>(),
                                  n_inds.mutable_data_ptr<int64_t>(),
                                  valid.mutable_data_ptr<bool>(),
                                  row_loss.defined() ? row_loss.mutable_data_ptr<A>() : nullptr};
        forward_kernel<scalar_t, A><<<blocks, kThreads, 0, stream>>>(
            S, loss_args<A>(L), dist.const_data_ptr<scalar_t>(),
            labels.const_data_ptr<int64_t>(), labels_other.const_data_ptr<int64_t>(), o);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

void backward_cuda(const Shape& S, const LossSpec& L, const at::Tensor& loss_scale,
                   const at::Tensor& grad_ap, const at::Tensor& grad_an,
                   const at::Tensor& dist_ap, const at::Tensor& dist_an,
                   const at::Tensor& p_inds, const at::Tensor& n_inds, const at::Tensor& valid,
                   const at::Tensor& out) {
  if (S.N == 0 || S.M == 0) return;
  c10::cuda::CUDAGuard guard(out.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  out.zero_();
  const unsigned blocks = unsigned((S.N + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dist_ap.scalar_type(), "partdist_mining_backward_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        const auto b = backward_in<scalar_t, A>(loss_scale, grad_ap, grad_an, dist_ap, dist_an,
                                                     p_inds, n_inds, valid);
        backward_kernel<scalar_t, A><<<blocks, kThreads, 0, stream>>>(
            S, loss_args<A>(L), b, out.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

}  // namespace mining
}  // namespace partdist
