// moe_gemm against moe_gemm_ref (fp32 activations) and against the exact int8 evaluation of each
// routed token (int8 activations), on every ISA; routing with repeated experts, unused experts,
// gates; rank-3 and rank-4 expert tensors; bad routing and shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "nibble/kernels/cpu/moe_gemm.hpp"
#include "nibble/quantizer.hpp"
#include "support/kernel_checks.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::ActivationPrecision;
using nibble::Isa;
using nibble::QuantConfig;
using nibble::TensorView;

class MoeGemmOnIsa : public ::testing::TestWithParam<Isa> {};

// Routing for `tokens` tokens over `experts` experts, top_k slots: token t picks (t * 7 + j * 3)
// mod (experts - 1), so the last expert is never chosen, and every third token names its first
// expert twice.
std::vector<int32_t> routing(int64_t tokens, int64_t top_k, int64_t experts) {
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t slot = (t % 3 == 0 && j == 1) ? 0 : j;
      ids.push_back(static_cast<int32_t>((t * 7 + slot * 3) % (experts - 1)));
    }
  }
  return ids;
}

// Y from moe_gemm against the reference: fp32 within the K-term float bound, int8 within the
// int8 path's bound of each routed (token, expert) product, summed over slots with their gates.
void check_moe(Isa isa, const nibble::Shape& w_shape, int64_t tokens, int64_t top_k,
               const QuantConfig& config, ActivationPrecision activations) {
  SCOPED_TRACE("w " + std::to_string(w_shape.rows()) + " rows, T " + std::to_string(tokens) + " " +
               nibble::to_string(activations) + " on " + nibble::to_string(isa));
  const int64_t experts = w_shape[0];
  const int64_t k = w_shape.last();
  const int64_t n = w_shape.rows() / experts;
  const std::vector<float> weights = nibble::testing::gaussian(w_shape.numel(), 21);
  const auto q = nibble::quantize<float>(TensorView<const float>(weights.data(), w_shape), config);
  const std::vector<float> x = nibble::testing::gaussian(tokens * k, 22);
  const std::vector<int32_t> ids = routing(tokens, top_k, experts);
  std::vector<float> gates = nibble::testing::gaussian(tokens * top_k, 23);
  const TensorView<const float> x_view(x.data(), {tokens, k});
  const TensorView<const int32_t> id_view(ids.data(), {tokens, top_k});
  std::vector<float> y(static_cast<std::size_t>(tokens * n));
  nibble::GemmOptions options;
  options.isa = isa;
  options.activations = activations;
  nibble::moe_gemm(q.view(), x_view, id_view,
                   TensorView<const float>(gates.data(), {tokens, top_k}),
                   TensorView<float>(y.data(), {tokens, n}), options);

  const std::vector<float> w_hat = nibble::dequantize_ref(q.view());
  const std::vector<float> x_multiplied = nibble::testing::as_multiplied(x, activations);
  const auto layout = q.layout();
  const nibble::QuantizedActivations x_int8 =
      nibble::quantize_activations(x_view, layout.padded_k, layout.group_size);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t col = 0; col < n; ++col) {
      double expected = 0.0;
      double tolerance = 0.0;
      for (int64_t j = 0; j < top_k; ++j) {
        const double gate = gates[static_cast<std::size_t>(t * top_k + j)];
        const int64_t w_row = ids[static_cast<std::size_t>(t * top_k + j)] * n + col;
        const auto one = activations == ActivationPrecision::int8
                             ? nibble::testing::int8_expectation(q.view(), w_row, x_int8, t)
                             : nibble::testing::fp32_expectation(x_multiplied.data() + t * k,
                                                                 w_hat.data() + w_row * k, k);
        expected += gate * one.value;
        // The gate product and the sum over slots: one more rounding each.
        tolerance += std::fabs(gate) * (one.tolerance + std::ldexp(std::fabs(one.value), -22));
      }
      ASSERT_NEAR(y[static_cast<std::size_t>(t * n + col)], expected, tolerance + 1e-30)
          << "token " << t << " col " << col;
    }
  }
}

TEST_P(MoeGemmOnIsa, MatchesTheReferenceForEveryBitsAndSymmetry) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (auto activations : {ActivationPrecision::fp32, ActivationPrecision::int8,
                               ActivationPrecision::bf16, ActivationPrecision::fp16}) {
        check_moe(GetParam(), nibble::Shape{4, 37, 200}, 9, 2, QuantConfig{bits, 32, symmetric},
                  activations);
      }
    }
  }
}

TEST_P(MoeGemmOnIsa, BatchesAboveTheStreamingLimitAndRank4Experts) {
  NIBBLE_REQUIRE_ISA(GetParam());
  // 8 experts, top 2, 40 tokens: some experts get more than 8 tokens (the panel kernels).
  check_moe(GetParam(), nibble::Shape{8, 70, 256}, 40, 2, QuantConfig{4, 128, false},
            ActivationPrecision::fp32);
  check_moe(GetParam(), nibble::Shape{8, 70, 256}, 40, 2, QuantConfig{4, 128, false},
            ActivationPrecision::int8);
  // [E, 2, 10, K]: N = 20 rows per expert, the same code path.
  check_moe(GetParam(), nibble::Shape{3, 2, 10, 64}, 5, 3, QuantConfig{4, 16, true},
            ActivationPrecision::fp32);
  check_moe(GetParam(), nibble::Shape{5, 33, 1}, 4, 1, QuantConfig{8, nibble::kPerChannel, true},
            ActivationPrecision::fp32);
}

INSTANTIATE_TEST_SUITE_P(Isa, MoeGemmOnIsa, ::testing::ValuesIn(nibble::testing::kIsas),
                         nibble::testing::isa_test_name);

