// AWQ scale search (solvers/awq.hpp): never worse than alpha = 0 and better with outlier
// activation channels, for RTN and k-quant over bits, symmetry and groups; a plain-loop brute
// force over the alpha grid agrees; the folded pre_quant_scale form reproduces the output; rank 3
// is each expert alone; odd shapes; bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "nibble/solvers/awq.hpp"
#include "support/solver_cases.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::AwqOptions;
using nibble::AwqResult;
using nibble::ConventionId;
using nibble::KQuantVariant;
using nibble::QuantConfig;
using nibble::QuantSolver;
using nibble::QuantTensor;
using nibble::Shape;
using nibble::TensorView;
using nibble::testing::describe;
using nibble::testing::expect_error_mentioning;
using nibble::testing::fake_quantize;
using nibble::testing::kquant_solver;
using nibble::testing::SolverCase;
using nibble::testing::use_solver;

using Views = std::vector<TensorView<const float>>;

// Gaussian activations [tokens, k] where every 29th channel is 20x larger, like the few outlier
// channels of LLM activations that AWQ protects.
std::vector<float> outlier_activations(int64_t tokens, int64_t k, uint32_t seed) {
  std::vector<float> x = nibble::testing::gaussian(tokens * k, seed);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t col = 3; col < k; col += 29)
      x[static_cast<std::size_t>(t * k + col)] *= 20.0f;
  }
  return x;
}

// mean_{t,n} ((X W^T)[t, n] - ((X / s) Q^T)[t, n])^2 in plain double loops; s = 1 when empty.
double awq_error(const std::vector<float>& weights, const std::vector<float>& restored,
                 const std::vector<float>& s, int64_t rows, int64_t k,
                 const std::vector<float>& x) {
  const auto tokens = static_cast<int64_t>(x.size()) / k;
  double total = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t row = 0; row < rows; ++row) {
      double exact = 0, quantized = 0;
      for (int64_t col = 0; col < k; ++col) {
        const double xv = x[static_cast<std::size_t>(t * k + col)];
        const double sv = s.empty() ? 1.0 : s[static_cast<std::size_t>(col)];
        exact += xv * weights[static_cast<std::size_t>(row * k + col)];
        quantized += xv / sv * restored[static_cast<std::size_t>(row * k + col)];
      }
      total += (exact - quantized) * (exact - quantized);
    }
  }
  return total / static_cast<double>(tokens * rows);
}

std::vector<SolverCase> solver_cases() {
  return {
      {"rtn olive asym", QuantSolver{}, false, ConventionId::olive},
      {"rtn olive sym", QuantSolver{}, true, ConventionId::olive},
      {"rtn ort sym", QuantSolver{}, true, ConventionId::ort},
      {"k_quant ort asym", kquant_solver(KQuantVariant::ort), false, ConventionId::ort_weight_only},
      {"k_quant llama_cpp sym", kquant_solver(KQuantVariant::llama_cpp), true,
       ConventionId::ort_weight_only}};
}

TEST(Awq, NeverWorseAndStrictlyBetterWithOutlierChannels) {
  const int64_t rows = 24, k = 256, tokens = 64;
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, 5);
  const std::vector<float> x = outlier_activations(tokens, k, 6);
  const Shape shape({rows, k});
  for (const SolverCase& c : solver_cases()) {
    for (int bits : {2, 4, 8}) {
      for (int64_t group : {int64_t{32}, int64_t{128}, nibble::kPerChannel}) {
        const QuantConfig config{bits, group, c.symmetric, c.convention};
        AwqOptions options;
        use_solver(options, c);
        const AwqResult awq = nibble::awq_search<float>(
            TensorView<const float>(weights.data(), shape),
            TensorView<const float>(x.data(), Shape({tokens, k})), config, options);
        const std::string what = describe(c, bits, group);
        ASSERT_EQ(awq.n_scales, 1);
        // Recomputed here: alpha = 0 is plain quantization, the result is Q(W s) with X / s.
        const double plain =
            awq_error(weights, fake_quantize(weights, shape, config, c.solver), {}, rows, k, x);
        const double searched =
            awq_error(weights, fake_quantize(awq.scaled_weights, shape, config, c.solver),
                      awq.scale, rows, k, x);
        EXPECT_NEAR(awq.unscaled_error[0], plain, 1e-5 * plain) << what;
        EXPECT_NEAR(awq.error[0], searched, 1e-5 * plain) << what;
        EXPECT_LT(searched, plain) << what;
        EXPECT_GT(awq.alpha[0], 0.0f) << what;
        if (group == 128) {
          std::printf(
              "[ measure ] %-22s %d-bit G=128: output MSE %.5g -> %.5g (%.1f%%), alpha %.2f\n",
              c.name, bits, plain, searched, 100.0 * (searched - plain) / plain,
              static_cast<double>(awq.alpha[0]));
        }
      }
    }
  }
}

