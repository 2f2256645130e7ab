// AdaLN-modulate on the GPU: one block per (batch, seq) row. The row is read once into registers
// (up to kCached W-wide chunks per thread, which covers dim <= 8 * 1024 * W; wider rows re-read the
// rest from memory), the mean and variance are two block-wide fp32 sums over those registers, and
// the modulated row is written once.
#include "common.cuh"

namespace etta::cuda {
namespace {

constexpr int kCached = 8;
// At most 512 threads per block: the W = 8 instances keep 64 cached floats per thread and need more than the 64
// registers a 1024-thread block allows (the launch would fail for dim >= 8192 in bf16); __launch_bounds__ holds
// the compiler to the 128 of 512 threads. The same bound as the fused residual + AdaLN kernel, so both sum a
// row's statistics in the same order at every width.
constexpr int kMaxThreads = 512;

// Calls fn(values, column) for each of this thread's W-wide chunks of the row: values come from
// `cache` for the first kCached chunks (loaded there when `fill`), from memory after those.
template <int W, class T, class Fn>
__device__ __forceinline__ void for_each_chunk(const T* row, int64_t dim, float (&cache)[kCached][W], bool fill,
                                               Fn&& fn) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * W;
  int64_t c = static_cast<int64_t>(threadIdx.x) * W;
#pragma unroll
  for (int k = 0; k < kCached; ++k, c += step) {
    if (c < dim) {
      if (fill) load<W>(row + c, cache[k]);
      fn(cache[k], c);
    }
  }
  for (; c < dim; c += step) {
    float v[W];
    load<W>(row + c, v);
    fn(v, c);
  }
}

template <int W, class T, class P>
__global__ void __launch_bounds__(kMaxThreads) adaln_kernel(const T* x, const P* __restrict__ shift, const P* __restrict__ scale,
                             const P* __restrict__ weight, T* out, int64_t seq, int64_t dim, int64_t shift_stride,
                             int64_t scale_stride, float eps) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / seq;
  const T* xr = x + row * dim;
  T* outr = out + row * dim;
  float cache[kCached][W];

  float sum = 0.0f;
  for_each_chunk<W>(xr, dim, cache, true, [&](const float(&v)[W], int64_t) {
#pragma unroll
    for (int j = 0; j < W; ++j) sum += v[j];
  });
  const float mean = block_sum(sum) / static_cast<float>(dim);

  float sq = 0.0f;
  for_each_chunk<W>(xr, dim, cache, false, [&](const float(&v)[W], int64_t) {
#pragma unroll
    for (int j = 0; j < W; ++j) sq += (v[j] - mean) * (v[j] - mean);
  });
  const float rstd = rsqrtf(block_sum(sq) / static_cast<float>(dim) + eps);

  for_each_chunk<W>(xr, dim, cache, false, [&](const float(&v)[W], int64_t c) {
    modulate_chunk<W>(v, mean, rstd, shift + b * shift_stride + c, scale + b * scale_stride + c,
                      weight == nullptr ? nullptr : weight + c, outr + c);
  });
}

}  // namespace
}  // namespace etta::cuda

using namespace etta::cuda;

extern "C" etta_status etta_adaln_modulate_cuda(const void* x, const void* shift, const void* scale,
                                                const void* weight, void* out, int64_t batch, int64_t seq,
                                                int64_t dim, int64_t shift_stride, int64_t scale_stride, float eps,
                                                etta_dtype dtype, etta_dtype param_dtype, void* stream) {
  ETTA_TRY(etta::detail::check_adaln(x, shift, scale, out, batch, seq, dim, shift_stride, scale_stride, eps, dtype,
                                     param_dtype));
  const int64_t rows = batch * seq;
  if (rows * dim == 0) return ETTA_OK;
  if (rows > 0x7fffffff) return ETTA_ERROR_INVALID_ARGUMENT;  // one block per row on grid.x
  return visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    const int width = vector_width(dim,
                                   {{x, bytes_of<T>()},
                                    {out, bytes_of<T>()},
                                    {shift, bytes_of<P>()},
                                    {scale, bytes_of<P>()},
                                    {weight, bytes_of<P>()}},
                                   {shift_stride, scale_stride});
    // Enough warps for one chunk per thread, at most kMaxThreads.
    const int64_t chunks = (dim + width - 1) / width;
    const int threads = static_cast<int>(chunks >= kMaxThreads ? kMaxThreads : ((chunks + 31) / 32) * 32);
    return with_width(width, [&](auto w) {
      constexpr int W = decltype(w)::value;
      adaln_kernel<W, T, P><<<static_cast<unsigned>(rows), threads, 0, as_stream(stream)>>>(
          static_cast<const T*>(x), static_cast<const P*>(shift), static_cast<const P*>(scale),
          static_cast<const P*>(weight), static_cast<T*>(out), seq, dim, shift_stride, scale_stride, eps);
      return launch_status();
    });
  });
}
