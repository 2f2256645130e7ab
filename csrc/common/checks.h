// Argument checks of the C ABI, shared by the CPU and CUDA entry points (so both reject the same
// inputs with the same status), and the dtype dispatch that maps etta_dtype to a storage type.
#pragma once

#include <cstdint>

#include "etta/etta.h"

#define ETTA_TRY(expr)                            \
  do {                                            \
    const etta_status etta_status_ = (expr);      \
    if (etta_status_ != ETTA_OK) return etta_status_; \
  } while (0)

namespace etta::detail {

inline bool valid_dtype(etta_dtype d) { return d == ETTA_FLOAT32 || d == ETTA_FLOAT16 || d == ETTA_BFLOAT16; }

inline int dtype_bytes(etta_dtype d) { return d == ETTA_FLOAT32 ? 4 : 2; }

inline etta_status check_dtypes(etta_dtype a, etta_dtype b) {
  return valid_dtype(a) && valid_dtype(b) ? ETTA_OK : ETTA_ERROR_UNSUPPORTED_DTYPE;
}

inline bool non_negative(int64_t v) { return v >= 0; }

template <class... Ts>
bool non_negative(int64_t v, Ts... rest) {
  return v >= 0 && non_negative(rest...);
}

inline etta_status check_gelu(const void* x, const void* y, int64_t rows, int64_t dim, etta_dtype dtype,
                              etta_dtype param_dtype) {
  if (!non_negative(rows, dim)) return ETTA_ERROR_INVALID_ARGUMENT;
  if (rows * dim > 0 && (x == nullptr || y == nullptr)) return ETTA_ERROR_INVALID_ARGUMENT;
  return check_dtypes(dtype, param_dtype);
}

inline etta_status check_snake_beta(const void* x, const void* alpha, const void* beta, const void* y, int64_t batch,
                                    int64_t channels, int64_t length, etta_dtype dtype, etta_dtype param_dtype) {
  if (!non_negative(batch, channels, length)) return ETTA_ERROR_INVALID_ARGUMENT;
  if (batch * channels * length > 0 && (x == nullptr || alpha == nullptr || beta == nullptr || y == nullptr)) {
    return ETTA_ERROR_INVALID_ARGUMENT;
  }
  return check_dtypes(dtype, param_dtype);
}

inline etta_status check_adaln(const void* x, const void* shift, const void* scale, const void* out, int64_t batch,
                               int64_t seq, int64_t dim, int64_t shift_stride, int64_t scale_stride, float eps,
                               etta_dtype dtype, etta_dtype param_dtype) {
  if (!non_negative(batch, seq, dim, shift_stride, scale_stride) || !(eps > 0.0f)) return ETTA_ERROR_INVALID_ARGUMENT;
  if (batch * seq * dim > 0 && (x == nullptr || shift == nullptr || scale == nullptr || out == nullptr)) {
    return ETTA_ERROR_INVALID_ARGUMENT;
  }
  return check_dtypes(dtype, param_dtype);
}

inline etta_status check_gated_residual(const void* x, const void* gate, const void* y, const void* out,
                                        int64_t batch, int64_t seq, int64_t dim, int64_t gate_stride,
                                        etta_dtype dtype, etta_dtype param_dtype) {
  if (!non_negative(batch, seq, dim, gate_stride)) return ETTA_ERROR_INVALID_ARGUMENT;
  if (batch * seq * dim > 0 && (x == nullptr || gate == nullptr || y == nullptr || out == nullptr)) {
    return ETTA_ERROR_INVALID_ARGUMENT;
  }
  return check_dtypes(dtype, param_dtype);
}

inline etta_status check_residual_modulate(const void* x, const void* gate, const void* y, const void* shift,
                                           const void* scale, const void* x_out, const void* out, int64_t batch,
                                           int64_t rows_with_residual, int64_t seq, int64_t dim, int64_t gate_stride,
                                           int64_t shift_stride, int64_t scale_stride, float eps, etta_dtype dtype,
                                           etta_dtype param_dtype) {
  if (!non_negative(batch, rows_with_residual, seq, dim, gate_stride, shift_stride, scale_stride) || !(eps > 0.0f)) {
    return ETTA_ERROR_INVALID_ARGUMENT;
  }
  // 1 <= n <= batch: every launch has rows with a residual (n = 0 only for an empty batch).
  if (rows_with_residual > batch || (batch > 0 && rows_with_residual < 1)) return ETTA_ERROR_INVALID_ARGUMENT;
  if (batch * seq * dim > 0) {
    if (x == nullptr || gate == nullptr || y == nullptr || shift == nullptr || scale == nullptr || x_out == nullptr ||
        out == nullptr) {
      return ETTA_ERROR_INVALID_ARGUMENT;
    }
    if (out == x || out == x_out) return ETTA_ERROR_INVALID_ARGUMENT;  // out is written while the row is read
  }
  return check_dtypes(dtype, param_dtype);
}

inline etta_status check_rope(const void* in, const int64_t* in_strides, void* const* out, int64_t slices,
                              int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, float base,
                              etta_dtype dtype) {
  if (!non_negative(batch, seq, heads, head_dim) || slices < 1 || slices > 2 || head_dim % 2 || !(base > 1.0f)) {
    return ETTA_ERROR_INVALID_ARGUMENT;
  }
  if (batch * seq * heads * head_dim == 0) return check_dtypes(dtype, dtype);
  if (in == nullptr || in_strides == nullptr || out == nullptr) return ETTA_ERROR_INVALID_ARGUMENT;
  for (int64_t s = 0; s < slices; ++s) {
    if (out[s] == nullptr) return ETTA_ERROR_INVALID_ARGUMENT;
  }
  return check_dtypes(dtype, dtype);
}

inline etta_status check_guided_update(const void* x, const void* v_cond, const void* x_out, int64_t n,
                                       etta_dtype x_dtype, etta_dtype v_dtype) {
  if (n < 0 || (n > 0 && (x == nullptr || v_cond == nullptr || x_out == nullptr))) {
    return ETTA_ERROR_INVALID_ARGUMENT;
  }
  return check_dtypes(x_dtype, v_dtype);
}

// Calls fn(Tag<T>{}) with T the storage type of `dtype` among the backend's three types.
template <class T>
struct Tag {
  using type = T;
};

template <class F32, class F16, class BF16, class Fn>
etta_status visit_dtype(etta_dtype dtype, Fn&& fn) {
  switch (dtype) {
    case ETTA_FLOAT32:
      return fn(Tag<F32>{});
    case ETTA_FLOAT16:
      return fn(Tag<F16>{});
    case ETTA_BFLOAT16:
      return fn(Tag<BF16>{});
  }
  return ETTA_ERROR_UNSUPPORTED_DTYPE;
}

template <class F32, class F16, class BF16, class Fn>
etta_status visit_dtypes(etta_dtype a, etta_dtype b, Fn&& fn) {
  return visit_dtype<F32, F16, BF16>(a, [&](auto ta) {
    return visit_dtype<F32, F16, BF16>(b, [&](auto tb) { return fn(ta, tb); });
  });
}

}  // namespace etta::detail
