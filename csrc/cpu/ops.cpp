// The runtime's ops on the CPU: plain loops in fp32 (row statistics in fp64), parallel over rows
// with OpenMP when the build has it. Every build has these; they are also the CUDA kernels' twin.
#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/checks.h"
#include "etta/etta.h"
#include "numeric.h"

namespace etta::cpu {
namespace {

using detail::Tag;

// Below this many elements the work is not split across threads.
constexpr int64_t kParallelMin = 1 << 15;

template <class Fn>
etta_status visit2(etta_dtype a, etta_dtype b, Fn&& fn) {
  return detail::visit_dtypes<float, Half, BFloat16>(a, b, fn);
}

inline float gelu_tanh(float u) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  constexpr float kCoeff = 0.044715f;
  return 0.5f * u * (1.0f + std::tanh(kSqrt2OverPi * (u + kCoeff * u * u * u)));
}

template <class T, class P>
void gelu(const T* x, const P* bias, T* y, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    T* yr = y + r * dim;
    for (int64_t c = 0; c < dim; ++c) {
      const float u = bias ? to_float(xr[c]) + to_float(bias[c]) : to_float(xr[c]);
      yr[c] = from_float<T>(gelu_tanh(u));
    }
  }
}

// y = x + sin(exp(alpha[c]) x)^2 / (exp(beta[c]) + 1e-9) over (batch, channels, length) rows; y may alias x.
template <class T, class P>
void snake_beta(const T* x, const P* alpha, const P* beta, T* y, int64_t batch, int64_t channels, int64_t length) {
  const int64_t rows = batch * channels;
#pragma omp parallel for schedule(static) if (rows * length >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = r % channels;
    const float a = std::exp(to_float(alpha[c]));
    const float inv_b = 1.0f / (std::exp(to_float(beta[c])) + 1e-9f);
    const T* xr = x + r * length;
    T* yr = y + r * length;
    for (int64_t s = 0; s < length; ++s) {
      const float v = to_float(xr[s]);
      const float sn = std::sin(a * v);
      yr[s] = from_float<T>(v + sn * sn * inv_b);
    }
  }
}

// One row of AdaLN-modulate: out = layer_norm(x, weight, eps) * (1 + sc) + sh. out may alias x.
template <class T, class P>
void adaln_row(const T* xr, const P* sh, const P* sc, const P* weight, T* outr, int64_t dim, float eps) {
  double sum = 0.0;
  for (int64_t c = 0; c < dim; ++c) sum += to_float(xr[c]);
  const double mean = sum / dim;
  double sq = 0.0;
  for (int64_t c = 0; c < dim; ++c) {
    const double d = to_float(xr[c]) - mean;
    sq += d * d;
  }
  const double rstd = 1.0 / std::sqrt(sq / dim + eps);
  for (int64_t c = 0; c < dim; ++c) {
    float h = static_cast<float>((to_float(xr[c]) - mean) * rstd);
    if (weight) h *= to_float(weight[c]);
    outr[c] = from_float<T>(h * (1.0f + to_float(sc[c])) + to_float(sh[c]));
  }
}

template <class T, class P>
void adaln(const T* x, const P* shift, const P* scale, const P* weight, T* out, int64_t batch, int64_t seq,
           int64_t dim, int64_t shift_stride, int64_t scale_stride, float eps) {
  const int64_t rows = batch * seq;
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    adaln_row(x + r * dim, shift + (r / seq) * shift_stride, scale + (r / seq) * scale_stride, weight, out + r * dim,
              dim, eps);
  }
}

// One row of the gated residual: out = x + g * y. out may alias x.
template <class T, class P>
void gated_residual_row(const T* xr, const P* g, const T* yr, T* outr, int64_t dim) {
  for (int64_t c = 0; c < dim; ++c) outr[c] = from_float<T>(to_float(xr[c]) + to_float(g[c]) * to_float(yr[c]));
}

template <class T, class P>
void gated_residual(const T* x, const P* gate, const T* y, T* out, int64_t batch, int64_t seq, int64_t dim,
                    int64_t gate_stride) {
  const int64_t rows = batch * seq;
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    gated_residual_row(x + r * dim, gate + (r / seq) * gate_stride, y + r * dim, out + r * dim, dim);
  }
}

