// Fused projections (formats/fused.hpp): split / merge in the canonical, GPTQ and AWQ layouts.
// The truths: split(merge(x)) == x and merge(split(x)) == x bit for bit; the canonical axis
// (rows) and the checkpoint axis (columns) agree through to_gptq / to_awq; and a fused tensor
// dequantizes to the concatenation of its parts' weights.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "nibble/formats/fused.hpp"
#include "nibble/quantizer.hpp"
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
namespace fused = nibble::fused;
namespace gptq = nibble::gptq;
namespace awq = nibble::awq;
using nibble::testing::expect_error;
using nibble::testing::same_bytes;

template <class ScaleT>
QuantTensor<ScaleT> quantized(int64_t rows, int64_t k, const QuantConfig& config, uint32_t seed) {
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, seed, 0.05f);
  return nibble::quantize<ScaleT>(TensorView<const float>(weights.data(), Shape{rows, k}), config);
}

// The parts as merge takes them: a vector of pointers (a braced list with an explicit ScaleT would
// be ambiguous between the three layouts' overloads).
template <class T, class... Rest>
std::vector<const T*> list_of(const T* first, Rest... rest) {
  return {first, rest...};
}

template <class ScaleT>
void expect_same(const QuantTensor<ScaleT>& a, const QuantTensor<ScaleT>& b) {
  nibble::testing::expect_same_tensor(a, b);
}

template <class ScaleT>
void expect_same(const gptq::Checkpoint<ScaleT>& a, const gptq::Checkpoint<ScaleT>& b) {
  EXPECT_EQ(a.layout.in_features, b.layout.in_features);
  EXPECT_EQ(a.layout.out_features, b.layout.out_features);
  EXPECT_EQ(a.layout.bits, b.layout.bits);
  EXPECT_EQ(a.layout.group_size, b.layout.group_size);
  EXPECT_EQ(a.layout.zero_format, b.layout.zero_format);
  EXPECT_EQ(a.sym, b.sym);
  EXPECT_EQ(a.desc_act, b.desc_act);
  EXPECT_EQ(a.qweight, b.qweight);
  EXPECT_EQ(a.qzeros, b.qzeros);
  EXPECT_EQ(a.g_idx, b.g_idx);
  EXPECT_TRUE(same_bytes(a.scales, b.scales));
}

template <class ScaleT>
void expect_same(const awq::Checkpoint<ScaleT>& a, const awq::Checkpoint<ScaleT>& b) {
  EXPECT_EQ(a.layout.in_features, b.layout.in_features);
  EXPECT_EQ(a.layout.out_features, b.layout.out_features);
  EXPECT_EQ(a.layout.group_size, b.layout.group_size);
  EXPECT_EQ(a.qweight, b.qweight);
  EXPECT_EQ(a.qzeros, b.qzeros);
  EXPECT_TRUE(same_bytes(a.scales, b.scales));
}

// GQA qkv: q 64, k 16, v 16 outputs; gate_up: 48 + 48.
const std::vector<std::vector<int64_t>> kPartRows = {{64, 16, 16}, {48, 48}, {32}};

