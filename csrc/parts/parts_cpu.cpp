// The CPU backend of the part-distance family (CpuKernels, see parts_kernels.h) and
// its registration for the CPU dispatch key: at::parallel_for over blocks of pairs;
// the math is in parts_common.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/ptr.h"
#include "../common/registration.h"
#include "parts_kernels.h"

namespace partdist {
namespace parts {

// Forward: rows of the tile in blocks of kRow pairs (part_row_forward: parts outer,
// pairs inner, so the distance / weight loop vectorizes).
constexpr int64_t kRow = 256;

// fn(i, j0, j1, num, den) for the pairs (i, j0..j1) of the tile in blocks of at most
// kRow pairs of one row, in parallel; num, den: kRow entries of scratch.
template <typename T, typename Fn>
void for_each_row_block(const PartArgs& a, const Fn& fn) {
  const int64_t nb = (a.nc + kRow - 1) / kRow, blocks = a.mc * nb;
  const int64_t grain = std::max<int64_t>(1, 4096 / (std::min(a.nc, kRow) * std::max(1, a.P)));
  at::parallel_for(0, blocks, grain, [&](int64_t b, int64_t e) {
    T num[kRow], den[kRow];
    for (int64_t q = b; q < e; ++q) {
      const int64_t i = q / nb, j0 = (q - i * nb) * kRow;
      fn(i, j0, std::min(a.nc, j0 + kRow), num, den);
    }
  });
}

void CpuKernels::part_forward(const PartArgs& a, const at::Tensor& out) {
  if (a.mc * a.nc == 0) return;
  AT_DISPATCH_FLOATING_TYPES(a.xy.scalar_type(), "partdist_part_forward_cpu", [&] {
    const PartTile<scalar_t> L = part_tile<scalar_t>(a);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_each_row_block<scalar_t>(
        a, [&](int64_t i, int64_t j0, int64_t j1, scalar_t* num, scalar_t* den) {
          part_row_forward(L, i, j0, j1, num, den, o);
        });
  });
}

void CpuKernels::part_backward(const PartArgs& a, const at::Tensor& gout, const at::Tensor& cw,
                               const at::Tensor& ce) {
  if (a.mc * a.nc == 0) return;
  AT_DISPATCH_FLOATING_TYPES(a.xy.scalar_type(), "partdist_part_backward_cpu", [&] {
    const PartTile<scalar_t> L = part_tile<scalar_t>(a);
    const scalar_t* g = gout.const_data_ptr<scalar_t>();
    scalar_t* w = cw.mutable_data_ptr<scalar_t>();
    scalar_t* e = ce.defined() ? ce.mutable_data_ptr<scalar_t>() : nullptr;
    for_each_row_block<scalar_t>(
        a, [&](int64_t i, int64_t j0, int64_t j1, scalar_t* num, scalar_t* den) {
          part_row_backward(L, i, j0, j1, g, w, e, num, den);
        });
  });
}

// DSR: one task per pair, all its query cells at once (dsr_pair, vectorized over cells).
void CpuKernels::dsr_forward(const DsrArgs& a, const at::Tensor& err) {
  const int64_t n = a.mc * a.nc;
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES(a.G.scalar_type(), "partdist_dsr_forward_cpu", [&] {
    const DsrTile<scalar_t> L = dsr_tile<scalar_t>(a);
    scalar_t* o = err.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
      std::vector<scalar_t> scratch(3 * size_t(a.Lg) * a.Lq + 7 * size_t(a.Lq));
      for (int64_t p = b; p < e; ++p) dsr_pair_task(L, p, scratch.data(), o);
    });
  });
}

}  // namespace parts
}  // namespace partdist

PARTDIST_REGISTER_BACKEND(parts, CPU, CpuKernels)
