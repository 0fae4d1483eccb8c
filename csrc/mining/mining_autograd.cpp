// Autograd of the mining ops, registered in C++ at the Autograd dispatch key (as the DMLI
// family's, dmli_autograd.cpp): batch-hard mining and the triplet loss run in every
// training step on small matrices, where a Python setup_context / backward per call
// costs more than the kernels. The forward redispatches below autograd to the CPU /
// CUDA kernel; the backward calls hard_example_mining_backward through the dispatcher.
//
// Gradients are not materialized: an output without gradient reaches the backward op
// as None (no zeros made for it). The indices and the valid flags are not
// differentiable. The backward op has no autograd (double backward is not supported).
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../common/op_handle.h"

namespace partdist {
namespace mining {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using MiningOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using LossOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using OptTensor = std::optional<Tensor>;

PARTDIST_OP(op_mining, "hard_example_mining",
            MiningOut(const Tensor&, const Tensor&, const OptTensor&, bool))
PARTDIST_OP(op_loss, "triplet_hard_loss",
            LossOut(const Tensor&, const Tensor&, const OptTensor&, std::optional<double>, bool))
PARTDIST_OP(op_backward, "hard_example_mining_backward",
            Tensor(const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&,
                   const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                   std::optional<double>, int64_t))

OptTensor defined_or_none(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Saves what the backward op needs: the selections [N] and the number of columns.
void save_selection(AutogradContext* ctx, const Tensor& dist, const Tensor& ap, const Tensor& an,
                    const Tensor& p, const Tensor& n, const Tensor& valid) {
  ctx->set_materialize_grads(false);
  ctx->save_for_backward({ap, an, p, n, valid});
  ctx->saved_data["num_cols"] = dist.size(1);
  ctx->mark_non_differentiable({p, n, valid});
}

Tensor selection_backward(AutogradContext* ctx, const Tensor& grad_loss, const Tensor& grad_ap,
                          const Tensor& grad_an, std::optional<double> margin) {
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "partdist: the mining ops have no double backward (a backward with "
              "create_graph=True); take their gradient with create_graph=False");
  auto s = ctx->get_saved_variables();
  return op_backward().call(defined_or_none(grad_loss), defined_or_none(grad_ap),
                            defined_or_none(grad_an), s[0], s[1], s[2], s[3], s[4], margin,
                            ctx->saved_data["num_cols"].toInt());
}

class MiningFn : public torch::autograd::Function<MiningFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& dist, const Tensor& labels,
                               const OptTensor& labels_other, bool exclude_self) {
    MiningOut out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op_mining().call(dist, labels, labels_other, exclude_self);
    }
    auto& [ap, an, p, n, valid] = out;
    save_selection(ctx, dist, ap, an, p, n, valid);
    return {ap, an, p, n, valid};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {selection_backward(ctx, Tensor(), g[0], g[1], std::nullopt), Tensor(), Tensor(),
            Tensor()};
  }
};

class TripletLossFn : public torch::autograd::Function<TripletLossFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& dist, const Tensor& labels,
                               const OptTensor& labels_other, std::optional<double> margin,
                               bool exclude_self) {
    LossOut out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op_loss().call(dist, labels, labels_other, margin, exclude_self);
    }
    auto& [loss, ap, an, p, n, valid] = out;
    save_selection(ctx, dist, ap, an, p, n, valid);
    if (margin.has_value()) ctx->saved_data["margin"] = *margin;
    return {loss, ap, an, p, n, valid};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const auto& d = ctx->saved_data;
    const std::optional<double> margin =
        d.count("margin") ? std::optional<double>(d.at("margin").toDouble()) : std::nullopt;
    return {selection_backward(ctx, g[0], g[1], g[2], margin), Tensor(), Tensor(), Tensor(),
            Tensor()};
  }
};

MiningOut mining_autograd(const Tensor& dist, const Tensor& labels, const OptTensor& labels_other,
                          bool exclude_self) {
  auto r = MiningFn::apply(dist, labels, labels_other, exclude_self);
  return {r[0], r[1], r[2], r[3], r[4]};
}

LossOut loss_autograd(const Tensor& dist, const Tensor& labels, const OptTensor& labels_other,
                      std::optional<double> margin, bool exclude_self) {
  auto r = TripletLossFn::apply(dist, labels, labels_other, margin, exclude_self);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

}  // namespace
}  // namespace mining
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist, Autograd, m) {
  m.impl("hard_example_mining", &partdist::mining::mining_autograd);
  m.impl("triplet_hard_loss", &partdist::mining::loss_autograd);
}
