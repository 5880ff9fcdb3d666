// W4A16 dequant-GEMM on NVIDIA tensor cores (sm_80 and newer, Hopper included):
//
//   Y[M, N] = X[M, K] * dequant(W)[N, K]^T        X, Y fp16 or bf16, W int4, fp32 accumulation
//   moe:  Y[t, :] = X[t, :] * dequant(W[e])^T     tokens sorted by expert, one launch for all
//
// W is nibble's canonical 4-bit tensor repacked by w4a16::repack (w4a16_layout.hpp: the tile
// layout, shape rules and launch plan). The block structure (cp.async pipeline, K-warp
// reduction, split-K) is detail/int4_gemm.cuh's; what is W4A16's own is here: each lane turns
// its 32-bit words into mma.m16n8k16 B fragments by the magic-number conversion (explained in
// w4a16_layout.hpp) and one multiply by the scale in fp16 / bf16, reads X with ldmatrix and
// issues the mma.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "nibble/core/float16.hpp"
#include "nibble/cuda/detail/int4_gemm.cuh"
#include "nibble/cuda/detail/ptx.cuh"
#include "nibble/cuda/w4a16_layout.hpp"

namespace nibble::cuda {

// Device-resident W4A16 weights: scales and zero points in the activation type T.
template <class T>
using W4A16Weights = Int4Weights<T>;

namespace w4a16::device {

using namespace ptx;  // NOLINT: written in these building blocks

// C += A * B for one m16n8k16 tile, fp32 accumulators.
template <class T>
__device__ inline void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                   uint32_t b1) {
  if constexpr (std::is_same_v<T, fp16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// A lane's dequantization constants for one group: per n8 tile, the scale and the zero offset in
// the form each magic-number extraction needs (see w4a16_layout.hpp).
template <class T>
struct GroupConstants {
  using Pair = typename Types<T>::pair;
  Pair scale[2];
  Pair low_offset[2];   // magic + z: subtracted from (magic + v)
  Pair high_offset[2];  // fp16 only: -(magic / 16 + z), added after the multiply by 1/16
};

template <class T>
__device__ inline GroupConstants<T> group_constants(typename Types<T>::scalar scale0,
                                                    typename Types<T>::scalar scale1, float zero0,
                                                    float zero1) {
  GroupConstants<T> constants;
  constants.scale[0] = {scale0, scale0};
  constants.scale[1] = {scale1, scale1};
  const float magic = std::is_same_v<T, fp16> ? kFp16MagicValue : kBf16MagicValue;
  const float zeros[2] = {zero0, zero1};
  for (int tile = 0; tile < 2; ++tile) {
    // magic + z and -(magic / 16 + z) are small integers: exact in fp16 and bf16.
    if constexpr (std::is_same_v<T, fp16>) {
      constants.low_offset[tile] = __float2half2_rn(magic + zeros[tile]);
      constants.high_offset[tile] = __float2half2_rn(-(magic / 16.0f + zeros[tile]));
    } else {
      constants.low_offset[tile] = __float2bfloat162_rn(magic + zeros[tile]);
    }
  }
  return constants;
}

// One lane's word -> its four B registers: b0, b1 of the n8 tile n0 and b0, b1 of n0 + 8.
template <class T>
__device__ inline void dequantize_word(uint32_t word, const GroupConstants<T>& constants,
                                       uint32_t (&b)[4]) {
  using Pair = typename Types<T>::pair;
#pragma unroll
  for (int pair = 0; pair < 4; ++pair) {
    const int tile = pair / 2;
    Pair value;
    if constexpr (std::is_same_v<T, fp16>) {
      // Pairs 0, 1 are nibbles (0, 4), (1, 5); pairs 2, 3 the same after a shift by 8.
      const uint32_t source = pair < 2 ? word : word >> 8;
      if (pair % 2 == 0) {
        // (1024 + v) - (1024 + z) = v - z.
        value = __hsub2(as_pair<Pair>(and_or(source, kLowNibblePairMask, kFp16Magic)),
                        constants.low_offset[tile]);
      } else {
        // (1024 + 16 v) / 16 - (64 + z) = v - z, one fused multiply-add, exact.
        value = __hfma2(as_pair<Pair>(and_or(source, kHighNibblePairMask, kFp16Magic)),
                        __float2half2_rn(1.0f / 16.0f), constants.high_offset[tile]);
      }
    } else {
      // bf16: nibbles (p, p + 4) brought to bits 0 and 16 by a shift of 4p; (128 + v) - (128 + z).
      value = __hsub2(as_pair<Pair>(and_or(word >> (4 * pair), kLowNibblePairMask, kBf16Magic)),
                      constants.low_offset[tile]);
    }
    b[pair] = as_bits(__hmul2(value, constants.scale[tile]));
  }
}

// W4A16 for int4_gemm: fp16 / bf16 X and scales, four k16 steps per warp per stage.
template <class T>
struct Family {
  static_assert(std::is_same_v<T, fp16> || std::is_same_v<T, bf16>, "T is fp16 or bf16");
  using Out = T;
  using Scale = T;
  using X = T;
  using Stage = w4a16::Stage;
  static constexpr int kMinArch = 80;
  static constexpr const char* kNeeds = "the W4A16 kernel (cp.async, ldmatrix, bf16 mma)";
  static void check_shape(const char* function, int64_t n, int64_t k, int64_t group_size) {
    w4a16::check_shape(function, n, k, group_size);
  }

  template <bool kZeroPoints, int kMTiles>
  __device__ static void compute_stage(const int4_gemm::StageView& stage,
                                       float (&accumulators)[kMTiles][2][4]) {
    using Scalar = typename Types<T>::scalar;
    const uint32_t word[kTilesPerSlab] = {stage.words.x, stage.words.y, stage.words.z,
                                          stage.words.w};
    const auto* scales = reinterpret_cast<const Scalar*>(stage.scales);
    const auto* zeros = reinterpret_cast<const Scalar*>(stage.zeros);
#pragma unroll
    for (int tile = 0; tile < kTilesPerSlab; ++tile) {
      const int k_in_stage = stage.warp_k * kSlabK + tile * kTileK;
      const int at = (k_in_stage >> stage.group_shift) * kBlockN + stage.column_in_block;
      const float zero0 = kZeroPoints ? to_float(zeros[at]) : 8.0f;
      const float zero1 = kZeroPoints ? to_float(zeros[at + 8]) : 8.0f;
      const GroupConstants<T> constants =
          group_constants<T>(scales[at], scales[at + 8], zero0, zero1);
      uint32_t b[4];
      dequantize_word<T>(word[tile], constants, b);
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) {
        uint32_t a[4];
        load_matrix_x4(a, stage.x + a_ldmatrix_offset(stage.lane, m * kMTile, k_in_stage));
        mma_16x8x16<T>(accumulators[m][0], a, b[0], b[1]);
        mma_16x8x16<T>(accumulators[m][1], a, b[2], b[3]);
      }
    }
  }
};

}  // namespace w4a16::device

// The plan for Y[M, N] = X[M, K] * W^T on the current device (split-K, workspace size).
template <class T>
w4a16::LaunchPlan plan_gemm_w4a16(const W4A16Weights<T>& w, int64_t m) {
  return int4_gemm::plan<w4a16::device::Family<T>>("plan_gemm_w4a16", w, m, 1, m);
}

// The plan for a grouped GEMM over `tokens` rows, sized for `rows_per_expert_hint` rows per
// expert (for top-k routing of T tokens over E experts: T * k / E).
template <class T>
w4a16::LaunchPlan plan_moe_gemm_w4a16(const W4A16Weights<T>& w, int64_t tokens,
                                      int64_t rows_per_expert_hint) {
  return int4_gemm::plan<w4a16::device::Family<T>>("plan_moe_gemm_w4a16", w, tokens, w.experts,
                                                   rows_per_expert_hint);
}

// Y[M, N] = X[M, K] * dequant(W)^T, all pointers device memory, asynchronous on `stream`. A
// weights tensor with several experts uses expert 0 here.
template <class T>
void gemm_w4a16(const W4A16Weights<T>& w, const T* x, T* y, int64_t m,
                const w4a16::LaunchPlan& plan, void* workspace, int64_t workspace_bytes,
                cudaStream_t stream = nullptr) {
  int4_gemm::run<w4a16::device::Family<T>>("gemm_w4a16", w, x, y, m, nullptr, plan, workspace,
                                           workspace_bytes, 1.0f, nullptr, stream);
}

// Grouped GEMM: rows [offsets[e], offsets[e + 1]) of X (tokens sorted by expert) times expert
// e's weights, for every expert in one launch. `expert_offsets` is device memory, experts + 1
// int32 values, non-decreasing from 0 to at most `tokens` (see w4a16::block_rows_of for what
// other values do: never an access out of bounds).
template <class T>
void moe_gemm_w4a16(const W4A16Weights<T>& w, const T* x, T* y, int64_t tokens,
                    const int32_t* expert_offsets, const w4a16::LaunchPlan& plan, void* workspace,
                    int64_t workspace_bytes, cudaStream_t stream = nullptr) {
  if (expert_offsets == nullptr) {
    detail::fail(ErrorCode::null_pointer, "moe_gemm_w4a16: expert_offsets is null");
  }
  int4_gemm::run<w4a16::device::Family<T>>("moe_gemm_w4a16", w, x, y, tokens, expert_offsets, plan,
                                           workspace, workspace_bytes, 1.0f, nullptr, stream);
}

}  // namespace nibble::cuda
