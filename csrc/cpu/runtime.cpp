// Library-wide entry points of the C ABI: status strings, version, build flags.
#include "etta/etta.h"

#ifndef ETTA_VERSION
#define ETTA_VERSION "unknown"
#endif

extern "C" const char* etta_status_string(etta_status status) {
  switch (status) {
    case ETTA_OK:
      return "ok";
    case ETTA_ERROR_INVALID_ARGUMENT:
      return "invalid argument";
    case ETTA_ERROR_UNSUPPORTED_DTYPE:
      return "unsupported dtype";
    case ETTA_ERROR_CUDA:
      return "CUDA runtime error";
    case ETTA_ERROR_NOT_COMPILED:
      return "this build of etta_engine has no CUDA kernels";
  }
  return "unknown status";
}

extern "C" const char* etta_version(void) { return ETTA_VERSION; }

extern "C" int etta_cuda_compiled(void) {
#ifdef ETTA_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}
