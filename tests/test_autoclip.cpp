// AutoClip (solvers/autoclip.hpp): the search never raises its objective and lowers it on weights
// with outliers, for RTN and k-quant over bits, symmetry and groups; a plain-loop brute force picks
// the same ratios; rank 3 is each expert alone; token sampling; odd shapes; bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "nibble/solvers/autoclip.hpp"
#include "support/solver_cases.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::AutoClipOptions;
using nibble::AutoClipResult;
using nibble::ClipRange;
using nibble::ConventionId;
using nibble::KQuantVariant;
using nibble::QuantConfig;
using nibble::QuantSolver;
using nibble::QuantTensor;
using nibble::SearchSolver;
using nibble::Shape;
using nibble::TensorView;
using nibble::testing::describe;
using nibble::testing::expect_error_mentioning;
using nibble::testing::fake_quantize;
using nibble::testing::kquant_solver;
using nibble::testing::SolverCase;
using nibble::testing::use_solver;

using Views = std::vector<TensorView<const float>>;

// Gaussian weights with an outlier (x 8) every 37 elements, on input channels whose activations
// are small (see activations_quiet_on): clipping the outlier costs little output error and
// shrinks the step of the whole group, the situation AutoClip exists for.
constexpr int64_t kOutlierEvery = 37;

std::vector<float> outlier_weights(int64_t rows, int64_t k, uint32_t seed) {
  std::vector<float> weights = nibble::testing::gaussian(rows * k, seed);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t col = (row * 5) % kOutlierEvery; col < k; col += kOutlierEvery)
      weights[static_cast<std::size_t>(row * k + col)] *= 8.0f;
  }
  return weights;
}

// Gaussian activations [tokens, k]; columns that hold weight outliers in some row are scaled by
// 0.05 so the outliers matter less to the output than their size suggests.
std::vector<float> activations_quiet_on_outliers(int64_t tokens, int64_t k, int64_t rows,
                                                 uint32_t seed) {
  std::vector<float> x = nibble::testing::gaussian(tokens * k, seed);
  std::vector<bool> quiet(static_cast<std::size_t>(k), false);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t col = (row * 5) % kOutlierEvery; col < k; col += kOutlierEvery)
      quiet[static_cast<std::size_t>(col)] = true;
  }
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t col = 0; col < k; ++col) {
      if (quiet[static_cast<std::size_t>(col)]) x[static_cast<std::size_t>(t * k + col)] *= 0.05f;
    }
  }
  return x;
}

// Independent objective, plain loops in double: sum over (row, group) of
// mean_t (X[t, g] . (W - Q)[row, g])^2, with row r using activations[r / rows_per_matrix].
double per_group_error(const std::vector<float>& weights, const std::vector<float>& restored,
                       int64_t rows, int64_t k, int64_t group_size,
                       const std::vector<std::vector<float>>& activations) {
  const int64_t g = group_size > 0 ? group_size : k;
  const int64_t rows_per_matrix = rows / static_cast<int64_t>(activations.size());
  double total = 0;
  for (int64_t row = 0; row < rows; ++row) {
    const std::vector<float>& x = activations[static_cast<std::size_t>(row / rows_per_matrix)];
    const auto tokens = static_cast<int64_t>(x.size()) / k;
    for (int64_t begin = 0; begin < k; begin += g) {
      double sum = 0;
      for (int64_t t = 0; t < tokens; ++t) {
        double dot = 0;
        for (int64_t col = begin; col < std::min(k, begin + g); ++col) {
          const auto i = static_cast<std::size_t>(row * k + col);
          dot += double(x[static_cast<std::size_t>(t * k + col)]) * (weights[i] - restored[i]);
        }
        sum += dot * dot;
      }
      total += sum / static_cast<double>(tokens);
    }
  }
  return total;
}

// ||X W^T - X Q^T||^2 over the whole output (plain loops, double), one shared X.
double output_error(const std::vector<float>& weights, const std::vector<float>& restored,
                    int64_t rows, int64_t k, const std::vector<float>& x) {
  const auto tokens = static_cast<int64_t>(x.size()) / k;
  double total = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t row = 0; row < rows; ++row) {
      double dot = 0;
      for (int64_t col = 0; col < k; ++col) {
        const auto i = static_cast<std::size_t>(row * k + col);
        dot += double(x[static_cast<std::size_t>(t * k + col)]) * (weights[i] - restored[i]);
      }
      total += dot * dot;
    }
  }
  return total;
}

