// Per-element math of the normalized local distance and of DMLI, written once.
//
// Everything here is an inline host+device function: the CPU backend
// (dmli_cpu.cpp, at::parallel_for over pairs) and the CUDA kernels (the bodies
// ForwardKernel / BackwardKernel at the end, one thread per pair, and the warp
// kernels WarpForwardCellsKernel / WarpBackwardCellsKernel, one warp per aligned
// pair, launched by dmli_launch.h on the GPU or in its CPU emulation) both call
// these and nothing else does any of this math.
//
// Conventions
//   * A "pair" is one (query, gallery) couple of images with m and n stripes.
//   * A "cell" (i, j) of a pair is stripe i of the first image against stripe j
//     of the second one.
//   * Stripe distances come from squared norms and a dot product produced by a
//     GEMM on the host:  raw = sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)); the warp
//     kernels compute them directly: raw = sqrt(sum_c (a_c - b_c)^2) (identical
//     stripes give exactly 0).
//   * Normalization: d = (e^raw - 1) / (e^raw + 1) = tanh(raw / 2), evaluated as
//     tanh so that a large raw gives 1 instead of inf/inf = NaN.
//   * DMLI: S(0,0) = d(0,0), first row / column cumulative,
//     S(i,j) = min(S(i-1,j), S(i,j-1)) + d(i,j), result S(m-1,n-1).
//   * Backward of the min follows torch.minimum: at a tie the gradient is split
//     in half between both predecessors (the gradient autograd gives through
//     the seed's Python loop).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../common/hd.h"
#include "../common/launch.h"
#include "../common/math.h"
#include "dmli_tanh.h"

