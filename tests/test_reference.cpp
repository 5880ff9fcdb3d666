// Reference kernels against independent truths: the dequantization formula evaluated from
// unpack<Bits>, Eigen's fp32 GEMM on the dequantized weights, and the fp32 product with the
// original weights (within the per-bit RTN tolerance).
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/quantizer.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::ConventionId;
using nibble::Error;
using nibble::ErrorCode;
using nibble::QuantConfig;
using nibble::QuantTensor;
using nibble::Shape;
using nibble::TensorView;
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

QuantTensor<float> quantize(const std::vector<float>& weights, const Shape& shape,
                            const QuantConfig& config) {
  return nibble::quantize<float>(TensorView<const float>(weights.data(), shape), config);
}

// Bound on |fp32 dot - exact dot| for K terms: gamma_K * sum |x_i w_i| with gamma_K ~ K * 2^-24;
// twice that covers Eigen's blocked summation order.
double fp32_dot_tolerance(int64_t k, double sum_abs_products) {
  return static_cast<double>(k + 1) * std::ldexp(1.0, -23) * sum_abs_products;
}

template <int Bits>
void check_dequantize_formula(const QuantConfig& config) {
  const Shape shape{7, 45};
  const std::vector<float> weights = nibble::testing::gaussian(shape.numel(), 13);
  const auto q = quantize(weights, shape, config);
  const auto layout = q.layout();
  const std::vector<uint8_t> codes = nibble::unpack<Bits>(
      TensorView<const uint8_t>(q.qweight().data(), Shape{7, layout.packed_row_bytes}),
      layout.padded_k);
  std::vector<uint8_t> zeros(static_cast<std::size_t>(7 * layout.n_groups), 1 << (Bits - 1));
  if (!config.symmetric) {
    zeros = nibble::unpack<Bits>(
        TensorView<const uint8_t>(q.zeros().data(), Shape{7, layout.zero_row_bytes}),
        layout.n_groups);
  }
  const std::vector<float> dequantized = nibble::dequantize_ref(q.view());
  for (int64_t row = 0; row < 7; ++row) {
    for (int64_t col = 0; col < 45; ++col) {
      const auto group = static_cast<std::size_t>(row * layout.n_groups + col / layout.group_size);
      const float expected =
          static_cast<float>(codes[static_cast<std::size_t>(row * layout.padded_k + col)] -
                             zeros[group]) *
          q.scales()[group];
      ASSERT_EQ(dequantized[static_cast<std::size_t>(row * 45 + col)], expected)
          << row << "," << col;
    }
  }
}

TEST(DequantizeRef, EvaluatesTheFormulaOnEveryRealElement) {
  for (bool symmetric : {false, true}) {
    for (int64_t group_size : {int64_t{16}, nibble::kPerChannel}) {
      check_dequantize_formula<2>(QuantConfig{2, group_size, symmetric, ConventionId::ort});
      check_dequantize_formula<4>(QuantConfig{4, group_size, symmetric, ConventionId::olive});
      check_dequantize_formula<8>(QuantConfig{8, group_size, symmetric, ConventionId::ort_gather});
    }
  }
}

