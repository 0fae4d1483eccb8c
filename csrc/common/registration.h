// Registration of the op families (host code only), written once for all of them.
//
// A family's <family>_ops.cpp lists its ops once, in its namespace:
//   template <typename K>
//   auto ops() { return std::make_tuple(op("name(arguments) -> returns", &name_impl<K>), ...); }
// and, at global scope, PARTDIST_FAMILY_OPS(family, ops), which defines from that list
//   define_ops(m)          m.def of every schema (the partdist namespace, and the
//                          partdist_cuda_emulated one in emulated.cpp)
//   register_impls<K>(m)   m.impl of every op with backend K's implementation, instantiated
//                          for CpuKernels, EmulatedCudaKernels and (CUDA builds) CudaKernels.
// Each backend's file registers its backend for its dispatch key:
// PARTDIST_REGISTER_BACKEND(family, CPU, CpuKernels), PARTDIST_CUDA_BACKEND(family)
// (common/cuda_launch.cuh).
#pragma once

#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "backends.h"

namespace partdist {

// One op: its schema (which names it) and its implementation.
template <typename Fn>
struct OpDef {
  const char* schema;  // "name(arguments) -> returns"
  Fn fn;
};

template <typename Fn>
OpDef<Fn> op(const char* schema, Fn fn) {
  return OpDef<Fn>{schema, fn};
}

// The name an op is registered under: its schema up to the '('.
inline std::string op_name(const char* schema) {
  const char* paren = std::strchr(schema, '(');
  TORCH_CHECK(paren != nullptr, "partdist: op schema without an argument list: ", schema);
  return std::string(schema, paren);
}

template <typename... Fns>
void define_all(torch::Library& m, const std::tuple<OpDef<Fns>...>& ops) {
  std::apply([&](const auto&... o) { (m.def(o.schema), ...); }, ops);
}

// The device of an op's first defined tensor argument (a tensor, or an optional one).
template <typename T>
void note_device(std::optional<c10::Device>& dev, const T& arg) {
  using U = std::decay_t<T>;
  if constexpr (std::is_same_v<U, at::Tensor>) {
    if (!dev && arg.defined()) dev = arg.device();
  } else if constexpr (std::is_same_v<U, std::optional<at::Tensor>>) {
    if (!dev && arg.has_value() && arg->defined()) dev = arg->device();
  }
}

// An op implementation that runs with the device of its first tensor argument made current
// (c10::OptionalDeviceGuard: a no-op for CPU tensors). CUDA launches use the current
// device's stream and allocations the current device: with tensors on cuda:1 while cuda:0 is
// current, the kernels run on cuda:1, on its current stream. Every op goes through it
// (impl_all), so no launcher can be registered without the guard.
template <typename Ret, typename... Args>
auto with_device_guard(Ret (*fn)(Args...)) {
  return [fn](Args... args) -> Ret {
    std::optional<c10::Device> dev;
    (note_device(dev, args), ...);
    const c10::OptionalDeviceGuard guard(dev);
    return fn(std::forward<Args>(args)...);
  };
}

template <typename... Fns>
void impl_all(torch::Library& m, const std::tuple<OpDef<Fns>...>& ops) {
  std::apply(
      [&](const auto&... o) { (m.impl(op_name(o.schema).c_str(), with_device_guard(o.fn)), ...); },
      ops);
}

}  // namespace partdist

// At global scope in <family>_ops.cpp, after `template <typename K> auto OPS()` in the
// family's namespace partdist::FAMILY (see above); defines the family's ops in the
// partdist namespace.
#define PARTDIST_FAMILY_OPS(FAMILY, OPS)                                               \
  namespace partdist {                                                                 \
  namespace FAMILY {                                                                   \
  void define_ops(torch::Library& m) { ::partdist::define_all(m, OPS<CpuKernels>()); } \
  template <typename K>                                                                \
  void register_impls(torch::Library& m) {                                             \
    ::partdist::impl_all(m, OPS<K>());                                                 \
  }                                                                                    \
  template void register_impls<CpuKernels>(torch::Library&);                           \
  template void register_impls<EmulatedCudaKernels>(torch::Library&);                  \
  PARTDIST_IF_CUDA(template void register_impls<CudaKernels>(torch::Library&);)        \
  }                                                                                    \
  }                                                                                    \
  TORCH_LIBRARY_FRAGMENT(partdist, m) { ::partdist::FAMILY::define_ops(m); }

// At global scope in a backend's file: the family's ops with backend KERNELS for the
// dispatch key KEY of the partdist namespace.
#define PARTDIST_REGISTER_BACKEND(FAMILY, KEY, KERNELS)                 \
  TORCH_LIBRARY_IMPL(partdist, KEY, m) {                                \
    ::partdist::FAMILY::register_impls<::partdist::FAMILY::KERNELS>(m); \
  }