namespace partdist {
namespace dmli {

// Largest number of stripes (m or n) the DP kernels accept. The CUDA kernels keep
// one DP row and one gradient row per thread in fixed-size local arrays (the
// kCells mode has no DP and no limit).
constexpr int kMaxStripes = 128;

// ---------------------------------------------------------------- primitives
// float tanh: dmli_tanh.h's clamped rational function.
PD_HD float pd_tanh(float x) { return tanh_rational<ScalarTanhOps>(x); }
PD_HD double pd_tanh(double x) { return tanh(x); }

// torch.minimum semantics: NaN propagates.
// Branch-free so that loops over lanes vectorize.
template <typename T>
PD_HD T pd_min(T a, T b) {
  return (b < a || b != b) ? b : a;
}

// ------------------------------------------------------------ cell functions
// Euclidean distance of two stripes from |a|^2, |b|^2 and a.b (common/math.h).
template <typename T>
PD_HD T stripe_dist(T aa, T bb, T ab) {
  return gemm_dist(aa, bb, ab);
}

// (e^r - 1) / (e^r + 1)
template <typename T>
PD_HD T normalize_dist(T r) {
  return pd_tanh(T(0.5) * r);
}

// Value of a cell from its raw stripe distance r.
template <typename T>
PD_HD T cell_of_raw(T r, bool normalize) {
  return normalize ? normalize_dist(r) : r;
}

// Value of a cell: raw stripe distance, normalized or not.
template <typename T>
PD_HD T cell_value(T aa, T bb, T ab, bool normalize) {
  return cell_of_raw(stripe_dist(aa, bb, ab), normalize);
}

// Backward through one cell. g is dL/d(cell value). Returns w such that
//   dL/da += w * (a - b),   dL/db -= w * (a - b)
// for the two stripes a, b of the cell. At raw = 0 (identical stripes) the
// subgradient 0 is used (as torch.linalg.vector_norm does), so the gradient
// stays finite.
// cell_weight_raw: the same from the cell's raw distance r and its value
// d = cell_of_raw(r, normalize) (saved by the forward).
template <typename T>
PD_HD T cell_weight_raw(T g, T r, T d, bool normalize) {
  if (g == T(0)) return T(0);
  if (normalize) g = g * T(0.5) * (T(1) - d * d);
  return r > T(0) ? g / r : T(0);
}

template <typename T>
PD_HD T cell_weight(T g, T aa, T bb, T ab, bool normalize) {
  if (g == T(0)) return T(0);
  T r = stripe_dist(aa, bb, ab);
  return cell_weight_raw(g, r, cell_of_raw(r, normalize), normalize);
}

// Chain rule of one cell with weight w (see cell_weight) to its two stripes a, b of
// C channels: dL/da += w (a - b), dL/db -= w (a - b). (accumulate_grads in
// common/gemm_grads.h is the same sum over many cells as matrix products.)
// channel_grad: the term of one channel, w (a_c - b_c).
template <typename T>
PD_HD T channel_grad(T w, T a, T b) {
  return w * (a - b);
}

template <typename T>
PD_HD void add_cell_grad(T w, const T* a, const T* b, int64_t C, T* ga, T* gb) {
#if !defined(__CUDACC__)
#pragma omp simd
#endif
  for (int64_t c = 0; c < C; ++c) {
    T d = channel_grad(w, a[c], b[c]);
    ga[c] += d;
    gb[c] -= d;
  }
}

// Stripe dot products and squared norms of one aligned pair (x: m stripes, y: n
// stripes, C channels each, contiguous): xy[i * n + j] = x_i . y_j, xx[i] = |x_i|^2,
// yy[j] = |y_j|^2. The per-pair GEMM of the CPU's aligned ops, done per pair because
// batched tiny GEMMs cost more in overhead than in arithmetic (the CUDA path uses one
// batched GEMM instead). dot4: one row of x against four rows of y, independent
// accumulators keep the FMA units busy.
template <typename T>
PD_HD T dot(const T* a, const T* b, int64_t C) {
  T s = T(0);
#if !defined(__CUDACC__)
#pragma omp simd reduction(+ : s)
#endif
  for (int64_t c = 0; c < C; ++c) s += a[c] * b[c];
  return s;
}

template <typename T>
PD_HD void dot4(const T* a, const T* b0, const T* b1, const T* b2, const T* b3, int64_t C, T* out) {
  T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
#if !defined(__CUDACC__)
#pragma omp simd reduction(+ : s0, s1, s2, s3)
#endif
  for (int64_t c = 0; c < C; ++c) {
    s0 += a[c] * b0[c];
    s1 += a[c] * b1[c];
    s2 += a[c] * b2[c];
    s3 += a[c] * b3[c];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

// dot8: eight rows of y (eight independent accumulators: enough to keep two FMA units
// of 4-cycle latency busy); each sum is reduced as in dot / dot4, so the results are
// the same whichever of them computes a product.
template <typename T>
PD_HD void dot8(const T* a, const T* b, int64_t C, T* out) {
  T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0), s4 = T(0), s5 = T(0), s6 = T(0), s7 = T(0);
  const T *b0 = b, *b1 = b + C, *b2 = b + 2 * C, *b3 = b + 3 * C, *b4 = b + 4 * C, *b5 = b + 5 * C,
          *b6 = b + 6 * C, *b7 = b + 7 * C;
#if !defined(__CUDACC__)
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7)
#endif
  for (int64_t c = 0; c < C; ++c) {
    s0 += a[c] * b0[c];
    s1 += a[c] * b1[c];
    s2 += a[c] * b2[c];
    s3 += a[c] * b3[c];
    s4 += a[c] * b4[c];
    s5 += a[c] * b5[c];
    s6 += a[c] * b6[c];
    s7 += a[c] * b7[c];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
  out[4] = s4;
  out[5] = s5;
  out[6] = s6;
  out[7] = s7;
}

template <typename T>
PD_HD void pair_dots(const T* x, const T* y, int m, int n, int64_t C, T* xy, T* xx, T* yy) {
  for (int i = 0; i < m; ++i) xx[i] = dot(x + i * C, x + i * C, C);
  for (int j = 0; j < n; ++j) yy[j] = dot(y + j * C, y + j * C, C);
  for (int i = 0; i < m; ++i) {
    const T* xi = x + i * C;
    int j = 0;
    for (; j + 8 <= n; j += 8) dot8(xi, y + j * C, C, xy + i * n + j);
    for (; j + 4 <= n; j += 4)
      dot4(xi, y + j * C, y + (j + 1) * C, y + (j + 2) * C, y + (j + 3) * C, C, xy + i * n + j);
    for (; j < n; ++j) xy[i * n + j] = dot(xi, y + j * C, C);
  }
}

// -------------------------------------------------------- cell accessors
// A cell accessor returns d(i, j) for the pair it was built for.

// d(i, j) read from a distance matrix (the dmli op).
template <typename T>
struct RawCells {
  const T* d;
  int64_t si;  // stride of i (j is contiguous)
  PD_HD T operator()(int i, int j) const { return d[i * si + j]; }
};

// d(i, j) computed from a GEMM tile and the squared norms (fused ops).
template <typename T>
struct FusedCells {
  const T* xy;  // dot products, cell (i, j) at xy[i * si + j]
  int64_t si;
  const T* xx;  // |x_i|^2, m entries
  const T* yy;  // |y_j|^2, n entries
  bool normalize;
  PD_HD T operator()(int i, int j) const {
    return cell_value(xx[i], yy[j], xy[i * si + j], normalize);
  }
};

// d(i, j) of L pairs at once (one lane per pair), each pair's matrix at base[l]
// with row stride si. Used by the CPU launcher to run L independent DPs in SIMD
// lanes: the DP is latency-bound per pair, so lanes multiply its throughput.
// With GCC / Clang on the host the lanes are a native vector (vector_size
// extension): + and min compile to single SIMD instructions and a Lanes value
// lives in a register (about 3.5x faster DP than a plain array, measured on the
// all-pairs kernel). Elsewhere (nvcc, other compilers) a plain array and loops.
// (Clang has the vector ?: since version 11.) dmli_cuda.cu never instantiates Lanes,
// so the two layouts never meet in one program.
#if defined(__GNUC__) && !defined(__CUDACC__) && !defined(__HIPCC__) && \
    (!defined(__clang__) || __clang_major__ >= 11)
#define PARTDIST_NATIVE_LANES 1
#else
#define PARTDIST_NATIVE_LANES 0
#endif

template <typename T, int L>
struct Lanes {
#if PARTDIST_NATIVE_LANES
  typedef T vec __attribute__((vector_size(sizeof(T) * L)));
  vec v;  // v[l] is lane l
  PD_HD Lanes operator+(const Lanes& o) const {
    Lanes r;
    r.v = v + o.v;
    return r;
  }
#else
  T v[L];
  PD_HD Lanes operator+(const Lanes& o) const {
    Lanes r;
    for (int l = 0; l < L; ++l) r.v[l] = v[l] + o.v[l];
    return r;
  }
#endif
};

// pd_min lane by lane (torch.minimum: NaN propagates).
template <typename T, int L>
PD_HD Lanes<T, L> pd_min(const Lanes<T, L>& a, const Lanes<T, L>& b) {
  Lanes<T, L> r;
#if PARTDIST_NATIVE_LANES
  r.v = ((b.v < a.v) | (b.v != b.v)) ? b.v : a.v;
#else
  for (int l = 0; l < L; ++l) r.v[l] = pd_min(a.v[l], b.v[l]);
#endif
  return r;
}

// d(i, j) of L pairs that share the first image (one lane per second image),
// computed from a lane-contiguous GEMM tile: the dot products of cell (i, j) of the
// L pairs are xy[j * sj + i * si + l], the squared norms of the second images'
// stripe j are yy[j * syj + l]. Every lane is one contiguous load, so the cells
// are computed in SIMD registers right where the DP needs them (CPU all pairs).
template <typename T, int L>
struct LaneFusedCells {
  const T* xy;
  int64_t si, sj;
  const T* xx;  // |x_i|^2 of the shared first image, m entries
  const T* yy;
  int64_t syj;
  bool normalize;
  PD_HD Lanes<T, L> operator()(int i, int j) const {
    Lanes<T, L> r;
    const T* p = xy + j * sj + i * si;
    const T* q = yy + j * syj;
    const T a = xx[i];
    if (normalize) {
      for (int l = 0; l < L; ++l) r.v[l] = cell_value(a, q[l], p[l], true);
    } else {
      for (int l = 0; l < L; ++l) r.v[l] = cell_value(a, q[l], p[l], false);
    }
    return r;
  }
};

template <typename T, int L>
struct LaneCells {
  const T* base[L];
  int64_t si;
  PD_HD Lanes<T, L> operator()(int i, int j) const {
    Lanes<T, L> r;
    const int64_t k = i * si + j;
    for (int l = 0; l < L; ++l) r.v[l] = base[l][k];
    return r;
  }
};

// dst(i, j) = cell(i, j) for the m x n cells of one pair (row stride dsi). The
// inner loop runs over contiguous j and vectorizes for FusedCells.
template <typename T, typename Cells>
PD_HD void fill_cells(const Cells& cell, int m, int n, T* dst, int64_t dsi) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) dst[i * dsi + j] = cell(i, j);
}

// w(i, j) = cell_weight(g(i, j), ...) for one pair; g may alias w.
// w(i, j) = 0 for the m x n cells of one pair (row stride si).
template <typename T>
PD_HD void zero_cells(int m, int n, T* w, int64_t si) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) w[i * si + j] = T(0);
}