TEST(Awq, NeverWorseWithoutOutliers) {
  // Plain Gaussian activations: scaling may not help, but the search can only keep alpha = 0.
  const int64_t rows = 16, k = 128, tokens = 32;
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, 15);
  const std::vector<float> x = nibble::testing::gaussian(tokens * k, 16);
  for (const SolverCase& c : solver_cases()) {
    for (int bits : {2, 4, 8}) {
      AwqOptions options;
      use_solver(options, c);
      const AwqResult awq =
          nibble::awq_search<float>(TensorView<const float>(weights.data(), Shape({rows, k})),
                                    TensorView<const float>(x.data(), Shape({tokens, k})),
                                    QuantConfig{bits, 32, c.symmetric, c.convention}, options);
      EXPECT_LE(awq.error[0], awq.unscaled_error[0]) << describe(c, bits, 32);
    }
  }
}

TEST(Awq, MatchesBruteForceOverTheAlphaGrid) {
  // K = 24, G = 8; T = 6 scores through the GEMM, T = 60 through the Gram matrix (2 * 24 < 60).
  const int64_t rows = 4, k = 24, grid = 8;
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, 25);
  for (int64_t tokens : {int64_t{6}, int64_t{60}}) {
    const std::vector<float> x = outlier_activations(tokens, k, 26);
    std::vector<double> mean(static_cast<std::size_t>(k), 0.0);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < k; ++j)
        mean[static_cast<std::size_t>(j)] += std::fabs(x[static_cast<std::size_t>(t * k + j)]);
    }
    for (const SolverCase& c : solver_cases()) {
      for (int bits : {2, 4}) {
        const QuantConfig config{bits, 8, c.symmetric, c.convention};
        AwqOptions options;
        use_solver(options, c);
        options.grid = grid;
        const AwqResult awq = nibble::awq_search<float>(
            TensorView<const float>(weights.data(), Shape({rows, k})),
            TensorView<const float>(x.data(), Shape({tokens, k})), config, options);
        std::vector<double> errors;
        std::vector<std::vector<float>> scales;
        for (int i = 0; i < grid; ++i) {
          const auto alpha = static_cast<float>(static_cast<double>(i) / grid);
          std::vector<float> s(static_cast<std::size_t>(k));
          for (int64_t j = 0; j < k; ++j) {
            const auto x_mean =
                static_cast<float>(mean[static_cast<std::size_t>(j)] / static_cast<double>(tokens));
            s[static_cast<std::size_t>(j)] = std::max(std::pow(x_mean, alpha), 1e-4f);
          }
          const float norm = std::sqrt(*std::max_element(s.begin(), s.end()) *
                                       *std::min_element(s.begin(), s.end()));
          for (float& value : s)
            value /= norm;
          std::vector<float> scaled = weights;
          for (int64_t row = 0; row < rows; ++row) {
            for (int64_t j = 0; j < k; ++j)
              scaled[static_cast<std::size_t>(row * k + j)] *= s[static_cast<std::size_t>(j)];
          }
          errors.push_back(awq_error(
              weights, fake_quantize(scaled, Shape({rows, k}), config, c.solver), s, rows, k, x));
          scales.push_back(s);
        }
        const auto best = static_cast<std::size_t>(std::min_element(errors.begin(), errors.end()) -
                                                   errors.begin());
        const std::string what = describe(c, bits, 8) + " T=" + std::to_string(tokens);
        const auto chosen = static_cast<std::size_t>(std::lround(awq.alpha[0] * grid));
        // The same alpha, or one whose brute-force error ties the minimum within rounding.
        if (chosen != best) {
          EXPECT_NEAR(errors[chosen], errors[best], 1e-5 * errors[best]) << what;
        } else {
          EXPECT_EQ(awq.scale, scales[best]) << what;
        }
        // The search sums in float (or a double Gram form), the brute force in double.
        EXPECT_NEAR(awq.error[0], errors[best], 1e-5 * errors[best]) << what;
        EXPECT_NEAR(awq.unscaled_error[0], errors[0], 1e-5 * errors[0]) << what;
      }
    }
  }
}

