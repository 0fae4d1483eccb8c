// The vector type of the AVX-512 kernels (16 float lanes), shared by dmli_simd_avx512.cpp and
// dmli_simd_avx512bf16.cpp: included inside their namespace, after their target pragma and
// <immintrin.h> (no #include here, no #pragma once: each unit compiles it for its own target).
struct VT512 {
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
