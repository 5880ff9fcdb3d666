// W4A8's layout and its exact CPU reference: int4 weights expanded to fp8 e4m3 in registers,
// fp8 e4m3 activations, mma.sync.m16n8k32 (sm_89+), fp32 accumulation, output * alpha.
//
// The pipeline (TensorRT-LLM's W4A8-AWQ, trtllm::fold_w4a8 gives its inputs):
//   activations  xq[r, k] = fp8(x[r, k] * c[k] * inverse_scale)       static, per tensor
//                xq[r, k] = fp8(x[r, k] * c[k] / d[r]),               dynamic, per token:
//                           d[r] = max_k |x[r, k] * c[k]| / 448 (1 for an all-zero row)
//                (c: the folded AWQ pre-quant scale, or 1; every product in fp32, fp8 rounding
//                to nearest even, saturating at +-448 as CUDA's __NV_SATFINITE)
//   weights      wq[n, k] = fp8(fp16((q - z) * s[g, n]))  (q - z times the fp16 group scale is
//                exact in fp32, rounded once to fp16, then to fp8: the kernel's half2 multiply
//                and cvt.rn.satfinite.e4m3x2.f16x2)
//   output       y[r, n] = T(float(sum_k xq * wq) * alpha * d[r])      (d = 1 when static)
// NaN in x gives a NaN code whose sign byte may differ between this reference and the device
// (CUDA's conversion writes 0x7F for every NaN); everything else is bit-identical.
// Every fp8 x fp8 product is exact in fp32, so the kernel differs from gemm_w4a8_ref only in how
// it adds them: fp32 additions in another order, and the fp8 tensor core's shorter accumulator
// within one stage (see w4a8.cuh).
//
// Weight words: mma.m16n8k32's B fragment (PTX ISA, 8-bit types) gives lane l (g = l / 4,
// t = l % 4) two registers of four bytes, B[k = 4t + i + 16 j][n = g] in byte i of register j:
// eight weights of one column, i.e. one 32-bit word of nibbles per lane per n8 x k32 tile. The
// nibbles are ordered so that the W4A16 magic-number extraction (pairs of nibbles p, p + 4)
// yields consecutive bytes: element e = i + 4 j sits in nibble e / 2 + 4 (e % 2), and pair p
// converts to bytes 2p, 2p + 1. A lane's 16-byte load holds four words, an n16 x k64 slab:
// word (k % 64) / 32 * 2 + (n % 16) / 8.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "nibble/core/float8.hpp"
#include "nibble/cuda/w4a16_layout.hpp"

