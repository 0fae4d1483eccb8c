// Per-element math of the IDLA cross-input neighborhood differences, written once.
//
// Everything here is an inline host+device function: the CPU backend
// (neighborhood_cpu.cpp, at::parallel_for) and the CUDA kernels (the bodies at the
// end, one thread per element, launched by neighborhood_launch.h on the GPU or in its
// CPU emulation) both call these. The CPU forward builds whole output rows from
// expanded f / g rows for speed, with split_out, neighbor, inside, g_or_zero and
// diff_value from here; the CUDA kernel maps each output cell with out_to_block and
// diff_cell; both backwards use the gather functions below.
//
// Definitions (Ahmed, Jones, Marks, CVPR 2015). f, g are [B, C, H, W]; k is odd,
// r = k / 2. The output K is [B, C, H*k, W*k] ("tiled" IDLA layout): the k x k
// block at block position (y, x) holds
//
//     K(y*k + u, x*k + v) = f(y, x) - g(y + u - r, x + v - r),   u, v in [0, k),
//
// with g read as 0 outside the map. Per (b, c) plane:
//
//   dL/df(y, x)   =  sum_{u, v} dL/dK(y*k + u, x*k + v)                 (the block)
//   dL/dg(y', x') = -sum_{u, v} dL/dK((y'-u+r)*k + u, (x'-v+r)*k + v)   (gather)
//
// where the gather runs over the offsets u (v) for which the block row
// y = y' - u + r (column x = x' - v + r) lies inside the map: every output cell
// that read g(y', x'), and nothing else. Both gradients are sums owned by one
// input element, so the backward needs no atomics.
//
// Types: T is the storage type, A the accumulation type (at::opmath_type<T>:
// float for float16 / bfloat16 / float32, double for float64), I the index type
// (int32_t when every index fits, else int64_t).
#pragma once

#include <cstdint>

#include "../common/hd.h"
#include "../common/launch.h"

