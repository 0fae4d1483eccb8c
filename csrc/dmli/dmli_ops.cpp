// Host drivers and schemas of the DMLI family:
//   local_dist_matrix, dmli, dmli_path, batch_local_dist, local_dist
// and their backward ops. The drivers are templates over a backend K
// (dmli_kernels.h): checks, DP options, tile planning and GEMMs here, the per-pair
// work in K. Each backend's file registers them (register_impls<K>).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../common/buffer_pool.h"
#include "../common/checks.h"
#include "../common/gemm_grads.h"
#include "../common/matmul.h"
#include "../common/registration.h"
#include "dmli_kernels.h"

namespace partdist {
namespace dmli {

using at::Tensor;

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

namespace {

void check_stripes(const char* op, const char* name, const Tensor& t, const char* layout) {
  check_cells(op, name, t, layout, "stripe");
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

// half_gemm: keep float16 / bfloat16 inputs of one dtype as the GEMM operands.
Prepared prepare(const Tensor& x, const Tensor& y, bool half_gemm) {
  Prepared p;
  auto ct = compute_type(x);
  // detached: the GEMMs may run on worker threads, which do not inherit the
  // dispatcher state that keeps this op below autograd
  p.x = x.detach().to(ct).contiguous();
  p.y = y.detach().to(ct).contiguous();
  p.xx = p.x.pow(2).sum(-1).contiguous();
  p.yy = p.y.pow(2).sum(-1).contiguous();
  const bool half = half_gemm && is_half(x) && y.scalar_type() == x.scalar_type();
  p.bf16 = x.scalar_type() == at::kBFloat16 && y.scalar_type() == at::kBFloat16;
  p.xg = half ? x.detach().contiguous() : p.x;
  p.yg = half ? y.detach().contiguous() : p.y;
  return p;
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
    TORCH_CHECK(m == n, op,
                ": the unaligned distance needs as many stripes in x as in y (m == n), got m=", m,
                ", n=", n);
    TORCH_CHECK(gamma == 0.0 && r.band < 0.0, op,
                ": gamma and band do not apply to the unaligned distance");
  }
  if (r.band >= 0.0 && m > 0 && n > 0) {
    // reach[j]: (i, j) is reachable by a monotone path of allowed cells from (0, 0)
    std::vector<char> reach(n, 0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        bool from = (i == 0 && j == 0) || (i > 0 && reach[j]) || (j > 0 && reach[j - 1]);
        reach[j] = from && r.allowed(int(i), int(j), int(m), int(n));
      }
    TORCH_CHECK(reach[n - 1], op, ": band=", band,
                " leaves no monotone path from (0, 0) to (m-1, n-1) for m=", m, ", n=", n,
                " (cells must satisfy |i*(n-1)/(m-1) - j| <= band); use a wider band");
  }
  return r;
}

// ------------------------------------------- local_dist_matrix, batch_local_dist
template <typename K>
Tensor aligned_impl(const char* op, const Tensor& x, const Tensor& y, bool normalize, Mode mode,
                    const DPRule& rule_in) {
  check_xy(op, x, y, /*aligned=*/true, /*dp=*/mode != Mode::kCells);
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  const DPRule rule = make_rule(op, m, n, rule_in.gamma, rule_in.band, rule_in.diag);
  auto ct = compute_type(x);
  // float16 / bfloat16 inputs of one dtype stay half for a backend with half GEMMs
  const bool half = K::kHalfGemm && is_half(x) && y.scalar_type() == x.scalar_type();
  Tensor xc = half ? x.contiguous() : x.to(ct).contiguous();
  Tensor yc = half ? y.contiguous() : y.to(ct).contiguous();
  const auto opts = x.options().dtype(ct);
  Tensor out = mode == Mode::kCells ? at::empty({N, m, n}, opts) : at::empty({N}, opts);
  if (N > 0) K::aligned_forward(mode, normalize, rule, xc, yc, out);
  return out.to(x.scalar_type());
}

template <typename K>
std::tuple<Tensor, Tensor> aligned_backward_impl(const char* op, const Tensor& grad,
                                                 const Tensor& x, const Tensor& y, bool normalize,
                                                 Mode mode, const DPRule& rule_in) {
  check_xy(op, x, y, true, mode != Mode::kCells);
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  const DPRule rule = make_rule(op, m, n, rule_in.gamma, rule_in.band, rule_in.diag);
  if (mode == Mode::kCells)
    check_grad(op, grad, {N, m, n}, x);
  else
    check_grad(op, grad, {N}, x);
  auto ct = compute_type(x);
  // float16 / bfloat16 inputs of one dtype stay half for a backend with half GEMMs (the
  // recomputed stripe GEMM); the backend takes the norms and the chain rule in ct
  const bool half = K::kHalfGemm && is_half(x) && y.scalar_type() == x.scalar_type();
  Tensor xc = half ? x.contiguous() : x.to(ct).contiguous();
  Tensor yc = half ? y.contiguous() : y.to(ct).contiguous();
  Tensor g = grad.to(ct).contiguous();
  Tensor gx = at::empty(xc.sizes(), xc.options().dtype(ct));
  Tensor gy = at::empty(yc.sizes(), yc.options().dtype(ct));
  if (N > 0) K::aligned_backward(mode, normalize, rule, g, xc, yc, gx, gy);
  return {gx.to(x.scalar_type()), gy.to(y.scalar_type())};
}

template <typename K>
Tensor local_dist_matrix_impl(const Tensor& x, const Tensor& y, bool normalize) {
  return aligned_impl<K>("partdist.local_dist_matrix", x, y, normalize, Mode::kCells, DPRule());
}

template <typename K>
std::tuple<Tensor, Tensor> local_dist_matrix_backward_impl(const Tensor& grad, const Tensor& x,
                                                           const Tensor& y, bool normalize) {
  return aligned_backward_impl<K>("partdist.local_dist_matrix_backward", grad, x, y, normalize,
                                  Mode::kCells, DPRule());
}

DPRule rule_of(double gamma, double band, bool unaligned) {
  DPRule r;
  r.gamma = gamma;
  r.band = band;
  r.diag = unaligned;
  return r;
}

template <typename K>
Tensor batch_local_dist_impl(const Tensor& x, const Tensor& y, bool normalize, double gamma,
                             double band, bool unaligned) {
  return aligned_impl<K>("partdist.batch_local_dist", x, y, normalize, Mode::kFused,
                         rule_of(gamma, band, unaligned));
}

template <typename K>
std::tuple<Tensor, Tensor> batch_local_dist_backward_impl(const Tensor& grad, const Tensor& x,
                                                          const Tensor& y, bool normalize,
                                                          double gamma, double band,
                                                          bool unaligned) {
  return aligned_backward_impl<K>("partdist.batch_local_dist_backward", grad, x, y, normalize,
                                  Mode::kFused, rule_of(gamma, band, unaligned));
}

// An uninitialized output; pooled on the CPU (a training step's cells and gradients
// reuse mapped memory, common/buffer_pool.h).
Tensor empty_out(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return options.device().is_cpu() ? pooled_empty(sizes, options) : at::empty(sizes, options);
}

// Training pair of batch_local_dist (hard or soft minimum, band; not unaligned), used by
// its autograd when a gradient is needed (on CUDA for the shapes of kWarpPathMaxCells):
// the forward also returns cells [2, N, m, n] (compute dtype; raw stripe distances, then
// cell values), which the backward reads instead of computing the stripe distances
// again. Same values and gradients as batch_local_dist and batch_local_dist_backward.
// grad reaches the backend with its own stride.
template <typename K>
std::tuple<Tensor, Tensor> batch_local_dist_fwd_cells_impl(const Tensor& x, const Tensor& y,
                                                           bool normalize, double gamma,
                                                           double band) {
  const char* op = "partdist._batch_local_dist_fwd_cells";
  check_xy(op, x, y, true, true);
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  const DPRule rule = make_rule(op, m, n, gamma, band, false);
  auto ct = compute_type(x);
  Tensor xc = x.to(ct).contiguous(), yc = y.to(ct).contiguous();
  Tensor out = at::empty({N}, xc.options());
  Tensor cells = empty_out({2, N, m, n}, xc.options());
  if (N > 0) K::aligned_forward_cells(normalize, rule, xc, yc, out, cells);
  return {out.to(x.scalar_type()), cells};
}

template <typename K>
std::tuple<Tensor, Tensor> batch_local_dist_backward_cells_impl(const Tensor& grad, const Tensor& x,
                                                                const Tensor& y,
                                                                const Tensor& cells, bool normalize,
                                                                double gamma, double band) {
  const char* op = "partdist._batch_local_dist_backward_cells";
  check_xy(op, x, y, true, true);
  const int64_t N = x.size(0), m = x.size(1), n = y.size(1);
  const DPRule rule = make_rule(op, m, n, gamma, band, false);
  check_grad(op, grad, {N}, x);
  auto ct = compute_type(x);
  TORCH_CHECK(cells.sizes() == at::IntArrayRef({2, N, m, n}) && cells.scalar_type() == ct &&
                  cells.device() == x.device(),
              op, ": cells must be the [2, N, m, n] ", ct,
              " tensor that _batch_local_dist_fwd_cells returned for x and y, got ",
              shape_str(cells), " ", cells.scalar_type());
  Tensor xc = x.to(ct).contiguous(), yc = y.to(ct).contiguous();
  Tensor g = grad.to(ct), c = cells.contiguous();
  // every element is written
  Tensor gx = empty_out(xc.sizes(), xc.options()), gy = empty_out(yc.sizes(), yc.options());
  if (N > 0) K::aligned_backward_cells(normalize, rule, g, xc, yc, c, gx, gy);
  return {gx.to(x.scalar_type()), gy.to(y.scalar_type())};
}

// ------------------------------------------------------------------------ dmli
template <typename K>
Tensor dmli_impl(const Tensor& dist, double gamma, double band) {
  const char* op = "partdist.dmli";
  check_dist(op, dist);
  const int64_t P = dist.size(0), m = dist.size(1), n = dist.size(2);
  Tensor d = dist.to(compute_type(dist)).contiguous();
  Tensor out = at::empty({P}, d.options());
  PairLayout L = aligned_layout(P, m, n);
  L.rule = make_rule(op, m, n, gamma, band, false);
  K::forward(L, Mode::kDmli, false, d, Tensor(), Tensor(), out);
  return out.to(dist.scalar_type());
}

template <typename K>
Tensor dmli_weights(const char* op, const Tensor& grad, const Tensor& dist, double gamma,
                    double band) {
  const int64_t P = dist.size(0), m = dist.size(1), n = dist.size(2);
  Tensor d = dist.to(compute_type(dist)).contiguous();
  Tensor g = grad.to(d.scalar_type()).contiguous();
  Tensor w = at::empty_like(d);
  PairLayout L = aligned_layout(P, m, n);
  L.rule = make_rule(op, m, n, gamma, band, false);
  K::backward(L, Mode::kDmli, false, g, d, Tensor(), Tensor(), w);
  return w;
}

template <typename K>
Tensor dmli_backward_impl(const Tensor& grad, const Tensor& dist, double gamma, double band) {
  const char* op = "partdist.dmli_backward";
  check_dist(op, dist);
  check_grad(op, grad, {dist.size(0)}, dist);
  return dmli_weights<K>(op, grad, dist, gamma, band).to(dist.scalar_type());
}

// Cells that receive gradient from the DMLI value: the optimal path (the union
// of the tied optimal paths where the minimum ties).
// With gamma > 0: the expected alignment (soft path), in the dtype of dist.
template <typename K>
Tensor dmli_path_impl(const Tensor& dist, double gamma, double band) {
  const char* op = "partdist.dmli_path";
  check_dist(op, dist);
  Tensor ones = at::ones({dist.size(0)}, dist.options().dtype(compute_type(dist)));
  Tensor w = dmli_weights<K>(op, ones, dist, gamma, band);
  return gamma > 0.0 ? w.to(dist.scalar_type()) : w.ne(0);
}

// ------------------------------------------------------------------ local_dist
// All pairs, tile by tile (the backend plans the forward's tiles). Extra memory:
// the tile buffers, bounded by the backend's budget, independent of M*N.
template <typename K>
Tensor local_dist_impl(const Tensor& x, const Tensor& y, bool normalize, int64_t chunk_size,
                       double gamma, double band, bool unaligned,
                       std::optional<at::ScalarType> gemm_dtype) {
  const char* op = "partdist.local_dist";
  check_xy(op, x, y, false, true);
  check_chunk(op, chunk_size);
  const int64_t M = x.size(0), N = y.size(0), m = x.size(1), n = y.size(1);
  const DPRule rule = make_rule(op, m, n, gamma, band, unaligned);
  auto [xr, yr] = round_for_gemm(op, x, y, gemm_dtype);
  auto P = prepare(xr, yr, K::kHalfGemm);
  Tensor out = at::empty({M, N}, P.x.options());
  if (M == 0 || N == 0) return out.to(x.scalar_type());
  K::local_dist_forward(P, normalize, rule, chunk_size, out);
  return out.to(x.scalar_type());
}

// Backward tiles: the GEMM output and the cell weights (m*n values per pair each)
// and the backend's DP tables, within budget bytes.
int64_t backward_bytes_per_pair(int64_t m, int64_t n, int64_t elem, int64_t tables) {
  return (2 + tables) * m * n * elem;
}
template <typename K>
Tiling local_dist_backward_tiling(int64_t M, int64_t N, int64_t m, int64_t n, int64_t elem,
                                  int64_t chunk_size, bool half_gemm) {
  const int64_t per_pair = backward_bytes_per_pair(m, n, elem, K::kTablesPerPair);
  return tiling_for(M, N, tile_pairs(chunk_size, K::tile_bytes(half_gemm), per_pair));
}

template <typename K>
std::tuple<Tensor, Tensor> local_dist_backward_impl(const Tensor& grad, const Tensor& x,
                                                    const Tensor& y, bool normalize,
                                                    int64_t chunk_size, double gamma, double band,
                                                    bool unaligned,
                                                    std::optional<at::ScalarType> gemm_dtype) {
  const char* op = "partdist.local_dist_backward";
  check_xy(op, x, y, false, true);
  check_chunk(op, chunk_size);
  const int64_t M = x.size(0), N = y.size(0), m = x.size(1), n = y.size(1), C = x.size(2);
  const DPRule rule = make_rule(op, m, n, gamma, band, unaligned);
  check_grad(op, grad, {M, N}, x);
  auto [xr, yr] = round_for_gemm(op, x, y, gemm_dtype);
  auto P = prepare(xr, yr, K::kHalfGemm);
  Tensor gx = at::zeros_like(P.x), gy = at::zeros_like(P.y);
  if (M > 0 && N > 0) {
    Tensor g = grad.to(P.x.scalar_type()).contiguous();
    Tensor x2 = P.x.view({M * m, C}), y2 = P.y.view({N * n, C});
    Tensor xg2 = P.xg.view({M * m, C}), yg2 = P.yg.view({N * n, C});
    Tensor gx2 = gx.view({M * m, C}), gy2 = gy.view({N * n, C});
    Tensor xx = P.xx.view({M * m}), yy = P.yy.view({N * n});
    // Tiles in sequence (tiles of one query block write the same rows of gx).
    const Tiling T = local_dist_backward_tiling<K>(M, N, m, n, P.x.element_size(), chunk_size,
                                                   P.xg.element_size() == 2);
    Tensor buf = at::empty({T.mc * m * T.nc * n}, P.x.options());
    Tensor wbuf = at::empty_like(buf);
    for_each_tile(M, N, T, [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc) {
      Tensor xt = x2.narrow(0, a0 * m, mc * m), yt = y2.narrow(0, b0 * n, nc * n);
      Tensor xy = buf.narrow(0, 0, mc * m * nc * n).view({mc * m, nc * n});
      Tensor W = wbuf.narrow(0, 0, mc * m * nc * n).view({mc * m, nc * n});
      stripe_mm_out(xy, xg2.narrow(0, a0 * m, mc * m), yg2.narrow(0, b0 * n, nc * n).t());
      PairLayout L = tile_layout(mc, nc, m, n, N);
      L.rule = rule;
      K::backward(L, Mode::kFused, normalize, g.narrow(0, a0, mc).narrow(1, b0, nc), xy,
                  xx.narrow(0, a0 * m, mc * m), yy.narrow(0, b0 * n, nc * n), W);
      accumulate_grads(W, xt, yt, gx2.narrow(0, a0 * m, mc * m), gy2.narrow(0, b0 * n, nc * n));
    });
  }
  return {gx.to(x.scalar_type()), gy.to(y.scalar_type())};
}

// Tile plan of local_dist (test hook): [mc, nc, tile bytes] of the forward and of the
// backward for a backend ("cpu" or "cuda"), half_gemm: float16 / bfloat16 GEMM operands.
// "cuda" with l2_bytes < 0 is the emulated launchers' own plan (the emulated GPU's L2);
// l2_bytes >= 0 plans with that L2 on the CUDA budget rule.
std::vector<int64_t> local_dist_tile_plan(const std::string& backend, int64_t M, int64_t N,
                                          int64_t m, int64_t n, int64_t elem, int64_t chunk_size,
                                          bool half_gemm, int64_t l2_bytes) {
  const bool cpu = backend == "cpu";
  TORCH_CHECK(cpu || backend == "cuda", "_local_dist_tile_plan: backend must be cpu or cuda");
  using E = EmulatedCudaKernels;
  const int64_t tables = cpu ? CpuKernels::kTablesPerPair : E::kTablesPerPair;
  Tiling f, b;
  if (cpu) {
    f = CpuKernels::local_dist_tiling(M, N, m, n, elem, chunk_size, half_gemm);
    b = local_dist_backward_tiling<CpuKernels>(M, N, m, n, elem, chunk_size, half_gemm);
  } else if (l2_bytes < 0) {
    f = E::local_dist_tiling(M, N, m, n, elem, chunk_size, half_gemm);
    b = local_dist_backward_tiling<E>(M, N, m, n, elem, chunk_size, half_gemm);
  } else {
    const int64_t budget = device_dmli_tile_bytes(l2_bytes, half_gemm);
    f = tiling_for(M, N, tile_pairs(chunk_size, budget, m * n * elem));
    b = tiling_for(M, N,
                   tile_pairs(chunk_size, budget, backward_bytes_per_pair(m, n, elem, tables)));
  }
  return {f.mc, f.nc, f.pairs() * m * n * elem,
          b.mc, b.nc, b.pairs() * backward_bytes_per_pair(m, n, elem, tables)};
}

// DP options on the DMLI ops: gamma > 0 = soft-DMLI (smoothed minimum), band >= 0 =
// allowed cells |i (n-1)/(m-1) - j| <= band (negative = no band), unaligned = the
// sum of the diagonal cells instead of the DP.
template <typename K>
auto ops() {
  return std::make_tuple(
      op("local_dist_matrix(Tensor x, Tensor y, bool normalize=True) -> Tensor",
         &local_dist_matrix_impl<K>),
      op("local_dist_matrix_backward(Tensor grad, Tensor x, Tensor y, bool normalize) -> "
         "(Tensor, Tensor)",
         &local_dist_matrix_backward_impl<K>),
      op("dmli(Tensor dist, float gamma=0.0, float band=-1.0) -> Tensor", &dmli_impl<K>),
      op("dmli_backward(Tensor grad, Tensor dist, float gamma, float band) -> Tensor",
         &dmli_backward_impl<K>),
      op("dmli_path(Tensor dist, float gamma=0.0, float band=-1.0) -> Tensor", &dmli_path_impl<K>),
      op("batch_local_dist(Tensor x, Tensor y, bool normalize=True, float gamma=0.0, "
         "float band=-1.0, bool unaligned=False) -> Tensor",
         &batch_local_dist_impl<K>),
      op("batch_local_dist_backward(Tensor grad, Tensor x, Tensor y, bool normalize, "
         "float gamma, float band, bool unaligned) -> (Tensor, Tensor)",
         &batch_local_dist_backward_impl<K>),
      op("local_dist(Tensor x, Tensor y, bool normalize=True, int chunk_size=0, "
         "float gamma=0.0, float band=-1.0, bool unaligned=False, "
         "ScalarType? gemm_dtype=None) -> Tensor",
         &local_dist_impl<K>),
      op("local_dist_backward(Tensor grad, Tensor x, Tensor y, bool normalize, int chunk_size, "
         "float gamma, float band, bool unaligned, ScalarType? gemm_dtype=None) -> "
         "(Tensor, Tensor)",
         &local_dist_backward_impl<K>),
      op("_batch_local_dist_fwd_cells(Tensor x, Tensor y, bool normalize, float gamma, "
         "float band) -> (Tensor, Tensor)",
         &batch_local_dist_fwd_cells_impl<K>),
      op("_batch_local_dist_backward_cells(Tensor grad, Tensor x, Tensor y, Tensor cells, "
         "bool normalize, float gamma, float band) -> (Tensor, Tensor)",
         &batch_local_dist_backward_cells_impl<K>));
}

}  // namespace
}  // namespace dmli
}  // namespace partdist

