// The CPU GEMM kernels against independent truth, on every ISA compiled in and supported by this
// CPU (the others are skipped, saying why): the streaming kernels (M up to 8 on AVX-512, 4 on
// AVX2) and the panel kernels above, every bits x group x symmetry x scale / activation type, odd
// shapes. Tolerances are named and derived in support/kernel_checks.hpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "nibble/kernels/cpu/gemm.hpp"
#include "nibble/quantizer.hpp"
#include "support/kernel_checks.hpp"
#include "support/quant_fixtures.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::ActivationPrecision;
using nibble::bf16;
using nibble::ConventionId;
using nibble::fp16;
using nibble::Isa;
using nibble::QuantConfig;
using nibble::QuantTensor;
using nibble::Shape;
using nibble::TensorView;
using nibble::testing::as_multiplied;
using nibble::testing::output_rounding;

class GemmOnIsa : public ::testing::TestWithParam<Isa> {};

std::string case_name(int64_t m, int64_t n, int64_t k, const QuantConfig& config) {
  return "M" + std::to_string(m) + "xN" + std::to_string(n) + "xK" + std::to_string(k) + " bits " +
         std::to_string(config.bits) + " group " + std::to_string(config.group_size) +
         (config.symmetric ? " sym" : " asym");
}

template <class ActT>
std::vector<ActT> activations(int64_t count, uint32_t seed) {
  return nibble::testing::converted<ActT>(nibble::testing::gaussian(count, seed));
}

// Checks gemm (fp32 activations, type ActT; or bf16 / fp16 precision, which rounds X first)
// against gemm_ref of the values multiplied on one shape and config.
template <class ActT, class ScaleT = float>
void check_fp32_path(Isa isa, int64_t m, int64_t n, int64_t k, const QuantConfig& config,
                     bool with_bias = false, int threads = 0,
                     ActivationPrecision precision = ActivationPrecision::fp32) {
  SCOPED_TRACE(case_name(m, n, k, config) + " on " + nibble::to_string(isa) + ", " +
               nibble::to_string(precision) + " precision");
  const auto seed = static_cast<uint32_t>(m * 7919 + n * 104729 + k);
  const std::vector<float> weights = nibble::testing::gaussian(n * k, seed);
  const QuantTensor<ScaleT> q =
      nibble::quantize<ScaleT>(TensorView<const float>(weights.data(), {n, k}), config);
  const std::vector<ActT> x = activations<ActT>(m * k, seed + 1);
  const std::vector<ActT> bias = activations<ActT>(n, seed + 2);
  std::vector<float> x_float;
  for (ActT value : x)
    x_float.push_back(nibble::to_float(value));
  x_float = as_multiplied(std::move(x_float), precision);
  std::vector<float> bias_float;
  for (ActT value : bias)
    bias_float.push_back(nibble::to_float(value));

  std::vector<ActT> y(static_cast<std::size_t>(m * n));
  nibble::GemmOptions options;
  options.isa = isa;
  options.num_threads = threads;
  options.activations = precision;
  if (with_bias) {
    nibble::gemm(q.view(), TensorView<const ActT>(x.data(), {m, k}),
                 TensorView<ActT>(y.data(), {m, n}), TensorView<const ActT>(bias.data(), {n}),
                 options);
  } else {
    nibble::gemm(q.view(), TensorView<const ActT>(x.data(), {m, k}),
                 TensorView<ActT>(y.data(), {m, n}), options);
  }
  std::vector<float> reference(y.size());
  nibble::gemm_ref(q.view(), TensorView<const float>(x_float.data(), {m, k}),
                   TensorView<float>(reference.data(), {m, n}));
  const std::vector<float> w_hat = nibble::dequantize_ref(q.view());
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      double abs_products = 0.0;
      for (int64_t i = 0; i < k; ++i) {
        abs_products += std::fabs(double{x_float[static_cast<std::size_t>(row * k + i)]} *
                                  w_hat[static_cast<std::size_t>(col * k + i)]);
      }
      const auto index = static_cast<std::size_t>(row * n + col);
      const double expected =
          double{reference[index]} + (with_bias ? bias_float[static_cast<std::size_t>(col)] : 0.0);
      const double tolerance = static_cast<double>(k + 2) * std::ldexp(1.0, -23) * abs_products +
                               output_rounding<ActT>() * std::fabs(expected) + 1e-30;
      ASSERT_NEAR(nibble::to_float(y[index]), expected, tolerance)
          << "row " << row << " col " << col;
    }
  }
}

