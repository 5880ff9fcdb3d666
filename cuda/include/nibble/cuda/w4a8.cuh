// W4A8 on NVIDIA tensor cores (sm_89 and newer: Ada, Hopper): fp8 e4m3 activations, int4 weights
// expanded to fp8 in registers, mma.sync.m16n8k32 e4m3, fp32 accumulation, output * alpha.
//
//   quantize_activations_fp8   x (fp16 / bf16) -> fp8 e4m3, a static per-tensor scale or dynamic
//                              per-token scales, optionally AWQ's per-channel pre-quant scale fused
//   gemm_w4a8                  Y[M, N] = T(alpha * d[r] * X8[M, K] * W8[N, K]^T)
//   moe_gemm_w4a8              the same over [E, N, K] weights, tokens sorted by expert
//
// The arithmetic, and the CPU reference each kernel is checked against element by element, are
// in w4a8_layout.hpp. The block structure (pipeline, K-warp reduction, split-K, MoE rows) is
// detail/int4_gemm.cuh's, shared with W4A16; W4A8's own part: each lane turns its words into fp8
// B fragments (the W4A16 fp16 magic-number decode, one half2 multiply by the scale,
// cvt.rn.satfinite.e4m3x2.f16x2) and issues mma.m16n8k32 on X fragments loaded with ldmatrix.
//
// Accumulation: Ada's and Hopper's fp8 tensor cores are reported (SageAttention2; DeepSeek-V3
// for Hopper) to keep only about 13-14 mantissa bits of the accumulator they add into. So each
// stage's two k32 steps accumulate into zeroed registers, which are then added to the fp32
// accumulators with ordinary fp32 adds: the tensor core's short accumulation spans 64 values of
// K, never the whole dot product.
#pragma once

#include <cuda_fp8.h>

#include <cmath>

#include "nibble/cuda/detail/int4_gemm.cuh"
#include "nibble/cuda/w4a16.cuh"
#include "nibble/cuda/w4a8_layout.hpp"

namespace nibble::cuda {

// Device-resident W4A8 weights: fp16 scales and zero points (w4a8::PackedWeights uploaded).
using W4A8Weights = Int4Weights<fp16>;

namespace w4a8::device {

using namespace ptx;  // NOLINT: written in these building blocks

// C += A * B for one m16n8k32 tile of fp8 e4m3, fp32 accumulators. Only sm_89+ has the
// instruction; the host never launches a W4A8 GEMM on an older device.
__device__ inline void mma_16x8x32_e4m3(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  __trap();
#else
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two fp16 values (low half first) -> two fp8 e4m3 bytes (low byte first), round to nearest
// even, saturating at +-448.
__device__ inline uint32_t fp8x2_from_half2(uint32_t half2_bits) {
  __half2_raw raw;
  memcpy(&raw, &half2_bits, sizeof(raw));
  return __nv_cvt_halfraw2_to_fp8x2(raw, __NV_SATFINITE, __NV_E4M3);
}

// A lane's word -> its two B registers of one n8 x k32 tile. The W4A16 fp16 decode gives four
// half2 of (q - z) * s, pair p holding elements 2p and 2p + 1 (see w4a8_layout.hpp); converted,
// pairs 0, 1 are register 0 (elements 0-3) and pairs 2, 3 register 1 (elements 4-7).
__device__ inline void fp8_fragment(uint32_t word, const w4a16::device::GroupConstants<fp16>& c,
                                    uint32_t (&b)[2]) {
  uint32_t halves[4];
  w4a16::device::dequantize_word<fp16>(word, c, halves);
  b[0] = fp8x2_from_half2(halves[0]) | (fp8x2_from_half2(halves[1]) << 16);
  b[1] = fp8x2_from_half2(halves[2]) | (fp8x2_from_half2(halves[3]) << 16);
}

// W4A8 for int4_gemm: fp8 X, fp16 scales, two k32 steps per warp per stage.
template <class T>
struct Family {
  static_assert(std::is_same_v<T, fp16> || std::is_same_v<T, bf16>, "T is fp16 or bf16");
  using Out = T;
  using Scale = fp16;
  using X = uint8_t;
  using Stage = w4a8::Stage;
  static constexpr int kMinArch = 89;
  static constexpr const char* kNeeds = "the W4A8 GEMM (mma.m16n8k32 e4m3)";
  static void check_shape(const char* function, int64_t n, int64_t k, int64_t group_size) {
    w4a8::check_shape(function, n, k, group_size);
  }

  template <bool kZeroPoints, int kMTiles>
  __device__ static void compute_stage(const int4_gemm::StageView& stage,
                                       float (&accumulators)[kMTiles][2][4]) {
    const uint32_t word[4] = {stage.words.x, stage.words.y, stage.words.z, stage.words.w};
    const auto* scales = reinterpret_cast<const __half*>(stage.scales);
    const auto* zeros = reinterpret_cast<const __half*>(stage.zeros);
    float partial[kMTiles][2][4] = {};  // this stage's sums (see the header: accumulation)
#pragma unroll
    for (int step = 0; step < 2; ++step) {
      const int k_in_stage = stage.warp_k * w4a16::kSlabK + step * kStepK;
      const int group_row = (k_in_stage >> stage.group_shift) * kBlockN;
      uint32_t b[2][2];
#pragma unroll
      for (int tile = 0; tile < 2; ++tile) {
        // All eight weights of a word are one column: one scale and zero point for the word.
        const int at = group_row + stage.column_in_block + 8 * tile;
        const float zero = kZeroPoints ? __half2float(zeros[at]) : 8.0f;
        const auto constants =
            w4a16::device::group_constants<fp16>(scales[at], scales[at], zero, zero);
        fp8_fragment(word[step * 2 + tile], constants, b[tile]);
      }
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) {
        uint32_t a[4];
        load_matrix_x4(a, stage.x + w4a16::a_ldmatrix_offset<Stage::kXRowBytes, 1>(
                                        stage.lane, m * kMTile, k_in_stage));
        mma_16x8x32_e4m3(partial[m][0], a, b[0][0], b[0][1]);
        mma_16x8x32_e4m3(partial[m][1], a, b[1][0], b[1][1]);
      }
    }
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
      for (int tile = 0; tile < 2; ++tile) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
          accumulators[m][tile][i] += partial[m][tile][i];
      }
    }
  }
};

