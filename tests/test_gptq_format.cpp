// GPTQ checkpoints (formats/gptq.hpp). The independent truth is AutoGPTQ's published packing
// (auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py pack / forward):
//   qweight[r, n] |= q[n][r * pack + t] << (bits * t)        (packed along K, LSB first)
//   qzeros[g, c]  |= (z[n = c * pack + t][g] - 1) << (bits * t)   (v1; v2 without the - 1)
//   w[k, n] = scales[g_idx[k], n] * (q - z)
// The hand-written words below were derived from those lines, and the dequantizer in this file
// is a loop written from them, not a call into the implementation.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "nibble/formats/gptq.hpp"
#include "nibble/quantizer.hpp"
#include "nibble/solvers/gptq.hpp"
#include "support/quant_fixtures.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::ConventionId;
using nibble::ErrorCode;
using nibble::fp16;
using nibble::QuantConfig;
using nibble::QuantTensor;
using nibble::Shape;
using nibble::TensorView;
namespace gptq = nibble::gptq;
using gptq::ZeroFormat;
using nibble::testing::expect_error;
using nibble::testing::expect_same_tensor;
using nibble::testing::make_tensor;
using nibble::testing::random_tensor;
using nibble::testing::word_bits;

// The checkpoint's weights [N, K] (row n, column k), from the words by the published formula.
template <class ScaleT>
std::vector<float> dequantize_checkpoint(const gptq::Checkpoint<ScaleT>& c) {
  const int64_t k_dim = c.layout.in_features;
  const int64_t n_dim = c.layout.out_features;
  const int bits = c.layout.bits;
  const int64_t pack = 32 / bits;
  const uint32_t mask = (1u << bits) - 1u;
  const int one = c.layout.zero_format == ZeroFormat::v1 ? 1 : 0;
  std::vector<float> out(static_cast<std::size_t>(n_dim * k_dim));
  for (int64_t k = 0; k < k_dim; ++k) {
    const int64_t g = c.g_idx[static_cast<std::size_t>(k)];
    for (int64_t n = 0; n < n_dim; ++n) {
      const uint32_t qword = word_bits(c.qweight[static_cast<std::size_t>((k / pack) * n_dim + n)]);
      const int q = static_cast<int>((qword >> (bits * (k % pack))) & mask);
      const uint32_t zword =
          word_bits(c.qzeros[static_cast<std::size_t>(g * (n_dim / pack) + n / pack)]);
      const int z = static_cast<int>((zword >> (bits * (n % pack))) & mask) + one;
      const float scale = nibble::to_float(c.scales[static_cast<std::size_t>(g * n_dim + n)]);
      out[static_cast<std::size_t>(n * k_dim + k)] = scale * static_cast<float>(q - z);
    }
  }
  return out;
}

// ---- hand-derived words ------------------------------------------------------------------------

// N = 8, K = 16, G = 8, 4 bits, asymmetric: pack = 8, qweight [2, 8], qzeros [2, 1], scales [2, 8].
//   codes  q(n, k) = (k + 2n) mod 16
//   zeros  z(n, g) = 1 + n + 4g          (1 .. 12: representable in v1)
//   scales s(n, g) = 0.5 + n + 0.25g     (exact in fp16)
// qweight[r, n] = sum_t q(n, 8r + t) << 4t, so nibble t (hex digit t from the right) is
// (8r + t + 2n) mod 16: consecutive values from (8r + 2n) mod 16 upwards:
//   r = 0, n = 0: digits 0..7 -> 0x76543210;  n = 1: 2..9 -> 0x98765432;  ...
//   n = 5: 10, 11, .., 15, 0, 1 -> 0x10FEDCBA;  r = 1 starts 8 higher (r = 1, n = 0: 0xFEDCBA98).
// qzeros[g, 0] = sum_n stored(n, g) << 4n with stored = z - 1 = n + 4g (v1) or z (v2):
//   v1: g = 0: digits 0..7 -> 0x76543210,  g = 1: 4..11 -> 0xBA987654
//   v2: g = 0: digits 1..8 -> 0x87654321,  g = 1: 5..12 -> 0xCBA98765
constexpr uint32_t kHandQweight[2][8] = {{0x76543210u, 0x98765432u, 0xBA987654u, 0xDCBA9876u,
                                          0xFEDCBA98u, 0x10FEDCBAu, 0x3210FEDCu, 0x543210FEu},
                                         {0xFEDCBA98u, 0x10FEDCBAu, 0x3210FEDCu, 0x543210FEu,
                                          0x76543210u, 0x98765432u, 0xBA987654u, 0xDCBA9876u}};