TEST(DequantizeRef, GroupMapPicksEachColumnsGroup) {
  // 2 maps of K = 20 for [2, 3, 20] weights: rows 0-2 use map 0, rows 3-5 map 1.
  const Shape shape{2, 3, 20};
  const std::vector<float> weights = nibble::testing::gaussian(shape.numel(), 21);
  for (bool symmetric : {false, true}) {
    const auto q = quantize(weights, shape, QuantConfig{4, 8, symmetric});
    const auto view = q.view();
    const int64_t k = 20, n_groups = q.layout().n_groups;  // 3
    std::vector<int32_t> canonical(static_cast<std::size_t>(2 * k));
    std::vector<int32_t> scrambled(canonical.size());
    for (int64_t i = 0; i < 2 * k; ++i) {
      canonical[static_cast<std::size_t>(i)] = static_cast<int32_t>((i % k) / 8);
      scrambled[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 7 + i / k) % n_groups);
    }
    // The map j -> j / G is the default.
    EXPECT_EQ(nibble::dequantize_ref(view, TensorView<const int32_t>(canonical.data(), {2, k})),
              nibble::dequantize_ref(view));
    EXPECT_EQ(nibble::dequantize_ref(view, TensorView<const int32_t>(canonical.data(), {k})),
              nibble::dequantize_ref(view));
    const std::vector<float> mapped =
        nibble::dequantize_ref(view, TensorView<const int32_t>(scrambled.data(), {2, k}));
    for (int64_t row = 0; row < view.rows(); ++row) {
      for (int64_t col = 0; col < k; ++col) {
        const int64_t group = scrambled[static_cast<std::size_t>((row / 3) * k + col)];
        const float expected =
            static_cast<float>(view.code(row, col) - view.zero_point(row, group)) *
            view.scale(row, group);
        ASSERT_EQ(mapped[static_cast<std::size_t>(row * k + col)], expected) << row << "," << col;
      }
    }
    // A map of the wrong shape, or naming a group that does not exist.
    EXPECT_THROW(nibble::dequantize_ref(view, TensorView<const int32_t>(canonical.data(), {4, 10})),
                 Error);
    EXPECT_THROW(nibble::dequantize_ref(view, TensorView<const int32_t>(canonical.data(), {1, 40})),
                 Error);
    std::vector<int32_t> bad = canonical;
    bad[5] = static_cast<int32_t>(n_groups);
    try {
      nibble::dequantize_ref(view, TensorView<const int32_t>(bad.data(), {2, k}));
      ADD_FAILURE() << "no error";
    } catch (const Error& error) {
      EXPECT_EQ(error.code(), ErrorCode::invalid_argument);
      EXPECT_NE(std::string(error.what()).find("group_map[0, 5] = 3"), std::string::npos)
          << error.what();
    }
  }
}

struct GemmCase {
  int64_t m, n, k;
  QuantConfig config;
};

void check_gemm_against_eigen(const GemmCase& test) {
  const std::string name = "M" + std::to_string(test.m) + "xN" + std::to_string(test.n) + "xK" +
                           std::to_string(test.k) + " bits " + std::to_string(test.config.bits) +
                           " group " + std::to_string(test.config.group_size) +
                           (test.config.symmetric ? " sym" : " asym");
  SCOPED_TRACE(name);
  const auto seed = static_cast<uint32_t>(test.m * 1000003 + test.n * 1009 + test.k);
  const std::vector<float> weights = nibble::testing::gaussian(test.n * test.k, seed);
  const std::vector<float> x = nibble::testing::gaussian(test.m * test.k, seed + 1);
  const std::vector<float> bias = nibble::testing::gaussian(test.n, seed + 2);
  const auto q = quantize(weights, Shape{test.n, test.k}, test.config);

  std::vector<float> y(static_cast<std::size_t>(test.m * test.n));
  std::vector<float> y_bias(y.size());
  nibble::gemm_ref(q.view(), TensorView<const float>(x.data(), {test.m, test.k}),
                   TensorView<float>(y.data(), {test.m, test.n}));
  nibble::gemm_ref(q.view(), TensorView<const float>(x.data(), {test.m, test.k}),
                   TensorView<float>(y_bias.data(), {test.m, test.n}),
                   TensorView<const float>(bias.data(), {test.n}));

  const std::vector<float> dequantized = nibble::dequantize_ref(q.view());
  const Eigen::Map<const RowMatrix> w_hat(dequantized.data(), test.n, test.k);
  const Eigen::Map<const RowMatrix> x_matrix(x.data(), test.m, test.k);
  const RowMatrix eigen = x_matrix * w_hat.transpose();
  const RowMatrix abs_products = x_matrix.cwiseAbs() * w_hat.cwiseAbs().transpose();

  // Output error against the fp32 product with the original weights. Output (m, n) errs by
  // sum_k x_mk * dw_nk; with independent weight errors its expected square is
  // sum_k x_mk^2 dw_nk^2, so normalising the squared errors by sum_k x_mk^2 w_nk^2 (not by the
  // outputs, which can cancel to ~0) gives the weights' relative RMS error back.
  const Eigen::Map<const RowMatrix> w(weights.data(), test.n, test.k);
  const RowMatrix exact = x_matrix * w.transpose();
  const RowMatrix expected_squares =
      x_matrix.array().square().matrix() * w.array().square().matrix().transpose();
  double error_squares = 0.0;
  double normaliser = 0.0;
  for (int64_t row = 0; row < test.m; ++row) {
    for (int64_t col = 0; col < test.n; ++col) {
      const auto index = static_cast<std::size_t>(row * test.n + col);
      const double tolerance = fp32_dot_tolerance(test.k, abs_products(row, col));
      ASSERT_NEAR(y[index], eigen(row, col), tolerance) << row << "," << col;
      ASSERT_NEAR(y_bias[index], eigen(row, col) + bias[static_cast<std::size_t>(col)],
                  tolerance + 1e-6 * std::fabs(bias[static_cast<std::size_t>(col)]))
          << row << "," << col;
      error_squares += std::pow(double{y[index]} - exact(row, col), 2);
      normaliser += expected_squares(row, col);
    }
  }
  // The per-bit tolerance is calibrated for groups of <= 32 Gaussian values; per-channel rows
  // of ~128 values span a wider range, and Olive's symmetric rule clips all-positive rows (both
  // covered in test_quantizer). With few samples the ratio is noisy: ask for a few hundred terms.
  if (test.config.group_size == 16 && test.m * test.n * test.k >= 500) {
    EXPECT_LE(std::sqrt(error_squares / normaliser),
              nibble::testing::rtn_relative_rms_tolerance(test.config.bits) * 1.25);
  }
}