TEST(Awq, FoldedPreQuantScaleReproducesTheOutput) {
  const int64_t rows = 20, k = 96, tokens = 16;
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, 35);
  const std::vector<float> x = outlier_activations(tokens, k, 36);
  const QuantConfig config{4, 32, false};
  const AwqResult awq =
      nibble::awq_search<float>(TensorView<const float>(weights.data(), Shape({rows, k})),
                                TensorView<const float>(x.data(), Shape({tokens, k})), config);
  ASSERT_GT(awq.alpha[0], 0.0f);
  const auto [lowest, highest] = std::minmax_element(awq.scale.begin(), awq.scale.end());
  EXPECT_NEAR(double(*lowest) * *highest, 1.0, 1e-5);  // s / sqrt(max(s) min(s))
  for (int64_t j = 0; j < k; ++j) {
    const auto i = static_cast<std::size_t>(j);
    EXPECT_EQ(awq.pre_quant_scale[i], 1.0f / awq.scale[i]);
    for (int64_t row = 0; row < rows; ++row) {
      const auto w = static_cast<std::size_t>(row * k + j);
      EXPECT_EQ(awq.scaled_weights[w], weights[w] * awq.scale[i]);
    }
  }
  // TensorRT-LLM / ModelOpt: y = (x * pre_quant_scale) @ Q(W s)^T; AWQ's search: (x / s) @ Q^T.
  const std::vector<float> restored =
      fake_quantize(awq.scaled_weights, Shape({rows, k}), config, QuantSolver{});
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t row = 0; row < rows; ++row) {
      float folded = 0, divided = 0, magnitude = 0;
      for (int64_t j = 0; j < k; ++j) {
        const float xv = x[static_cast<std::size_t>(t * k + j)];
        const float q = restored[static_cast<std::size_t>(row * k + j)];
        folded += (xv * awq.pre_quant_scale[static_cast<std::size_t>(j)]) * q;
        divided += (xv / awq.scale[static_cast<std::size_t>(j)]) * q;
        magnitude += std::fabs(xv / awq.scale[static_cast<std::size_t>(j)] * q);
      }
      EXPECT_NEAR(folded, divided, 1e-6f * magnitude + 1e-30f) << t << ", " << row;
    }
  }
}

TEST(Awq, AlphaZeroIsNoScaling) {
  const int64_t rows = 6, k = 64, tokens = 10;
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, 45);
  const std::vector<float> x = outlier_activations(tokens, k, 46);
  AwqOptions options;
  options.grid = 1;  // alpha = 0 only
  const AwqResult awq = nibble::awq_search<float>(
      TensorView<const float>(weights.data(), Shape({rows, k})),
      TensorView<const float>(x.data(), Shape({tokens, k})), QuantConfig{4, 32, false}, options);
  EXPECT_EQ(awq.alpha[0], 0.0f);
  EXPECT_EQ(awq.scale, std::vector<float>(static_cast<std::size_t>(k), 1.0f));
  EXPECT_EQ(awq.pre_quant_scale, awq.scale);
  EXPECT_EQ(awq.scaled_weights, weights);
  EXPECT_EQ(awq.error, awq.unscaled_error);
}

TEST(Awq, RankThreeIsEachExpertAlone) {
  const int64_t experts = 3, n = 8, k = 96;
  const std::vector<float> weights = nibble::testing::gaussian(experts * n * k, 55);
  const int64_t tokens[experts] = {12, 40, 25};
  std::vector<std::vector<float>> x;
  for (int64_t e = 0; e < experts; ++e)
    x.push_back(outlier_activations(tokens[e], k, static_cast<uint32_t>(60 + e)));
  Views views;
  for (int64_t e = 0; e < experts; ++e)
    views.emplace_back(x[static_cast<std::size_t>(e)].data(), Shape({tokens[e], k}));
  const TensorView<const float> all(weights.data(), Shape({experts, n, k}));
  for (const SolverCase& c : solver_cases()) {
    for (int bits : {2, 4, 8}) {
      for (int64_t group : {int64_t{32}, nibble::kPerChannel}) {
        const QuantConfig config{bits, group, c.symmetric, c.convention};
        AwqOptions options;
        use_solver(options, c);
        const AwqResult fused = nibble::awq_search<float>(all, views, config, options);
        ASSERT_EQ(fused.n_scales, experts);
        const QuantTensor<float> fused_q =
            nibble::quantize_with_solver<float>(fused.scaled_view(), config, c.solver);
        for (int64_t e = 0; e < experts; ++e) {
          const AwqResult alone = nibble::awq_search<float>(
              all.slice(e), views[static_cast<std::size_t>(e)], config, options);
          const std::string what = describe(c, bits, group) + " expert " + std::to_string(e);
          EXPECT_EQ(alone.alpha[0], fused.alpha[static_cast<std::size_t>(e)]) << what;
          EXPECT_EQ(alone.error[0], fused.error[static_cast<std::size_t>(e)]) << what;
          EXPECT_TRUE(
              std::equal(alone.scale.begin(), alone.scale.end(), fused.scale.begin() + e * k))
              << what;
          EXPECT_TRUE(std::equal(alone.scaled_weights.begin(), alone.scaled_weights.end(),
                                 fused.scaled_weights.begin() + e * n * k))
              << what;
          const QuantTensor<float> alone_q =
              nibble::quantize_with_solver<float>(alone.scaled_view(), config, c.solver);
          const auto bytes = n * fused_q.layout().packed_row_bytes;
          EXPECT_TRUE(std::equal(alone_q.qweight().begin(), alone_q.qweight().end(),
                                 fused_q.qweight().begin() + e * bytes))
              << what;
        }
        // One shared matrix: one scale for all experts, as for the flattened [E * N, K] tensor.
        const AwqResult shared = nibble::awq_search<float>(all, views[1], config, options);
        const AwqResult flat = nibble::awq_search<float>(
            TensorView<const float>(weights.data(), Shape({experts * n, k})), views[1], config,
            options);
        EXPECT_EQ(shared.n_scales, 1);
        EXPECT_EQ(shared.scale, flat.scale);
        EXPECT_EQ(shared.scaled_weights, flat.scaled_weights);
      }
    }
  }
}

