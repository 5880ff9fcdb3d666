// Host-side launch checks shared by nibble's CUDA kernels: pointer alignment and the device's
// architecture, each failing with what was wrong and what is needed.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nibble/core/error.hpp"
#include "nibble/cuda/check.cuh"
#include "nibble/cuda/w4a16_layout.hpp"

namespace nibble::cuda {

inline void check_aligned(const char* function, const void* pointer, const char* name) {
  if (reinterpret_cast<std::uintptr_t>(pointer) % 16 != 0) {
    detail::fail(ErrorCode::misaligned, function, ": ", name,
                 " is not 16-byte aligned (cp.async and vector loads need 16 bytes)");
  }
}

// The current device's SM count, after checking that its compute capability is at least
// `min_arch` (80 = sm_80, 89 = sm_89); `needs` says what requires it.
inline int require_device(const char* function, int min_arch, const char* needs) {
  int device = 0;
  check_cuda(cudaGetDevice(&device), function, "cudaGetDevice");
  int major = 0;
  int minor = 0;
  int sm_count = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), function,
             "cudaDeviceGetAttribute");
  check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), function,
             "cudaDeviceGetAttribute");
  check_cuda(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device), function,
             "cudaDeviceGetAttribute");
  if (major * 10 + minor < min_arch) {
    detail::fail(ErrorCode::unsupported, function, ": device ", device, " is sm_", major, minor,
                 " (", needs, " needs sm_", min_arch, " or newer)");
  }
  return sm_count;
}

// The plan must be the one made for this problem (its grid and workspace depend on it), and a
// split plan needs its workspace.
inline void check_plan(const char* function, const w4a16::LaunchPlan& plan, int64_t rows,
                       int64_t experts, int64_t n, int64_t k, const void* workspace,
                       int64_t workspace_bytes) {
  if (plan.stages != k / w4a16::kBlockK || plan.column_blocks != n / w4a16::kBlockN ||
      plan.rows != rows || plan.experts != experts) {
    detail::fail(ErrorCode::invalid_argument, function,
                 ": the launch plan was made for another problem (plan: rows ", plan.rows,
                 ", experts ", plan.experts, ", N ", plan.column_blocks * w4a16::kBlockN, ", K ",
                 plan.stages * w4a16::kBlockK, "; call: rows ", rows, ", experts ", experts, ", N ",
                 n, ", K ", k, ")");
  }
  if (plan.splits > 1) {
    if (workspace == nullptr || workspace_bytes < plan.workspace_bytes) {
      detail::fail(ErrorCode::buffer_too_small, function, ": the plan splits K ", plan.splits,
                   " ways and needs a workspace of ", plan.workspace_bytes, " bytes (given ",
                   workspace == nullptr ? 0 : workspace_bytes, ")");
    }
    check_aligned(function, workspace, "the workspace");
  }
}

}  // namespace nibble::cuda
