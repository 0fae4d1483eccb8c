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
//   VT::pin(V&)           keeps a value in a register from there on (or does nothing)
//   VT::dot2(acc, b, a)   optional: acc + the products of the two bfloat16 values in each
//                         32-bit lane of b with the two in a (the bfloat16 all-pairs kernel,
//                         allpairs_bf16, exists where VT has it)
//   VT::load_part(p, cnt), VT::store_part(p, v, cnt)
//                         the first cnt (0 < cnt < W) floats at p as a vector (zeros
//                         after), and their store: masked loads and stores where the
//                         level has them (a memcpy of a variable size is a library call)
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

// pd_tanh of dmli_common.h lane by lane: dmli_tanh.h's function with the level's
// division.
struct VecTanhOps {
  static V clamp(V x, float c) {
    const V hi = splat(c), lo = splat(-c);
    return x > hi ? hi : (x < lo ? lo : x);
  }
  static V div(V p, V q) { return VT::div(p, q); }
};
__attribute__((always_inline)) inline V vtanh(V x) { return tanh_rational<VecTanhOps>(x); }

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

// bfloat16 pairs (allpairs_bf16): channels 2k and 2k + 1 of a stripe as one 32-bit word, the
// bfloat16 bits of the first in the low half (each float holds a bfloat16 value exactly: its
// high 16 bits); a missing last channel is 0. Kept in the float scratch as bit patterns.
__attribute__((always_inline)) inline uint32_t bf16_pair(const float* s, int64_t k, int64_t C) {
  uint32_t lo, hi = 0;
  __builtin_memcpy(&lo, s + 2 * k, 4);
  if (2 * k + 1 < C) __builtin_memcpy(&hi, s + 2 * k + 1, 4);
  return (lo >> 16) | (hi & 0xFFFF0000u);
}
__attribute__((always_inline)) inline void put_bits(float* p, uint32_t u) {
  __builtin_memcpy(p, &u, 4);
}

// The micro-kernel's multiply-add of one packed word a of the first image with the lanes b:
// float32 channels, or bfloat16 channel pairs by T::dot2 (T = VT, a template argument, so
// that only a level with dot2 compiles it).
struct FloatMac {
  __attribute__((always_inline)) static V step(V c, V b, const float* a) { return c + b * *a; }
};
template <typename T>
struct Bf16Mac {
  __attribute__((always_inline)) static V step(V c, V b, const float* a) {
    uint32_t w;
    __builtin_memcpy(&w, a, 4);
    return T::dot2(c, b, w);
  }
};

// out[r * NV + v] = sum_k Mac::step over the packed words A[k * lda + r] and the lane vectors
// Bp[k * B + v * W ...], r < R.
template <typename Mac, int R>
__attribute__((always_inline)) inline void dots(const float* A, int lda, const float* Bp, int64_t K,
                                                V* out) {
  V c[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
    for (int v = 0; v < NV; ++v) {
      b[v] = load(Bp + k * B + v * W);
      VT::pin(b[v]);
    }
    const float* a = A + k * lda;
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) c[r][v] = Mac::step(c[r][v], b[v], a + r);
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) out[r * NV + v] = c[r][v];
}