TEST(GemmRef, MatchesEigenOnOddShapes) {
  for (int64_t m : {1, 2, 3, 17}) {
    for (int64_t n : {1, 3, 17}) {
      for (int64_t k : {1, 5, 31, 33, 127, 129}) {
        for (int bits : {2, 4, 8}) {
          for (bool symmetric : {false, true}) {
            check_gemm_against_eigen(
                {m, n, k, QuantConfig{bits, 16, symmetric, ConventionId::ort}});
            check_gemm_against_eigen(
                {m, n, k, QuantConfig{bits, nibble::kPerChannel, symmetric, ConventionId::olive}});
          }
        }
      }
    }
  }
}

TEST(GemmRef, M43xN500xK401) {
  for (int bits : {2, 4, 8}) {
    check_gemm_against_eigen({43, 500, 401, QuantConfig{bits, 16, false, ConventionId::olive}});
    check_gemm_against_eigen({43, 500, 401, QuantConfig{bits, 128, true, ConventionId::ort}});
  }
}

TEST(GemmRef, LeadingDimensionsOfXAndWFlatten) {
  // W [2, 3, 20] is N = 6 rows; x [2, 2, 20] is M = 4 rows; y keeps x's leading dims.
  const std::vector<float> weights = nibble::testing::gaussian(120, 2);
  const std::vector<float> x = nibble::testing::gaussian(80, 3);
  const auto rank3 = quantize(weights, Shape{2, 3, 20}, QuantConfig{4, 8, false});
  const auto rank2 = quantize(weights, Shape{6, 20}, QuantConfig{4, 8, false});
  std::vector<float> y3(24);
  std::vector<float> y2(24);
  nibble::gemm_ref(rank3.view(), TensorView<const float>(x.data(), {2, 2, 20}),
                   TensorView<float>(y3.data(), {2, 2, 6}));
  nibble::gemm_ref(rank2.view(), TensorView<const float>(x.data(), {4, 20}),
                   TensorView<float>(y2.data(), {4, 6}));
  EXPECT_EQ(y3, y2);
}

TEST(GemmRef, RejectsMismatchedOperands) {
  const std::vector<float> weights = nibble::testing::gaussian(40, 2);
  const auto q = quantize(weights, Shape{4, 10}, QuantConfig{4, 8, false});
  std::vector<float> buffer(64);
  const auto code_of = [&](auto&& call) {
    try {
      call();
    } catch (const Error& error) {
      return error.code();
    }
    return ErrorCode::unsupported;
  };
  EXPECT_EQ(code_of([&] {
              nibble::gemm_ref(q.view(), TensorView<const float>(buffer.data(), {2, 9}),
                               TensorView<float>(buffer.data(), {2, 4}));
            }),
            ErrorCode::shape_mismatch);
  EXPECT_EQ(code_of([&] {
              nibble::gemm_ref(q.view(), TensorView<const float>(buffer.data(), {2, 10}),
                               TensorView<float>(buffer.data(), {2, 5}));
            }),
            ErrorCode::shape_mismatch);
  EXPECT_EQ(code_of([&] {
              nibble::gemm_ref(q.view(), TensorView<const float>(buffer.data(), {2, 10}),
                               TensorView<float>(buffer.data(), {2, 4}),
                               TensorView<const float>(buffer.data(), {3}));
            }),
            ErrorCode::shape_mismatch);
}

