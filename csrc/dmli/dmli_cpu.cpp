// The CPU backend of the DMLI family (CpuKernels, see dmli_kernels.h) and its
// registration for the CPU dispatch key: at::parallel_for over pairs, per-pair math
// from dmli_common.h.
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
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "../common/ptr.h"
#include "dmli_kernels.h"
#include "dmli_simd.h"

namespace partdist {
namespace dmli {

namespace {
// Pairs per SIMD block (lanes of Lanes<T, kLanes>).
constexpr int kLanes = 16;

// Pairs per task: at least ~4k cells of work.
int64_t grain_for(const PairLayout& L) {
  int64_t cells = int64_t(L.m) * L.n;
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, cells));
}

template <typename T>
void forward_block(const PairLayout& L, Mode mode, bool normalize, const T* xy, const T* xx,
                   const T* yy, T* out, int64_t p0, int64_t cnt, T* tables, Lanes<T, kLanes>* row) {
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
  Lanes<T, kLanes> r =
      dmli_forward<Lanes<T, kLanes>>(cells, L.m, L.n, RowStore<Lanes<T, kLanes>>{row}, L.rule);
  for (int64_t l = 0; l < cnt; ++l) {
    int64_t a, b;
    L.pair(p0 + l, a, b);
    out[L.out_off(a, b)] = r.v[l];
  }
}
}  // namespace

void CpuKernels::forward(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& xy,
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

namespace {
// One tile of mc first images x nc second images in a lane-contiguous layout:
// xy [n, mc*m, nc] (xy[j][a*m + i][b] = x_a,i . y_b,j), xx [mc*m], yy with
// yy[j * yy_sj + b] = |y_b,j|^2; out[a * out_sa + b]. Reads up to kLanes-1 values past
// the last b of a row of xy and of yy: both buffers must be padded by that much.
// Single-threaded (called per tile).
struct AllPairsTile {
  int64_t mc, nc;
  int m, n;
  int64_t yy_sj, out_sa;
};

template <typename T>
void allpairs_tile_forward(const AllPairsTile& t, bool normalize, const DPRule& rule, const T* pxy,
                           const T* pxx, const T* pyy, T* pout) {
  using V = Lanes<T, kLanes>;
  std::vector<V> row(t.n);
  for (int64_t a = 0; a < t.mc; ++a) {
    for (int64_t b0 = 0; b0 < t.nc; b0 += kLanes) {
      // lanes past nc read in-bounds padding (see AllPairsTile); their results are dropped
      LaneFusedCells<T, kLanes> cells{pxy + a * t.m * t.nc + b0,
                                      t.nc,
                                      t.mc * t.m * t.nc,
                                      pxx + a * t.m,
                                      pyy + b0,
                                      t.yy_sj,
                                      normalize};
      V r = dmli_forward<V>(cells, t.m, t.n, RowStore<V>{row.data()}, rule);
      const int64_t cnt = std::min<int64_t>(kLanes, t.nc - b0);
      for (int64_t l = 0; l < cnt; ++l) pout[a * t.out_sa + b0 + l] = r.v[l];
    }
  }
}
}  // namespace

// All pairs: tiles in parallel, each thread with its own (cache-sized) buffer and a
// single-threaded GEMM per stripe j of the second images (into xy[j]), so that the
// GEMM output stays in cache for the DP, which computes the cells in SIMD lanes.
Tiling CpuKernels::local_dist_tiling(int64_t M, int64_t N, int64_t m, int64_t n, int64_t elem,
                                     int64_t chunk_size, bool) {
  return tiling_for(M, N, tile_pairs(chunk_size, kCpuThreadTileBytes, m * n * elem));
}

namespace {
// float32, hard minimum (band or not): the kernels of dmli_simd.h for the CPU's
// instruction set, the dot products computed in registers right where the DP needs
// them (no GEMM output in memory). Tasks of kQueries first images x kGalleryBlocks
// blocks of second images; per-thread scratch only (~4 KB per first image for C = 128,
// m = 8).
void simd_local_dist_forward(const Prepared& P, bool normalize, const DPRule& rule,
                             const at::Tensor& out) {
  constexpr int64_t kQueries = 64, kGalleryBlocks = 32;
  const simd::Kernels& K = simd::kernels();
  const int64_t M = P.x.size(0), N = P.y.size(0), C = P.x.size(2);
  const int m = int(P.x.size(1)), n = int(P.y.size(1));
  std::vector<unsigned char> allowed;
  if (rule.band >= 0.0) {
    allowed.resize(size_t(m) * n);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) allowed[size_t(i) * n + j] = rule.allowed(i, j, m, n) ? 1 : 0;
  }
  const simd::AllPairsArgs A{P.x.const_data_ptr<float>(),
                             P.y.const_data_ptr<float>(),
                             P.xx.const_data_ptr<float>(),
                             P.yy.const_data_ptr<float>(),
                             out.mutable_data_ptr<float>(),
                             N,
                             C,
                             m,
                             n,
                             normalize,
                             allowed.empty() ? nullptr : allowed.data()};
  // bfloat16 values (bfloat16 features, or gemm_dtype=torch.bfloat16): the level's
  // bfloat16 kernel where it has one
  const auto allpairs = P.bf16 && K.allpairs_bf16 ? K.allpairs_bf16 : K.allpairs;
  const int64_t qb = std::min(M, kQueries), gb = std::min(N, K.lanes * kGalleryBlocks);
  const int64_t tn = (N + gb - 1) / gb, tasks = ((M + qb - 1) / qb) * tn;
  // tasks handed out one at a time from a shared counter (not a static split): a thread
  // that runs slower (a busy core, a descheduled thread) takes fewer of them
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(tasks, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(size_t(K.allpairs_scratch(qb, m, n, C)));
    for (int64_t w = begin; w < end; ++w)
      for (int64_t t = next++; t < tasks; t = next++) {
        const int64_t a0 = (t / tn) * qb, b0 = (t % tn) * gb;
        allpairs(A, a0, std::min(a0 + qb, M), b0, std::min(b0 + gb, N), scratch.data());
      }
  });
}
}  // namespace

