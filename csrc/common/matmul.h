// Full float32 GEMMs for the GEMM-form distances (host code only).
#pragma once

#include <ATen/Context.h>

namespace partdist {

// The stripe / part distances are computed as sqrt(|a|^2 + |b|^2 - 2 a.b): with TF32
// GEMMs (10-bit mantissa) the cancellation leaves almost no accurate digits for
// near stripes. This guard disables TF32 in cuBLAS for the scope of one op call and
// restores the user's setting afterwards (the setting is process-global: a GEMM that
// another thread issues meanwhile also runs in full float32).
class FullFp32Matmul {
 public:
  FullFp32Matmul() : restore_(at::globalContext().allowTF32CuBLAS()) {
    if (restore_) at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~FullFp32Matmul() {
    if (restore_) at::globalContext().setAllowTF32CuBLAS(true);
  }
  FullFp32Matmul(const FullFp32Matmul&) = delete;
  FullFp32Matmul& operator=(const FullFp32Matmul&) = delete;

 private:
  bool restore_;
};

}  // namespace partdist
