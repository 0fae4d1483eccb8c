// Host helper shared by the launchers: a tensor's data pointer, or nullptr for an
// undefined (optional) tensor.
#pragma once

#include <ATen/core/Tensor.h>

namespace partdist {

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

}  // namespace partdist
