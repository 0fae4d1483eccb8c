// Per-row math of batch-hard example mining and of the triplet loss on the
// mined pairs, written once.
//
// Everything here is an inline host+device function: the CPU backend
// (mining_cpu.cpp, at::parallel_for over rows) and the CUDA kernels (the bodies at
// the end, launched by mining_launch.h on the GPU or in its CPU emulation) both
// call these and nothing else does any of this math.
//
// Conventions
//   * Row i of the distance matrix is anchor i; column j is candidate j.
//     Candidate j is a positive of anchor i when labels_other[j] == labels[i]
//     (and, with exclude_self, j != i), a negative otherwise. The label test is
//     done here, per element: no N x M mask is ever built.
//   * Hardest positive: the largest distance among the positives; hardest
//     negative: the smallest among the negatives. Ties go to the first (lowest)
//     column, as torch.max / torch.min along a dim. A NaN candidate wins over
//     any number and the first NaN wins among NaNs, again as torch.max /
//     torch.min: NaN propagates to the selected value.
//   * An anchor without positive (or without negative) gets value 0 and index
//     -1 on that side, and valid = false. Losses skip invalid anchors.
//   * Values are compared and losses computed in the "accumulate" type A
//     (float for float16 / bfloat16 / float32, double for float64).
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/hd.h"
#include "../common/launch.h"

