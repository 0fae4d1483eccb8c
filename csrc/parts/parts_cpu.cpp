// The CPU backend of the part-distance family (CpuKernels, see parts_kernels.h) and
// its registration for the CPU dispatch key: at::parallel_for over blocks of pairs;
// the math is in parts_common.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/ptr.h"
#include "parts_kernels.h"

namespace partdist {
namespace parts {

// Forward: rows of the tile in blocks of kRow pairs (part_row_forward: parts outer,
// pairs inner, so the distance / weight loop vectorizes).
constexpr int64_t kRow = 256;

void CpuKernels::part_forward(const PartArgs& a, const at::Tensor& out) {
  const int64_t n = a.mc * a.nc;
  if (n == 0) return;
  const int64_t nb = (a.nc + kRow - 1) / kRow, blocks = a.mc * nb;
  const int64_t grain = std::max<int64_t>(1, 4096 / (std::min(a.nc, kRow) * std::max(1, a.P)));
  AT_DISPATCH_FLOATING_TYPES(a.xy.scalar_type(), "partdist_part_forward_cpu", [&] {
    const PartTile<scalar_t> L = part_tile<scalar_t>(a);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, grain, [&](int64_t b, int64_t e) {
      scalar_t num[kRow], den[kRow];
      for (int64_t q = b; q < e; ++q) {
        const int64_t i = q / nb, j0 = (q - i * nb) * kRow;
        part_row_forward(L, i, j0, std::min(a.nc, j0 + kRow), num, den, o);
      }
    });
  });
}

void CpuKernels::part_backward(const PartArgs& a, const at::Tensor& gout, const at::Tensor& cw,
                               const at::Tensor& ce) {
  const int64_t n = a.mc * a.nc;
  if (n == 0) return;
  const int64_t nb = (a.nc + kRow - 1) / kRow, blocks = a.mc * nb;
  const int64_t grain = std::max<int64_t>(1, 4096 / (std::min(a.nc, kRow) * std::max(1, a.P)));
  AT_DISPATCH_FLOATING_TYPES(a.xy.scalar_type(), "partdist_part_backward_cpu", [&] {
    const PartTile<scalar_t> L = part_tile<scalar_t>(a);
    const scalar_t* g = gout.const_data_ptr<scalar_t>();
    scalar_t* w = cw.mutable_data_ptr<scalar_t>();
    scalar_t* e = ce.defined() ? ce.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, blocks, grain, [&](int64_t b, int64_t end) {
      scalar_t num[kRow], den[kRow];
      for (int64_t q = b; q < end; ++q) {
        const int64_t i = q / nb, j0 = (q - i * nb) * kRow;
        part_row_backward(L, i, j0, std::min(a.nc, j0 + kRow), g, w, e, num, den);
      }
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

TORCH_LIBRARY_IMPL(partdist, CPU, m) {
  partdist::parts::register_impls<partdist::parts::CpuKernels>(m);
}
