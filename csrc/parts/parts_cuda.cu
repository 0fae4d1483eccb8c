// The CUDA backend of the part-distance family (DeviceKernels<CudaExec>,
// parts_launch.h) and its registration for the CUDA dispatch key.
#include "../common/cuda_launch.cuh"
#include "parts_launch.h"

PARTDIST_CUDA_BACKEND(parts)