// The (solver, symmetric) pairs under test: RTN both ways (Olive's convention), onnxruntime's
// k_quant (asymmetric only) and llama.cpp's searches both ways.
std::vector<SolverCase> solver_cases() {
  return {
      {"rtn olive asym", QuantSolver{}, false, ConventionId::olive},
      {"rtn olive sym", QuantSolver{}, true, ConventionId::olive},
      {"rtn ort_weight_only sym", QuantSolver{}, true, ConventionId::ort_weight_only},
      {"k_quant ort asym", kquant_solver(KQuantVariant::ort), false, ConventionId::ort_weight_only},
      {"k_quant llama_cpp asym", kquant_solver(KQuantVariant::llama_cpp), false,
       ConventionId::ort_weight_only},
      {"k_quant llama_cpp sym", kquant_solver(KQuantVariant::llama_cpp), true,
       ConventionId::ort_weight_only}};
}

TEST(AutoClip, NeverWorseAndStrictlyBetterWithOutliers) {
  const int64_t rows = 16, k = 256, tokens = 64;
  const std::vector<float> weights = outlier_weights(rows, k, 3);
  const std::vector<float> x = activations_quiet_on_outliers(tokens, k, rows, 4);
  const Shape shape({rows, k});
  for (const SolverCase& c : solver_cases()) {
    for (int bits : {2, 4, 8}) {
      for (int64_t group : {int64_t{32}, int64_t{128}, nibble::kPerChannel}) {
        for (ClipRange range : {ClipRange::abs_max, ClipRange::min_max}) {
          const QuantConfig config{bits, group, c.symmetric, c.convention};
          AutoClipOptions options;
          use_solver(options, c);
          options.range = range;
          const AutoClipResult clip = nibble::autoclip<float>(
              TensorView<const float>(weights.data(), shape),
              TensorView<const float>(x.data(), Shape({tokens, k})), config, options);
          const std::string what =
              describe(c, bits, group) + (range == ClipRange::abs_max ? " abs_max" : " min_max");
          const std::vector<float> plain = fake_quantize(weights, shape, config, c.solver);
          const std::vector<float> clipped = fake_quantize(clip.clipped, shape, config, c.solver);
          const double before = per_group_error(weights, plain, rows, k, group, {x});
          const double after = per_group_error(weights, clipped, rows, k, group, {x});
          EXPECT_LT(after, before) << what;
          // The search's own numbers are the quantities measured here.
          double searched = 0, unclipped = 0;
          for (std::size_t i = 0; i < clip.error.size(); ++i) {
            EXPECT_LE(clip.error[i], clip.unclipped_error[i]) << what;
            searched += clip.error[i];
            unclipped += clip.unclipped_error[i];
          }
          EXPECT_NEAR(searched, after, 1e-5 * before) << what;
          EXPECT_NEAR(unclipped, before, 1e-5 * before) << what;
          if (bits == 4 && group == 32 && range == ClipRange::abs_max) {
            std::printf(
                "[ measure ] %-24s 4-bit G=32: per-group error %.5g -> %.5g (%.1f%%), "
                "output error %.5g -> %.5g\n",
                c.name, before, after, 100.0 * (after - before) / before,
                output_error(weights, plain, rows, k, x),
                output_error(weights, clipped, rows, k, x));
          }
        }
      }
    }
  }
}

TEST(AutoClip, OutputErrorDropsOnOutlierData) {
  // The search minimizes per-group partial errors; the layer's output error (cross-group terms
  // included) falls with it on this data.
  const int64_t rows = 32, k = 256, tokens = 128;
  const std::vector<float> weights = outlier_weights(rows, k, 21);
  const std::vector<float> x = activations_quiet_on_outliers(tokens, k, rows, 22);
  const Shape shape({rows, k});
  for (const SolverCase& c : solver_cases()) {
    for (int bits : {2, 4, 8}) {
      const QuantConfig config{bits, 32, c.symmetric, c.convention};
      AutoClipOptions options;
      use_solver(options, c);
      const AutoClipResult clip = nibble::autoclip<float>(
          TensorView<const float>(weights.data(), shape),
          TensorView<const float>(x.data(), Shape({tokens, k})), config, options);
      const double before =
          output_error(weights, fake_quantize(weights, shape, config, c.solver), rows, k, x);
      const double after =
          output_error(weights, fake_quantize(clip.clipped, shape, config, c.solver), rows, k, x);
      EXPECT_LT(after, before) << describe(c, bits, 32);
    }
  }
}

