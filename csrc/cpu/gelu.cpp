// GELU (tanh approximation) on the CPU: the reference kernel every build has.
#include <cmath>

#include "etta/etta.h"

namespace {

inline float gelu_tanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  constexpr float kCoeff = 0.044715f;
  return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + kCoeff * x * x * x)));
}

}  // namespace

extern "C" etta_status etta_gelu_tanh_cpu(const void* x, void* y, int64_t n, etta_dtype dtype) {
  if (n < 0 || (n > 0 && (x == nullptr || y == nullptr))) return ETTA_ERROR_INVALID_ARGUMENT;
  if (dtype != ETTA_FLOAT32) return ETTA_ERROR_UNSUPPORTED_DTYPE;
  const float* in = static_cast<const float*>(x);
  float* out = static_cast<float*>(y);
  for (int64_t i = 0; i < n; ++i) out[i] = gelu_tanh(in[i]);
  return ETTA_OK;
}
