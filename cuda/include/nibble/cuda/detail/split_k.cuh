// Split-K's second step, shared by nibble's GEMM kernels: Y = scale * (sum over splits of the
// fp32 partial sums), added in split order so the result does not depend on timing. `scale` is
// alpha times the row's scale when given (W4A8's output scaling), else 1.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nibble/cuda/check.cuh"
#include "nibble/cuda/detail/ptx.cuh"
#include "nibble/cuda/w4a16_layout.hpp"

namespace nibble::cuda::split_k {

template <class T>
struct Params {
  const float* workspace = nullptr;  // [splits][rows][N]
  T* y = nullptr;                    // [rows][N]
  const int32_t* expert_offsets = nullptr;
  int64_t experts = 1;
  int64_t rows = 0;
  int64_t n = 0;
  int splits = 1;
  int block_rows = 16;  // as the GEMM's launch: the same rows per block
  float alpha = 1.0f;
  const float* row_scales = nullptr;  // [rows], or null
};

inline constexpr int kThreads = 256;
inline constexpr int kBlockN = w4a16::kBlockN;  // a GEMM block's columns

// Grid: (N / 64, 1, the GEMM's row blocks); block z adds the rows the GEMM's block z computed.
template <class T>
__global__ void __launch_bounds__(kThreads) add_splits_kernel(const Params<T> params) {
  w4a16::RowRange rows;
  if (!w4a16::block_rows_of(params.expert_offsets, params.experts, params.rows, params.block_rows,
                            blockIdx.z, rows)) {
    return;
  }
  const int64_t column0 = int64_t{blockIdx.x} * kBlockN;
  const int64_t pairs = (rows.end - rows.begin) * (kBlockN / 2);
  for (int64_t i = threadIdx.x; i < pairs; i += kThreads) {
    const int64_t row = rows.begin + i / (kBlockN / 2);
    const int64_t column = column0 + 2 * (i % (kBlockN / 2));
    float2 sum = make_float2(0.0f, 0.0f);
    for (int split = 0; split < params.splits; ++split) {
      const float2 part = *reinterpret_cast<const float2*>(
          params.workspace + (split * params.rows + row) * params.n + column);
      sum.x += part.x;
      sum.y += part.y;
    }
    const float scale =
        params.row_scales == nullptr ? params.alpha : params.alpha * params.row_scales[row];
    ptx::store_pair(params.y + row * params.n + column, sum.x * scale, sum.y * scale);
  }
}

template <class T>
void launch_add(const Params<T>& params, dim3 gemm_grid, cudaStream_t stream,
                const char* function) {
  add_splits_kernel<T><<<dim3(gemm_grid.x, 1, gemm_grid.z), kThreads, 0, stream>>>(params);
  check_cuda(cudaGetLastError(), function, "the split-K reduction launch");
}

}  // namespace nibble::cuda::split_k
