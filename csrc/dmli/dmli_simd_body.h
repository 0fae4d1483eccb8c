// The DMLI CPU kernels of dmli_simd.h, written once over a vector type. Included by the
// per-instruction-set translation units inside their namespace, after their
// `#pragma GCC target`, with a struct VT in scope:
//   VT::W                 float lanes of a vector
//   VT::V                 a GCC vector of W floats (vector_size(4 * W))
//   VT::sqrt(V)           lane-wise square root of a finite s > 0 (may be approximate:
//                         a few ulp)
//   VT::div(V p, V q)     lane-wise p / q for q in [4.8e-3, 7.5e2] (may be approximate)
//   VT::NV, VT::ROWS      the micro-kernel's tile: ROWS stripes of a first image x NV
//                         vectors of second images (ROWS * NV accumulator registers)
// No #include here: whatever this needs is included before the target pragma.
//
// All pairs (allpairs): the gallery images go in blocks of B = NV * W, one image per
// lane. A block's stripes are packed channel-major ([n][C][B]), then for each first
// image a and each stripe j of the block a register-blocked micro-kernel computes the
// dot products of a's stripes (ROWS at a time, NV accumulator registers each, the
// channels of a broadcast from a packed [C][m] copy) with stripe j of the B images:
// the column j of the W pairs' cell matrices, in registers. The epilogue turns them
// into cells (GEMM-form distance, clamp, sqrt, tanh) and advances the DP by one column
// (S(i, j) from S(i - 1, j) and S(i, j - 1)), so neither the dot products nor the
// cells ever reach memory.

