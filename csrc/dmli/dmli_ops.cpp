// Host drivers and registration of the DMLI family:
//   local_dist_matrix, dmli, dmli_path, batch_local_dist, local_dist
// and their backward ops. The drivers are device-generic: GEMMs through ATen,
// the per-pair math through the CPU or CUDA launchers of dmli_kernels.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "dmli_kernels.h"

namespace partdist {
namespace dmli {
namespace {

using at::Tensor;

// float16 / bfloat16 are computed in float32, float64 in float64.
at::ScalarType compute_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_stripes(const char* op, const char* name, const Tensor& t, const char* layout) {
  check_floating(op, name, t);
  check_rank(op, name, t, 3, layout);
  TORCH_CHECK(t.size(1) >= 1, op, ": ", name, " must have at least one stripe (dim 1), got shape ",
              shape_str(t));
  TORCH_CHECK(t.size(2) >= 1, op, ": ", name,
              " must have at least one feature channel (dim 2), got shape ", shape_str(t));
}

void check_max_stripes(const char* op, int64_t m, int64_t n) {
  TORCH_CHECK(m <= kMaxStripes && n <= kMaxStripes, op, ": at most ", kMaxStripes,
              " stripes per image are supported by the DP kernels, got m=", m, ", n=", n);
}

// x [N,m,C], y [N,n,C] (aligned) or [M,m,C], [N,n,C] (all pairs).
void check_xy(const char* op, const Tensor& x, const Tensor& y, bool aligned, bool dp) {
  check_stripes(op, "x", x, aligned ? "[N, m, C]" : "[M, m, C]");
  check_stripes(op, "y", y, "[N, n, C]");
  check_same(op, "y", y, "x", x);
  TORCH_CHECK(x.size(2) == y.size(2), op, ": x and y must have the same number of channels C",
              " (dim 2), got x ", shape_str(x), " and y ", shape_str(y));
  if (aligned)
    TORCH_CHECK(x.size(0) == y.size(0), op, ": x and y must hold the same number of images N",
                " (dim 0), got x ", shape_str(x), " and y ", shape_str(y));
  if (dp) check_max_stripes(op, x.size(1), y.size(1));
}

void check_dist(const char* op, const Tensor& d) {
  check_floating(op, "dist", d);
  check_rank(op, "dist", d, 3, "[P, m, n]");
  TORCH_CHECK(d.size(1) >= 1 && d.size(2) >= 1, op,
              ": dist must have m >= 1 and n >= 1 (dims 1, 2), got shape ", shape_str(d));
  check_max_stripes(op, d.size(1), d.size(2));
}

void check_grad(const char* op, const Tensor& g, at::IntArrayRef expected, const Tensor& ref) {
  check_floating(op, "grad", g);
  TORCH_CHECK(g.sizes() == expected, op, ": grad must have shape ", expected, ", got ",
              shape_str(g));
  TORCH_CHECK(g.device() == ref.device(), op, ": grad must be on ", ref.device());
}

// Inputs cast to the compute type, contiguous, and their squared stripe norms.
struct Prepared {
  Tensor x, y, xx, yy;
};

Prepared prepare(const Tensor& x, const Tensor& y) {
  Prepared p;
  auto ct = compute_type(x);
  // detached: the GEMMs may run on worker threads, which do not inherit the
  // dispatcher state that keeps this op below autograd
  p.x = x.detach().to(ct).contiguous();
  p.y = y.detach().to(ct).contiguous();
  p.xx = p.x.pow(2).sum(-1).contiguous();
  p.yy = p.y.pow(2).sum(-1).contiguous();
  return p;
}

// Layout of N aligned pairs whose cells are stored as a contiguous [N, m, n].
PairLayout aligned_layout(int64_t N, int64_t m, int64_t n) {
  PairLayout L;
  L.num_pairs = N;
  L.aligned = true;
  L.m = int(m);
  L.n = int(n);
  L.xy_sa = m * n;
  L.xy_sb = 0;
  L.xy_si = n;
  L.xx_sa = m;
  L.yy_sb = n;
  L.out_sa = 1;
  L.out_sb = 0;
  return L;
}

// Chain rule from cell weights W to the stripes: with W[..., r, s] the weight of
// cell (x_r, y_s), dL/dx_r += sum_s W_rs (x_r - y_s), dL/dy_s -= sum_r W_rs (x_r - y_s).
// Works for a batch ([N, m, n], bmm) and for a 2-D tile ([R, S], mm).
void accumulate_grads(const Tensor& W, const Tensor& x, const Tensor& y, Tensor gx, Tensor gy) {
  gx.addcmul_(W.sum(-1, true), x).sub_(at::matmul(W, y));
  gy.addcmul_(W.sum(-2).unsqueeze(-1), y).sub_(at::matmul(W.transpose(-1, -2), x));
}

// DP options of an op call, checked: gamma >= 0, band (negative = none) leaving
// at least one monotone path, unaligned only for m == n.
DPRule make_rule(const char* op, int64_t m, int64_t n, double gamma, double band, bool diag) {
  TORCH_CHECK(std::isfinite(gamma) && gamma >= 0.0, op,
              ": gamma must be a finite number >= 0 (0 = hard minimum), got ", gamma);
  TORCH_CHECK(!std::isnan(band), op, ": band must be a number >= 0 or None, got nan");
  DPRule r;
  r.gamma = gamma;
  r.band = band < 0.0 ? -1.0 : band;
  r.diag = diag;
  if (diag) {
    TORCH_CHECK(m == n, op, ": the unaligned distance needs as many stripes in x as in y (m == n), got m=", m,
                ", n=", n);
    TORCH_CHECK(gamma == 0.0 && r.band < 0.0, op, ": gamma and band do not apply to the unaligned distance");
  }
  if (r.band >= 0.0 && m > 0 && n > 0) {
    // reach[j]: (i, j) is reachable by a monotone path of allowed cells from (0, 0)
    std::vector<char> reach(n, 0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        bool from = (i == 0 && j == 0) || (i > 0 && reach[j]) || (j > 0 && reach[j - 1]);
        reach[j] = from && r.allowed(int(i), int(j), int(m), int(n));
      }
    TORCH_CHECK(reach[n - 1], op, ": band=", band, " leaves no monotone path from (0, 0) to (m-1, n-1) for m=", m,
                ", n=", n, " (cells must satisfy |i*(n-1)/(m-1) - j| <= band); use a wider band");
  }
  return r;
}

// ------------------------------------------------- aligned pairs (GEMM form)
// The aligned ops on devices where batched GEMMs pay off (CUDA): dot products by
// at::bmm, then the launcher, and the chain rule as matrix products.
template <ForwardLauncher F>
void aligned_forward_gemm(Mode mode, bool normalize, const DPRule& rule, const Tensor& x,
                          const Tensor& y, const Tensor& out) {
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  Tensor xy = at::bmm(x, y.transpose(1, 2)).contiguous();
  PairLayout L = aligned_layout(N, m, n);
  L.rule = rule;
  F(L, mode, normalize, xy, x.pow(2).sum(-1), y.pow(2).sum(-1), out);
}

template <BackwardLauncher B>
void aligned_backward_gemm(Mode mode, bool normalize, const DPRule& rule, const Tensor& grad,
                           const Tensor& x, const Tensor& y, const Tensor& gx, const Tensor& gy) {
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  Tensor xy = at::bmm(x, y.transpose(1, 2)).contiguous();
  Tensor W = at::empty_like(xy);
  PairLayout L = aligned_layout(N, m, n);
  L.rule = rule;
  B(L, mode, normalize, grad, xy, x.pow(2).sum(-1), y.pow(2).sum(-1), W);
  gx.zero_();
  gy.zero_();
  accumulate_grads(W, x, y, gx, gy);
}

// ------------------------------------------- local_dist_matrix, batch_local_dist
Tensor aligned_impl(const char* op, const Tensor& x, const Tensor& y, bool normalize, Mode mode,
                    const DPRule& rule_in, const Launchers& K) {
  check_xy(op, x, y, /*aligned=*/true, /*dp=*/mode != Mode::kCells);
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  const DPRule rule = make_rule(op, m, n, rule_in.gamma, rule_in.band, rule_in.diag);
  auto ct = compute_type(x);
  Tensor xc = x.to(ct).contiguous(), yc = y.to(ct).contiguous();
  Tensor out = mode == Mode::kCells ? at::empty({N, m, n}, xc.options()) : at::empty({N}, xc.options());
  if (N > 0) K.aligned_forward(mode, normalize, rule, xc, yc, out);
  return out.to(x.scalar_type());
}

std::tuple<Tensor, Tensor> aligned_backward_impl(const char* op, const Tensor& grad,
                                                 const Tensor& x, const Tensor& y, bool normalize,
                                                 Mode mode, const DPRule& rule_in,
                                                 const Launchers& K) {
  check_xy(op, x, y, true, mode != Mode::kCells);
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  const DPRule rule = make_rule(op, m, n, rule_in.gamma, rule_in.band, rule_in.diag);
  if (mode == Mode::kCells)
    check_grad(op, grad, {N, m, n}, x);
  else
    check_grad(op, grad, {N}, x);
  auto ct = compute_type(x);
  Tensor xc = x.to(ct).contiguous(), yc = y.to(ct).contiguous();
  Tensor g = grad.to(ct).contiguous();
  Tensor gx = at::empty_like(xc), gy = at::empty_like(yc);
  if (N > 0) K.aligned_backward(mode, normalize, rule, g, xc, yc, gx, gy);
  return {gx.to(x.scalar_type()), gy.to(y.scalar_type())};
}

Tensor local_dist_matrix_impl(const Tensor& x, const Tensor& y, bool normalize,
                              const Launchers& K) {
  return aligned_impl("partdist.local_dist_matrix", x, y, normalize, Mode::kCells, DPRule(), K);
}

std::tuple<Tensor, Tensor> local_dist_matrix_backward_impl(const Tensor& grad, const Tensor& x,
                                                           const Tensor& y, bool normalize,
                                                           const Launchers& K) {
  return aligned_backward_impl("partdist.local_dist_matrix_backward", grad, x, y, normalize,
                               Mode::kCells, DPRule(), K);
}

DPRule rule_of(double gamma, double band, bool unaligned) {
  DPRule r;
  r.gamma = gamma;
  r.band = band;
  r.diag = unaligned;
  return r;
}

Tensor batch_local_dist_impl(const Tensor& x, const Tensor& y, bool normalize, double gamma,
                             double band, bool unaligned, const Launchers& K) {
  return aligned_impl("partdist.batch_local_dist", x, y, normalize, Mode::kFused,
                      rule_of(gamma, band, unaligned), K);
}

std::tuple<Tensor, Tensor> batch_local_dist_backward_impl(const Tensor& grad, const Tensor& x,
                                                          const Tensor& y, bool normalize,
                                                          double gamma, double band,
                                                          bool unaligned, const Launchers& K) {
  return aligned_backward_impl("partdist.batch_local_dist_backward", grad, x, y, normalize,
                               Mode::kFused, rule_of(gamma, band, unaligned), K);
}

// ------------------------------------------------------------------------ dmli
Tensor dmli_impl(const Tensor& dist, double gamma, double band, const Launchers& K) {
  const char* op = "partdist.dmli";
  check_dist(op, dist);
  const int64_t P = dist.size(0), m = dist.size(1), n = dist.size(2);
  Tensor d = dist.to(compute_type(dist)).contiguous();
  Tensor out = at::empty({P}, d.options());
  PairLayout L = aligned_layout(P, m, n);
  L.rule = make_rule(op, m, n, gamma, band, false);
  K.forward(L, Mode::kDmli, false, d, Tensor(), Tensor(), out);
  return out.to(dist.scalar_type());
}

Tensor dmli_weights(const char* op, const Tensor& grad, const Tensor& dist, double gamma,
                    double band, const Launchers& K) {
  const int64_t P = dist.size(0), m = dist.size(1), n = dist.size(2);
  Tensor d = dist.to(compute_type(dist)).contiguous();
  Tensor g = grad.to(d.scalar_type()).contiguous();
  Tensor w = at::empty_like(d);
  PairLayout L = aligned_layout(P, m, n);
  L.rule = make_rule(op, m, n, gamma, band, false);
  K.backward(L, Mode::kDmli, false, g, d, Tensor(), Tensor(), w);
  return w;
}

Tensor dmli_backward_impl(const Tensor& grad, const Tensor& dist, double gamma, double band,
                          const Launchers& K) {
  const char* op = "partdist.dmli_backward";
  check_dist(op, dist);
  check_grad(op, grad, {dist.size(0)}, dist);
  return dmli_weights(op, grad, dist, gamma, band, K).to(dist.scalar_type());
}

// Cells that receive gradient from the DMLI value: the optimal path (the union
// of the tied optimal paths where the minimum ties).
// With gamma > 0: the expected alignment (soft path), in the dtype of dist.
Tensor dmli_path_impl(const Tensor& dist, double gamma, double band, const Launchers& K) {
  const char* op = "partdist.dmli_path";
  check_dist(op, dist);
  Tensor ones = at::ones({dist.size(0)}, dist.options().dtype(compute_type(dist)));
  Tensor w = dmli_weights(op, ones, dist, gamma, band, K);
  return gamma > 0.0 ? w.to(dist.scalar_type()) : w.ne(0);
}

// ------------------------------------------------------------------ local_dist
// All pairs, tile by tile: a GEMM of Mc*m query stripes against Nc*n gallery
// stripes, then the fused normalize + DP kernel over the Mc*Nc pairs of the tile.
// Extra memory: one tile buffer (Mc*m*Nc*n values), independent of M*N.
struct Tiling {
  int64_t mc, nc;
};

Tiling tiling_for(int64_t M, int64_t N, int64_t chunk_size, bool cuda) {
  int64_t chunk = chunk_size > 0 ? chunk_size : (cuda ? (int64_t(1) << 20) : 4096);
  int64_t mc = std::max<int64_t>(1, int64_t(std::sqrt(double(chunk))) / 2);
  mc = std::min(mc, std::max<int64_t>(M, 1));
  int64_t nc = std::max<int64_t>(1, std::min(std::max<int64_t>(N, 1), chunk / mc));
  mc = std::max<int64_t>(1, std::min(std::max<int64_t>(M, 1), chunk / nc));
  return {mc, nc};
}

PairLayout tile_layout(int64_t mc, int64_t nc, int64_t m, int64_t n, int64_t out_row) {
  PairLayout L;
  L.num_pairs = mc * nc;
  L.nb = nc;
  L.aligned = false;
  L.m = int(m);
  L.n = int(n);
  L.xy_si = nc * n;      // tile is [mc*m, nc*n]
  L.xy_sa = m * nc * n;  // query a starts at row a*m
  L.xy_sb = n;           // gallery b starts at column b*n
  L.xx_sa = m;
  L.yy_sb = n;
  L.out_sa = out_row;
  L.out_sb = 1;
  return L;
}

// Calls fn(a0, mc, b0, nc, buf) for every tile; buf is a scratch tensor of one
// tile's size. CUDA: tiles in sequence on the stream (each one a large GEMM and a
// kernel over its pairs). CPU: tiles in parallel, each thread with its own buffer
// and a single-threaded GEMM, so that GEMM output stays in cache for the kernel.
template <typename TileFn>
void for_each_tile(int64_t M, int64_t N, const Tiling& T, int64_t tile_elems,
                   const at::TensorOptions& opts, bool parallel, TileFn fn) {
  const int64_t tn = (N + T.nc - 1) / T.nc, tiles = ((M + T.mc - 1) / T.mc) * tn;
  auto run = [&](int64_t begin, int64_t end) {
    // zeros: the CPU kernel reads (and drops) padding lanes past the last column
    Tensor buf = parallel ? at::zeros({tile_elems}, opts) : at::empty({tile_elems}, opts);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t a0 = (t / tn) * T.mc, b0 = (t % tn) * T.nc;
      fn(a0, std::min(T.mc, M - a0), b0, std::min(T.nc, N - b0), buf);
    }
  };
  if (parallel)
    at::parallel_for(0, tiles, 1, run);
  else
    run(0, tiles);
}

void check_chunk(const char* op, int64_t chunk_size) {
  TORCH_CHECK(chunk_size >= 0, op, ": chunk_size must be positive (or None / 0 for automatic), got ",
              chunk_size);
}

Tensor local_dist_impl(const Tensor& x, const Tensor& y, bool normalize, int64_t chunk_size,
                       double gamma, double band, bool unaligned, const Launchers& K) {
  const char* op = "partdist.local_dist";
  check_xy(op, x, y, false, true);
  check_chunk(op, chunk_size);
  const int64_t M = x.size(0), N = y.size(0), m = x.size(1), n = y.size(1), C = x.size(2);
  const DPRule rule = make_rule(op, m, n, gamma, band, unaligned);
  auto P = prepare(x, y);
  Tensor out = at::empty({M, N}, P.x.options());
  if (M == 0 || N == 0) return out.to(x.scalar_type());
  Tensor x2 = P.x.view({M * m, C}), y2 = P.y.view({N * n, C});
  Tensor xx = P.xx.view({M * m}), yy = P.yy.view({N * n});
  Tiling T = tiling_for(M, N, chunk_size, x.is_cuda());
  if (!x.is_cuda()) {
    // CPU: lane-contiguous tiles (one GEMM per stripe j of the second images, into
    // xy[j]), cells computed in SIMD lanes inside the DP (allpairs_tile_forward_cpu).
    const int64_t pad = kAllPairsLanes;
    Tensor yyT = at::zeros({n, N + pad}, P.x.options());
    yyT.narrow(1, 0, N).copy_(yy.view({N, n}).t());
    for_each_tile(M, N, T, n * T.mc * m * T.nc + pad, P.x.options(), true,
                  [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc, const Tensor& buf) {
      const Tensor xa = x2.narrow(0, a0 * m, mc * m);
      for (int64_t j = 0; j < n; ++j) {
        Tensor xy_j = buf.narrow(0, j * mc * m * nc, mc * m * nc).view({mc * m, nc});
        at::mm_out(xy_j, xa, P.y.select(1, j).narrow(0, b0, nc).t());
      }
      AllPairsTile t{mc, nc, int(m), int(n), N + pad, N};
      allpairs_tile_forward_cpu(t, normalize, rule, buf, xx.narrow(0, a0 * m, mc * m),
                                yyT.narrow(1, b0, nc), out.narrow(0, a0, mc).narrow(1, b0, nc));
    });
    return out.to(x.scalar_type());
  }
  for_each_tile(M, N, T, T.mc * m * T.nc * n, P.x.options(), !x.is_cuda(),
                [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc, const Tensor& buf) {
    Tensor xy = buf.narrow(0, 0, mc * m * nc * n).view({mc * m, nc * n});
    at::mm_out(xy, x2.narrow(0, a0 * m, mc * m), y2.narrow(0, b0 * n, nc * n).t());
    PairLayout L = tile_layout(mc, nc, m, n, N);
    L.rule = rule;
    K.forward(L, Mode::kFused, normalize, xy,
              xx.narrow(0, a0 * m, mc * m), yy.narrow(0, b0 * n, nc * n),
              out.narrow(0, a0, mc).narrow(1, b0, nc));
  });
  return out.to(x.scalar_type());
}

std::tuple<Tensor, Tensor> local_dist_backward_impl(const Tensor& grad, const Tensor& x,
                                                    const Tensor& y, bool normalize,
                                                    int64_t chunk_size, double gamma, double band,
                                                    bool unaligned, const Launchers& K) {
  const char* op = "partdist.local_dist_backward";
  check_xy(op, x, y, false, true);
  check_chunk(op, chunk_size);
  const int64_t M = x.size(0), N = y.size(0), m = x.size(1), n = y.size(1), C = x.size(2);
  const DPRule rule = make_rule(op, m, n, gamma, band, unaligned);
  check_grad(op, grad, {M, N}, x);
  auto P = prepare(x, y);
  Tensor gx = at::zeros_like(P.x), gy = at::zeros_like(P.y);
  if (M > 0 && N > 0) {
    Tensor g = grad.to(P.x.scalar_type()).contiguous();
    Tensor x2 = P.x.view({M * m, C}), y2 = P.y.view({N * n, C});
    Tensor gx2 = gx.view({M * m, C}), gy2 = gy.view({N * n, C});
    Tensor xx = P.xx.view({M * m}), yy = P.yy.view({N * n});
    // Tiles in sequence (tiles of one query block write the same rows of gx).
    Tiling T = tiling_for(M, N, chunk_size, x.is_cuda());
    Tensor buf = at::empty({T.mc * m * T.nc * n}, P.x.options());
    Tensor wbuf = at::empty_like(buf);
    for_each_tile(M, N, T, 0, P.x.options(), false,
                  [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc, const Tensor&) {
      Tensor xt = x2.narrow(0, a0 * m, mc * m), yt = y2.narrow(0, b0 * n, nc * n);
      Tensor xy = buf.narrow(0, 0, mc * m * nc * n).view({mc * m, nc * n});
      Tensor W = wbuf.narrow(0, 0, mc * m * nc * n).view({mc * m, nc * n});
      at::mm_out(xy, xt, yt.t());
      PairLayout L = tile_layout(mc, nc, m, n, N);
      L.rule = rule;
      K.backward(L, Mode::kFused, normalize,
                 g.narrow(0, a0, mc).narrow(1, b0, nc), xy, xx.narrow(0, a0 * m, mc * m),
                 yy.narrow(0, b0 * n, nc * n), W);
      accumulate_grads(W, xt, yt, gx2.narrow(0, a0 * m, mc * m), gy2.narrow(0, b0 * n, nc * n));
    });
  }
  return {gx.to(x.scalar_type()), gy.to(y.scalar_type())};
}

// ---------------------------------------------------------------- registration
enum class Dev { kCPU, kCUDA };

template <Dev D>
const Launchers& launchers() {
#ifdef PARTDIST_WITH_CUDA
  static const Launchers cuda{forward_cuda, backward_cuda, aligned_forward_gemm<forward_cuda>,
                              aligned_backward_gemm<backward_cuda>};
  if (D == Dev::kCUDA) return cuda;
#endif
  static const Launchers cpu{forward_cpu, backward_cpu, aligned_forward_cpu, aligned_backward_cpu};
  return cpu;
}

template <Dev D>
struct Ops {
  static Tensor local_dist_matrix(const Tensor& x, const Tensor& y, bool normalize) {
    return local_dist_matrix_impl(x, y, normalize, launchers<D>());
  }
  static std::tuple<Tensor, Tensor> local_dist_matrix_backward(const Tensor& g, const Tensor& x,
                                                               const Tensor& y, bool normalize) {
    return local_dist_matrix_backward_impl(g, x, y, normalize, launchers<D>());
  }
  static Tensor dmli(const Tensor& d, double gamma, double band) {
    return dmli_impl(d, gamma, band, launchers<D>());
  }
  static Tensor dmli_backward(const Tensor& g, const Tensor& d, double gamma, double band) {
    return dmli_backward_impl(g, d, gamma, band, launchers<D>());
  }
  static Tensor dmli_path(const Tensor& d, double gamma, double band) {
    return dmli_path_impl(d, gamma, band, launchers<D>());
  }
  static Tensor batch_local_dist(const Tensor& x, const Tensor& y, bool normalize, double gamma,
                                 double band, bool unaligned) {
    return batch_local_dist_impl(x, y, normalize, gamma, band, unaligned, launchers<D>());
  }
  static std::tuple<Tensor, Tensor> batch_local_dist_backward(const Tensor& g, const Tensor& x,
                                                              const Tensor& y, bool normalize,
                                                              double gamma, double band,
                                                              bool unaligned) {
    return batch_local_dist_backward_impl(g, x, y, normalize, gamma, band, unaligned,
                                          launchers<D>());
  }
  static Tensor local_dist(const Tensor& x, const Tensor& y, bool normalize, int64_t chunk,
                           double gamma, double band, bool unaligned) {
    return local_dist_impl(x, y, normalize, chunk, gamma, band, unaligned, launchers<D>());
  }
  static std::tuple<Tensor, Tensor> local_dist_backward(const Tensor& g, const Tensor& x,
                                                        const Tensor& y, bool normalize,
                                                        int64_t chunk, double gamma, double band,
                                                        bool unaligned) {
    return local_dist_backward_impl(g, x, y, normalize, chunk, gamma, band, unaligned,
                                    launchers<D>());
  }

