// k-quant (solvers/kquant.hpp): numpy's summation order, the N-D invariant, error bounds over odd
// shapes, importance, bad input. Bit-exactness against onnxruntime's k_quant and a transcription
// of llama.cpp's searches: python/tests/test_kquant.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "nibble/solvers/kquant.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::ConventionId;
using nibble::Error;
using nibble::KQuantOptions;
using nibble::KQuantVariant;
using nibble::QuantConfig;
using nibble::QuantTensor;
using nibble::Shape;
using nibble::TensorView;

template <class W = float>
QuantTensor<float> kquant(const std::vector<W>& weights, const Shape& shape,
                          const QuantConfig& config, const KQuantOptions& options = {}) {
  return nibble::kquant_quantize<float>(TensorView<const W>(weights.data(), shape), config,
                                        options);
}

QuantConfig asymmetric(int bits, int64_t group_size) {
  return {bits, group_size, false, ConventionId::ort_weight_only};
}

void expect_same_bytes(const QuantTensor<float>& a, const QuantTensor<float>& b) {
  EXPECT_EQ(a.qweight(), b.qweight());
  EXPECT_EQ(a.scales(), b.scales());
  EXPECT_EQ(a.zeros(), b.zeros());
}

// The (variant, symmetric) pairs that exist: onnxruntime's k_quant is asymmetric only.
struct Search {
  KQuantVariant variant;
  bool symmetric;
};
const Search kSearches[] = {{KQuantVariant::ort, false},
                            {KQuantVariant::llama_cpp, false},
                            {KQuantVariant::llama_cpp, true}};

std::string describe(const Search& search, int bits, int64_t group) {
  return std::string(nibble::kquant_variant_name(search.variant)) +
         (search.symmetric ? " sym" : " asym") + " bits=" + std::to_string(bits) +
         " group=" + std::to_string(group);
}

TEST(NumpySum, SumsRunsOfEightInEightAccumulators) {
  // 16 values: numpy's pairwise_sum keeps r[j] = x[j] + x[j + 8] and combines them as
  // ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)); a left-to-right sum rounds differently
  // for these values (1e8 absorbs the ones one at a time, but not their pairs).
  std::vector<float> values(16, 1.0f);
  values[0] = 1e8f;
  float expected_r[8];
  for (int j = 0; j < 8; ++j)
    expected_r[j] = values[j] + values[j + 8];
  const float expected = ((expected_r[0] + expected_r[1]) + (expected_r[2] + expected_r[3])) +
                         ((expected_r[4] + expected_r[5]) + (expected_r[6] + expected_r[7]));
  EXPECT_EQ(nibble::kquant::numpy_sum(values.data(), 16), expected);
  float left_to_right = 0;
  for (float v : values)
    left_to_right += v;
  EXPECT_NE(left_to_right, expected);  // the order matters for these values
  // Fewer than 8: left to right from 0.
  EXPECT_EQ(nibble::kquant::numpy_sum(values.data(), 5), (((1e8f + 1) + 1) + 1) + 1);
}

TEST(KQuant, RankThreeIsEachExpertAlone) {
  const int64_t experts = 3, n = 5, k = 70;
  const std::vector<float> weights = nibble::testing::gaussian(experts * n * k, 11);
  for (const Search& search : kSearches) {
    const QuantConfig config{4, 32, search.symmetric, ConventionId::ort_weight_only};
    KQuantOptions options;
    options.variant = search.variant;
    const QuantTensor<float> together = kquant(weights, Shape({experts, n, k}), config, options);
    const auto bytes_per_expert = static_cast<std::ptrdiff_t>(together.qweight().size() / experts);
    for (int64_t e = 0; e < experts; ++e) {
      const std::vector<float> expert(weights.begin() + e * n * k,
                                      weights.begin() + (e + 1) * n * k);
      const QuantTensor<float> alone = kquant(expert, Shape({n, k}), config, options);
      EXPECT_TRUE(std::equal(alone.qweight().begin(), alone.qweight().end(),
                             together.qweight().begin() + e * bytes_per_expert))
          << describe(search, 4, 32) << " expert " << e;
    }
  }
}

// Odd shapes, every bit width, group and search: the error stays within RTN's named tolerance
// (test_data.hpp) for G = 32, and within 1.5x of it for larger groups (wider ranges); padded
// positions hold the zero point; every row and group is finite.
TEST(KQuant, OddShapesStayWithinTolerance) {
  const int64_t shapes[][2] = {{1, 1}, {1, 17}, {3, 31}, {5, 33}, {2, 127}, {4, 129}, {43, 401}};
  for (int bits : {2, 4, 8}) {
    for (int64_t group : {int64_t{16}, int64_t{32}, int64_t{64}, int64_t{128}, int64_t{-1}}) {
      for (const Search& search : kSearches) {
        double error = 0;
        double norm = 0;
        for (const auto& shape : shapes) {
          const int64_t rows = shape[0], k = shape[1];
          const std::vector<float> weights = nibble::testing::gaussian_both_signs(
              rows, k, group > 0 ? group : k, static_cast<uint32_t>(rows * 1000 + k));
          const QuantConfig config{bits, group, search.symmetric, ConventionId::ort_weight_only};
          KQuantOptions options;
          options.variant = search.variant;
          const QuantTensor<float> tensor = kquant(weights, Shape({rows, k}), config, options);
          const std::vector<float> restored = nibble::dequantize(tensor);
          for (std::size_t i = 0; i < weights.size(); ++i) {
            ASSERT_TRUE(std::isfinite(restored[i])) << describe(search, bits, group);
            error += (weights[i] - restored[i]) * double(weights[i] - restored[i]);
            norm += double(weights[i]) * weights[i];
          }
        }
        const double tolerance =
            nibble::testing::rtn_relative_rms_tolerance(bits) * (group == 32 ? 1.0 : 1.5);
        EXPECT_LE(std::sqrt(error / norm), tolerance) << describe(search, bits, group);
      }
    }
  }
}

