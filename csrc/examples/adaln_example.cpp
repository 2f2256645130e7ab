// An embedder's view of the runtime, without Python: AdaLN-modulate a (2, 3, 5) activation on the
// CPU in fp32 and bf16, end a sampling step with the fused CFG + Euler update, show the error of a
// bad call, and, when the build has CUDA and a GPU is present, run the same AdaLN on the GPU.
//
//   etta_adaln_example          prints "adaln <index> <value>" and "update <index> <value>" lines
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "etta/etta.h"

#ifdef ETTA_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace {

constexpr int64_t kBatch = 2, kSeq = 3, kDim = 5;

bool ok(etta_status status, const char* what) {
  if (status == ETTA_OK) return true;
  std::fprintf(stderr, "%s: %s\n", what, etta_status_string(status));
  return false;
}

// fp32 -> bf16 by truncation of the low half after rounding to nearest-even (as the runtime stores).
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

int main() {
  const int64_t n = kBatch * kSeq * kDim;
  std::vector<float> x(n), shift(kBatch * kDim), scale(kBatch * kDim), weight(kDim), out(n);
  for (int64_t i = 0; i < n; ++i) x[i] = std::sin(static_cast<float>(i));
  for (int64_t b = 0; b < kBatch; ++b) {
    for (int64_t c = 0; c < kDim; ++c) {
      shift[b * kDim + c] = 0.1f * static_cast<float>((b + 1) * c);
      scale[b * kDim + c] = 0.05f * static_cast<float>(c) - 0.1f * static_cast<float>(b);
    }
  }
  for (int64_t c = 0; c < kDim; ++c) weight[c] = 1.0f + 0.1f * static_cast<float>(c);

  std::printf("etta %s (cuda compiled: %d)\n", etta_version(), etta_cuda_compiled());
  if (!ok(etta_adaln_modulate_cpu(x.data(), shift.data(), scale.data(), weight.data(), out.data(), kBatch, kSeq, kDim,
                                  kDim, kDim, 1e-6f, ETTA_FLOAT32, ETTA_FLOAT32),
          "etta_adaln_modulate_cpu")) {
    return 1;
  }
  for (int64_t i = 0; i < n; ++i) std::printf("adaln %lld %.9g\n", static_cast<long long>(i), out[i]);

  // The same op with bf16 activations (parameters stay fp32).
  std::vector<uint16_t> xh(n), outh(n);
  for (int64_t i = 0; i < n; ++i) xh[i] = to_bf16(x[i]);
  if (!ok(etta_adaln_modulate_cpu(xh.data(), shift.data(), scale.data(), weight.data(), outh.data(), kBatch, kSeq,
                                  kDim, kDim, kDim, 1e-6f, ETTA_BFLOAT16, ETTA_FLOAT32),
          "etta_adaln_modulate_cpu (bf16)")) {
    return 1;
  }
  for (int64_t i = 0; i < n; ++i) std::printf("adaln_bf16 %lld %.9g\n", static_cast<long long>(i), from_bf16(outh[i]));

  // One Euler step with classifier-free guidance 3.5 from t = 1 to t = 0.75: x <- x - 0.25 * v.
  std::vector<float> v_cond(n), v_uncond(n), state(x);
  for (int64_t i = 0; i < n; ++i) {
    v_cond[i] = std::cos(static_cast<float>(i));
    v_uncond[i] = 0.5f * std::cos(static_cast<float>(i));
  }
  if (!ok(etta_guided_update_cpu(state.data(), v_cond.data(), v_uncond.data(), nullptr, state.data(), nullptr, n,
                                 3.5f, -0.25f, 0.0f, ETTA_FLOAT32, ETTA_FLOAT32),
          "etta_guided_update_cpu")) {
    return 1;
  }
  for (int64_t i = 0; i < n; ++i) std::printf("update %lld %.9g\n", static_cast<long long>(i), state[i]);

  // A bad call returns a status instead of crashing: a missing input.
  const etta_status bad = etta_gelu_tanh_cpu(nullptr, nullptr, out.data(), 1, kDim, ETTA_FLOAT32, ETTA_FLOAT32);
  std::printf("bad call: %s\n", etta_status_string(bad));

#ifdef ETTA_WITH_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) {
    float *dx = nullptr, *dshift = nullptr, *dscale = nullptr, *dweight = nullptr, *dout = nullptr;
    cudaMalloc(&dx, n * 4);
    cudaMalloc(&dshift, kBatch * kDim * 4);
    cudaMalloc(&dscale, kBatch * kDim * 4);
    cudaMalloc(&dweight, kDim * 4);
    cudaMalloc(&dout, n * 4);
    cudaMemcpy(dx, x.data(), n * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dshift, shift.data(), kBatch * kDim * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dscale, scale.data(), kBatch * kDim * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dweight, weight.data(), kDim * 4, cudaMemcpyHostToDevice);
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    const bool launched = ok(etta_adaln_modulate_cuda(dx, dshift, dscale, dweight, dout, kBatch, kSeq, kDim, kDim,
                                                      kDim, 1e-6f, ETTA_FLOAT32, ETTA_FLOAT32, stream),
                             "etta_adaln_modulate_cuda");
    std::vector<float> gpu(n);
    cudaMemcpyAsync(gpu.data(), dout, n * 4, cudaMemcpyDeviceToHost, stream);
    cudaStreamSynchronize(stream);
    float worst = 0.0f;
    for (int64_t i = 0; i < n; ++i) worst = std::fmax(worst, std::fabs(gpu[i] - out[i]));
    if (launched) std::printf("cuda max |gpu - cpu| %.3g\n", worst);
    cudaStreamDestroy(stream);
    for (float* p : {dx, dshift, dscale, dweight, dout}) cudaFree(p);
    if (!launched) return 1;
  }
#endif
  return 0;
}
