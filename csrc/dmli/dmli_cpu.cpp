// CPU launchers: at::parallel_for over pairs, per-pair math from dmli_common.h.
//
// Structure (the math itself is all in the header):
//   forward, DP modes: pairs go in blocks of kLanes; the cells of each pair are
//     first filled into a per-thread table (fill_cells: a loop over contiguous
//     cells that the compiler vectorizes), then the kLanes DPs run together, one
//     pair per SIMD lane (dmli_forward on Lanes): the DP recurrence is a chain of
//     dependent min/add per pair, so lanes multiply its throughput.
//   backward, fused mode: per pair, fill the cells, run the DP backward on them
//     (gradient per cell into w), then turn those gradients into cell weights in
//     place (fill_weights, vectorized).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "dmli_kernels.h"

namespace partdist {
namespace dmli {

namespace {
constexpr int kLanes = 16;

// Pairs per task: at least ~4k cells of work.
int64_t grain_for(const PairLayout& L) {
  int64_t cells = int64_t(L.m) * L.n;
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, cells));
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
void forward_block(const PairLayout& L, Mode mode, bool normalize, const T* xy, const T* xx,
                   const T* yy, T* out, int64_t p0, int64_t cnt, T* tables,
                   Lanes<T, kLanes>* row) {
  const int64_t mn = int64_t(L.m) * L.n;
  LaneCells<T, kLanes> cells;
  for (int l = 0; l < kLanes; ++l) {
    // lanes past the end repeat the last pair; their results are dropped
    int64_t a, b;
    L.pair(p0 + std::min<int64_t>(l, cnt - 1), a, b);
    const T* t = xy + L.xy_off(a, b);
    if (mode == Mode::kFused) {
      if (l < cnt) {
        FusedCells<T> c{t, L.xy_si, xx + a * L.xx_sa, yy + b * L.yy_sb, normalize};
        fill_cells(c, L.m, L.n, tables + l * mn, int64_t(L.n));
      }
      cells.base[l] = tables + std::min<int64_t>(l, cnt - 1) * mn;
    } else {
      cells.base[l] = t;
    }
  }
  cells.si = mode == Mode::kFused ? int64_t(L.n) : L.xy_si;
  Lanes<T, kLanes> r = dmli_forward<Lanes<T, kLanes>>(cells, L.m, L.n, RowStore<Lanes<T, kLanes>>{row});
  for (int64_t l = 0; l < cnt; ++l) {
    int64_t a, b;
    L.pair(p0 + l, a, b);
    out[L.out_off(a, b)] = r.v[l];
  }
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
    if (mode == Mode::kCells) {
      at::parallel_for(0, L.num_pairs, grain_for(L), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p)
          pair_forward<scalar_t>(L, p, mode, normalize, pxy, pxx, pyy, pout, nullptr);
      });
      return;
    }
    const int64_t blocks = (L.num_pairs + kLanes - 1) / kLanes;
    const int64_t grain = std::max<int64_t>(1, grain_for(L) / kLanes);
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> tables(mode == Mode::kFused ? size_t(kLanes) * L.m * L.n : 0);
      std::vector<Lanes<scalar_t, kLanes>> row(L.n);
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t p0 = blk * kLanes;
        forward_block<scalar_t>(L, mode, normalize, pxy, pxx, pyy, pout, p0,
                                std::min<int64_t>(kLanes, L.num_pairs - p0), tables.data(),
                                row.data());
      }
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
      const int64_t mn = int64_t(L.m) * L.n;
      std::vector<scalar_t> table(mn), cells(mn), grow(L.n);
      for (int64_t p = begin; p < end; ++p) {
        if (mode != Mode::kFused) {
          pair_backward<scalar_t>(L, p, mode, normalize, pg, pxy, pxx, pyy, pw, table.data(), 1,
                                  grow.data());
          continue;
        }
        int64_t a, b;
        L.pair(p, a, b);
        const int64_t off = L.xy_off(a, b);
        FusedCells<scalar_t> c{pxy + off, L.xy_si, pxx + a * L.xx_sa, pyy + b * L.yy_sb, normalize};
        fill_cells(c, L.m, L.n, cells.data(), int64_t(L.n));
        TableStore<scalar_t> st{table.data(), 1, L.n};
        dmli_backward<scalar_t>(RawCells<scalar_t>{cells.data(), int64_t(L.n)}, L.m, L.n,
                                pg[L.out_off(a, b)], st, grow.data(),
                                EmitGrad<scalar_t>{pw + off, L.xy_si});
        fill_weights(c, L.m, L.n, pw + off, L.xy_si, pw + off, L.xy_si);
      }
    });
  });
}

}  // namespace dmli
}  // namespace partdist
