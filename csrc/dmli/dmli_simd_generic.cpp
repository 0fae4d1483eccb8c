// dmli_simd_body.h at the build's own flags: the fallback of every CPU (generic, 8
// lanes), and the 16-lane code of the AVX-512 kernels for testing on any CPU
// (generic16). Selected by common/cpu_isa.h; kernels() here picks among all levels.
#include "../common/cpu_isa.h"
#include "dmli_simd.h"
#include "dmli_tanh.h"

namespace partdist {
namespace dmli {
namespace simd {

// Partial vectors lane by lane (the generic levels have no masked loads; a memcpy of a
// variable size is a library call per vector, and GCC makes a loop of cnt copies one: the
// loops run over all W lanes).
template <int W>
struct PartByLanes {
  typedef float PV __attribute__((vector_size(4 * W)));
  static inline PV load_part(const float* p, int cnt) {
    float t[W] = {};
    for (int l = 0; l < W; ++l)
      if (l < cnt) t[l] = p[l];
    PV v;
    __builtin_memcpy(&v, t, sizeof(PV));
    return v;
  }
  static inline void store_part(float* p, PV v, int cnt) {
    float t[W];
    __builtin_memcpy(t, &v, sizeof(PV));
    for (int l = 0; l < W; ++l)
      if (l < cnt) p[l] = t[l];
  }
};

namespace generic {
struct VT : PartByLanes<8> {
  static constexpr int NV = 3, ROWS = 4;
  static constexpr int W = 8;
  typedef float V __attribute__((vector_size(4 * W)));
  static inline void pin(V&) {}  // the compiler keeps the micro-kernel's vectors in registers
  static inline V sqrt(V v) {
    V r;
    for (int l = 0; l < W; ++l) r[l] = __builtin_sqrtf(v[l]);
    return r;
  }
  static inline V div(V p, V q) { return p / q; }
};
#include "dmli_simd_body.h"
}  // namespace generic

namespace generic16 {
struct VT : PartByLanes<16> {
  static constexpr int NV = 2, ROWS = 8;
  static constexpr int W = 16;
  typedef float V __attribute__((vector_size(4 * W)));
  typedef unsigned U __attribute__((vector_size(4 * W)));
  static inline void pin(V&) {}  // the compiler keeps the micro-kernel's vectors in registers
  // avx512bf16's vdpbf16ps in GCC vectors (the bfloat16 all-pairs kernel's code, for tests
  // on any CPU): the two bfloat16 values of a 32-bit word as floats
  static inline float bf16_lo(uint32_t a) {
    const uint32_t u = a << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  }
  static inline V dot2(V acc, V b, uint32_t a) {
    const U bu = (U)b;
    const V lo = (V)(bu << 16), hi = (V)(bu & 0xFFFF0000u);
    return acc + lo * bf16_lo(a) + hi * bf16_lo(a >> 16);
  }
  static inline V sqrt(V v) {
    V r;
    for (int l = 0; l < W; ++l) r[l] = __builtin_sqrtf(v[l]);
    return r;
  }
  static inline V div(V p, V q) { return p / q; }
};
#include "dmli_simd_body.h"
}  // namespace generic16

const Kernels& kernels() {
  switch (cpu_isa()) {
#if PARTDIST_X86_DISPATCH
    case CpuIsa::kAvx512Bf16:
      return avx512bf16::kKernels;
    case CpuIsa::kAvx512:
      return avx512::kKernels;
    case CpuIsa::kAvx2:
      return avx2::kKernels;
#endif
    case CpuIsa::kGeneric16:
      return generic16::kKernels;
    default:
      return generic::kKernels;
  }
}

}  // namespace simd
}  // namespace dmli
}  // namespace partdist