template <typename T>
PD_HD void fill_weights(const FusedCells<T>& c, int m, int n, const T* g, int64_t gsi, T* w,
                        int64_t wsi) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      w[i * wsi + j] =
          cell_weight(g[i * gsi + j], c.xx[i], c.yy[j], c.xy[i * c.si + j], c.normalize);
}

// ------------------------------------------------------------ DP storage
// The recurrence is written once (dmli_forward below) against a store that
// either keeps one row (forward: O(n) memory) or the whole table (backward).
template <typename T>
struct RowStore {
  T* row;  // n entries
  PD_HD T get(int, int j) const { return row[j]; }
  PD_HD void set(int, int j, T v) const { row[j] = v; }
};

template <typename T>
struct TableStore {
  T* s;  // m * n entries, entry k at s[k * stride]
  int64_t stride;
  int n;
  PD_HD T get(int i, int j) const { return s[(int64_t(i) * n + j) * stride]; }
  PD_HD void set(int i, int j, T v) const { s[(int64_t(i) * n + j) * stride] = v; }
};

// ------------------------------------------------------------ DP variants
// What the recurrence computes (the options of dmli / batch_local_dist / local_dist):
//   gamma == 0 : S(i,j) = min(S(i-1,j), S(i,j-1)) + d(i,j)          (DMLI)
//   gamma  > 0 : S(i,j) = softmin_gamma(S(i-1,j), S(i,j-1)) + d(i,j),
//                softmin_gamma(a, b) = -gamma log(e^{-a/gamma} + e^{-b/gamma})
//                (soft-DMLI, as soft-DTW with the two moves of DMLI)
//   band >= 0  : only cells with |i (n-1)/(m-1) - j| <= band are allowed (S = +inf
//                elsewhere; with m == 1 every cell is allowed)
//   diag       : no DP, the unaligned distance sum_i d(i, i) (m == n)
struct DPRule {
  double gamma = 0.0;
  double band = -1.0;
  bool diag = false;

  // The allowed cells of row i are the j in [lo, hi] (empty when lo > hi): the integers
  // within band (+ 1e-9 for the rounding of the centre) of i (n-1)/(m-1). Computed once
  // per row, in double; the DP loops compare integers per cell.
  PD_HD void row_range(int i, int m, int n, int& lo, int& hi) const {
    lo = 0;
    hi = n - 1;
    if (band < 0.0 || m == 1) return;
    const double c = double(i) * double(n - 1) / double(m - 1), b = band + 1e-9;
    const double l = ceil(c - b), h = floor(c + b);
    lo = l > 0.0 ? int(l) : 0;
    hi = h < double(n - 1) ? int(h) : n - 1;
  }
  PD_HD bool allowed(int i, int j, int m, int n) const {
    int lo, hi;
    row_range(i, m, n, lo, hi);
    return lo <= j && j <= hi;
  }
};

PD_HD float pd_exp(float x) { return expf(x); }
PD_HD double pd_exp(double x) { return exp(x); }
PD_HD float pd_log1p(float x) { return log1pf(x); }
PD_HD double pd_log1p(double x) { return log1p(x); }

// softmin_gamma(a, b), stable: min - gamma * log1p(exp(-(max - min) / gamma)).
// +inf arguments are ignored (the softmin of {x, +inf} is x); NaN propagates.
template <typename T>
PD_HD T softmin(T a, T b, T gamma) {
  T lo = pd_min(a, b);
  if (lo != lo || !(lo < pd_inf<T>())) return lo;
  T hi = (a < b) ? b : a;
  return lo - gamma * pd_log1p(pd_exp(-(hi - lo) / gamma));
}

template <typename T, int L>
PD_HD Lanes<T, L> softmin(const Lanes<T, L>& a, const Lanes<T, L>& b, T gamma) {
  Lanes<T, L> r;
  for (int l = 0; l < L; ++l) r.v[l] = softmin(a.v[l], b.v[l], gamma);
  return r;
}

