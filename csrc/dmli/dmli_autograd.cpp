// Autograd of the DMLI ops, registered in C++ at the Autograd dispatch key (as
// torchvision's ops/autograd kernels do): the forward redispatches below autograd to
// the CPU / CUDA kernel, the backward calls the compiled backward op through the
// dispatcher. No Python runs per call, which matters for the small training batches
// where the kernels themselves take a few hundred microseconds.
//
// Unused outputs get zero gradients (materialize_grads, the default), so the backward
// ops always see a defined gradient. The backward ops have no autograd: a backward with
// create_graph=True (double backward) raises.
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../common/op_handle.h"
#include "dmli_common.h"

namespace partdist {
namespace dmli {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Typed handles of the ops (common/op_handle.h).
using XYTuple = std::tuple<Tensor, Tensor>;
PARTDIST_OP(op_ldm, "local_dist_matrix", Tensor(const Tensor&, const Tensor&, bool))
PARTDIST_OP(op_ldm_bw, "local_dist_matrix_backward",
            XYTuple(const Tensor&, const Tensor&, const Tensor&, bool))
PARTDIST_OP(op_dmli, "dmli", Tensor(const Tensor&, double, double))
PARTDIST_OP(op_dmli_bw, "dmli_backward", Tensor(const Tensor&, const Tensor&, double, double))
PARTDIST_OP(op_bld, "batch_local_dist",
            Tensor(const Tensor&, const Tensor&, bool, double, double, bool))
PARTDIST_OP(op_bld_bw, "batch_local_dist_backward",
            XYTuple(const Tensor&, const Tensor&, const Tensor&, bool, double, double, bool))
PARTDIST_OP(op_bld_fc, "_batch_local_dist_fwd_cells",
            XYTuple(const Tensor&, const Tensor&, bool, double, double))
PARTDIST_OP(op_bld_bc, "_batch_local_dist_backward_cells",
            XYTuple(const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, double,
                    double))
using OptDtype = std::optional<at::ScalarType>;
PARTDIST_OP(op_ld, "local_dist",
            Tensor(const Tensor&, const Tensor&, bool, int64_t, double, double, bool, OptDtype))
PARTDIST_OP(op_ld_bw, "local_dist_backward",
            XYTuple(const Tensor&, const Tensor&, const Tensor&, bool, int64_t, double, double,
                    bool, OptDtype))

// The backward ops have no autograd: a backward with create_graph=True gets an error
// instead of a gradient graph that would silently give zeros.
void no_double_backward() {
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "partdist: the DMLI ops have no double backward (a backward with "
              "create_graph=True); take their gradient with create_graph=False");
}

// ------------------------------------------------------------- local_dist_matrix
class LocalDistMatrixFn : public torch::autograd::Function<LocalDistMatrixFn> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& y, bool normalize) {
    Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op_ldm().call(x, y, normalize);
    }
    ctx->save_for_backward({x, y});
    ctx->saved_data["normalize"] = normalize;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    no_double_backward();
    auto s = ctx->get_saved_variables();
    auto [gx, gy] =
        op_ldm_bw().call(g[0].contiguous(), s[0], s[1], ctx->saved_data["normalize"].toBool());
    return {gx, gy, Tensor()};
  }
};

// ---------------------------------------------------------------------- dmli
class DmliFn : public torch::autograd::Function<DmliFn> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& d, double gamma, double band) {
    Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op_dmli().call(d, gamma, band);
    }
    ctx->save_for_backward({d});
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["band"] = band;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    no_double_backward();
    auto s = ctx->get_saved_variables();
    auto gd = op_dmli_bw().call(g[0].contiguous(), s[0], ctx->saved_data["gamma"].toDouble(),
                                ctx->saved_data["band"].toDouble());
    return {gd, Tensor(), Tensor()};
  }
};

// ------------------------------------------------ batch_local_dist, local_dist
// Both save x, y (and batch_local_dist possibly its cells) and the DP options for their
// backward op.
struct SavedXY {
  Tensor x, y, cells;
  bool normalize;
  double gamma, band;
  bool unaligned;
};

void save_xy(AutogradContext* ctx, const Tensor& x, const Tensor& y, bool normalize, double gamma,
             double band, bool unaligned, const Tensor& cells = Tensor()) {
  ctx->save_for_backward({x, y, cells});
  auto& d = ctx->saved_data;
  d["normalize"] = normalize;
  d["gamma"] = gamma;
  d["band"] = band;
  d["unaligned"] = unaligned;
}

