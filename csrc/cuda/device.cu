// The current-device pair of the C ABI: the `_cuda` ops launch on the calling thread's device.
#include <cuda_runtime.h>

#include "etta/etta.h"

extern "C" etta_status etta_cuda_get_device(int* device) {
  if (device == nullptr) return ETTA_ERROR_INVALID_ARGUMENT;
  return cudaGetDevice(device) == cudaSuccess ? ETTA_OK : ETTA_ERROR_CUDA;
}

extern "C" etta_status etta_cuda_set_device(int device) {
  if (device < 0) return ETTA_ERROR_INVALID_ARGUMENT;
  return cudaSetDevice(device) == cudaSuccess ? ETTA_OK : ETTA_ERROR_CUDA;
}