// Brute force in the test's own loops: every ratio (pair) of the grid, the whole tensor clipped at
// it, quantized with the solver, every group scored in double; the first minimum per group.
struct BruteForce {
  std::vector<float> upper, lower;
  std::vector<double> best_error;
  std::vector<std::vector<double>> error_at;  // [candidate][slot]
  std::vector<std::pair<float, float>> candidates;
};

BruteForce brute_force(const std::vector<float>& weights, int64_t rows, int64_t k,
                       const QuantConfig& config, const AutoClipOptions& options,
                       const std::vector<float>& x) {
  const int64_t g = config.group_size > 0 ? config.group_size : k;
  const int64_t n_groups = (k + g - 1) / g;
  const auto tokens = static_cast<int64_t>(x.size()) / k;
  std::vector<float> ratios;
  for (int i = 0; i < options.steps; ++i)
    ratios.push_back(static_cast<float>(1.0 - i * (1.0 - options.min_ratio) / options.steps));
  BruteForce out;
  for (float upper : ratios) {
    if (options.range == ClipRange::abs_max) {
      out.candidates.emplace_back(upper, upper);
    } else {
      for (float lower : ratios)
        out.candidates.emplace_back(upper, lower);
    }
  }
  const auto slots = static_cast<std::size_t>(rows * n_groups);
  out.upper.assign(slots, 1.0f);
  out.lower.assign(slots, 1.0f);
  out.best_error.assign(slots, 1e300);
  for (const auto& [upper, lower] : out.candidates) {
    std::vector<float> clipped = weights;
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t begin = 0; begin < k; begin += g) {
        const int64_t end = std::min(k, begin + g);
        float lo = weights[static_cast<std::size_t>(row * k + begin)], hi = lo;
        for (int64_t col = begin; col < end; ++col) {
          lo = std::min(lo, weights[static_cast<std::size_t>(row * k + col)]);
          hi = std::max(hi, weights[static_cast<std::size_t>(row * k + col)]);
        }
        if (options.range == ClipRange::abs_max) {
          const float amax = std::max(std::fabs(lo), std::fabs(hi));
          lo = -amax;
          hi = amax;
        }
        const float bound_hi = hi * upper, bound_lo = lo * lower;
        for (int64_t col = begin; col < end; ++col) {
          float& value = clipped[static_cast<std::size_t>(row * k + col)];
          value = std::min(std::max(value, bound_lo), bound_hi);
        }
      }
    }
    const std::vector<float> restored =
        fake_quantize(clipped, Shape({rows, k}), config, options.solver);
    std::vector<double> errors(slots);
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t group = 0; group < n_groups; ++group) {
        double sum = 0;
        for (int64_t t = 0; t < tokens; ++t) {
          double dot = 0;
          for (int64_t col = group * g; col < std::min(k, (group + 1) * g); ++col) {
            const auto i = static_cast<std::size_t>(row * k + col);
            dot += double(x[static_cast<std::size_t>(t * k + col)]) * (weights[i] - restored[i]);
          }
          sum += dot * dot;
        }
        const auto slot = static_cast<std::size_t>(row * n_groups + group);
        errors[slot] = sum / static_cast<double>(tokens);
        if (errors[slot] < out.best_error[slot]) {
          out.best_error[slot] = errors[slot];
          out.upper[slot] = upper;
          out.lower[slot] = lower;
        }
      }
    }
    out.error_at.push_back(errors);
  }
  return out;
}

