// Gated residual + AdaLN-modulate on the GPU, one pass: one block per (batch, seq) row, as the AdaLN kernel.
// The first pass reads x (and, on the first n batch rows, gate and y), forms r = x + gate * y in fp32,
// stores it rounded to x_out and keeps the rounded values in registers (up to kCached W-wide chunks per
// thread, which covers dim <= kCached * kMaxThreads * W; each thread re-reads the rest of its chunks from
// x_out, which it wrote itself). The mean and variance are two block-wide fp32 sums over those values, and
// the modulated row is written to out. So the LayerNorm sees x_out as stored, exactly what gated_residual
// followed by adaln_modulate would give; the launch replaces those two and the copy between them.
#include "common.cuh"

namespace etta::cuda {
namespace {

constexpr int kCached = 8;
// At most 512 threads per block: the W = 8 instances keep 64 cached floats per thread and need more than the
// 64 registers a 1024-thread block allows; __launch_bounds__ holds the compiler to the 128 of 512 threads.
constexpr int kMaxThreads = 512;

// r = x + g * y for one W-wide chunk (x alone when !residual), stored to x_out when `write`, and returned in
// `v` as stored (the T-rounded value back in fp32).
template <int W, class T, class P>
__device__ __forceinline__ void residual_chunk(const T* x, const P* __restrict__ g, const T* y, T* x_out,
                                               bool residual, bool write, float (&v)[W]) {
  Pack<T, W> pack = *reinterpret_cast<const Pack<T, W>*>(x);
  if (residual) {
    float gv[W], yv[W];
    load<W>(g, gv);
    load<W>(y, yv);
#pragma unroll
    for (int j = 0; j < W; ++j) pack.v[j] = from_float<T>(to_float(pack.v[j]) + gv[j] * yv[j]);
  }
  if (write) *reinterpret_cast<Pack<T, W>*>(x_out) = pack;
#pragma unroll
  for (int j = 0; j < W; ++j) v[j] = to_float(pack.v[j]);
}

// Calls fn(values, column) for each of this thread's W-wide chunks of the row: values come from `cache` for
// the first kCached chunks, from x_out (the row as this thread stored it) after those.
template <int W, class T, class Fn>
__device__ __forceinline__ void for_each_stored_chunk(const T* x_out, int64_t dim, const float (&cache)[kCached][W],
                                                      Fn&& fn) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * W;
  int64_t c = static_cast<int64_t>(threadIdx.x) * W;
#pragma unroll
  for (int k = 0; k < kCached; ++k, c += step) {
    if (c < dim) fn(cache[k], c);
  }
  for (; c < dim; c += step) {
    float v[W];
    load<W>(x_out + c, v);
    fn(v, c);
  }
}

// x and x_out may alias (each element is read, then written, by the same thread); out overlaps neither.
template <int W, class T, class P>
__global__ void __launch_bounds__(kMaxThreads)
    residual_modulate_kernel(const T* x, const P* __restrict__ gate, const T* y, const P* __restrict__ shift,
                             const P* __restrict__ scale, const P* __restrict__ weight, T* x_out,
                             T* __restrict__ out, int64_t seq, int64_t dim, int64_t residual_rows,
                             int64_t gate_stride, int64_t shift_stride, int64_t scale_stride, float eps) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / seq;
  const int64_t offset = row * dim;
  const bool residual = row < residual_rows;  // b < n
  // Rows without a residual copy x to x_out, which is nothing to do in place.
  const bool write = residual || x_out != x;
  const T* xr = x + offset;
  const T* yr = y + (residual ? offset : 0);
  const P* g = gate + (residual ? b * gate_stride : 0);
  T* xo = x_out + offset;
  float cache[kCached][W];

  float sum = 0.0f;
  {
    const int64_t step = static_cast<int64_t>(blockDim.x) * W;
    int64_t c = static_cast<int64_t>(threadIdx.x) * W;
#pragma unroll
    for (int k = 0; k < kCached; ++k, c += step) {
      if (c < dim) {
        residual_chunk<W>(xr + c, g + c, yr + c, xo + c, residual, write, cache[k]);
#pragma unroll
        for (int j = 0; j < W; ++j) sum += cache[k][j];
      }
    }
    for (; c < dim; c += step) {
      float v[W];
      residual_chunk<W>(xr + c, g + c, yr + c, xo + c, residual, write, v);
#pragma unroll
      for (int j = 0; j < W; ++j) sum += v[j];
    }
  }
  const float mean = block_sum(sum) / static_cast<float>(dim);

  float sq = 0.0f;
  for_each_stored_chunk<W>(xo, dim, cache, [&](const float(&v)[W], int64_t) {
#pragma unroll
    for (int j = 0; j < W; ++j) sq += (v[j] - mean) * (v[j] - mean);
  });
  const float rstd = rsqrtf(block_sum(sq) / static_cast<float>(dim) + eps);

  T* outr = out + offset;
  for_each_stored_chunk<W>(xo, dim, cache, [&](const float(&v)[W], int64_t c) {
    modulate_chunk<W>(v, mean, rstd, shift + b * shift_stride + c, scale + b * scale_stride + c,
                      weight == nullptr ? nullptr : weight + c, outr + c);
  });
}

}  // namespace
}  // namespace etta::cuda

using namespace etta::cuda;

extern "C" etta_status etta_residual_modulate_cuda(const void* x, const void* gate, const void* y, const void* shift,
                                                   const void* scale, const void* weight, void* x_out, void* out,
                                                   int64_t batch, int64_t rows_with_residual, int64_t seq,
                                                   int64_t dim, int64_t gate_stride, int64_t shift_stride,
                                                   int64_t scale_stride, float eps, etta_dtype dtype,
                                                   etta_dtype param_dtype, void* stream) {
  ETTA_TRY(etta::detail::check_residual_modulate(x, gate, y, shift, scale, x_out, out, batch, rows_with_residual, seq,
                                                 dim, gate_stride, shift_stride, scale_stride, eps, dtype,
                                                 param_dtype));
  const int64_t rows = batch * seq;
  if (rows * dim == 0) return ETTA_OK;
  if (rows > 0x7fffffff) return ETTA_ERROR_INVALID_ARGUMENT;  // one block per row on grid.x
  return visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    const int width = vector_width(dim,
                                   {{x, bytes_of<T>()},
                                    {y, bytes_of<T>()},
                                    {x_out, bytes_of<T>()},
                                    {out, bytes_of<T>()},
                                    {gate, bytes_of<P>()},
                                    {shift, bytes_of<P>()},
                                    {scale, bytes_of<P>()},
                                    {weight, bytes_of<P>()}},
                                   {gate_stride, shift_stride, scale_stride});
    // Enough warps for one chunk per thread, at most kMaxThreads (the AdaLN kernel's choice up to there, so
    // the statistics are summed in the same order).
    const int64_t chunks = (dim + width - 1) / width;
    const int threads = static_cast<int>(chunks >= kMaxThreads ? kMaxThreads : ((chunks + 31) / 32) * 32);
    return with_width(width, [&](auto w) {
      constexpr int W = decltype(w)::value;
      residual_modulate_kernel<W, T, P><<<static_cast<unsigned>(rows), threads, 0, as_stream(stream)>>>(
          static_cast<const T*>(x), static_cast<const P*>(gate), static_cast<const T*>(y),
          static_cast<const P*>(shift), static_cast<const P*>(scale), static_cast<const P*>(weight),
          static_cast<T*>(x_out), static_cast<T*>(out), seq, dim, rows_with_residual * seq, gate_stride,
          shift_stride, scale_stride, eps);
      return launch_status();
    });
  });
}
