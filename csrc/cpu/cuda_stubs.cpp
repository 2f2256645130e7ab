// CUDA entry points of a build without CUDA: present so the ABI is the same, but they report
// ETTA_ERROR_NOT_COMPILED.
#include "etta/etta.h"

extern "C" {

etta_status etta_cuda_get_device(int*) { return ETTA_ERROR_NOT_COMPILED; }

etta_status etta_cuda_set_device(int) { return ETTA_ERROR_NOT_COMPILED; }

etta_status etta_gelu_tanh_cuda(const void*, const void*, void*, int64_t, int64_t, etta_dtype, etta_dtype, void*) {
  return ETTA_ERROR_NOT_COMPILED;
}

etta_status etta_snake_beta_cuda(const void*, const void*, const void*, void*, int64_t, int64_t, int64_t, etta_dtype,
                                 etta_dtype, void*) {
  return ETTA_ERROR_NOT_COMPILED;
}

etta_status etta_adaln_modulate_cuda(const void*, const void*, const void*, const void*, void*, int64_t, int64_t,
                                     int64_t, int64_t, int64_t, float, etta_dtype, etta_dtype, void*) {
  return ETTA_ERROR_NOT_COMPILED;
}

etta_status etta_gated_residual_cuda(const void*, const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t,
                                     etta_dtype, etta_dtype, void*) {
  return ETTA_ERROR_NOT_COMPILED;
}

etta_status etta_residual_modulate_cuda(const void*, const void*, const void*, const void*, const void*, const void*,
                                        void*, void*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                        float, etta_dtype, etta_dtype, void*) {
  return ETTA_ERROR_NOT_COMPILED;
}

etta_status etta_rope_cuda(const void*, const int64_t*, void* const*, int64_t, int64_t, int64_t, int64_t, int64_t,
                           float, int, etta_dtype, void*) {
  return ETTA_ERROR_NOT_COMPILED;
}

etta_status etta_guided_update_cuda(const void*, const void*, const void*, const void*, void*, void*, int64_t, float,
                                    float, float, etta_dtype, etta_dtype, void*) {
  return ETTA_ERROR_NOT_COMPILED;
}

}  // extern "C"