TEST(AutoClip, MatchesBruteForceOnTinyCases) {
  // K = 20 with G = 8: groups of 8, 8 and 4. T = 5 scores through the GEMM, T = 40 through the
  // Gram matrix (2 * 8 < 40).
  const int64_t rows = 3, k = 20;
  const std::vector<float> weights = outlier_weights(rows, k, 7);
  for (int64_t tokens : {int64_t{5}, int64_t{40}}) {
    const std::vector<float> x = activations_quiet_on_outliers(tokens, k, rows, 8);
    for (const SolverCase& c : solver_cases()) {
      for (ClipRange range : {ClipRange::abs_max, ClipRange::min_max}) {
        for (int bits : {2, 4}) {
          const QuantConfig config{bits, 8, c.symmetric, c.convention};
          AutoClipOptions options;
          use_solver(options, c);
          options.range = range;
          options.steps = 6;
          options.min_ratio = 0.4f;
          const AutoClipResult clip = nibble::autoclip<float>(
              TensorView<const float>(weights.data(), Shape({rows, k})),
              TensorView<const float>(x.data(), Shape({tokens, k})), config, options);
          const BruteForce expected = brute_force(weights, rows, k, config, options, x);
          const std::string what = describe(c, bits, 8) + " T=" + std::to_string(tokens) +
                                   (range == ClipRange::abs_max ? " abs_max" : " min_max");
          int clipped_groups = 0;
          for (std::size_t slot = 0; slot < expected.upper.size(); ++slot) {
            EXPECT_NEAR(clip.error[slot], expected.best_error[slot],
                        1e-9 + 1e-6 * expected.best_error[slot])
                << what << " slot " << slot;
            if (clip.upper_ratio[slot] != expected.upper[slot] ||
                clip.lower_ratio[slot] != expected.lower[slot]) {
              // Only a tie within rounding may pick another candidate: its brute-force error
              // must equal the minimum.
              std::size_t chosen = 0;
              while (expected.candidates[chosen] !=
                     std::make_pair(clip.upper_ratio[slot], clip.lower_ratio[slot]))
                ++chosen;
              EXPECT_NEAR(expected.error_at[chosen][slot], expected.best_error[slot],
                          1e-9 + 1e-6 * expected.best_error[slot])
                  << what << " slot " << slot;
            }
            if (expected.upper[slot] != 1.0f || expected.lower[slot] != 1.0f) ++clipped_groups;
          }
          // The case exercises the search: some group is clipped.
          if (bits == 2) {
            EXPECT_GT(clipped_groups, 0) << what;
          }
        }
      }
    }
  }
}

TEST(AutoClip, RankThreeIsEachExpertAlone) {
  const int64_t experts = 3, n = 10, k = 96;  // K < 128: one short group
  const std::vector<float> weights = outlier_weights(experts * n, k, 31);
  // Each expert sees its own number of tokens, as after routing.
  const int64_t tokens[experts] = {20, 64, 33};
  std::vector<std::vector<float>> x;
  Views views;
  for (int64_t e = 0; e < experts; ++e) {
    x.push_back(activations_quiet_on_outliers(tokens[e], k, n, static_cast<uint32_t>(40 + e)));
  }
  for (int64_t e = 0; e < experts; ++e)
    views.emplace_back(x[static_cast<std::size_t>(e)].data(), Shape({tokens[e], k}));
  for (const SolverCase& c : solver_cases()) {
    for (int bits : {2, 4, 8}) {
      for (int64_t group : {int64_t{32}, int64_t{128}, nibble::kPerChannel}) {
        const QuantConfig config{bits, group, c.symmetric, c.convention};
        AutoClipOptions options;
        use_solver(options, c);
        const Shape shape({experts, n, k});
        const TensorView<const float> all(weights.data(), shape);
        const AutoClipResult fused = nibble::autoclip<float>(all, views, config, options);
        const QuantTensor<float> fused_q =
            nibble::autoclip_quantize<float>(all, views, config, options);
        for (int64_t e = 0; e < experts; ++e) {
          const AutoClipResult alone = nibble::autoclip<float>(
              all.slice(e), views[static_cast<std::size_t>(e)], config, options);
          const auto begin = static_cast<std::ptrdiff_t>(e * n * k);
          EXPECT_TRUE(
              std::equal(alone.clipped.begin(), alone.clipped.end(), fused.clipped.begin() + begin))
              << describe(c, bits, group) << " expert " << e;
          const auto slot = static_cast<std::ptrdiff_t>(e * n * fused.n_groups);
          EXPECT_TRUE(std::equal(alone.upper_ratio.begin(), alone.upper_ratio.end(),
                                 fused.upper_ratio.begin() + slot));
          const QuantTensor<float> alone_q =
              nibble::quantize_with_solver<float>(alone.clipped_view(), config, options.solver);
          const auto bytes = static_cast<std::ptrdiff_t>(n * fused_q.layout().packed_row_bytes);
          EXPECT_TRUE(std::equal(alone_q.qweight().begin(), alone_q.qweight().end(),
                                 fused_q.qweight().begin() + e * bytes))
              << describe(c, bits, group) << " expert " << e;
          const auto scales = static_cast<std::ptrdiff_t>(n * fused_q.layout().n_groups);
          EXPECT_TRUE(std::equal(alone_q.scales().begin(), alone_q.scales().end(),
                                 fused_q.scales().begin() + e * scales));
        }
        // One shared matrix: the same as the flattened [E * N, K] tensor.
        const AutoClipResult shared = nibble::autoclip<float>(all, views[1], config, options);
        const AutoClipResult flat = nibble::autoclip<float>(
            TensorView<const float>(weights.data(), Shape({experts * n, k})), views[1], config,
            options);
        EXPECT_EQ(shared.clipped, flat.clipped) << describe(c, bits, group);
      }
    }
  }
}

