/* etta_engine runtime: a plain C ABI over the engine's inference kernels.
 *
 * No Python, PyTorch or CUDA types appear here, so the library links into any C or C++
 * program. Every function returns an etta_status; pointers are caller-owned; CUDA
 * functions take the caller's stream as an opaque `void*` (a cudaStream_t, NULL = default).
 */
#ifndef ETTA_ETTA_H_
#define ETTA_ETTA_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum etta_status {
  ETTA_OK = 0,
  ETTA_ERROR_INVALID_ARGUMENT = 1, /* null pointer, negative size, ... */
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

/* GELU with the tanh approximation, elementwise over n contiguous values:
 *   y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
 * computed in fp32. x and y may alias. Supported dtypes: ETTA_FLOAT32. */
etta_status etta_gelu_tanh_cpu(const void* x, void* y, int64_t n, etta_dtype dtype);
etta_status etta_gelu_tanh_cuda(const void* x, void* y, int64_t n, etta_dtype dtype, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* ETTA_ETTA_H_ */