template <typename T>
PD_HD T broadcast(double v, T*) {
  return T(v);
}
template <typename T, int L>
PD_HD Lanes<T, L> broadcast(double v, Lanes<T, L>*) {
  Lanes<T, L> r;
  for (int l = 0; l < L; ++l) r.v[l] = T(v);
  return r;
}

template <typename V>
struct ScalarOf {
  using type = V;
};
template <typename T, int L>
struct ScalarOf<Lanes<T, L>> {
  using type = T;
};

// Forward of one pair (V: a scalar, or Lanes of several pairs): returns the
// distance, filling `st` with S where the rule has a DP. kN > 0: n <= kN, known at
// compile time, so that the column loop unrolls and a RowStore row of kN entries
// stays in registers (the CUDA kernels for small n); kN == 0: any n.
template <typename V, int kN = 0, typename Cells, typename Store>
PD_HD V dmli_forward(const Cells& cell, int m, int n, const Store& st,
                     const DPRule& rule = DPRule()) {
  using T = typename ScalarOf<V>::type;
  if (rule.diag) {
    V s = cell(0, 0);
    for (int i = 1; i < m; ++i) s = s + cell(i, i);
    return s;
  }
  const V inf = broadcast(double(pd_inf<T>()), (V*)nullptr);
  const T gamma = T(rule.gamma);
  for (int i = 0; i < m; ++i) {
    int lo, hi;
    rule.row_range(i, m, n, lo, hi);
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int j = 0; j < (kN > 0 ? kN : n); ++j) {
      if (kN > 0 && j >= n) break;
      if (j < lo || j > hi) {
        st.set(i, j, inf);
        continue;
      }
      V d = cell(i, j);
      V s;
      if (i == 0) {
        s = (j == 0) ? d : st.get(0, j - 1) + d;
      } else if (j == 0) {
        s = st.get(i - 1, 0) + d;
      } else if (gamma > T(0)) {
        s = softmin(st.get(i - 1, j), st.get(i, j - 1), gamma) + d;
      } else {
        s = pd_min(st.get(i - 1, j), st.get(i, j - 1)) + d;
      }
      st.set(i, j, s);
    }
  }
  return st.get(m - 1, n - 1);
}

// Split of the gradient g of min(up, left) (or of softmin_gamma(up, left)) between
// its two arguments. Hard min: the gradient follows the smaller one; at a tie it is
// split in half, as torch.minimum's backward (where up or left is NaN, both get g).
// Soft min: split by the softmin probabilities e^{(softmin - S_pred)/gamma} (the
// soft-DTW expected-alignment recursion). g == 0 sends nothing.
template <typename T>
PD_HD void min_grad_split(T g, T up, T left, T gamma, T& g_up, T& g_left) {
  if (g == T(0)) {
    g_up = T(0);
    g_left = T(0);
  } else if (gamma > T(0)) {
    T s = softmin(up, left, gamma);
    g_up = g * pd_exp((s - up) / gamma);
    g_left = g * pd_exp((s - left) / gamma);
  } else {
    T half = g * T(0.5);
    g_up = (up == left) ? half : g;
    g_left = g_up;
    if (up > left) g_up = T(0);
    if (up < left) g_left = T(0);
  }
}

// The same, lane by lane (the CPU's backward of kLanes pairs at once). The hard
// minimum in vector selects, giving what the scalar version gives in each lane.
template <typename T, int L>
PD_HD void min_grad_split(const Lanes<T, L>& g, const Lanes<T, L>& up, const Lanes<T, L>& left,
                          T gamma, Lanes<T, L>& g_up, Lanes<T, L>& g_left) {
#if PARTDIST_NATIVE_LANES
  if (!(gamma > T(0))) {
    const Lanes<T, L> zero = broadcast(0.0, (Lanes<T, L>*)nullptr);
    typename Lanes<T, L>::vec h = g.v * T(0.5);
    typename Lanes<T, L>::vec u = (up.v == left.v) ? h : g.v;
    typename Lanes<T, L>::vec lf = u;
    u = (up.v > left.v) ? zero.v : u;
    lf = (up.v < left.v) ? zero.v : lf;
    const auto gz = g.v == zero.v;
    g_up.v = gz ? zero.v : u;
    g_left.v = gz ? zero.v : lf;
    return;
  }
#endif
  for (int l = 0; l < L; ++l) {
    T a, b;
    min_grad_split(g.v[l], up.v[l], left.v[l], gamma, a, b);
    g_up.v[l] = a;
    g_left.v[l] = b;
  }
}

// min_grad_split at cell (i, j) of an S table. A scalar g == 0 (a cell off the path)
// reads no table entry.
template <typename T, typename Table>
PD_HD void split_at(T g, const Table& table, int i, int j, T gamma, T& g_up, T& g_left) {
  if (g == T(0)) {
    g_up = T(0);
    g_left = T(0);
    return;
  }
  min_grad_split(g, table.get(i - 1, j), table.get(i, j - 1), gamma, g_up, g_left);
}
template <typename T, int L, typename Table>
PD_HD void split_at(const Lanes<T, L>& g, const Table& table, int i, int j, T gamma,
                    Lanes<T, L>& g_up, Lanes<T, L>& g_left) {
  min_grad_split(g, table.get(i - 1, j), table.get(i, j - 1), gamma, g_up, g_left);
}