// Every configuration on both kernel families: M = 1 and 5 stream on AVX-512 (M = 5 is a panel on
// AVX2), M = 13 and 40 are panels everywhere (40: several register blocks and a tail).
TEST_P(GemmOnIsa, MatchesTheReferenceForEveryBitsGroupAndSymmetry) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (int64_t group :
           {int64_t{16}, int64_t{32}, int64_t{48}, int64_t{64}, int64_t{128}, int64_t{256}}) {
        // K not a multiple of the group; odd N.
        const int64_t k = 2 * group + 37;
        check_fp32_path<float>(GetParam(), 1, 67, k,
                               QuantConfig{bits, group, symmetric, ConventionId::ort});
        check_fp32_path<float>(GetParam(), 5, 33, k,
                               QuantConfig{bits, group, symmetric, ConventionId::olive});
        check_fp32_path<float>(GetParam(), 13, 37, k, QuantConfig{bits, group, symmetric},
                               /*with_bias=*/true);
        check_fp32_path<float>(GetParam(), 40, 33, k, QuantConfig{bits, group, symmetric});
      }
      // Per-channel: K a multiple of 16 (the fast kernels) and an odd K (the portable ones).
      for (int64_t k : {int64_t{256}, int64_t{401}}) {
        for (int64_t m : {int64_t{3}, int64_t{14}}) {
          check_fp32_path<float>(GetParam(), m, 41, k,
                                 QuantConfig{bits, nibble::kPerChannel, symmetric});
        }
      }
    }
  }
}

TEST_P(GemmOnIsa, EveryBatchSizeAndOddShapes) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 33, 129}) {
    check_fp32_path<float>(GetParam(), m, 29, 160, QuantConfig{4, 32, false},
                           /*with_bias=*/m % 2 == 0);
  }
  for (int64_t n : {1, 2, 17, 31, 63, 64, 65, 127, 129}) {
    check_fp32_path<float>(GetParam(), 2, n, 96, QuantConfig{4, 32, true});
  }
  for (int64_t k : {1, 15, 16, 17, 31, 33, 127, 129}) {
    check_fp32_path<float>(GetParam(), 3, 19, k, QuantConfig{8, 16, false});
  }
}

// bf16 / fp16 precision: X rounded to that type, then the fp32 kernels (or, bf16 on avx512bf16,
// vdpbf16ps) on every X type, batch and config family; held to gemm_ref of the rounded X.
TEST_P(GemmOnIsa, Bf16AndFp16PrecisionMultiplyXRoundedToThatType) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (ActivationPrecision precision : {ActivationPrecision::bf16, ActivationPrecision::fp16}) {
    for (int64_t m : {int64_t{1}, int64_t{3}, int64_t{13}}) {
      check_fp32_path<float>(GetParam(), m, 37, 2 * 32 + 37, QuantConfig{4, 32, true}, m == 3, 0,
                             precision);
      check_fp32_path<float>(GetParam(), m, 33, 256, QuantConfig{4, 64, false}, false, 0,
                             precision);
      check_fp32_path<float, fp16>(GetParam(), m, 19, 160, QuantConfig{8, 128, false}, false, 0,
                                   precision);
      check_fp32_path<float>(GetParam(), m, 17, 96, QuantConfig{2, nibble::kPerChannel, true},
                             false, 0, precision);
      // X of the other 16-bit type is rounded too (fp16 -> bf16 drops 3 mantissa bits).
      check_fp32_path<fp16>(GetParam(), m, 21, 128, QuantConfig{4, 32, true}, false, 0, precision);
      check_fp32_path<bf16>(GetParam(), m, 21, 128, QuantConfig{4, 32, false}, false, 0, precision);
    }
  }
}