namespace partdist {
namespace nbhd {

// --------------------------------------------------------------- index mapping
// Output coordinate Y (along one axis) -> block coordinate y and offset u.
template <typename I>
PD_HD void split_out(I Y, I k, I& y, I& u) {
  y = Y / k;
  u = Y - y * k;
}

// Output cell (Y, X) of a plane -> block position (y, x) and offset (u, v).
template <typename I>
PD_HD void out_to_block(I Y, I X, I k, I& y, I& u, I& x, I& v) {
  split_out(Y, k, y, u);
  split_out(X, k, x, v);
}

// Coordinate of g read at offset u of block coordinate y (may lie outside the map).
template <typename I>
PD_HD I neighbor(I y, I u, I r) {
  return y + u - r;
}

// Block coordinate whose offset u reads coordinate i of g (inverse of neighbor).
template <typename I>
PD_HD I reader(I i, I u, I r) {
  return i - u + r;
}

template <typename I>
PD_HD bool inside(I i, I n) {
  return i >= 0 && i < n;
}

// Offsets u in [lo, hi] whose block coordinate y = i - u + r lies in [0, n):
// the output cells along one axis that read coordinate i of g.
template <typename I>
PD_HD void gather_range(I i, I n, I k, I r, I& lo, I& hi) {
  lo = i + r - n + 1;
  if (lo < 0) lo = 0;
  hi = i + r;
  if (hi > k - 1) hi = k - 1;
}

// Position inside the output plane of the cell at block coordinate y, offset u.
template <typename I>
PD_HD I block_to_out(I y, I u, I k) {
  return y * k + u;
}

// -------------------------------------------------------------------- forward
// g(gy, gx) of a (b, c) plane (contiguous H x W), read as 0 outside the map.
template <typename A, typename T, typename I>
PD_HD A g_or_zero(const T* gp, I H, I W, I gy, I gx) {
  return (inside(gy, H) && inside(gx, W)) ? static_cast<A>(gp[gy * W + gx]) : A(0);
}

// The value of a cell from f(y, x) and the g value it reads.
template <typename T, typename A>
PD_HD T diff_value(A fv, A gv) {
  return static_cast<T>(fv - gv);
}

// One output cell: f(y, x) - g(y + u - r, x + v - r), g = 0 outside the map.
// fp, gp point at the start of the (b, c) plane (contiguous H x W).
template <typename A, typename T, typename I>
PD_HD T diff_cell(const T* fp, const T* gp, I H, I W, I r, I y, I u, I x, I v) {
  return diff_value<T>(static_cast<A>(fp[y * W + x]),
                       g_or_zero<A>(gp, H, W, neighbor(y, u, r), neighbor(x, v, r)));
}

// ------------------------------------------------------------------- backward
// The gradient of an element is a double sum, over the offsets u (which output
// row) and v (which cell of that row). The functions below split it that way:
// the row-level sums (over v) take any row accessor, so that a launcher can
// either call them once per output row (per-element gather: the CUDA kernel) or
// once on the sum of the rows of the u range (the CPU launcher sums those rows
// first, contiguously, which vectorizes). Both are the same linear map.

// Strided read access to one (b, c) plane of a tensor shaped like the output
// (the incoming gradient: it may be non-contiguous, expanded or permuted).
// kUnitX: the W*k dim is known to have stride 1 (the usual case), so that the
// compiler sees contiguous rows.
template <typename T, typename I, bool kUnitX = false>
struct PlaneView {
  const T* p;  // start of the plane
  I sy, sx;    // strides of the H*k and W*k dims
  PD_HD T operator()(I Y, I X) const { return p[Y * sy + (kUnitX ? X : X * sx)]; }
};

// Output row Y of a PlaneView as a row accessor.
template <typename View, typename I>
struct RowOf {
  const View& plane;
  I Y;
  PD_HD auto operator()(I X) const { return plane(Y, X); }
};

// Row accessor over a dense buffer (e.g. a sum of output rows).
template <typename A>
struct DenseRow {
  const A* p;
  template <typename I>
  PD_HD A operator()(I X) const {
    return p[X];
  }
};

// Within one output row: the k cells of block column x (dL/df's share of the row).
template <typename A, typename Row, typename I>
PD_HD A block_row_sum(const Row& row, I k, I x) {
  A s = A(0);
  const I X0 = x * k;
  for (I v = 0; v < k; ++v) s += static_cast<A>(row(X0 + v));
  return s;
}

// Within one output row: the cells that read g column xg through the offsets
// v in [vlo, vhi] (the range gather_range gives), i.e. X = (xg - v + r)*k + v.
template <typename A, typename Row, typename I>
PD_HD A gather_row_sum(const Row& row, I k, I r, I xg, I vlo, I vhi) {
  A s = A(0);
  for (I v = vlo; v <= vhi; ++v) s += static_cast<A>(row(block_to_out(reader(xg, v, r), v, k)));
  return s;
}

// dL/df(y, x): the sum of the k x k block (rows y*k + u, u in [0, k)).
template <typename A, typename View, typename I>
PD_HD A grad_f_cell(const View& go, I k, I y, I x) {
  A s = A(0);
  for (I u = 0; u < k; ++u) s += block_row_sum<A>(RowOf<View, I>{go, block_to_out(y, u, k)}, k, x);
  return s;
}

// Output row read through offset u by g row yg (the row of block row yg - u + r).
template <typename I>
PD_HD I gather_row(I yg, I u, I k, I r) {
  return block_to_out(reader(yg, u, r), u, k);
}

// dL/dg(yg, xg): minus the sum of every output cell that read g(yg, xg):
// rows gather_row(yg, u) for u in gather_range(yg, H), and in each row the
// cells of gather_row_sum for v in gather_range(xg, W).
template <typename A, typename View, typename I>
PD_HD A grad_g_cell(const View& go, I H, I W, I k, I r, I yg, I xg) {
  I ulo, uhi, vlo, vhi;
  gather_range(yg, H, k, r, ulo, uhi);
  gather_range(xg, W, k, r, vlo, vhi);
  A s = A(0);
  for (I u = ulo; u <= uhi; ++u)
    s += gather_row_sum<A>(RowOf<View, I>{go, gather_row(yg, u, k, r)}, k, r, xg, vlo, vhi);
  return -s;
}

// ------------------------------------------------------- kernel-size dispatch
// Calls fn(std::integral_constant<int, KS>{}) with KS = k for the common kernel
// sizes 1, 3, 5, 7 and KS = 0 ("use the runtime k") otherwise, so that the
// launchers can instantiate their loops with k known at compile time (host code).
template <int KS>
struct KernelSize {
  static constexpr int value = KS;
};

// fn(KernelSize<KS>{}) for the KS of KSs equal to k, if any; whether there was one.
template <int... KSs, typename Fn>
bool dispatch_fixed_size(int64_t k, const Fn& fn) {
  return ((k == KSs ? (fn(KernelSize<KSs>{}), true) : false) || ...);
}

template <typename Fn>
void dispatch_kernel_size(int64_t k, const Fn& fn) {
  if (!dispatch_fixed_size<1, 3, 5, 7>(k, fn)) fn(KernelSize<0>{});
}

// k itself when KS == 0, else the compile-time KS.
template <int KS, typename I>
PD_HD I fixed_k(I k) {
  return KS > 0 ? I(KS) : k;
}

// ------------------------------------------------------------------ geometry
// What the launchers need besides the data pointers.
struct Geom {
  int64_t B = 0, C = 0, H = 0, W = 0;
  int64_t k = 1;
  // Strides of the incoming gradient [B, C, H*k, W*k] (backward only).
  int64_t gsb = 0, gsc = 0, gsy = 0, gsx = 0;