TEST(AutoClip, ThreadsAndWeightTypesGiveTheSameResult) {
  const int64_t rows = 300, k = 160, tokens = 48;  // two row blocks of the error GEMMs
  const std::vector<float> weights = outlier_weights(rows, k, 51);
  const std::vector<float> x = activations_quiet_on_outliers(tokens, k, rows, 52);
  const QuantConfig config{4, 32, false, ConventionId::olive};
  AutoClipOptions serial, parallel;
  serial.num_threads = 1;
  parallel.num_threads = 2;
  const TensorView<const float> x_view(x.data(), Shape({tokens, k}));
  const AutoClipResult one = nibble::autoclip<float>(
      TensorView<const float>(weights.data(), Shape({rows, k})), x_view, config, serial);
  const AutoClipResult two = nibble::autoclip<float>(
      TensorView<const float>(weights.data(), Shape({rows, k})), x_view, config, parallel);
  EXPECT_EQ(one.clipped, two.clipped);
  EXPECT_EQ(one.error, two.error);
  // fp16 weights are searched as their float values.
  const auto half = nibble::testing::converted<nibble::fp16>(weights);
  std::vector<float> widened;
  for (nibble::fp16 value : half)
    widened.push_back(nibble::to_float(value));
  const AutoClipResult from_half = nibble::autoclip<float>(
      TensorView<const nibble::fp16>(half.data(), Shape({rows, k})), x_view, config, serial);
  const AutoClipResult from_float = nibble::autoclip<float>(
      TensorView<const float>(widened.data(), Shape({rows, k})), x_view, config, serial);
  EXPECT_EQ(from_half.clipped, from_float.clipped);
}

TEST(AutoClip, MaxTokensScoresEveryStepthToken) {
  const int64_t rows = 8, k = 64, tokens = 20;
  const std::vector<float> weights = outlier_weights(rows, k, 61);
  const std::vector<float> x = activations_quiet_on_outliers(tokens, k, rows, 62);
  // max_tokens 8 of 20: step 20 / 8 = 2, tokens 0, 2, ..., 18 (Olive's input_feat[::step]).
  std::vector<float> sampled;
  for (int64_t t = 0; t < tokens; t += 2)
    sampled.insert(sampled.end(), x.begin() + t * k, x.begin() + (t + 1) * k);
  const QuantConfig config{2, 32, false, ConventionId::olive};
  AutoClipOptions options;
  options.max_tokens = 8;
  const TensorView<const float> w(weights.data(), Shape({rows, k}));
  const AutoClipResult subsampled = nibble::autoclip<float>(
      w, TensorView<const float>(x.data(), Shape({tokens, k})), config, options);
  const AutoClipResult explicit_rows = nibble::autoclip<float>(
      w, TensorView<const float>(sampled.data(), Shape({tokens / 2, k})), config);
  EXPECT_EQ(subsampled.clipped, explicit_rows.clipped);
  EXPECT_EQ(subsampled.error, explicit_rows.error);
}