PARTDIST_FAMILY_OPS(dmli, ops)

namespace partdist {
namespace dmli {
// The operands that fp32_mm and its kin multiply where cuBLAS may use TF32
// (common/matmul.h), on any device: the tests check the split on the CPU.
std::tuple<Tensor, Tensor> tf32_split_operands_op(const Tensor& a, const Tensor& b) {
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat,
              "partdist._tf32_split_operands: a and b must be float32, got ", a.scalar_type(),
              " and ", b.scalar_type());
  return tf32_split_operands(a, b);
}
}  // namespace dmli
}  // namespace partdist

TORCH_LIBRARY_FRAGMENT(partdist, m) {
  m.def(
      "_local_dist_tile_plan(str backend, int M, int N, int m, int n, int elem_size, "
      "int chunk_size=0, bool half_gemm=False, int l2_bytes=-1) -> int[]",
      &partdist::dmli::local_dist_tile_plan);
  m.def("_tf32_split_operands(Tensor a, Tensor b) -> (Tensor, Tensor)");
}

// ATen ops on any device (and a fake kernel in Python)
TORCH_LIBRARY_IMPL(partdist, CompositeExplicitAutograd, m) {
  m.impl("_tf32_split_operands", &partdist::dmli::tf32_split_operands_op);
}