void CpuKernels::local_dist_forward(const Prepared& P, bool normalize, const DPRule& rule,
                                    int64_t chunk_size, const at::Tensor& out) {
  if (P.x.scalar_type() == at::kFloat && !rule.diag && rule.gamma == 0.0) {
    simd_local_dist_forward(P, normalize, rule, out);
    return;
  }
  const int64_t M = P.x.size(0), N = P.y.size(0), m = P.x.size(1), n = P.y.size(1);
  const Tiling T = local_dist_tiling(M, N, m, n, P.x.element_size(), chunk_size, false);
  const int64_t pad = kLanes;
  at::Tensor yyT = at::zeros({n, N + pad}, P.x.options());
  yyT.narrow(1, 0, N).copy_(P.yy.t());
  const int64_t tile_elems = n * T.mc * m * T.nc + pad;
  const at::Tensor x2 = P.x.view({M * m, P.x.size(2)}), xx = P.xx.view({M * m});
  AT_DISPATCH_FLOATING_TYPES(P.x.scalar_type(), "partdist_allpairs_tile_cpu", [&] {
    for_each_tile(
        M, N, T, true,
        // zeros: the kernel reads (and drops) padding lanes past the last column
        [&] { return at::zeros({tile_elems}, P.x.options()); },
        [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc, const at::Tensor& buf) {
          const at::Tensor xa = x2.narrow(0, a0 * m, mc * m);
          for (int64_t j = 0; j < n; ++j) {
            at::Tensor xy_j = buf.narrow(0, j * mc * m * nc, mc * m * nc).view({mc * m, nc});
            at::mm_out(xy_j, xa, P.y.select(1, j).narrow(0, b0, nc).t());
          }
          AllPairsTile t{mc, nc, int(m), int(n), N + pad, N};
          allpairs_tile_forward<scalar_t>(t, normalize, rule, buf.const_data_ptr<scalar_t>(),
                                          xx.const_data_ptr<scalar_t>() + a0 * m,
                                          yyT.const_data_ptr<scalar_t>() + b0,
                                          out.mutable_data_ptr<scalar_t>() + a0 * N + b0);
        });
  });
}