// The rounding is real: bf16 precision on float X is not fp32 on it, and (where no vdpbf16ps
// kernel reorders the sums) it is bit for bit fp32 on the rounded X.
TEST_P(GemmOnIsa, Bf16PrecisionIsFp32OnRoundedX) {
  NIBBLE_REQUIRE_ISA(GetParam());
  const int64_t m = 3, n = 40, k = 256;
  const std::vector<float> weights = nibble::testing::gaussian(n * k, 11);
  const QuantTensor<float> q = nibble::quantize<float>(
      TensorView<const float>(weights.data(), {n, k}), QuantConfig{4, 32, true});
  const std::vector<float> x = nibble::testing::gaussian(m * k, 12);
  for (ActivationPrecision precision : {ActivationPrecision::bf16, ActivationPrecision::fp16}) {
    SCOPED_TRACE(nibble::to_string(precision));
    const std::vector<float> rounded = as_multiplied(x, precision);
    nibble::GemmOptions options;
    options.isa = GetParam();
    const auto run = [&](const std::vector<float>& values, ActivationPrecision as) {
      std::vector<float> y(static_cast<std::size_t>(m * n));
      options.activations = as;
      nibble::gemm(q.view(), TensorView<const float>(values.data(), {m, k}),
                   TensorView<float>(y.data(), {m, n}), options);
      return y;
    };
    const std::vector<float> y = run(x, precision);
    EXPECT_NE(y, run(x, ActivationPrecision::fp32));
    options.activations = precision;
    if (std::string(nibble::gemm_isa(q.view(), options)) != "avx512bf16" ||
        precision != ActivationPrecision::bf16) {
      EXPECT_EQ(y, run(rounded, ActivationPrecision::fp32));
    }
  }
}

TEST(Gemm, AnActivationPrecisionOutsideTheEnumIsAnError) {
  const std::vector<float> weights = nibble::testing::gaussian(8 * 32, 1);
  const QuantTensor<float> q = nibble::quantize<float>(
      TensorView<const float>(weights.data(), {8, 32}), QuantConfig{4, 32, true});
  std::vector<float> x(32, 1.0f), y(8);
  nibble::GemmOptions options;
  options.activations = static_cast<ActivationPrecision>(7);
  nibble::testing::expect_error(
      [&] {
        nibble::gemm(q.view(), TensorView<const float>(x.data(), {1, 32}),
                     TensorView<float>(y.data(), {1, 8}), options);
      },
      nibble::ErrorCode::invalid_argument, "is not an ActivationPrecision");
}

TEST_P(GemmOnIsa, M43xN500xK401) {
  NIBBLE_REQUIRE_ISA(GetParam());
  check_fp32_path<float>(GetParam(), 43, 500, 401, QuantConfig{4, 32, false}, /*with_bias=*/true);
  check_fp32_path<float>(GetParam(), 43, 500, 401, QuantConfig{4, 128, true}, true, /*threads=*/1);
}

TEST_P(GemmOnIsa, Fp16AndBf16ActivationsAndScales) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (bool symmetric : {false, true}) {
    check_fp32_path<fp16, fp16>(GetParam(), 3, 45, 200, QuantConfig{4, 32, symmetric}, true);
    check_fp32_path<bf16, bf16>(GetParam(), 3, 45, 200, QuantConfig{4, 32, symmetric}, true);
    check_fp32_path<float, bf16>(GetParam(), 1, 45, 256, QuantConfig{2, 64, symmetric});
    check_fp32_path<fp16, float>(GetParam(), 17, 45, 256, QuantConfig{8, 128, symmetric});
  }
}

// bf16 activations: on avx512bf16 the 4-bit streaming kernel multiplies them as they are
// (vdpbf16ps; groups that are whole 32-element units), everything else converts to fp32. Both
// must meet the fp32 path's bound.
TEST_P(GemmOnIsa, Bf16ActivationsForEveryBatchAndGroup) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (bool symmetric : {false, true}) {
    for (int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}, nibble::kPerChannel}) {
      for (int64_t m : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{5}, int64_t{8}}) {
        check_fp32_path<bf16, fp16>(GetParam(), m, 37, 256 + 64, QuantConfig{4, group, symmetric},
                                    /*with_bias=*/m % 2 == 1);
        check_fp32_path<bf16, bf16>(GetParam(), m, 35, 2 * 128 + 37,
                                    QuantConfig{4, group, symmetric});
      }
    }
    // Shapes the bf16 kernel leaves to the fp32 path: groups of 16, other widths, larger M.
    check_fp32_path<bf16, float>(GetParam(), 3, 33, 160, QuantConfig{4, 16, symmetric});
    check_fp32_path<bf16, float>(GetParam(), 2, 33, 160, QuantConfig{8, 32, symmetric});
    check_fp32_path<bf16, float>(GetParam(), 2, 33, 160, QuantConfig{2, 32, symmetric});
    check_fp32_path<bf16, float>(GetParam(), 13, 33, 160, QuantConfig{4, 32, symmetric});
  }
}

