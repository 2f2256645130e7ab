/* Links the etta runtime from plain C, without Python: runs gelu_tanh on the CPU and prints it. */
#include <stdio.h>

#include "etta/etta.h"

int main(void) {
  const float x[4] = {-2.0f, -0.5f, 0.0f, 1.5f};
  float y[4];
  etta_status status = etta_gelu_tanh_cpu(x, NULL, y, 1, 4, ETTA_FLOAT32, ETTA_FLOAT32);
  if (status != ETTA_OK) {
    fprintf(stderr, "etta_gelu_tanh_cpu: %s\n", etta_status_string(status));
    return 1;
  }
  printf("etta %s (cuda compiled: %d)\n", etta_version(), etta_cuda_compiled());
  for (int i = 0; i < 4; ++i) printf("gelu_tanh(%.3f) = %.6f\n", x[i], y[i]);
  return 0;
}
