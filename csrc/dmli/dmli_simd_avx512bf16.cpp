// dmli_simd_body.h for AVX-512F/DQ/VL + FMA + AVX512_BF16: the AVX-512 kernels, and the
// all-pairs kernel of bfloat16 values (bfloat16 features, or float32 ones rounded by
// gemm_dtype=torch.bfloat16) whose dot products take two channels per lane and instruction
// (vdpbf16ps: products exact in float32, float32 sums). Run only where the CPU has them
// (common/cpu_isa.h).
#include "../common/cpu_isa.h"
#include "dmli_simd.h"
#include "dmli_tanh.h"

#if PARTDIST_X86_DISPATCH
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bf16,avx2,fma")

namespace partdist {
namespace dmli {
namespace simd {
namespace avx512bf16 {
#include "dmli_simd_avx512_vt.h"
struct VT : VT512 {
  // acc + the products of the two bfloat16 channels in each 32-bit lane of b and of a
  static inline V dot2(V acc, V b, uint32_t a) {
    return V(_mm512_dpbf16_ps(__m512(acc), (__m512bh)_mm512_castps_si512(__m512(b)),
                              (__m512bh)_mm512_set1_epi32(int(a))));
  }
};
#include "dmli_simd_body.h"
}  // namespace avx512bf16
}  // namespace simd
}  // namespace dmli
}  // namespace partdist

#pragma GCC pop_options
#endif
