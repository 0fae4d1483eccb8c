// Backends of the part-distance family (part_dist, dsr_dist). The host drivers
// (parts_ops.cpp) are templates over a backend K with static members
//   part_forward(a, out)                 one part_dist tile
//   part_backward(a, gout, cw, ce)       gout: rows with stride a.out_si; cw, ce:
//                                        [P, mc, nc] (ce may be undefined)
//   dsr_forward(a, err)                  one dsr_dist tile
//   kTileBytes                           the budget of one tile's buffers
// Tensors are already positioned at the start of the tile (views are fine: only
// data_ptr() and the layout fields are used); all share one float/double dtype and
// device. CpuKernels (parts_cpu.cpp) and DeviceKernels<Exec> (parts_launch.h: the
// CUDA kernels, launched by CudaExec on the GPU or by emu::EmuExec in the CPU
// emulation). Each backend's file registers the ops for its dispatch key.
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/backends.h"
#include "../common/tiling.h"
#include "parts_common.h"

namespace partdist {

namespace parts {

// One part_dist tile (see PartTile): xy [P, mc, nc] contiguous dot products; xx, vx
// rows of [M, P]; yy, vy rows of [N, P]; out rows with stride out_si.
struct PartArgs : PartDims {
  double empty_value = 0.0;
  at::Tensor xy, xx, yy, vx, vy;
};

// One dsr_dist tile (see DsrTile): G [nc, Lg, Lg], B [mc, nc, Lg, Lq], xx [mc, Lq],
// lip [nc]; err [mc, nc, Lq] receives the reconstruction error of every task.
struct DsrArgs : DsrDims {
  at::Tensor G, B, xx, lip;
};

template <typename T>
PartTile<T> part_tile(const PartArgs& a) {
  PartTile<T> L;
  static_cast<PartDims&>(L) = a;
  L.xy_sp = a.mc * a.nc;
  L.xy_si = a.nc;
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
  static_cast<DsrDims&>(L) = a;
  L.G = a.G.const_data_ptr<T>();
  L.B = a.B.const_data_ptr<T>();
  L.xx = a.xx.const_data_ptr<T>();
  L.lip = a.lip.const_data_ptr<T>();
  return L;
}

#define PARTDIST_PARTS_BACKEND_MEMBERS                                                       \
  static constexpr int64_t kTileBytes = kOnDevice ? kDeviceTileBytes : kCpuTileBytes;        \
  static void part_forward(const PartArgs& a, const at::Tensor& out);                        \
  static void part_backward(const PartArgs& a, const at::Tensor& gout, const at::Tensor& cw, \
                            const at::Tensor& ce);                                           \
  static void dsr_forward(const DsrArgs& a, const at::Tensor& err);

PARTDIST_DECLARE_BACKENDS(PARTDIST_PARTS_BACKEND_MEMBERS)
#undef PARTDIST_PARTS_BACKEND_MEMBERS

}  // namespace parts
}  // namespace partdist