// Reverse recursion of the DP (V: a scalar, or Lanes of several pairs), from the S
// table that dmli_forward filled (any store with get).
//   gout : dL/d(distance)
//   grow : n scratch entries (gradient flowing into the row above)
//   emit(i, j, g) receives dL/dd(i, j) for every cell, in reverse order, once.
template <typename V, typename Table, typename Emit>
PD_HD void dmli_reverse(int m, int n, V gout, const Table& table, V* grow, const Emit& emit,
                        typename ScalarOf<V>::type gamma) {
  const V zero = broadcast(0.0, (V*)nullptr);
  for (int j = 0; j < n; ++j) grow[j] = zero;
  for (int i = m - 1; i >= 0; --i) {
    V carry = zero;  // gradient flowing into (i, j) from (i, j + 1)
    for (int j = n - 1; j >= 0; --j) {
      V g = grow[j] + carry;
      if (i == m - 1 && j == n - 1) g = g + gout;
      emit(i, j, g);
      if (i == 0) {
        carry = g;  // first row: S(0,j) = S(0,j-1) + d
        grow[j] = zero;
      } else if (j == 0) {
        grow[j] = g;  // first column: S(i,0) = S(i-1,0) + d
        carry = zero;
      } else {
        split_at(g, table, i, j, gamma, grow[j], carry);
      }
    }
  }
}

// Backward of dmli_forward for one pair.
//   table: the full S table (m*n), filled here by dmli_forward
//   gout, grow, emit: as in dmli_reverse.
// The cell gradients are the expected alignment times gout (soft min), or gout along
// the chosen path with ties split in half (hard min, see min_grad_split).
template <typename T, typename Cells, typename Emit>
PD_HD void dmli_backward(const Cells& cell, int m, int n, T gout, const TableStore<T>& table,
                         T* grow, const Emit& emit, const DPRule& rule = DPRule()) {
  if (rule.diag) {
    for (int i = m - 1; i >= 0; --i)
      for (int j = n - 1; j >= 0; --j) emit(i, j, i == j ? gout : T(0));
    return;
  }
  dmli_forward<T>(cell, m, n, table, rule);
  dmli_reverse<T>(m, n, gout, table, grow, emit, T(rule.gamma));
}

// ------------------------------------------------------------ pair layout
// Where the data of pair p lives. Pair p is the couple (a, b):
//   aligned: a = b = p;   otherwise a = p / nb, b = p % nb.
//   cell (i, j) of the pair: xy[a * xy_sa + b * xy_sb + i * xy_si + j]
//   squared norms: xx[a * xx_sa + i], yy[b * yy_sb + j]
//   per-pair scalar (output / incoming gradient): out[a * out_sa + b * out_sb]
struct PairLayout {
  int64_t num_pairs = 0;
  int64_t nb = 1;
  bool aligned = true;
  int64_t xy_sa = 0, xy_sb = 0, xy_si = 0;
  int64_t xx_sa = 0, yy_sb = 0;
  int64_t out_sa = 0, out_sb = 0;
  int m = 0, n = 0;
  DPRule rule;

  PD_HD void pair(int64_t p, int64_t& a, int64_t& b) const {
    if (aligned) {
      a = p;
      b = p;
    } else {
      a = p / nb;
      b = p - a * nb;
    }
  }
  PD_HD int64_t xy_off(int64_t a, int64_t b) const { return a * xy_sa + b * xy_sb; }
  PD_HD int64_t out_off(int64_t a, int64_t b) const { return a * out_sa + b * out_sb; }
};

enum class Mode : int {
  kDmli = 0,   // DP over a given distance matrix (xy holds d)
  kFused = 1,  // DP over cells computed from GEMM tile + norms
  kCells = 2,  // no DP: elementwise normalized distance matrix
};

// --------------------------------------------------------- per-pair kernels
// Forward of pair p. `row` is n scratch entries.
template <typename T, int kN = 0>
PD_HD void pair_forward(const PairLayout& L, int64_t p, Mode mode, bool normalize, const T* xy,
                        const T* xx, const T* yy, T* out, T* row) {
  int64_t a, b;
  L.pair(p, a, b);
  const T* t = xy + L.xy_off(a, b);
  if (mode == Mode::kCells) {  // out has the layout of xy
    FusedCells<T> c{t, L.xy_si, xx + a * L.xx_sa, yy + b * L.yy_sb, normalize};
    fill_cells(c, L.m, L.n, out + L.xy_off(a, b), L.xy_si);
    return;
  }
  RowStore<T> st{row};
  T r;
  if (mode == Mode::kDmli) {
    r = dmli_forward<T, kN>(RawCells<T>{t, L.xy_si}, L.m, L.n, st, L.rule);
  } else {
    r = dmli_forward<T, kN>(
        FusedCells<T>{t, L.xy_si, xx + a * L.xx_sa, yy + b * L.yy_sb, normalize}, L.m, L.n, st,
        L.rule);
  }
  out[L.out_off(a, b)] = r;
}

// Writes dL/d(cell value) into w (layout of xy) for the dmli mode, and the
// weight of cell_weight for the fused / cells modes.
template <typename T>
struct EmitGrad {
  T* w;
  int64_t si;
  PD_HD void operator()(int i, int j, T g) const { w[i * si + j] = g; }
};

template <typename T>
struct EmitWeight {
  T* w;
  FusedCells<T> c;
  PD_HD void operator()(int i, int j, T g) const {
    w[i * c.si + j] = cell_weight(g, c.xx[i], c.yy[j], c.xy[i * c.si + j], c.normalize);
  }
};