template <class ScaleT>
void check_canonical(const QuantConfig& config, int64_t k) {
  for (const std::vector<int64_t>& rows : kPartRows) {
    SCOPED_TRACE("bits " + std::to_string(config.bits) + " G " + std::to_string(config.group_size) +
                 " sym " + std::to_string(config.symmetric) + " K " + std::to_string(k) +
                 " parts " + std::to_string(rows.size()));
    std::vector<QuantTensor<ScaleT>> parts;
    for (std::size_t p = 0; p < rows.size(); ++p)
      parts.push_back(quantized<ScaleT>(rows[p], k, config, static_cast<uint32_t>(11 + p)));
    std::vector<const QuantTensor<ScaleT>*> pointers;
    for (const QuantTensor<ScaleT>& part : parts)
      pointers.push_back(&part);

    const QuantTensor<ScaleT> merged = fused::merge(pointers);
    int64_t total = 0;
    for (int64_t r : rows)
      total += r;
    EXPECT_EQ(merged.shape(), (Shape{total, k}));

    // split(merge(x)) == x
    const std::vector<QuantTensor<ScaleT>> back = fused::split(merged, rows);
    ASSERT_EQ(back.size(), parts.size());
    for (std::size_t p = 0; p < parts.size(); ++p)
      expect_same(back[p], parts[p]);

    // merge(split(x)) == x, for a tensor quantized as one
    const QuantTensor<ScaleT> whole = quantized<ScaleT>(total, k, config, 99);
    const std::vector<QuantTensor<ScaleT>> pieces = fused::split(whole, rows);
    std::vector<const QuantTensor<ScaleT>*> piece_pointers;
    for (const QuantTensor<ScaleT>& piece : pieces)
      piece_pointers.push_back(&piece);
    expect_same(fused::merge(piece_pointers), whole);

    // dequant(merge(parts)) == concat(dequant(part))
    std::vector<float> expected;
    for (const QuantTensor<ScaleT>& part : parts) {
      const std::vector<float> values = nibble::dequantize(part);
      expected.insert(expected.end(), values.begin(), values.end());
    }
    EXPECT_TRUE(same_bytes(nibble::dequantize(merged), expected));
  }
}

TEST(FusedCanonical, RoundTripsAndDequantizes_Bits248_SymAsym_KOddGroups) {
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      // K = 100 with G = 32: 4 groups, 28 pad codes per row; K = 64 whole groups; per-channel.
      check_canonical<float>(QuantConfig{bits, 32, symmetric, ConventionId::olive}, 100);
      check_canonical<fp16>(QuantConfig{bits, 32, symmetric, ConventionId::ort}, 100);
      check_canonical<fp16>(QuantConfig{bits, 16, symmetric, ConventionId::olive}, 64);
      check_canonical<float>(QuantConfig{bits, nibble::kPerChannel, symmetric}, 37);
    }
  }
}

template <class ScaleT>
void check_gptq(int bits, bool symmetric, gptq::ZeroFormat zero_format) {
  const QuantConfig config{bits, 32, symmetric, ConventionId::olive};
  const int64_t k = 128;
  for (const std::vector<int64_t>& rows : kPartRows) {
    SCOPED_TRACE("GPTQ bits " + std::to_string(bits) + " sym " + std::to_string(symmetric) +
                 " parts " + std::to_string(rows.size()));
    std::vector<QuantTensor<ScaleT>> parts;
    std::vector<gptq::Checkpoint<ScaleT>> checkpoints;
    for (std::size_t p = 0; p < rows.size(); ++p) {
      parts.push_back(quantized<ScaleT>(rows[p], k, config, static_cast<uint32_t>(21 + p)));
      checkpoints.push_back(gptq::to_gptq(parts.back().view(), zero_format));
    }
    std::vector<const QuantTensor<ScaleT>*> part_pointers;
    std::vector<const gptq::Checkpoint<ScaleT>*> checkpoint_pointers;
    for (std::size_t p = 0; p < rows.size(); ++p) {
      part_pointers.push_back(&parts[p]);
      checkpoint_pointers.push_back(&checkpoints[p]);
    }
    const gptq::Checkpoint<ScaleT> merged = fused::merge(checkpoint_pointers);
    // The two axes agree: to_gptq(merge rows) == merge columns(to_gptq).
    expect_same(gptq::to_gptq(fused::merge(part_pointers).view(), zero_format), merged);
    // split(merge(x)) == x
    const std::vector<gptq::Checkpoint<ScaleT>> back = fused::split(merged, rows);
    ASSERT_EQ(back.size(), checkpoints.size());
    for (std::size_t p = 0; p < rows.size(); ++p)
      expect_same(back[p], checkpoints[p]);
    // merge(split(x)) == x
    std::vector<const gptq::Checkpoint<ScaleT>*> back_pointers;
    for (const gptq::Checkpoint<ScaleT>& piece : back)
      back_pointers.push_back(&piece);
    expect_same(fused::merge(back_pointers), merged);
    // Importing the fused checkpoint gives the fused canonical tensor.
    gptq::ImportOptions options;
    options.symmetry =
        symmetric ? nibble::formats::Symmetry::symmetric : nibble::formats::Symmetry::asymmetric;
    expect_same(gptq::from_gptq(merged.view(), options), fused::merge(part_pointers));
  }
}

