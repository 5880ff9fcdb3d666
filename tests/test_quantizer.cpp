// WeightQuantizer: the N-D invariant, padding, error bounds, bad input, threads.
// Bit-exactness of each convention against its tool lives in test_conventions.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "nibble/quantizer.hpp"
#include "nibble/solvers/kquant.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::bf16;
using nibble::ConventionId;
using nibble::Error;
using nibble::ErrorCode;
using nibble::fp16;
using nibble::QuantConfig;
using nibble::QuantTensor;
using nibble::Shape;
using nibble::TensorView;

const ConventionId kAllConventions[] = {ConventionId::olive, ConventionId::ort,
                                        ConventionId::ort_gather, ConventionId::ort_weight_only};

template <class ScaleT, class W>
QuantTensor<ScaleT> quantize(const std::vector<W>& weights, const Shape& shape,
                             const QuantConfig& config,
                             const nibble::QuantizeOptions& options = {}) {
  return nibble::quantize<ScaleT>(TensorView<const W>(weights.data(), shape), config, options);
}

template <class ScaleT>
void expect_same_bytes(const QuantTensor<ScaleT>& a, const QuantTensor<ScaleT>& b) {
  EXPECT_EQ(a.qweight(), b.qweight());
  ASSERT_EQ(a.scales().size(), b.scales().size());
  for (std::size_t i = 0; i < a.scales().size(); ++i) {
    ASSERT_EQ(nibble::to_float(a.scales()[i]), nibble::to_float(b.scales()[i])) << i;
  }
  EXPECT_EQ(a.zeros(), b.zeros());
}

std::string describe(const QuantConfig& config) {
  return std::string(nibble::to_string(config.convention)) +
         " bits=" + std::to_string(config.bits) + " group=" + std::to_string(config.group_size) +
         (config.symmetric ? " symmetric" : " asymmetric");
}

// Every (convention, bits, symmetric) with group size `group_size`.
std::vector<QuantConfig> all_configs(int64_t group_size) {
  std::vector<QuantConfig> configs;
  for (ConventionId convention : kAllConventions) {
    for (int bits : {2, 4, 8}) {
      for (bool symmetric : {false, true})
        configs.push_back({bits, group_size, symmetric, convention});
    }
  }
  return configs;
}

TEST(WeightQuantizer, Rank3ExpertsGiveTheBytesOfEachExpertAlone) {
  const Shape experts{3, 5, 37};
  const std::vector<float> weights = nibble::testing::gaussian(experts.numel(), 3);
  for (const QuantConfig& config : all_configs(16)) {
    SCOPED_TRACE(describe(config));
    const auto whole = quantize<fp16>(weights, experts, config);
    QuantTensor<fp16> stitched(experts, config);
    std::vector<uint8_t> qweight;
    std::vector<fp16> scales;
    std::vector<uint8_t> zeros;
    for (int64_t e = 0; e < 3; ++e) {
      const std::vector<float> slice(weights.begin() + e * 185, weights.begin() + (e + 1) * 185);
      const auto alone = quantize<fp16>(slice, Shape{5, 37}, config);
      qweight.insert(qweight.end(), alone.qweight().begin(), alone.qweight().end());
      scales.insert(scales.end(), alone.scales().begin(), alone.scales().end());
      zeros.insert(zeros.end(), alone.zeros().begin(), alone.zeros().end());
    }
    stitched.qweight() = qweight;
    stitched.scales() = scales;
    stitched.zeros() = zeros;
    expect_same_bytes(whole, stitched);
  }
}

TEST(WeightQuantizer, AnyRankFlattensToRows) {
  const std::vector<float> weights = nibble::testing::gaussian(2 * 3 * 2 * 20, 5);
  for (const QuantConfig& config : all_configs(8)) {
    SCOPED_TRACE(describe(config));
    const auto rank4 = quantize<float>(weights, Shape{2, 3, 2, 20}, config);
    const auto rank2 = quantize<float>(weights, Shape{12, 20}, config);
    expect_same_bytes(rank4, rank2);
    EXPECT_EQ(rank4.shape(), (Shape{2, 3, 2, 20}));
    const auto rank1 = quantize<float>(std::vector<float>(weights.begin(), weights.begin() + 20),
                                       Shape{20}, config);
    EXPECT_EQ(rank1.qweight(),
              std::vector<uint8_t>(rank2.qweight().begin(),
                                   rank2.qweight().begin() + rank1.layout().packed_row_bytes));
  }
}

