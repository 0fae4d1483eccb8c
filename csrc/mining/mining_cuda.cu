// The CUDA backend of the mining family (DeviceKernels<CudaExec>, mining_launch.h) and
// its registration for the CUDA dispatch key.
#include "../common/cuda_launch.cuh"
#include "mining_launch.h"

PARTDIST_CUDA_BACKEND(mining)
