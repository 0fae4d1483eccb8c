// The CPU backend of the neighborhood-difference family (CpuKernels, see
// neighborhood_kernels.h) and its registration for the CPU dispatch key:
// at::parallel_for over output rows (forward) and over rows of f / g elements
// (backward gather, no atomics); per-element math from neighborhood_common.h. The loops are
// instantiated for k = 1, 3, 5, 7 with k known at compile time (and once more for any other k).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/registration.h"
#include "neighborhood_kernels.h"

namespace partdist {
namespace nbhd {

namespace {
// Rows per task so that one task touches at least ~32k output cells.
int64_t grain_for(int64_t cells_per_row) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, cells_per_row));
}

template <typename T, int KS>
void forward_rows(const Geom& G, const T* __restrict__ pf, const T* __restrict__ pg,
                  T* __restrict__ po) {
  using A = at::opmath_type<T>;
  const int64_t H = G.H, W = G.W, k = fixed_k<KS>(G.k), r = k / 2;
  const int64_t HW = H * W, Hk = H * k, Wk = W * k;
  // One task = a run of output rows (b, c, Y); each row is W*k contiguous cells.
  // Output row (y, u) is fexp(y) - gexp(y + u - r) cell by cell, where
  //   fexp(y)[x*k + v]  = f(y, x)            (shared by the k rows of block row y)
  //   gexp(gy)[x*k + v] = g(gy, x + v - r)   (shared by the k rows that read g row gy)
  // Both expanded rows are built once and reused (gexp: a ring of k rows, slot
  // gy mod k), so the per-cell loop is a contiguous, vectorized subtraction.
  at::parallel_for(0, G.planes() * Hk, grain_for(Wk), [&](int64_t begin, int64_t end) {
    std::vector<A> fexp(Wk), gexp(k * Wk), gpad(W + 2 * r);
    std::vector<int64_t> gkey(k, -1);
    int64_t fkey = -1;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / Hk;
      int64_t y, u;
      split_out(row - p * Hk, k, y, u);
      T* __restrict__ o = po + row * Wk;
      if (fkey != p * H + y) {
        const T* fp = pf + p * HW + y * W;
        for (int64_t x = 0; x < W; ++x)
          for (int64_t v = 0; v < k; ++v) fexp[x * k + v] = static_cast<A>(fp[x]);
        fkey = p * H + y;
      }
      const A* __restrict__ fe = fexp.data();
      const int64_t gy = neighbor(y, u, r);
      if (!inside(gy, H)) {  // the whole row reads g outside the map
        for (int64_t X = 0; X < Wk; ++X) o[X] = diff_value<T>(fe[X], A(0));
        continue;
      }
      const int64_t slot = gy % k;
      A* ge = gexp.data() + slot * Wk;
      if (gkey[slot] != p * H + gy) {
        // gpad[j] = g(gy, j - r): cell (x, v) reads gpad[x + v].
        const T* gp = pg + p * HW;
        for (int64_t j = 0; j < W + 2 * r; ++j) gpad[j] = g_or_zero<A>(gp, H, W, gy, j - r);
        for (int64_t x = 0; x < W; ++x)
          for (int64_t v = 0; v < k; ++v) ge[x * k + v] = gpad[x + v];
        gkey[slot] = p * H + gy;
      }
      const A* __restrict__ gq = ge;
      for (int64_t X = 0; X < Wk; ++X) o[X] = diff_value<T>(fe[X], gq[X]);
    }
  });
}

// Adds output rows Y (of the u range) of one plane into buf[0, Wk), as A.
template <typename A, typename View>
void add_row(const View& go, int64_t Y, int64_t Wk, A* __restrict__ buf) {
  for (int64_t X = 0; X < Wk; ++X) buf[X] += static_cast<A>(go(Y, X));
}

template <typename T, int KS, bool kUnitX>
void backward_rows(const Geom& G, const T* __restrict__ pgo, T* __restrict__ pgf,
                   T* __restrict__ pgg) {
  using A = at::opmath_type<T>;
  const int64_t C = G.C, H = G.H, W = G.W, k = fixed_k<KS>(G.k), r = k / 2, Wk = W * k;
  // One task = a run of rows (b, c, y) of f / g. Each element's gradient is a sum
  // over rows u and cells v (neighborhood_common.h); the rows of the u range are
  // summed first (contiguous, vectorized), then the row-level gathers run once.
  at::parallel_for(0, G.planes() * H, grain_for(W * k * k), [&](int64_t begin, int64_t end) {
    std::vector<A> rows_f(Wk), rows_g(Wk);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / H, y = row - p * H;
      const int64_t b = p / C, c = p - b * C;
      const PlaneView<T, int64_t, kUnitX> go{pgo + b * G.gsb + c * G.gsc, G.gsy, G.gsx};
      std::fill(rows_f.begin(), rows_f.end(), A(0));
      std::fill(rows_g.begin(), rows_g.end(), A(0));
      for (int64_t u = 0; u < k; ++u) add_row(go, block_to_out(y, u, k), Wk, rows_f.data());
      int64_t ulo, uhi;
      gather_range(y, H, k, r, ulo, uhi);
      for (int64_t u = ulo; u <= uhi; ++u) add_row(go, gather_row(y, u, k, r), Wk, rows_g.data());
      const DenseRow<A> sf{rows_f.data()}, sg{rows_g.data()};
      T* gf = pgf + row * W;
      T* gg = pgg + row * W;
      for (int64_t x = 0; x < W; ++x) {
        gf[x] = static_cast<T>(block_row_sum<A>(sf, k, x));
        int64_t vlo, vhi;
        gather_range(x, W, k, r, vlo, vhi);
        gg[x] = static_cast<T>(-gather_row_sum<A>(sg, k, r, x, vlo, vhi));
      }
    }
  });
}
}  // namespace

void CpuKernels::forward(const Geom& G, const at::Tensor& f, const at::Tensor& g,
                         const at::Tensor& out) {
  if (G.out_numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, f.scalar_type(), "partdist_neighborhood_diff_cpu", [&] {
        dispatch_kernel_size(G.k, [&](auto ks) {
          forward_rows<scalar_t, decltype(ks)::value>(G, f.const_data_ptr<scalar_t>(),
                                                      g.const_data_ptr<scalar_t>(),
                                                      out.mutable_data_ptr<scalar_t>());
        });
      });
}

void CpuKernels::backward(const Geom& G, const at::Tensor& grad, const at::Tensor& grad_f,
                          const at::Tensor& grad_g) {
  if (G.in_numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "partdist_neighborhood_diff_backward_cpu", [&] {
                                    const scalar_t* pgo = grad.const_data_ptr<scalar_t>();
                                    scalar_t* pgf = grad_f.mutable_data_ptr<scalar_t>();
                                    scalar_t* pgg = grad_g.mutable_data_ptr<scalar_t>();
                                    dispatch_kernel_size(G.k, [&](auto ks) {
                                      constexpr int KS = decltype(ks)::value;
                                      if (G.gsx == 1)
                                        backward_rows<scalar_t, KS, true>(G, pgo, pgf, pgg);
                                      else
                                        backward_rows<scalar_t, KS, false>(G, pgo, pgf, pgg);
                                    });
                                  });
}

}  // namespace nbhd
}  // namespace partdist

PARTDIST_REGISTER_BACKEND(nbhd, CPU, CpuKernels)