TEST(WeightQuantizer, PadCodesHoldTheZeroPointSoTheyDequantizeToZero) {
  // K = 37, G = 16: group 2 has 5 real elements and 11 pad codes.
  const std::vector<float> weights = nibble::testing::gaussian(4 * 37, 9);
  for (const QuantConfig& config : all_configs(16)) {
    SCOPED_TRACE(describe(config));
    const auto q = quantize<float>(weights, Shape{4, 37}, config);
    const auto view = q.view();
    for (int64_t row = 0; row < 4; ++row) {
      for (int64_t col = 37; col < 48; ++col) {
        ASSERT_EQ(view.code(row, col), view.zero_point(row, 2)) << "row " << row << " col " << col;
      }
    }
  }
}

TEST(WeightQuantizer, PartialGroupStatisticsSeeOnlyWhatTheToolSees) {
  // Group 2 of a K = 37 row (5 real elements) must quantize exactly like those 5 values alone
  // (one group of 5) -- unless the convention's tool pads K with zeros first (ort_weight_only),
  // in which case it must match the 5 values followed by 11 explicit zeros in a group of 16.
  const std::vector<float> weights = nibble::testing::gaussian(37, 12, 2.0f);
  const std::vector<float> tail(weights.begin() + 32, weights.end());
  std::vector<float> tail_zero_padded = tail;
  tail_zero_padded.resize(16, 0.0f);
  for (const QuantConfig& config : all_configs(16)) {
    SCOPED_TRACE(describe(config));
    const auto row = quantize<float>(weights, Shape{37}, config);
    const bool zero_padded =
        nibble::convention(config.convention).pad_statistics == nibble::PadStatistics::zero_padded;
    QuantConfig alone_config = config;
    alone_config.group_size = zero_padded ? 16 : 5;
    const auto alone = zero_padded ? quantize<float>(tail_zero_padded, Shape{16}, alone_config)
                                   : quantize<float>(tail, Shape{5}, alone_config);
    EXPECT_EQ(row.view().scale(0, 2), alone.view().scale(0, 0));
    EXPECT_EQ(row.view().zero_point(0, 2), alone.view().zero_point(0, 0));
    for (int64_t i = 0; i < 5; ++i)
      EXPECT_EQ(row.view().code(0, 32 + i), alone.view().code(0, i));
  }
}

TEST(WeightQuantizer, ErrorStaysWithinOneStepAndTheNamedTolerance) {
  const int64_t rows = 64;
  const int64_t k = 256;
  const std::vector<float> weights = nibble::testing::gaussian_both_signs(rows, k, 32, 17);
  double sum_squares = 0.0;
  for (float value : weights)
    sum_squares += double{value} * value;
  for (const QuantConfig& config : all_configs(32)) {
    SCOPED_TRACE(describe(config));
    const auto q = quantize<float>(weights, Shape{rows, k}, config);
    const std::vector<float> dequantized = nibble::dequantize(q);
    double error_squares = 0.0;
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t col = 0; col < k; ++col) {
        const auto index = static_cast<std::size_t>(row * k + col);
        const double error = double{dequantized[index]} - weights[index];
        error_squares += error * error;
        // Rounding is within half a step; a zero point rounded by half a step can push the range
        // end out by another half: one step in all, for groups holding both signs.
        const double step = std::fabs(q.view().scale(row, col / 32));
        ASSERT_LE(std::fabs(error), step * (1.0 + 1e-6)) << "row " << row << " col " << col;
      }
    }
    EXPECT_LE(std::sqrt(error_squares / sum_squares),
              nibble::testing::rtn_relative_rms_tolerance(config.bits));
  }
}