// The int8 path: against the same int8 activations evaluated exactly, and against fp32 within the
// activation-quantization bound.
template <class ScaleT = float>
void check_int8_path(Isa isa, int64_t m, int64_t n, int64_t k, const QuantConfig& config,
                     bool with_bias = false) {
  SCOPED_TRACE(case_name(m, n, k, config) + " int8 on " + nibble::to_string(isa));
  const auto seed = static_cast<uint32_t>(m * 31 + n * 131 + k * 7 + config.bits);
  const std::vector<float> weights = nibble::testing::gaussian(n * k, seed);
  const QuantTensor<ScaleT> q =
      nibble::quantize<ScaleT>(TensorView<const float>(weights.data(), {n, k}), config);
  std::vector<float> x = nibble::testing::gaussian(m * k, seed + 1);
  for (int64_t i = 0; i < std::min<int64_t>(k, 16); ++i)
    x[static_cast<std::size_t>(i)] = 0.0f;  // an all-zero activation block in row 0
  const std::vector<float> bias = nibble::testing::gaussian(n, seed + 2);
  const TensorView<const float> x_view(x.data(), {m, k});
  std::vector<float> y(static_cast<std::size_t>(m * n));
  nibble::GemmOptions options;
  options.isa = isa;
  options.activations = ActivationPrecision::int8;
  if (with_bias) {
    nibble::gemm(q.view(), x_view, TensorView<float>(y.data(), {m, n}),
                 TensorView<const float>(bias.data(), {n}), options);
  } else {
    nibble::gemm(q.view(), x_view, TensorView<float>(y.data(), {m, n}), options);
  }

  const auto layout = q.layout();
  const nibble::QuantizedActivations x_int8 =
      nibble::quantize_activations(x_view, layout.padded_k, layout.group_size);
  const std::vector<float> w_hat = nibble::dequantize_ref(q.view());
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      double fp32_bound = 0.0;
      const auto expected =
          nibble::testing::int8_expectation(q.view(), col, x_int8, row, &fp32_bound);
      const double offset = with_bias ? bias[static_cast<std::size_t>(col)] : 0.0;
      const auto fp32 =
          nibble::testing::fp32_expectation(x.data() + row * k, w_hat.data() + col * k, k);
      const double got = y[static_cast<std::size_t>(row * n + col)];
      ASSERT_NEAR(got, expected.value + offset, expected.tolerance + 1e-7 * std::fabs(offset))
          << "row " << row << " col " << col;
      ASSERT_NEAR(got, fp32.value + offset, fp32_bound + 1e-7 * std::fabs(offset))
          << "row " << row << " col " << col;
    }
  }
}

// Long K (several panel K blocks, stream prefetches across rows) and more rows of X than one
// panel pass holds.
TEST_P(GemmOnIsa, LongRowsAndTallBatches) {
  NIBBLE_REQUIRE_ISA(GetParam());
  check_fp32_path<float>(GetParam(), 1, 70, 2048 + 16, QuantConfig{4, 32, false});
  check_fp32_path<float>(GetParam(), 19, 70, 2048 + 16, QuantConfig{2, 128, false});
  check_fp32_path<float>(GetParam(), 200, 40, 64, QuantConfig{4, 32, true}, /*with_bias=*/true);
  check_int8_path(GetParam(), 200, 40, 64, QuantConfig{8, 32, false});
  check_int8_path(GetParam(), 11, 70, 2048 + 16, QuantConfig{4, 128, true});
}

