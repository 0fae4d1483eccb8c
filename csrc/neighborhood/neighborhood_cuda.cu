// CUDA launchers: one thread per output element (forward) and one thread per
// f / g element (backward: each thread gathers dL/df and dL/dg of its element,
// no atomics). Per-element math from neighborhood_common.h. Indices are int32
// when every offset fits, int64 otherwise.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

#include "neighborhood_kernels.h"

namespace partdist {
namespace nbhd {

namespace {
constexpr int kThreads = 256;

template <typename T, typename I>
__global__ void forward_kernel(const T* __restrict__ f, const T* __restrict__ g, T* __restrict__ out,
                               I n, I H, I W, I k, I r) {
  using A = at::opmath_type<T>;
  const I Hk = H * k, Wk = W * k;
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += I(gridDim.x) * blockDim.x) {
    const I X = idx % Wk;
    const I t = idx / Wk;
    const I Y = t % Hk;
    const I p = t / Hk;
    I y, u, x, v;
    out_to_block(Y, X, k, y, u, x, v);
    out[idx] = diff_cell<A>(f + p * H * W, g + p * H * W, H, W, r, y, u, x, v);
  }
}

template <typename T, typename I>
__global__ void backward_kernel(const T* __restrict__ go, T* __restrict__ gf, T* __restrict__ gg,
                                I n, I C, I H, I W, I k, I r, I sb, I sc, I sy, I sx) {
  using A = at::opmath_type<T>;
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += I(gridDim.x) * blockDim.x) {
    const I x = idx % W;
    const I t = idx / W;
    const I y = t % H;
    const I p = t / H;
    const I b = p / C, c = p % C;
    const PlaneView<T, I> view{go + b * sb + c * sc, sy, sx};
    gf[idx] = static_cast<T>(grad_f_cell<A>(view, k, y, x));
    gg[idx] = static_cast<T>(grad_g_cell<A>(view, H, W, k, r, y, x));
  }
}

unsigned blocks_for(int64_t n) {
  // Grid-stride loops: cap the grid, each thread takes several elements if needed.
  return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20));
}

bool fits_int32(int64_t v) { return v < int64_t(std::numeric_limits<int32_t>::max()) / 2; }
}  // namespace

void forward_cuda(const Geom& G, const at::Tensor& f, const at::Tensor& g, const at::Tensor& out) {
  const int64_t n = G.out_numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(f.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(),
                                  "partdist_neighborhood_diff_cuda", [&] {
    const scalar_t* pf = f.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    if (fits_int32(n)) {
      forward_kernel<scalar_t, int32_t><<<blocks_for(n), kThreads, 0, stream>>>(
          pf, pg, po, int32_t(n), int32_t(G.H), int32_t(G.W), int32_t(G.k), int32_t(G.r));
    } else {
      forward_kernel<scalar_t, int64_t><<<blocks_for(n), kThreads, 0, stream>>>(
          pf, pg, po, n, G.H, G.W, G.k, G.r);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_cuda(const Geom& G, const at::Tensor& grad, const at::Tensor& grad_f,
                   const at::Tensor& grad_g) {
  const int64_t n = G.in_numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(grad.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  // Largest offset read from grad (strides are never negative in PyTorch).
  const int64_t extent = (G.B - 1) * G.gsb + (G.C - 1) * G.gsc + (G.H * G.k - 1) * G.gsy +
                         (G.W * G.k - 1) * G.gsx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "partdist_neighborhood_diff_backward_cuda", [&] {
    const scalar_t* pgo = grad.const_data_ptr<scalar_t>();
    scalar_t* pgf = grad_f.mutable_data_ptr<scalar_t>();
    scalar_t* pgg = grad_g.mutable_data_ptr<scalar_t>();
    if (fits_int32(n) && fits_int32(extent) && fits_int32(G.out_numel())) {
      backward_kernel<scalar_t, int32_t><<<blocks_for(n), kThreads, 0, stream>>>(
          pgo, pgf, pgg, int32_t(n), int32_t(G.C), int32_t(G.H), int32_t(G.W), int32_t(G.k),
          int32_t(G.r), int32_t(G.gsb), int32_t(G.gsc), int32_t(G.gsy), int32_t(G.gsx));
    } else {
      backward_kernel<scalar_t, int64_t><<<blocks_for(n), kThreads, 0, stream>>>(
          pgo, pgf, pgg, n, G.C, G.H, G.W, G.k, G.r, G.gsb, G.gsc, G.gsy, G.gsx);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace nbhd
}  // namespace partdist