TEST(WeightQuantizer, NonFiniteWeightsAreRejectedWithTheirIndex) {
  std::vector<float> weights = nibble::testing::gaussian(2 * 3 * 8, 1);
  weights[1 * 24 + 2 * 8 + 5] = std::numeric_limits<float>::quiet_NaN();  // [1, 2, 5]
  try {
    quantize<float>(weights, Shape{2, 3, 8}, QuantConfig{4, 8, false});
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::non_finite);
    const std::string message = error.what();
    EXPECT_NE(message.find("weights[1, 2, 5] = nan"), std::string::npos) << message;
    EXPECT_NE(message.find("replace_with_zero"), std::string::npos) << message;
  }
  std::vector<fp16> half = nibble::testing::converted<fp16>(nibble::testing::gaussian(16, 2));
  half[3] = fp16::from_bits(0xfc00);  // -Inf
  EXPECT_THROW(quantize<float>(half, Shape{16}, QuantConfig{8, 16, true}), Error);
}

TEST(WeightQuantizer, ReplaceWithZeroQuantizesNonFiniteAsZero) {
  std::vector<float> weights = nibble::testing::gaussian(40, 4);
  std::vector<float> with_zero = weights;
  weights[7] = std::numeric_limits<float>::infinity();
  weights[30] = std::numeric_limits<float>::quiet_NaN();
  with_zero[7] = 0.0f;
  with_zero[30] = 0.0f;
  nibble::QuantizeOptions options;
  options.non_finite = nibble::NonFinitePolicy::replace_with_zero;
  for (const QuantConfig& config : all_configs(16)) {
    SCOPED_TRACE(describe(config));
    expect_same_bytes(quantize<float>(weights, Shape{2, 20}, config, options),
                      quantize<float>(with_zero, Shape{2, 20}, config));
  }
}

TEST(WeightQuantizer, ScalesThatOverflowTheScaleTypeAreErrors) {
  // fp32 weights of +-1e6 give a scale of ~1.3e5 at 4 bits: more than fp16's 65504.
  const std::vector<float> huge{-1e6f, 1e6f, 3.0f, 4.0f};
  try {
    quantize<fp16>(huge, Shape{4}, QuantConfig{4, 4, false});
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::non_finite);
    EXPECT_NE(std::string(error.what()).find("float16"), std::string::npos) << error.what();
  }
  EXPECT_NO_THROW(quantize<float>(huge, Shape{4}, QuantConfig{4, 4, false}));
  // fp16 weights +-60000 under Olive's fp16 arithmetic: hi - lo = 120000 overflows fp16.
  const std::vector<fp16> half{nibble::from_float<fp16>(-60000.0f),
                               nibble::from_float<fp16>(60000.0f)};
  EXPECT_THROW(quantize<fp16>(half, Shape{2}, QuantConfig{4, 2, false, ConventionId::olive}),
               Error);
}

// The rows run in an OpenMP region: a failing row's Error must come out of it (not terminate the
// process), and it must be the lowest failing row's, whatever the thread count.
TEST(WeightQuantizer, AFailureInsideTheParallelRowsIsTheLowestRowsError) {
  std::vector<float> weights = nibble::testing::gaussian(64 * 32, 5);
  for (int64_t row : {40, 11, 12, 63}) {
    weights[static_cast<std::size_t>(row * 32 + 3)] = 1e6f;  // a scale fp16 cannot hold
    weights[static_cast<std::size_t>(row * 32 + 4)] = -1e6f;
  }
  for (int threads : {1, 2, 3, 8}) {
    nibble::QuantizeOptions options;
    options.num_threads = threads;
    nibble::KQuantOptions kquant_options;
    kquant_options.num_threads = threads;
    const TensorView<const float> view(weights.data(), Shape{64, 32});
    for (int solver = 0; solver < 2; ++solver) {
      try {
        if (solver == 0) {
          (void)nibble::quantize<fp16>(view, QuantConfig{4, 32, false}, options);
        } else {
          (void)nibble::kquant_quantize<fp16>(view, QuantConfig{4, 32, false}, kquant_options);
        }
        FAIL() << "no error with " << threads << " threads";
      } catch (const Error& error) {
        EXPECT_EQ(error.code(), ErrorCode::non_finite);
        EXPECT_NE(std::string(error.what()).find("row [11, 0] group 0"), std::string::npos)
            << threads << " threads, solver " << solver << ": " << error.what();
      }
    }
  }
}

