// The block structure W4A16 and W4A8 share: Y[rows, N] = scale * X * dequant(W)^T with int4
// weights in the tile layout of w4a16_layout.hpp. A "family" supplies what differs:
//
//   struct Family {
//     using Out, Scale, X;     // output type, scale / zero-point type, activation element type
//     using Stage;             // w4a16::StageLayout<sizeof(X), max groups per stage>
//     static constexpr int kMinArch;  static constexpr const char* kNeeds;
//     template <bool kZeroPoints, int kMTiles>
//     __device__ static void compute_stage(const StageView& stage, float (&acc)[kMTiles][2][4]);
//   };
//
// Per block 256 threads: 4 warps along N (16 columns each) x 2 along K (64 of each 128-wide
// stage). A kStages-deep cp.async pipeline brings, per stage, the block's 64 x 128 int4 weights
// (L2 evict-first: read once, they should not push X and the scales out of L2), up to 64 rows x
// 128 of X (swizzled, zero-filled past the last row) and the scale / zero-point rows of the
// groups the stage touches. The family's compute_stage turns each lane's own words into B
// fragments and issues its mma. The two K-warps then add their sums through shared memory; with
// split-K the block writes fp32 partials and split_k::add_splits_kernel adds them in split order.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "nibble/core/error.hpp"
#include "nibble/cuda/check.cuh"
#include "nibble/cuda/detail/launch.cuh"
#include "nibble/cuda/detail/ptx.cuh"
#include "nibble/cuda/detail/split_k.cuh"
#include "nibble/cuda/w4a16_layout.hpp"

