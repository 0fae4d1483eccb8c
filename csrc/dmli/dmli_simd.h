// The DMLI kernels compiled once per CPU instruction set (dmli_simd_body.h, included by
// dmli_simd_generic.cpp, dmli_simd_avx2.cpp, dmli_simd_avx512.cpp) and picked at run
// time by common/cpu_isa.h's level. Plain pointers only: these translation units
// include no ATen header (its inline functions must not be compiled for a wider
// instruction set than the rest of the build).
#pragma once

#include <cstdint>

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
};

#define PARTDIST_SIMD_DECLARE(NS) \
  namespace NS {                  \
  extern const Kernels kKernels;  \
  }
PARTDIST_SIMD_DECLARE(generic)
PARTDIST_SIMD_DECLARE(generic16)
PARTDIST_SIMD_DECLARE(avx2)
PARTDIST_SIMD_DECLARE(avx512)
#undef PARTDIST_SIMD_DECLARE

// The kernels of the level in use (common/cpu_isa.h).
const Kernels& kernels();

}  // namespace simd
}  // namespace dmli
}  // namespace partdist
