// DeviceKernels<Exec>: the CUDA backend of the DMLI family, written once against an
// executor (CudaExec in dmli_cuda.cu, emu::EmuExec in dmli_emulated.cpp): launch
// configuration, scratch tables, GEMMs and tile planning of the CUDA path. The
// kernel bodies are in dmli_common.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>

#include <cstdlib>
#include <cstring>

#include "../common/gemm_grads.h"
#include "../common/matmul.h"
#include "../common/ptr.h"
#include "dmli_kernels.h"

namespace partdist {
namespace dmli {

// The DP in the GEMM's epilogue (FusedTileKernel) for local_dist's forward: opt-in by
// PARTDIST_FUSED_EPILOGUE=1 (read at every call) until a GPU run shows whether it pays
// against cuBLAS's GEMM and the separate DP kernel; float32 / float64 GEMM operands
// (half ones go to cuBLAS's tensor cores) and m, n <= kFusedRows.
inline bool fused_epilogue_requested() {
  const char* v = std::getenv("PARTDIST_FUSED_EPILOGUE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

template <typename Exec>
void DeviceKernels<Exec>::forward(const PairLayout& L, Mode mode, bool normalize,
                                  const at::Tensor& xy, const at::Tensor& xx, const at::Tensor& yy,
                                  const at::Tensor& out) {
  if (L.num_pairs == 0) return;
  if (mode != Mode::kCells)
    TORCH_CHECK(L.m <= kMaxStripes && L.n <= kMaxStripes, "partdist: at most ", kMaxStripes,
                " stripes per image in the DP, got m=", L.m, ", n=", L.n);
  Exec::output(out);
  AT_DISPATCH_FLOATING_TYPES(xy.scalar_type(), "partdist_dmli_forward_cuda", [&] {
    Exec().template run<ForwardKernel>(blocks_for(L.num_pairs, kCudaThreads), kCudaThreads, L, mode,
                                       normalize, xy.const_data_ptr<scalar_t>(),
                                       ptr_or_null<scalar_t>(xx), ptr_or_null<scalar_t>(yy),
                                       out.mutable_data_ptr<scalar_t>());
  });
}

template <typename Exec>
void DeviceKernels<Exec>::backward(const PairLayout& L, Mode mode, bool normalize,
                                   const at::Tensor& gout, const at::Tensor& xy,
                                   const at::Tensor& xx, const at::Tensor& yy,
                                   const at::Tensor& w) {
  if (L.num_pairs == 0) return;
  if (mode != Mode::kCells)
    TORCH_CHECK(L.m <= kMaxStripes && L.n <= kMaxStripes, "partdist: at most ", kMaxStripes,
                " stripes per image in the DP, got m=", L.m, ", n=", L.n);
  at::Tensor table;
  if (backward_table_entries(L, mode) > 0) {
    table = at::empty({backward_table_entries(L, mode)}, xy.options());
    Exec::output(table);
  }
  Exec::output(w);
  AT_DISPATCH_FLOATING_TYPES(xy.scalar_type(), "partdist_dmli_backward_cuda", [&] {
    Exec().template run<BackwardKernel>(
        blocks_for(L.num_pairs, kCudaThreads), kCudaThreads, L, mode, normalize,
        gout.const_data_ptr<scalar_t>(), xy.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(xx),
        ptr_or_null<scalar_t>(yy), w.mutable_data_ptr<scalar_t>(),
        table.defined() ? table.mutable_data_ptr<scalar_t>() : static_cast<scalar_t*>(nullptr));
  });
}

// Aligned pairs: dot products by one batched GEMM, then the pair kernels, and the
// chain rule as matrix products.
template <typename Exec>
void DeviceKernels<Exec>::aligned_forward(Mode mode, bool normalize, const DPRule& rule,
                                          const at::Tensor& x, const at::Tensor& y,
                                          const at::Tensor& out) {
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  // x, y: the compute dtype, or float16 / bfloat16 (kHalfGemm): a half GEMM with float32
  // accumulation and result, the norms in float32
  at::Tensor xy = stripe_bmm(x, y.transpose(1, 2)).contiguous();
  PairLayout L = aligned_layout(N, m, n);
  L.rule = rule;
  const at::ScalarType ct = xy.scalar_type();
  forward(L, mode, normalize, xy, x.to(ct).pow(2).sum(-1), y.to(ct).pow(2).sum(-1), out);
}

template <typename Exec>
void DeviceKernels<Exec>::aligned_backward(Mode mode, bool normalize, const DPRule& rule,
                                           const at::Tensor& grad, const at::Tensor& x,
                                           const at::Tensor& y, const at::Tensor& gx,
                                           const at::Tensor& gy) {
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  // x, y as in aligned_forward (half operands of the recomputed GEMM with kHalfGemm); the
  // norms and the chain rule in the compute dtype (grad's)
  at::Tensor xy = stripe_bmm(x, y.transpose(1, 2)).contiguous();
  const at::ScalarType ct = grad.scalar_type();
  const at::Tensor xc = x.to(ct), yc = y.to(ct);
  at::Tensor W = at::empty_like(xy);
  PairLayout L = aligned_layout(N, m, n);
  L.rule = rule;
  backward(L, mode, normalize, grad, xy, xc.pow(2).sum(-1), yc.pow(2).sum(-1), W);
  gx.zero_();
  gy.zero_();
  accumulate_grads(W, xc, yc, gx, gy);
}

// The dimensions of aligned pairs x [N, m, C], y [N, n, C] for the DP kernels (m, n
// checked against kMaxStripes).
struct AlignedDims {
  int64_t N, C;
  int m, n;
};

inline AlignedDims aligned_dims(const at::Tensor& x, const at::Tensor& y) {
  const AlignedDims d{x.size(0), x.size(2), int(x.size(1)), int(y.size(1))};
  TORCH_CHECK(d.m <= kMaxStripes && d.n <= kMaxStripes, "partdist: at most ", kMaxStripes,
              " stripes per image in the DP, got m=", d.m, ", n=", d.n);
  return d;
}

// Training pair of aligned pairs: one warp kernel per direction (dmli_common.h), no
// GEMM. The backward's weights go into a scratch table of m*n values per pair.
template <typename Exec>
void DeviceKernels<Exec>::aligned_forward_cells(bool normalize, const DPRule& rule,
                                                const at::Tensor& x, const at::Tensor& y,
                                                const at::Tensor& out, const at::Tensor& cells) {
  const AlignedDims D = aligned_dims(x, y);
  const int64_t N = D.N, C = D.C;
  const int m = D.m, n = D.n;
  if (N == 0) return;
  Exec::output(out, cells);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "partdist_aligned_forward_cells_cuda", [&] {
    Exec().template run_warps<WarpForwardCellsKernel>(
        blocks_for(N, kWarpsPerBlock), kCudaThreads, N, m, n, C, normalize, rule,
        x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), cells.mutable_data_ptr<scalar_t>());
  });
}

template <typename Exec>
void DeviceKernels<Exec>::aligned_backward_cells(bool normalize, const DPRule& rule,
                                                 const at::Tensor& grad, const at::Tensor& x,
                                                 const at::Tensor& y, const at::Tensor& cells,
                                                 const at::Tensor& gx, const at::Tensor& gy) {
  const AlignedDims D = aligned_dims(x, y);
  const int64_t N = D.N, C = D.C;
  const int m = D.m, n = D.n;
  if (N == 0) return;
  at::Tensor table = at::empty({N * m * n}, x.options());
  Exec::output(gx, gy, table);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "partdist_aligned_backward_cells_cuda", [&] {
    Exec().template run_warps<WarpBackwardCellsKernel>(
        blocks_for(N, kWarpsPerBlock), kCudaThreads, N, m, n, C, normalize, rule,
        grad.const_data_ptr<scalar_t>(), grad.stride(0), x.const_data_ptr<scalar_t>(),
        y.const_data_ptr<scalar_t>(), cells.const_data_ptr<scalar_t>(),
        table.mutable_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(),
        gy.mutable_data_ptr<scalar_t>());
  });
}

// All pairs: tiles in sequence on the stream, each one GEMM of mc*m query stripes
// against nc*n gallery stripes ([mc*m, nc*n], m*n values per pair) and the fused
// normalize + DP kernel over its pairs; a tile's GEMM output is at most tile_bytes.
template <typename Exec>
int64_t DeviceKernels<Exec>::tile_bytes(bool half_gemm) {
  return device_dmli_tile_bytes(Exec::l2_cache_bytes(), half_gemm);
}

template <typename Exec>
Tiling DeviceKernels<Exec>::local_dist_tiling(int64_t M, int64_t N, int64_t m, int64_t n,
                                              int64_t elem, int64_t chunk_size, bool half_gemm) {
  return tiling_for(M, N, tile_pairs(chunk_size, tile_bytes(half_gemm), m * n * elem));
}

template <typename Exec>
void DeviceKernels<Exec>::local_dist_forward(const Prepared& P, bool normalize, const DPRule& rule,
                                             int64_t chunk_size, const at::Tensor& out) {
  const int64_t M = P.x.size(0), N = P.y.size(0), m = P.x.size(1), n = P.y.size(1);
  const int64_t C = P.x.size(2);
  const bool half_gemm = P.xg.element_size() == 2;
  if (!half_gemm && m <= kFusedRows && n <= kFusedRows && fused_epilogue_requested()) {
    const int64_t tq = kFusedRows / m, tg = kFusedRows / n;
    const int64_t tiles_n = (N + tg - 1) / tg, tiles = ((M + tq - 1) / tq) * tiles_n;
    Exec::output(out);
    AT_DISPATCH_FLOATING_TYPES(P.x.scalar_type(), "partdist_local_dist_fused_cuda", [&] {
      Exec().template run_blocks<FusedTileKernel>(
          tiles, kFusedThreads, size_t(fused_smem_bytes<scalar_t>()), M, N, int(m), int(n), C,
          tiles_n, normalize, rule, P.x.const_data_ptr<scalar_t>(), P.y.const_data_ptr<scalar_t>(),
          P.xx.const_data_ptr<scalar_t>(), P.yy.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), out.stride(0));
    });
    return;
  }
  const Tiling T = local_dist_tiling(M, N, m, n, P.x.element_size(), chunk_size, half_gemm);
  const at::Tensor x2 = P.xg.view({M * m, C}), y2 = P.yg.view({N * n, C});
  const at::Tensor xx = P.xx.view({M * m}), yy = P.yy.view({N * n});
  at::Tensor buf = at::empty({T.mc * m * T.nc * n}, P.x.options());
  for_each_tile(M, N, T, [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc) {
    at::Tensor xy = buf.narrow(0, 0, mc * m * nc * n).view({mc * m, nc * n});
    stripe_mm_out(xy, x2.narrow(0, a0 * m, mc * m), y2.narrow(0, b0 * n, nc * n).t());
    PairLayout L = tile_layout(mc, nc, m, n, N);
    L.rule = rule;
    forward(L, Mode::kFused, normalize, xy, xx.narrow(0, a0 * m, mc * m),
            yy.narrow(0, b0 * n, nc * n), out.narrow(0, a0, mc).narrow(1, b0, nc));
  });
}

}  // namespace dmli
}  // namespace partdist
