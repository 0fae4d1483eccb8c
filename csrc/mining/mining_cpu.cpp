// CPU launchers: at::parallel_for over rows (anchors), per-row math from
// mining_common.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../common/ptr.h"
#include "mining_kernels.h"

namespace partdist {
namespace mining {

namespace {
// Rows per task: at least ~16k elements of work.
int64_t grain_for(int64_t M) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, M)); }

}  // namespace

void forward_cpu(const Shape& S, const LossSpec& L, const at::Tensor& dist,
                 const at::Tensor& labels, const at::Tensor& labels_other,
                 const at::Tensor& dist_ap, const at::Tensor& dist_an, const at::Tensor& p_inds,
                 const at::Tensor& n_inds, const at::Tensor& valid, const at::Tensor& row_loss) {
  if (S.N == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dist.scalar_type(), "partdist_mining_forward_cpu", [&] {
        using A = at::opmath_type<scalar_t>;
        const scalar_t* d = dist.const_data_ptr<scalar_t>();
        const int64_t* lab = labels.const_data_ptr<int64_t>();
        const int64_t* lo = labels_other.const_data_ptr<int64_t>();
        ForwardOut<scalar_t, A> o{dist_ap.mutable_data_ptr<scalar_t>(),
                                  dist_an.mutable_data_ptr<scalar_t>(),
                                  p_inds.mutable_data_ptr<int64_t>(),
                                  n_inds.mutable_data_ptr<int64_t>(),
                                  valid.mutable_data_ptr<bool>(),
                                  row_loss.defined() ? row_loss.mutable_data_ptr<A>() : nullptr};
        const LossArgs<A> la = loss_args<A>(L);
        at::parallel_for(0, S.N, grain_for(S.M), [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            Best<A> pos = none<A>(), neg = none<A>();
            const scalar_t* row = d + i * S.row_stride;
            const int64_t self_col = S.exclude_self ? i : -1;
            if (S.col_stride == 1)  // unit stride: let the compiler see it
              scan_row_fast<A>(row, int64_t(1), S.M, lab[i], lo, self_col, pos, neg);
            else
              scan_row_fast<A>(row, S.col_stride, S.M, lab[i], lo, self_col, pos, neg);
            finish_row<scalar_t, A>(i, pos, neg, la, o);
          }
        });
      });
}

void backward_cpu(const Shape& S, const LossSpec& L, const at::Tensor& loss_scale,
                  const at::Tensor& grad_ap, const at::Tensor& grad_an,
                  const at::Tensor& dist_ap, const at::Tensor& dist_an,
                  const at::Tensor& p_inds, const at::Tensor& n_inds, const at::Tensor& valid,
                  const at::Tensor& out) {
  if (S.N == 0 || S.M == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dist_ap.scalar_type(), "partdist_mining_backward_cpu", [&] {
        using A = at::opmath_type<scalar_t>;
        const auto b = backward_in<scalar_t, A>(loss_scale, grad_ap, grad_an, dist_ap, dist_an,
                                                     p_inds, n_inds, valid);
        const LossArgs<A> la = loss_args<A>(L);
        scalar_t* g = out.mutable_data_ptr<scalar_t>();
        // Each task zeroes its own rows: the first touch of the (large) output
        // is spread over the threads as well.
        at::parallel_for(0, S.N, grain_for(S.M), [&](int64_t begin, int64_t end) {
          std::fill(g + begin * S.M, g + end * S.M, scalar_t(0));
          for (int64_t i = begin; i < end; ++i) {
            A g_ap, g_an;
            row_grads<scalar_t, A>(i, b, la, g_ap, g_an);
            const int64_t p = b.p_inds[i], n = b.n_inds[i];
            if (p >= 0 && p < S.M) g[i * S.M + p] = static_cast<scalar_t>(A(g[i * S.M + p]) + g_ap);
            if (n >= 0 && n < S.M) g[i * S.M + n] = static_cast<scalar_t>(A(g[i * S.M + n]) + g_an);
          }
        });
      });
}

}  // namespace mining
}  // namespace partdist
