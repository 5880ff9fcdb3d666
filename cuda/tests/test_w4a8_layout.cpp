// Host tests of W4A8 (no GPU): the repacked words read as the kernel's lanes read them give the
// PTX m16n8k32 B fragments of the canonical weights; fp8 X in shared memory feeds ldmatrix the
// m16n8k32 A fragments; the fp8 rounding of activations; and the whole pipeline's error against
// fp32, for plain weights and for a TensorRT-LLM folded W4A8-AWQ layer (trtllm::fold_w4a8).
//
// Truth for the fragment layouts is the PTX ISA ("Matrix Fragments for mma.m16n8k32", 8-bit
// types), written here independently of w4a8_layout.hpp.
#include "nibble/cuda/w4a8_layout.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "nibble/formats/trtllm.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "support/quant_fixtures.hpp"

namespace nibble::cuda::w4a8 {
namespace {

using testing::expect_error;
using testing::random_tensor;

// PTX, m16n8k32 with 8-bit elements: B (32 x 8): lane l, register j, byte i holds
// B[k = 4 (l % 4) + i + 16 j][n = l / 4]. A (16 x 32): register r, byte i holds
// A[m = l / 4 + 8 (r % 2)][k = 4 (l % 4) + i + 16 (r / 2)].
int b_k(int lane, int element) {
  return 4 * (lane % 4) + element % 4 + 16 * (element / 4);
}
int a_m(int lane, int reg) {
  return lane / 4 + 8 * (reg % 2);
}
int a_k(int lane, int reg, int byte) {
  return 4 * (lane % 4) + byte + 16 * (reg / 2);
}

using testing::int4_config;
using testing::reshaped;

TEST(W4A8Layout, TileReadsGiveCanonicalCodes) {
  struct Case {
    int64_t experts, n, k, group_size;
    bool symmetric;
  };
  for (const Case& c : {Case{1, 64, 128, 32, true}, Case{1, 128, 256, 64, false},
                        Case{2, 64, 384, 128, false}, Case{1, 192, 256, kPerChannel, true}}) {
    const QuantTensor<float> t =
        random_tensor<float>(c.experts * c.n, c.k, int4_config(c.group_size, c.symmetric), 17u);
    const QuantTensorView<float> w =
        reshaped(t, c.experts == 1 ? Shape{c.n, c.k} : Shape{c.experts, c.n, c.k});
    const PackedWeights packed = repack(w);
    std::vector<int> seen(static_cast<std::size_t>(c.experts * c.n * c.k), 0);
    for (int64_t expert = 0; expert < c.experts; ++expert) {
      const auto* bytes = reinterpret_cast<const unsigned char*>(
          packed.words.data() + expert * packed.words_per_expert());
      for (int64_t n_slab = 0; n_slab < c.n / 16; ++n_slab) {
        for (int64_t k_slab = 0; k_slab < c.k / 64; ++k_slab) {
          for (int lane = 0; lane < 32; ++lane) {
            uint32_t words[4];  // the lane's 16-byte load
            std::memcpy(words, bytes + (n_slab * (c.k / 64) + k_slab) * 512 + 16 * lane, 16);
            for (int step = 0; step < 2; ++step) {
              for (int tile = 0; tile < 2; ++tile) {
                int value[8];  // the kernel's decode: value[e] is element e of the fragment
                w4a16::emulate_decode_word<fp16>(words[step * 2 + tile], value);
                for (int e = 0; e < 8; ++e) {
                  const int64_t n = n_slab * 16 + tile * 8 + lane / 4;
                  const int64_t k = k_slab * 64 + step * 32 + b_k(lane, e);
                  const int64_t row = expert * c.n + n;
                  ASSERT_EQ(value[e], w.code(row, k)) << "n " << n << " k " << k;
                  ++seen[static_cast<std::size_t>(row * c.k + k)];
                }
              }
            }
          }
        }
      }
    }
    for (int count : seen)
      ASSERT_EQ(count, 1);
    for (int64_t row = 0; row < c.experts * c.n; ++row) {
      const int64_t n_groups = w.layout().n_groups;
      for (int64_t g = 0; g < n_groups; ++g) {
        const auto at = static_cast<std::size_t>(((row / c.n) * n_groups + g) * c.n + row % c.n);
        EXPECT_EQ(packed.scales[at].bits, from_float<fp16>(w.scale(row, g)).bits);
      }
    }
  }
}

TEST(W4A8Layout, SwizzledFp8XFeedsLdmatrixTheAFragment) {
  constexpr int kRows = 64;
  std::vector<uint8_t> x(static_cast<std::size_t>(kRows * Stage::kXRowBytes));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = static_cast<uint8_t>(i * 7 + i / 256);
  std::vector<unsigned char> shared(static_cast<std::size_t>(Stage::x_bytes(4)));
  for (int row = 0; row < kRows; ++row) {
    for (int chunk = 0; chunk < Stage::kXChunksPerRow; ++chunk) {
      std::memcpy(shared.data() + w4a16::x_chunk_offset<Stage::kXRowBytes>(row, chunk),
                  x.data() + row * Stage::kXRowBytes + chunk * 16, 16);
    }
  }
  for (int m0 = 0; m0 < kRows; m0 += 16) {
    for (int k = 0; k < Stage::kXRowBytes; k += kStepK) {
      uint8_t matrix[4][8][16];  // ldmatrix: 4 matrices of 8 rows x 16 bytes
      for (int i = 0; i < 4; ++i) {
        std::set<int> bank_groups;
        for (int r = 0; r < 8; ++r) {
          const int offset = w4a16::a_ldmatrix_offset<Stage::kXRowBytes, 1>(8 * i + r, m0, k);
          std::memcpy(matrix[i][r], shared.data() + offset, 16);
          bank_groups.insert((offset / 16) % 8);
        }
        EXPECT_EQ(bank_groups.size(), 8u) << "bank conflicts in phase " << i;
      }
      for (int lane = 0; lane < 32; ++lane) {
        for (int reg = 0; reg < 4; ++reg) {
          for (int byte = 0; byte < 4; ++byte) {
            // ldmatrix: lane l gets 16-bit columns 2 (l % 4), + 1 of row l / 4: bytes 4 (l % 4) +
            // i.
            const uint8_t got = matrix[reg][lane / 4][4 * (lane % 4) + byte];
            const int m = m0 + a_m(lane, reg);
            ASSERT_EQ(got,
                      x[static_cast<std::size_t>(m * Stage::kXRowBytes + k + a_k(lane, reg, byte))])
                << "lane " << lane << " reg " << reg << " byte " << byte;
          }
        }
      }
    }
  }
}

// fp8 e4m3 near 1 has spacing 1/8: 1.0625 is a tie between 1 and 1.125 (even mantissa: 1),
// 1.1875 between 1.125 and 1.25 (even: 1.25); past 448 saturates (CUDA __NV_SATFINITE).
TEST(W4A8Layout, ActivationsRoundToNearestEvenAndSaturate) {
  const std::vector<float> inputs = {1.0625f, 1.1875f, -1.0625f, 500.0f, -1e6f, 0.0f, 449.0f};
  const std::vector<float> expected = {1.0f, 1.25f, -1.0f, 448.0f, -448.0f, 0.0f, 448.0f};
  std::vector<bf16> x;
  for (float v : inputs)
    x.push_back(from_float<bf16>(v));  // all exact in bf16 except -1e6
  std::vector<uint8_t> codes(x.size());
  ActivationQuant<bf16> quant;
  quantize_activations_ref(x.data(), 1, static_cast<int64_t>(x.size()), quant, codes.data(),
                           nullptr);
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(to_float(fp8_e4m3::from_bits(codes[i])), expected[i]) << inputs[i];
  }
}

// Dynamic per-token: d = amax / 448, so the largest magnitude lands on +-448 and x = d * code.
TEST(W4A8Layout, DynamicScalesMapTheRowMaximumTo448) {
  std::mt19937 random(4);
  std::normal_distribution<float> value(0.0f, 3.0f);
  const int64_t rows = 5;
  const int64_t k = 64;
  std::vector<fp16> x(static_cast<std::size_t>(rows * k));
  for (fp16& v : x)
    v = from_float<fp16>(value(random));
  for (int64_t i = 0; i < k; ++i)
    x[static_cast<std::size_t>(3 * k + i)] = from_float<fp16>(0.0f);
  std::vector<fp16> channel(static_cast<std::size_t>(k));
  for (int64_t i = 0; i < k; ++i)
    channel[static_cast<std::size_t>(i)] = from_float<fp16>(0.5f + 0.01f * static_cast<float>(i));
  ActivationQuant<fp16> quant;
  quant.dynamic = true;
  quant.channel_scale = channel.data();
  std::vector<uint8_t> codes(x.size());
  std::vector<float> scales(static_cast<std::size_t>(rows));
  quantize_activations_ref(x.data(), rows, k, quant, codes.data(), scales.data());
  EXPECT_EQ(scales[3], 1.0f) << "an all-zero row keeps scale 1";
  for (int64_t r = 0; r < rows; ++r) {
    float largest = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      const float code = to_float(fp8_e4m3::from_bits(codes[static_cast<std::size_t>(r * k + i)]));
      largest = std::max(largest, std::fabs(code));
      const float smoothed = to_float(x[static_cast<std::size_t>(r * k + i)]) *
                             to_float(channel[static_cast<std::size_t>(i)]);
      // fp8 keeps 4 significant bits: within 2^-4 relative, or 2^-10 absolute (subnormals).
      EXPECT_NEAR(code * scales[static_cast<std::size_t>(r)], smoothed,
                  std::fabs(smoothed) / 16.0f + scales[static_cast<std::size_t>(r)] / 1024.0f);
    }
    if (r != 3) {
      EXPECT_EQ(largest, 448.0f) << "row " << r;
    }
  }
}

