// The float tanh of the normalized local distance, written once for a scalar
// (dmli_common.h's pd_tanh: CPU, CUDA, the emulation) and for SIMD lanes
// (dmli_simd_body.h's vtanh). No ATen header: the per-instruction-set translation units
// include it before their target pragma.
#pragma once

#include "../common/hd.h"

namespace partdist {
namespace dmli {

// tanh(x) as a clamped rational function (the coefficients of Eigen's
// generic_fast_tanh_float): max abs error 4e-7 (a few ulp), branch-free so that loops
// over cells vectorize; NaN propagates. V is float or a vector of floats (GCC vector
// extension: arithmetic with a float operand broadcasts it); Ops gives the two
// operations that differ between them:
//   Ops::clamp(x, c)  x limited to [-c, c] (NaN unchanged)
//   Ops::div(p, q)    p / q for q in [4.8e-3, 7.5e2] (a SIMD level may approximate it)
template <typename Ops, typename V>
PD_HD V tanh_rational(V x) {
  x = Ops::clamp(x, 7.90531110763549805f);
  const V x2 = x * x;
  V p = -2.76076847742355e-16f * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  V q = 1.19825839466702e-06f * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return Ops::div(p, q);
}

// The lane operations of a scalar float.
struct ScalarTanhOps {
  PD_HD static float clamp(float x, float c) { return x > c ? c : (x < -c ? -c : x); }
  PD_HD static float div(float p, float q) { return p / q; }
};

}  // namespace dmli
}  // namespace partdist
