// DeviceKernels<Exec>: the CUDA backend of the neighborhood-difference family, written
// once against an executor (CudaExec in neighborhood_cuda.cu, emu::EmuExec in
// neighborhood_emulated.cpp). Indices are int32 when every offset fits, int64
// otherwise. The kernel bodies are in neighborhood_common.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

#include "neighborhood_kernels.h"

namespace partdist {
namespace nbhd {

inline bool fits_int32(int64_t v) { return v < int64_t(std::numeric_limits<int32_t>::max()) / 2; }

template <typename Exec>
void DeviceKernels<Exec>::forward(const Geom& G, const at::Tensor& f, const at::Tensor& g,
                                  const at::Tensor& out) {
  const int64_t n = G.out_numel();
  if (n == 0) return;
  Exec::output(out);
  const int64_t blocks = blocks_for(n, kCudaThreads, kMaxCudaBlocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, f.scalar_type(), "partdist_neighborhood_diff_cuda", [&] {
        using K = ForwardKernel<at::opmath_type<scalar_t>>;
        const scalar_t* pf = f.const_data_ptr<scalar_t>();
        const scalar_t* pg = g.const_data_ptr<scalar_t>();
        scalar_t* po = out.mutable_data_ptr<scalar_t>();
        if (fits_int32(n))
          Exec().template run<K>(blocks, kCudaThreads, pf, pg, po, int32_t(n), int32_t(G.H),
                                 int32_t(G.W), int32_t(G.k), int32_t(G.r));
        else
          Exec().template run<K>(blocks, kCudaThreads, pf, pg, po, n, G.H, G.W, G.k, G.r);
      });
}

template <typename Exec>
void DeviceKernels<Exec>::backward(const Geom& G, const at::Tensor& grad, const at::Tensor& grad_f,
                                   const at::Tensor& grad_g) {
  const int64_t n = G.in_numel();
  if (n == 0) return;
  Exec::output(grad_f);
  Exec::output(grad_g);
  const int64_t blocks = blocks_for(n, kCudaThreads, kMaxCudaBlocks);
  // Largest offset read from grad (strides are never negative in PyTorch).
  const int64_t extent =
      (G.B - 1) * G.gsb + (G.C - 1) * G.gsc + (G.H * G.k - 1) * G.gsy + (G.W * G.k - 1) * G.gsx;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "partdist_neighborhood_diff_backward_cuda",
      [&] {
        using K = BackwardKernel<at::opmath_type<scalar_t>>;
        const scalar_t* pgo = grad.const_data_ptr<scalar_t>();
        scalar_t* pgf = grad_f.mutable_data_ptr<scalar_t>();
        scalar_t* pgg = grad_g.mutable_data_ptr<scalar_t>();
        if (fits_int32(n) && fits_int32(extent) && fits_int32(G.out_numel()))
          Exec().template run<K>(blocks, kCudaThreads, pgo, pgf, pgg, int32_t(n), int32_t(G.C),
                                 int32_t(G.H), int32_t(G.W), int32_t(G.k), int32_t(G.r),
                                 int32_t(G.gsb), int32_t(G.gsc), int32_t(G.gsy), int32_t(G.gsx));
        else
          Exec().template run<K>(blocks, kCudaThreads, pgo, pgf, pgg, n, G.C, G.H, G.W, G.k, G.r,
                                 G.gsb, G.gsc, G.gsy, G.gsx);
      });
}

}  // namespace nbhd
}  // namespace partdist
