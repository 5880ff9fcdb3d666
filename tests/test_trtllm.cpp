// TensorRT-LLM W4A16 / W4A8 (formats/trtllm.hpp).
//
// Independent truths:
//   - ModelOpt's published packing (quant_utils.py pack_int4_in_uint8): q = code - 8 in -8 .. 7,
//     byte (i, k) = (q[2i, k] & 0xF) | (q[2i + 1, k] & 0xF) << 4, scales [N, K / G] float32;
//   - TensorRT-LLM's published preprocessing steps (cutlass_preprocessors.cpp: the LDSM row maps,
//     subbyte_transpose, interleave_column_major_tensor's index formula, the +8 bias and the
//     [0,2,4,6,1,3,5,7] register order), from which the bytes below are derived by hand, and a
//     closed form of the whole pipeline derived from the same steps;
//   - TensorRT-LLM's W4A8 folding (modeling_utils.py preprocess_perlayer_weights), and an error
//     bound for the folded FP8 GEMM derived below from FP8's unit roundoff.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "nibble/core/float8.hpp"
#include "nibble/formats/trtllm.hpp"
#include "nibble/quantizer.hpp"

namespace {

using nibble::bf16;
using nibble::ConventionId;
using nibble::Error;
using nibble::ErrorCode;
using nibble::fp16;
using nibble::QuantConfig;
using nibble::QuantTensor;
using nibble::Shape;
namespace trtllm = nibble::trtllm;
using trtllm::GemmArch;
using trtllm::QuantType;

template <class F>
std::string error_message_of(F&& call, ErrorCode expected) {
  try {
    call();
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), expected) << error.what();
    return error.what();
  }
  ADD_FAILURE() << "expected nibble::Error";
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A canonical symmetric 4-bit tensor with code(matrix_row, k) and scale(matrix_row, g).
template <class ScaleT>
QuantTensor<ScaleT> make_tensor(std::vector<int64_t> dims, int64_t group_size,
                                const std::function<int(int64_t, int64_t)>& code,
                                const std::function<float(int64_t, int64_t)>& scale) {
  QuantTensor<ScaleT> t(Shape(dims), QuantConfig{4, group_size, true, ConventionId::olive});
  const nibble::RowLayout& layout = t.layout();
  std::vector<uint8_t> codes(static_cast<std::size_t>(layout.k));
  for (int64_t row = 0; row < t.rows(); ++row) {
    for (int64_t col = 0; col < layout.k; ++col)
      codes[static_cast<std::size_t>(col)] = static_cast<uint8_t>(code(row, col));
    nibble::BitPacking<4>::pack_row(codes.data(), layout.k,
                                    t.qweight().data() + row * layout.packed_row_bytes);
    for (int64_t g = 0; g < layout.n_groups; ++g)
      t.scales()[static_cast<std::size_t>(row * layout.n_groups + g)] =
          nibble::from_float<ScaleT>(scale(row, g));
  }
  return t;
}

template <class ScaleT>
QuantTensor<ScaleT> random_tensor(std::vector<int64_t> dims, int64_t group_size, uint32_t seed) {
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> code_dist(0, 15);
  std::uniform_real_distribution<float> scale_dist(0.001f, 0.1f);
  return make_tensor<ScaleT>(
      dims, group_size, [&](int64_t, int64_t) { return code_dist(random); },
      [&](int64_t, int64_t) { return scale_dist(random); });
}

template <class ScaleT>
void expect_same_tensor(const QuantTensor<ScaleT>& a, const QuantTensor<ScaleT>& b) {
  EXPECT_EQ(a.shape(), b.shape());
  EXPECT_EQ(a.config(), b.config());
  EXPECT_EQ(a.qweight(), b.qweight());
  ASSERT_EQ(a.scales().size(), b.scales().size());
  for (std::size_t i = 0; i < a.scales().size(); ++i)
    EXPECT_EQ(nibble::detail::float_bits(nibble::to_float(a.scales()[i])),
              nibble::detail::float_bits(nibble::to_float(b.scales()[i])))
        << i;
}

// ================================ (a) ModelOpt checkpoint ========================================

