// Device launchers of the neighborhood-difference family. All tensors share one
// floating dtype and device; f, g and the gradient outputs are contiguous
// [B, C, H, W]; `out` is contiguous [B, C, H*k, W*k]; `grad` may have any strides
// (they are in Geom).
#pragma once

#include <ATen/core/Tensor.h>

#include "neighborhood_common.h"

namespace partdist {
namespace nbhd {

using ForwardLauncher = void (*)(const Geom& G, const at::Tensor& f, const at::Tensor& g,
                                 const at::Tensor& out);
using BackwardLauncher = void (*)(const Geom& G, const at::Tensor& grad,
                                  const at::Tensor& grad_f, const at::Tensor& grad_g);

struct Launchers {
  ForwardLauncher forward;
  BackwardLauncher backward;
};

void forward_cpu(const Geom& G, const at::Tensor& f, const at::Tensor& g, const at::Tensor& out);
void backward_cpu(const Geom& G, const at::Tensor& grad, const at::Tensor& grad_f,
                  const at::Tensor& grad_g);
#ifdef PARTDIST_WITH_CUDA
void forward_cuda(const Geom& G, const at::Tensor& f, const at::Tensor& g, const at::Tensor& out);
void backward_cuda(const Geom& G, const at::Tensor& grad, const at::Tensor& grad_f,
                   const at::Tensor& grad_g);
#endif

}  // namespace nbhd
}  // namespace partdist