namespace partdist {
namespace mining {

// Shape of one call: dist is [N, M] with strides (row_stride, col_stride).
struct Shape {
  int64_t N = 0, M = 0;
  int64_t row_stride = 0, col_stride = 0;  // of dist (forward only)
  bool exclude_self = false;               // column i is not a positive of row i
};

// ---------------------------------------------------------------- primitives
PD_HD float m_exp(float x) { return expf(x); }
PD_HD double m_exp(double x) { return exp(x); }
PD_HD float m_log1p(float x) { return log1pf(x); }
PD_HD double m_log1p(double x) { return log1p(x); }

template <typename A>
PD_HD bool is_nan(A x) {
  return x != x;
}

// A running selection: value v at column j; j < 0 while nothing is selected.
template <typename A>
struct Best {
  A v;
  int64_t j;
};

template <typename A>
PD_HD Best<A> none() {
  return Best<A>{A(0), -1};
}

// Order used by torch.max (kMax) / torch.min along a dim, as a strict
// "candidate (v, j) replaces the selection (bv, bj)" test that holds for any
// order of arrival (used to merge partial selections):
//   NaN beats numbers, the lower column wins among NaNs and among equal values.
template <bool kMax, typename A>
PD_HD bool beats(A v, int64_t j, A bv, int64_t bj) {
  if (j < 0) return false;
  if (bj < 0) return true;
  const bool vn = is_nan(v), bn = is_nan(bv);
  if (vn || bn) return vn && (!bn || j < bj);
  if (kMax ? (v > bv) : (v < bv)) return true;
  return v == bv && j < bj;
}

template <bool kMax, typename A>
PD_HD void merge(Best<A>& b, const Best<A>& o) {
  if (beats<kMax>(o.v, o.j, b.v, b.j)) b = o;
}

// The same order specialised to candidates arriving in increasing column
// order (a sequential scan): a later equal value never replaces, a NaN only
// replaces a number.
template <bool kMax, typename A>
PD_HD void offer_in_order(Best<A>& b, A v, int64_t j) {
  const bool better = kMax ? (v > b.v) : (v < b.v);
  if (better || b.j < 0 || (is_nan(v) && !is_nan(b.v))) {
    b.v = v;
    b.j = j;
  }
}

// Scans the columns j = j0, j0 + step, ... < M of one row (increasing j).
//   row        : pointer to element (i, 0); element (i, j) at row[j * col_stride]
//   label      : labels[i]
//   lo         : labels_other (M entries)
//   self_col   : column excluded from the positives (i with exclude_self, else -1)
template <typename A, typename T>
PD_HD void scan_row(const T* row, int64_t col_stride, int64_t M, int64_t j0, int64_t step,
                    int64_t label, const int64_t* lo, int64_t self_col, Best<A>& pos,
                    Best<A>& neg) {
  for (int64_t j = j0; j < M; j += step) {
    const A v = static_cast<A>(row[j * col_stride]);
    if (lo[j] == label) {
      if (j != self_col) offer_in_order<true>(pos, v, j);
    } else {
      offer_in_order<false>(neg, v, j);
    }
  }
}

// The same selection as scan_row over a whole row (j = 0 .. M-1), faster on
// CPUs: the loop assumes there is no NaN and only records whether one was seen;
// a row that holds a NaN is scanned again by scan_row. Equal to scan_row.
template <typename A, typename T>
PD_HD void scan_row_fast(const T* row, int64_t col_stride, int64_t M, int64_t label,
                         const int64_t* lo, int64_t self_col, Best<A>& pos, Best<A>& neg) {
  A pv = A(0), nv = A(0);
  int64_t pj = -1, nj = -1;
  bool nan_seen = false;
  for (int64_t j = 0; j < M; ++j) {
    const A v = static_cast<A>(row[j * col_stride]);
    nan_seen |= v != v;
    if (lo[j] == label) {
      if ((v > pv || pj < 0) && j != self_col) {
        pv = v;
        pj = j;
      }
    } else if (v < nv || nj < 0) {
      nv = v;
      nj = j;
    }
  }
  if (nan_seen) {
    scan_row<A>(row, col_stride, M, 0, 1, label, lo, self_col, pos, neg);
    return;
  }
  pos = Best<A>{pv, pj};
  neg = Best<A>{nv, nj};
}

// ------------------------------------------------------------------- losses
// Per-anchor triplet loss on z = dist_ap - dist_an:
//   margin form : max(0, z + margin)          (nn.MarginRankingLoss(margin) with y = 1)
//   soft margin : log(1 + exp(z))             (nn.SoftMarginLoss on dist_an - dist_ap),
//                 evaluated stably (no overflow for large z).
template <typename A>
struct LossArgs {
  bool enabled;  // compute the loss at all (the triplet op) or only mine
  bool soft;     // soft margin instead of the margin form
  A margin;
};

template <typename A>
PD_HD A softplus(A z) {
  return z > A(0) ? z + m_log1p(m_exp(-z)) : m_log1p(m_exp(z));
}

template <typename A>
PD_HD A sigmoid(A z) {
  if (z >= A(0)) return A(1) / (A(1) + m_exp(-z));
  const A e = m_exp(z);  // NaN stays NaN
  return e / (A(1) + e);
}

template <typename A>
PD_HD A anchor_loss(A ap, A an, const LossArgs<A>& L) {
  const A z = ap - an;
  if (L.soft) return softplus(z);
  const A h = z + L.margin;
  return (h > A(0) || is_nan(h)) ? h : A(0);  // NaN propagates, as relu
}

// d(anchor_loss)/d(ap) = -d(anchor_loss)/d(an). The margin form uses the
// subgradient of relu: slope 1 where z + margin > 0, 0 at the hinge point
// itself and for NaN (as torch.relu, and nn.MarginRankingLoss from torch 2.14
// on; torch <= 2.13's clamp_min passed slope 1 at the hinge point).
template <typename A>
PD_HD A anchor_slope(A ap, A an, const LossArgs<A>& L) {
  const A z = ap - an;
  if (L.soft) return sigmoid(z);
  return (z + L.margin > A(0)) ? A(1) : A(0);
}

// --------------------------------------------------------------- per row
// Output pointers of the forward (all N entries; row_loss may be null).
template <typename T, typename A>
struct ForwardOut {
  T* dist_ap;
  T* dist_an;
  int64_t* p_inds;
  int64_t* n_inds;
  bool* valid;
  A* row_loss;  // per-anchor loss, 0 for invalid anchors (null: mining only)
};

template <typename T, typename A>
PD_HD void finish_row(int64_t i, const Best<A>& pos, const Best<A>& neg, const LossArgs<A>& L,
                      const ForwardOut<T, A>& o) {
  const bool has_p = pos.j >= 0, has_n = neg.j >= 0;
  const A ap = has_p ? pos.v : A(0);
  const A an = has_n ? neg.v : A(0);
  o.dist_ap[i] = static_cast<T>(ap);
  o.dist_an[i] = static_cast<T>(an);
  o.p_inds[i] = has_p ? pos.j : -1;
  o.n_inds[i] = has_n ? neg.j : -1;
  o.valid[i] = has_p && has_n;
  if (o.row_loss) o.row_loss[i] = (has_p && has_n && L.enabled) ? anchor_loss(ap, an, L) : A(0);
}

// Inputs of the backward, per anchor. Any of grad_ap / grad_an / loss_scale
// may be null (no gradient from that output).
template <typename T, typename A>
struct BackwardIn {
  const T* grad_ap;     // dL/d(dist_ap), N entries
  const T* grad_an;     // dL/d(dist_an), N entries
  const A* loss_scale;  // one value: dL/d(loss) / max(#valid, 1)
  const T* dist_ap;
  const T* dist_an;
  const int64_t* p_inds;
  const int64_t* n_inds;
  const bool* valid;
};

// Gradient of row i of dist_mat: entry p_inds[i] gets g_ap, entry n_inds[i]
// gets g_an (a missing side, index -1, gets nothing); all other entries 0.
template <typename T, typename A>
PD_HD void row_grads(int64_t i, const BackwardIn<T, A>& b, const LossArgs<A>& L, A& g_ap, A& g_an) {
  g_ap = b.grad_ap ? static_cast<A>(b.grad_ap[i]) : A(0);
  g_an = b.grad_an ? static_cast<A>(b.grad_an[i]) : A(0);
  if (b.loss_scale && L.enabled && b.valid[i]) {
    const A s =
        *b.loss_scale * anchor_slope(static_cast<A>(b.dist_ap[i]), static_cast<A>(b.dist_an[i]), L);
    g_ap += s;
    g_an -= s;
  }
}

// Row i of the forward, whole row in one sequential scan: the selections, the
// outputs and the loss (CPU rows, and the CUDA kernel for column-major dist).
template <typename T, typename A>
PD_HD void mine_row(int64_t i, const Shape& S, const LossArgs<A>& L, const T* dist,
                    const int64_t* labels, const int64_t* lo, const ForwardOut<T, A>& o) {
  Best<A> pos = none<A>(), neg = none<A>();
  scan_row_fast<A>(dist + i * S.row_stride, S.col_stride, S.M, labels[i], lo,
                   S.exclude_self ? i : -1, pos, neg);
  finish_row<T, A>(i, pos, neg, L, o);
}

// Entry j of a row's gradient: g_ap at column p, g_an at column n (added in that order
// where p == n), 0 elsewhere; p or n = -1 (no positive / negative) matches no column.
template <typename T, typename A>
PD_HD T entry_grad(int64_t j, int64_t p, int64_t n, A g_ap, A g_an) {
  T v = T(0);
  if (j == p) v = static_cast<T>(static_cast<A>(v) + g_ap);
  if (j == n) v = static_cast<T>(static_cast<A>(v) + g_an);
  return v;
}

// Row i of the backward into g ([N, M] contiguous, zero except what this writes): the
// entries p_inds[i] and n_inds[i] (entry_grad); an index outside [0, M) gets nothing.
template <typename T, typename A>
PD_HD void scatter_row(int64_t i, int64_t M, const BackwardIn<T, A>& b, const LossArgs<A>& L,
                       T* g) {
  A g_ap, g_an;
  row_grads<T, A>(i, b, L, g_ap, g_an);
  const int64_t p = b.p_inds[i], n = b.n_inds[i];
  if (p >= 0 && p < M) g[i * M + p] = entry_grad<T, A>(p, p, n, g_ap, g_an);
  if (n >= 0 && n < M && n != p) g[i * M + n] = entry_grad<T, A>(n, p, n, g_ap, g_an);
}

// ------------------------------------------------------------- CUDA kernels
// The bodies of the CUDA kernels. The __global__ shims (common/cuda_launch.cuh)
// compute t and call run; the CPU emulation (common/emulate.h) runs the same
// bodies over the same grid (the warp kernel's lanes in lockstep).
constexpr int kWarpsPerBlock = 8;
constexpr int kCudaThreads = kWarpsPerBlock * kWarpSize;

// Merges the lanes' selections of a warp into lane 0 (shuffle tree).
PD_NO_EXEC_CHECK
template <bool kMax, typename A, typename Warp>
PD_HD void warp_merge(const Warp& w, Best<A>& b) {
  for (int off = kWarpSize / 2; off > 0; off /= 2) {
    Best<A> o;
    o.v = w.shfl_down(b.v, unsigned(off));
    o.j = static_cast<int64_t>(w.shfl_down(static_cast<long long>(b.j), unsigned(off)));
    merge<kMax>(b, o);
  }
}

// Forward, one warp per row (row-major dist): each lane scans the columns
// lane, lane + 32, ... (adjacent lanes read adjacent columns), then the lanes'
// selections merge and lane 0 writes the row.
struct WarpRowKernel {
  PD_NO_EXEC_CHECK
  template <typename Warp, typename T, typename A>
  PD_HD static void run(const Warp& w, ThreadPos t, Shape S, LossArgs<A> L, const T* dist,
                        const int64_t* labels, const int64_t* lo, ForwardOut<T, A> o) {
    const int64_t i = t.warp();
    if (i >= S.N) return;  // whole warps leave together
    const int lane = t.lane();
    Best<A> pos = none<A>(), neg = none<A>();
    scan_row<A>(dist + i * S.row_stride, S.col_stride, S.M, lane, kWarpSize, labels[i], lo,
                S.exclude_self ? i : -1, pos, neg);
    warp_merge<true>(w, pos);
    warp_merge<false>(w, neg);
    if (lane == 0) finish_row<T, A>(i, pos, neg, L, o);
  }
};

// Forward, one thread per row (column-major dist, e.g. dist.t(): adjacent threads
// read adjacent rows of one column).
struct ThreadRowKernel {
  template <typename T, typename A>
  PD_HD static void run(ThreadPos t, Shape S, LossArgs<A> L, const T* dist, const int64_t* labels,
                        const int64_t* lo, ForwardOut<T, A> o) {
    if (t.index >= S.N) return;
    mine_row<T, A>(t.index, S, L, dist, labels, lo, o);
  }
};

// The triplet loss: the mean of row_loss [N] over the valid anchors, 0 when none is
// valid (row_loss is 0 there), written to loss[0] in T. One warp: lane l sums the rows
// l, l + 32, ..., then the lanes' sums are added (warp_sum).
struct LossMeanKernel {
  PD_NO_EXEC_CHECK
  template <typename Warp, typename T, typename A>
  PD_HD static void run(const Warp& w, ThreadPos t, int64_t N, const A* row_loss, const bool* valid,
                        T* loss) {
    if (t.warp() != 0) return;  // one warp
    const int lane = t.lane();
    A s = A(0), c = A(0);
    for (int64_t i = lane; i < N; i += kWarpSize) {
      s += row_loss[i];
      c += valid[i] ? A(1) : A(0);
    }
    s = warp_sum(w, s);
    c = warp_sum(w, c);
    if (lane == 0) loss[0] = static_cast<T>(s / (c > A(1) ? c : A(1)));
  }
};

// Backward, one thread per entry of g [N, M] (contiguous): every entry is written, so
// g needs no zeroing before the launch; adjacent threads write adjacent entries.
struct DenseGradKernel {
  template <typename T, typename A>
  PD_HD static void run(ThreadPos t, Shape S, LossArgs<A> L, BackwardIn<T, A> b, T* g) {
    if (t.index >= S.N * S.M) return;
    const int64_t i = t.index / S.M, j = t.index - i * S.M;
    A g_ap, g_an;
    row_grads<T, A>(i, b, L, g_ap, g_an);
    g[t.index] = entry_grad<T, A>(j, b.p_inds[i], b.n_inds[i], g_ap, g_an);
  }
};

}  // namespace mining
}  // namespace partdist
