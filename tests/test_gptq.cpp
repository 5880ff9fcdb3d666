// GPTQ (solvers/gptq.hpp): its defining property (lower calibration output error than RTN) over a
// sweep, the Hessian accumulation, the inverse Cholesky factor, g_idx, rank 3, bad input. Same
// codes as an independent numpy implementation of the published algorithm:
// python/tests/test_gptq.py.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "nibble/solvers/gptq.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::ConventionId;
using nibble::Error;
using nibble::GptqHessian;
using nibble::GptqOptions;
using nibble::GptqResult;
using nibble::QuantConfig;
using nibble::Shape;
using nibble::TensorView;

// Calibration inputs like a transformer's: correlated channels (a random mixing of Gaussian
// sources) and a few channels 10x larger than the rest.
std::vector<float> activations(int64_t tokens, int64_t k, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal;
  const int64_t sources = std::max<int64_t>(4, k / 4);
  std::vector<float> mixing(static_cast<std::size_t>(sources * k));
  for (float& value : mixing)
    value = normal(generator);
  std::vector<float> x(static_cast<std::size_t>(tokens * k), 0.0f);
  std::vector<float> source(static_cast<std::size_t>(sources));
  for (int64_t t = 0; t < tokens; ++t) {
    for (float& value : source)
      value = normal(generator);
    for (int64_t s = 0; s < sources; ++s) {
      for (int64_t j = 0; j < k; ++j)
        x[static_cast<std::size_t>(t * k + j)] +=
            source[static_cast<std::size_t>(s)] * mixing[static_cast<std::size_t>(s * k + j)];
    }
    for (int64_t j = 0; j < k; j += 17)
      x[static_cast<std::size_t>(t * k + j)] *= 10.0f;
  }
  return x;
}

GptqHessian hessian_of(const std::vector<float>& x, int64_t tokens, int64_t k) {
  GptqHessian hessian(k);
  hessian.add_batch(TensorView<const float>(x.data(), {tokens, k}));
  return hessian;
}

// ||X W^T - X W_hat^T||_F^2 over the calibration rows.
double output_error(const std::vector<float>& x, int64_t tokens, const std::vector<float>& w,
                    const std::vector<float>& w_hat, int64_t n, int64_t k) {
  using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Matrix xm =
      Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          x.data(), tokens, k)
          .cast<double>();
  Matrix difference(n, k);
  for (int64_t i = 0; i < n * k; ++i)
    difference.data()[i] =
        double(w[static_cast<std::size_t>(i)]) - w_hat[static_cast<std::size_t>(i)];
  return (xm * difference.transpose()).squaredNorm();
}

std::string describe(int bits, bool symmetric, int64_t group, bool act_order, bool static_groups) {
  return "bits=" + std::to_string(bits) + (symmetric ? " sym" : " asym") +
         " group=" + std::to_string(group) + (act_order ? " act_order" : "") +
         (static_groups ? " static_groups" : "");
}

TEST(GptqHessian, IsTwiceTheMeanOuterProductWhateverTheBatches) {
  const int64_t tokens = 30, k = 7;
  const std::vector<float> x = activations(tokens, k, 1);
  GptqHessian batched(k);
  for (int64_t begin : {0, 4, 5, 19}) {
    const int64_t end = begin == 19 ? tokens : (begin == 0 ? 4 : (begin == 4 ? 5 : 19));
    batched.add_batch(TensorView<const float>(x.data() + begin * k, {end - begin, k}));
  }
  EXPECT_EQ(batched.samples(), tokens);
  for (int64_t a = 0; a < k; ++a) {
    for (int64_t b = 0; b < k; ++b) {
      double expected = 0;
      for (int64_t t = 0; t < tokens; ++t)
        expected +=
            double(x[static_cast<std::size_t>(t * k + a)]) * x[static_cast<std::size_t>(t * k + b)];
      expected *= 2.0 / tokens;
      EXPECT_NEAR(batched.matrix()(a, b), expected, 1e-12 * (1 + std::fabs(expected)));
    }
  }
}

TEST(Gptq, InverseCholeskyFactorIsUpperAndReproducesTheInverse) {
  const int64_t k = 33;
  const std::vector<float> x = activations(100, k, 2);
  Eigen::MatrixXd h = hessian_of(x, 100, k).matrix();  // rank 8 (activations' sources): damp
  h.diagonal().array() += 0.01 * h.diagonal().mean();
  nibble::gptq_detail::RowMajor<double> upper;
  ASSERT_TRUE(nibble::gptq_detail::inverse_cholesky_upper<double>(h, upper));
  EXPECT_TRUE(upper.isUpperTriangular());
  const Eigen::MatrixXd inverse = h.inverse();
  EXPECT_LT((upper.transpose() * upper - inverse).norm(), 1e-9 * inverse.norm());
}