template <class ScaleT>
QuantTensor<ScaleT> hand_tensor(bool symmetric) {
  return make_tensor<ScaleT>(
      8, 16, QuantConfig{4, 8, symmetric},
      [](int64_t n, int64_t k) { return int((k + 2 * n) % 16); },
      [](int64_t n, int64_t g) { return int(1 + n + 4 * g); },
      [](int64_t n, int64_t g) { return 0.5f + float(n) + 0.25f * float(g); });
}

TEST(GptqFormat, HandDerivedWords4BitAsymmetricV1AndV2) {
  const auto canonical = hand_tensor<fp16>(false);
  for (ZeroFormat format : {ZeroFormat::v1, ZeroFormat::v2}) {
    const auto c = gptq::to_gptq(canonical.view(), format);
    EXPECT_EQ(c.layout.in_features, 16);
    EXPECT_EQ(c.layout.out_features, 8);
    EXPECT_EQ(c.layout.bits, 4);
    EXPECT_EQ(c.layout.group_size, 8);
    EXPECT_FALSE(c.sym);
    EXPECT_FALSE(c.desc_act);
    ASSERT_EQ(c.qweight.size(), 16u);
    for (int r = 0; r < 2; ++r) {
      for (int n = 0; n < 8; ++n) {
        EXPECT_EQ(word_bits(c.qweight[static_cast<std::size_t>(r * 8 + n)]), kHandQweight[r][n])
            << "r " << r << " n " << n;
      }
    }
    ASSERT_EQ(c.qzeros.size(), 2u);
    if (format == ZeroFormat::v1) {
      EXPECT_EQ(word_bits(c.qzeros[0]), 0x76543210u);  // the minus one: z - 1
      EXPECT_EQ(word_bits(c.qzeros[1]), 0xBA987654u);
    } else {
      EXPECT_EQ(word_bits(c.qzeros[0]), 0x87654321u);
      EXPECT_EQ(word_bits(c.qzeros[1]), 0xCBA98765u);
    }
    // scales [g][n] = s(n, g); g_idx = k / 8.
    for (int g = 0; g < 2; ++g) {
      for (int n = 0; n < 8; ++n) {
        EXPECT_EQ(nibble::to_float(c.scales[static_cast<std::size_t>(g * 8 + n)]),
                  0.5f + float(n) + 0.25f * float(g));
      }
    }
    for (int k = 0; k < 16; ++k)
      EXPECT_EQ(c.g_idx[static_cast<std::size_t>(k)], k / 8);
    // And back, byte for byte.
    gptq::ImportOptions options;
    options.symmetry = gptq::Symmetry::asymmetric;
    expect_same_tensor(gptq::from_gptq(c.view(), options), canonical);
    EXPECT_EQ(dequantize_checkpoint(c), nibble::dequantize(canonical));
  }
}

// Symmetric: the zero point 2^(bits-1) is stored like any other (v1: minus one).
//   4-bit, the tensor above: every v1 field 8 - 1 = 7 -> 0x77777777; v2 0x88888888.
TEST(GptqFormat, HandDerivedSymmetricZeros) {
  const auto canonical = hand_tensor<float>(true);
  const auto v1 = gptq::to_gptq(canonical.view(), ZeroFormat::v1);
  const auto v2 = gptq::to_gptq(canonical.view(), ZeroFormat::v2);
  EXPECT_TRUE(v1.sym);
  for (int32_t word : v1.qzeros)
    EXPECT_EQ(word_bits(word), 0x77777777u);
  for (int32_t word : v2.qzeros)
    EXPECT_EQ(word_bits(word), 0x88888888u);
  for (int r = 0; r < 2; ++r) {
    for (int n = 0; n < 8; ++n)
      EXPECT_EQ(word_bits(v1.qweight[static_cast<std::size_t>(r * 8 + n)]), kHandQweight[r][n]);
  }
  // detect: every zero is the midpoint -> symmetric again, identical bytes.
  expect_same_tensor(gptq::from_gptq(v1.view()), canonical);
  expect_same_tensor(gptq::from_gptq(v2.view()), canonical);
  EXPECT_EQ(dequantize_checkpoint(v1), nibble::dequantize(canonical));
}

