// Schema, argument checks and the CPU implementation of the ranking metrics:
//   rank_metrics(distmat [Q, G], q_pids [Q], g_pids [G], q_camids [Q], g_camids [G],
//                drop_junk, devkit) -> (first [Q] int64, ap [Q] float64, inp [Q] float64)
// at::parallel_for over queries, per-query math in rank_common.h. Called by
// partdist.eval.evaluate_rank for CPU distance matrices.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "rank_common.h"

namespace partdist {
namespace rank {
namespace {

using at::Tensor;

constexpr const char* kOp = "partdist::rank_metrics";

void check_ids(const char* name, const Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.defined(), kOp, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == at::kLong, kOp, ": ", name,
              " must be an int64 tensor (convert with .long()), got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, kOp, ": ", name, " must have shape [", n, "] (", what,
              "), got ", shape_str(t));
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got ", t.device());
}

std::tuple<Tensor, Tensor, Tensor> rank_metrics_cpu(const Tensor& distmat, const Tensor& q_pids,
                                                    const Tensor& g_pids, const Tensor& q_camids,
                                                    const Tensor& g_camids, bool drop_junk,
                                                    bool devkit) {
  TORCH_CHECK(distmat.defined(), kOp, ": distmat is undefined");
  TORCH_CHECK(distmat.scalar_type() == at::kFloat || distmat.scalar_type() == at::kDouble, kOp,
              ": distmat must be float32 or float64, got ", distmat.scalar_type());
  check_rank(kOp, "distmat", distmat, 2, "[Q, G]");
  const int64_t Q = distmat.size(0), G = distmat.size(1);
  check_ids("q_pids", q_pids, Q, "one per row of distmat");
  check_ids("q_camids", q_camids, Q, "one per row of distmat");
  check_ids("g_pids", g_pids, G, "one per column of distmat");
  check_ids("g_camids", g_camids, G, "one per column of distmat");
  const Tensor d = distmat.contiguous();
  const Tensor qp = q_pids.contiguous(), qc = q_camids.contiguous();
  const Tensor gp = g_pids.contiguous(), gc = g_camids.contiguous();
  Tensor first = at::empty({Q}, distmat.options().dtype(at::kLong));
  Tensor ap = at::empty({Q}, distmat.options().dtype(at::kDouble));
  Tensor inp = at::empty({Q}, distmat.options().dtype(at::kDouble));
  if (Q == 0) return {first, ap, inp};
  const int64_t* qpp = qp.const_data_ptr<int64_t>();
  const int64_t* qcp = qc.const_data_ptr<int64_t>();
  const int64_t* gpp = gp.const_data_ptr<int64_t>();
  const int64_t* gcp = gc.const_data_ptr<int64_t>();
  int64_t* fo = first.mutable_data_ptr<int64_t>();
  double* apo = ap.mutable_data_ptr<double>();
  double* inpo = inp.mutable_data_ptr<double>();
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, G));
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "partdist_rank_metrics_cpu", [&] {
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    at::parallel_for(0, Q, grain, [&](int64_t begin, int64_t end) {
      Scratch<scalar_t> scratch;
      for (int64_t i = begin; i < end; ++i) {
        const QueryMetrics m = query_metrics<scalar_t>(dp + i * G, 1, G, QueryIds{qpp[i], qcp[i]},
                                                       gpp, gcp, drop_junk, devkit, scratch);
        fo[i] = m.first;
        apo[i] = m.ap;
        inpo[i] = m.inp;
      }
    });
  });
  return {first, ap, inp};
}

}  // namespace
}  // namespace rank
}  // namespace partdist

TORCH_LIBRARY_FRAGMENT(partdist, m) {
  m.def(
      "rank_metrics(Tensor distmat, Tensor q_pids, Tensor g_pids, Tensor q_camids, "
      "Tensor g_camids, bool drop_junk, bool devkit) -> (Tensor first, Tensor ap, Tensor inp)");
}

TORCH_LIBRARY_IMPL(partdist, CPU, m) { m.impl("rank_metrics", &partdist::rank::rank_metrics_cpu); }