// The search's objective: sum over groups of sum_i w_i (x_i - x^_i)^2, w_i = rms(group) + |x_i|.
double weighted_error(const std::vector<float>& weights, const QuantTensor<float>& tensor,
                      int64_t group_size) {
  const std::vector<float> restored = nibble::dequantize(tensor);
  double total = 0;
  for (std::size_t begin = 0; begin < weights.size(); begin += group_size) {
    double sum_x2 = 0;
    for (int64_t i = 0; i < group_size; ++i)
      sum_x2 += double(weights[begin + i]) * weights[begin + i];
    const double rms = std::sqrt(sum_x2 / static_cast<double>(group_size));
    for (int64_t i = 0; i < group_size; ++i) {
      const double diff = weights[begin + i] - restored[begin + i];
      total += (rms + std::fabs(weights[begin + i])) * diff * diff;
    }
  }
  return total;
}

// At 2 bits the search beats RTN (ort_weight_only, the same tool's RTN) on its objective. At 4
// and 8 bits it does not on Gaussian weights (about 3-6% worse): the winning float offset is
// rounded to an integer zero point and the codes recomputed, which costs more than the search
// gained. onnxruntime's own functions show the same (quant_tensor_k_quant_cpu against
// quant_tensor on 64 x 256 normal weights, G = 32: 210.2 vs 200.6 at 4 bits, 4290 vs 5227 at 2).
TEST(KQuant, SearchBeatsRtnOnItsObjectiveAtTwoBits) {
  const int64_t rows = 64, k = 256;
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, 5);
  const QuantConfig config = asymmetric(2, 32);
  const double rtn = weighted_error(
      weights, nibble::quantize<float>(TensorView<const float>(weights.data(), {rows, k}), config),
      32);
  for (KQuantVariant variant : {KQuantVariant::ort, KQuantVariant::llama_cpp}) {
    KQuantOptions options;
    options.variant = variant;
    EXPECT_LT(weighted_error(weights, kquant(weights, Shape({rows, k}), config, options), 32),
              0.9 * rtn)
        << nibble::kquant_variant_name(variant);
  }
}

TEST(KQuant, ImportanceOfOnesIsThePlainSearch) {
  const int64_t rows = 7, k = 100;
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, 3);
  for (const Search& search : kSearches) {
    const QuantConfig config{4, 32, search.symmetric, ConventionId::ort_weight_only};
    KQuantOptions plain;
    plain.variant = search.variant;
    KQuantOptions ones = plain;
    ones.importance.assign(k, 1.0f);
    expect_same_bytes(kquant(weights, Shape({rows, k}), config, plain),
                      kquant(weights, Shape({rows, k}), config, ones));
  }
}

TEST(KQuant, WeightTypesAndThreadsGiveTheSameBytes) {
  const int64_t rows = 9, k = 80;
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, 8);
  // fp16 weights are their float values: quantizing the widened copy gives the same bytes.
  const std::vector<nibble::fp16> half = nibble::testing::converted<nibble::fp16>(weights);
  std::vector<float> widened(half.size());
  for (std::size_t i = 0; i < half.size(); ++i)
    widened[i] = nibble::to_float(half[i]);
  KQuantOptions serial;
  serial.num_threads = 1;
  KQuantOptions parallel;
  parallel.num_threads = 2;
  expect_same_bytes(kquant(half, Shape({rows, k}), asymmetric(4, 32), serial),
                    kquant(widened, Shape({rows, k}), asymmetric(4, 32), parallel));
}

TEST(KQuant, BadInputIsRefused) {
  const std::vector<float> weights = nibble::testing::gaussian(4 * 64, 1);
  const Shape shape({4, 64});
  const auto expect_error = [&](const QuantConfig& config, const KQuantOptions& options,
                                const std::string& fragment) {
    try {
      kquant(weights, shape, config, options);
      ADD_FAILURE() << "no error; expected one mentioning \"" << fragment << "\"";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos) << error.what();
    }
  };
  expect_error({4, 32, true, ConventionId::ort_weight_only}, {}, "asymmetric only");
  KQuantOptions short_importance;
  short_importance.importance.assign(63, 1.0f);
  expect_error(asymmetric(4, 32), short_importance, "importance has 63 values");
  KQuantOptions negative;
  negative.importance.assign(64, -1.0f);
  expect_error(asymmetric(4, 32), negative, "expected a finite value >= 0");
  KQuantOptions threads;
  threads.num_threads = -1;
  expect_error(asymmetric(4, 32), threads, "num_threads = -1");
  expect_error(asymmetric(3, 32), {}, "bits = 3");
  expect_error(asymmetric(4, 0), {}, "group_size = 0");

  std::vector<float> with_nan = weights;
  with_nan[70] = std::nanf("");
  EXPECT_THROW(kquant(with_nan, shape, asymmetric(4, 32)), Error);
  KQuantOptions replace;
  replace.non_finite = nibble::NonFinitePolicy::replace_with_zero;
  std::vector<float> zeroed = weights;
  zeroed[70] = 0.0f;
  expect_same_bytes(kquant(with_nan, shape, asymmetric(4, 32), replace),
                    kquant(zeroed, shape, asymmetric(4, 32)));
}

}  // namespace