// 8 bits, N = 4, K = 4, G = 4 (pack = 4): q(n, k) = 16n + k, byte t of qweight[0, n] = 16n + t:
//   n = 0: 0x03020100, n = 1: 0x13121110, n = 2: 0x23222120, n = 3: 0x33323130.
//   symmetric zero 128: v1 stores 127 in each byte of qzeros[0, 0] -> 0x7F7F7F7F; v2 0x80808080.
TEST(GptqFormat, HandDerivedWords8Bit) {
  const auto canonical = make_tensor<float>(
      4, 4, QuantConfig{8, 4, true}, [](int64_t n, int64_t k) { return int(16 * n + k); },
      [](int64_t, int64_t) { return 128; }, [](int64_t n, int64_t) { return 1.0f + float(n); });
  const auto v1 = gptq::to_gptq(canonical.view(), ZeroFormat::v1);
  const uint32_t expected[4] = {0x03020100u, 0x13121110u, 0x23222120u, 0x33323130u};
  ASSERT_EQ(v1.qweight.size(), 4u);
  for (int n = 0; n < 4; ++n)
    EXPECT_EQ(word_bits(v1.qweight[static_cast<std::size_t>(n)]), expected[n]);
  ASSERT_EQ(v1.qzeros.size(), 1u);
  EXPECT_EQ(word_bits(v1.qzeros[0]), 0x7F7F7F7Fu);
  EXPECT_EQ(word_bits(gptq::to_gptq(canonical.view(), ZeroFormat::v2).qzeros[0]), 0x80808080u);
  expect_same_tensor(gptq::from_gptq(v1.view()), canonical);
}

// 2 bits, N = 16, K = 16, per-channel (pack = 16, qweight [1, 16], qzeros [1, 1]):
//   q(n, k) = (k + n) mod 4, so qweight[0, n] repeats one byte holding 2-bit fields
//   (n mod 4, n + 1, n + 2, n + 3 mod 4) from bit 0:  n = 0: 0|1<<2|2<<4|3<<6 = 0xE4,
//   n = 1: 1|2<<2|3<<4|0<<6 = 0x39,  n = 2: 2|3<<2|0|1<<6 = 0x4E,  n = 3: 3|0|1<<4|2<<6 = 0x93.
//   symmetric zero 2: v1 fields 1 -> 0x55555555; v2 fields 2 -> 0xAAAAAAAA.
TEST(GptqFormat, HandDerivedWords2BitPerChannel) {
  const auto canonical = make_tensor<fp16>(
      16, 16, QuantConfig{2, nibble::kPerChannel, true},
      [](int64_t n, int64_t k) { return int((k + n) % 4); }, [](int64_t, int64_t) { return 2; },
      [](int64_t n, int64_t) { return 0.125f * float(n + 1); });
  const auto v1 = gptq::to_gptq(canonical.view(), ZeroFormat::v1);
  EXPECT_EQ(v1.layout.group_size, nibble::kPerChannel);
  const uint32_t expected[4] = {0xE4E4E4E4u, 0x39393939u, 0x4E4E4E4Eu, 0x93939393u};
  ASSERT_EQ(v1.qweight.size(), 16u);
  for (int n = 0; n < 16; ++n)
    EXPECT_EQ(word_bits(v1.qweight[static_cast<std::size_t>(n)]), expected[n % 4]) << n;
  ASSERT_EQ(v1.qzeros.size(), 1u);
  EXPECT_EQ(word_bits(v1.qzeros[0]), 0x55555555u);
  EXPECT_EQ(word_bits(gptq::to_gptq(canonical.view(), ZeroFormat::v2).qzeros[0]), 0xAAAAAAAAu);
  expect_same_tensor(gptq::from_gptq(v1.view()), canonical);
  EXPECT_EQ(dequantize_checkpoint(v1), nibble::dequantize(canonical));
}

