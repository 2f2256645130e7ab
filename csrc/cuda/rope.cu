// RoPE on the GPU: one thread per W-wide chunk of pairs (i, i + head_dim / 2) of one (slice, batch,
// token, head) row. The input is strided (q and k read in place from a fused QKV projection); the
// outputs are dense. Angles are computed as the reference computes them, in fp32.
#include "common.cuh"

namespace etta::cuda {
namespace {

constexpr int kThreads = 256;

struct RopeStrides {
  int64_t batch, seq, slice, head;
};

template <int W, class T>
__global__ void rope_kernel(const T* in, RopeStrides s, T* out0, T* out1, int64_t items, int64_t batch, int64_t seq,
                            int64_t heads, int64_t head_dim, float base, float sign) {
  const int64_t half = head_dim / 2;
  const int64_t chunks = half / W;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items; item += step) {
    // item = (((slice * batch + b) * seq + t) * heads + h) * chunks + chunk
    const int64_t i = (item % chunks) * W;
    int64_t r = item / chunks;
    const int64_t h = r % heads;
    r /= heads;
    const int64_t t = r % seq;
    r /= seq;
    const int64_t b = r % batch;
    const int64_t slice = r / batch;
    const T* src = in + slice * s.slice + b * s.batch + t * s.seq + h * s.head + i;
    T* dst = (slice ? out1 : out0) + ((b * seq + t) * heads + h) * head_dim + i;
    float x1[W], x2[W], y1[W], y2[W];
    load<W>(src, x1);
    load<W>(src + half, x2);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const float inv_freq = 1.0f / powf(base, static_cast<float>(2 * (i + j)) / static_cast<float>(head_dim));
      float sn, cs;
      sincosf(static_cast<float>(t) * inv_freq, &sn, &cs);
      sn *= sign;
      y1[j] = x1[j] * cs - x2[j] * sn;
      y2[j] = x2[j] * cs + x1[j] * sn;
    }
    store<W>(dst, y1);
    store<W>(dst + half, y2);
  }
}

}  // namespace
}  // namespace etta::cuda

using namespace etta::cuda;

extern "C" etta_status etta_rope_cuda(const void* in, const int64_t in_strides[4], void* const* out, int64_t slices,
                                      int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, float base,
                                      int inverse, etta_dtype dtype, void* stream) {
  ETTA_TRY(etta::detail::check_rope(in, in_strides, out, slices, batch, seq, heads, head_dim, base, dtype));
  if (batch * seq * heads * head_dim == 0) return ETTA_OK;
  const RopeStrides s{in_strides[0], in_strides[1], in_strides[2], in_strides[3]};
  return visit2(dtype, dtype, [&](auto t, auto) {
    using T = typename decltype(t)::type;
    const int64_t half = head_dim / 2;
    const int width = vector_width(half,
                                   {{in, bytes_of<T>()},
                                    {out[0], bytes_of<T>()},
                                    {slices > 1 ? out[1] : nullptr, bytes_of<T>()}},
                                   {s.batch, s.seq, slices > 1 ? s.slice : 0, s.head});
    return with_width(width, [&](auto w) {
      constexpr int W = decltype(w)::value;
      const int64_t items = slices * batch * seq * heads * (half / W);
      rope_kernel<W, T><<<grid_for(items, kThreads), kThreads, 0, as_stream(stream)>>>(
          static_cast<const T*>(in), s, static_cast<T*>(out[0]), slices > 1 ? static_cast<T*>(out[1]) : nullptr,
          items, batch, seq, heads, head_dim, base, inverse ? -1.0f : 1.0f);
      return launch_status();
    });
  });
}