// Backward of pair p. gout has the layout of the forward output (for kCells,
// the layout of xy). `table` has m*n entries (strided), `grow` n entries.
template <typename T>
PD_HD void pair_backward(const PairLayout& L, int64_t p, Mode mode, bool normalize, const T* gout,
                         const T* xy, const T* xx, const T* yy, T* w, T* table,
                         int64_t table_stride, T* grow) {
  int64_t a, b;
  L.pair(p, a, b);
  const int64_t off = L.xy_off(a, b);
  const T* t = xy + off;
  T* wp = w + off;
  if (mode == Mode::kCells) {
    FusedCells<T> c{t, L.xy_si, xx + a * L.xx_sa, yy + b * L.yy_sb, normalize};
    fill_weights(c, L.m, L.n, gout + off, L.xy_si, wp, L.xy_si);
    return;
  }
  const T g = gout[L.out_off(a, b)];
  if (g == T(0)) {  // no gradient (e.g. an inactive hinge): no DP to run
    zero_cells(L.m, L.n, wp, L.xy_si);
    return;
  }
  TableStore<T> st{table, table_stride, L.n};
  if (mode == Mode::kDmli) {
    RawCells<T> c{t, L.xy_si};
    dmli_backward<T>(c, L.m, L.n, g, st, grow, EmitGrad<T>{wp, L.xy_si}, L.rule);
  } else {
    FusedCells<T> c{t, L.xy_si, xx + a * L.xx_sa, yy + b * L.yy_sb, normalize};
    dmli_backward<T>(c, L.m, L.n, g, st, grow, EmitWeight<T>{wp, c}, L.rule);
  }
}

// ------------------------------------------------------------- CUDA kernels
// The bodies of the CUDA kernels, one thread per pair (t.index). The __global__
// shims (common/cuda_launch.cuh) compute t and call run; the CPU emulation
// (common/emulate.h) runs the same bodies over the same grid.
constexpr int kCudaThreads = 128;  // threads per block

// out: per-pair results (kDmli, kFused) or the cells (kCells, layout of xy).
// The DP row lives in a local array of kN entries, kN the smallest of 8, 16, 32 and
// kMaxStripes that holds n: for n <= 32 the row stays in registers.
struct ForwardKernel {
  template <typename T>
  PD_HD static void run(ThreadPos t, PairLayout L, Mode mode, bool normalize, const T* xy,
                        const T* xx, const T* yy, T* out) {
    if (t.index >= L.num_pairs) return;
    pair(t.index, L, mode, normalize, xy, xx, yy, out);
  }
  // Pair p of L (also the epilogue of FusedTileKernel).
  template <typename T>
  PD_HD static void pair(int64_t p, const PairLayout& L, Mode mode, bool normalize, const T* xy,
                         const T* xx, const T* yy, T* out) {
    if (L.n <= 8)
      run_n<8>(p, L, mode, normalize, xy, xx, yy, out);
    else if (L.n <= 16)
      run_n<16>(p, L, mode, normalize, xy, xx, yy, out);
    else if (L.n <= 32)
      run_n<32>(p, L, mode, normalize, xy, xx, yy, out);
    else
      run_n<0>(p, L, mode, normalize, xy, xx, yy, out);
  }
  template <int kN, typename T>
  PD_HD static void run_n(int64_t p, const PairLayout& L, Mode mode, bool normalize, const T* xy,
                          const T* xx, const T* yy, T* out) {
    T row[kN > 0 ? kN : kMaxStripes];
    pair_forward<T, kN>(L, p, mode, normalize, xy, xx, yy, out, row);
  }
};

// ------------------------------------------ all pairs with the DP in the GEMM's epilogue
// local_dist's forward in one kernel (the opt-in fused path of dmli_launch.h): one block
// of kFusedThreads threads per tile of tq x tg pairs, tq = kFusedRows / m first images
// and tg = kFusedRows / n second images, whose stripes make a kFusedRows x kFusedRows
// tile of dot products. The block computes that tile as a GEMM (channels in chunks of
// fused_kc through shared memory, transposed and padded to kFusedLd; a kFusedMicro x
// kFusedMicro block of accumulators per thread), puts it in shared memory, and each
// thread runs the normalize + DP of its pairs there (ForwardKernel::pair, Mode::kFused,
// the squared norms xx, yy from device memory): the cells never reach device memory.
// Blocks in row-major order over (first-image tile, second-image tile); tiles_n second-
// image tiles per row; out [M, N] with row stride ldo. m, n <= kFusedRows.
constexpr int kFusedRows = 64;
constexpr int kFusedMicro = 8;
constexpr int kFusedSide = kFusedRows / kFusedMicro;  // threads along a side of the tile
constexpr int kFusedThreads = kFusedSide * kFusedSide;
constexpr int kFusedLd = kFusedRows + 4;  // 16-byte rows, stores spread over the banks
template <typename T>
constexpr int fused_kc() {
  return sizeof(T) == 4 ? 16 : 8;
}
// Shared memory of a block: the two channel chunks and the tile of dot products.
template <typename T>
constexpr int64_t fused_smem_bytes() {
  return int64_t(sizeof(T)) * (2 * fused_kc<T>() + kFusedRows) * kFusedLd;
}

struct FusedTileKernel {
  template <typename T>
  struct Acc {
    T v[kFusedMicro][kFusedMicro];
  };

  // out[0 .. kFusedMicro) = p[0 .. kFusedMicro) from shared memory, p 16-byte aligned: 16-byte
  // loads on the device.
  template <typename T>
  PD_HD static void load_micro(const T* p, T* out) {
#ifdef __CUDA_ARCH__
    using V = typename std::conditional<sizeof(T) == 4, float4, double2>::type;
    constexpr int kPer = int(sizeof(V) / sizeof(T));
    PD_UNROLL
    for (int q = 0; q < kFusedMicro / kPer; ++q) {
      const V v = reinterpret_cast<const V*>(p)[q];
      const T* e = reinterpret_cast<const T*>(&v);
      PD_UNROLL
      for (int l = 0; l < kPer; ++l) out[q * kPer + l] = e[l];
    }
#else
    for (int i = 0; i < kFusedMicro; ++i) out[i] = p[i];
#endif
  }

