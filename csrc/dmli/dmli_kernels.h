// Device launchers of the DMLI family. Each takes tensors whose data pointers
// are already positioned at the start of the block described by the layout
// (views are fine: only data_ptr() and the layout are used). All tensors are
// float or double and share one dtype and device. xx / yy may be undefined in
// Mode::kDmli.
#pragma once

#include <ATen/core/Tensor.h>

#include "dmli_common.h"

namespace partdist {
namespace dmli {

// out: per-pair results (kDmli, kFused) or the cell matrix (kCells).
using ForwardLauncher = void (*)(const PairLayout& L, Mode mode, bool normalize,
                                 const at::Tensor& xy, const at::Tensor& xx,
                                 const at::Tensor& yy, const at::Tensor& out);
// w receives dL/dd (kDmli) or the cell weights (kFused, kCells), layout of xy.
using BackwardLauncher = void (*)(const PairLayout& L, Mode mode, bool normalize,
                                  const at::Tensor& gout, const at::Tensor& xy,
                                  const at::Tensor& xx, const at::Tensor& yy,
                                  const at::Tensor& w);

// Aligned pairs end to end: x [N, m, C], y [N, n, C] (contiguous, float or double).
// mode kFused: out [N] = DMLI of each pair (batch_local_dist); mode kCells: out
// [N, m, n] = the cell matrices (local_dist_matrix). The backward writes gx and gy
// entirely (no zero-fill needed); grad has the shape of out.
using AlignedForward = void (*)(Mode mode, bool normalize, const DPRule& rule,
                                const at::Tensor& x, const at::Tensor& y, const at::Tensor& out);
using AlignedBackward = void (*)(Mode mode, bool normalize, const DPRule& rule,
                                 const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                                 const at::Tensor& gx, const at::Tensor& gy);

struct Launchers {
  ForwardLauncher forward;
  BackwardLauncher backward;
  AlignedForward aligned_forward;
  AlignedBackward aligned_backward;
};

void forward_cpu(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& xy,
                 const at::Tensor& xx, const at::Tensor& yy, const at::Tensor& out);
void backward_cpu(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& gout,
                  const at::Tensor& xy, const at::Tensor& xx, const at::Tensor& yy,
                  const at::Tensor& w);
// CPU: one pass per pair (stripe dot products, cells, DP, chain rule along the path).
void aligned_forward_cpu(Mode mode, bool normalize, const DPRule& rule, const at::Tensor& x,
                         const at::Tensor& y, const at::Tensor& out);
void aligned_backward_cpu(Mode mode, bool normalize, const DPRule& rule, const at::Tensor& grad,
                          const at::Tensor& x, const at::Tensor& y, const at::Tensor& gx,
                          const at::Tensor& gy);
// CPU all pairs (local_dist forward), one tile of mc first images x nc second
// images in a lane-contiguous layout: xy [n, mc*m, nc] (xy[j][a*m + i][b] = x_a,i .
// y_b,j), xx [mc*m], yy with yy[j * yy_sj + b] = |y_b,j|^2; out[a * out_sa + b].
// Reads up to kLanes-1 values past the last b of a row of xy and of yy: both
// buffers must be padded by that much. Single-threaded (called per tile).
struct AllPairsTile {
  int64_t mc, nc;
  int m, n;
  int64_t yy_sj, out_sa;
};
constexpr int kAllPairsLanes = 16;
void allpairs_tile_forward_cpu(const AllPairsTile& t, bool normalize, const DPRule& rule,
                               const at::Tensor& xy, const at::Tensor& xx, const at::Tensor& yy,
                               const at::Tensor& out);
#ifdef PARTDIST_WITH_CUDA
void forward_cuda(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& xy,
                  const at::Tensor& xx, const at::Tensor& yy, const at::Tensor& out);
void backward_cuda(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& gout,
                   const at::Tensor& xy, const at::Tensor& xx, const at::Tensor& yy,
                   const at::Tensor& w);
#endif

}  // namespace dmli
}  // namespace partdist