// One block per row; 8 values per thread per step (one 16-byte load, one 8-byte store).
template <class T>
__global__ void __launch_bounds__(256)
    quantize_activations_kernel(const T* x, int64_t k, const T* channel_scale, float inverse_scale,
                                bool dynamic, uint8_t* codes, float* row_scales) {
  using Scalar = typename Types<T>::scalar;
  const int64_t row = blockIdx.x;
  const auto* in = reinterpret_cast<const Scalar*>(x + row * k);
  const auto* channel = reinterpret_cast<const Scalar*>(channel_scale);
  const auto load8 = [&](int64_t i, float(&v)[8]) {
    const uint4 raw = *reinterpret_cast<const uint4*>(in + i);
    Scalar values[8];
    memcpy(values, &raw, sizeof(raw));
    Scalar factors[8];
    if (channel != nullptr) {
      const uint4 raw_factors = *reinterpret_cast<const uint4*>(channel + i);
      memcpy(factors, &raw_factors, sizeof(raw_factors));
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      v[j] = to_float(values[j]);
      if (channel != nullptr) v[j] = __fmul_rn(v[j], to_float(factors[j]));
    }
  };
  float row_scale = 1.0f;
  if (dynamic) {
    float amax = 0.0f;
    for (int64_t i = threadIdx.x * 8; i < k; i += 256 * 8) {
      float v[8];
      load8(i, v);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        amax = fmaxf(amax, fabsf(v[j]));
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, offset));
    }
    __shared__ float warp_amax[8];
    if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
    __syncthreads();
    amax = warp_amax[0];
    for (int w = 1; w < 8; ++w)
      amax = fmaxf(amax, warp_amax[w]);
    row_scale = amax > 0.0f ? __fdiv_rn(amax, kFp8E4m3Max) : 1.0f;
  }
  if (row_scales != nullptr && threadIdx.x == 0) row_scales[row] = row_scale;
  for (int64_t i = threadIdx.x * 8; i < k; i += 256 * 8) {
    float v[8];
    load8(i, v);
    uint32_t packed[2] = {0u, 0u};
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
      float2 pair;
      pair.x = dynamic ? __fdiv_rn(v[j], row_scale) : __fmul_rn(v[j], inverse_scale);
      pair.y = dynamic ? __fdiv_rn(v[j + 1], row_scale) : __fmul_rn(v[j + 1], inverse_scale);
      const uint32_t bytes = __nv_cvt_float2_to_fp8x2(pair, __NV_SATFINITE, __NV_E4M3);
      packed[j / 4] |= bytes << (16 * ((j / 2) % 2));
    }
    *reinterpret_cast<uint2*>(codes + row * k + i) = make_uint2(packed[0], packed[1]);
  }
}

}  // namespace w4a8::device