namespace nibble::cuda {

// Device-resident repacked int4 weights (w4a16::PackedWeights<S> uploaded as is); S is the
// scale type (W4A16: the activation type; W4A8: fp16).
template <class S>
struct Int4Weights {
  const uint32_t* words = nullptr;  // [experts][N * K / 8]
  const S* scales = nullptr;        // [experts][n_groups][N]
  const S* zeros = nullptr;         // same shape, or null when symmetric (zero point 8)
  int64_t experts = 1;
  int64_t n = 0;
  int64_t k = 0;
  int64_t group_size = 0;  // K when per-channel
};

namespace int4_gemm {

using namespace w4a16;  // NOLINT: the geometry (kBlockN, kThreads, ...) is shared

template <class Out, class Scale, class X>
struct Params {
  const uint32_t* words;
  const Scale* scales;
  const Scale* zeros;
  const X* x;
  Out* y;
  float* workspace;               // [splits][rows][N] when splits > 1
  const int32_t* expert_offsets;  // [experts + 1], or null for a dense GEMM
  int64_t experts;
  int64_t rows;  // rows of X and Y (M, or the token count)
  int64_t n;
  int64_t k;
  int64_t group_size;
  int64_t n_groups;
  int group_shift;       // the group row of a K offset inside a stage: offset >> group_shift
  int groups_per_stage;  // scale rows a stage copies
  int64_t stages;
  int64_t stages_per_split;
  int splits;
  float alpha;              // output scale (W4A16: 1)
  const float* row_scales;  // [rows] per-row output scale, or null
};

// What compute_stage sees of one landed stage.
struct StageView {
  const unsigned char* x;       // the X rows, swizzled (x_chunk_offset)
  uint4 words;                  // this lane's 16 bytes of weights: four words
  const unsigned char* scales;  // [groups_per_stage][64] scale values of the block's columns
  const unsigned char* zeros;   // the same for zero points
  int lane;
  int warp_k;           // 0 or 1: which 64 of the stage's 128 K this warp computes
  int column_in_block;  // this lane's column of n8 tile 0 (tile 1: + 8)
  int group_shift;
};

template <class Family, bool kZeroPoints, int kMTiles>
__global__ void __launch_bounds__(kThreads) gemm_kernel(
    const Params<typename Family::Out, typename Family::Scale, typename Family::X> params) {
  using Stage = typename Family::Stage;
  constexpr int kRows = kMTile * kMTiles;
  constexpr int kStageBytes = Stage::stage_bytes(kMTiles);
  extern __shared__ __align__(16) unsigned char shared[];

  RowRange rows;
  if (!block_rows_of(params.expert_offsets, params.experts, params.rows, kRows, blockIdx.z, rows)) {
    return;  // an idle MoE block past the last expert's rows
  }
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warp_n = warp % kWarpsN;
  const int warp_k = warp / kWarpsN;
  const int64_t column0 = int64_t{blockIdx.x} * kBlockN;
  const int split = static_cast<int>(blockIdx.y);
  const int64_t stage_begin = split * params.stages_per_split;
  const int64_t stage_end = stage_begin + params.stages_per_split < params.stages
                                ? stage_begin + params.stages_per_split
                                : params.stages;
  const int64_t iterations = stage_end - stage_begin;

  const uint32_t* words = params.words + rows.expert * (params.n * params.k / 8);
  const auto* scales = params.scales + rows.expert * params.n_groups * params.n;
  const auto* zeros =
      kZeroPoints ? params.zeros + rows.expert * params.n_groups * params.n : params.zeros;
  const int64_t slabs_per_row = params.k / kSlabK;
  const uint64_t evict_first = ptx::evict_first_policy();

  const auto load_stage = [&](int64_t stage, int slot) {
    unsigned char* base = shared + slot * kStageBytes;
    const int64_t k0 = stage * kBlockK;
    // Weights: each thread copies the 16 bytes it will dequantize itself.
    const int64_t slab = (column0 / kTileN + warp_n) * slabs_per_row + k0 / kSlabK + warp_k;
    ptx::copy_16_with_policy(base + Stage::weights_offset(kMTiles) + threadIdx.x * 16,
                             words + slab * (kWarpSize * kTilesPerSlab) + lane * kTilesPerSlab,
                             evict_first);
    // X: kRows x 16-byte chunks; rows past the block's last are zero-filled.
    for (int chunk = static_cast<int>(threadIdx.x); chunk < kRows * Stage::kXChunksPerRow;
         chunk += kThreads) {
      const int row = chunk / Stage::kXChunksPerRow;
      const int column_chunk = chunk % Stage::kXChunksPerRow;
      const bool valid = rows.begin + row < rows.end;
      const int64_t source_row = valid ? rows.begin + row : rows.begin;
      const auto* source =
          reinterpret_cast<const unsigned char*>(params.x + source_row * params.k + k0) +
          column_chunk * 16;
      ptx::copy_16_or_zero(base + x_chunk_offset<Stage::kXRowBytes>(row, column_chunk), source,
                           valid);
    }
    // Scale (and zero-point) rows of the groups this stage touches: 64 values = 8 chunks a row.
    const int64_t group0 = k0 / params.group_size;
    const int chunk = static_cast<int>(threadIdx.x);
    if (chunk < params.groups_per_stage * (kBlockN * 2 / 16)) {
      const int group = chunk / 8;
      const int part = chunk % 8;
      const int64_t at = (group0 + group) * params.n + column0 + part * 8;
      const int offset = group * (kBlockN * 2) + part * 16;
      ptx::copy_16_or_zero(base + Stage::scales_offset(kMTiles) + offset, scales + at, true);
      if constexpr (kZeroPoints) {
        ptx::copy_16_or_zero(base + Stage::zeros_offset(kMTiles) + offset, zeros + at, true);
      }
    }
  };

  float accumulators[kMTiles][2][4] = {};

  // The pipeline: kStages - 1 stages in flight while one is computed. Every iteration commits a
  // group (empty past the end) so that wait_group's count stays in step with the stage index.
  for (int slot = 0; slot < kStages - 1; ++slot) {
    if (slot < iterations) load_stage(stage_begin + slot, slot);
    ptx::commit_copies();
  }
  for (int64_t iteration = 0; iteration < iterations; ++iteration) {
    ptx::wait_copies<kStages - 2>();  // stage `iteration` has landed (for this thread)
    __syncthreads();  // ... for every thread, and the slot about to be refilled is free
    const int64_t next = iteration + kStages - 1;
    if (next < iterations) load_stage(stage_begin + next, static_cast<int>(next % kStages));
    ptx::commit_copies();
    const unsigned char* base = shared + static_cast<int>(iteration % kStages) * kStageBytes;
    StageView view;
    view.x = base;
    view.words =
        *reinterpret_cast<const uint4*>(base + Stage::weights_offset(kMTiles) + threadIdx.x * 16);
    view.scales = base + Stage::scales_offset(kMTiles);
    view.zeros = base + Stage::zeros_offset(kMTiles);
    view.lane = lane;
    view.warp_k = warp_k;
    view.column_in_block = warp_n * kTileN + lane / 4;
    view.group_shift = params.group_shift;
    Family::template compute_stage<kZeroPoints, kMTiles>(view, accumulators);
  }
  ptx::wait_copies<0>();
  __syncthreads();

  // Add the K-warps' sums: warp_k 1 writes to shared memory (lane-contiguous: no bank conflicts),
  // warp_k 0 adds and stores.
  auto* reduction = reinterpret_cast<float*>(shared);
  constexpr int kValues = kMTiles * 2 * 4;
  float* flat = &accumulators[0][0][0];
  if (warp_k == 1) {
#pragma unroll
    for (int i = 0; i < kValues; ++i)
      reduction[(warp_n * kValues + i) * kWarpSize + lane] = flat[i];
  }
  __syncthreads();
  if (warp_k != 0) return;
#pragma unroll
  for (int i = 0; i < kValues; ++i)
    flat[i] += reduction[(warp_n * kValues + i) * kWarpSize + lane];

#pragma unroll
  for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
    for (int tile = 0; tile < 2; ++tile) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int reg = 2 * half;  // registers (reg, reg + 1) are two adjacent columns of one row
        const int64_t row = rows.begin + m * kMTile + c_fragment_row(lane, reg);
        if (row >= rows.end) continue;
        const int64_t column = column0 + warp_n * kTileN + tile * 8 + c_fragment_col(lane, reg);
        const float first = accumulators[m][tile][reg];
        const float second = accumulators[m][tile][reg + 1];
        if (params.splits == 1) {
          const float scale =
              params.row_scales == nullptr ? params.alpha : params.alpha * params.row_scales[row];
          ptx::store_pair(params.y + row * params.n + column, first * scale, second * scale);
        } else {
          *reinterpret_cast<float2*>(params.workspace + (split * params.rows + row) * params.n +
                                     column) = make_float2(first, second);
        }
      }
    }
  }
}

