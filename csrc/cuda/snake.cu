// Snake-beta on the GPU (the Oobleck VAE's activation): y = x + sin(exp(alpha[c]) x)^2 / (exp(beta[c]) + 1e-9)
// over (batch, channels, length). The grid is (blocks along the length) x (rows = batch * channels), each
// grid-strided: a block works on one row at a time, so the channel's two constants are computed once per
// block and row (by thread 0, shared through shared memory), not per element. W-wide vectors along the row
// when the length and the pointers allow it, W = 1 (the scalar path) otherwise. sinf is the accurate sine
// (no fast math): exp(alpha) x reaches tens of radians, where __sinf loses digits.
#include "common.cuh"

namespace etta::cuda {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kMinThreads = 64;
constexpr int64_t kMaxGridY = 65535;

// length is a multiple of W, and x, y are aligned to W elements. x and y may alias (each element is read
// before it is written, by the same thread).
template <int W, class T, class P>
__global__ void snake_beta_kernel(const T* x, const P* __restrict__ alpha, const P* __restrict__ beta, T* y,
                                  int64_t rows, int64_t channels, int64_t length) {
  __shared__ float coeff[2];  // exp(alpha[c]), 1 / (exp(beta[c]) + 1e-9) of the block's current row
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * W;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x * W;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    if (threadIdx.x == 0) {
      const int64_t c = row % channels;
      coeff[0] = expf(to_float(alpha[c]));
      coeff[1] = 1.0f / (expf(to_float(beta[c])) + 1e-9f);
    }
    __syncthreads();
    const float a = coeff[0], inv_b = coeff[1];
    const T* xr = x + row * length;
    T* yr = y + row * length;
    for (int64_t i = first; i < length; i += step) {
      float v[W];
      load<W>(xr + i, v);
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const float s = sinf(a * v[j]);
        v[j] += s * s * inv_b;
      }
      store<W>(yr + i, v);
    }
    __syncthreads();  // every thread has read coeff before thread 0 overwrites it for the next row
  }
}

// Threads per block: enough 64..256 for the row's `vectors` W-wide items (short rows waste fewer threads).
inline int threads_for(int64_t vectors) {
  int threads = kMinThreads;
  while (threads < kMaxThreads && threads < vectors) threads *= 2;
  return threads;
}

}  // namespace
}  // namespace etta::cuda

using namespace etta::cuda;

extern "C" etta_status etta_snake_beta_cuda(const void* x, const void* alpha, const void* beta, void* y,
                                            int64_t batch, int64_t channels, int64_t length, etta_dtype dtype,
                                            etta_dtype param_dtype, void* stream) {
  ETTA_TRY(etta::detail::check_snake_beta(x, alpha, beta, y, batch, channels, length, dtype, param_dtype));
  const int64_t rows = batch * channels;
  if (rows * length == 0) return ETTA_OK;
  return visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    // alpha and beta are read one value per row, so only x and y decide the vector width.
    const int width = vector_width(length, {{x, bytes_of<T>()}, {y, bytes_of<T>()}});
    return with_width(width, [&](auto w) {
      constexpr int W = decltype(w)::value;
      const int64_t vectors = length / W;
      const int threads = threads_for(vectors);
      const dim3 grid(grid_for(vectors, threads), static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY));
      snake_beta_kernel<W, T, P><<<grid, threads, 0, as_stream(stream)>>>(
          static_cast<const T*>(x), static_cast<const P*>(alpha), static_cast<const P*>(beta), static_cast<T*>(y),
          rows, channels, length);
      return launch_status();
    });
  });
}