  PD_NO_EXEC_CHECK
  template <typename Blk, typename T>
  PD_HD static void run(Blk& blk, int64_t M, int64_t N, int m, int n, int64_t C, int64_t tiles_n,
                        bool normalize, DPRule rule, const T* x, const T* y, const T* xx,
                        const T* yy, T* out, int64_t ldo) {
    constexpr int KC = fused_kc<T>(), R = kFusedRows, U = kFusedMicro, LD = kFusedLd;
    const int tq_full = R / m, tg_full = R / n;
    const int64_t a0 = (blk.block / tiles_n) * tq_full, b0 = (blk.block % tiles_n) * tg_full;
    const int tq = int(M - a0 < tq_full ? M - a0 : tq_full);
    const int tg = int(N - b0 < tg_full ? N - b0 : tg_full);
    const int rows = tq * m, cols = tg * n;  // stripes of the tile's images
    T* As = blk.template shared<T>();        // [KC][LD]: channel kk of stripe r at kk * LD + r
    T* Bs = As + KC * LD;
    T* Ts = Bs + KC * LD;  // [R][LD]: the dot products
    const T* xa = x + a0 * m * C;
    const T* yb = y + b0 * n * C;
    typename Blk::template PerThread<Acc<T>> acc(blk);
    blk.each([&](int t) {
      PD_UNROLL
      for (int i = 0; i < U; ++i) {
        PD_UNROLL
        for (int j = 0; j < U; ++j) acc[t].v[i][j] = T(0);
      }
    });
    for (int64_t k0 = 0; k0 < C; k0 += KC) {
      blk.each([&](int t) {  // the chunk's channels, zeros past the stripes and channels
        for (int e = t; e < R * KC; e += kFusedThreads) {
          const int r = e / KC, kk = e - r * KC;
          const int64_t k = k0 + kk;
          As[kk * LD + r] = (r < rows && k < C) ? xa[r * C + k] : T(0);
          Bs[kk * LD + r] = (r < cols && k < C) ? yb[r * C + k] : T(0);
        }
      });
      blk.each([&](int t) {
        const int ty = t / kFusedSide, tx = t - ty * kFusedSide;
        Acc<T>& A = acc[t];
        PD_UNROLL
        for (int kk = 0; kk < KC; ++kk) {
          T a[U], b[U];
          load_micro(As + kk * LD + ty * U, a);
          load_micro(Bs + kk * LD + tx * U, b);
          PD_UNROLL
          for (int i = 0; i < U; ++i) {
            PD_UNROLL
            for (int j = 0; j < U; ++j) A.v[i][j] += a[i] * b[j];
          }
        }
      });
    }
    blk.each([&](int t) {
      const int ty = t / kFusedSide, tx = t - ty * kFusedSide;
      PD_UNROLL
      for (int i = 0; i < U; ++i) {
        PD_UNROLL
        for (int j = 0; j < U; ++j) Ts[(ty * U + i) * LD + tx * U + j] = acc[t].v[i][j];
      }
    });
    PairLayout L;  // the tile's pairs: dot products in Ts, results in out
    L.num_pairs = int64_t(tq) * tg;
    L.nb = tg;
    L.aligned = false;
    L.xy_sa = int64_t(m) * LD;
    L.xy_sb = n;
    L.xy_si = LD;
    L.xx_sa = m;
    L.yy_sb = n;
    L.out_sa = ldo;
    L.out_sb = 1;
    L.m = m;
    L.n = n;
    L.rule = rule;
    blk.each([&](int t) {
      for (int64_t p = t; p < L.num_pairs; p += kFusedThreads)
        ForwardKernel::pair(p, L, Mode::kFused, normalize, static_cast<const T*>(Ts), xx + a0 * m,
                            yy + b0 * n, out + a0 * ldo + b0);
    });
  }
};

// table: m*n entries per pair, interleaved over pairs (entry k of pair p at
// table[k * num_pairs + p]) so that the threads of a warp touch adjacent words;
// null for kCells (no DP).
struct BackwardKernel {
  template <typename T>
  PD_HD static void run(ThreadPos t, PairLayout L, Mode mode, bool normalize, const T* gout,
                        const T* xy, const T* xx, const T* yy, T* w, T* table) {
    if (t.index >= L.num_pairs) return;
    T grow[kMaxStripes];
    pair_backward<T>(L, t.index, mode, normalize, gout, xy, xx, yy, w,
                     table ? table + t.index : nullptr, L.num_pairs, grow);
  }
};

// ------------------------------------------------------- CUDA warp kernels
// The training pair of batch_local_dist on aligned pairs (x [N, m, C], y [N, n, C],
// contiguous), one warp per pair p = t.warp(), one launch per direction: lane l
// takes the channels c = l, l + 32, ... (adjacent lanes read adjacent words). Written
// against a Warp type (DeviceWarp on the GPU, the emulation's lockstep lanes on the
// CPU) with shfl_xor and sync (__syncwarp). cells [2, N, m, n]: the raw stripe
// distances of pair p at cells + p*m*n, its cell values at cells + (N + p)*m*n.
constexpr int kWarpsPerBlock = kCudaThreads / kWarpSize;

// This lane's part of |a - b|^2 for two stripes of C channels.
template <typename T>
PD_HD T lane_sq_dist(const T* a, const T* b, int64_t C, int lane) {
  T s = T(0);
  for (int64_t c = lane; c < C; c += kWarpSize) {
    const T d = a[c] - b[c];
    s += d * d;
  }
  return s;
}

// The pair of a warp kernel's warp: p = t.warp(), its lane, m*n, and the pair's
// stripes x + p*m*C, y + p*n*C.
template <typename T>
struct WarpPair {
  int64_t p, mn;
  int lane;
  const T* x;
  const T* y;
  PD_HD WarpPair(ThreadPos t, int m, int n, int64_t C, const T* xs, const T* ys)
      : p(t.warp()), mn(int64_t(m) * n), lane(t.lane()), x(xs + p * m * C), y(ys + p * n * C) {}
};