  static void register_impls(torch::Library& m) {
    m.impl("local_dist_matrix", &local_dist_matrix);
    m.impl("local_dist_matrix_backward", &local_dist_matrix_backward);
    m.impl("dmli", &dmli);
    m.impl("dmli_backward", &dmli_backward);
    m.impl("dmli_path", &dmli_path);
    m.impl("batch_local_dist", &batch_local_dist);
    m.impl("batch_local_dist_backward", &batch_local_dist_backward);
    m.impl("local_dist", &local_dist);
    m.impl("local_dist_backward", &local_dist_backward);
  }
};

}  // namespace
}  // namespace dmli
}  // namespace partdist

// DP options on the DMLI ops: gamma > 0 = soft-DMLI (smoothed minimum), band >= 0 =
// allowed cells |i (n-1)/(m-1) - j| <= band (negative = no band), unaligned = the
// sum of the diagonal cells instead of the DP.
TORCH_LIBRARY_FRAGMENT(partdist, m) {
  m.def("local_dist_matrix(Tensor x, Tensor y, bool normalize=True) -> Tensor");
  m.def(
      "local_dist_matrix_backward(Tensor grad, Tensor x, Tensor y, bool normalize) -> "
      "(Tensor, Tensor)");
  m.def("dmli(Tensor dist, float gamma=0.0, float band=-1.0) -> Tensor");
  m.def("dmli_backward(Tensor grad, Tensor dist, float gamma, float band) -> Tensor");
  m.def("dmli_path(Tensor dist, float gamma=0.0, float band=-1.0) -> Tensor");
  m.def(
      "batch_local_dist(Tensor x, Tensor y, bool normalize=True, float gamma=0.0, "
      "float band=-1.0, bool unaligned=False) -> Tensor");
  m.def(
      "batch_local_dist_backward(Tensor grad, Tensor x, Tensor y, bool normalize, float gamma, "
      "float band, bool unaligned) -> (Tensor, Tensor)");
  m.def(
      "local_dist(Tensor x, Tensor y, bool normalize=True, int chunk_size=0, float gamma=0.0, "
      "float band=-1.0, bool unaligned=False) -> Tensor");
  m.def(
      "local_dist_backward(Tensor grad, Tensor x, Tensor y, bool normalize, int chunk_size, "
      "float gamma, float band, bool unaligned) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(partdist, CPU, m) {
  partdist::dmli::Ops<partdist::dmli::Dev::kCPU>::register_impls(m);
}

#ifdef PARTDIST_WITH_CUDA
TORCH_LIBRARY_IMPL(partdist, CUDA, m) {
  partdist::dmli::Ops<partdist::dmli::Dev::kCUDA>::register_impls(m);
}
#endif
