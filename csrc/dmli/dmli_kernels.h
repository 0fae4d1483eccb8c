// Backends of the DMLI family. The host drivers (dmli_ops.cpp) are templates over a
// backend K, a struct of static members:
//   forward / backward         per-pair kernels over a PairLayout (Mode kDmli, kFused,
//                              kCells); tensors are positioned at the start of the
//                              block the layout describes (views are fine), float or
//                              double, one dtype and device; xx / yy may be undefined
//                              in kDmli. backward's w receives dL/dd (kDmli) or the
//                              cell weights (kFused, kCells), layout of xy.
//   aligned_forward / aligned_backward
//                              aligned pairs end to end: x [N, m, C], y [N, n, C]
//                              (contiguous; in float16 / bfloat16 on a backend with
//                              kHalfGemm, the operands of its stripe GEMM); out [N]
//                              (kFused) or [N, m, n] (kCells); the backward writes gx and
//                              gy (compute dtype, grad's) entirely.
//   aligned_forward_cells / aligned_backward_cells
//                              the training pair of batch_local_dist (kFused, not diag):
//                              as aligned_forward / aligned_backward, the forward also
//                              writing cells [2, N, m, n] (the raw stripe distances, then
//                              the cell values), which the backward reads instead of
//                              computing the stripe distances again. grad [N] may have
//                              any stride. The CPU's DP runs in SIMD lanes over blocks of
//                              pairs; the device's is the warp kernels of dmli_common.h
//                              (one warp per pair, one launch per direction).
//   local_dist_tiling / local_dist_forward
//                              all pairs of the prepared inputs, tile by tile.
//   tile_bytes(half_gemm)      the budget of a local_dist tile's buffers (forward and
//                              backward), half_gemm: the stripe GEMM's operands are
//                              float16 / bfloat16 (common/tiling.h device_dmli_tile_bytes)
//   kTablesPerPair             the DP tables per pair the backward's kernel keeps (in
//                              units of m*n values).
// CpuKernels (dmli_cpu.cpp) and DeviceKernels<Exec> (dmli_launch.h: the CUDA
// kernels, launched by CudaExec on the GPU or by emu::EmuExec in the CPU emulation).
// Each backend's file registers the ops for its dispatch key (register_impls<K>).
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/backends.h"
#include "../common/tiling.h"
#include "dmli_common.h"

namespace partdist {

namespace dmli {

// Inputs of the all-pairs ops in the compute dtype, contiguous: x [M, m, C], y [N, n, C],
// and their squared stripe norms xx [M, m], yy [N, n]. xg, yg: the operands of the stripe
// GEMMs (common/matmul.h stripe_mm_out): float16 / bfloat16 inputs as they are on a
// backend with half GEMMs (kHalfGemm), x and y otherwise.
struct Prepared {
  at::Tensor x, y, xx, yy, xg, yg;
  bool bf16 = false;  // x and y hold bfloat16 values (the CPU's bfloat16 all-pairs kernel)
};

#define PARTDIST_DMLI_BACKEND_MEMBERS                                                             \
  static void forward(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& xy,       \
                      const at::Tensor& xx, const at::Tensor& yy, const at::Tensor& out);         \
  static void backward(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& gout,    \
                       const at::Tensor& xy, const at::Tensor& xx, const at::Tensor& yy,          \
                       const at::Tensor& w);                                                      \
  static void aligned_forward(Mode mode, bool normalize, const DPRule& rule, const at::Tensor& x, \
                              const at::Tensor& y, const at::Tensor& out);                        \
  static void aligned_backward(Mode mode, bool normalize, const DPRule& rule,                     \
                               const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,  \
                               const at::Tensor& gx, const at::Tensor& gy);                       \
  static void aligned_forward_cells(bool normalize, const DPRule& rule, const at::Tensor& x,      \
                                    const at::Tensor& y, const at::Tensor& out,                   \
                                    const at::Tensor& cells);                                     \
  static void aligned_backward_cells(                                                             \
      bool normalize, const DPRule& rule, const at::Tensor& grad, const at::Tensor& x,            \
      const at::Tensor& y, const at::Tensor& cells, const at::Tensor& gx, const at::Tensor& gy);  \
  static Tiling local_dist_tiling(int64_t M, int64_t N, int64_t m, int64_t n, int64_t elem,       \
                                  int64_t chunk_size, bool half_gemm);                            \
  static void local_dist_forward(const Prepared& P, bool normalize, const DPRule& rule,           \
                                 int64_t chunk_size, const at::Tensor& out);

struct CpuKernels {
  static int64_t tile_bytes(bool) { return kCpuTileBytes; }
  static constexpr bool kHalfGemm = false;
  static constexpr int64_t kTablesPerPair = 0;  // per-thread scratch
  PARTDIST_DMLI_BACKEND_MEMBERS
};

template <typename Exec>
struct DeviceKernels {
  static int64_t tile_bytes(bool half_gemm);    // dmli_launch.h
  static constexpr bool kHalfGemm = true;       // half features on tensor cores (CUDA)
  static constexpr int64_t kTablesPerPair = 1;  // BackwardKernel's interleaved table
  PARTDIST_DMLI_BACKEND_MEMBERS
};
#undef PARTDIST_DMLI_BACKEND_MEMBERS

using CudaKernels = DeviceKernels<CudaExec>;
using EmulatedCudaKernels = DeviceKernels<emu::EmuExec>;

// Tile layout of an mc x nc tile of all pairs whose dot products are one GEMM output
// [mc*m, nc*n]; per-pair results into rows of out_row values.
PairLayout tile_layout(int64_t mc, int64_t nc, int64_t m, int64_t n, int64_t out_row);
// N aligned pairs whose cells are a contiguous [N, m, n].
PairLayout aligned_layout(int64_t N, int64_t m, int64_t n);

void define_ops(torch::Library& m);
template <typename K>
void register_impls(torch::Library& m);

}  // namespace dmli
}  // namespace partdist
