// Per-element math of the visibility-aware part distance (part_dist) and of the
// DSR distance (dsr_dist), written once.
//
// Everything here is an inline host+device function: the CPU backend
// (parts_cpu.cpp, at::parallel_for) and the CUDA kernels (the bodies at the end, one
// thread per pair / per (pair, query cell), launched by parts_launch.h on the GPU or
// in its CPU emulation) both call these and nothing else does any of this math. The loop orders
// differ (CPU: a query row's pairs innermost for part_dist, all query cells of a pair at once for
// DSR, so that they vectorize; CUDA: one pair or one cell per thread); the per-element steps
// (part_term / part_finalize, fista_prox / fista_t_next / fista_done /
// recon_error) are shared.
//
// part_dist, pair (a, b) with P parts:
//   d_p   = ||x_ap - y_bp||_2 = sqrt(max(|x_ap|^2 + |y_bp|^2 - 2 x_ap.y_bp, 0))
//   v_p   = vx_ap * vy_bp                       (visibility weights, floats)
//   W     = sum_p v_p
//   D     = sum_p v_p d_p / W                   if W > 0
//         = empty_value                         if W == 0 (no shared visible part)
//   dD/d(d_p)   = v_p / W                       (0 where W == 0)
//   dD/d(vx_ap) = vy_bp (d_p - D) / W           (0 where W == 0)
//   dD/d(vy_bp) = vx_ap (d_p - D) / W
//   d(d_p)/d(x_ap) = (x_ap - y_bp) / d_p, subgradient 0 at d_p == 0.
//
// dsr_dist, one query cell x (C values) against a gallery Y (C x Lg, columns =
// cells), with G = Y^T Y (Lg x Lg), b = Y^T x (Lg), xx = x.x:
//   w* = argmin_w 1/2 ||x - Y w||^2 + beta ||w||_1        (the 1/2 is included)
//   solved by FISTA (Beck & Teboulle 2009), step 1/L, L = lambda_max(G):
//     w_{k+1} = soft(z_k - (G z_k - b) / L, beta / L)
//     t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2,  z_{k+1} = w_{k+1} + (t_k - 1)/t_{k+1} (w_{k+1} - w_k)
//     stop after max_iter iterations or when ||w_{k+1} - w_k||_2 <= tol * ||w_{k+1}||_2
//     (w_0 = z_0 = 0, t_0 = 1)
//   error = ||x - Y w*||^2 = xx - 2 w*.b + w*^T G w*  (no 1/2, no beta ||w||_1 term),
//   clamped at 0. The DSR distance of a pair is the mean of this error over the
//   query's cells.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/hd.h"
#include "../common/launch.h"
#include "../common/math.h"