// Small batches over long rows: the streaming kernels walk K in blocks that keep X in L1, tiles
// of W rows waiting in between (M = 4 on AVX2, 8 on AVX-512, K = 4096 + 48).
TEST_P(GemmOnIsa, StreamingKBlocks) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (int64_t group : {int64_t{32}, int64_t{48}, int64_t{128}, nibble::kPerChannel}) {
        const QuantConfig config{bits, group, symmetric};
        for (int64_t m : {int64_t{4}, int64_t{8}}) {
          check_fp32_path<float>(GetParam(), m, 37, 4096 + 48, config, /*with_bias=*/true);
          check_int8_path(GetParam(), m, 37, 4096 + 48, config);
        }
      }
    }
  }
}

TEST_P(GemmOnIsa, Int8ActivationsMatchTheirExactValueAndStayWithinTheBound) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (int64_t group : {int64_t{16}, int64_t{32}, int64_t{48}, int64_t{64}, int64_t{128},
                            int64_t{256}, nibble::kPerChannel}) {
        check_int8_path(GetParam(), 1, 37, 300, QuantConfig{bits, group, symmetric});
        check_int8_path<fp16>(GetParam(), 6, 21, 512, QuantConfig{bits, group, symmetric});
        check_int8_path<bf16>(GetParam(), 13, 35, 2 * 64 + 37, QuantConfig{bits, group, symmetric},
                              /*with_bias=*/true);
      }
    }
  }
  check_int8_path(GetParam(), 43, 500, 401, QuantConfig{4, 32, false}, /*with_bias=*/true);
  for (int64_t m : {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33}) {
    check_int8_path(GetParam(), m, 29, 160, QuantConfig{4, 32, false});
  }
}

TEST_P(GemmOnIsa, Rank3WeightsAreOneMatrixOfAllTheirRows) {
  NIBBLE_REQUIRE_ISA(GetParam());
  const std::vector<float> weights = nibble::testing::gaussian(3 * 20 * 64, 5);
  const auto rank3 = nibble::quantize<float>(TensorView<const float>(weights.data(), {3, 20, 64}),
                                             QuantConfig{4, 32, false});
  const std::vector<float> x = nibble::testing::gaussian(2 * 64, 6);
  std::vector<float> y(2 * 60);
  std::vector<float> y_ref(2 * 60);
  nibble::GemmOptions options;
  options.isa = GetParam();
  nibble::gemm(rank3.view(), TensorView<const float>(x.data(), {2, 64}),
               TensorView<float>(y.data(), {2, 60}), options);
  nibble::gemm_ref(rank3.view(), TensorView<const float>(x.data(), {2, 64}),
                   TensorView<float>(y_ref.data(), {2, 60}));
  for (std::size_t i = 0; i < y.size(); ++i)
    EXPECT_NEAR(y[i], y_ref[i], 1e-4) << i;
}

INSTANTIATE_TEST_SUITE_P(Isa, GemmOnIsa, ::testing::ValuesIn(nibble::testing::kIsas),
                         nibble::testing::isa_test_name);

TEST(Gemm, ThreadCountDoesNotChangeTheResult) {
  const std::vector<float> weights = nibble::testing::gaussian(300 * 256, 9);
  const auto q = nibble::quantize<float>(TensorView<const float>(weights.data(), {300, 256}),
                                         QuantConfig{4, 64, false});
  const std::vector<float> x = nibble::testing::gaussian(7 * 256, 10);
  std::vector<float> one(7 * 300);
  std::vector<float> two(7 * 300);
  for (auto [threads, y] : {std::pair<int, std::vector<float>*>{1, &one}, {2, &two}}) {
    nibble::GemmOptions options;
    options.num_threads = threads;
    nibble::gemm(q.view(), TensorView<const float>(x.data(), {7, 256}),
                 TensorView<float>(y->data(), {7, 300}), options);
  }
  EXPECT_EQ(one, two);  // columns are independent: the split never changes a sum
}

