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
#include "dmli_simd_avx512_vt.h"
using VT = VT512;
#include "dmli_simd_body.h"
}  // namespace avx512
}  // namespace simd
}  // namespace dmli
}  // namespace partdist

#pragma GCC pop_options
#endif