  int64_t r() const { return k / 2; }
  int64_t planes() const { return B * C; }
  int64_t in_numel() const { return B * C * H * W; }
  int64_t out_numel() const { return B * C * H * k * W * k; }
};

// ------------------------------------------------------------- CUDA kernels
// The bodies of the CUDA kernels (grid-stride loops over t.index, step t.count).
// The __global__ shims (common/cuda_launch.cuh) compute t and call run; the CPU
// emulation (common/emulate.h) runs the same bodies over the same grid.
constexpr int kCudaThreads = 256;
constexpr int64_t kMaxCudaBlocks = int64_t(1) << 20;  // grid cap (grid-stride loops)

// One thread per output element: out[idx] for idx < n = B*C*H*k*W*k.
template <typename A>
struct ForwardKernel {
  template <typename T, typename I>
  PD_HD static void run(ThreadPos t, const T* f, const T* g, T* out, I n, I H, I W, I k, I r) {
    const I Hk = H * k, Wk = W * k;
    for (I idx = I(t.index); idx < n; idx += I(t.count)) {
      const I X = idx % Wk;
      const I q = idx / Wk;
      const I Y = q % Hk;
      const I p = q / Hk;
      I y, u, x, v;
      out_to_block(Y, X, k, y, u, x, v);
      out[idx] = diff_cell<A>(f + p * H * W, g + p * H * W, H, W, r, y, u, x, v);
    }
  }
};

// One thread per f / g element (idx < n = B*C*H*W): both gradients of the element
// by gathering from the incoming gradient (strides sb, sc, sy, sx), no atomics.
template <typename A>
struct BackwardKernel {
  template <typename T, typename I>
  PD_HD static void run(ThreadPos t, const T* go, T* gf, T* gg, I n, I C, I H, I W, I k, I r, I sb,
                        I sc, I sy, I sx) {
    for (I idx = I(t.index); idx < n; idx += I(t.count)) {
      const I x = idx % W;
      const I q = idx / W;
      const I y = q % H;
      const I p = q / H;
      const I b = p / C, c = p % C;
      const PlaneView<T, I> view{go + b * sb + c * sc, sy, sx};
      gf[idx] = static_cast<T>(grad_f_cell<A>(view, k, y, x));
      gg[idx] = static_cast<T>(grad_g_cell<A>(view, H, W, k, r, y, x));
    }
  }
};

}  // namespace nbhd
}  // namespace partdist