void CpuKernels::backward(const PairLayout& L, Mode mode, bool normalize, const at::Tensor& gout,
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
        if (pg[L.out_off(a, b)] == scalar_t(0)) {  // no gradient: no DP to run
          zero_cells(L.m, L.n, pw + off, L.xy_si);
          continue;
        }
        FusedCells<scalar_t> c{pxy + off, L.xy_si, pxx + a * L.xx_sa, pyy + b * L.yy_sb, normalize};
        fill_cells(c, L.m, L.n, cells.data(), int64_t(L.n));
        TableStore<scalar_t> st{table.data(), 1, L.n};
        dmli_backward<scalar_t>(RawCells<scalar_t>{cells.data(), int64_t(L.n)}, L.m, L.n,
                                pg[L.out_off(a, b)], st, grow.data(),
                                EmitGrad<scalar_t>{pw + off, L.xy_si}, L.rule);
        fill_weights(c, L.m, L.n, pw + off, L.xy_si, pw + off, L.xy_si);
      }
    });
  });
}

namespace {
// Aligned pairs x [N, m, C], y [N, n, C] (contiguous) in blocks of kLanes pairs.
template <typename T>
struct AlignedPairs {
  const T* x;
  const T* y;
  int64_t N, C;
  int m, n;
  int64_t mn;
  bool normalize;
  const simd::Kernels& K;  // float32: the dots and the chain rule of the CPU's level
  AlignedPairs(const at::Tensor& xt, const at::Tensor& yt, bool norm)
      : x(xt.const_data_ptr<T>()),
        y(yt.const_data_ptr<T>()),
        N(xt.size(0)),
        C(xt.size(2)),
        m(int(xt.size(1))),
        n(int(yt.size(1))),
        mn(int64_t(m) * n),
        normalize(norm),
        K(simd::kernels()) {}
  // Stripe dot products and squared norms of pair p (dmli_simd.h's pair_dots for float32,
  // dmli_common.h's otherwise).
  void dots(int64_t p, T* xy, T* xx, T* yy) const {
    const T* xp = x + p * m * C;
    const T* yp = y + p * n * C;
    if constexpr (std::is_same_v<T, float>)
      K.pair_dots(xp, yp, m, n, C, xy, xx, yy);
    else
      pair_dots(xp, yp, m, n, C, xy, xx, yy);
  }
};

// Per-thread scratch of one block: the dot products, squared norms and cells of its
// pairs (lane l at l * m*n, l * m, l * n), the DP in SIMD lanes (the forward: one row;
// the backward: the S table, the cell gradients and one gradient row), and the
// backward's per-pair buffers.
template <typename T>
struct AlignedScratch {
  using V = Lanes<T, kLanes>;
  std::vector<T> xy, xx, yy, cells, table, grow, w;
  std::vector<V> dp;
  std::vector<int> idx;    // pair_grads' scratch
  std::vector<float> ldp;  // lanes_dp's scratch, then its cell gradients ([m*n][width])
  AlignedScratch(const AlignedPairs<T>& A, bool full_table)
      : xy(kLanes * A.mn),
        xx(kLanes * A.m),
        yy(kLanes * A.n),
        cells(kLanes * A.mn),
        table(A.mn),
        grow(A.n),
        w(A.mn),
        dp(full_table ? 2 * A.mn + A.n : A.n),
        idx(std::is_same_v<T, float> ? simd::pair_grads_scratch(A.m, A.n) : 0),
        ldp(std::is_same_v<T, float> ? A.K.lanes_dp_scratch(A.m, A.n) + A.mn * A.K.width : 0) {}
  // Cell accessor of lane l (from its dot products and norms).
  FusedCells<T> fused(const AlignedPairs<T>& A, int l) const {
    return FusedCells<T>{xy.data() + l * A.mn, int64_t(A.n), xx.data() + l * A.m,
                         yy.data() + l * A.n, A.normalize};
  }
  // Fills the cells of the lanes that `live` marks and returns the lane accessor over
  // all kLanes (the other lanes hold stale values: their DPs run and are ignored).
  LaneCells<T, kLanes> lane_cells(const AlignedPairs<T>& A, const bool* live) {
    LaneCells<T, kLanes> c;
    c.si = A.n;
    for (int l = 0; l < kLanes; ++l) {
      if (live[l]) fill_cells(fused(A, l), A.m, A.n, cells.data() + l * A.mn, int64_t(A.n));
      c.base[l] = cells.data() + l * A.mn;
    }
    return c;
  }
};

// Stores dL/dd(i, j) of all lanes into a table of Lanes (m*n, row-major).
template <typename V>
struct EmitLanes {
  V* g;
  int n;
  void operator()(int i, int j, const V& v) const { g[i * n + j] = v; }
};

// Runs body(s, p0, live) over the blocks of kLanes aligned pairs in parallel, after
// filling (if dots) s's dot products and norms of the pairs p0 + l with
// live[l] = need(p0 + l) (lanes past the last pair are not live).
template <typename T, typename Need, typename Body>
void for_aligned_blocks(const AlignedPairs<T>& A, bool full_table, bool dots, const Need& need,
                        const Body& body) {
  if (A.N == 0) return;
  const int64_t blocks = (A.N + kLanes - 1) / kLanes;
  const int64_t grain =
      std::max<int64_t>(1, 2048 / (A.mn * std::max<int64_t>(1, A.C / 16)) / kLanes);
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    AlignedScratch<T> s(A, full_table);
    bool live[kLanes];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t p0 = blk * kLanes;
      for (int l = 0; l < kLanes; ++l) {
        const int64_t p = p0 + l;
        live[l] = p < A.N && need(p);
        if (live[l] && dots)
          A.dots(p, s.xy.data() + l * A.mn, s.xx.data() + l * A.m, s.yy.data() + l * A.n);
      }
      body(s, p0, live);
    }
  });
}

