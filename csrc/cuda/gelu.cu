// GELU (tanh approximation) on the GPU. No ATen or Python headers: launched on the caller's stream.
#include <cuda_runtime.h>

#include "etta/etta.h"

namespace {

__device__ __forceinline__ float gelu_tanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  constexpr float kCoeff = 0.044715f;
  return 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + kCoeff * x * x * x)));
}

__global__ void gelu_tanh_f32_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] = gelu_tanh(x[i]);
  }
}

}  // namespace

extern "C" etta_status etta_gelu_tanh_cuda(const void* x, void* y, int64_t n, etta_dtype dtype, void* stream) {
  if (n < 0 || (n > 0 && (x == nullptr || y == nullptr))) return ETTA_ERROR_INVALID_ARGUMENT;
  if (dtype != ETTA_FLOAT32) return ETTA_ERROR_UNSUPPORTED_DTYPE;
  if (n == 0) return ETTA_OK;
  constexpr int kThreads = 256;
  const int64_t blocks_needed = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(blocks_needed < 65535 ? blocks_needed : 65535);
  gelu_tanh_f32_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const float*>(x), static_cast<float*>(y), n);
  return cudaGetLastError() == cudaSuccess ? ETTA_OK : ETTA_ERROR_CUDA;
}