// ---- round trips -------------------------------------------------------------------------------

template <class ScaleT>
void round_trip_all() {
  uint32_t seed = 1;
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (const auto& [n_outputs, k] :
           std::vector<std::pair<int64_t, int64_t>>{{16, 32}, {48, 64}, {32, 96}}) {
        for (int64_t group : {int64_t{8}, int64_t{16}, int64_t{32}, nibble::kPerChannel}) {
          if (group != nibble::kPerChannel && k % group != 0) continue;
          for (ZeroFormat format : {ZeroFormat::v1, ZeroFormat::v2}) {
            SCOPED_TRACE("bits " + std::to_string(bits) + (symmetric ? " sym" : " asym") + " N " +
                         std::to_string(n_outputs) + " K " + std::to_string(k) + " G " +
                         std::to_string(group) + (format == ZeroFormat::v1 ? " v1" : " v2") + " " +
                         nibble::type_name<ScaleT>());
            const QuantConfig config{bits, group, symmetric};
            // v1 cannot store zero point 0 (tested below): draw zeros from 1 for it.
            const auto canonical = random_tensor<ScaleT>(n_outputs, k, config, seed++,
                                                         format == ZeroFormat::v1 ? 1 : 0);
            const auto c = gptq::to_gptq(canonical.view(), format);
            EXPECT_EQ(c.sym, symmetric);
            gptq::ImportOptions options;  // as quantize_config.json "sym" would say
            options.symmetry = symmetric ? gptq::Symmetry::symmetric : gptq::Symmetry::asymmetric;
            expect_same_tensor(gptq::from_gptq(c.view(), options), canonical);
            ASSERT_EQ(dequantize_checkpoint(c), nibble::dequantize(canonical));
            // The permuted import of a trivial g_idx is the identity.
            const auto permuted = gptq::from_gptq_permuted(c.view(), options);
            expect_same_tensor(permuted.tensor, canonical);
            for (int64_t j = 0; j < k; ++j)
              ASSERT_EQ(permuted.permutation[static_cast<std::size_t>(j)], j);
          }
        }
      }
    }
  }
}

TEST(GptqFormat, RoundTripFloatScales) {
  round_trip_all<float>();
}
TEST(GptqFormat, RoundTripFp16Scales) {
  round_trip_all<fp16>();
}

// Tensors from nibble's quantizer, including the ort convention (zero-point pad slots = 8, odd
// group count) and a symmetric tensor imported with Symmetry::detect.
TEST(GptqFormat, RoundTripQuantizerOutput) {
  for (ConventionId convention : {ConventionId::olive, ConventionId::ort}) {
    for (bool symmetric : {false, true}) {
      const Shape shape{24, 96};
      const std::vector<float> weights = nibble::testing::gaussian(shape.numel(), 5);
      const QuantConfig config{4, 32, symmetric, convention};
      const auto canonical =
          nibble::quantize<fp16>(TensorView<const float>(weights.data(), shape), config);
      const auto c = gptq::to_gptq(canonical.view(), ZeroFormat::v2);
      gptq::ImportOptions options;
      options.convention = convention;
      options.symmetry = symmetric ? gptq::Symmetry::detect : gptq::Symmetry::asymmetric;
      expect_same_tensor(gptq::from_gptq(c.view(), options), canonical);
      EXPECT_EQ(dequantize_checkpoint(c), nibble::dequantize(canonical));
    }
  }
}

// ---- act-order: g_idx from a GptqResult --------------------------------------------------------

