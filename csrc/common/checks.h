// Argument checks and the compute dtype shared by the op families (host code only).
// Messages name the operator, the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace partdist {

// float16 / bfloat16 / float32 are computed in float32, float64 in float64.
inline at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d) s += ", ";
    s += std::to_string(t.size(d));
  }
  return s + "]";
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor (float32/float64, or float16/bfloat16), got ",
              t.scalar_type());
}

inline void check_rank(const char* op, const char* name, const at::Tensor& t, int64_t rank,
                       const char* layout) {
  TORCH_CHECK(t.dim() == rank, op, ": ", name, " must be a ", rank, "-D tensor ", layout,
              ", got shape ", shape_str(t));
}

inline void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                       const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the same device as ",
              ref_name, " (", ref.device(), "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the same dtype as ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

// A [count, cells, C] feature tensor (stripes, parts, query / gallery cells): floating,
// 3-D, at least one cell (`what`) and one channel.
inline void check_cells(const char* op, const char* name, const at::Tensor& t, const char* layout,
                        const char* what) {
  check_floating(op, name, t);
  check_rank(op, name, t, 3, layout);
  TORCH_CHECK(t.size(1) >= 1, op, ": ", name, " must have at least one ", what,
              " (dim 1), got shape ", shape_str(t));
  TORCH_CHECK(t.size(2) >= 1, op, ": ", name,
              " must have at least one feature channel (dim 2), got shape ", shape_str(t));
}

inline void check_chunk(const char* op, int64_t chunk_size) {
  TORCH_CHECK(chunk_size >= 0, op,
              ": chunk_size must be a positive number of pairs per tile (or 0 for automatic), got ",
              chunk_size);
}

}  // namespace partdist