TEST(FusedGptq, AxesAgreeAndRoundTrip_Bits248_SymAsym_V1V2_K128xG32) {
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      check_gptq<fp16>(bits, symmetric, gptq::ZeroFormat::v2);
      check_gptq<float>(bits, symmetric, gptq::ZeroFormat::v2);
    }
    check_gptq<fp16>(bits, true, gptq::ZeroFormat::v1);  // symmetric zeros are >= 1: v1-safe
  }
}

TEST(FusedGptq, ActOrderGIdxIsCarried) {
  const QuantConfig config{4, 32, false, ConventionId::olive};
  const QuantTensor<fp16> q = quantized<fp16>(16, 64, config, 1);
  const QuantTensor<fp16> v = quantized<fp16>(8, 64, config, 2);
  std::vector<int32_t> g_idx(64);
  for (std::size_t col = 0; col < g_idx.size(); ++col)
    g_idx[col] = static_cast<int32_t>(col % 2);  // act-order: groups interleaved
  const gptq::Checkpoint<fp16> cq = gptq::to_gptq(q.view(), gptq::ZeroFormat::v2, g_idx);
  const gptq::Checkpoint<fp16> cv = gptq::to_gptq(v.view(), gptq::ZeroFormat::v2, g_idx);
  const gptq::Checkpoint<fp16> merged = fused::merge(list_of(&cq, &cv));
  EXPECT_TRUE(merged.desc_act);
  EXPECT_EQ(merged.g_idx, g_idx);
  const std::vector<gptq::Checkpoint<fp16>> back = fused::split(merged, {16, 8});
  expect_same(back[0], cq);
  expect_same(back[1], cv);
}

template <class ScaleT>
void check_awq(bool symmetric, int64_t group_size) {
  const QuantConfig config{4, group_size, symmetric, ConventionId::olive};
  const int64_t k = 96;
  for (const std::vector<int64_t>& rows : kPartRows) {
    SCOPED_TRACE("AWQ sym " + std::to_string(symmetric) + " G " + std::to_string(group_size) +
                 " parts " + std::to_string(rows.size()));
    std::vector<QuantTensor<ScaleT>> parts;
    std::vector<awq::Checkpoint<ScaleT>> checkpoints;
    for (std::size_t p = 0; p < rows.size(); ++p) {
      parts.push_back(quantized<ScaleT>(rows[p], k, config, static_cast<uint32_t>(31 + p)));
      checkpoints.push_back(awq::to_awq(parts.back().view()));
    }
    std::vector<const QuantTensor<ScaleT>*> part_pointers;
    std::vector<const awq::Checkpoint<ScaleT>*> checkpoint_pointers;
    for (std::size_t p = 0; p < rows.size(); ++p) {
      part_pointers.push_back(&parts[p]);
      checkpoint_pointers.push_back(&checkpoints[p]);
    }
    const awq::Checkpoint<ScaleT> merged = fused::merge(checkpoint_pointers);
    expect_same(awq::to_awq(fused::merge(part_pointers).view()), merged);
    const std::vector<awq::Checkpoint<ScaleT>> back = fused::split(merged, rows);
    ASSERT_EQ(back.size(), checkpoints.size());
    for (std::size_t p = 0; p < rows.size(); ++p)
      expect_same(back[p], checkpoints[p]);
    std::vector<const awq::Checkpoint<ScaleT>*> back_pointers;
    for (const awq::Checkpoint<ScaleT>& piece : back)
      back_pointers.push_back(&piece);
    expect_same(fused::merge(back_pointers), merged);
    // The fused checkpoint dequantizes to the parts' weights side by side.
    awq::ImportOptions options;
    options.symmetry =
        symmetric ? nibble::formats::Symmetry::symmetric : nibble::formats::Symmetry::asymmetric;
    std::vector<float> expected;
    for (const QuantTensor<ScaleT>& part : parts) {
      const std::vector<float> values = nibble::dequantize(part);
      expected.insert(expected.end(), values.begin(), values.end());
    }
    EXPECT_TRUE(same_bytes(nibble::dequantize(awq::from_awq(merged.view(), options)), expected));
  }
}