namespace partdist {
namespace parts {

// Largest number of gallery cells Lg the DSR kernels accept (the CUDA kernel keeps
// three vectors of Lg values per thread in local arrays, sized by the smallest of
// the capacities 16, 32, 64, 128, 256 that holds Lg: see DsrKernel).
constexpr int kMaxCells = 256;

template <typename T>
PD_HD T pd_abs(T x) {
  return x < T(0) ? -x : x;
}

// ---------------------------------------------------------------- part_dist
// Distance of two parts from |a|^2, |b|^2 and a.b (common/math.h).
template <typename T>
PD_HD T part_norm_dist(T aa, T bb, T ab) {
  return gemm_dist(aa, bb, ab);
}

// Where the data of one tile lives. Pair (i, j) of the tile is query a0 + i and
// gallery b0 + j; all pointers are already positioned at the tile's start.
//   dot product of part p: xy[p * xy_sp + i * xy_si + j]
//   |x_ap|^2, vx_ap:       xx[i * P + p], vx[i * P + p]   ([M, P] contiguous)
//   |y_bp|^2, vy_bp:       yy[j * P + p], vy[j * P + p]
//   output / incoming grad: out[i * out_si + j]
// The tile's shape (PartDims, shared with the host's PartArgs), then its data.
struct PartDims {
  int64_t mc = 0, nc = 0;
  int P = 0;
  int64_t out_si = 0;
};

template <typename T>
struct PartTile : PartDims {
  int64_t xy_sp = 0, xy_si = 0;
  T empty_value = T(0);
  const T* xy = nullptr;
  const T* xx = nullptr;
  const T* yy = nullptr;
  const T* vx = nullptr;
  const T* vy = nullptr;
  PD_HD int64_t num_pairs() const { return mc * nc; }
};

// Weighted distance of one part: v * d, or 0 where v == 0 (an invisible part
// contributes nothing, even a NaN feature). Written as a select so that loops over
// pairs vectorize.
template <typename T>
PD_HD T part_term(T aa, T bb, T ab, T v) {
  T d = part_norm_dist(aa, bb, ab);
  return v != T(0) ? v * d : T(0);
}

// D from the weighted sum and the total weight W.
template <typename T>
PD_HD T part_finalize(T num, T den, T empty_value) {
  return den > T(0) ? num / (den > T(0) ? den : T(1)) : empty_value;
}

// Visibility-weighted sum of the part distances of pair (i, j): returns D, W in wsum.
template <typename T>
PD_HD T part_pair_value(const PartTile<T>& L, int64_t i, int64_t j, T& wsum) {
  T num = T(0), den = T(0);
  const T* xxi = L.xx + i * L.P;
  const T* yyj = L.yy + j * L.P;
  const T* vxi = L.vx + i * L.P;
  const T* vyj = L.vy + j * L.P;
  const T* t = L.xy + i * L.xy_si + j;
  for (int p = 0; p < L.P; ++p) {
    T v = vxi[p] * vyj[p];
    num += part_term(xxi[p], yyj[p], t[p * L.xy_sp], v);
    den += v;
  }
  wsum = den;
  return part_finalize(num, den, L.empty_value);
}

// Weighted sums of the pairs (i, j0..j1-1) of one query row, part by part with the
// pairs innermost (contiguous in xy): the CPU launcher's loop order, which
// vectorizes. num, den: j1 - j0 entries each. Same sums, in the same order, as
// part_pair_value.
template <typename T>
PD_HD void part_row_sums(const PartTile<T>& L, int64_t i, int64_t j0, int64_t j1, T* num, T* den) {
  const int64_t n = j1 - j0;
  for (int64_t k = 0; k < n; ++k) {
    num[k] = T(0);
    den[k] = T(0);
  }
  for (int p = 0; p < L.P; ++p) {
    const T xa = L.xx[i * L.P + p], va = L.vx[i * L.P + p];
    const T* t = L.xy + p * L.xy_sp + i * L.xy_si + j0;
    const T* yy = L.yy + j0 * L.P + p;
    const T* vy = L.vy + j0 * L.P + p;
    for (int64_t k = 0; k < n; ++k) {
      T v = va * vy[k * L.P];
      num[k] += part_term(xa, yy[k * L.P], t[k], v);
      den[k] += v;
    }
  }
}

template <typename T>
PD_HD void part_row_forward(const PartTile<T>& L, int64_t i, int64_t j0, int64_t j1, T* num, T* den,
                            T* out) {
  part_row_sums(L, i, j0, j1, num, den);
  T* o = out + i * L.out_si + j0;
  for (int64_t k = 0; k < j1 - j0; ++k) o[k] = part_finalize(num[k], den[k], L.empty_value);
}

template <typename T>
PD_HD void part_pair_forward(const PartTile<T>& L, int64_t q, T* out) {
  const int64_t i = q / L.nc, j = q - i * L.nc;
  T w;
  out[i * L.out_si + j] = part_pair_value(L, i, j, w);
}

// Per-part backward factors of one pair (see part_pair_backward): g the incoming
// gradient, D and W the pair's value and total weight, v the part's weight, (aa, bb,
// ab) its norms and dot product.
template <typename T>
PD_HD void part_weights(T g, T D, T W, T v, T aa, T bb, T ab, T& wv, T& ev) {
  const bool live = W > T(0) && g != T(0);
  T d = part_norm_dist(aa, bb, ab);
  wv = (live && v != T(0) && d > T(0)) ? g * v / ((live ? W : T(1)) * (d > T(0) ? d : T(1))) : T(0);
  ev = live ? g * (d - D) / W : T(0);
}

// Backward of pair q. g: incoming gradient (layout of out). Writes, per part p,
//   cw[p * xy_sp + i * xy_si + j] = g * v_p / (W d_p)      (cell weight: the chain
//       rule to the features is dL/dx_ap += cw (x_ap - y_bp), dL/dy_bp -= cw (...))
//   ce[p * xy_sp + i * xy_si + j] = g * (d_p - D) / W      (visibility factor:
//       dL/dvx_ap += ce * vy_bp, dL/dvy_bp += ce * vx_ap)
// Both are 0 for every part where W == 0. ce may be null (no visibility grads).
template <typename T>
PD_HD void part_pair_backward(const PartTile<T>& L, int64_t q, const T* gout, T* cw, T* ce) {
  const int64_t i = q / L.nc, j = q - i * L.nc;
  const T g = gout[i * L.out_si + j];
  T W;
  const T D = part_pair_value(L, i, j, W);
  const int64_t off = i * L.xy_si + j;
  for (int p = 0; p < L.P; ++p) {
    const int64_t k = p * L.xy_sp + off;
    T wv, ev;
    part_weights(g, D, W, L.vx[i * L.P + p] * L.vy[j * L.P + p], L.xx[i * L.P + p],
                 L.yy[j * L.P + p], L.xy[k], wv, ev);
    cw[k] = wv;
    if (ce) ce[k] = ev;
  }
}

// The same for the pairs (i, j0..j1-1) of one query row, pairs innermost (the CPU
// launcher's order). num, den: j1 - j0 scratch entries each.
template <typename T>
PD_HD void part_row_backward(const PartTile<T>& L, int64_t i, int64_t j0, int64_t j1, const T* gout,
                             T* cw, T* ce, T* num, T* den) {
  const int64_t n = j1 - j0;
  part_row_sums(L, i, j0, j1, num, den);
  for (int64_t k = 0; k < n; ++k) num[k] = part_finalize(num[k], den[k], T(0));  // D
  const T* g = gout + i * L.out_si + j0;
  for (int p = 0; p < L.P; ++p) {
    const T xa = L.xx[i * L.P + p], va = L.vx[i * L.P + p];
    const int64_t off = p * L.xy_sp + i * L.xy_si + j0;
    const T* t = L.xy + off;
    const T* yy = L.yy + j0 * L.P + p;
    const T* vy = L.vy + j0 * L.P + p;
    T* w = cw + off;
    T* e = ce ? ce + off : nullptr;
    for (int64_t k = 0; k < n; ++k) {
      T wv, ev;
      part_weights(g[k], num[k], den[k], va * vy[k * L.P], xa, yy[k * L.P], t[k], wv, ev);
      w[k] = wv;
      if (e) e[k] = ev;
    }
  }
}

// ---------------------------------------------------------------------- DSR
PD_HD float soft_threshold(float v, float t) { return v > t ? v - t : (v < -t ? v + t : 0.0f); }
PD_HD double soft_threshold(double v, double t) { return v > t ? v - t : (v < -t ? v + t : 0.0); }

// a . b over n entries, four independent partial sums (the FISTA iterations are a
// chain of these dot products; one accumulator would be latency-bound).
template <typename T>
PD_HD T row_dot(const T* a, const T* b, int n) {
  T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
  int c = 0;
  for (; c + 4 <= n; c += 4) {
    s0 += a[c] * b[c];
    s1 += a[c + 1] * b[c + 1];
    s2 += a[c + 2] * b[c + 2];
    s3 += a[c + 3] * b[c + 3];
  }
  for (; c < n; ++c) s0 += a[c] * b[c];
  return (s0 + s1) + (s2 + s3);
}

struct FistaOptions {
  double beta = 0.0;
  int max_iter = 0;
  double tol = 0.0;
};

// The elementary FISTA steps, shared by the per-cell solver (dsr_cell, CUDA) and the
// per-pair solver (dsr_pair, CPU: all query cells of a pair at once, vectorized).
// Proximal gradient step of one coordinate: soft(z - step * grad, beta * step).
template <typename T>
PD_HD T fista_prox(T z, T grad, T step, T thr) {
  return soft_threshold(z - step * grad, thr);
}
// t_{k+1} from t_k.
template <typename T>
PD_HD T fista_t_next(T t) {
  return (T(1) + pd_sqrt(T(1) + T(4) * t * t)) / T(2);
}
// The start of the iterations: w_0 = z_0 = 0 (n entries each).
template <typename T>
PD_HD void fista_zero(T* w, T* z, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    w[k] = T(0);
    z[k] = T(0);
  }
}
// The step 1 / Lip, the threshold beta / Lip and tol^2 for Lip > 0.
template <typename T>
struct FistaSteps {
  T step, thr, tol2;
};
template <typename T>
PD_HD FistaSteps<T> fista_steps(T Lip, const FistaOptions& o) {
  return FistaSteps<T>{T(1) / Lip, T(o.beta) / Lip, T(o.tol) * T(o.tol)};
}
// Stopping test: ||w_{k+1} - w_k||^2 <= tol^2 ||w_{k+1}||^2.
template <typename T>
PD_HD bool fista_done(T diff2, T norm2, T tol2) {
  return diff2 <= tol2 * norm2;
}
// ||x - Y w||^2 = xx - 2 w.b + w^T G w, clamped at 0.
template <typename T>
PD_HD T recon_error(T xx, T wb, T wgw) {
  T e = xx - T(2) * wb + wgw;
  return e < T(0) ? T(0) : e;
}

// Solves the Lasso of one query cell and returns its reconstruction error.
//   G: Lg x Lg (row stride Lg), b: Lg entries (stride bs), xx = x.x, Lip = lambda_max(G)
//   w, wn, z: Lg scratch entries each; on return w holds w*.
template <typename T>
PD_HD T dsr_cell(const T* G, int Lg, const T* b, int64_t bs, T xx, T Lip, const FistaOptions& o,
                 T* w, T* wn, T* z) {
  fista_zero(w, z, Lg);
  if (Lip > T(0)) {
    const auto [step, thr, tol2] = fista_steps(Lip, o);
    T t = T(1);
    for (int it = 0; it < o.max_iter; ++it) {
      T diff2 = T(0), norm2 = T(0);
      for (int r = 0; r < Lg; ++r) {
        T v = fista_prox(z[r], row_dot(G + int64_t(r) * Lg, z, Lg) - b[r * bs], step, thr);
        wn[r] = v;
        T d = v - w[r];
        diff2 += d * d;
        norm2 += v * v;
      }
      const T tn = fista_t_next(t);
      const T mom = (t - T(1)) / tn;
      t = tn;
      for (int r = 0; r < Lg; ++r) {
        z[r] = wn[r] + mom * (wn[r] - w[r]);
        w[r] = wn[r];
      }
      if (fista_done(diff2, norm2, tol2)) break;
    }
  }
  T wb = T(0), wgw = T(0);
  for (int r = 0; r < Lg; ++r) {
    if (w[r] == T(0)) continue;
    wb += w[r] * b[r * bs];
    wgw += w[r] * row_dot(G + int64_t(r) * Lg, w, Lg);
  }
  return recon_error(xx, wb, wgw);
}

// The same for all Lq query cells of one pair at once: B is Lg x Lq (row stride Lq,
// cell n in column n), xx Lq entries, err receives Lq errors. Each cell follows
// exactly the iterations of dsr_cell (a cell that meets the stopping test is frozen;
// t depends only on the iteration count, so it is shared), but the work runs over
// contiguous cells, which vectorizes. Scratch: 3 Lg Lq + 7 Lq entries.
template <typename T>
PD_HD void dsr_pair(const T* G, int Lg, const T* B, int Lq, const T* xx, T Lip,
                    const FistaOptions& o, T* scratch, T* err) {
  const int64_t K = int64_t(Lg) * Lq;
  T* W = scratch;
  T* Wn = W + K;
  T* Z = Wn + K;
  T* acc = Z + K;  // 4 Lq entries
  T* diff2 = acc + 4 * Lq;
  T* norm2 = diff2 + Lq;
  T* live = norm2 + Lq;  // 1 while the cell iterates, 0 once stopped
  fista_zero(W, Z, K);
  if (Lip > T(0)) {
    const auto [step, thr, tol2] = fista_steps(Lip, o);
    T t = T(1);
    int n_live = Lq;
    for (int n = 0; n < Lq; ++n) live[n] = T(1);
    for (int it = 0; it < o.max_iter && n_live > 0; ++it) {
      for (int n = 0; n < Lq; ++n) diff2[n] = norm2[n] = T(0);
      // gradient rows G Z - B, four rows r0..r0+3 per pass over Z (each Z row is
      // loaded once for four rows of G)
      for (int r0 = 0; r0 < Lg; r0 += 4) {
        const int nr = Lg - r0 < 4 ? Lg - r0 : 4;
        for (int k = 0; k < nr; ++k) {
          const T* Br = B + int64_t(r0 + k) * Lq;
          for (int n = 0; n < Lq; ++n) acc[k * Lq + n] = -Br[n];
        }
        if (nr == 4) {
          const T* G0 = G + int64_t(r0) * Lg;
          T* a0 = acc;
          T* a1 = acc + Lq;
          T* a2 = acc + 2 * Lq;
          T* a3 = acc + 3 * Lq;
          for (int c = 0; c < Lg; ++c) {
            const T g0 = G0[c], g1 = G0[Lg + c], g2 = G0[2 * Lg + c], g3 = G0[3 * Lg + c];
            const T* Zc = Z + int64_t(c) * Lq;
            for (int n = 0; n < Lq; ++n) {
              const T zv = Zc[n];
              a0[n] += g0 * zv;
              a1[n] += g1 * zv;
              a2[n] += g2 * zv;
              a3[n] += g3 * zv;
            }
          }
        } else {
          for (int k = 0; k < nr; ++k) {
            const T* Gr = G + int64_t(r0 + k) * Lg;
            T* ak = acc + k * Lq;
            for (int c = 0; c < Lg; ++c) {
              const T g = Gr[c];
              const T* Zc = Z + int64_t(c) * Lq;
              for (int n = 0; n < Lq; ++n) ak[n] += g * Zc[n];
            }
          }
        }
        for (int k = 0; k < nr; ++k) {
          const int64_t r = r0 + k;
          const T* Zr = Z + r * Lq;
          const T* Wr = W + r * Lq;
          const T* ak = acc + k * Lq;
          T* Wnr = Wn + r * Lq;
          for (int n = 0; n < Lq; ++n) {
            T v = fista_prox(Zr[n], ak[n], step, thr);
            Wnr[n] = v;
            T d = v - Wr[n];
            diff2[n] += d * d;
            norm2[n] += v * v;
          }
        }
      }
      const T tn = fista_t_next(t);
      const T mom = (t - T(1)) / tn;
      t = tn;
      for (int r = 0; r < Lg; ++r) {
        T* Zr = Z + int64_t(r) * Lq;
        T* Wr = W + int64_t(r) * Lq;
        const T* Wnr = Wn + int64_t(r) * Lq;
        for (int n = 0; n < Lq; ++n) {
          const bool on = live[n] != T(0);
          Zr[n] = on ? Wnr[n] + mom * (Wnr[n] - Wr[n]) : Zr[n];
          Wr[n] = on ? Wnr[n] : Wr[n];
        }
      }
      for (int n = 0; n < Lq; ++n)
        if (live[n] != T(0) && fista_done(diff2[n], norm2[n], tol2)) {
          live[n] = T(0);
          --n_live;
        }
    }
  }
  // errors: acc = w.b, diff2 = w^T G w (reusing the scratch)
  for (int n = 0; n < Lq; ++n) acc[n] = diff2[n] = T(0);
  for (int r = 0; r < Lg; ++r) {
    const T* Gr = G + int64_t(r) * Lg;
    const T* Wr = W + int64_t(r) * Lq;
    const T* Br = B + int64_t(r) * Lq;
    for (int n = 0; n < Lq; ++n) norm2[n] = T(0);
    for (int c = 0; c < Lg; ++c) {
      const T g = Gr[c];
      const T* Wc = W + int64_t(c) * Lq;
      for (int n = 0; n < Lq; ++n) norm2[n] += g * Wc[n];
    }
    for (int n = 0; n < Lq; ++n) {
      acc[n] += Wr[n] * Br[n];
      diff2[n] += Wr[n] * norm2[n];
    }
  }
  for (int n = 0; n < Lq; ++n) err[n] = recon_error(xx[n], acc[n], diff2[n]);
}

// Where the data of one DSR tile lives: pair (i, j) = query a0 + i, gallery b0 + j,
// query cell n. Task q = (i * nc + j) * Lq + n.
//   G of gallery j:        G + j * Lg * Lg
//   b = Y_j^T x_{i,n}:     B[(i * nc + j) * Lg * Lq + r * Lq + n]  (r = gallery cell)
//   |x_{i,n}|^2:            xx[i * Lq + n]
//   lambda_max(G_j):        lip[j]
//   error output:          err[q]
// The tile's shape and solver options (DsrDims, shared with the host's DsrArgs), then
// its data.
struct DsrDims {
  int64_t mc = 0, nc = 0;
  int Lq = 0, Lg = 0;
  FistaOptions opt;
};

template <typename T>
struct DsrTile : DsrDims {
  const T* G = nullptr;
  const T* B = nullptr;
  const T* xx = nullptr;
  const T* lip = nullptr;
  PD_HD int64_t num_tasks() const { return mc * nc * Lq; }
};

template <typename T>
PD_HD T dsr_task(const DsrTile<T>& L, int64_t q, T* w, T* wn, T* z) {
  const int64_t pair = q / L.Lq;
  const int n = int(q - pair * L.Lq);
  const int64_t i = pair / L.nc, j = pair - i * L.nc;
  const T* b = L.B + pair * int64_t(L.Lg) * L.Lq + n;
  return dsr_cell(L.G + j * int64_t(L.Lg) * L.Lg, L.Lg, b, int64_t(L.Lq), L.xx[i * L.Lq + n],
                  L.lip[j], L.opt, w, wn, z);
}

// All query cells of pair p = i * nc + j (err: Lq entries of the task layout).
template <typename T>
PD_HD void dsr_pair_task(const DsrTile<T>& L, int64_t p, T* scratch, T* err) {
  const int64_t i = p / L.nc, j = p - i * L.nc;
  dsr_pair(L.G + j * int64_t(L.Lg) * L.Lg, L.Lg, L.B + p * int64_t(L.Lg) * L.Lq, L.Lq,
           L.xx + i * L.Lq, L.lip[j], L.opt, scratch, err + p * L.Lq);
}

// ------------------------------------------------------------- CUDA kernels
// The bodies of the CUDA kernels. The __global__ shims (common/cuda_launch.cuh)
// compute t and call run; the CPU emulation (common/emulate.h) runs the same bodies
// over the same grid.
constexpr int kCudaThreads = 128;

// One thread per pair q of the tile.
struct PartForwardKernel {
  template <typename T>
  PD_HD static void run(ThreadPos t, PartTile<T> L, T* out) {
    if (t.index >= L.num_pairs()) return;
    part_pair_forward(L, t.index, out);
  }
};

struct PartBackwardKernel {
  template <typename T>
  PD_HD static void run(ThreadPos t, PartTile<T> L, const T* gout, T* cw, T* ce) {
    if (t.index >= L.num_pairs()) return;
    part_pair_backward(L, t.index, gout, cw, ce);
  }
};

// One thread per (pair, query cell) task; consecutive threads take consecutive
// query cells of one pair: they share the gallery's Gram matrix (broadcast reads)
// and read adjacent entries of B. kCap >= Lg: the size of the three per-thread
// vectors (w, w_next, z), so that a small Lg does not hold kMaxCells of each.
template <int kCap>
struct DsrKernel {
  template <typename T>
  PD_HD static void run(ThreadPos t, DsrTile<T> L, T* err) {
    if (t.index >= L.num_tasks()) return;
    T w[kCap], wn[kCap], z[kCap];
    err[t.index] = dsr_task(L, t.index, w, wn, z);
  }
};

// Calls fn(DsrKernel<cap>{}) with the smallest capacity that holds Lg (<= kMaxCells).
template <typename Fn>
void with_dsr_kernel(int Lg, const Fn& fn) {
  if (Lg <= 16)
    fn(DsrKernel<16>{});
  else if (Lg <= 32)
    fn(DsrKernel<32>{});
  else if (Lg <= 64)
    fn(DsrKernel<64>{});
  else if (Lg <= 128)
    fn(DsrKernel<128>{});
  else
    fn(DsrKernel<kMaxCells>{});
}

}  // namespace parts
}  // namespace partdist