// ---- host side
// -------------------------------------------------------------------------------------

template <class S>
void check_weights(const char* function, const Int4Weights<S>& w,
                   void (*check_shape)(const char*, int64_t, int64_t, int64_t)) {
  if (w.words == nullptr || w.scales == nullptr) {
    detail::fail(ErrorCode::null_pointer, function, ": weight words or scales are null");
  }
  if (w.experts < 1) {
    detail::fail(ErrorCode::invalid_argument, function, ": experts = ", w.experts,
                 " (expected >= 1)");
  }
  check_shape(function, w.n, w.k, w.group_size);
}

// The SASS the runtime picked for this device must be the family's architecture or newer: a build
// for sm_80 only would otherwise reach the W4A8 kernel's sm_80 stub on an sm_90 device. Checked
// once per device (bit d of `verified`) for each kernel.
template <class Kernel>
void check_binary(const char* function, Kernel kernel, int min_arch, const char* needs,
                  std::atomic<uint64_t>& verified) {
  int device = 0;
  check_cuda(cudaGetDevice(&device), function, "cudaGetDevice");
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if ((verified.load(std::memory_order_relaxed) & bit) != 0) return;
  cudaFuncAttributes attributes{};
  check_cuda(cudaFuncGetAttributes(&attributes, kernel), function, "cudaFuncGetAttributes");
  if (attributes.binaryVersion < min_arch) {
    detail::fail(ErrorCode::unsupported, function, ": the loaded kernel was compiled for sm_",
                 attributes.binaryVersion, " (", needs, " needs code for sm_", min_arch,
                 " or newer: add it to the CUDA architectures of the build)");
  }
  verified.fetch_or(bit, std::memory_order_relaxed);
}