TEST(FusedAwq, AxesAgreeAndRoundTrip_SymAsym_K96) {
  for (bool symmetric : {false, true}) {
    check_awq<fp16>(symmetric, 32);
    check_awq<float>(symmetric, nibble::kPerChannel);
  }
}

// ---- errors -----------------------------------------------------------------------------------

TEST(FusedErrors, CanonicalMergeNamesPartAndField) {
  const QuantConfig config{4, 32, false, ConventionId::olive};
  const QuantTensor<float> a = quantized<float>(8, 64, config, 1);
  const QuantTensor<float> other_k = quantized<float>(8, 96, config, 2);
  const QuantTensor<float> other_bits = quantized<float>(8, 64, QuantConfig{8, 32, false}, 3);
  const QuantTensor<float> other_group = quantized<float>(8, 64, QuantConfig{4, 16, false}, 4);
  const QuantTensor<float> symmetric = quantized<float>(8, 64, QuantConfig{4, 32, true}, 5);
  const QuantTensor<float> ort =
      quantized<float>(8, 64, QuantConfig{4, 32, false, ConventionId::ort}, 6);
  QuantTensor<float> rank3(Shape{2, 4, 64}, config);

  expect_error([&] { fused::merge(std::vector<const QuantTensor<float>*>{}); },
               ErrorCode::invalid_argument, {"fused::merge", "no parts"});
  expect_error([&] { fused::merge(list_of(&a, nullptr)); }, ErrorCode::null_pointer,
               {"part 1 is null"});
  expect_error([&] { fused::merge(list_of(&a, &a, &other_k)); }, ErrorCode::shape_mismatch,
               {"part 2 has K = 96 but part 0 has K = 64", "same input"});
  expect_error([&] { fused::merge(list_of(&a, &other_bits)); }, ErrorCode::shape_mismatch,
               {"part 1 has bits = 8 but part 0 has bits = 4"});
  expect_error([&] { fused::merge(list_of(&a, &other_group)); }, ErrorCode::shape_mismatch,
               {"part 1 has group_size = 16 but part 0 has group_size = 32"});
  expect_error([&] { fused::merge(list_of(&a, &symmetric)); }, ErrorCode::shape_mismatch,
               {"part 1 has symmetric = true but part 0 has symmetric = false"});
  expect_error([&] { fused::merge(list_of(&a, &ort)); }, ErrorCode::shape_mismatch,
               {"part 1 has convention = ort but part 0 has convention = olive"});
  expect_error([&] { fused::merge(list_of(&a, &rank3)); }, ErrorCode::shape_mismatch,
               {"part 1 has shape [2, 4, 64]", "expected rank 2"});
}

TEST(FusedErrors, CanonicalSplitChecksCountsAndRank) {
  const QuantConfig config{4, 32, false, ConventionId::olive};
  const QuantTensor<float> t = quantized<float>(24, 64, config, 1);
  QuantTensor<float> rank3(Shape{2, 12, 64}, config);
  expect_error(
      [&] {
        fused::split(t, {16, 4});
      },
      ErrorCode::shape_mismatch, {"fused::split", "rows counts [16, 4] sum to 20", "has 24 rows"});
  expect_error(
      [&] {
        fused::split(t, {24, 0});
      },
      ErrorCode::invalid_argument, {"rows count 1 is 0 (expected >= 1)"});
  expect_error([&] { fused::split(t, {}); }, ErrorCode::invalid_argument, {"no rows counts"});
  expect_error(
      [&] {
        fused::split(rank3, {12, 12});
      },
      ErrorCode::shape_mismatch, {"shape [2, 12, 64]", "expected rank 2"});
}