// The two rows above in sequence on each row: x_out = x + gate * y (the first n * seq rows; the others copy x),
// then out = AdaLN-modulate of x_out as stored (rounded to T). x_out may alias x; out overlaps neither.
template <class T, class P>
void residual_modulate(const T* x, const P* gate, const T* y, const P* shift, const P* scale, const P* weight,
                       T* x_out, T* out, int64_t batch, int64_t n, int64_t seq, int64_t dim, int64_t gate_stride,
                       int64_t shift_stride, int64_t scale_stride, float eps) {
  const int64_t rows = batch * seq;
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / seq;
    const T* xr = x + r * dim;
    T* xo = x_out + r * dim;
    if (b < n) {
      gated_residual_row(xr, gate + b * gate_stride, y + r * dim, xo, dim);
    } else if (xo != xr) {
      for (int64_t c = 0; c < dim; ++c) xo[c] = xr[c];
    }
    adaln_row(static_cast<const T*>(xo), shift + b * shift_stride, scale + b * scale_stride, weight, out + r * dim,
              dim, eps);
  }
}

template <class T>
void rope(const T* in, const int64_t* s, T* const* out, int64_t slices, int64_t batch, int64_t seq, int64_t heads,
          int64_t head_dim, float base, bool inverse) {
  const int64_t half = head_dim / 2;
  // inv_freq[i] = 1 / base^(2i / head_dim), each step in fp32 as the reference computes it.
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(head_dim));
  }
  const int64_t rows = batch * seq;
#pragma omp parallel for schedule(static) if (rows * slices * heads * head_dim >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / seq, t = r % seq;
    std::vector<float> cos(half), sin(half);  // one table per token, shared by its heads and slices
    for (int64_t i = 0; i < half; ++i) {
      const float theta = static_cast<float>(t) * inv_freq[i];
      cos[i] = std::cos(theta);
      sin[i] = inverse ? -std::sin(theta) : std::sin(theta);
    }
    for (int64_t sl = 0; sl < slices; ++sl) {
      for (int64_t h = 0; h < heads; ++h) {
        const T* xi = in + b * s[0] + t * s[1] + sl * s[2] + h * s[3];
        T* xo = out[sl] + (r * heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = to_float(xi[i]), x2 = to_float(xi[i + half]);
          xo[i] = from_float<T>(x1 * cos[i] - x2 * sin[i]);
          xo[i + half] = from_float<T>(x2 * cos[i] + x1 * sin[i]);
        }
      }
    }
  }
}

template <class X, class V>
void guided_update(const X* x, const V* v_cond, const V* v_uncond, const V* v_prev, X* x_out, V* v_out, int64_t n,
                   float guidance, float a, float b) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float vc = to_float(v_cond[i]);
    const float v = v_uncond ? to_float(v_uncond[i]) + guidance * (vc - to_float(v_uncond[i])) : vc;
    float xn = to_float(x[i]) + a * v;
    if (v_prev) xn += b * to_float(v_prev[i]);
    if (v_out) v_out[i] = from_float<V>(v);
    x_out[i] = from_float<X>(xn);
  }
}

}  // namespace
}  // namespace etta::cpu

using etta::detail::check_adaln;
using etta::detail::check_gated_residual;
using etta::detail::check_gelu;
using etta::detail::check_guided_update;
using etta::detail::check_residual_modulate;
using etta::detail::check_rope;
using etta::detail::check_snake_beta;

extern "C" etta_status etta_gelu_tanh_cpu(const void* x, const void* bias, void* y, int64_t rows, int64_t dim,
                                          etta_dtype dtype, etta_dtype param_dtype) {
  ETTA_TRY(check_gelu(x, y, rows, dim, dtype, param_dtype));
  return etta::cpu::visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    etta::cpu::gelu(static_cast<const T*>(x), static_cast<const P*>(bias), static_cast<T*>(y), rows, dim);
    return ETTA_OK;
  });
}

extern "C" etta_status etta_snake_beta_cpu(const void* x, const void* alpha, const void* beta, void* y, int64_t batch,
                                           int64_t channels, int64_t length, etta_dtype dtype,
                                           etta_dtype param_dtype) {
  ETTA_TRY(check_snake_beta(x, alpha, beta, y, batch, channels, length, dtype, param_dtype));
  if (batch * channels * length == 0) return ETTA_OK;
  return etta::cpu::visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    etta::cpu::snake_beta(static_cast<const T*>(x), static_cast<const P*>(alpha), static_cast<const P*>(beta),
                          static_cast<T*>(y), batch, channels, length);
    return ETTA_OK;
  });
}