TEST(TrtllmModelOpt, HandDerivedBytes_N4xK4) {
  // u(n, k) = (4n + k) % 16; q = u - 8; nibble = q & 0xF = u ^ 8.
  //   byte (0, 0): outputs 0, 1 at k = 0: u 0, 4 -> nibbles 8, C -> 0xC8
  //   byte (0, 1): u 1, 5 -> 9, D -> 0xD9;  byte (0, 3): u 3, 7 -> B, F -> 0xFB
  //   byte (1, 0): outputs 2, 3: u 8, 12 -> 0, 4 -> 0x40;  byte (1, 3): u 11, 15 -> 3, 7 -> 0x73
  const auto t = make_tensor<float>(
      {4, 4}, 2, [](int64_t n, int64_t k) { return static_cast<int>((4 * n + k) % 16); },
      [](int64_t n, int64_t g) { return 0.25f * static_cast<float>(1 + 2 * n + g); });
  const trtllm::Int4Checkpoint c = trtllm::to_modelopt(t.view());
  EXPECT_EQ(c.layout.weight_shape(), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(c.layout.scale_shape(), (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(c.weight, (std::vector<uint8_t>{0xC8, 0xD9, 0xEA, 0xFB, 0x40, 0x51, 0x62, 0x73}));
  EXPECT_EQ(c.weights_scaling_factor,
            (std::vector<float>{0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f}));
  // The preprocessor's input is the byte transpose [K, N / 2]: row k = bytes (0, k), (1, k).
  EXPECT_EQ(trtllm::mixed_gemm_input(c.view()),
            (std::vector<uint8_t>{0xC8, 0x40, 0xD9, 0x51, 0xEA, 0x62, 0xFB, 0x73}));
  // Dequantization from the checkpoint's own formula w = q * s equals nibble's.
  const std::vector<float> w_hat = nibble::dequantize(t);
  for (int64_t n = 0; n < 4; ++n) {
    for (int64_t k = 0; k < 4; ++k) {
      const int nibble =
          (c.weight[static_cast<std::size_t>((n / 2) * 4 + k)] >> (4 * (n % 2))) & 15;
      const int q = nibble >= 8 ? nibble - 16 : nibble;
      EXPECT_EQ(
          static_cast<float>(q) * c.weights_scaling_factor[static_cast<std::size_t>(n * 2 + k / 2)],
          w_hat[static_cast<std::size_t>(n * 4 + k)]);
    }
  }
}

template <class ScaleT>
void round_trip_canonical(std::vector<int64_t> dims, int64_t group, uint32_t seed) {
  const auto t = random_tensor<ScaleT>(dims, group, seed);
  const trtllm::Int4Checkpoint c = trtllm::to_modelopt(t.view());
  const auto back = trtllm::from_modelopt<ScaleT>(c.view());
  expect_same_tensor(t, back);
}

TEST(TrtllmModelOpt, CanonicalRoundTripsByteExact) {
  round_trip_canonical<float>({6, 40}, 8, 1);
  round_trip_canonical<fp16>({6, 40}, 40, 2);
  round_trip_canonical<bf16>({2, 3}, 3, 3);       // odd K: the canonical pad nibble stays 0
  round_trip_canonical<fp16>({3, 4, 64}, 32, 4);  // MoE experts [E, N, K]
  round_trip_canonical<float>({64, 256}, 128, 5);
  // per-channel (group_size -1 = K) exports block_size K and imports as group_size K.
  const auto t = random_tensor<float>({4, 16}, nibble::kPerChannel, 6);
  const trtllm::Int4Checkpoint c = trtllm::to_modelopt(t.view());
  EXPECT_EQ(c.layout.block_size, 16);
  const auto back = trtllm::from_modelopt<float>(c.view());
  EXPECT_EQ(back.qweight(), t.qweight());
  EXPECT_EQ(back.scales(), t.scales());
}

TEST(TrtllmModelOpt, CheckpointRoundTripsByteExact) {
  std::mt19937 random(11);
  trtllm::Int4Checkpoint c;
  c.layout = trtllm::Int4Layout{{2}, 10, 24, 8};
  c.weight.resize(static_cast<std::size_t>(c.layout.weight_bytes()));
  for (uint8_t& byte : c.weight)
    byte = static_cast<uint8_t>(random() & 0xFF);
  std::uniform_real_distribution<float> scale(0.0f, 3.0f);
  c.weights_scaling_factor.resize(static_cast<std::size_t>(c.layout.scale_count()));
  for (float& s : c.weights_scaling_factor)
    s = scale(random);
  const auto canonical = trtllm::from_modelopt<float>(c.view());
  EXPECT_EQ(canonical.shape(), (Shape{2, 10, 24}));
  const trtllm::Int4Checkpoint back = trtllm::to_modelopt(canonical.view());
  EXPECT_EQ(back.weight, c.weight);
  EXPECT_EQ(back.weights_scaling_factor, c.weights_scaling_factor);
  EXPECT_EQ(back.layout.weight_shape(), c.layout.weight_shape());
}

TEST(TrtllmModelOpt, RefusesWhatTheFormatCannotHold) {
  const auto fine = random_tensor<float>({4, 16}, 8, 1);
  {
    nibble::WeightQuantizer<4, float> asym(8, false, ConventionId::olive);
    const std::vector<float> w(64, 0.5f);
    const auto q = asym.quantize(nibble::TensorView<const float>(w.data(), {4, 16}));
    EXPECT_TRUE(
        contains(error_message_of([&] { trtllm::to_modelopt(q.view()); }, ErrorCode::unsupported),
                 "expected a symmetric 4-bit tensor"));
  }
  {
    nibble::WeightQuantizer<8, float> eight(8, true, ConventionId::olive);
    const std::vector<float> w(64, 0.5f);
    const auto q = eight.quantize(nibble::TensorView<const float>(w.data(), {4, 16}));
    EXPECT_TRUE(
        contains(error_message_of([&] { trtllm::to_modelopt(q.view()); }, ErrorCode::unsupported),
                 "expected 4"));
  }
  const auto partial = random_tensor<float>({4, 10}, 4, 2);  // K = 10, G = 4: a partial block
  EXPECT_TRUE(contains(
      error_message_of([&] { trtllm::to_modelopt(partial.view()); }, ErrorCode::unsupported),
      "K % block_size == 0"));
  const auto odd = random_tensor<float>({3, 16}, 8, 3);
  EXPECT_TRUE(
      contains(error_message_of([&] { trtllm::to_modelopt(odd.view()); }, ErrorCode::unsupported),
               "expected an even N"));
  auto negative = random_tensor<float>({4, 16}, 8, 4);
  negative.scales()[3] = -0.5f;
  EXPECT_TRUE(contains(
      error_message_of([&] { trtllm::to_modelopt(negative.view()); }, ErrorCode::unsupported),
      "expected a finite scale >= 0"));
  // A float32 scale fp16 cannot hold: import as float instead.
  trtllm::Int4Checkpoint c = trtllm::to_modelopt(fine.view());
  c.weights_scaling_factor[5] = 0.1f;
  EXPECT_TRUE(contains(
      error_message_of([&] { trtllm::from_modelopt<fp16>(c.view()); }, ErrorCode::unsupported),
      "float16 cannot hold exactly"));
  EXPECT_NO_THROW(trtllm::from_modelopt<float>(c.view()));
  c.weights_scaling_factor.pop_back();
  EXPECT_EQ(
      error_message_of([&] { trtllm::from_modelopt<float>(c.view()); }, ErrorCode::shape_mismatch)
          .empty(),
      false);
  // File tensors against the layout.
  const trtllm::Int4Layout layout{{}, 8, 256, 128};
  EXPECT_NO_THROW(layout.check_tensor("weight", nibble::DType::i8, {4, 256}));
  EXPECT_NO_THROW(layout.check_tensor("weights_scaling_factor", nibble::DType::f32, {8, 2}));
  error_message_of(
      [&] {
        layout.check_tensor("weight", nibble::DType::u8, {8, 128});
      },
      ErrorCode::shape_mismatch);
  error_message_of(
      [&] {
        layout.check_tensor("weights_scaling_factor", nibble::DType::f16, {8, 2});
      },
      ErrorCode::type_mismatch);
}

// ================================ (b) W4A8 folding ===============================================

template <class ModelT>
trtllm::W4A8Folded<ModelT> fold(const trtllm::Int4Layout& layout, const std::vector<float>& wsf,
                                float wsf2, float act, const std::vector<ModelT>& pre) {
  trtllm::W4A8ScalesView<ModelT> view;
  view.layout = layout;
  view.weights_scaling_factor = wsf.data();
  view.scale_count = static_cast<int64_t>(wsf.size());
  view.weights_scaling_factor_2 = wsf2;
  view.activation_scaling_factor = act;
  view.prequant_scaling_factor = pre.data();
  view.prequant_count = static_cast<int64_t>(pre.size());
  return trtllm::fold_w4a8(view);
}

TEST(TrtllmW4A8, FoldingFollowsTensorRtLlmsOrderOfRoundings) {
  // N = 2, K = 4, G = 2: wsf [N, K / G] = [[0.5, 1 + 2^-9], [3, 0.75]]; wsf2 = 0.25, act = 2.
  //   fp16 model: wsf -> fp16 (exact), / 0.25, -> fp16: 2 (0x4000), 4 + 2^-7 (0x4402; fp16 keeps
  //   2^-9 relative), 12 (0x4A00), 3 (0x4200), stored transposed [K / G, N]:
  //   g 0: n 0, n 1 = 0x4000, 0x4A00;  g 1: 0x4402, 0x4200.
  //   bf16 model: 1 + 2^-9 -> bf16 rounds to 1 (2^-9 < half of bf16's 2^-7 ulp), / 0.25 = 4 ->
  //   fp16 0x4400: TensorRT-LLM's cast to the model dtype happens before the division.
  //   pre [3, 1, 0.5, 6] / 2 = [1.5, 0.5, 0.25, 3]; alpha = 2 * 0.25 = 0.5.
  const trtllm::Int4Layout layout{{}, 2, 4, 2};
  const std::vector<float> wsf = {0.5f, 1.0f + std::ldexp(1.0f, -9), 3.0f, 0.75f};
  const std::vector<float> pre = {3.0f, 1.0f, 0.5f, 6.0f};
  std::vector<fp16> pre16;
  std::vector<bf16> pre_bf16;
  for (float p : pre) {
    pre16.push_back(nibble::from_float<fp16>(p));
    pre_bf16.push_back(nibble::from_float<bf16>(p));
  }
  const auto f16 = fold(layout, wsf, 0.25f, 2.0f, pre16);
  std::vector<uint16_t> bits;
  for (fp16 h : f16.weights_scaling_factor)
    bits.push_back(h.bits);
  EXPECT_EQ(bits, (std::vector<uint16_t>{0x4000, 0x4A00, 0x4402, 0x4200}));
  std::vector<uint16_t> pre_bits;
  for (fp16 h : f16.prequant_scaling_factor)
    pre_bits.push_back(h.bits);
  EXPECT_EQ(pre_bits, (std::vector<uint16_t>{0x3E00, 0x3800, 0x3400, 0x4200}));
  EXPECT_EQ(f16.alpha, 0.5f);
  EXPECT_EQ(f16.activation_scaling_factor, 2.0f);

  const auto b16 = fold(layout, wsf, 0.25f, 2.0f, pre_bf16);
  bits.clear();
  for (fp16 h : b16.weights_scaling_factor)
    bits.push_back(h.bits);
  EXPECT_EQ(bits, (std::vector<uint16_t>{0x4000, 0x4A00, 0x4400, 0x4200}));
  EXPECT_EQ(nibble::to_float(b16.prequant_scaling_factor[0]), 1.5f);

  EXPECT_TRUE(contains(
      error_message_of([&] { fold(layout, wsf, 0.0f, 2.0f, pre16); }, ErrorCode::invalid_argument),
      "weights_scaling_factor_2 = 0"));
  EXPECT_TRUE(contains(error_message_of([&] { fold(layout, wsf, 0.25f, -1.0f, pre16); },
                                        ErrorCode::invalid_argument),
                       "activation_scaling_factor = -1"));
  EXPECT_TRUE(contains(
      error_message_of([&] { fold(layout, wsf, 1e-6f, 2.0f, pre16); }, ErrorCode::non_finite),
      "not a finite float16"));
  error_message_of([&] { fold(layout, wsf, 0.25f, 2.0f, std::vector<fp16>(3)); },
                   ErrorCode::shape_mismatch);
}

// FP8 e4m3 rounding, from its 4 significand bits: a normal result is within a relative 2^-4 of
// its input; a subnormal one (below 2^-6, grid 2^-9) within an absolute 2^-10.
constexpr double kFp8UnitRoundoff = 1.0 / 16;
constexpr double kFp8SubnormalHalfStep = 1.0 / 1024;
constexpr double kFp32UnitRoundoff = 1.0 / (1 << 24);
constexpr double kFp16UnitRoundoff = 1.0 / (1 << 11);
constexpr double kBf16UnitRoundoff = 1.0 / (1 << 8);

// The folded W4A8 GEMM (x8 = fp8(x * pre'), w8 = fp8(q * wsf'), fp32 sum, times alpha) against the
// unfolded product y_ref = sum_k (x pre) (q wsf), which is act * wsf2 * sum_k a_k b_k with the
// exact folded operands a = x pre / act, b = q wsf / wsf2. Error bound, per output:
//   a' = a + e_a with |e_a| <= rho_a |a| + h, rho_a = (1 + u_md)(1 + u32)(1 + u8) - 1
//        (pre' rounded to the model dtype, the fp32 product, the fp8 rounding; saturation at 448
//        only ever removes <= rho_a |a| since act = amax / 448 puts |a| <= 448 before rounding);
//   b' = b + e_b with |e_b| <= rho_b |b| + h, rho_b = (1 + u_md)^2 (1 + u16)(1 + u8) - 1 (wsf to
//        the model dtype, the quotient in it, the fp16 cast, fp8; q * wsf' is exact in fp32);
//   |a'b' - ab| <= |e_a||b| + |a||e_b| + |e_a||e_b|  (summed over k: S);
//   the fp32 sum of the exact products a'b' (8-bit significands: exact in fp32) adds at most
//   gamma_{K-1} sum |a'b'|, gamma_n = n u32 / (1 - n u32); alpha = act * wsf2 rounded and the
//   final product add (1 + u32)^2. Hence
//   |y - y_ref| <= act wsf2 [(1 + u32)^2 (S + gamma P) + ((1 + u32)^2 - 1) sum |ab|].
template <class ModelT>
void check_folded_gemm(uint32_t seed) {
  constexpr bool kFp16Model = std::is_same_v<ModelT, fp16>;
  const double u_md = kFp16Model ? kFp16UnitRoundoff : kBf16UnitRoundoff;
  const int64_t m_rows = 4, n_outputs = 32, k = 256, group = 128, n_groups = k / group;
  std::mt19937 random(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> smooth(0.5f, 2.0f);
  // AWQ-smoothed weight W' [N, K] with a few outliers; ModelOpt's int4 quantizer: scale =
  // amax_block / 7, q = clamp(round_half_even(w / scale), -8, 7).
  std::vector<float> w(static_cast<std::size_t>(n_outputs * k));
  for (float& v : w)
    v = 0.02f * normal(random);
  w[17] = 0.3f;
  w[static_cast<std::size_t>(5 * k + 200)] = -0.25f;
  trtllm::Int4Checkpoint c;
  c.layout = trtllm::Int4Layout{{}, n_outputs, k, group};
  c.weight.assign(static_cast<std::size_t>(c.layout.weight_bytes()), 0);
  c.weights_scaling_factor.resize(static_cast<std::size_t>(n_outputs * n_groups));
  std::vector<int> q(w.size());
  float amax_w = 0.0f;
  for (int64_t n = 0; n < n_outputs; ++n) {
    for (int64_t g = 0; g < n_groups; ++g) {
      float amax = 0.0f;
      for (int64_t col = g * group; col < (g + 1) * group; ++col)
        amax = std::max(amax, std::fabs(w[static_cast<std::size_t>(n * k + col)]));
      const float scale = amax / 7.0f;
      c.weights_scaling_factor[static_cast<std::size_t>(n * n_groups + g)] = scale;
      amax_w = std::max(amax_w, amax);
      for (int64_t col = g * group; col < (g + 1) * group; ++col) {
        const auto at = static_cast<std::size_t>(n * k + col);
        q[at] = static_cast<int>(std::clamp(std::nearbyint(w[at] / scale), -8.0f, 7.0f));
        c.weight[static_cast<std::size_t>((n / 2) * k + col)] |=
            static_cast<uint8_t>((q[at] & 0xF) << (4 * (n % 2)));
      }
    }
  }
  const float wsf2 = amax_w / 448.0f;
  std::vector<float> x(static_cast<std::size_t>(m_rows * k));
  for (float& v : x)
    v = normal(random);
  for (int64_t col = 0; col < 8; ++col)  // tiny activations: fp8 subnormals after scaling
    x[static_cast<std::size_t>(col)] = 1e-5f * static_cast<float>(col + 1);
  x[static_cast<std::size_t>(k + 3)] = 9.0f;  // an outlier sets the activation scale
  std::vector<ModelT> pre(static_cast<std::size_t>(k));
  for (ModelT& p : pre)
    p = nibble::from_float<ModelT>(smooth(random));
  float amax_x = 0.0f;
  for (int64_t m = 0; m < m_rows; ++m)
    for (int64_t col = 0; col < k; ++col)
      amax_x = std::max(amax_x, std::fabs(x[static_cast<std::size_t>(m * k + col)] *
                                          nibble::to_float(pre[static_cast<std::size_t>(col)])));
  const float act = amax_x / 448.0f;

  const auto folded = fold(c.layout, c.weights_scaling_factor, wsf2, act, pre);
  // Round trip through nibble's canonical form first: the engine sees exactly these bytes.
  const auto canonical = trtllm::from_modelopt<float>(c.view());
  ASSERT_EQ(trtllm::to_modelopt(canonical.view()).weight, c.weight);

  const double rho_a = (1 + u_md) * (1 + kFp32UnitRoundoff) * (1 + kFp8UnitRoundoff) - 1;
  const double rho_b =
      (1 + u_md) * (1 + u_md) * (1 + kFp16UnitRoundoff) * (1 + kFp8UnitRoundoff) - 1;
  const double h = kFp8SubnormalHalfStep;
  const double n_sum = static_cast<double>(k - 1) * kFp32UnitRoundoff;
  const double gamma = n_sum / (1 - n_sum);
  const double ulp2 = (1 + kFp32UnitRoundoff) * (1 + kFp32UnitRoundoff);
  double err2 = 0, ref2 = 0;
  int subnormal_activations = 0;
  for (int64_t m = 0; m < m_rows; ++m) {
    for (int64_t n = 0; n < n_outputs; ++n) {
      double y_ref = 0, s_bound = 0, p_sum = 0, ab_sum = 0;
      float acc = 0.0f;
      float acc_wrong = 0.0f;
      for (int64_t col = 0; col < k; ++col) {
        const auto xi = static_cast<std::size_t>(m * k + col);
        const auto wi = static_cast<std::size_t>(n * k + col);
        const int64_t g = col / group;
        const double pre_exact = nibble::to_float(pre[static_cast<std::size_t>(col)]);
        const double wsf = c.weights_scaling_factor[static_cast<std::size_t>(n * n_groups + g)];
        y_ref += (x[xi] * pre_exact) * (q[wi] * wsf);
        const float pre_folded =
            nibble::to_float(folded.prequant_scaling_factor[static_cast<std::size_t>(col)]);
        const float wsf_folded = nibble::to_float(
            folded.weights_scaling_factor[static_cast<std::size_t>(g * n_outputs + n)]);
        const float a8 =
            nibble::round_to_fp8_e4m3(x[xi] * pre_folded, nibble::Fp8Overflow::saturate);
        const float b8 = nibble::round_to_fp8_e4m3(static_cast<float>(q[wi]) * wsf_folded,
                                                   nibble::Fp8Overflow::saturate);
        if (m == 0 && n == 0 && a8 != 0.0f && std::fabs(a8) < 0.015625f) ++subnormal_activations;
        acc += a8 * b8;
        acc_wrong += a8 * b8;
        const double a = std::fabs(x[xi] * pre_exact / act);
        const double b = std::fabs(q[wi] * wsf / wsf2);
        const double e_a = rho_a * a + h, e_b = rho_b * b + h;
        s_bound += e_a * b + a * e_b + e_a * e_b;
        p_sum += std::fabs(static_cast<double>(a8) * b8);
        ab_sum += a * b;
      }
      const float y = folded.alpha * acc;
      const double scale = static_cast<double>(act) * wsf2;
      const double bound = scale * (ulp2 * (s_bound + gamma * p_sum) + (ulp2 - 1) * ab_sum);
      ASSERT_LE(std::fabs(y - y_ref), bound) << "m " << m << " n " << n;
      err2 += (y - y_ref) * (y - y_ref);
      ref2 += y_ref * y_ref;
      // A wrong fold (alpha = act / wsf2) is far outside the bound.
      const float y_wrong = (act / wsf2) * acc_wrong;
      ASSERT_GT(std::fabs(y_wrong - y_ref), bound) << "m " << m << " n " << n;
    }
  }
  EXPECT_GE(subnormal_activations, 4);
  // Typical error: one fp8 rounding on each operand, RMS well under the worst case 2 * 2^-4.
  EXPECT_LT(std::sqrt(err2 / ref2), 2 * kFp8UnitRoundoff);
  EXPECT_GT(std::sqrt(err2 / ref2), 1e-4);  // fp8 really was in the loop
}

TEST(TrtllmW4A8, FoldedFp8GemmReproducesTheUnfoldedProductWithinTheFp8Bound) {
  check_folded_gemm<fp16>(1);
  check_folded_gemm<bf16>(2);
}

// ================================ (c) mixed GEMM preprocessing ===================================

std::vector<uint8_t> random_bytes(std::size_t count, uint32_t seed) {
  std::mt19937 random(seed);
  std::vector<uint8_t> bytes(count);
  for (uint8_t& b : bytes)
    b = static_cast<uint8_t>(random() & 0xFF);
  return bytes;
}

int nibble_at(const std::vector<uint8_t>& bytes, int64_t index) {
  return (bytes[static_cast<std::size_t>(index / 2)] >> (4 * (index % 2))) & 0xF;
}

TEST(TrtllmPreprocess, LdsmMapsAreThePublishedTablesAndTheirClosedForm) {
  for (int r = 0; r < 32; ++r) {
    const int a = r / 8, b = r % 8;
    EXPECT_EQ(trtllm::ldsm_row_permutation(QuantType::w4_a16)[static_cast<std::size_t>(r)],
              2 * a + b % 2 + 8 * (b / 2));
    EXPECT_EQ(trtllm::ldsm_row_permutation(QuantType::w4_afp8)[static_cast<std::size_t>(r)],
              4 * a + b % 4 + 16 * (b / 4));
  }
  EXPECT_EQ(trtllm::rows_per_column_tile(QuantType::w4_a16), 64);
  EXPECT_EQ(trtllm::rows_per_column_tile(QuantType::w4_afp8), 128);
  EXPECT_EQ(trtllm::columns_interleaved(QuantType::w4_a16), 4);
  EXPECT_EQ(trtllm::columns_interleaved(QuantType::w4_afp8), 2);
}

TEST(TrtllmPreprocess, Step1PermutesRowsInGroupsOf32_K64xN8) {
  // Row r of the input = 4 bytes of value r. W4_A16 output rows 0..7 read 0 1 8 9 16 17 24 25,
  // rows 8..15 read 2 3 10 11 18 19 26 27; the second group adds 32.
  std::vector<uint8_t> in;
  for (int r = 0; r < 64; ++r)
    in.insert(in.end(), 4, static_cast<uint8_t>(r));
  const auto out = trtllm::permute_rows_for_ldsm(in, {64, 8}, QuantType::w4_a16);
  const int expected_w4a16[16] = {0, 1, 8, 9, 16, 17, 24, 25, 2, 3, 10, 11, 18, 19, 26, 27};
  for (int r = 0; r < 16; ++r) {
    EXPECT_EQ(out[static_cast<std::size_t>(4 * r)], expected_w4a16[r]) << r;
    EXPECT_EQ(out[static_cast<std::size_t>(4 * (r + 32) + 3)], expected_w4a16[r] + 32) << r;
  }
  const auto fp8 = trtllm::permute_rows_for_ldsm(in, {64, 8}, QuantType::w4_afp8);
  const int expected_w4afp8[12] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7};
  for (int r = 0; r < 12; ++r)
    EXPECT_EQ(fp8[static_cast<std::size_t>(4 * r + 1)], expected_w4afp8[r]) << r;
  EXPECT_EQ(trtllm::permute_rows_for_ldsm(out, {64, 8}, QuantType::w4_a16, true), in);
}

TEST(TrtllmPreprocess, Step2TransposesNibbles_K64xN64) {
  // Input nibble (k, n) = (k + 3n) % 16. Input byte (k 0, bytes 0) = n 0, 1 -> nibbles 0, 3 ->
  // 0x30. Output row n = 0: k 0, 1 -> nibbles 0, 1 -> 0x10; row n = 1: 3, 4 -> 0x43.
  std::vector<uint8_t> in(64 * 32);
  for (int k = 0; k < 64; ++k)
    for (int n = 0; n < 64; ++n)
      in[static_cast<std::size_t>(k * 32 + n / 2)] |=
          static_cast<uint8_t>(((k + 3 * n) % 16) << (4 * (n % 2)));
  EXPECT_EQ(in[0], 0x30);
  const auto out = trtllm::subbyte_transpose(in, {64, 64});
  EXPECT_EQ(out[0], 0x10);
  EXPECT_EQ(out[32], 0x43);
  for (int n = 0; n < 64; ++n)
    for (int k = 0; k < 64; ++k)
      ASSERT_EQ(nibble_at(out, n * 64 + k), (k + 3 * n) % 16);
  EXPECT_EQ(trtllm::subbyte_transpose(out, {64, 64}, true), in);
}

TEST(TrtllmPreprocess, Step3InterleavesColumnsPerKTile) {
  // Column-major input, word (n, v) = bytes {n, v, 0xAA, 0x55}. W4_A16, K = 128 (16 words per
  // column, two 64-row tiles of 8 words), N = 64, I = 4: output words 0..7 = column 0 tile 0,
  // 8..15 = column 1 tile 0, 16..23 column 2, 24..31 column 3, 32..39 = column 0 tile 1, ...,
  // 64.. = columns 4..7.
  const auto label = [](int64_t k, int64_t n) {
    std::vector<uint8_t> in;
    for (int64_t col = 0; col < n; ++col)
      for (int64_t v = 0; v < k / 8; ++v)
        in.insert(in.end(), {static_cast<uint8_t>(col), static_cast<uint8_t>(v), 0xAA, 0x55});
    return in;
  };
  const auto in = label(128, 64);
  const auto out = trtllm::interleave_column_major(in, {128, 64}, QuantType::w4_a16);
  const auto word = [&](int64_t w) {
    return std::pair<int, int>{out[static_cast<std::size_t>(4 * w)],
                               out[static_cast<std::size_t>(4 * w + 1)]};
  };
  EXPECT_EQ(word(0), (std::pair<int, int>{0, 0}));
  EXPECT_EQ(word(7), (std::pair<int, int>{0, 7}));
  EXPECT_EQ(word(8), (std::pair<int, int>{1, 0}));
  EXPECT_EQ(word(31), (std::pair<int, int>{3, 7}));
  EXPECT_EQ(word(32), (std::pair<int, int>{0, 8}));
  EXPECT_EQ(word(40), (std::pair<int, int>{1, 8}));
  EXPECT_EQ(word(63), (std::pair<int, int>{3, 15}));
  EXPECT_EQ(word(64), (std::pair<int, int>{4, 0}));
  EXPECT_EQ(out[2], 0xAA);
  EXPECT_EQ(trtllm::interleave_column_major(out, {128, 64}, QuantType::w4_a16, true), in);
  // W4_AFP8: K = 256, tiles of 128 rows (16 words), I = 2: words 0..15 = column 0 tile 0,
  // 16..31 = column 1 tile 0, 32..47 = column 0 tile 1, 64.. = column 2.
  const auto in8 = label(256, 64);
  const auto out8 = trtllm::interleave_column_major(in8, {256, 64}, QuantType::w4_afp8);
  EXPECT_EQ(out8[4 * 15 + 1], 15);
  EXPECT_EQ(out8[4 * 16], 1);
  EXPECT_EQ(out8[4 * 32 + 1], 16);
  EXPECT_EQ(out8[4 * 64], 2);
  // K = R: one tile per column, so the interleave is the identity.
  const auto one_tile = label(64, 64);
  EXPECT_EQ(trtllm::interleave_column_major(one_tile, {64, 64}, QuantType::w4_a16), one_tile);
}

TEST(TrtllmPreprocess, Step4AddsTheBiasAndInterleavesNibbles) {
  // Bytes 10 32 54 76 = nibbles e0..e7 = 0..7 (signed). +8: 8..15. Slots [e0 e2 e4 e6 e1 e3 e5
  // e7] = 8 A C E 9 B D F -> bytes A8 EC B9 FD. Signed -8 (0x8) -> 0; -1 (0xF) -> 7.
  EXPECT_EQ(trtllm::add_bias_and_interleave_int4({0x10, 0x32, 0x54, 0x76}),
            (std::vector<uint8_t>{0xA8, 0xEC, 0xB9, 0xFD}));
  EXPECT_EQ(trtllm::add_bias_and_interleave_int4({0x88, 0x88, 0x88, 0x88}),
            (std::vector<uint8_t>{0x00, 0x00, 0x00, 0x00}));
  EXPECT_EQ(trtllm::add_bias_and_interleave_int4({0xFF, 0xFF, 0xFF, 0xFF}),
            (std::vector<uint8_t>{0x77, 0x77, 0x77, 0x77}));
  // e1 = -8 only: source nibble 1 goes to slot 4 -> 0 there, 8 everywhere else.
  EXPECT_EQ(trtllm::add_bias_and_interleave_int4({0x80, 0x00, 0x00, 0x00}),
            (std::vector<uint8_t>{0x88, 0x88, 0x80, 0x88}));
  const auto bytes = random_bytes(64, 9);
  EXPECT_EQ(trtllm::add_bias_and_interleave_int4(trtllm::add_bias_and_interleave_int4(bytes), true),
            bytes);
  error_message_of(
      [] {
        trtllm::add_bias_and_interleave_int4({1, 2, 3});
      },
      ErrorCode::shape_mismatch);
}

// The whole pipeline in closed form, derived from the four steps: output word w, slot i.
//   sm80: R = ThreadblockK, I = 256 / R, T = R / 8 words per tile: w = s (K / 8) I + t T I +
//         c T + vv, column n = s I + c, column word v = t T + vv;  sm90: w = n (K / 8) + v.
//   word v of column n holds (step 2) permuted rows 8v .. 8v + 7, nibble j = row 8v + j = input
//   row 32 (v / 4) + map[8 (v % 4) + j] (step 1); slot i holds nibble j = [0,2,4,6,1,3,5,7][i]
//   (step 4), plus 8.
void check_closed_form(int64_t experts, int64_t k, int64_t n, QuantType quant, GemmArch arch,
                       uint32_t seed) {
  const std::vector<int64_t> dims =
      experts == 1 ? std::vector<int64_t>{k, n} : std::vector<int64_t>{experts, k, n};
  const auto in = random_bytes(static_cast<std::size_t>(experts * k * n / 2), seed);
  const auto out = trtllm::preprocess_weights_for_mixed_gemm(in, dims, quant, arch);
  const auto& map = trtllm::ldsm_row_permutation(quant);
  const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  const int64_t words_per_column = k / 8;
  const int64_t interleave = arch == GemmArch::sm80 ? trtllm::columns_interleaved(quant) : 1;
  const int64_t tile = arch == GemmArch::sm80 ? trtllm::rows_per_column_tile(quant) / 8 : 1;
  for (int64_t e = 0; e < experts; ++e) {
    for (int64_t w = 0; w < words_per_column * n; ++w) {
      int64_t col = 0, v = 0;
      if (arch == GemmArch::sm80) {
        const int64_t s = w / (words_per_column * interleave);
        const int64_t rest = w % (words_per_column * interleave);
        const int64_t t = rest / (tile * interleave);
        const int64_t c = (rest % (tile * interleave)) / tile;
        col = s * interleave + c;
        v = t * tile + rest % tile;
      } else {
        col = w / words_per_column;
        v = w % words_per_column;
      }
      for (int i = 0; i < 8; ++i) {
        const int64_t row = 32 * (v / 4) + map[static_cast<std::size_t>(8 * (v % 4) + order[i])];
        const int source = nibble_at(in, e * k * n + row * n + col);
        ASSERT_EQ(nibble_at(out, e * k * n + 8 * w + i), source ^ 8)
            << "expert " << e << " word " << w << " slot " << i;
      }
    }
  }
}

TEST(TrtllmPreprocess, WholePipelineMatchesTheClosedForm) {
  // Example, sm80 W4_A16: word 0 = column 0, k = 0, 8, 16, 24, 1, 9, 17, 25.
  check_closed_form(1, 128, 64, QuantType::w4_a16, GemmArch::sm80, 1);
  check_closed_form(2, 192, 320, QuantType::w4_a16, GemmArch::sm80, 2);
  check_closed_form(1, 256, 128, QuantType::w4_afp8, GemmArch::sm80, 3);
  check_closed_form(1, 192, 64, QuantType::w4_a16, GemmArch::sm90, 4);
  check_closed_form(3, 64, 128, QuantType::w4_afp8, GemmArch::sm90, 5);
}

TEST(TrtllmPreprocess, InverseRoundTripsOnOddButLegalShapes) {
  struct Case {
    std::vector<int64_t> dims;
    QuantType quant;
    GemmArch arch;
  };
  const Case cases[] = {{{64, 64}, QuantType::w4_a16, GemmArch::sm80},
                        {{192, 320}, QuantType::w4_a16, GemmArch::sm80},
                        {{3, 320, 192}, QuantType::w4_a16, GemmArch::sm90},
                        {{384, 192}, QuantType::w4_afp8, GemmArch::sm80},
                        {{2, 192, 448}, QuantType::w4_afp8, GemmArch::sm90}};
  uint32_t seed = 20;
  for (const Case& c : cases) {
    int64_t bytes = 1;
    for (int64_t d : c.dims)
      bytes *= d;
    const auto in = random_bytes(static_cast<std::size_t>(bytes / 2), seed++);
    const auto out = trtllm::preprocess_weights_for_mixed_gemm(in, c.dims, c.quant, c.arch);
    EXPECT_NE(out, in);
    EXPECT_EQ(trtllm::unpreprocess_weights_for_mixed_gemm(out, c.dims, c.quant, c.arch), in);
  }
}

TEST(TrtllmPreprocess, EngineNibblesAreNibblesCodes) {
  // The +8 bias turns ModelOpt's signed q back into nibble's code u = q + 8: the engine stores
  // the canonical codes, only moved.
  const auto t = random_tensor<fp16>({64, 128}, 64, 7);  // [N, K]
  const auto out = trtllm::to_mixed_gemm_weight(t.view(), QuantType::w4_a16, GemmArch::sm90);
  // sm90: word w = n (K / 8) + v, slot i <- row 32 (v / 4) + map[8 (v % 4) + order[i]].
  const auto& map = trtllm::ldsm_row_permutation(QuantType::w4_a16);
  const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  for (int64_t n = 0; n < 64; ++n)
    for (int64_t v = 0; v < 16; ++v)
      for (int i = 0; i < 8; ++i)
        ASSERT_EQ(
            nibble_at(out, 8 * (n * 16 + v) + i),
            t.view().code(n, 32 * (v / 4) + map[static_cast<std::size_t>(8 * (v % 4) + order[i])]));
  EXPECT_EQ(trtllm::mixed_gemm_input(t.view()),
            trtllm::mixed_gemm_input(trtllm::to_modelopt(t.view()).view()));
}

TEST(TrtllmPreprocess, UnsupportedShapesSayWhichMultipleIsNeeded) {
  const auto run = [](std::vector<int64_t> dims, QuantType quant, GemmArch arch) {
    int64_t elements = 1;
    for (int64_t d : dims)
      elements *= d;
    const std::vector<uint8_t> in(static_cast<std::size_t>(elements / 2));
    return error_message_of(
        [&] { trtllm::preprocess_weights_for_mixed_gemm(in, dims, quant, arch); },
        ErrorCode::unsupported);
  };
  EXPECT_TRUE(
      contains(run({48, 64}, QuantType::w4_a16, GemmArch::sm80), "K = 48 is not a multiple of 32"));
  EXPECT_TRUE(
      contains(run({96, 64}, QuantType::w4_a16, GemmArch::sm80), "K = 96 is not a multiple of 64"));
  EXPECT_TRUE(
      contains(run({64, 36}, QuantType::w4_a16, GemmArch::sm90), "N = 36 is not a multiple of 8"));
  EXPECT_TRUE(
      contains(run({64, 40}, QuantType::w4_a16, GemmArch::sm90), "N = 40 is not a multiple of 64"));
  EXPECT_TRUE(contains(run({192, 64}, QuantType::w4_afp8, GemmArch::sm80),
                       "K = 192 is not a multiple of 128"));
  EXPECT_NO_THROW(trtllm::preprocess_weights_for_mixed_gemm(
      std::vector<uint8_t>(192 * 32), {192, 64}, QuantType::w4_afp8, GemmArch::sm90));
  error_message_of(
      [] {
        trtllm::preprocess_weights_for_mixed_gemm(std::vector<uint8_t>(100), {64, 64},
                                                  QuantType::w4_a16, GemmArch::sm80);
      },
      ErrorCode::shape_mismatch);
  error_message_of(
      [] {
        trtllm::preprocess_weights_for_mixed_gemm(std::vector<uint8_t>(2048), {1, 1, 64, 64},
                                                  QuantType::w4_a16, GemmArch::sm80);
      },
      ErrorCode::shape_mismatch);
}

TEST(TrtllmPreprocess, ArchFollowsTensorRtLlmsBranches) {
  EXPECT_EQ(trtllm::gemm_arch_for_sm(75), GemmArch::sm80);
  EXPECT_EQ(trtllm::gemm_arch_for_sm(80), GemmArch::sm80);
  EXPECT_EQ(trtllm::gemm_arch_for_sm(89), GemmArch::sm80);
  EXPECT_EQ(trtllm::gemm_arch_for_sm(90), GemmArch::sm90);
  EXPECT_EQ(trtllm::gemm_arch_for_sm(90, /*force_interleave=*/true), GemmArch::sm80);
  EXPECT_EQ(trtllm::gemm_arch_for_sm(100), GemmArch::sm80);
  EXPECT_EQ(trtllm::gemm_arch_for_sm(120), GemmArch::sm80);
  error_message_of([] { trtllm::gemm_arch_for_sm(70); }, ErrorCode::unsupported);
}

}  // namespace