float relative_frobenius(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0.0;
  double den = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    num += (double{got[i]} - want[i]) * (double{got[i]} - want[i]);
    den += double{want[i]} * want[i];
  }
  return static_cast<float>(std::sqrt(num / den));
}

// The fp8 pipeline's error against the fp32 GEMM on the same int4 weights: each fp8 operand
// rounds to 4 significant bits (relative 2^-4 at worst, about 3.6% RMS), so the dot products
// stay within about 5% (RMS over the output). Bound: 8%.
constexpr float kPipelineRelativeError = 0.08f;

TEST(W4A8Layout, PipelineErrorAgainstFp32) {
  const int64_t m = 8;
  const int64_t n = 64;
  const int64_t k = 512;
  for (bool symmetric : {true, false}) {
    const QuantTensor<float> t = random_tensor<float>(n, k, int4_config(128, symmetric), 23u);
    std::mt19937 random(6);
    std::normal_distribution<float> value(0.0f, 1.0f);
    std::vector<bf16> x(static_cast<std::size_t>(m * k));
    for (bf16& v : x)
      v = from_float<bf16>(value(random));
    std::vector<float> x_float(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
      x_float[i] = to_float(x[i]);
    std::vector<float> exact(static_cast<std::size_t>(m * n));
    gemm_ref(t.view(), TensorView<const float>(x_float.data(), Shape{m, k}),
             TensorView<float>(exact.data(), Shape{m, n}));
    // Dynamic per-token activations; weights with their own scales (alpha 1).
    std::vector<uint8_t> codes(x.size());
    std::vector<float> row_scales(static_cast<std::size_t>(m));
    ActivationQuant<bf16> quant;
    quant.dynamic = true;
    quantize_activations_ref(x.data(), m, k, quant, codes.data(), row_scales.data());
    const PackedWeights packed = repack(t.view());
    std::vector<bf16> y(static_cast<std::size_t>(m * n));
    gemm_w4a8_ref(t.view(), packed.scales, 0, codes.data(), m, row_scales.data(), 1.0f, y.data());
    std::vector<float> y_float(y.size());
    for (std::size_t i = 0; i < y.size(); ++i)
      y_float[i] = to_float(y[i]);
    const float error = relative_frobenius(y_float, exact);
    std::printf("W4A8 pipeline vs fp32 (%s, g128, dynamic per-token fp8): relative error %.4f\n",
                symmetric ? "symmetric" : "asymmetric", error);
    EXPECT_LT(error, kPipelineRelativeError);
    EXPECT_GT(error, 0.0f);
  }
}

// TensorRT-LLM's W4A8-AWQ flow on the host: ModelOpt scales (wsf float, wsf2 = amax(w) / 448,
// act = amax(x * pre) / 448, pre = AWQ smoothing) folded by trtllm::fold_w4a8, activations
// quantized with the folded pre-quant scale, output times alpha: the fp32 product of the
// smoothed activations and the original weights, within the pipeline's bound.
TEST(W4A8Layout, FoldedTensorRtLlmLayerMatchesTheUnfoldedProduct) {
  const int64_t m = 4;
  const int64_t n = 128;
  const int64_t k = 256;
  const QuantTensor<float> t = random_tensor<float>(n, k, int4_config(128, true), 31u);
  std::vector<float> dequantized(static_cast<std::size_t>(n * k));
  dequantize_ref(t.view(), TensorView<float>(dequantized.data(), Shape{n, k}));
  float w_amax = 0.0f;
  for (float v : dequantized)
    w_amax = std::max(w_amax, std::fabs(v));
  std::mt19937 random(8);
  std::normal_distribution<float> value(0.0f, 2.0f);
  std::uniform_real_distribution<float> smoothing(0.5f, 2.0f);
  std::vector<fp16> x(static_cast<std::size_t>(m * k));
  for (fp16& v : x)
    v = from_float<fp16>(value(random));
  std::vector<fp16> pre(static_cast<std::size_t>(k));
  for (fp16& v : pre)
    v = from_float<fp16>(smoothing(random));
  float x_amax = 0.0f;
  std::vector<float> smoothed(x.size());
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t i = 0; i < k; ++i) {
      const auto at = static_cast<std::size_t>(r * k + i);
      smoothed[at] = to_float(x[at]) * to_float(pre[static_cast<std::size_t>(i)]);
      x_amax = std::max(x_amax, std::fabs(smoothed[at]));
    }
  }
  trtllm::W4A8ScalesView<fp16> scales_in;
  scales_in.layout.out_features = n;
  scales_in.layout.in_features = k;
  scales_in.layout.block_size = 128;
  scales_in.weights_scaling_factor = t.scales().data();
  scales_in.scale_count = static_cast<int64_t>(t.scales().size());
  scales_in.weights_scaling_factor_2 = w_amax / 448.0f;
  scales_in.activation_scaling_factor = x_amax / 448.0f;
  scales_in.prequant_scaling_factor = pre.data();
  scales_in.prequant_count = k;
  const trtllm::W4A8Folded<fp16> folded = trtllm::fold_w4a8(scales_in);
  const PackedWeights packed = repack(t.view(), folded.weights_scaling_factor.data(),
                                      static_cast<int64_t>(folded.weights_scaling_factor.size()));
  ActivationQuant<fp16> quant;
  quant.channel_scale = folded.prequant_scaling_factor.data();  // pre / act: inverse scale 1
  std::vector<uint8_t> codes(x.size());
  quantize_activations_ref(x.data(), m, k, quant, codes.data(), nullptr);
  std::vector<fp16> y(static_cast<std::size_t>(m * n));
  gemm_w4a8_ref(t.view(), packed.scales, 0, codes.data(), m, nullptr, folded.alpha, y.data());
  std::vector<float> exact(static_cast<std::size_t>(m * n));
  gemm_ref(t.view(), TensorView<const float>(smoothed.data(), Shape{m, k}),
           TensorView<float>(exact.data(), Shape{m, n}));
  std::vector<float> y_float(y.size());
  for (std::size_t i = 0; i < y.size(); ++i)
    y_float[i] = to_float(y[i]);
  const float error = relative_frobenius(y_float, exact);
  std::printf("W4A8 folded TensorRT-LLM layer vs fp32: relative error %.4f\n", error);
  EXPECT_LT(error, kPipelineRelativeError);
  // A wrong alpha (act only, as if wsf2 were forgotten) is far outside.
  std::vector<fp16> wrong(y.size());
  gemm_w4a8_ref(t.view(), packed.scales, 0, codes.data(), m, nullptr,
                scales_in.activation_scaling_factor, wrong.data());
  std::vector<float> wrong_float(wrong.size());
  for (std::size_t i = 0; i < wrong.size(); ++i)
    wrong_float[i] = to_float(wrong[i]);
  EXPECT_GT(relative_frobenius(wrong_float, exact), 0.5f);
}

TEST(W4A8Layout, ClearErrors) {
  expect_error([] { check_shape("f", 64, 128, 16); }, ErrorCode::unsupported,
               {"group size 16", "at least 32"});
  const QuantTensor<float> t = random_tensor<float>(64, 128, int4_config(32, true), 1u);
  std::vector<fp16> too_few(3);
  expect_error([&] { repack(t.view(), too_few.data(), 3); }, ErrorCode::shape_mismatch,
               {"3 scales", "256"});
  const QuantTensor<float> eight = random_tensor<float>(64, 128, QuantConfig{8, 32, true}, 1u);
  expect_error([&] { repack(eight.view()); }, ErrorCode::unsupported, {"8-bit"});
}

}  // namespace
}  // namespace nibble::cuda::w4a8