TEST(MoeGemmRef, EqualsGatedSumsOfPerExpertGemms) {
  const int64_t experts = 4;
  const int64_t n = 6;
  const int64_t k = 45;
  const int64_t tokens = 7;
  const int64_t top_k = 2;
  const std::vector<float> weights = nibble::testing::gaussian(experts * n * k, 31);
  const std::vector<float> x = nibble::testing::gaussian(tokens * k, 32);
  const std::vector<float> gates = nibble::testing::gaussian(tokens * top_k, 33);
  // Token 3 names expert 2 twice: its two contributions add.
  const std::vector<int32_t> ids{0, 3, 1, 2, 3, 0, 2, 2, 1, 1, 0, 3, 2, 1};
  const auto q = quantize(weights, Shape{experts, n, k}, QuantConfig{4, 16, false});

  std::vector<float> y(static_cast<std::size_t>(tokens * n));
  std::vector<float> y_ungated(y.size());
  nibble::moe_gemm_ref(q.view(), TensorView<const float>(x.data(), {tokens, k}),
                       TensorView<const int32_t>(ids.data(), {tokens, top_k}),
                       TensorView<const float>(gates.data(), {tokens, top_k}),
                       TensorView<float>(y.data(), {tokens, n}));
  nibble::moe_gemm_ref(q.view(), TensorView<const float>(x.data(), {tokens, k}),
                       TensorView<const int32_t>(ids.data(), {tokens, top_k}),
                       TensorView<float>(y_ungated.data(), {tokens, n}));

  for (int64_t token = 0; token < tokens; ++token) {
    std::vector<double> expected(static_cast<std::size_t>(n), 0.0);
    std::vector<double> expected_ungated(static_cast<std::size_t>(n), 0.0);
    for (int64_t slot = 0; slot < top_k; ++slot) {
      const auto index = static_cast<std::size_t>(token * top_k + slot);
      std::vector<float> y_expert(static_cast<std::size_t>(n));
      nibble::gemm_ref(q.view().slice(ids[index]),
                       TensorView<const float>(x.data() + token * k, {1, k}),
                       TensorView<float>(y_expert.data(), {1, n}));
      for (int64_t col = 0; col < n; ++col) {
        expected[static_cast<std::size_t>(col)] +=
            double{gates[index]} * y_expert[static_cast<std::size_t>(col)];
        expected_ungated[static_cast<std::size_t>(col)] += y_expert[static_cast<std::size_t>(col)];
      }
    }
    for (int64_t col = 0; col < n; ++col) {
      const auto index = static_cast<std::size_t>(token * n + col);
      EXPECT_NEAR(y[index], expected[static_cast<std::size_t>(col)], 1e-5) << token << "," << col;
      EXPECT_NEAR(y_ungated[index], expected_ungated[static_cast<std::size_t>(col)], 1e-5);
    }
  }
}

TEST(MoeGemmRef, RejectsBadRouting) {
  const std::vector<float> weights = nibble::testing::gaussian(2 * 3 * 8, 2);
  const auto q = quantize(weights, Shape{2, 3, 8}, QuantConfig{8, 8, true});
  std::vector<float> x(16, 1.0f);
  std::vector<float> y(6);
  std::vector<float> gates(4, 1.0f);
  for (const std::vector<int32_t>& ids :
       {std::vector<int32_t>{0, 2}, std::vector<int32_t>{-1, 0}}) {
    try {
      nibble::moe_gemm_ref(q.view(), TensorView<const float>(x.data(), {2, 8}),
                           TensorView<const int32_t>(ids.data(), {2, 1}),
                           TensorView<float>(y.data(), {2, 3}));
      FAIL() << "expected an error";
    } catch (const Error& error) {
      EXPECT_EQ(error.code(), ErrorCode::invalid_argument);
      EXPECT_NE(std::string(error.what()).find("expected 0 <= id < E = 2"), std::string::npos);
    }
  }
  const std::vector<int32_t> ids{0, 1};
  EXPECT_THROW(nibble::moe_gemm_ref(q.view(), TensorView<const float>(x.data(), {2, 8}),
                                    TensorView<const int32_t>(ids.data(), {2, 1}),
                                    TensorView<const float>(gates.data(), {2, 2}),
                                    TensorView<float>(y.data(), {2, 3})),
               Error);
  EXPECT_THROW(nibble::moe_gemm_ref(q.view(), TensorView<const float>(x.data(), {1, 2, 8}),
                                    TensorView<const int32_t>(ids.data(), {2, 1}),
                                    TensorView<float>(y.data(), {1, 2, 3})),
               Error);
}

}  // namespace
