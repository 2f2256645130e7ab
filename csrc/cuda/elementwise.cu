// Elementwise CUDA kernels: GELU-tanh with bias, the gated residual, and the fused guidance + solver
// update. Grid-stride loops over W-wide vectors (W = 1 is the scalar path for any layout).
#include "common.cuh"

namespace etta::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float gelu_tanh(float u) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  constexpr float kCoeff = 0.044715f;
  return 0.5f * u * (1.0f + tanhf(kSqrt2OverPi * (u + kCoeff * u * u * u)));
}

__device__ __forceinline__ int64_t first_item(int width) {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * width;
}

__device__ __forceinline__ int64_t grid_step(int width) {
  return static_cast<int64_t>(gridDim.x) * blockDim.x * width;
}

// y = gelu_tanh(x + bias[c]); n and dim are multiples of W. x and y may alias.
template <int W, class T, class P>
__global__ void gelu_kernel(const T* x, const P* __restrict__ bias, T* y, int64_t n, int64_t dim) {
  for (int64_t i = first_item(W); i < n; i += grid_step(W)) {
    float u[W];
    load<W>(x + i, u);
    if (bias != nullptr) {
      float b[W];
      load<W>(bias + i % dim, b);
#pragma unroll
      for (int j = 0; j < W; ++j) u[j] += b[j];
    }
#pragma unroll
    for (int j = 0; j < W; ++j) u[j] = gelu_tanh(u[j]);
    store<W>(y + i, u);
  }
}

// out = x + gate[b, c] * y over (batch, seq, dim); dim is a multiple of W. out may alias x.
template <int W, class T, class P>
__global__ void gated_residual_kernel(const T* x, const P* __restrict__ gate, const T* y, T* out, int64_t n,
                                      int64_t seq_dim, int64_t dim, int64_t gate_stride) {
  for (int64_t i = first_item(W); i < n; i += grid_step(W)) {
    float xv[W], gv[W], yv[W];
    load<W>(x + i, xv);
    load<W>(gate + (i / seq_dim) * gate_stride + i % dim, gv);
    load<W>(y + i, yv);
#pragma unroll
    for (int j = 0; j < W; ++j) xv[j] += gv[j] * yv[j];
    store<W>(out + i, xv);
  }
}

// v = v_u + w (v_c - v_u); x_out = x + a v + b v_prev; v_out = v. n is a multiple of W.
template <int W, class X, class V>
__global__ void guided_update_kernel(const X* x, const V* v_cond, const V* v_uncond, const V* v_prev, X* x_out,
                                     V* v_out, int64_t n, float guidance, float a, float b) {
  for (int64_t i = first_item(W); i < n; i += grid_step(W)) {
    float v[W], xv[W];
    load<W>(v_cond + i, v);
    if (v_uncond != nullptr) {
      float u[W];
      load<W>(v_uncond + i, u);
#pragma unroll
      for (int j = 0; j < W; ++j) v[j] = u[j] + guidance * (v[j] - u[j]);
    }
    load<W>(x + i, xv);
#pragma unroll
    for (int j = 0; j < W; ++j) xv[j] += a * v[j];
    if (v_prev != nullptr) {
      float p[W];
      load<W>(v_prev + i, p);
#pragma unroll
      for (int j = 0; j < W; ++j) xv[j] += b * p[j];
    }
    if (v_out != nullptr) store<W>(v_out + i, v);
    store<W>(x_out + i, xv);
  }
}

}  // namespace
}  // namespace etta::cuda

using namespace etta::cuda;

extern "C" etta_status etta_gelu_tanh_cuda(const void* x, const void* bias, void* y, int64_t rows, int64_t dim,
                                           etta_dtype dtype, etta_dtype param_dtype, void* stream) {
  ETTA_TRY(etta::detail::check_gelu(x, y, rows, dim, dtype, param_dtype));
  const int64_t n = rows * dim;
  if (n == 0) return ETTA_OK;
  return visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    const int width = vector_width(dim, {{x, bytes_of<T>()}, {y, bytes_of<T>()}, {bias, bytes_of<P>()}});
    return with_width(width, [&](auto w) {
      constexpr int W = decltype(w)::value;
      gelu_kernel<W, T, P><<<grid_for(n / W, kThreads), kThreads, 0, as_stream(stream)>>>(
          static_cast<const T*>(x), static_cast<const P*>(bias), static_cast<T*>(y), n, dim);
      return launch_status();
    });
  });
}

extern "C" etta_status etta_gated_residual_cuda(const void* x, const void* gate, const void* y, void* out,
                                                int64_t batch, int64_t seq, int64_t dim, int64_t gate_stride,
                                                etta_dtype dtype, etta_dtype param_dtype, void* stream) {
  ETTA_TRY(etta::detail::check_gated_residual(x, gate, y, out, batch, seq, dim, gate_stride, dtype, param_dtype));
  const int64_t n = batch * seq * dim;
  if (n == 0) return ETTA_OK;
  return visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    const int width = vector_width(
        dim, {{x, bytes_of<T>()}, {y, bytes_of<T>()}, {out, bytes_of<T>()}, {gate, bytes_of<P>()}}, {gate_stride});
    return with_width(width, [&](auto w) {
      constexpr int W = decltype(w)::value;
      gated_residual_kernel<W, T, P><<<grid_for(n / W, kThreads), kThreads, 0, as_stream(stream)>>>(
          static_cast<const T*>(x), static_cast<const P*>(gate), static_cast<const T*>(y), static_cast<T*>(out), n,
          seq * dim, dim, gate_stride);
      return launch_status();
    });
  });
}

extern "C" etta_status etta_guided_update_cuda(const void* x, const void* v_cond, const void* v_uncond,
                                               const void* v_prev, void* x_out, void* v_out, int64_t n,
                                               float guidance, float a, float b, etta_dtype x_dtype,
                                               etta_dtype v_dtype, void* stream) {
  ETTA_TRY(etta::detail::check_guided_update(x, v_cond, x_out, n, x_dtype, v_dtype));
  if (n == 0) return ETTA_OK;
  return visit2(x_dtype, v_dtype, [&](auto xt, auto vt) {
    using X = typename decltype(xt)::type;
    using V = typename decltype(vt)::type;
    const int width = vector_width(n, {{x, bytes_of<X>()},
                                       {x_out, bytes_of<X>()},
                                       {v_cond, bytes_of<V>()},
                                       {v_uncond, bytes_of<V>()},
                                       {v_prev, bytes_of<V>()},
                                       {v_out, bytes_of<V>()}});
    return with_width(width, [&](auto w) {
      constexpr int W = decltype(w)::value;
      guided_update_kernel<W, X, V><<<grid_for(n / W, kThreads), kThreads, 0, as_stream(stream)>>>(
          static_cast<const X*>(x), static_cast<const V*>(v_cond), static_cast<const V*>(v_uncond),
          static_cast<const V*>(v_prev), static_cast<X*>(x_out), static_cast<V*>(v_out), n, guidance, a, b);
      return launch_status();
    });
  });
}
