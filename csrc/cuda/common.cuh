// Shared pieces of the CUDA kernels: storage types, fp32 conversion, 16-byte vector access, the
// choice of vector width, a block-wide sum, and the launch status. No ATen or Python headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "../common/checks.h"
#include "etta/etta.h"

namespace etta::cuda {

using detail::Tag;

template <class Fn>
etta_status visit2(etta_dtype a, etta_dtype b, Fn&& fn) {
  return detail::visit_dtypes<float, __half, __nv_bfloat16>(a, b, fn);
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// N values of T moved as one aligned access (16 bytes for N = 16 / sizeof(T)).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, class T>
__device__ __forceinline__ void load(const T* p, float (&out)[N]) {
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_float(pack.v[i]);
}

template <int N, class T>
__device__ __forceinline__ void store(T* p, const float (&in)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int i = 0; i < N; ++i) pack.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

// A buffer as the vector-width choice sees it: its address and element size (null: absent).
struct Buffer {
  const void* ptr;
  int bytes;
};

// The vector width (in elements) of a launch: 16 bytes of the widest element type when `inner` (the
// contiguous extent that a vector must not cross) and every `stride` are multiples of it and every
// buffer is aligned to its own vector size; else 1 (the scalar path).
inline int vector_width(int64_t inner, std::initializer_list<Buffer> buffers,
                        std::initializer_list<int64_t> strides = {}) {
  int widest = 1;
  for (const Buffer& b : buffers) {
    if (b.ptr != nullptr && b.bytes > widest) widest = b.bytes;
  }
  const int width = 16 / widest;
  if (inner % width) return 1;
  for (const int64_t s : strides) {
    if (s % width) return 1;
  }
  for (const Buffer& b : buffers) {
    if (b.ptr != nullptr && reinterpret_cast<uintptr_t>(b.ptr) % (static_cast<uintptr_t>(width) * b.bytes)) return 1;
  }
  return width;
}

// Runs fn(std::integral_constant<int, W>{}) for the chosen width W in {1, 4, 8}.
template <class Fn>
etta_status with_width(int width, Fn&& fn) {
  switch (width) {
    case 8:
      return fn(std::integral_constant<int, 8>{});
    case 4:
      return fn(std::integral_constant<int, 4>{});
    default:
      return fn(std::integral_constant<int, 1>{});
  }
}

template <class T>
constexpr int bytes_of() {
  return static_cast<int>(sizeof(T));
}

// Grid of a grid-stride loop over `items` work items with `threads` per block.
inline unsigned grid_for(int64_t items, int threads) {
  const int64_t blocks = (items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

inline etta_status launch_status() { return cudaGetLastError() == cudaSuccess ? ETTA_OK : ETTA_ERROR_CUDA; }

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // a previous call's readers are done with `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : 0.0f;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One W-wide chunk of an AdaLN-modulated row: out = (v - mean) * rstd * w * (1 + scale) + shift, w = 1 without
// a weight. shift, scale, weight (or null) and out point at the chunk's first column.
template <int W, class T, class P>
__device__ __forceinline__ void modulate_chunk(const float (&v)[W], float mean, float rstd, const P* shift,
                                               const P* scale, const P* weight, T* out) {
  float sh[W], sc[W], w[W], o[W];
  load<W>(shift, sh);
  load<W>(scale, sc);
  if (weight != nullptr) {
    load<W>(weight, w);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) w[j] = 1.0f;
  }
#pragma unroll
  for (int j = 0; j < W; ++j) o[j] = (v[j] - mean) * rstd * w[j] * (1.0f + sc[j]) + sh[j];
  store<W>(out, o);
}

}  // namespace etta::cuda