TEST(MoeGemm, GatesDefaultToOneAndFp16ActivationsConvert) {
  const std::vector<float> weights = nibble::testing::gaussian(3 * 16 * 64, 3);
  const auto q = nibble::quantize<nibble::fp16>(
      TensorView<const float>(weights.data(), {3, 16, 64}), QuantConfig{4, 32, false});
  const std::vector<float> x = nibble::testing::gaussian(4 * 64, 4);
  const std::vector<int32_t> ids = {0, 2, 1, 1, 2, 0, 0, 0};
  const std::vector<float> ones(8, 1.0f);
  std::vector<float> with_ones(4 * 16);
  std::vector<float> without(4 * 16);
  nibble::moe_gemm(q.view(), TensorView<const float>(x.data(), {4, 64}),
                   TensorView<const int32_t>(ids.data(), {4, 2}),
                   TensorView<const float>(ones.data(), {4, 2}),
                   TensorView<float>(with_ones.data(), {4, 16}));
  nibble::moe_gemm(q.view(), TensorView<const float>(x.data(), {4, 64}),
                   TensorView<const int32_t>(ids.data(), {4, 2}),
                   TensorView<float>(without.data(), {4, 16}));
  EXPECT_EQ(with_ones, without);  // gate 1 multiplies exactly

  // fp16 in and out: the fp32 result rounded once.
  const std::vector<nibble::fp16> x16 = nibble::testing::converted<nibble::fp16>(x);
  std::vector<float> x16_float;
  for (auto value : x16)
    x16_float.push_back(nibble::to_float(value));
  std::vector<nibble::fp16> y16(4 * 16);
  std::vector<float> y_ref(4 * 16);
  nibble::moe_gemm(q.view(), TensorView<const nibble::fp16>(x16.data(), {4, 64}),
                   TensorView<const int32_t>(ids.data(), {4, 2}),
                   TensorView<nibble::fp16>(y16.data(), {4, 16}));
  nibble::moe_gemm_ref(q.view(), TensorView<const float>(x16_float.data(), {4, 64}),
                       TensorView<const int32_t>(ids.data(), {4, 2}),
                       TensorView<float>(y_ref.data(), {4, 16}));
  for (std::size_t i = 0; i < y16.size(); ++i) {
    EXPECT_NEAR(nibble::to_float(y16[i]), y_ref[i], 1e-5 + std::fabs(y_ref[i]) * 1e-3) << i;
  }
}

TEST(MoeGemm, BadRoutingAndShapesAreErrors) {
  const std::vector<float> weights = nibble::testing::gaussian(3 * 16 * 64, 3);
  const auto q = nibble::quantize<float>(TensorView<const float>(weights.data(), {3, 16, 64}),
                                         QuantConfig{4, 32, false});
  const std::vector<float> x(4 * 64, 1.0f);
  std::vector<float> y(4 * 16);
  const auto code_of = [&](auto&& call) {
    try {
      call();
    } catch (const nibble::Error& error) {
      return error.code();
    }
    return nibble::ErrorCode::io;
  };
  const std::vector<int32_t> out_of_range = {0, 1, 2, 3};
  EXPECT_EQ(code_of([&] {
              nibble::moe_gemm(q.view(), TensorView<const float>(x.data(), {4, 64}),
                               TensorView<const int32_t>(out_of_range.data(), {4, 1}),
                               TensorView<float>(y.data(), {4, 16}));
            }),
            nibble::ErrorCode::invalid_argument);
  const std::vector<int32_t> negative = {0, -1, 2, 1};
  EXPECT_EQ(code_of([&] {
              nibble::moe_gemm(q.view(), TensorView<const float>(x.data(), {4, 64}),
                               TensorView<const int32_t>(negative.data(), {4, 1}),
                               TensorView<float>(y.data(), {4, 16}));
            }),
            nibble::ErrorCode::invalid_argument);
  const std::vector<int32_t> ids = {0, 1, 2, 1};
  EXPECT_EQ(code_of([&] {  // ids for 2 tokens, x has 4
              nibble::moe_gemm(q.view(), TensorView<const float>(x.data(), {4, 64}),
                               TensorView<const int32_t>(ids.data(), {2, 2}),
                               TensorView<float>(y.data(), {4, 16}));
            }),
            nibble::ErrorCode::shape_mismatch);
  EXPECT_EQ(code_of([&] {  // y with N = 48 (all experts' rows) instead of 16
              std::vector<float> wide(4 * 48);
              nibble::moe_gemm(q.view(), TensorView<const float>(x.data(), {4, 64}),
                               TensorView<const int32_t>(ids.data(), {4, 1}),
                               TensorView<float>(wide.data(), {4, 48}));
            }),
            nibble::ErrorCode::shape_mismatch);
  const std::vector<float> gates(3, 1.0f);
  EXPECT_EQ(code_of([&] {
              nibble::moe_gemm(q.view(), TensorView<const float>(x.data(), {4, 64}),
                               TensorView<const int32_t>(ids.data(), {4, 1}),
                               TensorView<const float>(gates.data(), {3, 1}),
                               TensorView<float>(y.data(), {4, 16}));
            }),
            nibble::ErrorCode::shape_mismatch);
  const auto flat = nibble::quantize<float>(TensorView<const float>(weights.data(), {64}),
                                            QuantConfig{4, 32, false});
  EXPECT_EQ(code_of([&] {  // rank-1 weights: no expert dimension
              std::vector<float> one(4);
              nibble::moe_gemm(flat.view(), TensorView<const float>(x.data(), {4, 64}),
                               TensorView<const int32_t>(ids.data(), {4, 1}),
                               TensorView<float>(one.data(), {4, 1}));
            }),
            nibble::ErrorCode::shape_mismatch);
}

}  // namespace
