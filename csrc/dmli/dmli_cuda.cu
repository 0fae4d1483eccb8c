// The CUDA backend of the DMLI family (DeviceKernels<CudaExec>, dmli_launch.h) and its
// registration for the CUDA dispatch key.
#include "../common/cuda_launch.cuh"
#include "dmli_launch.h"

PARTDIST_CUDA_BACKEND(dmli)
