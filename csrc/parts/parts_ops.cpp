// Host drivers and schemas of the part-distance family:
//   part_dist (+ part_dist_backward), dsr_dist.
// The drivers are templates over a backend K (parts_kernels.h): checks, tile
// planning, GEMMs and eigenvalues here, the per-pair math in K. Each backend's file
// registers them (register_impls<K>).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "../common/checks.h"
#include "../common/gemm_grads.h"
#include "../common/matmul.h"
#include "../common/registration.h"
#include "parts_kernels.h"

namespace partdist {
namespace parts {
namespace {

using at::Tensor;

void check_feats(const char* op, const char* name, const Tensor& t, const char* layout,
                 const char* what) {
  check_cells(op, name, t, layout, what);
}

// ------------------------------------------------------------------- part_dist
void check_parts(const char* op, const Tensor& x, const Tensor& y, const Tensor& vx,
                 const Tensor& vy) {
  check_feats(op, "x", x, "[M, P, C]", "part");
  check_feats(op, "y", y, "[N, P, C]", "part");
  check_same(op, "y", y, "x", x);
  TORCH_CHECK(x.size(1) == y.size(1) && x.size(2) == y.size(2), op,
              ": x and y must have the same number of parts P (dim 1) and channels C (dim 2),"
              " got x ",
              shape_str(x), " and y ", shape_str(y));
  check_floating(op, "vis_x", vx);
  check_floating(op, "vis_y", vy);
  check_same(op, "vis_x", vx, "x", x);
  check_same(op, "vis_y", vy, "x", x);
  TORCH_CHECK(vx.dim() == 2 && vx.size(0) == x.size(0) && vx.size(1) == x.size(1), op,
              ": vis_x must have shape [M, P] = [", x.size(0), ", ", x.size(1), "], got ",
              shape_str(vx));
  TORCH_CHECK(vy.dim() == 2 && vy.size(0) == y.size(0) && vy.size(1) == y.size(1), op,
              ": vis_y must have shape [N, P] = [", y.size(0), ", ", y.size(1), "], got ",
              shape_str(vy));
}

void check_empty_value(const char* op, double v) {
  TORCH_CHECK(!std::isnan(v), op, ": empty_value must not be NaN");
}

// Inputs in the compute type: features part-major [P, M, C], squared norms and
// visibilities [M, P] (contiguous). xg, yg: the operands of the part GEMMs
// (common/matmul.h stripe_bmm), part-major: float16 / bfloat16 inputs as they are when
// half_gemm (the CUDA backend), xp and yp otherwise.
struct PartPrep {
  Tensor xp, yp, xx, yy, vx, vy, xg, yg;
};

PartPrep prepare_parts(const Tensor& x, const Tensor& y, const Tensor& vx, const Tensor& vy,
                       bool half_gemm) {
  // detached: the GEMMs may run on worker threads, which do not inherit the
  // dispatcher state that keeps this op below autograd
  auto ct = compute_type(x);
  PartPrep p;
  Tensor xc = x.detach().to(ct), yc = y.detach().to(ct);
  p.xp = xc.transpose(0, 1).contiguous();
  p.yp = yc.transpose(0, 1).contiguous();
  p.xx = xc.pow(2).sum(-1).contiguous();
  p.yy = yc.pow(2).sum(-1).contiguous();
  p.vx = vx.detach().to(ct).contiguous();
  p.vy = vy.detach().to(ct).contiguous();
  const bool half = half_gemm && is_half(x) && y.scalar_type() == x.scalar_type();
  p.xg = half ? x.detach().transpose(0, 1).contiguous() : p.xp;
  p.yg = half ? y.detach().transpose(0, 1).contiguous() : p.yp;
  return p;
}

// Tiles of part_dist: the GEMM output [P, mc, nc] (forward), and the cell weights and
// visibility factors of the same size (backward), P values per pair each.
Tiling part_tiling(int64_t budget, int64_t M, int64_t N, int64_t P, int64_t elem, bool backward,
                   int64_t chunk_size) {
  return tiling_for(M, N, tile_pairs(chunk_size, budget, (backward ? 3 : 1) * P * elem));
}

// Tiles of dsr_dist: B (GEMM output and its [mc, nc, Lg, Lq] copy) and the errors.
Tiling dsr_tiling(int64_t budget, int64_t M, int64_t N, int64_t Lq, int64_t Lg, int64_t elem,
                  int64_t chunk_size) {
  return tiling_for(M, N, tile_pairs(chunk_size, budget, (2 * Lg + 1) * Lq * elem));
}

PartArgs part_args(const PartPrep& p, int64_t a0, int64_t mc, int64_t b0, int64_t nc,
                   const Tensor& xy, int64_t out_si, double empty_value) {
  PartArgs a;
  a.mc = mc;
  a.nc = nc;
  a.P = int(p.xx.size(1));
  a.out_si = out_si;
  a.empty_value = empty_value;
  a.xy = xy;
  a.xx = p.xx.narrow(0, a0, mc);
  a.vx = p.vx.narrow(0, a0, mc);
  a.yy = p.yy.narrow(0, b0, nc);
  a.vy = p.vy.narrow(0, b0, nc);
  return a;
}

template <typename K>
Tensor part_dist_impl(const Tensor& x, const Tensor& y, const Tensor& vx, const Tensor& vy,
                      double empty_value, int64_t chunk_size,
                      std::optional<at::ScalarType> gemm_dtype) {
  const char* op = "partdist.part_dist";
  check_parts(op, x, y, vx, vy);
  check_chunk(op, chunk_size);
  check_empty_value(op, empty_value);
  const int64_t M = x.size(0), N = y.size(0), P = x.size(1);
  auto [xr, yr] = round_for_gemm(op, x, y, gemm_dtype);
  PartPrep p = prepare_parts(xr, yr, vx, vy, K::kOnDevice);
  Tensor out = at::empty({M, N}, p.xx.options());
  if (M == 0 || N == 0) return out.to(x.scalar_type());
  const Tiling T = part_tiling(K::kTileBytes, M, N, P, p.xx.element_size(), false, chunk_size);
  // Tiles in sequence; the GEMM and the backend are parallel inside.
  for_each_tile(M, N, T, [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc) {
    Tensor xy = stripe_bmm(p.xg.narrow(1, a0, mc), p.yg.narrow(1, b0, nc).transpose(1, 2));
    K::part_forward(part_args(p, a0, mc, b0, nc, xy, N, empty_value),
                    out.narrow(0, a0, mc).narrow(1, b0, nc));
  });
  return out.to(x.scalar_type());
}

template <typename K>
std::tuple<Tensor, Tensor, Tensor, Tensor> part_dist_backward_impl(
    const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& vx, const Tensor& vy,
    double empty_value, int64_t chunk_size, bool vis_grad,
    std::optional<at::ScalarType> gemm_dtype) {
  const char* op = "partdist.part_dist_backward";
  check_parts(op, x, y, vx, vy);
  check_chunk(op, chunk_size);
  check_empty_value(op, empty_value);
  const int64_t M = x.size(0), N = y.size(0), P = x.size(1);
  check_floating(op, "grad", grad);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == M && grad.size(1) == N, op,
              ": grad must have shape [M, N] = [", M, ", ", N, "], got ", shape_str(grad));
  TORCH_CHECK(grad.device() == x.device(), op, ": grad must be on ", x.device());
  auto [xr, yr] = round_for_gemm(op, x, y, gemm_dtype);
  PartPrep p = prepare_parts(xr, yr, vx, vy, K::kOnDevice);
  Tensor gxp = at::zeros_like(p.xp), gyp = at::zeros_like(p.yp);
  Tensor gvx = at::zeros_like(p.vx), gvy = at::zeros_like(p.vy);
  if (M > 0 && N > 0) {
    Tensor g = grad.detach().to(p.xx.scalar_type()).contiguous();
    // Tiles in sequence (the tiles of one query block write the same rows of gx);
    // the backend and the GEMMs are parallel inside.
    const Tiling T = part_tiling(K::kTileBytes, M, N, P, p.xx.element_size(), true, chunk_size);
    for_each_tile(M, N, T, [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc) {
      Tensor xt = p.xp.narrow(1, a0, mc), yt = p.yp.narrow(1, b0, nc);  // [P, mc|nc, C]
      Tensor xy = stripe_bmm(p.xg.narrow(1, a0, mc), p.yg.narrow(1, b0, nc).transpose(1, 2));
      Tensor cw = at::empty_like(xy);
      Tensor ce = vis_grad ? at::empty_like(xy) : Tensor();
      K::part_backward(part_args(p, a0, mc, b0, nc, xy, N, empty_value),
                       g.narrow(0, a0, mc).narrow(1, b0, nc), cw, ce);
      // dL/dx_ap += sum_b cw (x_ap - y_bp), dL/dy_bp -= sum_a cw (x_ap - y_bp)
      accumulate_grads(cw, xt, yt, gxp.narrow(1, a0, mc), gyp.narrow(1, b0, nc));
      if (vis_grad) {
        Tensor vxt = p.vx.narrow(0, a0, mc).t(), vyt = p.vy.narrow(0, b0, nc).t();  // [P, mc|nc]
        gvx.narrow(0, a0, mc).add_(fp32_bmm(ce, vyt.unsqueeze(-1)).squeeze(-1).t());
        gvy.narrow(0, b0, nc).add_(fp32_bmm(ce.transpose(1, 2), vxt.unsqueeze(-1)).squeeze(-1).t());
      }
    });
  }
  return {gxp.transpose(0, 1).contiguous().to(x.scalar_type()),
          gyp.transpose(0, 1).contiguous().to(y.scalar_type()), gvx.to(vx.scalar_type()),
          gvy.to(vy.scalar_type())};
}

// -------------------------------------------------------------------- dsr_dist
void check_dsr(const char* op, const Tensor& x, const Tensor& y, double beta, int64_t max_iter,
               double tol, int64_t chunk_size) {
  check_feats(op, "x", x, "[M, Lq, C]", "query cell");
  check_feats(op, "y", y, "[N, Lg, C]", "gallery cell");
  check_same(op, "y", y, "x", x);
  TORCH_CHECK(x.size(2) == y.size(2), op, ": x and y must have the same number of channels C",
              " (dim 2), got x ", shape_str(x), " and y ", shape_str(y));
  TORCH_CHECK(y.size(1) <= kMaxCells, op, ": at most ", kMaxCells,
              " gallery cells Lg (dim 1 of y) are supported, got y ", shape_str(y));
  TORCH_CHECK(std::isfinite(beta) && beta >= 0.0, op, ": beta must be a finite number >= 0, got ",
              beta);
  TORCH_CHECK(max_iter >= 1 && max_iter <= (int64_t(1) << 30), op, ": max_iter must be >= 1, got ",
              max_iter);
  TORCH_CHECK(std::isfinite(tol) && tol >= 0.0, op, ": tol must be a finite number >= 0, got ",
              tol);
  check_chunk(op, chunk_size);
}

template <typename K>
Tensor dsr_dist_impl(const Tensor& x, const Tensor& y, double beta, int64_t max_iter, double tol,
                     int64_t chunk_size) {
  const char* op = "partdist.dsr_dist";
  check_dsr(op, x, y, beta, max_iter, tol, chunk_size);
  const int64_t M = x.size(0), N = y.size(0), Lq = x.size(1), Lg = y.size(1), C = x.size(2);
  auto ct = compute_type(x);
  Tensor xc = x.detach().to(ct).contiguous(), yc = y.detach().to(ct).contiguous();
  Tensor out = at::empty({M, N}, xc.options());
  if (M == 0 || N == 0) return out.to(x.scalar_type());
  Tensor xx = xc.pow(2).sum(-1).contiguous();  // [M, Lq]
  const Tiling T = dsr_tiling(K::kTileBytes, M, N, Lq, Lg, xc.element_size(), chunk_size);
  FistaOptions o;
  o.beta = beta;
  o.max_iter = int(max_iter);
  o.tol = tol;
  for (int64_t b0 = 0; b0 < N; b0 += T.nc) {
    const int64_t nc = std::min(T.nc, N - b0);
    Tensor yt = yc.narrow(0, b0, nc);                          // [nc, Lg, C]
    Tensor G = fp32_bmm(yt, yt.transpose(1, 2)).contiguous();  // [nc, Lg, Lg]
    // step size: exact largest eigenvalue of each Gram matrix
    Tensor lip = at::linalg_eigvalsh(G).select(-1, Lg - 1).clamp_min(0).contiguous();
    for (int64_t a0 = 0; a0 < M; a0 += T.mc) {
      const int64_t mc = std::min(T.mc, M - a0);
      // B[i, j] = Y_j X_i^T [Lg, Lq] for every pair: one GEMM of the flattened cells,
      // [nc*Lg, C] x [C, mc*Lq] = [nc, Lg, mc, Lq], reordered to [mc, nc, Lg, Lq].
      Tensor B = fp32_mm(yt.reshape({nc * Lg, C}), xc.narrow(0, a0, mc).reshape({mc * Lq, C}).t())
                     .view({nc, Lg, mc, Lq})
                     .permute({2, 0, 1, 3})
                     .contiguous();
      Tensor err = at::empty({mc, nc, Lq}, xc.options());
      DsrArgs a;
      a.mc = mc;
      a.nc = nc;
      a.Lq = int(Lq);
      a.Lg = int(Lg);
      a.opt = o;
      a.G = G;
      a.B = B;
      a.xx = xx.narrow(0, a0, mc);
      a.lip = lip;
      K::dsr_forward(a, err);
      out.narrow(0, a0, mc).narrow(1, b0, nc).copy_(err.mean(-1));
    }
  }
  return out.to(x.scalar_type());
}

// Tile plans (test hook): [mc, nc] of part_dist forward, part_dist backward and
// dsr_dist for a backend ("cpu" or "cuda") and a shape (M, N, P or Lq, Lg).
std::vector<int64_t> parts_tile_plan(const std::string& backend, int64_t M, int64_t N, int64_t P,
                                     int64_t Lg, int64_t elem, int64_t chunk_size) {
  const bool cpu = backend == "cpu";
  TORCH_CHECK(cpu || backend == "cuda", "_parts_tile_plan: backend must be cpu or cuda");
  const int64_t budget = cpu ? CpuKernels::kTileBytes : EmulatedCudaKernels::kTileBytes;
  const Tiling f = part_tiling(budget, M, N, P, elem, false, chunk_size);
  const Tiling b = part_tiling(budget, M, N, P, elem, true, chunk_size);
  const Tiling d = dsr_tiling(budget, M, N, P, Lg, elem, chunk_size);
  return {f.mc, f.nc, b.mc, b.nc, d.mc, d.nc};
}

// part_dist: visibility-weighted mean of the per-part Euclidean distances of all
// query x gallery pairs (empty_value where two images share no visible part).
// dsr_dist: DSR reconstruction distance (FISTA Lasso per query cell).
template <typename K>
auto ops() {
  return std::make_tuple(
      op("part_dist(Tensor x, Tensor y, Tensor vis_x, Tensor vis_y, float empty_value, "
         "int chunk_size=0, ScalarType? gemm_dtype=None) -> Tensor",
         &part_dist_impl<K>),
      op("part_dist_backward(Tensor grad, Tensor x, Tensor y, Tensor vis_x, Tensor vis_y, "
         "float empty_value, int chunk_size, bool vis_grad, ScalarType? gemm_dtype=None) -> "
         "(Tensor, Tensor, Tensor, Tensor)",
         &part_dist_backward_impl<K>),
      op("dsr_dist(Tensor x, Tensor y, float beta, int max_iter=200, float tol=1e-5, "
         "int chunk_size=0) -> Tensor",
         &dsr_dist_impl<K>));
}

}  // namespace
}  // namespace parts
}  // namespace partdist

PARTDIST_FAMILY_OPS(parts, ops)

TORCH_LIBRARY_FRAGMENT(partdist, m) {
  m.def(
      "_parts_tile_plan(str backend, int M, int N, int P, int Lg, int elem_size, "
      "int chunk_size=0) -> int[]",
      &partdist::parts::parts_tile_plan);
}