SavedXY load_xy(AutogradContext* ctx) {
  auto s = ctx->get_saved_variables();
  auto& d = ctx->saved_data;
  return {s[0],
          s[1],
          s[2],
          d["normalize"].toBool(),
          d["gamma"].toDouble(),
          d["band"].toDouble(),
          d["unaligned"].toBool()};
}

// With save_cells (a gradient will be needed, not unaligned, on the CPU or on CUDA with
// at most kWarpPathMaxCells cells per pair: dmli_common.h) the forward is
// _batch_local_dist_fwd_cells, whose cells (2 x N x m x n values) are saved for
// _batch_local_dist_backward_cells: the backward then computes no stripe distances
// and reads the incoming gradient through its stride.
class BatchLocalDistFn : public torch::autograd::Function<BatchLocalDistFn> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& y, bool normalize,
                        double gamma, double band, bool unaligned, bool save_cells) {
    Tensor out, cells;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      if (save_cells)
        std::tie(out, cells) = op_bld_fc().call(x, y, normalize, gamma, band);
      else
        out = op_bld().call(x, y, normalize, gamma, band, unaligned);
    }
    save_xy(ctx, x, y, normalize, gamma, band, unaligned, cells);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    no_double_backward();
    const SavedXY s = load_xy(ctx);
    auto [gx, gy] = s.cells.defined()
                        ? op_bld_bc().call(g[0], s.x, s.y, s.cells, s.normalize, s.gamma, s.band)
                        : op_bld_bw().call(g[0].contiguous(), s.x, s.y, s.normalize, s.gamma,
                                           s.band, s.unaligned);
    return {gx, gy, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

class LocalDistFn : public torch::autograd::Function<LocalDistFn> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& y, bool normalize,
                        int64_t chunk, double gamma, double band, bool unaligned,
                        OptDtype gemm_dtype) {
    Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op_ld().call(x, y, normalize, chunk, gamma, band, unaligned, gemm_dtype);
    }
    save_xy(ctx, x, y, normalize, gamma, band, unaligned);
    ctx->saved_data["chunk"] = chunk;
    if (gemm_dtype.has_value()) ctx->saved_data["gemm_dtype"] = *gemm_dtype;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    no_double_backward();
    const SavedXY s = load_xy(ctx);
    auto& d = ctx->saved_data;
    const OptDtype gemm_dtype =
        d.count("gemm_dtype") ? OptDtype(d["gemm_dtype"].toScalarType()) : std::nullopt;
    auto [gx, gy] = op_ld_bw().call(g[0].contiguous(), s.x, s.y, s.normalize, d["chunk"].toInt(),
                                    s.gamma, s.band, s.unaligned, gemm_dtype);
    return {gx, gy, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor local_dist_matrix_autograd(const Tensor& x, const Tensor& y, bool normalize) {
  return LocalDistMatrixFn::apply(x, y, normalize);
}
Tensor dmli_autograd(const Tensor& d, double gamma, double band) {
  return DmliFn::apply(d, gamma, band);
}
Tensor batch_local_dist_autograd(const Tensor& x, const Tensor& y, bool normalize, double gamma,
                                 double band, bool unaligned) {
  const bool warp_shape =
      x.dim() == 3 && y.dim() == 3 && x.size(1) * y.size(1) <= kWarpPathMaxCells;
  const bool save_cells = !unaligned && (x.device().is_cpu() || (x.is_cuda() && warp_shape)) &&
                          at::GradMode::is_enabled() && (x.requires_grad() || y.requires_grad());
  return BatchLocalDistFn::apply(x, y, normalize, gamma, band, unaligned, save_cells);
}
Tensor local_dist_autograd(const Tensor& x, const Tensor& y, bool normalize, int64_t chunk,
                           double gamma, double band, bool unaligned, OptDtype gemm_dtype) {
  return LocalDistFn::apply(x, y, normalize, chunk, gamma, band, unaligned, gemm_dtype);
}

}  // namespace
}  // namespace dmli
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist, Autograd, m) {
  m.impl("local_dist_matrix", &partdist::dmli::local_dist_matrix_autograd);
  m.impl("dmli", &partdist::dmli::dmli_autograd);
  m.impl("batch_local_dist", &partdist::dmli::batch_local_dist_autograd);
  m.impl("local_dist", &partdist::dmli::local_dist_autograd);
}