// Re-entrancy: calls from several threads at once (each with its own OpenMP team) give exactly
// what the same calls give one after another.
TEST(Gemm, ConcurrentCallsGiveTheSerialResults) {
  constexpr int kCallers = 4;
  std::vector<QuantTensor<fp16>> weights;
  std::vector<std::vector<float>> inputs;
  std::vector<std::vector<float>> serial(kCallers);
  std::vector<std::vector<float>> concurrent(kCallers);
  const int64_t n = 96;
  const int64_t k = 320;
  for (int caller = 0; caller < kCallers; ++caller) {
    const std::vector<float> w =
        nibble::testing::gaussian(n * k, 50 + static_cast<uint32_t>(caller));
    weights.push_back(nibble::quantize<fp16>(TensorView<const float>(w.data(), {n, k}),
                                             QuantConfig{caller % 2 == 0 ? 4 : 8, 64, caller < 2}));
    inputs.push_back(
        nibble::testing::gaussian((caller + 1) * 5 * k, 60 + static_cast<uint32_t>(caller)));
  }
  const auto run = [&](int caller, std::vector<float>& out) {
    const int64_t m = (caller + 1) * 5;  // 5 .. 20 rows: streaming and panel kernels
    out.assign(static_cast<std::size_t>(m * n), 0.0f);
    nibble::GemmOptions options;
    options.num_threads = 2;
    options.activations = caller == 3 ? ActivationPrecision::int8 : ActivationPrecision::fp32;
    for (int repeat = 0; repeat < 20; ++repeat) {
      nibble::gemm(weights[static_cast<std::size_t>(caller)].view(),
                   TensorView<const float>(inputs[static_cast<std::size_t>(caller)].data(), {m, k}),
                   TensorView<float>(out.data(), {m, n}), options);
    }
  };
  for (int caller = 0; caller < kCallers; ++caller)
    run(caller, serial[static_cast<std::size_t>(caller)]);
  std::vector<std::thread> threads;
  for (int caller = 0; caller < kCallers; ++caller)
    threads.emplace_back(run, caller, std::ref(concurrent[static_cast<std::size_t>(caller)]));
  for (std::thread& thread : threads)
    thread.join();
  for (int caller = 0; caller < kCallers; ++caller) {
    EXPECT_EQ(serial[static_cast<std::size_t>(caller)],
              concurrent[static_cast<std::size_t>(caller)])
        << "caller " << caller;
  }
}

TEST(Gemm, BadInputIsAnError) {
  const std::vector<float> weights = nibble::testing::gaussian(8 * 64, 1);
  const auto q = nibble::quantize<float>(TensorView<const float>(weights.data(), {8, 64}),
                                         QuantConfig{4, 32, false});
  std::vector<float> buffer(1024);
  const auto code_of = [&](auto&& call) {
    try {
      call();
    } catch (const nibble::Error& error) {
      return error.code();
    }
    return nibble::ErrorCode::io;
  };
  EXPECT_EQ(code_of([&] {
              nibble::gemm(q.view(), TensorView<const float>(buffer.data(), {2, 63}),
                           TensorView<float>(buffer.data(), {2, 8}));
            }),
            nibble::ErrorCode::shape_mismatch);
  EXPECT_EQ(code_of([&] {
              nibble::gemm(q.view(), TensorView<const float>(buffer.data(), {2, 64}),
                           TensorView<float>(buffer.data(), {2, 7}));
            }),
            nibble::ErrorCode::shape_mismatch);
  EXPECT_EQ(code_of([&] {
              nibble::gemm(q.view(), TensorView<const float>(buffer.data(), {2, 64}),
                           TensorView<float>(buffer.data(), {2, 8}),
                           TensorView<const float>(buffer.data(), {9}));
            }),
            nibble::ErrorCode::shape_mismatch);
  nibble::GemmOptions negative;
  negative.num_threads = -2;
  EXPECT_EQ(code_of([&] {
              nibble::gemm(q.view(), TensorView<const float>(buffer.data(), {2, 64}),
                           TensorView<float>(buffer.data(), {2, 8}), negative);
            }),
            nibble::ErrorCode::invalid_argument);
  for (Isa isa : {Isa::avx2, Isa::avx512, Isa::avx512vnni, Isa::avx512bf16}) {
    if (nibble::detail::compiled_kernels(isa) != nullptr) continue;
    nibble::GemmOptions unavailable;
    unavailable.isa = isa;
    EXPECT_EQ(code_of([&] {
                nibble::gemm(q.view(), TensorView<const float>(buffer.data(), {2, 64}),
                             TensorView<float>(buffer.data(), {2, 8}), unavailable);
              }),
              nibble::ErrorCode::unsupported);
  }
  EXPECT_THROW(nibble::isa_from_name("avx1024"), nibble::Error);
  // An empty batch cannot be expressed: shapes reject zero-sized dimensions, with a message.
  EXPECT_EQ(code_of([&] {
              TensorView<const float>(buffer.data(), {0, 64});
            }),
            nibble::ErrorCode::shape_mismatch);
  // Null activations are rejected by the view.
  EXPECT_EQ(code_of([&] {
              TensorView<const float>(nullptr, {2, 64});
            }),
            nibble::ErrorCode::null_pointer);
}

