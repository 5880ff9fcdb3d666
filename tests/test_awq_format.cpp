// AWQ GEMM checkpoints (formats/awq.hpp). The independent truth is AutoAWQ's published packing
// (awq/modules/linear/gemm.py WQLinear_GEMM.from_linear, awq/utils/packing_utils.py):
//   order_map = [0, 2, 4, 6, 1, 3, 5, 7]
//   qweight[k, c] |= intweight[k, 8c + order_map[i]] << (4 * i)      (packed along N)
//   qzeros[g, c]  |= zeros[g, 8c + order_map[i]] << (4 * i)          (true zero points)
//   w[k, n] = (q[k, n] - z[k / G, n]) * scales[k / G, n]             (dequantize_gemm)
// The hand-written words below were derived from those lines; the dequantizer here is a loop
// written from them (unpack nibble i of each word, place it at output 8c + order_map[i]).
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "nibble/formats/awq.hpp"
#include "nibble/quantizer.hpp"
#include "support/quant_fixtures.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::ConventionId;
using nibble::ErrorCode;
using nibble::fp16;
using nibble::QuantConfig;
using nibble::Shape;
using nibble::TensorView;
namespace awq = nibble::awq;
using nibble::testing::expect_error;
using nibble::testing::expect_same_tensor;
using nibble::testing::make_tensor;
using nibble::testing::random_tensor;
using nibble::testing::word_bits;

