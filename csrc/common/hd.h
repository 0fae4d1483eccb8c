// Host+device function qualifier for the shared per-element math headers.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PD_HD __host__ __device__ __forceinline__
// Before a host+device template that calls a member of a template argument which is
// device-only for one instantiation and host-only for another (a warp type: the
// device's shuffles or the CPU emulation's): nvcc checks each instantiation in the
// space it is used in only.
#define PD_NO_EXEC_CHECK _Pragma("nv_exec_check_disable")
// Before a loop of a constant trip count whose values must stay in registers.
#define PD_UNROLL _Pragma("unroll")
#else
#define PD_HD inline
#define PD_NO_EXEC_CHECK
#define PD_UNROLL
#endif
