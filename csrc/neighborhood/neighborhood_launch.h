// DeviceKernels<Exec>: the CUDA backend of the neighborhood-difference family, written
// once against an executor (CudaExec in neighborhood_cuda.cu, emu::EmuExec in
// emulated.cpp). Indices are int32 when every offset fits, int64 otherwise. The
// kernel bodies are in neighborhood_common.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "neighborhood_kernels.h"

namespace partdist {
namespace nbhd {

inline bool fits_int32(int64_t v) { return v < int64_t(std::numeric_limits<int32_t>::max()) / 2; }

// K over n elements, grid-stride (at most kMaxCudaBlocks blocks; none for n == 0),
// with the arguments ptrs..., n, ints...: the integers as int32 when `narrow` (every
// offset fits), else as int64.
template <typename K, typename Exec, typename... Ptrs, typename... Ints>
void run_indexed(int64_t n, bool narrow, const std::tuple<Ptrs...>& ptrs, Ints... ints) {
  const int64_t blocks = blocks_for(n, kCudaThreads, kMaxCudaBlocks);
  std::apply(
      [&](auto... p) {
        if (narrow)
          Exec().template run<K>(blocks, kCudaThreads, p..., int32_t(n), int32_t(ints)...);
        else
          Exec().template run<K>(blocks, kCudaThreads, p..., n, int64_t(ints)...);
      },
      ptrs);
}

template <typename Exec>
void DeviceKernels<Exec>::forward(const Geom& G, const at::Tensor& f, const at::Tensor& g,
                                  const at::Tensor& out) {
  const int64_t n = G.out_numel();
  Exec::output(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, f.scalar_type(), "partdist_neighborhood_diff_cuda", [&] {
        run_indexed<ForwardKernel<at::opmath_type<scalar_t>>, Exec>(
            n, fits_int32(n),
            std::make_tuple(f.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                            out.mutable_data_ptr<scalar_t>()),
            G.H, G.W, G.k, G.r());
      });
}

template <typename Exec>
void DeviceKernels<Exec>::backward(const Geom& G, const at::Tensor& grad, const at::Tensor& grad_f,
                                   const at::Tensor& grad_g) {
  const int64_t n = G.in_numel();
  Exec::output(grad_f, grad_g);
  // Largest offset read from grad (strides are never negative in PyTorch).
  const int64_t extent =
      (G.B - 1) * G.gsb + (G.C - 1) * G.gsc + (G.H * G.k - 1) * G.gsy + (G.W * G.k - 1) * G.gsx;
  const bool narrow = fits_int32(n) && fits_int32(extent) && fits_int32(G.out_numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "partdist_neighborhood_diff_backward_cuda",
      [&] {
        run_indexed<BackwardKernel<at::opmath_type<scalar_t>>, Exec>(
            n, narrow,
            std::make_tuple(grad.const_data_ptr<scalar_t>(), grad_f.mutable_data_ptr<scalar_t>(),
                            grad_g.mutable_data_ptr<scalar_t>()),
            G.C, G.H, G.W, G.k, G.r(), G.gsb, G.gsc, G.gsy, G.gsx);
      });
}

}  // namespace nbhd
}  // namespace partdist
