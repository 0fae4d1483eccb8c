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

struct Launchers {
  ForwardLauncher forward;
  BackwardLauncher backward;
};

void forward_cpu(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& xy,
                 const at::Tensor& xx, const at::Tensor& yy, const at::Tensor& out);
void backward_cpu(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& gout,
                  const at::Tensor& xy, const at::Tensor& xx, const at::Tensor& yy,
                  const at::Tensor& w);
#ifdef PARTDIST_WITH_CUDA
void forward_cuda(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& xy,
                  const at::Tensor& xx, const at::Tensor& yy, const at::Tensor& out);
void backward_cuda(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& gout,
                   const at::Tensor& xy, const at::Tensor& xx, const at::Tensor& yy,
                   const at::Tensor& w);
#endif

}  // namespace dmli
}  // namespace partdist