TEST(AutoClip, OddShapes) {
  // K not a multiple of the group, N = 1, K = 1, a rank-1 tensor.
  const int64_t shapes[][2] = {{5, 70}, {1, 70}, {1, 1}, {4, 1}, {3, 33}};
  for (const auto& dims : shapes) {
    const int64_t rows = dims[0], k = dims[1];
    const std::vector<float> weights = outlier_weights(rows, k, static_cast<uint32_t>(k + rows));
    const std::vector<float> x = activations_quiet_on_outliers(12, k, rows, 71);
    for (const SolverCase& c : solver_cases()) {
      for (int64_t group : {int64_t{32}, nibble::kPerChannel}) {
        const QuantConfig config{2, group, c.symmetric, c.convention};
        AutoClipOptions options;
        use_solver(options, c);
        const AutoClipResult clip = nibble::autoclip<float>(
            TensorView<const float>(weights.data(), Shape({rows, k})),
            TensorView<const float>(x.data(), Shape({12, k})), config, options);
        const std::vector<float> plain = fake_quantize(weights, Shape({rows, k}), config, c.solver);
        const std::vector<float> clipped =
            fake_quantize(clip.clipped, Shape({rows, k}), config, c.solver);
        EXPECT_LE(per_group_error(weights, clipped, rows, k, group, {x}),
                  per_group_error(weights, plain, rows, k, group, {x}) * (1 + 1e-9))
            << describe(c, 2, group) << " shape " << rows << "x" << k;
        EXPECT_EQ(clip.upper_ratio.size(), static_cast<std::size_t>(rows * clip.n_groups));
      }
    }
  }
  // Rank 1: one row.
  const std::vector<float> weights = outlier_weights(1, 40, 81);
  const std::vector<float> x = activations_quiet_on_outliers(9, 40, 1, 82);
  const AutoClipResult clip = nibble::autoclip<float>(
      TensorView<const float>(weights.data(), Shape({40})),
      TensorView<const float>(x.data(), Shape({9, 40})), QuantConfig{2, 16, false});
  EXPECT_EQ(clip.clipped.size(), 40u);
  EXPECT_EQ(clip.n_groups, 3);
}

TEST(AutoClip, RatioGridIsTheToolsGrid) {
  // AWQ's n_grid = 20, max_shrink = 0.5: 1 - i / 20 for i < 10. With weights whose best clip is
  // hard, every chosen ratio lies on that grid.
  const int64_t rows = 16, k = 128, tokens = 32;
  const std::vector<float> weights = outlier_weights(rows, k, 91);
  const std::vector<float> x = activations_quiet_on_outliers(tokens, k, rows, 92);
  const AutoClipResult clip = nibble::autoclip<float>(
      TensorView<const float>(weights.data(), Shape({rows, k})),
      TensorView<const float>(x.data(), Shape({tokens, k})), QuantConfig{2, 32, false});
  bool some_clipped = false;
  for (float ratio : clip.upper_ratio) {
    bool on_grid = false;
    for (int i = 0; i < 10; ++i)
      on_grid = on_grid || ratio == static_cast<float>(1.0 - i / 20.0);
    EXPECT_TRUE(on_grid) << ratio;
    some_clipped = some_clipped || ratio < 1.0f;
  }
  EXPECT_TRUE(some_clipped);
  EXPECT_EQ(clip.upper_ratio, clip.lower_ratio);  // abs_max: one ratio for both bounds
}

using AutoClipInput = nibble::testing::SearchInputTest;

TEST_F(AutoClipInput, BadInputIsRefused) {
  const auto with_options = [&](const AutoClipOptions& options) {
    return [&, options] { nibble::autoclip<float>(w, x_view, config, options); };
  };
  expect_shared_checks_refuse(
      "autoclip", [&](const TensorView<const float>& weights_view, const Views& activations) {
        nibble::autoclip<float>(weights_view, activations, config);
      });

  // The grid.
  AutoClipOptions options;
  options.steps = 0;
  expect_error_mentioning(with_options(options), "AutoClipOptions.steps = 0 (expected >= 1");
  options = {};
  options.min_ratio = 0.0f;
  expect_error_mentioning(with_options(options),
                          "AutoClipOptions.min_ratio = 0 (expected a ratio in (0, 1]");
  options.min_ratio = 1.5f;
  expect_error_mentioning(with_options(options), "AutoClipOptions.min_ratio = 1.5");
  options.min_ratio = std::nanf("");
  expect_error_mentioning(with_options(options), "AutoClipOptions.min_ratio = nan");
  options = {};
  options.num_threads = -2;
  expect_error_mentioning(with_options(options), "AutoClipOptions.num_threads = -2");
  options = {};
  options.max_tokens = -1;
  expect_error_mentioning(with_options(options), "max_tokens = -1 (expected >= 0");
  // The solver's own checks still apply.
  AutoClipOptions symmetric_ort;
  symmetric_ort.solver.kind = SearchSolver::k_quant;
  symmetric_ort.solver.kquant.variant = KQuantVariant::ort;
  expect_error_mentioning(
      [&] {
        nibble::autoclip<float>(w, x_view, QuantConfig{4, 32, true}, symmetric_ort);
      },
      "asymmetric only");
  expect_error_mentioning(
      [&] {
        nibble::autoclip<float>(w, x_view, QuantConfig{3, 32, false});
      },
      "bits = 3");
}

}  // namespace