// The DPs of a block in SIMD lanes, forward and in reverse (dmli_forward, dmli_reverse:
// the same recursions as the per-pair dmli_backward, lane by lane): returns dL/dd of
// the cells of every lane (m*n Lanes, row-major, in s.dp); lanes that are not live get
// no gradient.
template <typename T>
Lanes<T, kLanes>* lane_cell_grads(AlignedScratch<T>& s, const AlignedPairs<T>& A,
                                  const LaneCells<T, kLanes>& cells, const T* pg, int64_t p0,
                                  const bool* live, const DPRule& rule) {
  using V = Lanes<T, kLanes>;
  V* gcell = s.dp.data() + A.mn;
  V gout;
  for (int l = 0; l < kLanes; ++l) gout.v[l] = live[l] ? pg[p0 + l] : T(0);
  TableStore<V> st{s.dp.data(), 1, A.n};
  dmli_forward<V>(cells, A.m, A.n, st, rule);
  dmli_reverse<V>(A.m, A.n, gout, st, gcell + A.mn, EmitLanes<V>{gcell, A.n}, T(rule.gamma));
  return gcell;
}

// gx, gy of pair p from its cell weights w (m*n, row-major; see cell_weight): the cells
// with a nonzero weight add their gradients in row-major order, the first one into a
// row of gx or gy writes it instead (0 + d and 0 - d are d and -d exactly: the same
// values as zeroing first, without the memset); rows without any get zeros.
// w == nullptr: zeros only.
template <typename T, bool kSetA, bool kSetB>
inline void cell_grad(T w, const T* a, const T* b, int64_t C, T* ga, T* gb) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    T d = channel_grad(w, a[c], b[c]);
    if (kSetA)
      ga[c] = d;
    else
      ga[c] += d;
    if (kSetB)
      gb[c] = -d;
    else
      gb[c] -= d;
  }
}

