/* etta_engine runtime: a plain C ABI over the engine's inference kernels.
 *
 * No Python, PyTorch or CUDA types appear here, so the library links into any C or C++
 * program. Conventions of every op:
 *   - Every function returns an etta_status; pointers are caller-owned device (or host) memory.
 *   - Each op exists twice: `<op>_cpu` (plain C++ loops, in every build) and `<op>_cuda` (returns
 *     ETTA_ERROR_NOT_COMPILED in a build without CUDA). CUDA functions launch on the caller's
 *     stream, passed as an opaque `void*` (a cudaStream_t; NULL = the legacy default stream), and
 *     do not synchronise.
 *   - Sizes and strides are counts of elements, not bytes. Tensors are dense row-major unless a
 *     stride argument says otherwise.
 *   - `dtype` is the storage type of the activations (x, y, out); `param_dtype` that of the
 *     per-channel parameters (bias, shift, scale, weight, gate). Arithmetic is fp32 throughout;
 *     results are rounded to nearest-even on store.
 *   - Outputs may alias their same-shaped input (in place) where stated.
 *   - Kernels use 16-byte vector loads when every pointer is 16-byte aligned and the innermost
 *     width is a multiple of the vector width; any other layout takes the scalar path.
 */
#ifndef ETTA_ETTA_H_
#define ETTA_ETTA_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum etta_status {
  ETTA_OK = 0,
  ETTA_ERROR_INVALID_ARGUMENT = 1, /* null pointer, negative size, bad stride, ... */
  ETTA_ERROR_UNSUPPORTED_DTYPE = 2,
  ETTA_ERROR_CUDA = 3,             /* a CUDA runtime call failed */
  ETTA_ERROR_NOT_COMPILED = 4      /* the library was built without CUDA */
} etta_status;

typedef enum etta_dtype {
  ETTA_FLOAT32 = 0,
  ETTA_FLOAT16 = 1,
  ETTA_BFLOAT16 = 2
} etta_dtype;

/* Human-readable text for a status code (static storage, never NULL). */
const char* etta_status_string(etta_status status);

/* Library version, e.g. "0.1.0". */
const char* etta_version(void);

/* 1 if the CUDA kernels were compiled into this build, else 0. */
int etta_cuda_compiled(void);

/* The calling thread's current CUDA device, on which the `_cuda` functions launch. */
etta_status etta_cuda_get_device(int* device);
etta_status etta_cuda_set_device(int device);

/* GELU with the tanh approximation, with an optional per-channel bias:
 *   u = x + bias[c];  y = 0.5 * u * (1 + tanh(sqrt(2/pi) * (u + 0.044715 * u^3)))
 * x, y: (rows, dim) in `dtype`; bias: (dim,) in `param_dtype`, or NULL. y may alias x. */
etta_status etta_gelu_tanh_cpu(const void* x, const void* bias, void* y, int64_t rows, int64_t dim,
                               etta_dtype dtype, etta_dtype param_dtype);
etta_status etta_gelu_tanh_cuda(const void* x, const void* bias, void* y, int64_t rows, int64_t dim,
                                etta_dtype dtype, etta_dtype param_dtype, void* stream);

/* Snake-beta, the Oobleck VAE's activation, with per-channel log-scale parameters:
 *   y[b, c, s] = x[b, c, s] + sin(exp(alpha[c]) * x[b, c, s])^2 / (exp(beta[c]) + 1e-9)
 * x, y: (batch, channels, length) in `dtype`, dense; y may alias x.
 * alpha, beta: (channels,) in `param_dtype`. exp(alpha[c]) and 1 / (exp(beta[c]) + 1e-9) are computed
 * once per channel (in fp32), not per element; sin is the accurate (not the fast-math) sine. */
etta_status etta_snake_beta_cpu(const void* x, const void* alpha, const void* beta, void* y, int64_t batch,
                                int64_t channels, int64_t length, etta_dtype dtype, etta_dtype param_dtype);