TEST(FusedErrors, GptqWordsMustNotStraddleAndGIdxMustMatch) {
  const QuantConfig config{4, 32, false, ConventionId::olive};
  const gptq::Checkpoint<fp16> a =
      gptq::to_gptq(quantized<fp16>(16, 64, config, 1).view(), gptq::ZeroFormat::v2);
  gptq::Checkpoint<fp16> straddling = a;  // 12 outputs: 1.5 qzeros words at 4 bits
  straddling.layout.out_features = 12;
  expect_error([&] { fused::merge(list_of(&a, &straddling)); }, ErrorCode::unsupported,
               {"fused::merge (GPTQ)", "part 1 has out_features N = 12, not a multiple of 8",
                "every part's N must be a multiple of 8"});

  gptq::Checkpoint<fp16> permuted = a;
  std::swap(permuted.g_idx[0], permuted.g_idx[63]);
  expect_error([&] { fused::merge(list_of(&a, &permuted)); }, ErrorCode::shape_mismatch,
               {"part 1 has g_idx[0] = 1 but part 0 has g_idx[0] = 0", "identical"});

  const gptq::Checkpoint<fp16> v1 =
      gptq::to_gptq(quantized<fp16>(16, 64, QuantConfig{4, 32, true}, 2).view());
  gptq::Checkpoint<fp16> v1_asym = v1;
  v1_asym.sym = false;
  expect_error([&] { fused::merge(list_of(&v1, &v1_asym)); }, ErrorCode::shape_mismatch,
               {"part 1 has sym = false but part 0 has sym = true"});
  gptq::Checkpoint<fp16> v2 = v1;
  v2.layout.zero_format = gptq::ZeroFormat::v2;
  expect_error([&] { fused::merge(list_of(&v1, &v2)); }, ErrorCode::shape_mismatch,
               {"zero_format = v2 but part 0 has zero_format = v1"});

  gptq::Checkpoint<fp16> short_scales = a;
  short_scales.scales.pop_back();
  expect_error([&] { fused::merge(list_of(&a, &short_scales)); }, ErrorCode::shape_mismatch,
               {"part 1", "scales holds"});

  expect_error(
      [&] {
        fused::split(a, {12, 4});
      },
      ErrorCode::unsupported,
      {"fused::split (GPTQ)", "outputs count 0 is 12, not a multiple of 8"});
  expect_error(
      [&] {
        fused::split(a, {8, 16});
      },
      ErrorCode::shape_mismatch, {"sum to 24", "has 16 outputs"});
}

TEST(FusedErrors, AwqWordsMustNotStraddle) {
  const QuantConfig config{4, 32, false, ConventionId::olive};
  const awq::Checkpoint<fp16> a = awq::to_awq(quantized<fp16>(16, 64, config, 1).view());
  const awq::Checkpoint<fp16> other_k = awq::to_awq(quantized<fp16>(16, 96, config, 2).view());
  awq::Checkpoint<fp16> straddling = a;
  straddling.layout.out_features = 12;
  expect_error([&] { fused::merge(list_of(&a, &straddling)); }, ErrorCode::unsupported,
               {"fused::merge (AWQ)", "part 1 has out_features N = 12, not a multiple of 8"});
  expect_error([&] { fused::merge(list_of(&a, &other_k)); }, ErrorCode::shape_mismatch,
               {"part 1 has in_features = 96 but part 0 has in_features = 64"});
  expect_error(
      [&] {
        fused::split(a, {4, 12});
      },
      ErrorCode::unsupported, {"fused::split (AWQ)", "outputs count 0 is 4, not a multiple of 8"});
}

}  // namespace