namespace nibble::cuda::w4a8 {

using w4a16::kBlockK;
using w4a16::kBlockN;
using w4a16::kMTile;
using w4a16::kStages;
using w4a16::kThreads;
using w4a16::kWarpSize;
using w4a16::LaunchPlan;
using w4a16::NibbleAddress;
using w4a16::RowRange;

inline constexpr int kStepK = 32;  // one mma.m16n8k32

// Where W[n][k] of one expert ([N, K], K a multiple of 64) is: word index and nibble.
NIBBLE_HOST_DEVICE constexpr NibbleAddress nibble_address(int64_t n, int64_t k, int64_t K) {
  const int n_in_slab = static_cast<int>(n % 16);
  const int k_in_slab = static_cast<int>(k % 64);
  const int k_in_step = k_in_slab % kStepK;
  const int lane = (n_in_slab % 8) * 4 + (k_in_step % 16) / 4;
  const int element = k_in_step % 4 + 4 * (k_in_step / 16);
  const int nibble = element / 2 + 4 * (element % 2);
  const int64_t slab = (n / 16) * (K / 64) + k / 64;
  const int64_t word = (slab * kWarpSize + lane) * 4 + (k_in_slab / kStepK) * 2 + n_in_slab / 8;
  return NibbleAddress{word, nibble};
}

// W4A8 takes group sizes whose groups a k32 step never straddles: 32, 64, multiples of 128
// dividing K, or per-channel (16 would put two scales in one fragment).
inline void check_shape(const char* function, int64_t n, int64_t k, int64_t group_size) {
  w4a16::check_shape(function, n, k, group_size);
  if (group_size < kStepK) {
    detail::fail(ErrorCode::unsupported, function, ": group size ", group_size,
                 " (W4A8 needs groups of at least 32: one mma.m16n8k32 step per group)");
  }
}

// Repacked weights: scales (and zero points) are fp16 whatever the activation type, as
// TensorRT-LLM's folded weights_scaling_factor is (trtllm::W4A8Folded).
using PackedWeights = w4a16::PackedWeights<fp16>;

// Canonical [..., N, K] 4-bit weights into the W4A8 layout. `scales`: null to take the tensor's
// own scales (rounded to fp16), or [experts][K / G][N] fp16 values to use instead, e.g.
// trtllm::fold_w4a8's weights_scaling_factor (the canonical tensor's scales are then unused).
template <class ScaleT>
PackedWeights repack(const QuantTensorView<ScaleT>& w, const fp16* scales = nullptr,
                     int64_t scale_count = 0) {
  return w4a16::repack_with<fp16>("w4a8::repack", w, nibble_address, check_shape, scales,
                                  scale_count);
}

// The fp8 weight: fp8(fp16((code - zero) * scale)).
inline fp8_e4m3 fp8_weight(int code, int zero, fp16 scale) {
  const float product = static_cast<float>(code - zero) * to_float(scale);  // exact in fp32
  return to_fp8_e4m3(to_float(from_float<fp16>(product)), Fp8Overflow::saturate);
}

// ---- activation quantization (CPU reference of the activation kernel) ---------------------------
// channel_scale: [K] or null (1); inverse_scale: the static per-tensor multiplier (for
// TensorRT-LLM's folded checkpoint 1, since c = pre / activation_scaling_factor; without AWQ
// smoothing 1 / activation_scaling_factor); dynamic: per-token scales instead (inverse_scale
// unused).
template <class T>
struct ActivationQuant {
  const T* channel_scale = nullptr;
  float inverse_scale = 1.0f;
  bool dynamic = false;
};

template <class T>
void quantize_activations_ref(const T* x, int64_t rows, int64_t k, const ActivationQuant<T>& quant,
                              uint8_t* codes, float* row_scales) {
  std::vector<float> v(static_cast<std::size_t>(k));
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      float value = to_float(x[r * k + i]);
      if (quant.channel_scale != nullptr) value *= to_float(quant.channel_scale[i]);
      v[static_cast<std::size_t>(i)] = value;
      amax = std::fmax(amax, std::fabs(value));
    }
    const float row_scale = !quant.dynamic ? 1.0f : amax > 0.0f ? amax / kFp8E4m3Max : 1.0f;
    if (row_scales != nullptr) row_scales[r] = row_scale;
    for (int64_t i = 0; i < k; ++i) {
      const float value = v[static_cast<std::size_t>(i)];
      const float scaled = quant.dynamic ? value / row_scale : value * quant.inverse_scale;
      codes[r * k + i] = to_fp8_e4m3(scaled, Fp8Overflow::saturate).bits;
    }
  }
}

// ---- the exact CPU reference of the GEMM
// --------------------------------------------------------- y[r, n] for rows [0, rows) of x_codes
// (fp8 [rows, K]) times expert `expert` of the canonical weights with the kernel's fp16 scales
// (PackedWeights::scales layout); sums in double.
template <class T, class ScaleT>
void gemm_w4a8_ref(const QuantTensorView<ScaleT>& w, const std::vector<fp16>& scales,
                   int64_t expert, const uint8_t* x_codes, int64_t rows, const float* row_scales,
                   float alpha, T* y) {
  const int64_t n_out = w.shape()[w.shape().rank() - 2];
  const int64_t k_in = w.k();
  const int64_t n_groups = w.layout().n_groups;
  std::vector<float> weights(static_cast<std::size_t>(n_out * k_in));
  for (int64_t n = 0; n < n_out; ++n) {
    const int64_t row = expert * n_out + n;
    for (int64_t k = 0; k < k_in; ++k) {
      const int64_t group = k / w.layout().group_size;
      const fp16 scale = scales[static_cast<std::size_t>((expert * n_groups + group) * n_out + n)];
      weights[static_cast<std::size_t>(n * k_in + k)] =
          to_float(fp8_weight(w.code(row, k), w.zero_point(row, group), scale));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t n = 0; n < n_out; ++n) {
      double sum = 0.0;
      for (int64_t k = 0; k < k_in; ++k) {
        sum += double{to_float(fp8_e4m3::from_bits(x_codes[r * k_in + k]))} *
               weights[static_cast<std::size_t>(n * k_in + k)];
      }
      const float scale = row_scales == nullptr ? alpha : alpha * row_scales[r];
      y[r * n_out + n] = from_float<T>(static_cast<float>(sum) * scale);
    }
  }
}

// fp8 X (1 byte per value); groups of at least 32 (4 per stage).
using Stage = w4a16::StageLayout<1, kBlockK / kStepK>;

inline std::string config_table() {
  return w4a16::format_config_table("W4A8", w4a16::kConfigs,
                                    [](int m) { return Stage::shared_bytes(m); });
}

}  // namespace nibble::cuda::w4a8
