// What a kernel body sees of its launch (host+device): the shims in
// common/cuda_launch.cuh compute it from blockIdx / threadIdx on the device, the CPU
// emulation (common/emulate.h) from its loops over the same grid.
#pragma once

#include <cstdint>

#include "hd.h"

namespace partdist {

constexpr int kWarpSize = 32;

struct ThreadPos {
  int64_t index;  // blockIdx.x * blockDim.x + threadIdx.x
  int64_t count;  // gridDim.x * blockDim.x (the stride of a grid-stride loop)
  PD_HD int lane() const { return int(index % kWarpSize); }
  PD_HD int64_t warp() const { return index / kWarpSize; }
};

// Block-cooperative kernels (Exec::run_blocks): K::run(Block& blk, args...) runs once
// per block and is written as a sequence of phases, blk.each(f): f(t) for every thread t
// of the block, then a barrier (__syncthreads()). blk.block is the block's index,
// blk.threads its thread count, blk.shared<T>() its shared memory, and
// `typename Blk::template PerThread<T> v(blk)` a value per thread, v[t] (registers on
// the device). The CPU emulation runs the threads of a phase in order.

// Blocks of `threads` threads that cover n threads, at most `cap` blocks (grid-stride
// kernels pass a cap; the others cover n exactly).
inline int64_t blocks_for(int64_t n, int threads, int64_t cap = int64_t(1) << 31) {
  const int64_t b = (n + threads - 1) / threads;
  return b < cap ? b : cap;
}

// The sum of v over the warp's lanes, in every lane (xor butterfly: lanes l and
// l ^ off add the same two values, so every lane ends with the same bits).
PD_NO_EXEC_CHECK
template <typename T, typename Warp>
PD_HD T warp_sum(const Warp& w, T v) {
  for (int off = kWarpSize / 2; off > 0; off /= 2) v += w.shfl_xor(v, unsigned(off));
  return v;
}

}  // namespace partdist