template <typename Mac, int R>
void dots_upto(int rows, const float* A, int lda, const float* Bp, int64_t K, V* out) {
  if constexpr (R > 1) {
    if (rows < R) return dots_upto<Mac, R - 1>(rows, A, lda, Bp, K, out);
  }
  dots<Mac, R>(A, lda, Bp, K, out);
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

// T: VT (kBf16: channel pairs of bfloat16 values, Cp = ceil(C / 2) words per stripe, dot
// products by T::dot2; otherwise Cp = C floats).
template <typename T, bool kNormalize, bool kBand, bool kBf16>
void allpairs_impl(const AllPairsArgs& P, int64_t a0, int64_t a1, int64_t b0, int64_t b1,
                   float* scratch) {
  const int m = P.m, n = P.n;
  const int64_t C = P.C;
  const int64_t Cp = kBf16 ? (C + 1) / 2 : C;
  using Mac = std::conditional_t<kBf16, Bf16Mac<T>, FloatMac>;
  float* packA = scratch;                     // [a1 - a0][Cp][m]
  float* packB = packA + (a1 - a0) * Cp * m;  // [n][Cp][B]
  float* yyp = packB + int64_t(n) * Cp * B;   // [n][B]
  V acc[kMaxRows * NV];                       // dot products of column j, then its cells
  V col[kMaxRows * NV];                       // the DP column: S(i, j - 1), then S(i, j)
  for (int64_t a = a0; a < a1; ++a) {
    const float* xa = P.x + a * m * C;
    float* pa = packA + (a - a0) * Cp * m;
    for (int i = 0; i < m; ++i)
      for (int64_t k = 0; k < Cp; ++k) {
        if constexpr (kBf16)
          put_bits(pa + k * m + i, bf16_pair(xa + i * C, k, C));
        else
          pa[k * m + i] = xa[i * C + k];
      }
  }
  for (int64_t pb = b0; pb < b1; pb += B) {
    const int cnt = int(pb + B <= b1 ? B : b1 - pb);
    // lanes past the last image repeat it (their results are dropped)
    for (int l = 0; l < B; ++l) {
      const float* yb = P.y + (pb + (l < cnt ? l : cnt - 1)) * n * C;
      const float* nb = P.yy + (pb + (l < cnt ? l : cnt - 1)) * n;
      for (int j = 0; j < n; ++j) {
        float* dst = packB + int64_t(j) * Cp * B + l;
        const float* src = yb + int64_t(j) * C;
        for (int64_t k = 0; k < Cp; ++k) {
          if constexpr (kBf16)
            put_bits(dst + k * B, bf16_pair(src, k, C));
          else
            dst[k * B] = src[k];
        }
        yyp[j * B + l] = nb[j];
      }
    }
    for (int64_t a = a0; a < a1; ++a) {
      const float* pa = packA + (a - a0) * Cp * m;
      const float* xxa = P.xx + a * m;
      for (int j = 0; j < n; ++j) {
        const float* pbj = packB + int64_t(j) * Cp * B;
        for (int i0 = 0; i0 < m; i0 += kRows)
          dots_upto<Mac, kRows>(m - i0, pa + i0, m, pbj, Cp, acc + i0 * NV);
        dp_column<kNormalize, kBand>(m, n, j, xxa, yyp + j * B, acc, col, P.allowed);
      }
      float res[B];
      for (int v = 0; v < NV; ++v) store(res + v * W, col[(m - 1) * NV + v]);
      float* o = P.out + a * P.out_stride + pb;
      for (int l = 0; l < cnt; ++l) o[l] = res[l];
    }
  }
}

template <typename T, bool kBf16>
void allpairs_of(const AllPairsArgs& P, int64_t a0, int64_t a1, int64_t b0, int64_t b1,
                 float* scratch) {
  const bool band = P.allowed != nullptr;
  if (P.normalize)
    band ? allpairs_impl<T, true, true, kBf16>(P, a0, a1, b0, b1, scratch)
         : allpairs_impl<T, true, false, kBf16>(P, a0, a1, b0, b1, scratch);
  else
    band ? allpairs_impl<T, false, true, kBf16>(P, a0, a1, b0, b1, scratch)
         : allpairs_impl<T, false, false, kBf16>(P, a0, a1, b0, b1, scratch);
}

void allpairs(const AllPairsArgs& P, int64_t a0, int64_t a1, int64_t b0, int64_t b1,
              float* scratch) {
  allpairs_of<VT, false>(P, a0, a1, b0, b1, scratch);
}

// allpairs_of<VT, true> where VT has dot2, else null.
template <typename T, typename = void>
struct HasDot2 : std::false_type {};
template <typename T>
struct HasDot2<T, std::void_t<decltype(&T::dot2)>> : std::true_type {};
template <typename T>
constexpr auto allpairs_bf16() {
  if constexpr (HasDot2<T>::value)
    return &allpairs_of<T, true>;
  else
    return static_cast<decltype(&allpairs_of<T, false>)>(nullptr);
}

// ------------------------------------------------------------- aligned pairs
// The per-pair dot products and chain rule of the aligned ops (batch_local_dist,
// local_dist_matrix and their backward): stripes of C channels, W channels per
// vector, the last vector of a stripe partial when W does not divide C.

typedef int VI __attribute__((vector_size(4 * W)));

// The first `cnt` floats at p, zeros after (0 < cnt < W), and their store: the level's.
__attribute__((always_inline)) inline V load_part(const float* p, int cnt) {
  return VT::load_part(p, cnt);
}
__attribute__((always_inline)) inline void store_part(float* p, V v, int cnt) {
  VT::store_part(p, v, cnt);
}

// One step of the transposing sum (hsum_lanes): blocks of Bk lanes of p and q
// interleaved, lo takes the first half of each 2 Bk lanes of both, hi the second.
constexpr int lo_lane(int b, int i) {
  return (i % (2 * b)) < b ? i / (2 * b) * (2 * b) + i % (2 * b)
                           : W + i / (2 * b) * (2 * b) + i % (2 * b) - b;
}
constexpr int hi_lane(int b, int i) { return lo_lane(b, i) + b; }
template <int Bk, int... I>
__attribute__((always_inline)) inline V pair_sum(V p, V q, std::integer_sequence<int, I...>) {
  return __builtin_shuffle(p, q, VI{lo_lane(Bk, I)...}) +
         __builtin_shuffle(p, q, VI{hi_lane(Bk, I)...});
}
template <int Bk>
__attribute__((always_inline)) inline void hsum_step(V* v, int cnt) {
  for (int k = 0; k < cnt / 2; ++k)
    v[k] = pair_sum<Bk>(v[2 * k], v[2 * k + 1], std::make_integer_sequence<int, W>());
  if constexpr (2 * Bk < W) hsum_step<2 * Bk>(v, cnt / 2);
}
// v[0] receives in lane l the sum of the lanes of v[l], for the W vectors of v
// (log2(W) steps of shuffles and adds; v is overwritten).
__attribute__((always_inline)) inline V hsum_lanes(V* v) {
  hsum_step<1>(v, W);
  return v[0];
}

// acc[r * RB + s] (r < RA, s < RB) = lane-wise products of rows a + r*C and b + s*C,
// summed over the C channels (nfull full vectors, then `tail` channels).
template <int RA, int RB>
__attribute__((always_inline)) inline void dot_tile(const float* a, const float* b, int64_t C,
                                                    int64_t nfull, int tail, V* acc) {
  V c[RA * RB];
  for (int k = 0; k < RA * RB; ++k) c[k] = V{};
  for (int64_t v = 0; v < nfull; ++v) {
    V xa[RA], yb[RB];
    for (int r = 0; r < RA; ++r) xa[r] = load(a + r * C + v * W);
    for (int s = 0; s < RB; ++s) yb[s] = load(b + s * C + v * W);
    for (int r = 0; r < RA; ++r)
      for (int s = 0; s < RB; ++s) c[r * RB + s] += xa[r] * yb[s];
  }
  if (tail) {
    V xa[RA], yb[RB];
    for (int r = 0; r < RA; ++r) xa[r] = load_part(a + r * C + nfull * W, tail);
    for (int s = 0; s < RB; ++s) yb[s] = load_part(b + s * C + nfull * W, tail);
    for (int r = 0; r < RA; ++r)
      for (int s = 0; s < RB; ++s) c[r * RB + s] += xa[r] * yb[s];
  }
  for (int k = 0; k < RA * RB; ++k) acc[k] = c[k];
  for (int k = RA * RB; k < W; ++k) acc[k] = V{};
}

// The RA x RB dot products of rows a.. (RA of them) and b.. (RB) into out[r * so + s].
template <int RA, int RB>
void dot_block(const float* a, const float* b, int64_t C, float* out, int64_t so) {
  static_assert(RA * RB <= W, "a tile's sums must fit one vector");
  const int64_t nfull = C / W;
  const int tail = int(C - nfull * W);
  V acc[W];
  dot_tile<RA, RB>(a, b, C, nfull, tail, acc);
  float s[W];
  store(s, hsum_lanes(acc));
  for (int r = 0; r < RA; ++r)
    for (int q = 0; q < RB; ++q) out[r * so + q] = s[r * RB + q];
}

// Squared norms of R rows (stride C) into out.
template <int R>
void norm_block(const float* a, int64_t C, float* out) {
  const int64_t nfull = C / W;
  const int tail = int(C - nfull * W);
  V c[W];
  for (int k = 0; k < W; ++k) c[k] = V{};
  for (int64_t v = 0; v < nfull; ++v)
    for (int r = 0; r < R; ++r) {
      const V x = load(a + r * C + v * W);
      c[r] += x * x;
    }
  if (tail)
    for (int r = 0; r < R; ++r) {
      const V x = load_part(a + r * C + nfull * W, tail);
      c[r] += x * x;
    }
  float s[W];
  store(s, hsum_lanes(c));
  for (int r = 0; r < R; ++r) out[r] = s[r];
}
template <int R>
void norm_upto(int rows, const float* a, int64_t C, float* out) {
  if constexpr (R > 1) {
    if (rows < R) return norm_upto<R - 1>(rows, a, C, out);
  }
  norm_block<R>(a, C, out);
}
void row_norms(const float* a, int rows, int64_t C, float* out) {
  constexpr int R = W < 8 ? W : 8;
  for (int r0 = 0; r0 < rows; r0 += R) norm_upto<R>(rows - r0, a + r0 * C, C, out + r0);
}

// Tiles of 4 rows of x by 2 rows of y (8 accumulators: 6 loads per 8 FMAs); the
// edges in smaller tiles.
template <int RA>
void dot_rows(const float* x, const float* y, int n, int64_t C, float* xy) {
  int j = 0;
  for (; j + 2 <= n; j += 2) dot_block<RA, 2>(x, y + j * C, C, xy + j, n);
  if (j < n) dot_block<RA, 1>(x, y + j * C, C, xy + j, n);
}

void pair_dots(const float* x, const float* y, int m, int n, int64_t C, float* xy, float* xx,
               float* yy) {
  row_norms(x, m, C, xx);
  row_norms(y, n, C, yy);
  int i = 0;
  for (; i + 4 <= m; i += 4) dot_rows<4>(x + i * C, y, n, C, xy + i * n);
  switch (m - i) {
    case 3:
      dot_rows<3>(x + i * C, y, n, C, xy + i * n);
      break;
    case 2:
      dot_rows<2>(x + i * C, y, n, C, xy + i * n);
      break;
    case 1:
      dot_rows<1>(x + i * C, y, n, C, xy + i * n);
      break;
    default:
      break;
  }
}

// Channels [c0, c0 + K*W) of one gradient row (of the last vector only `tail`
// channels when tail > 0): own is the row's stripe, the cells are the stripes
// other + idx[e] * C with weights w[idx[e] * ws], e < cnt, in that order.
//   gx row i (kGy false): sum_e w_e (own - other_e)
//   gy row j (kGy true):  -sum_e w_e (other_e - own)
template <int K, bool kGy>
__attribute__((always_inline)) inline void grad_block(const float* own, const float* other,
                                                      int64_t C, const int* idx, int cnt,
                                                      const float* w, int64_t ws, float* dst,
                                                      int64_t c0, int tail) {
  auto ld = [&](const float* p, V* v) {
    for (int k = 0; k < K; ++k)
      v[k] = (tail && k == K - 1) ? load_part(p + c0 + k * W, tail) : load(p + c0 + k * W);
  };
  V a[K], acc[K];
  ld(own, a);
  for (int k = 0; k < K; ++k) acc[k] = V{};
  for (int e = 0; e < cnt; ++e) {
    V b[K];
    ld(other + idx[e] * C, b);
    const float we = w[idx[e] * ws];  // (a scalar operand broadcasts)
    for (int k = 0; k < K; ++k) {
      if (kGy)
        acc[k] -= (b[k] - a[k]) * we;
      else
        acc[k] += (a[k] - b[k]) * we;
    }
  }
  for (int k = 0; k < K; ++k) {
    if (tail && k == K - 1)
      store_part(dst + c0 + k * W, acc[k], tail);
    else
      store(dst + c0 + k * W, acc[k]);
  }
}

// One gradient row, all its channels: blocks of 4 vectors (the accumulators and the
// row's stripe in registers), then what is left.
template <bool kGy>
void grad_row(const float* own, const float* other, int64_t C, const int* idx, int cnt,
              const float* w, int64_t ws, float* dst) {
  constexpr int K = 4;
  const int64_t nfull = C / W;
  const int tail = int(C - nfull * W);
  int64_t v = 0;
  for (; v + K <= nfull; v += K) grad_block<K, kGy>(own, other, C, idx, cnt, w, ws, dst, v * W, 0);
  switch (int(nfull - v) + (tail ? 1 : 0)) {  // vectors left, the last one partial
    case 4:
      grad_block<4, kGy>(own, other, C, idx, cnt, w, ws, dst, v * W, tail);
      break;
    case 3:
      grad_block<3, kGy>(own, other, C, idx, cnt, w, ws, dst, v * W, tail);
      break;
    case 2:
      grad_block<2, kGy>(own, other, C, idx, cnt, w, ws, dst, v * W, tail);
      break;
    case 1:
      grad_block<1, kGy>(own, other, C, idx, cnt, w, ws, dst, v * W, tail);
      break;
    default:
      break;
  }
}

// The nonzero entries of w[r * rs + c * cs] (rows x cols) as compressed rows: row r's columns are
// ind[ptr[r]] .. ind[ptr[r + 1] - 1]. Branch-free: each index is written, and kept where its
// weight is nonzero.
void nonzero_index(const float* w, int rows, int cols, int rs, int cs, int* ptr, int* ind) {
  int e = 0;
  for (int r = 0; r < rows; ++r) {
    ptr[r] = e;
    for (int c = 0; c < cols; ++c) {
      ind[e] = c;
      e += w[r * rs + c * cs] != 0.0f;
    }
  }
  ptr[rows] = e;
}

void pair_grads(const float* x, const float* y, int m, int n, int64_t C, const float* w, float* gx,
                float* gy, int* idx) {
  const int64_t mn = int64_t(m) * n;
  int* rp = idx;                         // m + 1
  int* cp = rp + m + 1;                  // n + 1
  int* rj = cp + n + 1;                  // at most m n
  int* ci = rj + mn;                     // at most m n
  nonzero_index(w, m, n, n, 1, rp, rj);  // by row of w
  nonzero_index(w, n, m, 1, n, cp, ci);  // by column
  for (int i = 0; i < m; ++i)
    grad_row<false>(x + i * C, y, C, rj + rp[i], rp[i + 1] - rp[i], w + i * n, 1, gx + i * C);
  for (int j = 0; j < n; ++j)
    grad_row<true>(y + j * C, x, C, ci + cp[j], cp[j + 1] - cp[j], w + j, n, gy + j * C);
}

// ------------------------------------------------------- DP of aligned pairs
// dmli_common.h's dmli_forward and dmli_reverse for the hard minimum, W pairs in the
// lanes, the table and the gradients in lane-major scratch ([m * n][W] floats).
int64_t lanes_dp_scratch(int m, int n) { return (int64_t(m) * n + n) * W; }

void lanes_dp(const float* d, int64_t ds, int lanes, int m, int n, const unsigned char* allowed,
              const float* gout, float* out, float* gcell, float* scratch) {
  const int64_t mn = int64_t(m) * n;
  float* S = scratch;        // [mn][W]
  float* grow = S + mn * W;  // [n][W]
  int64_t off[W];            // lanes past `lanes` repeat the last one
  for (int l = 0; l < W; ++l) off[l] = (l < lanes ? l : lanes - 1) * ds;
  const V inf = splat(__builtin_inff());
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      const int64_t k = int64_t(i) * n + j;
      V s;
      if (allowed && !allowed[k]) {
        s = inf;
      } else {
        V c;
        for (int l = 0; l < W; ++l) c[l] = d[off[l] + k];
        if (i == 0)
          s = j == 0 ? c : load(S + (k - 1) * W) + c;
        else if (j == 0)
          s = load(S + (k - n) * W) + c;
        else
          s = vmin(load(S + (k - n) * W), load(S + (k - 1) * W)) + c;
      }
      store(S + k * W, s);
    }
  }
  if (out) {
    float r[W];
    store(r, load(S + (mn - 1) * W));
    for (int l = 0; l < lanes; ++l) out[l] = r[l];
  }
  if (!gout) return;
  V go = {};
  for (int l = 0; l < lanes; ++l) go[l] = gout[l];
  const V zero = {};
  for (int j = 0; j < n; ++j) store(grow + j * W, zero);
  for (int i = m - 1; i >= 0; --i) {
    V carry = zero;  // gradient flowing into (i, j) from (i, j + 1)
    for (int j = n - 1; j >= 0; --j) {
      const int64_t k = int64_t(i) * n + j;
      V g = load(grow + j * W) + carry;
      if (i == m - 1 && j == n - 1) g = g + go;
      store(gcell + k * W, g);
      if (i == 0) {
        carry = g;  // first row: S(0, j) = S(0, j - 1) + d
        store(grow + j * W, zero);
      } else if (j == 0) {
        store(grow + j * W, g);  // first column: S(i, 0) = S(i - 1, 0) + d
        carry = zero;
      } else {  // min_grad_split: the smaller predecessor, a tie split in half
        const V up = load(S + (k - n) * W), left = load(S + (k - 1) * W);
        V u = up == left ? g * 0.5f : g;
        V lf = u;
        u = up > left ? zero : u;
        lf = up < left ? zero : lf;
        const auto gz = g == zero;
        store(grow + j * W, gz ? zero : u);
        carry = gz ? zero : lf;
      }
    }
  }
}

}  // namespace
}  // namespace body

extern const Kernels kKernels;
const Kernels kKernels{body::B,
                       &body::allpairs_scratch,
                       &body::allpairs,
                       &body::pair_dots,
                       &body::pair_grads,
                       &body::lanes_dp,
                       &body::lanes_dp_scratch,
                       body::W,
                       body::allpairs_bf16<VT>()};