TEST(WeightQuantizer, ThreadCountDoesNotChangeTheBytes) {
  const std::vector<float> weights = nibble::testing::gaussian(97 * 130, 21);
  for (const QuantConfig& config : all_configs(32)) {
    nibble::QuantizeOptions one;
    one.num_threads = 1;
    nibble::QuantizeOptions two;
    two.num_threads = 2;
    expect_same_bytes(quantize<bf16>(weights, Shape{97, 130}, config, one),
                      quantize<bf16>(weights, Shape{97, 130}, config, two));
  }
}

TEST(WeightQuantizer, TypedAndRuntimeBitsAgreeAndConfigsAreChecked) {
  const std::vector<float> weights = nibble::testing::gaussian(3 * 50, 8);
  const TensorView<const float> view(weights.data(), {3, 50});
  const nibble::WeightQuantizer<2> typed(/*group_size=*/16, /*symmetric=*/true, ConventionId::ort);
  expect_same_bytes(typed.quantize(view), nibble::quantize<float>(view, typed.config()));
  EXPECT_THROW((nibble::WeightQuantizer<4>(QuantConfig{8, 32, false})), Error);
  EXPECT_THROW((nibble::WeightQuantizer<4>(0, false)), Error);
  EXPECT_THROW((nibble::WeightQuantizer<4>(-7, false)), Error);
  nibble::QuantizeOptions negative_threads;
  negative_threads.num_threads = -1;
  EXPECT_THROW((nibble::WeightQuantizer<4>(QuantConfig{4, 32, false}, negative_threads)), Error);
}

TEST(WeightQuantizer, TheScaleTypeNeverChangesACode) {
  // ScaleT is one rounding of the computed scale made after the codes: fp16 scales are the float
  // scales rounded to fp16 (ort_weight_only rounds its double scale once instead) and the codes
  // are the same.
  const std::vector<float> weights = nibble::testing::gaussian(8 * 64, 30);
  for (const QuantConfig& config : all_configs(32)) {
    SCOPED_TRACE(describe(config));
    const auto wide = quantize<float>(weights, Shape{8, 64}, config);
    const auto narrow = quantize<fp16>(weights, Shape{8, 64}, config);
    const auto brain = quantize<bf16>(weights, Shape{8, 64}, config);
    EXPECT_EQ(narrow.qweight(), wide.qweight());
    EXPECT_EQ(brain.qweight(), wide.qweight());
    if (config.convention == ConventionId::ort_weight_only) continue;
    for (std::size_t i = 0; i < wide.scales().size(); ++i) {
      ASSERT_EQ(narrow.scales()[i], nibble::from_float<fp16>(wide.scales()[i])) << i;
    }
  }
}

TEST(WeightQuantizer, OrtCodesFp16WeightsWithTheFp16Scale) {
  // MLAS's fp16 path codes with the scale rounded to fp16; its fp32 path (also used for bf16
  // weights) with the fp32 scale. Over many groups the two must differ somewhere, and the fp16
  // path must equal coding the fp16 weights' float values with the fp16-rounded scale.
  const std::vector<float> values = nibble::testing::gaussian(64 * 128, 31);
  const std::vector<fp16> half = nibble::testing::converted<fp16>(values);
  std::vector<float> half_as_float;
  for (fp16 value : half)
    half_as_float.push_back(nibble::to_float(value));
  const QuantConfig config{4, 32, false, ConventionId::ort};
  const auto from_half = quantize<fp16>(half, Shape{64, 128}, config);
  const auto from_float = quantize<float>(half_as_float, Shape{64, 128}, config);
  EXPECT_NE(from_half.qweight(), from_float.qweight());
  for (std::size_t i = 0; i < from_half.scales().size(); ++i) {
    ASSERT_EQ(from_half.scales()[i], nibble::from_float<fp16>(from_float.scales()[i])) << i;
  }
}