template <class Family, bool kZeroPoints, int kMTiles>
void launch(const Params<typename Family::Out, typename Family::Scale, typename Family::X>& params,
            const LaunchPlan& plan, cudaStream_t stream, const char* function) {
  const auto kernel = gemm_kernel<Family, kZeroPoints, kMTiles>;
  static std::atomic<uint64_t> verified_devices{0};
  check_binary(function, kernel, Family::kMinArch, Family::kNeeds, verified_devices);
  constexpr int kShared = Family::Stage::shared_bytes(kMTiles);
  if constexpr (kShared > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kShared),
               function, "cudaFuncSetAttribute (dynamic shared memory)");
  }
  const dim3 grid(static_cast<unsigned>(plan.column_blocks), static_cast<unsigned>(plan.splits),
                  static_cast<unsigned>(plan.row_blocks));
  kernel<<<grid, kThreads, kShared, stream>>>(params);
  check_cuda(cudaGetLastError(), function, "the GEMM kernel launch");
  if (plan.splits > 1) {
    split_k::Params<typename Family::Out> add;
    add.workspace = params.workspace;
    add.y = params.y;
    add.expert_offsets = params.expert_offsets;
    add.experts = params.experts;
    add.rows = params.rows;
    add.n = params.n;
    add.splits = params.splits;
    add.block_rows = kMTile * kMTiles;
    add.alpha = params.alpha;
    add.row_scales = params.row_scales;
    split_k::launch_add(add, grid, stream, function);
  }
}

// Checks every argument (before any device call, so that the checks run without a GPU), then
// launches the configuration the plan and the zero points call for.
template <class Family>
void run(const char* function, const Int4Weights<typename Family::Scale>& w,
         const typename Family::X* x, typename Family::Out* y, int64_t rows,
         const int32_t* expert_offsets, const LaunchPlan& plan, void* workspace,
         int64_t workspace_bytes, float alpha, const float* row_scales, cudaStream_t stream) {
  check_weights(function, w, Family::check_shape);
  if (rows < 1) {
    detail::fail(ErrorCode::shape_mismatch, function, ": ", rows, " rows (expected >= 1)");
  }
  if (x == nullptr || y == nullptr) {
    detail::fail(ErrorCode::null_pointer, function, ": x or y is null");
  }
  if (!std::isfinite(alpha)) {
    detail::fail(ErrorCode::non_finite, function, ": alpha = ", alpha, " (expected finite)");
  }
  check_aligned(function, w.words, "the weight words");
  check_aligned(function, w.scales, "the scales");
  if (w.zeros != nullptr) check_aligned(function, w.zeros, "the zero points");
  check_aligned(function, x, "x");
  check_aligned(function, y, "y");
  const int64_t experts = expert_offsets == nullptr ? 1 : w.experts;
  check_plan(function, plan, rows, experts, w.n, w.k, workspace, workspace_bytes);
  require_device(function, Family::kMinArch, Family::kNeeds);
  Params<typename Family::Out, typename Family::Scale, typename Family::X> params{};
  params.words = w.words;
  params.scales = w.scales;
  params.zeros = w.zeros;
  params.x = x;
  params.y = y;
  params.workspace = static_cast<float*>(workspace);
  params.expert_offsets = expert_offsets;
  params.experts = experts;
  params.rows = rows;
  params.n = w.n;
  params.k = w.k;
  params.group_size = w.group_size;
  params.n_groups = w.k / w.group_size;
  params.group_shift = group_shift(w.group_size);
  params.groups_per_stage = groups_per_stage(w.group_size);
  params.stages = plan.stages;
  params.stages_per_split = plan.stages_per_split;
  params.splits = plan.splits;
  params.alpha = alpha;
  params.row_scales = row_scales;
  const auto dispatch = [&](auto zero_points) {
    constexpr bool kZeroPoints = decltype(zero_points)::value;
    switch (plan.m_tiles) {
      case 1:
        return launch<Family, kZeroPoints, 1>(params, plan, stream, function);
      case 2:
        return launch<Family, kZeroPoints, 2>(params, plan, stream, function);
      case 4:
        return launch<Family, kZeroPoints, 4>(params, plan, stream, function);
      default:
        detail::fail(ErrorCode::invalid_argument, function, ": plan.m_tiles = ", plan.m_tiles,
                     " (compiled: 1, 2, 4)");
    }
  };
  if (w.zeros != nullptr) {
    dispatch(std::true_type{});
  } else {
    dispatch(std::false_type{});
  }
}

template <class Family>
LaunchPlan plan(const char* function, const Int4Weights<typename Family::Scale>& w, int64_t rows,
                int64_t experts, int64_t rows_per_expert_hint) {
  check_weights(function, w, Family::check_shape);
  return plan_launch(rows, w.n, w.k, experts, rows_per_expert_hint,
                     require_device(function, Family::kMinArch, Family::kNeeds));
}

}  // namespace int4_gemm
}  // namespace nibble::cuda