// Forward: the cells of pair p (cell k = i*n + j: the warp's sum, written by lane
// k % 32), then lane 0 runs the DP over the saved cell values and writes out[p].
struct WarpForwardCellsKernel {
  PD_NO_EXEC_CHECK
  template <typename Warp, typename T>
  PD_HD static void run(const Warp& w, ThreadPos t, int64_t N, int m, int n, int64_t C,
                        bool normalize, DPRule rule, const T* x, const T* y, T* out, T* cells) {
    const WarpPair<T> P(t, m, n, C, x, y);
    const int64_t p = P.p, mn = P.mn;
    if (p >= N) return;  // whole warps leave together
    const int lane = P.lane;
    const T *xp = P.x, *yp = P.y;
    T* raw = cells + p * mn;
    T* val = cells + (N + p) * mn;
    for (int64_t k = 0; k < mn; ++k) {
      const int i = int(k / n), j = int(k % n);
      const T r = pd_sqrt(warp_sum(w, lane_sq_dist(xp + i * C, yp + j * C, C, lane)));
      if (lane == int(k % kWarpSize)) {
        raw[k] = r;
        val[k] = cell_of_raw(r, normalize);
      }
    }
    w.sync();  // the cell values of every lane, visible to lane 0
    if (lane == 0) {
      T row[kMaxStripes];
      out[p] = dmli_forward<T>(RawCells<T>{val, n}, m, n, RowStore<T>{row}, rule);
    }
  }
};

// Writes the weight cell_weight_raw of each cell from its saved raw distance and value.
template <typename T>
struct EmitRawWeight {
  T* w;
  const T* raw;
  const T* val;
  int n;
  bool normalize;
  PD_HD void operator()(int i, int j, T g) const {
    const int64_t k = int64_t(i) * n + j;
    w[k] = cell_weight_raw(g, raw[k], val[k], normalize);
  }
};

// Backward: g = grad[p * grad_stride]; g == 0: gx[p], gy[p] are zero. Otherwise lane
// 0 runs the DP backward over the saved cell values (dmli_backward, S table in
// table + p*m*n) and writes the cell weights into the same table: dmli_reverse emits
// cell (i, j) after every cell that reads S(i, j) ((i + 1, j) and (i, j + 1)) and
// before reading S(i - 1, j), S(i, j - 1), so each S entry is read before its weight
// replaces it. Then each lane writes its channels of gx[p] and gy[p] (every element,
// no accumulation into existing values):
//   gx[i, c] = sum_j w_ij (x_ic - y_jc),   gy[j, c] = -sum_i w_ij (x_ic - y_jc).
struct WarpBackwardCellsKernel {
  PD_NO_EXEC_CHECK
  template <typename Warp, typename T>
  PD_HD static void run(const Warp& w, ThreadPos t, int64_t N, int m, int n, int64_t C,
                        bool normalize, DPRule rule, const T* grad, int64_t grad_stride, const T* x,
                        const T* y, const T* cells, T* table, T* gx, T* gy) {
    const WarpPair<T> P(t, m, n, C, x, y);
    const int64_t p = P.p, mn = P.mn;
    if (p >= N) return;  // whole warps leave together
    const int lane = P.lane;
    const T *xp = P.x, *yp = P.y;
    T* gxp = gx + p * m * C;
    T* gyp = gy + p * n * C;
    const T g = grad[p * grad_stride];
    if (g == T(0)) {  // no gradient (e.g. an inactive hinge): no DP to run
      for (int64_t c = lane; c < C; c += kWarpSize) {
        for (int i = 0; i < m; ++i) gxp[i * C + c] = T(0);
        for (int j = 0; j < n; ++j) gyp[j * C + c] = T(0);
      }
      return;
    }
    T* wt = table + p * mn;
    if (lane == 0) {
      const T* raw = cells + p * mn;
      const T* val = cells + (N + p) * mn;
      T grow[kMaxStripes];
      dmli_backward<T>(RawCells<T>{val, n}, m, n, g, TableStore<T>{wt, 1, n}, grow,
                       EmitRawWeight<T>{wt, raw, val, n, normalize}, rule);
    }
    w.sync();  // the weights, visible to every lane
    for (int64_t c = lane; c < C; c += kWarpSize) {
      for (int i = 0; i < m; ++i) {
        const T a = xp[i * C + c];
        T s = T(0);
        for (int j = 0; j < n; ++j) {
          const T wij = wt[i * n + j];
          if (wij != T(0)) s += channel_grad(wij, a, yp[j * C + c]);
        }
        gxp[i * C + c] = s;
      }
      for (int j = 0; j < n; ++j) {
        const T b = yp[j * C + c];
        T s = T(0);
        for (int i = 0; i < m; ++i) {
          const T wij = wt[i * n + j];
          if (wij != T(0)) s += channel_grad(wij, xp[i * C + c], b);
        }
        gyp[j * C + c] = -s;
      }
    }
  }
};

// The CUDA path of batch_local_dist's autograd runs the warp kernels (the cells pair of
// ops) for aligned pairs of at most kWarpPathMaxCells cells (m * n) with a DP (not
// unaligned), and batch_local_dist / batch_local_dist_backward (batched GEMM + one
// thread per pair) otherwise: the warp kernels compute each cell's distance by a warp
// reduction over C and lane 0 runs the whole DP of its pair serially, which suits small
// m * n. (A bound chosen, not yet measured on a GPU.)
constexpr int64_t kWarpPathMaxCells = 32 * 32;

// Entries of the backward's DP table for a launch over L (see BackwardKernel).
PD_HD int64_t backward_table_entries(const PairLayout& L, Mode mode) {
  return mode == Mode::kCells ? 0 : int64_t(L.m) * L.n * L.num_pairs;
}

}  // namespace dmli
}  // namespace partdist