// The defining property, over bits x symmetric x group x act_order x static_groups.
TEST(Gptq, LowersCalibrationOutputErrorAgainstRtn) {
  const int64_t n = 48, k = 160, tokens = 400;
  const std::vector<float> x = activations(tokens, k, 3);
  const std::vector<float> w = nibble::testing::gaussian(n * k, 4);
  const std::vector<GptqHessian> hessians{hessian_of(x, tokens, k)};
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (int64_t group : {int64_t{32}, int64_t{64}, nibble::kPerChannel}) {
        const QuantConfig config{bits, group, symmetric, ConventionId::olive};
        const std::vector<float> rtn = nibble::dequantize(
            nibble::quantize<float>(TensorView<const float>(w.data(), {n, k}), config));
        const double rtn_error = output_error(x, tokens, w, rtn, n, k);
        for (bool act_order : {false, true}) {
          for (bool static_groups : {false, true}) {
            GptqOptions options;
            options.act_order = act_order;
            options.static_groups = static_groups;
            const GptqResult<float> result = nibble::gptq_quantize<float>(
                TensorView<const float>(w.data(), {n, k}), config, hessians, options);
            const double error = output_error(x, tokens, w, nibble::dequantize_gptq(result), n, k);
            EXPECT_LT(error, 0.9 * rtn_error)
                << describe(bits, symmetric, group, act_order, static_groups);
            // One group per row cannot change membership: no g_idx for per-channel.
            EXPECT_EQ(result.g_idx.empty(),
                      !(act_order && !static_groups && group != nibble::kPerChannel));
          }
        }
      }
    }
  }
}

TEST(Gptq, GroupIndexFollowsTheActOrder) {
  const int64_t n = 8, k = 96, tokens = 200, group = 32;
  const std::vector<float> x = activations(tokens, k, 5);
  const std::vector<float> w = nibble::testing::gaussian(n * k, 6);
  const GptqHessian hessian = hessian_of(x, tokens, k);
  GptqOptions options;
  options.act_order = true;
  const GptqResult<float> result = nibble::gptq_quantize<float>(
      TensorView<const float>(w.data(), {n, k}), {4, group, false}, {hessian}, options);
  ASSERT_EQ(result.g_idx.size(), static_cast<std::size_t>(k));
  // Columns by descending diagonal (stable): the first 32 of that order form group 0, etc.
  std::vector<int64_t> order(static_cast<std::size_t>(k));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return hessian.matrix()(a, a) > hessian.matrix()(b, b);
  });
  for (int64_t position = 0; position < k; ++position)
    EXPECT_EQ(result.g_idx[static_cast<std::size_t>(order[static_cast<std::size_t>(position)])],
              position / group);
  // With static groups the membership is the canonical j / G: no g_idx.
  options.static_groups = true;
  EXPECT_TRUE(nibble::gptq_quantize<float>(TensorView<const float>(w.data(), {n, k}),
                                           {4, group, false}, {hessian}, options)
                  .g_idx.empty());
}

TEST(Gptq, NumThreadsHoldsForTheCallOnly) {
  const int64_t n = 8, k = 64, tokens = 100;
  const std::vector<float> x = activations(tokens, k, 9);
  const std::vector<float> w = nibble::testing::gaussian(n * k, 10);
  const GptqHessian hessian = hessian_of(x, tokens, k);
  GptqOptions options;
  const auto quantize = [&] {
    return nibble::gptq_quantize<float>(TensorView<const float>(w.data(), {n, k}), {4, 32, false},
                                        {hessian}, options);
  };
  const GptqResult<float> reference = quantize();
  const int eigen_threads = Eigen::nbThreads();
  options.num_threads = eigen_threads + 2;
  const GptqResult<float> threaded = quantize();
  EXPECT_EQ(Eigen::nbThreads(), eigen_threads);  // Eigen's count is back
  EXPECT_EQ(threaded.tensor.qweight(), reference.tensor.qweight());
  EXPECT_EQ(threaded.tensor.zeros(), reference.tensor.zeros());
  // An application's own Eigen count is kept too.
  Eigen::setNbThreads(3);
  quantize();
  EXPECT_EQ(Eigen::nbThreads(), 3);
  Eigen::setNbThreads(0);  // back to following OpenMP
}

TEST(Gptq, RankThreeIsEachExpertWithItsOwnHessian) {
  const int64_t experts = 3, n = 6, k = 40, tokens = 90;
  const std::vector<float> w = nibble::testing::gaussian(experts * n * k, 7);
  std::vector<GptqHessian> hessians;
  for (int64_t e = 0; e < experts; ++e)
    hessians.push_back(
        hessian_of(activations(tokens, k, 10 + static_cast<uint32_t>(e)), tokens, k));
  const QuantConfig config{4, 16, false};
  const GptqResult<float> together = nibble::gptq_quantize<float>(
      TensorView<const float>(w.data(), {experts, n, k}), config, hessians);
  const auto bytes = static_cast<std::ptrdiff_t>(together.tensor.qweight().size() / experts);
  for (int64_t e = 0; e < experts; ++e) {
    const GptqResult<float> alone =
        nibble::gptq_quantize<float>(TensorView<const float>(w.data() + e * n * k, {n, k}), config,
                                     {hessians[static_cast<std::size_t>(e)]});
    EXPECT_TRUE(std::equal(alone.tensor.qweight().begin(), alone.tensor.qweight().end(),
                           together.tensor.qweight().begin() + e * bytes))
        << "expert " << e;
  }
}