// float32: dmli_simd.h's pair_grads (the same sums, in registers, for the CPU's level).
template <typename T>
void pair_grads(const AlignedPairs<T>& A, int64_t p, const T* w, T* gx, T* gy, int* idx) {
  const int m = A.m, n = A.n;
  const int64_t C = A.C;
  const T* xp = A.x + p * m * C;
  const T* yp = A.y + p * n * C;
  T* gxp = gx + p * m * C;
  T* gyp = gy + p * n * C;
  if (w == nullptr) {
    std::fill(gxp, gxp + m * C, T(0));
    std::fill(gyp, gyp + n * C, T(0));
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    A.K.pair_grads(xp, yp, m, n, C, w, gxp, gyp, idx);
    return;
  }
  // rows of gy written so far (n may exceed kMaxStripes in the kCells mode)
  bool small[kMaxStripes] = {};
  std::vector<bool> large(n > kMaxStripes ? n : 0, false);
  auto ydone = [&](int j) -> bool { return n > kMaxStripes ? bool(large[j]) : small[j]; };
  auto set_ydone = [&](int j) {
    if (n > kMaxStripes)
      large[j] = true;
    else
      small[j] = true;
  };
  for (int i = 0; i < m; ++i) {
    bool xdone = false;
    for (int j = 0; j < n; ++j) {
      const T wij = w[i * n + j];
      if (wij == T(0)) continue;
      const T *a = xp + i * C, *b = yp + j * C;
      T *ga = gxp + i * C, *gb = gyp + j * C;
      if (!xdone)
        ydone(j) ? cell_grad<T, true, false>(wij, a, b, C, ga, gb)
                 : cell_grad<T, true, true>(wij, a, b, C, ga, gb);
      else
        ydone(j) ? cell_grad<T, false, false>(wij, a, b, C, ga, gb)
                 : cell_grad<T, false, true>(wij, a, b, C, ga, gb);
      xdone = true;
      set_ydone(j);
    }
    if (!xdone) std::fill(gxp + i * C, gxp + (i + 1) * C, T(0));
  }
  for (int j = 0; j < n; ++j)
    if (!ydone(j)) std::fill(gyp + j * C, gyp + (j + 1) * C, T(0));
}

// The raw stripe distances r and the cell values d (as FusedCells gives them) of one
// pair, m*n each, row-major. Two loops over contiguous cells, each vectorized.
template <typename T>
void fill_raw_cells(const FusedCells<T>& c, int m, int n, T* __restrict r, T* __restrict d) {
  fill_cells(FusedCells<T>{c.xy, c.si, c.xx, c.yy, false}, m, n, r, int64_t(n));
  const bool normalize = c.normalize;
  for (int64_t k = 0; k < int64_t(m) * n; ++k) d[k] = cell_of_raw(r[k], normalize);
}
}  // namespace

void CpuKernels::aligned_forward(Mode mode, bool normalize, const DPRule& rule, const at::Tensor& x,
                                 const at::Tensor& y, const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "partdist_aligned_forward_cpu", [&] {
    using T = scalar_t;
    using V = Lanes<T, kLanes>;
    const AlignedPairs<T> A(x, y, normalize);
    T* pout = out.mutable_data_ptr<T>();
    for_aligned_blocks<T>(
        A, false, true, [](int64_t) { return true; },
        [&](AlignedScratch<T>& s, int64_t p0, const bool* live) {
          if (mode == Mode::kCells) {
            for (int l = 0; l < kLanes && live[l]; ++l)
              fill_cells(s.fused(A, l), A.m, A.n, pout + (p0 + l) * A.mn, int64_t(A.n));
            return;
          }
          const V r =
              dmli_forward<V>(s.lane_cells(A, live), A.m, A.n, RowStore<V>{s.dp.data()}, rule);
          for (int l = 0; l < kLanes && live[l]; ++l) pout[p0 + l] = r.v[l];
        });
  });
}

