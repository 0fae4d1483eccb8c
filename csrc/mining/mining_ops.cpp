// Host drivers and schemas of the mining family:
//   hard_example_mining, triplet_hard_loss and their (shared) backward op.
// The drivers are templates over a backend K (mining_kernels.h): checks, output
// allocation and the final reduction of the loss here, the per-row work in K. Each
// backend's file registers them (register_impls<K>).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../common/checks.h"
#include "../common/registration.h"
#include "mining_kernels.h"

namespace partdist {
namespace mining {
namespace {

using at::Tensor;

void check_labels(const char* op, const char* name, const Tensor& t, int64_t n, const char* what,
                  const Tensor& dist) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": ", name,
              " must be an integer tensor (e.g. int64), got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, op, ": ", name, " must have shape [", n, "] (", what,
              "), got ", shape_str(t));
  TORCH_CHECK(t.device() == dist.device(), op, ": ", name, " must be on the same device as dist (",
              dist.device(), "), got ", t.device());
}

// dist [N, M], labels [N], labels_other [M] (or dist square and labels_other absent).
// Returns labels_other (labels when absent) as contiguous int64.
std::tuple<Tensor, Tensor> check_inputs(const char* op, const Tensor& dist, const Tensor& labels,
                                        const std::optional<Tensor>& labels_other,
                                        bool exclude_self) {
  check_floating(op, "dist", dist);
  check_rank(op, "dist", dist, 2, "[N, M]");
  const int64_t N = dist.size(0), M = dist.size(1);
  check_labels(op, "labels", labels, N, "one label per row of dist", dist);
  Tensor lab = labels.to(at::kLong).contiguous();
  if (labels_other.has_value() && labels_other->defined()) {
    check_labels(op, "labels_other", *labels_other, M, "one label per column of dist", dist);
    TORCH_CHECK(!exclude_self, op,
                ": exclude_self needs the square case (dist [N, N], labels_other=None)");
    return {lab, labels_other->to(at::kLong).contiguous()};
  }
  TORCH_CHECK(N == M, op, ": dist must be square [N, N] when labels_other is not given, got ",
              shape_str(dist));
  return {lab, lab};
}

Shape shape_of(const Tensor& dist, bool exclude_self) {
  Shape S;
  S.N = dist.size(0);
  S.M = dist.size(1);
  S.row_stride = dist.stride(0);
  S.col_stride = dist.stride(1);
  S.exclude_self = exclude_self;
  return S;
}

LossSpec loss_spec(bool enabled, std::optional<double> margin) {
  LossSpec L;
  L.enabled = enabled;
  L.soft = !margin.has_value();
  L.margin = margin.value_or(0.0);
  return L;
}

using MiningOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

template <typename K>
MiningOut mine(const char* op, const Tensor& dist, const Tensor& labels,
               const std::optional<Tensor>& labels_other, bool exclude_self, const LossSpec& L,
               const Tensor& row_loss) {
  auto [lab, lo] = check_inputs(op, dist, labels, labels_other, exclude_self);
  const int64_t N = dist.size(0);
  const auto opts = dist.options();
  Tensor ap = at::empty({N}, opts), an = at::empty({N}, opts);
  Tensor p = at::empty({N}, opts.dtype(at::kLong)), n = at::empty({N}, opts.dtype(at::kLong));
  Tensor valid = at::empty({N}, opts.dtype(at::kBool));
  // dist with any strides: the kernels read through them
  K::forward(shape_of(dist, exclude_self), L,
             ForwardTensors{dist, lab, lo, ap, an, p, n, valid, row_loss});
  return {ap, an, p, n, valid};
}

template <typename K>
MiningOut hard_example_mining_impl(const Tensor& dist, const Tensor& labels,
                                   const std::optional<Tensor>& labels_other, bool exclude_self) {
  return mine<K>("partdist.hard_example_mining", dist, labels, labels_other, exclude_self,
                 loss_spec(false, std::nullopt), Tensor());
}

template <typename K>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> triplet_hard_loss_impl(
    const Tensor& dist, const Tensor& labels, const std::optional<Tensor>& labels_other,
    std::optional<double> margin, bool exclude_self) {
  const char* op = "partdist.triplet_hard_loss";
  check_floating(op, "dist", dist);
  check_rank(op, "dist", dist, 2, "[N, M]");
  Tensor row_loss = at::empty({dist.size(0)}, dist.options().dtype(compute_type(dist)));
  auto [ap, an, p, n, valid] =
      mine<K>(op, dist, labels, labels_other, exclude_self, loss_spec(true, margin), row_loss);
  Tensor loss = at::empty({}, dist.options());
  K::loss_mean(row_loss, valid, loss);
  return {loss, ap, an, p, n, valid};
}

// Backward of both ops: the gradient of dist is zero except, in row i, at
// p_inds[i] (dL/d dist_ap[i] plus the loss term) and n_inds[i]. An index
// outside [0, num_cols) (-1: no positive / negative) receives nothing.
template <typename K>
Tensor hard_example_mining_backward_impl(const std::optional<Tensor>& grad_loss,
                                         const std::optional<Tensor>& grad_ap,
                                         const std::optional<Tensor>& grad_an,
                                         const Tensor& dist_ap, const Tensor& dist_an,
                                         const Tensor& p_inds, const Tensor& n_inds,
                                         const Tensor& valid, std::optional<double> margin,
                                         int64_t num_cols) {
  const char* op = "partdist.hard_example_mining_backward";
  check_floating(op, "dist_ap", dist_ap);
  check_rank(op, "dist_ap", dist_ap, 1, "[N]");
  const int64_t N = dist_ap.size(0);
  TORCH_CHECK(num_cols >= 0, op, ": num_cols must be >= 0, got ", num_cols);
  auto check_vec = [&](const char* name, const Tensor& t, at::ScalarType dt) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == N, op, ": ", name, " must have shape [", N, "], got ",
                shape_str(t));
    TORCH_CHECK(t.scalar_type() == dt, op, ": ", name, " must have dtype ", dt, ", got ",
                t.scalar_type());
    TORCH_CHECK(t.device() == dist_ap.device(), op, ": ", name, " must be on ", dist_ap.device());
  };
  check_vec("dist_an", dist_an, dist_ap.scalar_type());
  check_vec("p_inds", p_inds, at::kLong);
  check_vec("n_inds", n_inds, at::kLong);
  check_vec("valid", valid, at::kBool);
  auto opt_vec = [&](const char* name, const std::optional<Tensor>& t) {
    if (!t.has_value() || !t->defined()) return Tensor();
    check_floating(op, name, *t);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == N, op, ": ", name, " must have shape [", N,
                "], got ", shape_str(*t));
    TORCH_CHECK(t->device() == dist_ap.device(), op, ": ", name, " must be on ", dist_ap.device());
    return t->to(dist_ap.scalar_type()).contiguous();
  };
  Tensor gap = opt_vec("grad_ap", grad_ap), gan = opt_vec("grad_an", grad_an);
  Tensor scale;
  if (grad_loss.has_value() && grad_loss->defined()) {
    check_floating(op, "grad_loss", *grad_loss);
    TORCH_CHECK(grad_loss->numel() == 1, op, ": grad_loss must hold one value, got shape ",
                shape_str(*grad_loss));
    TORCH_CHECK(grad_loss->device() == dist_ap.device(), op, ": grad_loss must be on ",
                dist_ap.device());
    Tensor count = valid.sum().clamp_min(1).to(compute_type(dist_ap));
    scale = grad_loss->reshape({}).to(compute_type(dist_ap)).div(count).contiguous();
  }
  Tensor out = at::empty({N, num_cols}, dist_ap.options());
  Shape S;
  S.N = N;
  S.M = num_cols;
  K::backward(S, loss_spec(true, margin),
              BackwardTensors{scale, gap, gan, dist_ap.contiguous(), dist_an.contiguous(),
                              p_inds.contiguous(), n_inds.contiguous(), valid.contiguous(), out});
  return out;
}

template <typename K>
auto ops() {
  return std::make_tuple(
      op("hard_example_mining(Tensor dist, Tensor labels, Tensor? labels_other=None, "
         "bool exclude_self=False) -> "
         "(Tensor dist_ap, Tensor dist_an, Tensor p_inds, Tensor n_inds, Tensor valid)",
         &hard_example_mining_impl<K>),
      op("triplet_hard_loss(Tensor dist, Tensor labels, Tensor? labels_other=None, "
         "float? margin=0.3, bool exclude_self=False) -> "
         "(Tensor loss, Tensor dist_ap, Tensor dist_an, Tensor p_inds, Tensor n_inds, "
         "Tensor valid)",
         &triplet_hard_loss_impl<K>),
      op("hard_example_mining_backward(Tensor? grad_loss, Tensor? grad_ap, Tensor? grad_an, "
         "Tensor dist_ap, Tensor dist_an, Tensor p_inds, Tensor n_inds, Tensor valid, "
         "float? margin, int num_cols) -> Tensor",
         &hard_example_mining_backward_impl<K>));
}

}  // namespace
}  // namespace mining
}  // namespace partdist

PARTDIST_FAMILY_OPS(mining, ops)