etta_status etta_snake_beta_cuda(const void* x, const void* alpha, const void* beta, void* y, int64_t batch,
                                 int64_t channels, int64_t length, etta_dtype dtype, etta_dtype param_dtype,
                                 void* stream);

/* AdaLN-modulate: LayerNorm without bias (optional weight), then a per-batch affine modulation:
 *   out[b, t, :] = layer_norm(x[b, t, :], weight, eps) * (1 + scale[b, :]) + shift[b, :]
 * x, out: (batch, seq, dim) in `dtype`, dense; out may alias x.
 * shift, scale: (batch, dim) in `param_dtype`, rows `shift_stride` / `scale_stride` elements apart
 * (e.g. 6 * dim for chunks of the DiT's hoisted (batch, 6 * dim) modulation; 0 broadcasts one row).
 * weight: (dim,) in `param_dtype`, or NULL for no affine weight. Statistics in fp32, two-pass. */
etta_status etta_adaln_modulate_cpu(const void* x, const void* shift, const void* scale, const void* weight, void* out,
                                    int64_t batch, int64_t seq, int64_t dim, int64_t shift_stride,
                                    int64_t scale_stride, float eps, etta_dtype dtype, etta_dtype param_dtype);
etta_status etta_adaln_modulate_cuda(const void* x, const void* shift, const void* scale, const void* weight,
                                     void* out, int64_t batch, int64_t seq, int64_t dim, int64_t shift_stride,
                                     int64_t scale_stride, float eps, etta_dtype dtype, etta_dtype param_dtype,
                                     void* stream);

/* Gated residual, the DiT's `x = x + gate * sublayer(h)`:
 *   out[b, t, :] = x[b, t, :] + gate[b, :] * y[b, t, :]
 * x, y, out: (batch, seq, dim) in `dtype`, dense; out may alias x.
 * gate: (batch, dim) in `param_dtype`, rows `gate_stride` elements apart (0 broadcasts one row). */
etta_status etta_gated_residual_cpu(const void* x, const void* gate, const void* y, void* out, int64_t batch,
                                    int64_t seq, int64_t dim, int64_t gate_stride, etta_dtype dtype,
                                    etta_dtype param_dtype);
etta_status etta_gated_residual_cuda(const void* x, const void* gate, const void* y, void* out, int64_t batch,
                                     int64_t seq, int64_t dim, int64_t gate_stride, etta_dtype dtype,
                                     etta_dtype param_dtype, void* stream);

/* Gated residual and AdaLN-modulate fused, the DiT's `x = x + gate * sublayer(h); h = modulate(norm(x))`
 * in one pass over each row (b, t), where only the first `rows_with_residual` (n) batch rows get a residual:
 *   r = x[b, t, :] + gate[b, :] * y[b, t, :]  for b < n;   r = x[b, t, :]  for b >= n   (in fp32)
 *   x_out[b, t, :] = r rounded to `dtype`
 *   out[b, t, :] = layer_norm(x_out[b, t, :], weight, eps) * (1 + scale[b, :]) + shift[b, :]
 * The LayerNorm reads x_out as stored (the rounded value), so the result is that of gated_residual followed
 * by adaln_modulate in every dtype.
 * x, x_out, out: (batch, seq, dim) in `dtype`, dense; x_out may alias x (in place); out must not overlap x
 * or x_out. y: (rows_with_residual, seq, dim) in `dtype`, dense, 1 <= rows_with_residual <= batch (0 when
 * batch is 0). gate: (rows_with_residual, dim), shift, scale: (batch, dim), all in `param_dtype`, rows
 * `gate_stride` / `shift_stride` / `scale_stride` elements apart (e.g. 9 * dim for chunks of a hoisted
 * (batch, 9 * dim) modulation; 0 broadcasts one row). weight: (dim,) in `param_dtype`, or NULL for no affine
 * weight. Statistics in fp32, two-pass. */
