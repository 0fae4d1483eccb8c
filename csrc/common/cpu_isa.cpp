// Detection and selection of the CPU kernels' instruction set (see cpu_isa.h).
#include "cpu_isa.h"

#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace partdist {

namespace {

CpuIsa detect() {
#if PARTDIST_X86_DISPATCH
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return __builtin_cpu_supports("avx512bf16") ? CpuIsa::kAvx512Bf16 : CpuIsa::kAvx512;
  if (fma && __builtin_cpu_supports("avx2")) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kGeneric;
}

CpuIsa detected() {
  static const CpuIsa d = detect();
  return d;
}

bool parse(const std::string& s, CpuIsa& out) {
  for (CpuIsa i :
       {CpuIsa::kGeneric, CpuIsa::kGeneric16, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16})
    if (s == cpu_isa_name(i)) {
      out = i;
      return true;
    }
  return false;
}

CpuIsa initial() {
  CpuIsa best = detected();
  const char* env = std::getenv("PARTDIST_CPU_ISA");
  CpuIsa want;
  if (env != nullptr && *env != '\0' && parse(env, want) && cpu_isa_supported(want)) return want;
  return best;
}

std::atomic<int>& current() {
  static std::atomic<int> c{int(initial())};
  return c;
}

// _cpu_isa(name): "" reads the level in use; a level name sets it and returns the
// previous one.
std::string cpu_isa_op(const std::string& request) {
  const CpuIsa prev = cpu_isa();
  if (request.empty()) return cpu_isa_name(prev);
  CpuIsa want;
  TORCH_CHECK(parse(request, want), "partdist._cpu_isa: unknown level '", request,
              "'; use one of generic, generic16, avx2, avx512, avx512bf16");
  TORCH_CHECK(cpu_isa_supported(want), "partdist._cpu_isa: this CPU (or this build) cannot run '",
              request, "' kernels; the widest it runs is '", cpu_isa_name(detected()), "'");
  current().store(int(want));
  return cpu_isa_name(prev);
}

}  // namespace

CpuIsa cpu_isa() { return CpuIsa(current().load(std::memory_order_relaxed)); }

bool cpu_isa_supported(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kGeneric:
    case CpuIsa::kGeneric16:
      return true;
    // each level runs where a wider one (a larger value) was detected
    case CpuIsa::kAvx2:
    case CpuIsa::kAvx512:
    case CpuIsa::kAvx512Bf16:
      return int(detected()) >= int(isa);
  }
  return false;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kGeneric:
      return "generic";
    case CpuIsa::kGeneric16:
      return "generic16";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx512Bf16:
      return "avx512bf16";
  }
  return "?";
}

}  // namespace partdist

TORCH_LIBRARY_FRAGMENT(partdist, m) {
  m.def("_cpu_isa(str request='') -> str", &partdist::cpu_isa_op);
}
