// CPU launchers: at::parallel_for over pairs, per-pair math from dmli_common.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

#include "dmli_kernels.h"

namespace partdist {
namespace dmli {

namespace {
// Grain so that one task holds at least ~32k cells of work.
int64_t grain_for(const PairLayout& L) {
  int64_t cells = int64_t(L.m) * L.n;
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, cells));
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}
}  // namespace

void forward_cpu(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& xy,
                 const at::Tensor& xx, const at::Tensor& yy, const at::Tensor& out) {
  if (L.num_pairs == 0) return;
  AT_DISPATCH_FLOATING_TYPES(xy.scalar_type(), "partdist_dmli_forward_cpu", [&] {
    const scalar_t* pxy = xy.const_data_ptr<scalar_t>();
    const scalar_t* pxx = ptr_or_null<scalar_t>(xx);
    const scalar_t* pyy = ptr_or_null<scalar_t>(yy);
    scalar_t* pout = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, L.num_pairs, grain_for(L), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> row(L.n);
      for (int64_t p = begin; p < end; ++p)
        pair_forward<scalar_t>(L, p, mode, normalize, pxy, pxx, pyy, pout, row.data());
    });
  });
}

void backward_cpu(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& gout,
                  const at::Tensor& xy, const at::Tensor& xx, const at::Tensor& yy,
                  const at::Tensor& w) {
  if (L.num_pairs == 0) return;
  AT_DISPATCH_FLOATING_TYPES(xy.scalar_type(), "partdist_dmli_backward_cpu", [&] {
    const scalar_t* pg = gout.const_data_ptr<scalar_t>();
    const scalar_t* pxy = xy.const_data_ptr<scalar_t>();
    const scalar_t* pxx = ptr_or_null<scalar_t>(xx);
    const scalar_t* pyy = ptr_or_null<scalar_t>(yy);
    scalar_t* pw = w.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, L.num_pairs, grain_for(L), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> table(int64_t(L.m) * L.n), grow(L.n);
      for (int64_t p = begin; p < end; ++p)
        pair_backward<scalar_t>(L, p, mode, normalize, pg, pxy, pxx, pyy, pw, table.data(), 1,
                                grow.data());
    });
  });
}

}  // namespace dmli
}  // namespace partdist