namespace body {
namespace {

using V = VT::V;
constexpr int W = VT::W;
constexpr int NV = VT::NV;
constexpr int kRows = VT::ROWS;
constexpr int B = NV * W;  // second images per block
// Largest m (dmli_common.h's kMaxStripes).
constexpr int kMaxRows = 128;

__attribute__((always_inline)) inline V load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
__attribute__((always_inline)) inline void store(float* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
__attribute__((always_inline)) inline V splat(float s) {
  V v;
  for (int l = 0; l < W; ++l) v[l] = s;
  return v;
}

// pd_min lane by lane (torch.minimum: NaN propagates).
__attribute__((always_inline)) inline V vmin(V a, V b) { return ((b < a) | (b != b)) ? b : a; }

// pd_tanh of dmli_common.h, lane by lane (same coefficients, same clamp).
__attribute__((always_inline)) inline V vtanh(V x) {
  const V c = splat(7.90531110763549805f), nc = splat(-7.90531110763549805f);
  x = x > c ? c : (x < nc ? nc : x);
  const V x2 = x * x;
  V p = splat(-2.76076847742355e-16f);
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  V q = splat(1.19825839466702e-06f);
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return VT::div(p, q);
}

// Cell value from |a|^2 (aa), |b|^2 (bb) and a.b (ab): cell_value of dmli_common.h.
__attribute__((always_inline)) inline V vcell(float aa, V bb, V ab, bool normalize) {
  V s = (splat(aa) + bb) - splat(2.0f) * ab;
  const V z = {};
  // 0, +inf and NaN pass through unchanged (VT::sqrt only sees finite s > 0)
  const V inf = splat(__builtin_inff());
  const auto regular = (s > z) & (s < inf);
  s = s < z ? z : s;
  const V r = regular ? VT::sqrt(regular ? s : splat(1.0f)) : s;
  return normalize ? vtanh(splat(0.5f) * r) : r;
}

// out[r * NV + v] = sum_k A[k * lda + r] * Bp[k * B + v * W + l] (lane l), r < R.
template <int R>
__attribute__((always_inline)) inline void dots(const float* A, int lda, const float* Bp, int64_t K,
                                                V* out) {
  V c[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(Bp + k * B + v * W);
    const float* a = A + k * lda;
    for (int r = 0; r < R; ++r) {
      const float s = a[r];
      for (int v = 0; v < NV; ++v) c[r][v] += b[v] * s;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) out[r * NV + v] = c[r][v];
}

template <int R>
void dots_upto(int rows, const float* A, int lda, const float* Bp, int64_t K, V* out) {
  if constexpr (R > 1) {
    if (rows < R) return dots_upto<R - 1>(rows, A, lda, Bp, K, out);
  }
  dots<R>(A, lda, Bp, K, out);
}

int64_t allpairs_scratch(int64_t queries, int m, int n, int64_t C) {
  // packed first images, packed block of second images, their norms
  return queries * C * m + int64_t(n) * C * B + int64_t(n) * B;
}

// One column j of the DP of B pairs: cells from the dot products acc ([m][NV]; |a_i|^2
// in xxa, |b_j|^2 of the lanes in bb), then S(i, j) into col (which holds S(i, j - 1)).
// The cells are computed first, all of them (independent: their sqrt / divide
// latencies overlap), then the DP chain over i.
template <bool kNormalize, bool kBand>
__attribute__((always_inline)) inline void dp_column(int m, int n, int j, const float* xxa,
                                                     const float* bb, V* acc, V* col,
                                                     const unsigned char* allowed) {
  V bv[NV];
  for (int v = 0; v < NV; ++v) bv[v] = load(bb + v * W);
  for (int i = 0; i < m; ++i)
    for (int v = 0; v < NV; ++v)
      acc[i * NV + v] = vcell(xxa[i], bv[v], acc[i * NV + v], kNormalize);
  const V inf = splat(__builtin_inff());
  for (int v = 0; v < NV; ++v) {
    V up = inf;
    for (int i = 0; i < m; ++i) {
      const V d = acc[i * NV + v];
      V& c = col[i * NV + v];
      V s;
      if (i == 0)
        s = j == 0 ? d : c + d;
      else if (j == 0)
        s = up + d;
      else
        s = vmin(up, c) + d;
      if (kBand && !allowed[i * n + j]) s = inf;
      c = s;
      up = s;
    }
  }
}

template <bool kNormalize, bool kBand>
void allpairs_impl(const AllPairsArgs& P, int64_t a0, int64_t a1, int64_t b0, int64_t b1,
                   float* scratch) {
  const int m = P.m, n = P.n;
  const int64_t C = P.C;
  float* packA = scratch;                    // [a1 - a0][C][m]
  float* packB = packA + (a1 - a0) * C * m;  // [n][C][B]
  float* yyp = packB + int64_t(n) * C * B;   // [n][B]
  V acc[kMaxRows * NV];                      // dot products of column j, then its cells
  V col[kMaxRows * NV];                      // the DP column: S(i, j - 1), then S(i, j)
  for (int64_t a = a0; a < a1; ++a) {
    const float* xa = P.x + a * m * C;
    float* pa = packA + (a - a0) * C * m;
    for (int i = 0; i < m; ++i)
      for (int64_t k = 0; k < C; ++k) pa[k * m + i] = xa[i * C + k];
  }
  for (int64_t pb = b0; pb < b1; pb += B) {
    const int cnt = int(pb + B <= b1 ? B : b1 - pb);
    // lanes past the last image repeat it (their results are dropped)
    for (int l = 0; l < B; ++l) {
      const float* yb = P.y + (pb + (l < cnt ? l : cnt - 1)) * n * C;
      const float* nb = P.yy + (pb + (l < cnt ? l : cnt - 1)) * n;
      for (int j = 0; j < n; ++j) {
        float* dst = packB + int64_t(j) * C * B + l;
        const float* src = yb + int64_t(j) * C;
        for (int64_t k = 0; k < C; ++k) dst[k * B] = src[k];
        yyp[j * B + l] = nb[j];
      }
    }
    for (int64_t a = a0; a < a1; ++a) {
      const float* pa = packA + (a - a0) * C * m;
      const float* xxa = P.xx + a * m;
      for (int j = 0; j < n; ++j) {
        for (int i0 = 0; i0 < m; i0 += kRows)
          dots_upto<kRows>(m - i0, pa + i0, m, packB + int64_t(j) * C * B, C, acc + i0 * NV);
        dp_column<kNormalize, kBand>(m, n, j, xxa, yyp + j * B, acc, col, P.allowed);
      }
      float res[B];
      for (int v = 0; v < NV; ++v) store(res + v * W, col[(m - 1) * NV + v]);
      float* o = P.out + a * P.out_stride + pb;
      for (int l = 0; l < cnt; ++l) o[l] = res[l];
    }
  }
}

void allpairs(const AllPairsArgs& P, int64_t a0, int64_t a1, int64_t b0, int64_t b1,
              float* scratch) {
  const bool band = P.allowed != nullptr;
  if (P.normalize)
    band ? allpairs_impl<true, true>(P, a0, a1, b0, b1, scratch)
         : allpairs_impl<true, false>(P, a0, a1, b0, b1, scratch);
  else
    band ? allpairs_impl<false, true>(P, a0, a1, b0, b1, scratch)
         : allpairs_impl<false, false>(P, a0, a1, b0, b1, scratch);
}

}  // namespace
}  // namespace body

extern const Kernels kKernels;
const Kernels kKernels{body::B, &body::allpairs_scratch, &body::allpairs};
