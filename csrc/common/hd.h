// Host+device function qualifier for the shared per-element math headers.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PD_HD __host__ __device__ __forceinline__
#else
#define PD_HD inline
#endif