etta_status etta_residual_modulate_cpu(const void* x, const void* gate, const void* y, const void* shift,
                                       const void* scale, const void* weight, void* x_out, void* out, int64_t batch,
                                       int64_t rows_with_residual, int64_t seq, int64_t dim, int64_t gate_stride,
                                       int64_t shift_stride, int64_t scale_stride, float eps, etta_dtype dtype,
                                       etta_dtype param_dtype);
etta_status etta_residual_modulate_cuda(const void* x, const void* gate, const void* y, const void* shift,
                                        const void* scale, const void* weight, void* x_out, void* out, int64_t batch,
                                        int64_t rows_with_residual, int64_t seq, int64_t dim, int64_t gate_stride,
                                        int64_t shift_stride, int64_t scale_stride, float eps, etta_dtype dtype,
                                        etta_dtype param_dtype, void* stream);

/* Rotary position embedding (rotate-half layout, position of token t is t) of `slices` (1 or 2)
 * tensors read from one strided input, e.g. q and k of a fused QKV projection:
 *   theta[t, i] = t * base^(-2i / head_dim),  i < head_dim / 2;  x = [x1, x2] (halves of the head dim)
 *   out = [x1 cos(theta) - x2 sin(theta), x2 cos(theta) + x1 sin(theta)]
 * With `inverse` != 0 the angle is negated (the inverse rotation, i.e. the backward).
 * Input slice s, element (b, t, h, d) is at in[b * in_strides[0] + t * in_strides[1] + s * in_strides[2]
 * + h * in_strides[3] + d]: the head dim is contiguous, the other strides are free (for a fused QKV
 * tensor (batch, seq, 3, heads, head_dim), slices = 2 rotates q and k; for a plain (batch, seq, heads,
 * head_dim) tensor, slices = 1 and in_strides[2] is unused).
 * out[s]: (batch, seq, heads, head_dim), dense, `dtype`; `out` points to `slices` output pointers.
 * head_dim must be even. Outputs must not overlap the input. */
etta_status etta_rope_cpu(const void* in, const int64_t in_strides[4], void* const* out, int64_t slices,
                          int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, float base, int inverse,
                          etta_dtype dtype);
etta_status etta_rope_cuda(const void* in, const int64_t in_strides[4], void* const* out, int64_t slices,
                           int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, float base, int inverse,
                           etta_dtype dtype, void* stream);

/* The update that ends a sampling step, guidance and solver fused in one pass:
 *   v     = v_uncond + guidance * (v_cond - v_uncond)    (v = v_cond when v_uncond is NULL)
 *   x_out = x + a * v + b * v_prev                       (the b term is dropped when v_prev is NULL)
 *   v_out = v                                            (when v_out is not NULL)
 * Euler: a = dt. Heun predictor: a = dt, v_out = v1; Heun corrector: a = b = dt / 2, v_prev = v1.
 * Midpoint: a = dt / 2 to the midpoint, then a = dt from the step's start.
 * x, x_out: n values in `x_dtype` (the solver state); v_cond, v_uncond, v_prev, v_out: n values in
 * `v_dtype` (the model's output). x_out may alias x; v_out may alias v_cond, v_uncond or v_prev. */
etta_status etta_guided_update_cpu(const void* x, const void* v_cond, const void* v_uncond, const void* v_prev,
                                   void* x_out, void* v_out, int64_t n, float guidance, float a, float b,
                                   etta_dtype x_dtype, etta_dtype v_dtype);
etta_status etta_guided_update_cuda(const void* x, const void* v_cond, const void* v_uncond, const void* v_prev,
                                    void* x_out, void* v_out, int64_t n, float guidance, float a, float b,
                                    etta_dtype x_dtype, etta_dtype v_dtype, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* ETTA_ETTA_H_ */
