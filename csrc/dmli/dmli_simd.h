// The DMLI kernels compiled once per CPU instruction set (dmli_simd_body.h, included by
// dmli_simd_generic.cpp, dmli_simd_avx2.cpp, dmli_simd_avx512.cpp) and picked at run
// time by common/cpu_isa.h's level. Plain pointers only: these translation units
// include no ATen header (its inline functions must not be compiled for a wider
// instruction set than the rest of the build).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace partdist {
namespace dmli {
namespace simd {

// All pairs of float32 images, forward of the hard-minimum DP (optional band).
//   x [M, m, C], y [N, n, C] contiguous; xx [M, m], yy [N, n] their squared stripe norms;
//   out[a * out_stride + b] receives the distance of pair (a, b).
//   allowed: m*n flags (row-major, nonzero = cell allowed by the band), or null.
struct AllPairsArgs {
  const float* x;
  const float* y;
  const float* xx;
  const float* yy;
  float* out;
  int64_t out_stride;
  int64_t C;
  int m, n;
  bool normalize;
  const unsigned char* allowed;
};

// One instruction set's kernels.
struct Kernels {
  int lanes;  // gallery images per SIMD block
  // Floats of scratch that allpairs needs for a block of `queries` first images.
  int64_t (*allpairs_scratch)(int64_t queries, int m, int n, int64_t C);
  // Pairs (a, b), a in [a0, a1), b in [b0, b1); single-threaded.
  void (*allpairs)(const AllPairsArgs& P, int64_t a0, int64_t a1, int64_t b0, int64_t b1,
                   float* scratch);
  // One aligned pair, x [m, C] and y [n, C] contiguous: xy[i * n + j] = x_i . y_j,
  // xx[i] = |x_i|^2, yy[j] = |y_j|^2.
  void (*pair_dots)(const float* x, const float* y, int m, int n, int64_t C, float* xy, float* xx,
                    float* yy);
  // Chain rule of one aligned pair from its cell weights w (m*n, row-major):
  //   gx_i = sum_j w_ij (x_i - y_j) (j ascending), gy_j = -sum_i w_ij (x_i - y_j)
  //   (i ascending), over the cells with a nonzero weight; every row of gx [m, C] and
  //   gy [n, C] is written (zeros where no cell contributes). idx: pair_grads_scratch
  //   ints.
  void (*pair_grads)(const float* x, const float* y, int m, int n, int64_t C, const float* w,
                     float* gx, float* gy, int* idx);
  // The hard-minimum DP of `lanes` aligned pairs at once (one per SIMD lane, lanes <= W;
  // the other lanes compute garbage that is not written): the cells of pair l are
  // d[l * ds + i * n + j]; allowed: m*n band flags or null. Writes the distance of pair l
  // to out[l] (out may be null); with gout non-null (dL/d(distance) of each pair) also
  // dL/dd(i, j) of pair l to gcell[(i * n + j) * W + l] (the ties split in half, as
  // dmli_common.h's dmli_reverse). scratch: lanes_dp_scratch floats.
  void (*lanes_dp)(const float* d, int64_t ds, int lanes, int m, int n,
                   const unsigned char* allowed, const float* gout, float* out, float* gcell,
                   float* scratch);
  int64_t (*lanes_dp_scratch)(int m, int n);
  int width;  // float lanes of a vector (W of lanes_dp)
  // allpairs for x and y holding bfloat16 values (each float32 exactly a bfloat16): the dot
  // products two channels per lane and instruction (products exact, float32 sums); null
  // where the level has no such instruction (allpairs takes them then).
  void (*allpairs_bf16)(const AllPairsArgs& P, int64_t a0, int64_t a1, int64_t b0, int64_t b1,
                        float* scratch);
};

// Ints of scratch that pair_grads needs for an m x n pair.
inline int64_t pair_grads_scratch(int m, int n) { return 2 * int64_t(m) * n + m + n + 2; }

#define PARTDIST_SIMD_DECLARE(NS) \
  namespace NS {                  \
  extern const Kernels kKernels;  \
  }
PARTDIST_SIMD_DECLARE(generic)
PARTDIST_SIMD_DECLARE(generic16)
PARTDIST_SIMD_DECLARE(avx2)
PARTDIST_SIMD_DECLARE(avx512)
PARTDIST_SIMD_DECLARE(avx512bf16)
#undef PARTDIST_SIMD_DECLARE

// The kernels of the level in use (common/cpu_isa.h).
const Kernels& kernels();

}  // namespace simd
}  // namespace dmli
}  // namespace partdist
