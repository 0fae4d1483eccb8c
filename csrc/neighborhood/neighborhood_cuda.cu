// The CUDA backend of the neighborhood-difference family (DeviceKernels<CudaExec>,
// neighborhood_launch.h) and its registration for the CUDA dispatch key.
#include "../common/cuda_launch.cuh"
#include "neighborhood_launch.h"

PARTDIST_CUDA_BACKEND(nbhd)