extern "C" etta_status etta_adaln_modulate_cpu(const void* x, const void* shift, const void* scale,
                                               const void* weight, void* out, int64_t batch, int64_t seq,
                                               int64_t dim, int64_t shift_stride, int64_t scale_stride, float eps,
                                               etta_dtype dtype, etta_dtype param_dtype) {
  ETTA_TRY(check_adaln(x, shift, scale, out, batch, seq, dim, shift_stride, scale_stride, eps, dtype, param_dtype));
  return etta::cpu::visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    etta::cpu::adaln(static_cast<const T*>(x), static_cast<const P*>(shift), static_cast<const P*>(scale),
                     static_cast<const P*>(weight), static_cast<T*>(out), batch, seq, dim, shift_stride,
                     scale_stride, eps);
    return ETTA_OK;
  });
}

extern "C" etta_status etta_gated_residual_cpu(const void* x, const void* gate, const void* y, void* out,
                                               int64_t batch, int64_t seq, int64_t dim, int64_t gate_stride,
                                               etta_dtype dtype, etta_dtype param_dtype) {
  ETTA_TRY(check_gated_residual(x, gate, y, out, batch, seq, dim, gate_stride, dtype, param_dtype));
  return etta::cpu::visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    etta::cpu::gated_residual(static_cast<const T*>(x), static_cast<const P*>(gate), static_cast<const T*>(y),
                              static_cast<T*>(out), batch, seq, dim, gate_stride);
    return ETTA_OK;
  });
}

extern "C" etta_status etta_residual_modulate_cpu(const void* x, const void* gate, const void* y, const void* shift,
                                                  const void* scale, const void* weight, void* x_out, void* out,
                                                  int64_t batch, int64_t rows_with_residual, int64_t seq, int64_t dim,
                                                  int64_t gate_stride, int64_t shift_stride, int64_t scale_stride,
                                                  float eps, etta_dtype dtype, etta_dtype param_dtype) {
  ETTA_TRY(check_residual_modulate(x, gate, y, shift, scale, x_out, out, batch, rows_with_residual, seq, dim,
                                   gate_stride, shift_stride, scale_stride, eps, dtype, param_dtype));
  if (batch * seq * dim == 0) return ETTA_OK;
  return etta::cpu::visit2(dtype, param_dtype, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    etta::cpu::residual_modulate(static_cast<const T*>(x), static_cast<const P*>(gate), static_cast<const T*>(y),
                                 static_cast<const P*>(shift), static_cast<const P*>(scale),
                                 static_cast<const P*>(weight), static_cast<T*>(x_out), static_cast<T*>(out), batch,
                                 rows_with_residual, seq, dim, gate_stride, shift_stride, scale_stride, eps);
    return ETTA_OK;
  });
}

extern "C" etta_status etta_rope_cpu(const void* in, const int64_t in_strides[4], void* const* out, int64_t slices,
                                     int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, float base,
                                     int inverse, etta_dtype dtype) {
  ETTA_TRY(check_rope(in, in_strides, out, slices, batch, seq, heads, head_dim, base, dtype));
  if (batch * seq * heads * head_dim == 0) return ETTA_OK;
  return etta::cpu::visit2(dtype, dtype, [&](auto t, auto) {
    using T = typename decltype(t)::type;
    etta::cpu::rope(static_cast<const T*>(in), in_strides, reinterpret_cast<T* const*>(out), slices, batch, seq,
                    heads, head_dim, base, inverse != 0);
    return ETTA_OK;
  });
}

extern "C" etta_status etta_guided_update_cpu(const void* x, const void* v_cond, const void* v_uncond,
                                              const void* v_prev, void* x_out, void* v_out, int64_t n,
                                              float guidance, float a, float b, etta_dtype x_dtype,
                                              etta_dtype v_dtype) {
  ETTA_TRY(check_guided_update(x, v_cond, x_out, n, x_dtype, v_dtype));
  return etta::cpu::visit2(x_dtype, v_dtype, [&](auto xt, auto vt) {
    using X = typename decltype(xt)::type;
    using V = typename decltype(vt)::type;
    etta::cpu::guided_update(static_cast<const X*>(x), static_cast<const V*>(v_cond),
                             static_cast<const V*>(v_uncond), static_cast<const V*>(v_prev), static_cast<X*>(x_out),
                             static_cast<V*>(v_out), n, guidance, a, b);
    return ETTA_OK;
  });
}
