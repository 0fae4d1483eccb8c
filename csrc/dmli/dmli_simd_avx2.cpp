// dmli_simd_body.h for AVX2 + FMA (8 float lanes), whatever the build's flags; run
// only where the CPU has both (common/cpu_isa.h).
#include "../common/cpu_isa.h"
#include "dmli_simd.h"
#include "dmli_tanh.h"

#if PARTDIST_X86_DISPATCH
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace partdist {
namespace dmli {
namespace simd {
namespace avx2 {
struct VT {
  static constexpr int NV = 3, ROWS = 4;
  static constexpr int W = 8;
  typedef float V __attribute__((vector_size(4 * W)));
  // The micro-kernel's second-image vectors stay in registers: left alone, GCC folds each
  // load into the ROWS FMAs that use it (16 loads per 12 FMAs, more than two load ports
  // keep up with) instead of 7.
  static inline void pin(V& v) { asm("" : "+x"(v)); }
  static inline __m256i part_mask(int cnt) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline V load_part(const float* p, int cnt) {
    return V(_mm256_maskload_ps(p, part_mask(cnt)));
  }
  static inline void store_part(float* p, V v, int cnt) {
    _mm256_maskstore_ps(p, part_mask(cnt), __m256(v));
  }
  // rsqrt / rcp estimates (12 bits) and one Newton step: ~2 ulp, a fraction of the cost
  // of vsqrtps / vdivps, whose throughput limits the cells otherwise
  static inline V sqrt(V s) {
    const V y = V(_mm256_rsqrt_ps(__m256(s)));
    const V r = s * y;
    return r * (1.5f - 0.5f * r * y);
  }
  static inline V div(V p, V q) {
    V y = V(_mm256_rcp_ps(__m256(q)));
    y = y * (2.0f - q * y);
    return p * y;
  }
};
#include "dmli_simd_body.h"
}  // namespace avx2
}  // namespace simd
}  // namespace dmli
}  // namespace partdist

#pragma GCC pop_options
#endif