// Backward of aligned pairs. DP modes (kFused, not diag): the kLanes DPs of a block run
// in SIMD lanes (lane_cell_grads), giving dL/dd of every cell of every pair; the chain
// rule then runs on the cells with a nonzero gradient only (the optimal path, or the
// tied paths). The unaligned distance and kCells: per pair. Either way gx / gy of a
// pair receive their cell gradients in row-major order of the cells.
void CpuKernels::aligned_backward(Mode mode, bool normalize, const DPRule& rule,
                                  const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                                  const at::Tensor& gx, const at::Tensor& gy) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "partdist_aligned_backward_cpu", [&] {
    using T = scalar_t;
    using V = Lanes<T, kLanes>;
    const AlignedPairs<T> A(x, y, normalize);
    const int m = A.m, n = A.n;
    const T* pg = grad.const_data_ptr<T>();
    T* pgx = gx.mutable_data_ptr<T>();
    T* pgy = gy.mutable_data_ptr<T>();
    const bool lanes = mode == Mode::kFused && !rule.diag;
    // pairs with no incoming gradient (e.g. an inactive hinge) need no dot products
    auto need = [&](int64_t p) { return mode == Mode::kCells || pg[p] != T(0); };
    for_aligned_blocks<T>(
        A, lanes, true, need, [&](AlignedScratch<T>& s, int64_t p0, const bool* live) {
          V* gcell =
              lanes ? lane_cell_grads(s, A, s.lane_cells(A, live), pg, p0, live, rule) : nullptr;
          for (int l = 0; l < kLanes && p0 + l < A.N; ++l) {
            const int64_t p = p0 + l;
            if (!live[l]) {
              pair_grads<T>(A, p, nullptr, pgx, pgy, nullptr);
              continue;
            }
            const FusedCells<T> c = s.fused(A, l);
            T* w = s.w.data();
            if (lanes) {  // this lane's cell gradients, then the weights of all cells at once
              for (int64_t k = 0; k < A.mn; ++k) w[k] = gcell[k].v[l];
              fill_weights(c, m, n, w, int64_t(n), w, int64_t(n));
            } else if (mode == Mode::kCells) {
              fill_weights(c, m, n, pg + p * A.mn, int64_t(n), w, int64_t(n));
            } else {
              T* cells = s.cells.data() + l * A.mn;
              fill_cells(c, m, n, cells, int64_t(n));
              TableStore<T> st{s.table.data(), 1, n};
              dmli_backward<T>(RawCells<T>{cells, int64_t(n)}, m, n, pg[p], st, s.grow.data(),
                               EmitGrad<T>{w, int64_t(n)}, rule);
              fill_weights(c, m, n, w, int64_t(n), w, int64_t(n));
            }
            pair_grads<T>(A, p, w, pgx, pgy, s.idx.data());
          }
        });
  });
}

namespace {
// The band's allowed cells (m*n flags, row-major), empty without a band.
std::vector<unsigned char> band_flags(const DPRule& rule, int m, int n) {
  std::vector<unsigned char> f;
  if (rule.band < 0.0) return f;
  f.resize(size_t(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) f[size_t(i) * n + j] = rule.allowed(i, j, m, n) ? 1 : 0;
  return f;
}

// dmli_simd.h's lanes_dp on `lanes` consecutive pairs of A (float32 only; the callers'
// lambdas are no templates, so their `if constexpr` keeps both branches).
template <typename T>
void lanes_dp(const AlignedPairs<T>& A, const T* d, int lanes, const unsigned char* allowed,
              const T* gout, T* out, float* gcell, float* scratch) {
  if constexpr (std::is_same_v<T, float>)
    A.K.lanes_dp(d, A.mn, lanes, A.m, A.n, allowed, gout, out, gcell, scratch);
}
}  // namespace

// Training pair of ops (kFused, not diag): the forward as aligned_forward, its DP
// reading the cell values it writes into cells (pair p: raw distances at
// cells[0][p], cell values at cells[1][p]: the lanes of a block read consecutive
// matrices); the backward as aligned_backward's lanes,
// with the cells and the cell weights (cell_weight_raw) from cells instead of the dot
// products, which it never computes (grad made contiguous first: the lanes read
// consecutive entries).
void CpuKernels::aligned_forward_cells(bool normalize, const DPRule& rule, const at::Tensor& x,
                                       const at::Tensor& y, const at::Tensor& out,
                                       const at::Tensor& cells) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "partdist_aligned_forward_cells_cpu", [&] {
    using T = scalar_t;
    using V = Lanes<T, kLanes>;
    const AlignedPairs<T> A(x, y, normalize);
    T* pout = out.mutable_data_ptr<T>();
    T* pc = cells.mutable_data_ptr<T>();
    const std::vector<unsigned char> band = band_flags(rule, A.m, A.n);
    const unsigned char* allowed = band.empty() ? nullptr : band.data();
    const bool hard = !(rule.gamma > 0.0) && !rule.diag;
    for_aligned_blocks<T>(
        A, false, true, [](int64_t) { return true; },
        [&](AlignedScratch<T>& s, int64_t p0, const bool* live) {
          LaneCells<T, kLanes> c;  // lanes past the last pair: s.cells (ignored)
          c.si = A.n;
          for (int l = 0; l < kLanes; ++l) {
            T* r = pc + (p0 + l) * A.mn;
            if (live[l]) fill_raw_cells(s.fused(A, l), A.m, A.n, r, r + A.N * A.mn);
            c.base[l] = live[l] ? r + A.N * A.mn : s.cells.data() + l * A.mn;
          }
          if constexpr (std::is_same_v<T, float>) {
            if (hard) {  // the DP in the level's SIMD lanes (dmli_simd.h)
              const int cnt = int(std::min<int64_t>(kLanes, A.N - p0));
              const int w = A.K.width;
              for (int l0 = 0; l0 < cnt; l0 += w)
                lanes_dp<T>(A, pc + (A.N + p0 + l0) * A.mn, std::min(w, cnt - l0), allowed, nullptr,
                            pout + p0 + l0, nullptr, s.ldp.data());
              return;
            }
          }
          const V v = dmli_forward<V>(c, A.m, A.n, RowStore<V>{s.dp.data()}, rule);
          for (int l = 0; l < kLanes && live[l]; ++l) pout[p0 + l] = v.v[l];
        });
  });
}

