// Device launchers of the part-distance family (part_dist, dsr_dist). Tensors are
// already positioned at the start of the tile (views are fine: only data_ptr() and
// the layout fields are used); all share one float/double dtype and device.
#pragma once

#include <ATen/core/Tensor.h>

#include "parts_common.h"

namespace partdist {
namespace parts {

// One part_dist tile (see PartTile): xy [P, mc, nc] contiguous dot products; xx, vx
// rows of [M, P]; yy, vy rows of [N, P]; out rows with stride out_si.
struct PartArgs {
  int64_t mc = 0, nc = 0, out_si = 0;
  int P = 0;
  double empty_value = 0.0;
  at::Tensor xy, xx, yy, vx, vy;
};

// One dsr_dist tile (see DsrTile): G [nc, Lg, Lg], B [mc, nc, Lg, Lq], xx [mc, Lq],
// lip [nc]; err [mc, nc, Lq] receives the reconstruction error of every task.
struct DsrArgs {
  int64_t mc = 0, nc = 0;
  int Lq = 0, Lg = 0;
  FistaOptions opt;
  at::Tensor G, B, xx, lip;
};

template <typename T>
PartTile<T> part_tile(const PartArgs& a) {
  PartTile<T> L;
  L.mc = a.mc;
  L.nc = a.nc;
  L.P = a.P;
  L.xy_sp = a.mc * a.nc;
  L.xy_si = a.nc;
  L.out_si = a.out_si;
  L.empty_value = T(a.empty_value);
  L.xy = a.xy.const_data_ptr<T>();
  L.xx = a.xx.const_data_ptr<T>();
  L.yy = a.yy.const_data_ptr<T>();
  L.vx = a.vx.const_data_ptr<T>();
  L.vy = a.vy.const_data_ptr<T>();
  return L;
}

template <typename T>
DsrTile<T> dsr_tile(const DsrArgs& a) {
  DsrTile<T> L;
  L.mc = a.mc;
  L.nc = a.nc;
  L.Lq = a.Lq;
  L.Lg = a.Lg;
  L.opt = a.opt;
  L.G = a.G.const_data_ptr<T>();
  L.B = a.B.const_data_ptr<T>();
  L.xx = a.xx.const_data_ptr<T>();
  L.lip = a.lip.const_data_ptr<T>();
  return L;
}

using PartForward = void (*)(const PartArgs& a, const at::Tensor& out);
// gout: rows with stride a.out_si; cw, ce: [P, mc, nc] (ce may be undefined).
using PartBackward = void (*)(const PartArgs& a, const at::Tensor& gout, const at::Tensor& cw,
                              const at::Tensor& ce);
using DsrForward = void (*)(const DsrArgs& a, const at::Tensor& err);

struct Launchers {
  PartForward part_forward;
  PartBackward part_backward;
  DsrForward dsr_forward;
};

void part_forward_cpu(const PartArgs& a, const at::Tensor& out);
void part_backward_cpu(const PartArgs& a, const at::Tensor& gout, const at::Tensor& cw,
                       const at::Tensor& ce);
void dsr_forward_cpu(const DsrArgs& a, const at::Tensor& err);
#ifdef PARTDIST_WITH_CUDA
void part_forward_cuda(const PartArgs& a, const at::Tensor& out);
void part_backward_cuda(const PartArgs& a, const at::Tensor& gout, const at::Tensor& cw,
                        const at::Tensor& ce);
void dsr_forward_cuda(const DsrArgs& a, const at::Tensor& err);
#endif

}  // namespace parts
}  // namespace partdist
