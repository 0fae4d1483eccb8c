// The CPU backend of the mining family (CpuKernels, see mining_kernels.h) and its
// registration for the CPU dispatch key: at::parallel_for over rows (anchors),
// per-row math from mining_common.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../common/registration.h"
#include "mining_kernels.h"

namespace partdist {
namespace mining {

namespace {
// Rows per task: at least ~16k elements of work.
int64_t grain_for(int64_t M) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, M)); }

}  // namespace

void CpuKernels::forward(const Shape& S, const LossSpec& L, const ForwardTensors& t) {
  if (S.N == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, t.dist.scalar_type(), "partdist_mining_forward_cpu", [&] {
        using A = at::opmath_type<scalar_t>;
        const scalar_t* d = t.dist.const_data_ptr<scalar_t>();
        const int64_t* lab = t.labels.const_data_ptr<int64_t>();
        const int64_t* lo = t.labels_other.const_data_ptr<int64_t>();
        const auto o = forward_out<scalar_t, A>(t);
        const LossArgs<A> la = loss_args<A>(L);
        at::parallel_for(0, S.N, grain_for(S.M), [&](int64_t begin, int64_t end) {
          if (S.col_stride == 1) {  // unit stride: let the compiler see it
            Shape U = S;
            U.col_stride = 1;
            for (int64_t i = begin; i < end; ++i) mine_row<scalar_t, A>(i, U, la, d, lab, lo, o);
          } else {
            for (int64_t i = begin; i < end; ++i) mine_row<scalar_t, A>(i, S, la, d, lab, lo, o);
          }
        });
      });
}

void CpuKernels::backward(const Shape& S, const LossSpec& L, const BackwardTensors& t) {
  if (S.N == 0 || S.M == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, t.dist_ap.scalar_type(), "partdist_mining_backward_cpu", [&] {
        using A = at::opmath_type<scalar_t>;
        const auto b = backward_in<scalar_t, A>(t);
        const LossArgs<A> la = loss_args<A>(L);
        scalar_t* g = t.out.mutable_data_ptr<scalar_t>();
        // Each task zeroes its own rows: the first touch of the (large) output
        // is spread over the threads as well.
        at::parallel_for(0, S.N, grain_for(S.M), [&](int64_t begin, int64_t end) {
          std::fill(g + begin * S.M, g + end * S.M, scalar_t(0));
          for (int64_t i = begin; i < end; ++i) scatter_row<scalar_t, A>(i, S.M, b, la, g);
        });
      });
}

// Mean over the valid anchors; 0 when there is none (row_loss is 0 there).
void CpuKernels::loss_mean(const at::Tensor& row_loss, const at::Tensor& valid,
                           const at::Tensor& loss) {
  const at::Tensor count = valid.sum().clamp_min(1).to(row_loss.scalar_type());
  loss.copy_(row_loss.sum().div(count));
}

}  // namespace mining
}  // namespace partdist

PARTDIST_REGISTER_BACKEND(mining, CPU, CpuKernels)