// The checkpoint's weights [N, K] (row n, column k) by the published formula.
template <class ScaleT>
std::vector<float> dequantize_checkpoint(const awq::Checkpoint<ScaleT>& c) {
  const int order_map[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  const int64_t k_dim = c.layout.in_features;
  const int64_t n_dim = c.layout.out_features;
  const int64_t group = c.layout.group_size == nibble::kPerChannel ? k_dim : c.layout.group_size;
  std::vector<int> q(static_cast<std::size_t>(k_dim * n_dim));          // [k][n]
  std::vector<int> z(static_cast<std::size_t>(k_dim / group * n_dim));  // [g][n]
  for (int64_t k = 0; k < k_dim; ++k) {
    for (int64_t c8 = 0; c8 < n_dim / 8; ++c8) {
      const uint32_t word = word_bits(c.qweight[static_cast<std::size_t>(k * (n_dim / 8) + c8)]);
      for (int i = 0; i < 8; ++i)
        q[static_cast<std::size_t>(k * n_dim + 8 * c8 + order_map[i])] =
            static_cast<int>((word >> (4 * i)) & 0xFu);
    }
  }
  for (int64_t g = 0; g < k_dim / group; ++g) {
    for (int64_t c8 = 0; c8 < n_dim / 8; ++c8) {
      const uint32_t word = word_bits(c.qzeros[static_cast<std::size_t>(g * (n_dim / 8) + c8)]);
      for (int i = 0; i < 8; ++i)
        z[static_cast<std::size_t>(g * n_dim + 8 * c8 + order_map[i])] =
            static_cast<int>((word >> (4 * i)) & 0xFu);
    }
  }
  std::vector<float> out(static_cast<std::size_t>(n_dim * k_dim));
  for (int64_t k = 0; k < k_dim; ++k) {
    const int64_t g = k / group;
    for (int64_t n = 0; n < n_dim; ++n) {
      const float scale = nibble::to_float(c.scales[static_cast<std::size_t>(g * n_dim + n)]);
      out[static_cast<std::size_t>(n * k_dim + k)] =
          static_cast<float>(q[static_cast<std::size_t>(k * n_dim + n)] -
                             z[static_cast<std::size_t>(g * n_dim + n)]) *
          scale;
    }
  }
  return out;
}

// ---- hand-derived words ------------------------------------------------------------------------

// N = 8, K = 16, G = 8: qweight [16, 1], qzeros [2, 1], scales [2, 8].
//   codes  q(n, k) = (k + 2n) mod 16      zeros z(n, g) = 1 + n + 4g      scales 0.5 + n + 0.25g
// Word qweight[k, 0]: nibble i holds output order_map[i] = 0, 2, 4, 6, 1, 3, 5, 7, i.e. the codes
// q(0..7, k) in that order. For k = 0 the outputs' codes are 0, 2, 4, .., 14, so nibbles 0..7 are
// 0, 4, 8, 12, 2, 6, 10, 14 and the word (hex digit 7 first) is 0xEA62C840. (A natural-order
// packing would give 0xECA86420.) Each next k adds 1 to every nibble, mod 16:
//   k = 1: 1, 5, 9, 13, 3, 7, 11, 15 -> 0xFB73D951;  k = 2: 2, 6, 10, 14, 4, 8, 12, 0 -> 0x0C84EA62
constexpr uint32_t kHandQweight[16] = {0xEA62C840u, 0xFB73D951u, 0x0C84EA62u, 0x1D95FB73u,
                                       0x2EA60C84u, 0x3FB71D95u, 0x40C82EA6u, 0x51D93FB7u,
                                       0x62EA40C8u, 0x73FB51D9u, 0x840C62EAu, 0x951D73FBu,
                                       0xA62E840Cu, 0xB73F951Du, 0xC840A62Eu, 0xD951B73Fu};
// qzeros[g, 0]: nibble i holds z(order_map[i], g), true zero points.
//   g = 0: z = 1 + n: 1, 3, 5, 7, 2, 4, 6, 8 -> 0x86427531
//   g = 1: z = 5 + n: 5, 7, 9, 11, 6, 8, 10, 12 -> 0xCA86B975
constexpr uint32_t kHandQzeros[2] = {0x86427531u, 0xCA86B975u};

TEST(AwqFormat, HandDerivedWordsInterleaved) {
  const auto canonical = make_tensor<fp16>(
      8, 16, QuantConfig{4, 8, false}, [](int64_t n, int64_t k) { return int((k + 2 * n) % 16); },
      [](int64_t n, int64_t g) { return int(1 + n + 4 * g); },
      [](int64_t n, int64_t g) { return 0.5f + float(n) + 0.25f * float(g); });
  const auto c = awq::to_awq(canonical.view());
  EXPECT_EQ(c.layout.in_features, 16);
  EXPECT_EQ(c.layout.out_features, 8);
  EXPECT_EQ(c.layout.group_size, 8);
  ASSERT_EQ(c.qweight.size(), 16u);
  for (int k = 0; k < 16; ++k)
    EXPECT_EQ(word_bits(c.qweight[static_cast<std::size_t>(k)]), kHandQweight[k]) << "k " << k;
  ASSERT_EQ(c.qzeros.size(), 2u);
  EXPECT_EQ(word_bits(c.qzeros[0]), kHandQzeros[0]);
  EXPECT_EQ(word_bits(c.qzeros[1]), kHandQzeros[1]);
  for (int g = 0; g < 2; ++g) {
    for (int n = 0; n < 8; ++n) {
      EXPECT_EQ(nibble::to_float(c.scales[static_cast<std::size_t>(g * 8 + n)]),
                0.5f + float(n) + 0.25f * float(g));
    }
  }
  expect_same_tensor(awq::from_awq(c.view()), canonical);
  EXPECT_EQ(dequantize_checkpoint(c), nibble::dequantize(canonical));
}

// The docs example: codes q(n) = n for outputs 0..7 pack to nibbles 0 2 4 6 1 3 5 7 = 0x75316420.
// A symmetric tensor exports zero points 8 in every nibble: 0x88888888.
TEST(AwqFormat, HandDerivedSymmetric) {
  const auto canonical = make_tensor<float>(
      8, 8, QuantConfig{4, nibble::kPerChannel, true}, [](int64_t n, int64_t) { return int(n); },
      [](int64_t, int64_t) { return 8; }, [](int64_t, int64_t) { return 0.25f; });
  const auto c = awq::to_awq(canonical.view());
  for (int32_t word : c.qweight)
    EXPECT_EQ(word_bits(word), 0x75316420u);
  ASSERT_EQ(c.qzeros.size(), 1u);
  EXPECT_EQ(word_bits(c.qzeros[0]), 0x88888888u);
  EXPECT_EQ(dequantize_checkpoint(c), nibble::dequantize(canonical));
  // AWQ's default import keeps the zero points (asymmetric); detect recovers the symmetric tensor.
  const auto asymmetric = awq::from_awq(c.view());
  EXPECT_FALSE(asymmetric.config().symmetric);
  EXPECT_EQ(nibble::dequantize(asymmetric), nibble::dequantize(canonical));
  awq::ImportOptions detect;
  detect.symmetry = awq::Symmetry::detect;
  expect_same_tensor(awq::from_awq(c.view(), detect), canonical);
}

// ---- round trips -------------------------------------------------------------------------------

template <class ScaleT>
void round_trip_all() {
  uint32_t seed = 1;
  for (bool symmetric : {false, true}) {
    for (const auto& [n_outputs, k] :
         std::vector<std::pair<int64_t, int64_t>>{{8, 16}, {24, 64}, {64, 96}, {16, 7 * 32}}) {
      for (int64_t group : {int64_t{8}, int64_t{32}, int64_t{128}, nibble::kPerChannel}) {
        if (group != nibble::kPerChannel && k % group != 0) continue;
        SCOPED_TRACE((symmetric ? "sym N " : "asym N ") + std::to_string(n_outputs) + " K " +
                     std::to_string(k) + " G " + std::to_string(group) + " " +
                     nibble::type_name<ScaleT>());
        const auto canonical =
            random_tensor<ScaleT>(n_outputs, k, QuantConfig{4, group, symmetric}, seed++);
        const auto c = awq::to_awq(canonical.view());
        awq::ImportOptions options;
        options.symmetry = symmetric ? awq::Symmetry::symmetric : awq::Symmetry::asymmetric;
        expect_same_tensor(awq::from_awq(c.view(), options), canonical);
        ASSERT_EQ(dequantize_checkpoint(c), nibble::dequantize(canonical));
      }
    }
  }
}

TEST(AwqFormat, RoundTripFloatScales) {
  round_trip_all<float>();
}
TEST(AwqFormat, RoundTripFp16Scales) {
  round_trip_all<fp16>();
}

TEST(AwqFormat, RoundTripQuantizerOutput) {
  for (ConventionId convention : {ConventionId::olive, ConventionId::ort_weight_only}) {
    const Shape shape{32, 96};  // 3 groups: an odd count, so the zero-point pad nibble matters
    const std::vector<float> weights = nibble::testing::gaussian(shape.numel(), 9);
    const auto canonical = nibble::quantize<fp16>(TensorView<const float>(weights.data(), shape),
                                                  QuantConfig{4, 32, false, convention});
    const auto c = awq::to_awq(canonical.view());
    awq::ImportOptions options;
    options.convention = convention;
    expect_same_tensor(awq::from_awq(c.view(), options), canonical);
    EXPECT_EQ(dequantize_checkpoint(c), nibble::dequantize(canonical));
  }
}

// ---- errors ------------------------------------------------------------------------------------

TEST(AwqFormat, BadInputErrors) {
  const auto good = random_tensor<float>(8, 16, QuantConfig{4, 8, false}, 1);
  const auto two_bit = nibble::quantize<float>(
      TensorView<const float>(nibble::testing::gaussian(8 * 16, 1).data(), Shape{8, 16}),
      QuantConfig{2, 8, false});
  expect_error([&] { awq::to_awq(two_bit.view()); }, ErrorCode::unsupported,
               "bits = 2 (AWQ GEMM checkpoints hold 4-bit codes only)");
  const auto partial = random_tensor<float>(8, 40, QuantConfig{4, 16, false}, 1);
  expect_error([&] { awq::to_awq(partial.view()); }, ErrorCode::unsupported,
               "K = 40 is not a multiple of group_size 16");
  const auto narrow = random_tensor<float>(12, 16, QuantConfig{4, 8, false}, 1);
  expect_error([&] { awq::to_awq(narrow.view()); }, ErrorCode::unsupported,
               "out_features N = 12 is not a multiple of 8");

  auto c = awq::to_awq(good.view());
  auto view = c.view();
  view.qzeros_count = 3;
  expect_error([&] { awq::from_awq(view); }, ErrorCode::shape_mismatch,
               "qzeros holds 3 elements but the layout needs exactly 2");
  view = c.view();
  view.qweight = nullptr;
  expect_error([&] { awq::from_awq(view); }, ErrorCode::null_pointer, "qweight is null");
  view = c.view();
  view.layout.group_size = 0;
  expect_error([&] { awq::from_awq(view); }, ErrorCode::invalid_argument,
               "AWQ group_size = 0 is invalid");
  view = c.view();
  view.layout.group_size = 5;
  expect_error([&] { awq::from_awq(view); }, ErrorCode::unsupported,
               "in_features K = 16 is not a multiple of group_size 5");
  c.qzeros[0] = static_cast<int32_t>(0x88888887u);  // output 0 (nibble 0) has zero point 7
  awq::ImportOptions options;
  options.symmetry = awq::Symmetry::symmetric;
  expect_error([&] { awq::from_awq(c.view(), options); }, ErrorCode::invalid_argument,
               "zero point of output 0, group 0 is 7 (expected 2^(bits-1) = 8");

  const awq::Layout layout{4096, 11008, 128};
  EXPECT_NO_THROW(layout.check_tensor("qweight", nibble::DType::i32, {4096, 1376}));
  EXPECT_NO_THROW(layout.check_tensor("qzeros", nibble::DType::i32, {32, 1376}));
  EXPECT_NO_THROW(layout.check_tensor("scales", nibble::DType::f16, {32, 11008}));
  expect_error(
      [&] {
        layout.check_tensor("qweight", nibble::DType::i64, {4096, 1376});
      },
      ErrorCode::type_mismatch, "qweight has dtype I64 (8 bytes per element)");
  expect_error(
      [&] {
        layout.check_tensor("qweight", nibble::DType::i32, {512, 11008});
      },
      ErrorCode::shape_mismatch,
      "qweight has shape [512, 11008] but the layout needs "
      "[4096, 1376]");
  expect_error([&] { layout.check_tensor("g_idx", nibble::DType::i32, {4096}); },
               ErrorCode::invalid_argument, "expected qweight, qzeros or scales");
}

}  // namespace