void CpuKernels::aligned_backward_cells(bool normalize, const DPRule& rule, const at::Tensor& grad,
                                        const at::Tensor& x, const at::Tensor& y,
                                        const at::Tensor& cells, const at::Tensor& gx,
                                        const at::Tensor& gy) {
  const at::Tensor gc = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "partdist_aligned_backward_cells_cpu", [&] {
    using T = scalar_t;
    using V = Lanes<T, kLanes>;
    const AlignedPairs<T> A(x, y, normalize);
    const T* pg = gc.const_data_ptr<T>();
    const T* pc = cells.const_data_ptr<T>();
    T* pgx = gx.mutable_data_ptr<T>();
    T* pgy = gy.mutable_data_ptr<T>();
    const std::vector<unsigned char> band = band_flags(rule, A.m, A.n);
    const unsigned char* allowed = band.empty() ? nullptr : band.data();
    const bool hard = !(rule.gamma > 0.0) && !rule.diag;
    auto need = [&](int64_t p) { return pg[p] != T(0); };
    for_aligned_blocks<T>(
        A, true, false, need, [&](AlignedScratch<T>& s, int64_t p0, const bool* live) {
          LaneCells<T, kLanes> c;  // lanes without gradient: s.cells (ignored)
          c.si = A.n;
          for (int l = 0; l < kLanes; ++l)
            c.base[l] = live[l] ? pc + (A.N + p0 + l) * A.mn : s.cells.data() + l * A.mn;
          // pair p0 + l from its cell gradients gcell(k), k < m*n
          auto lane_grads = [&](int l, const auto& gcell) {
            const int64_t p = p0 + l;
            if (!live[l]) {
              pair_grads<T>(A, p, nullptr, pgx, pgy, nullptr);
              return;
            }
            const T* r = pc + p * A.mn;
            const T* d = r + A.N * A.mn;
            T* w = s.w.data();
            for (int64_t k = 0; k < A.mn; ++k)
              w[k] = cell_weight_raw(T(gcell(k)), r[k], d[k], normalize);
            pair_grads<T>(A, p, w, pgx, pgy, s.idx.data());
          };
          const int cnt = int(std::min<int64_t>(kLanes, A.N - p0));
          if constexpr (std::is_same_v<T, float>) {
            if (hard) {  // the DPs in the level's SIMD lanes (dmli_simd.h), width at a time
              const int w = A.K.width;
              float* gc = s.ldp.data() + A.K.lanes_dp_scratch(A.m, A.n);  // [mn][w]
              for (int l0 = 0; l0 < cnt; l0 += w) {
                const int lanes = std::min(w, cnt - l0);
                lanes_dp<T>(A, pc + (A.N + p0 + l0) * A.mn, lanes, allowed, pg + p0 + l0, nullptr,
                            gc, s.ldp.data());
                for (int l = l0; l < l0 + lanes; ++l)
                  lane_grads(l, [&](int64_t k) { return gc[k * w + (l - l0)]; });
              }
              return;
            }
          }
          const V* gcell = lane_cell_grads(s, A, c, pg, p0, live, rule);
          for (int l = 0; l < cnt; ++l) lane_grads(l, [&](int64_t k) { return gcell[k].v[l]; });
        });
  });
}

}  // namespace dmli
}  // namespace partdist

TORCH_LIBRARY_IMPL(partdist, CPU, m) {
  partdist::dmli::register_impls<partdist::dmli::CpuKernels>(m);
}
