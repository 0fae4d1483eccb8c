// dmli_simd_body.h for AVX-512F/DQ/VL + FMA (16 float lanes), whatever the build's
// flags; run only where the CPU has them (common/cpu_isa.h).
#include "../common/cpu_isa.h"
#include "dmli_simd.h"
#include "dmli_tanh.h"

#if PARTDIST_X86_DISPATCH
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma")

namespace partdist {
namespace dmli {
namespace simd {
namespace avx512 {
struct VT {
  static constexpr int NV = 2, ROWS = 8;
  static constexpr int W = 16;
  typedef float V __attribute__((vector_size(4 * W)));
  static inline void pin(V&) {}  // the compiler keeps the micro-kernel's vectors in registers
  static inline V load_part(const float* p, int cnt) {
    return V(_mm512_maskz_loadu_ps(__mmask16((1u << cnt) - 1), p));
  }
  static inline void store_part(float* p, V v, int cnt) {
    _mm512_mask_storeu_ps(p, __mmask16((1u << cnt) - 1), __m512(v));
  }
  // rsqrt14 / rcp14 estimates (14 bits) and one Newton step: ~1 ulp
  static inline V sqrt(V s) {
    const V y = V(_mm512_rsqrt14_ps(__m512(s)));
    const V r = s * y;
    return r * (1.5f - 0.5f * r * y);
  }
  static inline V div(V p, V q) {
    V y = V(_mm512_rcp14_ps(__m512(q)));
    y = y * (2.0f - q * y);
    return p * y;
  }
};
#include "dmli_simd_body.h"
}  // namespace avx512
}  // namespace simd
}  // namespace dmli
}  // namespace partdist

#pragma GCC pop_options
#endif
