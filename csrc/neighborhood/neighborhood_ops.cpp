// Host drivers and schemas of the neighborhood-difference family (IDLA):
//   neighborhood_diff(f, g, kernel_size) -> K        [B, C, H*k, W*k]
//   neighborhood_diff_backward(grad, kernel_size) -> (grad_f, grad_g)
// The drivers are templates over a backend K (neighborhood_kernels.h): they check
// arguments, allocate the outputs and call K. Each backend's file registers them
// (register_impls<K>). No temporaries besides the outputs (and a
// contiguous copy of f / g when they are not contiguous).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "../common/checks.h"
#include "../common/registration.h"
#include "neighborhood_kernels.h"

namespace partdist {
namespace nbhd {
namespace {

using at::Tensor;

void check_kernel_size(const char* op, int64_t k) {
  TORCH_CHECK(k >= 1 && k % 2 == 1, op, ": kernel_size must be an odd integer >= 1, got ", k);
}

void check_fg(const char* op, const Tensor& f, const Tensor& g) {
  check_floating(op, "f", f);
  check_rank(op, "f", f, 4, "[B, C, H, W]");
  check_floating(op, "g", g);
  check_rank(op, "g", g, 4, "[B, C, H, W]");
  check_same(op, "g", g, "f", f);
  TORCH_CHECK(f.sizes() == g.sizes(), op, ": f and g must have the same shape [B, C, H, W], got f ",
              shape_str(f), " and g ", shape_str(g));
}

template <typename K>
Tensor forward_impl(const Tensor& f, const Tensor& g, int64_t k) {
  const char* op = "partdist.neighborhood_diff";
  check_fg(op, f, g);
  check_kernel_size(op, k);
  const Geom G{f.size(0), f.size(1), f.size(2), f.size(3), k};
  Tensor fc = f.contiguous(), gc = g.contiguous();
  Tensor out = at::empty({G.B, G.C, G.H * k, G.W * k}, f.options());
  K::forward(G, fc, gc, out);
  return out;
}

template <typename K>
std::tuple<Tensor, Tensor> backward_impl(const Tensor& grad, int64_t k) {
  const char* op = "partdist.neighborhood_diff_backward";
  check_kernel_size(op, k);
  check_floating(op, "grad", grad);
  check_rank(op, "grad", grad, 4, "[B, C, H*k, W*k]");
  TORCH_CHECK(grad.size(2) % k == 0 && grad.size(3) % k == 0, op,
              ": grad must have shape [B, C, H*k, W*k] with k = kernel_size = ", k, ", got ",
              shape_str(grad));
  // B, C, H, W, k, then the strides of grad (read through them)
  const Geom G{grad.size(0),   grad.size(1),   grad.size(2) / k, grad.size(3) / k, k,
               grad.stride(0), grad.stride(1), grad.stride(2),   grad.stride(3)};
  auto opts = grad.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor grad_f = at::empty({G.B, G.C, G.H, G.W}, opts);
  Tensor grad_g = at::empty({G.B, G.C, G.H, G.W}, opts);
  K::backward(G, grad, grad_f, grad_g);
  return {grad_f, grad_g};
}

template <typename K>
auto ops() {
  return std::make_tuple(
      op("neighborhood_diff(Tensor f, Tensor g, int kernel_size=5) -> Tensor", &forward_impl<K>),
      op("neighborhood_diff_backward(Tensor grad, int kernel_size) -> (Tensor, Tensor)",
         &backward_impl<K>));
}

}  // namespace
}  // namespace nbhd
}  // namespace partdist

PARTDIST_FAMILY_OPS(nbhd, ops)