TEST(Awq, ThreadsGiveTheSameResult) {
  const int64_t rows = 300, k = 128, tokens = 40;  // above the one-thread size, two row blocks
  const std::vector<float> weights = nibble::testing::gaussian(rows * k, 65);
  const std::vector<float> x = outlier_activations(tokens, k, 66);
  AwqOptions serial, parallel;
  serial.num_threads = 1;
  parallel.num_threads = 2;
  const TensorView<const float> w(weights.data(), Shape({rows, k}));
  const TensorView<const float> x_view(x.data(), Shape({tokens, k}));
  const QuantConfig config{4, 32, false};
  const AwqResult one = nibble::awq_search<float>(w, x_view, config, serial);
  const AwqResult two = nibble::awq_search<float>(w, x_view, config, parallel);
  EXPECT_EQ(one.scaled_weights, two.scaled_weights);
  EXPECT_EQ(one.error, two.error);
}

TEST(Awq, OddShapes) {
  // K not a multiple of the group, N = 1, K = 1 (one channel: s normalizes to 1).
  const int64_t shapes[][2] = {{5, 70}, {1, 70}, {1, 1}, {4, 1}, {3, 33}};
  for (const auto& dims : shapes) {
    const int64_t rows = dims[0], k = dims[1];
    const std::vector<float> weights =
        nibble::testing::gaussian(rows * k, static_cast<uint32_t>(rows * 100 + k));
    const std::vector<float> x = outlier_activations(9, k, 75);
    for (const SolverCase& c : solver_cases()) {
      for (int64_t group : {int64_t{32}, nibble::kPerChannel}) {
        const QuantConfig config{4, group, c.symmetric, c.convention};
        AwqOptions options;
        use_solver(options, c);
        const AwqResult awq = nibble::awq_search<float>(
            TensorView<const float>(weights.data(), Shape({rows, k})),
            TensorView<const float>(x.data(), Shape({9, k})), config, options);
        const std::string what =
            describe(c, 4, group) + " shape " + std::to_string(rows) + "x" + std::to_string(k);
        EXPECT_LE(awq.error[0], awq.unscaled_error[0]) << what;
        const double searched = awq_error(
            weights, fake_quantize(awq.scaled_weights, Shape({rows, k}), config, c.solver),
            awq.scale, rows, k, x);
        EXPECT_NEAR(awq.error[0], searched, 1e-5 * awq.unscaled_error[0] + 1e-12) << what;
        if (k == 1) {
          EXPECT_EQ(awq.scale[0], 1.0f) << what;
        }
      }
    }
  }
}

using AwqInput = nibble::testing::SearchInputTest;

TEST_F(AwqInput, BadInputIsRefused) {
  expect_shared_checks_refuse(
      "awq_search", [&](const TensorView<const float>& weights_view, const Views& activations) {
        nibble::awq_search<float>(weights_view, activations, config);
      });
  AwqOptions options;
  options.grid = 0;
  expect_error_mentioning([&] { nibble::awq_search<float>(w, x_view, config, options); },
                          "AwqOptions.grid = 0 (expected >= 1");
  options = {};
  options.num_threads = -1;
  expect_error_mentioning([&] { nibble::awq_search<float>(w, x_view, config, options); },
                          "AwqOptions.num_threads = -1");
  expect_error_mentioning(
      [&] {
        nibble::awq_search<float>(w, x_view, QuantConfig{4, 0, false});
      },
      "group_size = 0");
}

}  // namespace