TEST(GptqFormat, GIdxCarriedThroughFromGptqResult) {
  const int64_t n_outputs = 16;
  const int64_t k = 64;
  const std::vector<float> weights = nibble::testing::gaussian(n_outputs * k, 11);
  // Calibration inputs with very different per-column scales, so act_order permutes.
  std::vector<float> x = nibble::testing::gaussian(128 * k, 12);
  for (int64_t t = 0; t < 128; ++t) {
    for (int64_t col = 0; col < k; ++col)
      x[static_cast<std::size_t>(t * k + col)] *= 0.1f + float((col * 37) % k) / 8.0f;
  }
  nibble::GptqHessian hessian(k);
  hessian.add_batch(TensorView<const float>(x.data(), Shape{128, k}));
  nibble::GptqOptions gptq_options;
  gptq_options.act_order = true;
  for (int bits : {4, 8}) {
    SCOPED_TRACE("bits " + std::to_string(bits));
    const auto result =
        nibble::gptq_quantize<fp16>(TensorView<const float>(weights.data(), Shape{n_outputs, k}),
                                    QuantConfig{bits, 16, false}, {hessian}, gptq_options);
    ASSERT_EQ(result.g_idx.size(), static_cast<std::size_t>(k));
    bool trivial = true;
    for (int64_t col = 0; col < k; ++col)
      trivial = trivial && result.g_idx[static_cast<std::size_t>(col)] == col / 16;
    ASSERT_FALSE(trivial) << "the test data should make act_order change group membership";

    const auto c = gptq::to_gptq(result, ZeroFormat::v2);
    EXPECT_TRUE(c.desc_act);
    EXPECT_EQ(c.g_idx, result.g_idx);
    EXPECT_EQ(dequantize_checkpoint(c), nibble::dequantize_gptq(result));

    // Into the canonical layout: refused as is, or reordered with the permutation.
    expect_error([&] { gptq::from_gptq(c.view()); }, ErrorCode::unsupported, "from_gptq_permuted");
    gptq::ImportOptions options;
    options.symmetry = gptq::Symmetry::asymmetric;
    const auto permuted = gptq::from_gptq_permuted(c.view(), options);
    const std::vector<float> expected = nibble::dequantize_gptq(result);
    const std::vector<float> reordered = nibble::dequantize(permuted.tensor);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t source = permuted.permutation[static_cast<std::size_t>(j)];
      EXPECT_EQ(c.g_idx[static_cast<std::size_t>(source)], j / 16);
      for (int64_t n = 0; n < n_outputs; ++n) {
        ASSERT_EQ(reordered[static_cast<std::size_t>(n * k + j)],
                  expected[static_cast<std::size_t>(n * k + source)]);
      }
    }
  }
}

// ---- errors ------------------------------------------------------------------------------------

