// Host drivers and registration of the part-distance family:
//   part_dist (+ part_dist_backward), dsr_dist.
// The drivers are device-generic: GEMMs and eigenvalues through ATen, the
// per-pair math through the CPU or CUDA launchers of parts_kernels.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../common/checks.h"
#include "parts_kernels.h"

namespace partdist {
namespace parts {
namespace {

using at::Tensor;

// float16 / bfloat16 are computed in float32, float64 in float64.
at::ScalarType compute_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_feats(const char* op, const char* name, const Tensor& t, const char* layout,
                 const char* what) {
  check_floating(op, name, t);
  check_rank(op, name, t, 3, layout);
  TORCH_CHECK(t.size(1) >= 1, op, ": ", name, " must have at least one ", what,
              " (dim 1), got shape ", shape_str(t));
  TORCH_CHECK(t.size(2) >= 1, op, ": ", name,
              " must have at least one feature channel (dim 2), got shape ", shape_str(t));
}

void check_chunk(const char* op, int64_t chunk_size) {
  TORCH_CHECK(chunk_size >= 0, op,
              ": chunk_size must be positive (or 0 for automatic), got ", chunk_size);
}

// Pairs per tile -> (queries, galleries) per tile, about square.
struct Tiling {
  int64_t mc, nc;
};

Tiling tiling_for(int64_t M, int64_t N, int64_t pairs) {
  pairs = std::max<int64_t>(pairs, 1);
  int64_t mc = std::max<int64_t>(1, int64_t(std::sqrt(double(pairs))) / 2);
  mc = std::min(mc, std::max<int64_t>(M, 1));
  int64_t nc = std::max<int64_t>(1, std::min(std::max<int64_t>(N, 1), pairs / mc));
  mc = std::max<int64_t>(1, std::min(std::max<int64_t>(M, 1), pairs / nc));
  return {mc, nc};
}

template <typename TileFn>
void for_each_tile(int64_t M, int64_t N, const Tiling& T, bool parallel, TileFn fn) {
  const int64_t tn = (N + T.nc - 1) / T.nc, tiles = ((M + T.mc - 1) / T.mc) * tn;
  auto run = [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t a0 = (t / tn) * T.mc, b0 = (t % tn) * T.nc;
      fn(a0, std::min(T.mc, M - a0), b0, std::min(T.nc, N - b0));
    }
  };
  if (parallel)
    at::parallel_for(0, tiles, 1, run);
  else
    run(0, tiles);
}

// ------------------------------------------------------------------- part_dist
void check_parts(const char* op, const Tensor& x, const Tensor& y, const Tensor& vx,
                 const Tensor& vy) {
  check_feats(op, "x", x, "[M, P, C]", "part");
  check_feats(op, "y", y, "[N, P, C]", "part");
  check_same(op, "y", y, "x", x);
  TORCH_CHECK(x.size(1) == y.size(1) && x.size(2) == y.size(2), op,
              ": x and y must have the same number of parts P (dim 1) and channels C (dim 2),"
              " got x ", shape_str(x), " and y ", shape_str(y));
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
// visibilities [M, P] (contiguous).
struct PartPrep {
  Tensor xp, yp, xx, yy, vx, vy;
};

PartPrep prepare_parts(const Tensor& x, const Tensor& y, const Tensor& vx, const Tensor& vy) {
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
  return p;
}

int64_t part_pairs_per_tile(int64_t chunk_size, int64_t P, bool cuda) {
  if (chunk_size > 0) return chunk_size;
  return cuda ? std::max<int64_t>(1, (int64_t(1) << 24) / P) : std::max<int64_t>(64, (int64_t(1) << 18) / P);
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

Tensor part_dist_impl(const Tensor& x, const Tensor& y, const Tensor& vx, const Tensor& vy,
                      double empty_value, int64_t chunk_size, const Launchers& K) {
  const char* op = "partdist.part_dist";
  check_parts(op, x, y, vx, vy);
  check_chunk(op, chunk_size);
  check_empty_value(op, empty_value);
  const int64_t M = x.size(0), N = y.size(0), P = x.size(1);
  PartPrep p = prepare_parts(x, y, vx, vy);
  Tensor out = at::empty({M, N}, p.xx.options());
  if (M == 0 || N == 0) return out.to(x.scalar_type());
  const bool cuda = x.is_cuda();
  Tiling T = tiling_for(M, N, part_pairs_per_tile(chunk_size, P, cuda));
  // Tiles in sequence; the GEMM and the launcher are parallel inside.
  for_each_tile(M, N, T, false, [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc) {
    Tensor xy = at::bmm(p.xp.narrow(1, a0, mc), p.yp.narrow(1, b0, nc).transpose(1, 2));
    K.part_forward(part_args(p, a0, mc, b0, nc, xy, N, empty_value),
                   out.narrow(0, a0, mc).narrow(1, b0, nc));
  });
  return out.to(x.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor, Tensor> part_dist_backward_impl(
    const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& vx, const Tensor& vy,
    double empty_value, int64_t chunk_size, bool vis_grad, const Launchers& K) {
  const char* op = "partdist.part_dist_backward";
  check_parts(op, x, y, vx, vy);
  check_chunk(op, chunk_size);
  check_empty_value(op, empty_value);
  const int64_t M = x.size(0), N = y.size(0), P = x.size(1);
  check_floating(op, "grad", grad);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == M && grad.size(1) == N, op,
              ": grad must have shape [M, N] = [", M, ", ", N, "], got ", shape_str(grad));
  TORCH_CHECK(grad.device() == x.device(), op, ": grad must be on ", x.device());
  PartPrep p = prepare_parts(x, y, vx, vy);
  Tensor gxp = at::zeros_like(p.xp), gyp = at::zeros_like(p.yp);
  Tensor gvx = at::zeros_like(p.vx), gvy = at::zeros_like(p.vy);
  if (M > 0 && N > 0) {
    Tensor g = grad.detach().to(p.xx.scalar_type()).contiguous();
    // Tiles in sequence (the tiles of one query block write the same rows of gx);
    // the launcher and the GEMMs are parallel inside.
    Tiling T = tiling_for(M, N, part_pairs_per_tile(chunk_size, P, x.is_cuda()));
    for_each_tile(M, N, T, false, [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc) {
      Tensor xt = p.xp.narrow(1, a0, mc), yt = p.yp.narrow(1, b0, nc);  // [P, mc|nc, C]
      Tensor xy = at::bmm(xt, yt.transpose(1, 2));                      // [P, mc, nc]
      Tensor cw = at::empty_like(xy);
      Tensor ce = vis_grad ? at::empty_like(xy) : Tensor();
      K.part_backward(part_args(p, a0, mc, b0, nc, xy, N, empty_value),
                      g.narrow(0, a0, mc).narrow(1, b0, nc), cw, ce);
      // dL/dx_ap += sum_b cw (x_ap - y_bp), dL/dy_bp -= sum_a cw (x_ap - y_bp)
      gxp.narrow(1, a0, mc).addcmul_(cw.sum(-1, true), xt).sub_(at::bmm(cw, yt));
      gyp.narrow(1, b0, nc)
          .addcmul_(cw.sum(-2).unsqueeze(-1), yt)
          .sub_(at::bmm(cw.transpose(1, 2), xt));
      if (vis_grad) {
        Tensor vxt = p.vx.narrow(0, a0, mc).t(), vyt = p.vy.narrow(0, b0, nc).t();  // [P, mc|nc]
        gvx.narrow(0, a0, mc).add_(at::bmm(ce, vyt.unsqueeze(-1)).squeeze(-1).t());
        gvy.narrow(0, b0, nc).add_(at::bmm(ce.transpose(1, 2), vxt.unsqueeze(-1)).squeeze(-1).t());
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
  TORCH_CHECK(max_iter >= 1 && max_iter <= (int64_t(1) << 30), op,
              ": max_iter must be >= 1, got ", max_iter);
  TORCH_CHECK(std::isfinite(tol) && tol >= 0.0, op, ": tol must be a finite number >= 0, got ",
              tol);
  check_chunk(op, chunk_size);
}

Tensor dsr_dist_impl(const Tensor& x, const Tensor& y, double beta, int64_t max_iter, double tol,
                     int64_t chunk_size, const Launchers& K) {
  const char* op = "partdist.dsr_dist";
  check_dsr(op, x, y, beta, max_iter, tol, chunk_size);
  const int64_t M = x.size(0), N = y.size(0), Lq = x.size(1), Lg = y.size(1);
  auto ct = compute_type(x);
  Tensor xc = x.detach().to(ct).contiguous(), yc = y.detach().to(ct).contiguous();
  Tensor out = at::empty({M, N}, xc.options());
  if (M == 0 || N == 0) return out.to(x.scalar_type());
  Tensor xx = xc.pow(2).sum(-1).contiguous();  // [M, Lq]
  const bool cuda = x.is_cuda();
  const int64_t per_pair = Lg * Lq;
  const int64_t pairs =
      chunk_size > 0 ? chunk_size
                     : std::max<int64_t>(1, (cuda ? (int64_t(1) << 26) : (int64_t(1) << 21)) / per_pair);
  Tiling T = tiling_for(M, N, pairs);
  FistaOptions o;
  o.beta = beta;
  o.max_iter = int(max_iter);
  o.tol = tol;
  for (int64_t b0 = 0; b0 < N; b0 += T.nc) {
    const int64_t nc = std::min(T.nc, N - b0);
    Tensor yt = yc.narrow(0, b0, nc);                          // [nc, Lg, C]
    Tensor G = at::bmm(yt, yt.transpose(1, 2)).contiguous();  // [nc, Lg, Lg]
    // step size: exact largest eigenvalue of each Gram matrix
    Tensor lip = at::linalg_eigvalsh(G).select(-1, Lg - 1).clamp_min(0).contiguous();
    for (int64_t a0 = 0; a0 < M; a0 += T.mc) {
      const int64_t mc = std::min(T.mc, M - a0);
      Tensor xt = xc.narrow(0, a0, mc);  // [mc, Lq, C]
      // B[i, j] = Y_j X_i^T  -> [mc, nc, Lg, Lq]
      Tensor B = at::matmul(yt.unsqueeze(0), xt.transpose(1, 2).unsqueeze(1)).contiguous();
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
      K.dsr_forward(a, err);
      out.narrow(0, a0, mc).narrow(1, b0, nc).copy_(err.mean(-1));
    }
  }
  return out.to(x.scalar_type());
}

// ---------------------------------------------------------------- registration
enum class Dev { kCPU, kCUDA };

template <Dev D>
const Launchers& launchers() {
#ifdef PARTDIST_WITH_CUDA
  static const Launchers cuda{part_forward_cuda, part_backward_cuda, dsr_forward_cuda};
  if (D == Dev::kCUDA) return cuda;
#endif
  static const Launchers cpu{part_forward_cpu, part_backward_cpu, dsr_forward_cpu};
  return cpu;
}

template <Dev D>
struct Ops {
  static Tensor part_dist(const Tensor& x, const Tensor& y, const Tensor& vx, const Tensor& vy,
                          double empty_value, int64_t chunk) {
    return part_dist_impl(x, y, vx, vy, empty_value, chunk, launchers<D>());
  }
  static std::tuple<Tensor, Tensor, Tensor, Tensor> part_dist_backward(
      const Tensor& g, const Tensor& x, const Tensor& y, const Tensor& vx, const Tensor& vy,
      double empty_value, int64_t chunk, bool vis_grad) {
    return part_dist_backward_impl(g, x, y, vx, vy, empty_value, chunk, vis_grad, launchers<D>());
  }
  static Tensor dsr_dist(const Tensor& x, const Tensor& y, double beta, int64_t max_iter,
                         double tol, int64_t chunk) {
    return dsr_dist_impl(x, y, beta, max_iter, tol, chunk, launchers<D>());
  }
  static void register_impls(torch::Library& m) {
    m.impl("part_dist", &part_dist);
    m.impl("part_dist_backward", &part_dist_backward);
    m.impl("dsr_dist", &dsr_dist);
  }
};

}  // namespace
}  // namespace parts
}  // namespace partdist

// part_dist: visibility-weighted mean of the per-part Euclidean distances of all
// query x gallery pairs (empty_value where two images share no visible part).
// dsr_dist: DSR reconstruction distance (FISTA Lasso per query cell).
TORCH_LIBRARY_FRAGMENT(partdist, m) {
  m.def(
      "part_dist(Tensor x, Tensor y, Tensor vis_x, Tensor vis_y, float empty_value, "
      "int chunk_size=0) -> Tensor");
  m.def(
      "part_dist_backward(Tensor grad, Tensor x, Tensor y, Tensor vis_x, Tensor vis_y, "
      "float empty_value, int chunk_size, bool vis_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "dsr_dist(Tensor x, Tensor y, float beta, int max_iter=200, float tol=1e-5, "
      "int chunk_size=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(partdist, CPU, m) {
  partdist::parts::Ops<partdist::parts::Dev::kCPU>::register_impls(m);
}

#ifdef PARTDIST_WITH_CUDA
TORCH_LIBRARY_IMPL(partdist, CUDA, m) {
  partdist::parts::Ops<partdist::parts::Dev::kCUDA>::register_impls(m);
}
#endif
