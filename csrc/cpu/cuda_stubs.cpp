// CUDA entry points of a build without CUDA: present so the ABI is the same, but they
// report ETTA_ERROR_NOT_COMPILED.
#include "etta/etta.h"

extern "C" etta_status etta_gelu_tanh_cuda(const void*, void*, int64_t, etta_dtype, void*) {
  return ETTA_ERROR_NOT_COMPILED;
}
