// Run-time choice of the CPU kernels' instruction set (host code only).
//
// The hot CPU kernels are compiled several times, each translation unit for one
// instruction set (`#pragma GCC target`, see dmli/dmli_simd_*.cpp), whatever the
// build's own flags (-march=native or not); cpu_isa() picks, once per process, the
// widest one the CPU runs:
//   kAvx512Bf16  the same + AVX512_BF16 (bfloat16 all-pairs dot products by vdpbf16ps)
//   kAvx512   AVX-512F/DQ/VL + FMA (16 float lanes)
//   kAvx2     AVX2 + FMA (8 float lanes)
//   kGeneric  the build's own flags (8 float lanes in GCC vectors)
// The environment variable PARTDIST_CPU_ISA (generic, avx2, avx512, avx512bf16) caps the choice at
// start-up, and the op torch.ops.partdist._cpu_isa(name) reads or changes it (tests and
// benchmarks run every level the CPU has). kGeneric16 (16 lanes in GCC vectors) is the
// AVX-512 kernels' code at the build's flags: tests run it on CPUs without AVX-512.
#pragma once

// Whether the per-instruction-set translation units are compiled (GCC on x86); else
// only the generic kernels exist.
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define PARTDIST_X86_DISPATCH 1
#else
#define PARTDIST_X86_DISPATCH 0
#endif

namespace partdist {

enum class CpuIsa : int { kGeneric = 0, kGeneric16 = 1, kAvx2 = 2, kAvx512 = 3, kAvx512Bf16 = 4 };

// The level in use (detected once, then as set by set_cpu_isa).
CpuIsa cpu_isa();
// Whether this CPU (and this build) can run the kernels of `isa`.
bool cpu_isa_supported(CpuIsa isa);
const char* cpu_isa_name(CpuIsa isa);

}  // namespace partdist