TEST(GptqFormat, BadInputErrors) {
  // bits: 3 is GPTQ's, not nibble's.
  expect_error(
      [] {
        gptq::Layout{64, 64, 3, 32, ZeroFormat::v1}.validate();
      },
      ErrorCode::unsupported, "bits = 3 is not supported");
  expect_error(
      [] {
        gptq::Layout{64, 64, 5, 32, ZeroFormat::v1}.validate();
      },
      ErrorCode::invalid_argument, "expected 2, 4 or 8");
  // Canonical tensors GPTQ cannot hold.
  const auto partial = random_tensor<float>(8, 40, QuantConfig{4, 16, false}, 1, 1);
  expect_error([&] { gptq::to_gptq(partial.view()); }, ErrorCode::unsupported,
               "K = 40 is not a multiple of group_size 16");
  const auto short_k = random_tensor<float>(16, 8, QuantConfig{2, 8, false}, 1, 1);
  expect_error([&] { gptq::to_gptq(short_k.view()); }, ErrorCode::unsupported,
               "in_features K = 8 is not a multiple of 16");
  const auto narrow = random_tensor<float>(4, 16, QuantConfig{4, 8, false}, 1, 1);
  expect_error([&] { gptq::to_gptq(narrow.view()); }, ErrorCode::unsupported,
               "out_features N = 4 is not a multiple of 8");
  const auto experts = nibble::quantize<float>(
      TensorView<const float>(nibble::testing::gaussian(2 * 8 * 16, 1).data(), Shape{2, 8, 16}),
      QuantConfig{4, 8, false});
  expect_error([&] { gptq::to_gptq(experts.view()); }, ErrorCode::shape_mismatch,
               "expected [N, K]");
  // Zero point 0 has no v1 encoding.
  const auto zero_zero = make_tensor<float>(
      8, 16, QuantConfig{4, 8, false}, [](int64_t, int64_t) { return 3; },
      [](int64_t n, int64_t g) { return n == 5 && g == 1 ? 0 : 4; },
      [](int64_t, int64_t) { return 1.0f; });
  expect_error([&] { gptq::to_gptq(zero_zero.view(), ZeroFormat::v1); }, ErrorCode::unsupported,
               "output 5, group 1 has zero point 0");
  EXPECT_NO_THROW(gptq::to_gptq(zero_zero.view(), ZeroFormat::v2));
  // g_idx given with the wrong length or out of range.
  const auto good = hand_tensor<float>(false);
  expect_error([&] { gptq::to_gptq(good.view(), ZeroFormat::v1, std::vector<int32_t>(15, 0)); },
               ErrorCode::shape_mismatch, "g_idx holds 15 entries (expected K = 16)");
  std::vector<int32_t> bad_g_idx(16, 0);
  bad_g_idx[3] = 2;
  expect_error([&] { gptq::to_gptq(good.view(), ZeroFormat::v1, bad_g_idx); },
               ErrorCode::invalid_argument, "g_idx[3] = 2 (expected a group in [0, 2))");

  // Checkpoints nibble cannot read.
  auto c = gptq::to_gptq(good.view(), ZeroFormat::v1);
  {
    auto view = c.view();
    view.qweight_count = 15;
    expect_error([&] { gptq::from_gptq(view); }, ErrorCode::shape_mismatch,
                 "qweight holds 15 elements but the layout needs exactly 16");
    view = c.view();
    view.scales = nullptr;
    expect_error([&] { gptq::from_gptq(view); }, ErrorCode::null_pointer, "scales is null");
  }
  {
    auto broken = c;
    broken.qzeros[1] = static_cast<int32_t>(0xBA98F654u);  // group 1, field 3 (was 6) = 15
    expect_error([&] { gptq::from_gptq(broken.view()); }, ErrorCode::unsupported,
                 "qzeros field of output 3, group 1 is 15, a v1 zero point of 16, outside nibble's "
                 "codes 0 .. 15");
    gptq::ImportOptions options;
    options.symmetry = gptq::Symmetry::symmetric;
    expect_error([&] { gptq::from_gptq(c.view(), options); }, ErrorCode::invalid_argument,
                 "zero point of output 0, group 0 is 1 (expected 2^(bits-1) = 8");
  }
  {
    auto act_order = c;
    act_order.g_idx = {0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1};  // columns 7 and 8 swapped
    expect_error(
        [&] { gptq::from_gptq(act_order.view()); }, ErrorCode::unsupported,
        "g_idx[7] = 1 but the canonical layout needs column k in group k / group_size = 0");
    EXPECT_NO_THROW(gptq::from_gptq_permuted(act_order.view()));
    act_order.g_idx[0] = 1;  // 7 columns in group 0, 9 in group 1
    expect_error([&] { gptq::from_gptq_permuted(act_order.view()); }, ErrorCode::unsupported,
                 "g_idx puts 7 input columns in group 0 (expected exactly group_size = 8");
    act_order.g_idx[0] = -1;
    expect_error([&] { gptq::from_gptq_permuted(act_order.view()); }, ErrorCode::invalid_argument,
                 "g_idx[0] = -1");
  }
  // A file's tensors: dtype and shape.
  const gptq::Layout layout{4096, 11008, 4, 128, ZeroFormat::v1};
  EXPECT_NO_THROW(layout.check_tensor("qweight", nibble::DType::i32, {512, 11008}));
  EXPECT_NO_THROW(layout.check_tensor("qzeros", nibble::DType::i32, {32, 1376}));
  EXPECT_NO_THROW(layout.check_tensor("scales", nibble::DType::f16, {32, 11008}));
  EXPECT_NO_THROW(layout.check_tensor("g_idx", nibble::DType::i32, {4096}));
  expect_error(
      [&] {
        layout.check_tensor("qweight", nibble::DType::f32, {512, 11008});
      },
      ErrorCode::type_mismatch, "qweight has dtype F32 (4 bytes per element)");
  expect_error(
      [&] {
        layout.check_tensor("scales", nibble::DType::f32, {32, 11008});
      },
      ErrorCode::type_mismatch, "needs F16 (2 bytes)");
  expect_error(
      [&] {
        layout.check_tensor("qzeros", nibble::DType::i32, {32, 11008});
      },
      ErrorCode::shape_mismatch, "qzeros has shape [32, 11008] but the layout needs [32, 1376]");
}

}  // namespace
