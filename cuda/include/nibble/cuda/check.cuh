// CUDA runtime errors as nibble::Error: which function, which call, and the runtime's message.
#pragma once

#include <cuda_runtime.h>

#include "nibble/core/error.hpp"

namespace nibble::cuda {

inline void check_cuda(cudaError_t status, const char* function, const char* call) {
  if (status != cudaSuccess) {
    detail::fail(ErrorCode::unsupported, function, ": ", call,
                 " failed: ", cudaGetErrorString(status));
  }
}

}  // namespace nibble::cuda