TEST(WeightQuantizer, AcceptsFp16AndBf16WeightsAndTinyShapes) {
  for (const Shape& shape : {Shape{1}, Shape{1, 1}, Shape{5, 1}, Shape{1, 17}, Shape{2, 1, 3}}) {
    const std::vector<float> values = nibble::testing::gaussian(shape.numel(), 40);
    for (const QuantConfig& config : all_configs(4)) {
      SCOPED_TRACE(describe(config) + " shape " + shape.to_string());
      const auto from_half =
          quantize<fp16>(nibble::testing::converted<fp16>(values), shape, config);
      const auto from_brain =
          quantize<bf16>(nibble::testing::converted<bf16>(values), shape, config);
      EXPECT_EQ(from_half.shape(), shape);
      EXPECT_EQ(from_brain.scales().size(),
                static_cast<std::size_t>(shape.rows() * ((shape.last() + 3) / 4)));
      const std::vector<float> back = nibble::dequantize(from_half);
      ASSERT_EQ(back.size(), static_cast<std::size_t>(shape.numel()));
      for (float value : back)
        ASSERT_TRUE(std::isfinite(value));
    }
  }
}

}  // namespace

namespace {

// The worked example in docs/formats.md, derived by hand in fp32 (Olive convention, 4-bit
// asymmetric, G = 4, one row of K = 5):
//  group 0 [0.1, -0.2, 0.3, 0.7]: lo = -0.2, hi = 0.7, scale = fl(fl(0.9) / 15) = 0.06f,
//    zero = round(0.2 / 0.06) = round(3.33) = 3; codes round(x / 0.06 + 3) = 5, 0 (from -0.33),
//    8, 15 (from 14.67)
//  group 1 [-0.5] + 3 pads: lo = -0.5, hi = 0, scale = fl(0.5 / 15), zero = round(15.0) = 15;
//    code round(-15 + 15) = 0; the pads hold the zero point 15
//  bytes: 5 | 0 << 4 = 0x05, 8 | 15 << 4 = 0xf8, 0 | 15 << 4 = 0xf0, 15 | 15 << 4 = 0xff;
//  zeros: 3 | 15 << 4 = 0xf3.
TEST(WeightQuantizer, DocsWorkedExample) {
  const std::vector<float> row{0.1f, -0.2f, 0.3f, 0.7f, -0.5f};
  const auto q = quantize<float>(row, Shape{5}, QuantConfig{4, 4, false, ConventionId::olive});
  EXPECT_EQ(q.qweight(), (std::vector<uint8_t>{0x05, 0xf8, 0xf0, 0xff}));
  EXPECT_EQ(q.zeros(), (std::vector<uint8_t>{0xf3}));
  EXPECT_EQ(q.scales()[0], 0.06f);
  EXPECT_EQ(q.scales()[1], 0.5f / 15.0f);
}

}  // namespace

namespace {

TEST(WeightQuantizer, ZeroPointPadSlotsFollowTheConvention) {
  // 3 groups of 4-bit zero points fill 1.5 bytes; the last nibble is padding: 0 for Olive, the
  // mid code 8 for ONNX Runtime's MLAS (which initialises zero points to 8). 2-bit: 3 of 4 slots.
  const std::vector<float> weights = nibble::testing::gaussian(2 * 48, 77);
  const auto olive =
      quantize<float>(weights, Shape{2, 48}, QuantConfig{4, 16, false, ConventionId::olive});
  const auto ort =
      quantize<float>(weights, Shape{2, 48}, QuantConfig{4, 16, false, ConventionId::ort});
  for (int64_t row = 0; row < 2; ++row) {
    EXPECT_EQ(olive.zeros()[static_cast<std::size_t>(row * 2 + 1)] >> 4, 0);
    EXPECT_EQ(ort.zeros()[static_cast<std::size_t>(row * 2 + 1)] >> 4, 8);
  }
  const auto two_bit =
      quantize<float>(weights, Shape{2, 48}, QuantConfig{2, 16, false, ConventionId::ort});
  EXPECT_EQ(two_bit.zeros()[0] >> 6, 2);
}

}  // namespace
