// Small host+device math shared by the op families' per-element headers.
#pragma once

#include <cmath>
#include <limits>

#include "hd.h"

namespace partdist {

PD_HD float pd_sqrt(float x) { return sqrtf(x); }
PD_HD double pd_sqrt(double x) { return sqrt(x); }

// +inf of T (constexpr, usable in device code with --expt-relaxed-constexpr).
template <typename T>
PD_HD constexpr T pd_inf() {
  return std::numeric_limits<T>::infinity();
}

// Euclidean distance of two vectors from |a|^2, |b|^2 and a.b (the GEMM form),
// clamped at 0 (rounding can make the expansion slightly negative); NaN propagates.
template <typename T>
PD_HD T gemm_dist(T aa, T bb, T ab) {
  T s = aa + bb - T(2) * ab;
  return s < T(0) ? T(0) : pd_sqrt(s);
}

}  // namespace partdist