// x [rows, K] (fp16 / bf16, device) -> codes [rows, K] fp8 e4m3 (device), and with
// quant.dynamic the per-token scales [rows] (device; also written, as 1, when static and given).
// K % 8 == 0; x, codes and the channel scale 16-byte aligned.
template <class T>
void quantize_activations_fp8(const T* x, int64_t rows, int64_t k,
                              const w4a8::ActivationQuant<T>& quant, uint8_t* codes,
                              float* row_scales, cudaStream_t stream = nullptr) {
  static_assert(std::is_same_v<T, fp16> || std::is_same_v<T, bf16>, "T is fp16 or bf16");
  const char* function = "quantize_activations_fp8";
  if (rows < 1 || rows > 0x7FFFFFFF || k < 8 || k % 8 != 0) {
    detail::fail(ErrorCode::shape_mismatch, function, ": rows = ", rows, ", K = ", k,
                 " (expected 1 <= rows < 2^31 and K a multiple of 8)");
  }
  if (x == nullptr || codes == nullptr) {
    detail::fail(ErrorCode::null_pointer, function, ": x or codes is null");
  }
  if (quant.dynamic && row_scales == nullptr) {
    detail::fail(ErrorCode::null_pointer, function,
                 ": dynamic per-token quantization needs row_scales (one float per row)");
  }
  if (!quant.dynamic && !(std::isfinite(quant.inverse_scale) && quant.inverse_scale > 0.0f)) {
    detail::fail(ErrorCode::invalid_argument, function, ": inverse_scale = ", quant.inverse_scale,
                 " (expected a finite value > 0: 1 / activation_scaling_factor)");
  }
  check_aligned(function, x, "x");
  check_aligned(function, codes, "codes");
  if (quant.channel_scale != nullptr) check_aligned(function, quant.channel_scale, "channel_scale");
  require_device(function, 80, "the activation quantization kernel");
  w4a8::device::quantize_activations_kernel<T><<<static_cast<unsigned>(rows), 256, 0, stream>>>(
      x, k, quant.channel_scale, quant.inverse_scale, quant.dynamic, codes, row_scales);
  check_cuda(cudaGetLastError(), function, "the activation quantization launch");
}

inline w4a16::LaunchPlan plan_gemm_w4a8(const W4A8Weights& w, int64_t m) {
  return int4_gemm::plan<w4a8::device::Family<fp16>>("plan_gemm_w4a8", w, m, 1, m);
}

inline w4a16::LaunchPlan plan_moe_gemm_w4a8(const W4A8Weights& w, int64_t tokens,
                                            int64_t rows_per_expert_hint) {
  return int4_gemm::plan<w4a8::device::Family<fp16>>("plan_moe_gemm_w4a8", w, tokens, w.experts,
                                                     rows_per_expert_hint);
}

// Y = T(alpha * row_scale * X8 * W8^T). x: fp8 e4m3 codes [M, K] (quantize_activations_fp8);
// row_scales: its per-token scales, or null for a static per-tensor scale (folded into alpha).
template <class T>
void gemm_w4a8(const W4A8Weights& w, const uint8_t* x, const float* row_scales, float alpha, T* y,
               int64_t m, const w4a16::LaunchPlan& plan, void* workspace, int64_t workspace_bytes,
               cudaStream_t stream = nullptr) {
  int4_gemm::run<w4a8::device::Family<T>>("gemm_w4a8", w, x, y, m, nullptr, plan, workspace,
                                          workspace_bytes, alpha, row_scales, stream);
}

// Grouped W4A8 over [E, N, K] weights, tokens sorted by expert (expert_offsets as for
// moe_gemm_w4a16), one launch.
template <class T>
void moe_gemm_w4a8(const W4A8Weights& w, const uint8_t* x, const float* row_scales, float alpha,
                   T* y, int64_t tokens, const int32_t* expert_offsets,
                   const w4a16::LaunchPlan& plan, void* workspace, int64_t workspace_bytes,
                   cudaStream_t stream = nullptr) {
  if (expert_offsets == nullptr) {
    detail::fail(ErrorCode::null_pointer, "moe_gemm_w4a8: expert_offsets is null");
  }
  int4_gemm::run<w4a8::device::Family<T>>("moe_gemm_w4a8", w, x, y, tokens, expert_offsets, plan,
                                          workspace, workspace_bytes, alpha, row_scales, stream);
}

}  // namespace nibble::cuda