// Every ISA may be asked about on every CPU: a table this CPU cannot run is never touched (its
// getter is compiled for that ISA, and on an AVX2-only Zen 3 calling the AVX-512 one was an
// illegal instruction in the first gemm call, before any kernel ran), and a request for it is an
// error that names it.
TEST(Gemm, AskingForAnIsaThisCpuLacksIsAnErrorNotACrash) {
  const std::vector<float> weights = nibble::testing::gaussian(8 * 64, 11);
  const auto q = nibble::quantize<nibble::fp16>(TensorView<const float>(weights.data(), {8, 64}),
                                                QuantConfig{4, 32, true});
  for (Isa isa : nibble::testing::kIsas) {
    const bool runs_here = nibble::detail::kernels_compiled(isa) && nibble::cpu_supports(isa);
    EXPECT_EQ(nibble::detail::compiled_kernels(isa) != nullptr, runs_here)
        << nibble::to_string(isa);
    nibble::GemmOptions options;
    options.isa = isa;
    if (runs_here) {
      EXPECT_NO_THROW(nibble::gemm_isa(q.view(), options)) << nibble::to_string(isa);
    } else {
      try {
        nibble::gemm_isa(q.view(), options);
        ADD_FAILURE() << nibble::to_string(isa) << " was accepted on a CPU that cannot run it";
      } catch (const nibble::Error& error) {
        EXPECT_EQ(error.code(), nibble::ErrorCode::unsupported);
        EXPECT_NE(std::string(error.what()).find(nibble::to_string(isa)), std::string::npos)
            << error.what();
      }
    }
  }
  // The automatic choice is one this CPU runs.
  EXPECT_NE(nibble::detail::compiled_kernels(nibble::detail::resolve_isa(Isa::automatic)), nullptr);
}

TEST(QuantizeActivations, CodesAreWithinHalfAScaleAndSumsAreExact) {
  const std::vector<float> x = nibble::testing::gaussian(3 * 100, 4, 3.0f);
  const auto quantized =
      nibble::quantize_activations(TensorView<const float>(x.data(), {3, 100}), 128, 32);
  ASSERT_EQ(quantized.block, 32);
  for (int64_t row = 0; row < 3; ++row) {
    for (int64_t b = 0; b < 4; ++b) {
      const float scale = quantized.scales[static_cast<std::size_t>(row * 4 + b)];
      int32_t sum = 0;
      float amax = 0.0f;
      for (int64_t i = b * 32; i < (b + 1) * 32; ++i) {
        const int8_t code = quantized.codes[static_cast<std::size_t>(row * 128 + i)];
        sum += code;
        ASSERT_GE(code, -127);
        if (i < 100) {
          const float value = x[static_cast<std::size_t>(row * 100 + i)];
          amax = std::max(amax, std::fabs(value));
          ASSERT_LE(std::fabs(value - code * scale), scale / 2 * (1 + 1e-6f)) << row << "," << i;
        } else {
          ASSERT_EQ(code, 0);  // padding
        }
      }
      EXPECT_EQ(sum, quantized.code_sums[static_cast<std::size_t>(row * 4 + b)]);
      EXPECT_FLOAT_EQ(scale, amax / 127.0f);
    }
  }
  EXPECT_THROW(nibble::quantize_activations(TensorView<const float>(x.data(), {3, 100}), 96, 32),
               nibble::Error);
}

}  // namespace
