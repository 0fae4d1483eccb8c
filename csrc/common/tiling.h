// Tile planning of the all-pairs ops (host code only): M query x N gallery pairs are
// processed in tiles of mc x nc pairs, sized so that the tile's buffers fit a byte
// budget of the backend (the pairs' per-tile footprint depends on the op and on the
// number of cells per pair, so a fixed number of pairs would not bound memory).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace partdist {

// Tile budgets (bytes of tile buffers, all of them together).
constexpr int64_t kCpuTileBytes = int64_t(8) << 20;        // sequential tiles, parallel inside
constexpr int64_t kCpuThreadTileBytes = int64_t(1) << 20;  // per-thread tiles (cache-sized)
constexpr int64_t kDeviceTileBytes = int64_t(256) << 20;   // CUDA (and its CPU emulation)
constexpr int64_t kMinL2TileBytes = int64_t(8) << 20;      // see device_dmli_tile_bytes

// The budget of a CUDA all-pairs DMLI tile (local_dist forward and backward) on a GPU with
// l2_bytes of L2 cache: half of L2, so that the tile's cells, which the stripe GEMM has just
// written, are still in L2 when the DP kernel reads them, and the next tile's GEMM overwrites
// them there instead of in device memory. That needs a GEMM long enough to cover the host's
// launches of a tile (its GEMM and DP kernel): float32 / float64 GEMMs of half an L2 of
// output run for tens of microseconds. Tensor-core GEMMs of float16 / bfloat16 operands are
// about ten times shorter, and on a GPU whose L2 is under 2 * kMinL2TileBytes no useful tile
// stays in L2: those keep kDeviceTileBytes (fewer, larger tiles).
inline int64_t device_dmli_tile_bytes(int64_t l2_bytes, bool half_gemm) {
  if (half_gemm || l2_bytes / 2 < kMinL2TileBytes) return kDeviceTileBytes;
  return std::min(l2_bytes / 2, kDeviceTileBytes);
}

struct Tiling {
  int64_t mc = 1, nc = 1;
  int64_t pairs() const { return mc * nc; }
};

// Pairs per tile: chunk_size when given (> 0), else as many as fit the budget
// (at least one).
inline int64_t tile_pairs(int64_t chunk_size, int64_t budget_bytes, int64_t bytes_per_pair) {
  if (chunk_size > 0) return chunk_size;
  return std::max<int64_t>(1, budget_bytes / std::max<int64_t>(1, bytes_per_pair));
}

// (queries, galleries) per tile for about `pairs` pairs, about square (mc ~ sqrt/2).
inline Tiling tiling_for(int64_t M, int64_t N, int64_t pairs) {
  pairs = std::max<int64_t>(pairs, 1);
  int64_t mc = std::max<int64_t>(1, int64_t(std::sqrt(double(pairs))) / 2);
  mc = std::min(mc, std::max<int64_t>(M, 1));
  int64_t nc = std::max<int64_t>(1, std::min(std::max<int64_t>(N, 1), pairs / mc));
  mc = std::max<int64_t>(1, std::min(std::max<int64_t>(M, 1), pairs / nc));
  return {mc, nc};
}

// Calls fn(a0, mc, b0, nc, scratch) for every tile, row-major over (query block,
// gallery block); in sequence, or in parallel over tiles. scratch = make() is made
// once per task (a thread's run of tiles), so that a tile buffer is reused.
template <typename Make, typename TileFn>
void for_each_tile(int64_t M, int64_t N, const Tiling& T, bool parallel, const Make& make,
                   const TileFn& fn) {
  const int64_t tn = (N + T.nc - 1) / T.nc, tiles = ((M + T.mc - 1) / T.mc) * tn;
  auto run = [&](int64_t begin, int64_t end) {
    auto scratch = make();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t a0 = (t / tn) * T.mc, b0 = (t % tn) * T.nc;
      fn(a0, std::min(T.mc, M - a0), b0, std::min(T.nc, N - b0), scratch);
    }
  };
  if (parallel)
    at::parallel_for(0, tiles, 1, run);
  else
    run(0, tiles);
}

// The same without scratch: fn(a0, mc, b0, nc), tiles in sequence.
template <typename TileFn>
void for_each_tile(int64_t M, int64_t N, const Tiling& T, const TileFn& fn) {
  for_each_tile(
      M, N, T, false, [] { return 0; },
      [&](int64_t a0, int64_t mc, int64_t b0, int64_t nc, int) { fn(a0, mc, b0, nc); });
}

}  // namespace partdist