// K not a multiple of G, K shorter than G, K = 1, N = 1, dead columns: finite and in tolerance.
TEST(Gptq, OddShapesAndDeadColumns) {
  const int64_t shapes[][2] = {{1, 1}, {1, 17}, {5, 33}, {3, 100}, {2, 129}};
  for (const auto& shape : shapes) {
    const int64_t n = shape[0], k = shape[1], tokens = 64;
    std::vector<float> x = activations(tokens, k, 8);
    for (int64_t t = 0; t < tokens; ++t)
      x[static_cast<std::size_t>(t * k + k / 2)] = 0.0f;  // a dead input
    const std::vector<float> w = nibble::testing::gaussian(n * k, 9);
    for (int64_t group : {int64_t{16}, int64_t{32}, int64_t{256}}) {
      const QuantConfig config{4, group, false};
      const GptqResult<float> result = nibble::gptq_quantize<float>(
          TensorView<const float>(w.data(), {n, k}), config, {hessian_of(x, tokens, k)});
      const std::vector<float> restored = nibble::dequantize_gptq(result);
      for (int64_t row = 0; row < n; ++row) {
        EXPECT_EQ(restored[static_cast<std::size_t>(row * k + k / 2)], 0.0f)
            << "a dead column quantizes 0; " << n << "x" << k << " group " << group;
      }
      for (float value : restored)
        ASSERT_TRUE(std::isfinite(value));
    }
  }
}

TEST(Gptq, BadInputIsRefused) {
  const int64_t n = 4, k = 32;
  const std::vector<float> w = nibble::testing::gaussian(n * k, 1);
  const std::vector<float> x = activations(16, k, 2);
  const TensorView<const float> weights(w.data(), {n, k});
  const auto expect_error = [&](const std::vector<GptqHessian>& hessians,
                                const GptqOptions& options, const std::string& fragment) {
    try {
      nibble::gptq_quantize<float>(weights, {4, 16, false}, hessians, options);
      ADD_FAILURE() << "no error; expected one mentioning \"" << fragment << "\"";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos) << error.what();
    }
  };
  expect_error({hessian_of(x, 16, k - 1)}, {}, "the weights have K = 32");
  expect_error({GptqHessian(k)}, {}, "no calibration rows");
  expect_error({hessian_of(x, 16, k), hessian_of(x, 16, k)}, {}, "expected 1, shared, or 1");
  GptqOptions negative;
  negative.damp_percent = -0.1;
  expect_error({hessian_of(x, 16, k)}, negative, "damp_percent = -0.1");
  GptqOptions zero_block;
  zero_block.block_size = 0;
  expect_error({hessian_of(x, 16, k)}, zero_block, "block_size = 0");
  // A rank-deficient Hessian (1 calibration row, K = 32) without damping is singular.
  GptqOptions undamped;
  undamped.damp_percent = 0;
  expect_error({hessian_of(x, 1, k)}, undamped, "not positive definite");

  GptqHessian hessian(k);
  std::vector<float> bad_x = x;
  bad_x[5] = std::nanf("");
  EXPECT_THROW(hessian.add_batch(TensorView<const float>(bad_x.data(), {16, k})), Error);
  EXPECT_THROW(hessian.add_batch(TensorView<const float>(x.data(), {16, k - 1})), Error);
  std::vector<float> bad_w = w;
  bad_w[3] = INFINITY;
  EXPECT_THROW(nibble::gptq_quantize<float>(TensorView<const float>(bad_w.data(), {n, k}),
                                            {4, 16, false}, {hessian_of(x, 16, k)}),
               Error);
}


TEST(Gptq, UnusedZeroPointSlotsFollowTheConvention) {
  // K = 96, G = 32, 4 bits: 3 zero points per row in 2 bytes, so slot 3 is unused. The ort
  // convention pads it with 8, as onnxruntime's MatMulNBits quantizer does; olive with 0.
  const int64_t n = 4;
  const int64_t k = 96;
  const std::vector<float> w = nibble::testing::gaussian(n * k, 61);
  const std::vector<float> x = activations(64, k, 62);
  std::vector<GptqHessian> hessians;
  hessians.emplace_back(k);
  hessians.back().add_batch(TensorView<const float>(x.data(), {64, k}));
  for (const auto& [convention, pad] :
       {std::pair{ConventionId::ort, 8}, std::pair{ConventionId::olive, 0}}) {
    const GptqResult<float> result = nibble::gptq_quantize<float>(
        TensorView<const float>(w.data(), {n, k}), QuantConfig{4, 32, false, convention}, hessians);
    ASSERT_EQ(result.tensor.layout().zero_row_bytes, 2);
    for (int64_t row = 0; row < n; ++row)
      EXPECT_EQ(result.tensor.zeros()[static_cast<std::size_t>(row * 2 + 1)] >> 4, pad) << row;
  }
}

}  // namespace
