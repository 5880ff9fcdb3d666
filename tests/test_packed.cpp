// The packed layout and its kernels (kernels/cpu/packed.hpp) against independent truth, on every
// ISA compiled in and supported by this CPU: int8 activations against the exact value of the
// same int8 codes (int8_expectation, computed from the canonical tensor, never from the packed
// bytes) and against fp32; fp32 activations against the fp32 bound around gemm_ref; the x86
// kernels against their scalar twin gemm_packed_ref. Every bits x group x symmetry, odd shapes,
// every batch size, scale and activation types, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nibble/kernels/cpu/packed.hpp"
#include "nibble/quantizer.hpp"
#include "support/kernel_checks.hpp"
#include "support/quant_fixtures.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::ActivationPrecision;
using nibble::bf16;
using nibble::fp16;
using nibble::Isa;
using nibble::QuantConfig;
using nibble::QuantTensor;
using nibble::Shape;
using nibble::TensorView;

class PackedOnIsa : public ::testing::TestWithParam<Isa> {};

std::string case_name(int64_t m, int64_t n, int64_t k, const QuantConfig& config) {
  return "M" + std::to_string(m) + "xN" + std::to_string(n) + "xK" + std::to_string(k) + " bits " +
         std::to_string(config.bits) + " group " + std::to_string(config.group_size) +
         (config.symmetric ? " sym" : " asym");
}

// Distance allowed between two float evaluations of the same int8 sum, each within `tolerance`
// of the exact value.
double twin_tolerance(double tolerance) {
  return 2 * tolerance;
}

// Checks gemm over the packed tensor on `isa` (activations of type ActT, both precisions) against
// the canonical tensor's exact values, and against gemm_packed_ref.
template <class ActT = float, class ScaleT = float>
void check_packed(Isa isa, int64_t m, int64_t n, int64_t k, const QuantConfig& config,
                  bool with_bias = false) {
  SCOPED_TRACE(case_name(m, n, k, config) + " packed on " + nibble::to_string(isa));
  const auto seed = static_cast<uint32_t>(m * 31 + n * 131 + k * 7 + config.bits);
  const std::vector<float> weights = nibble::testing::gaussian(n * k, seed);
  const QuantTensor<ScaleT> q =
      nibble::quantize<ScaleT>(TensorView<const float>(weights.data(), {n, k}), config);
  nibble::PackOptions pack_options;
  pack_options.isa = isa;
  const nibble::PackedWeights<ScaleT> packed = nibble::pack_for_cpu(q.view(), pack_options);
  ASSERT_EQ(packed.isa(), isa);

  // X exactly representable in ActT, so that the float truth below is X itself.
  std::vector<ActT> x_act =
      nibble::testing::converted<ActT>(nibble::testing::gaussian(m * k, seed + 1));
  for (int64_t i = 0; i < std::min<int64_t>(k, 16); ++i)
    x_act[static_cast<std::size_t>(i)] = nibble::from_float<ActT>(0.0f);  // an all-zero block
  std::vector<float> x;
  for (ActT value : x_act)
    x.push_back(nibble::to_float(value));
  const std::vector<ActT> bias_act =
      nibble::testing::converted<ActT>(nibble::testing::gaussian(n, seed + 2));
  const TensorView<const float> x_view(x.data(), {m, k});
  const std::vector<float> w_hat = nibble::dequantize_ref(q.view());
  const nibble::QuantizedActivations x_int8 =
      nibble::quantize_activations(x_view, q.layout().padded_k, q.layout().group_size);
  const double rounding = nibble::testing::output_rounding<ActT>();

  for (ActivationPrecision activations : {ActivationPrecision::int8, ActivationPrecision::fp32}) {
    const bool int8 = activations == ActivationPrecision::int8;
    SCOPED_TRACE(int8 ? "int8 activations" : "fp32 activations");
    std::vector<ActT> y(static_cast<std::size_t>(m * n));
    nibble::GemmOptions options;
    options.isa = isa;
    options.activations = activations;
    const TensorView<const ActT> x_act_view(x_act.data(), {m, k});
    if (with_bias) {
      nibble::gemm(packed, x_act_view, TensorView<ActT>(y.data(), {m, n}),
                   TensorView<const ActT>(bias_act.data(), {n}), options);
    } else {
      nibble::gemm(packed, x_act_view, TensorView<ActT>(y.data(), {m, n}), options);
    }
    std::vector<float> twin(static_cast<std::size_t>(m * n));
    nibble::gemm_packed_ref(packed, x_view, TensorView<float>(twin.data(), {m, n}), activations);
    for (int64_t row = 0; row < m; ++row) {
      for (int64_t col = 0; col < n; ++col) {
        const auto index = static_cast<std::size_t>(row * n + col);
        const double offset =
            with_bias ? nibble::to_float(bias_act[static_cast<std::size_t>(col)]) : 0.0;
        const auto fp32 =
            nibble::testing::fp32_expectation(x.data() + row * k, w_hat.data() + col * k, k);
        double fp32_bound = 0.0;
        const auto exact =
            int8 ? nibble::testing::int8_expectation(q.view(), col, x_int8, row, &fp32_bound)
                 : fp32;
        if (!int8) fp32_bound = fp32.tolerance;
        const double got = nibble::to_float(y[index]);
        const double value = exact.value + offset;
        const double tolerance =
            exact.tolerance + 1e-7 * std::fabs(offset) + rounding * std::fabs(value);
        ASSERT_NEAR(got, value, tolerance) << "row " << row << " col " << col;
        ASSERT_NEAR(got, fp32.value + offset,
                    fp32_bound + 1e-7 * std::fabs(offset) + rounding * std::fabs(value))
            << "row " << row << " col " << col;
        // The scalar twin: the same value from the same packed bytes (no bias, no output
        // rounding there).
        ASSERT_NEAR(twin[index], exact.value, exact.tolerance)
            << "twin, row " << row << " col " << col;
        if constexpr (std::is_same_v<ActT, float>) {
          ASSERT_NEAR(got - offset, twin[index],
                      twin_tolerance(exact.tolerance) + 1e-7 * std::fabs(offset))
              << "kernel vs twin, row " << row << " col " << col;
        }
      }
    }
  }
}

TEST_P(PackedOnIsa, EveryBitsGroupAndSymmetry) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (int64_t group : {int64_t{16}, int64_t{20}, int64_t{32}, int64_t{48}, int64_t{64},
                            int64_t{128}, int64_t{256}, int64_t{512}}) {
        check_packed(GetParam(), 1, 37, 2 * group + 37, QuantConfig{bits, group, symmetric});
        check_packed(GetParam(), 5, 9, group + 3, QuantConfig{bits, group, symmetric},
                     /*with_bias=*/true);
      }
      for (int64_t k : {int64_t{256}, int64_t{401}, int64_t{1}}) {
        check_packed(GetParam(), 3, 17, k, QuantConfig{bits, nibble::kPerChannel, symmetric});
      }
    }
  }
}

TEST_P(PackedOnIsa, EveryBatchSizeAndOddShapes) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 31, 33, 129}) {
    check_packed(GetParam(), m, 29, 160, QuantConfig{4, 32, false}, /*with_bias=*/m % 2 == 0);
  }
  for (int64_t n : {1, 2, 7, 8, 9, 17, 31, 33, 63, 64, 65, 127, 129}) {
    check_packed(GetParam(), 2, n, 96, QuantConfig{4, 32, true});
  }
  for (int64_t k : {1, 2, 3, 15, 16, 17, 31, 33, 127, 129}) {
    check_packed(GetParam(), 3, 19, k, QuantConfig{8, 16, false});
    check_packed(GetParam(), 3, 19, k, QuantConfig{2, 32, true});
  }
  check_packed(GetParam(), 43, 500, 401, QuantConfig{4, 32, false}, /*with_bias=*/true);
}

TEST_P(PackedOnIsa, Fp16AndBf16ActivationsAndScales) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (int bits : {2, 4, 8}) {
    check_packed<fp16, fp16>(GetParam(), 3, 21, 200, QuantConfig{bits, 32, false}, true);
    check_packed<bf16, bf16>(GetParam(), 6, 19, 256, QuantConfig{bits, 64, true}, true);
    check_packed<float, fp16>(GetParam(), 1, 40, 128, QuantConfig{bits, 128, false});
    check_packed<bf16, float>(GetParam(), 2, 11, 96, QuantConfig{bits, 16, true});
  }
}

// bf16 / fp16 precision rounds X first: bit for bit the fp32 precision on the rounded X (the
// packed kernels have no bf16 dot product to reorder the sums), in the kernel and in the twin.
TEST_P(PackedOnIsa, Bf16AndFp16PrecisionAreFp32OnRoundedX) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (const QuantConfig& config : {QuantConfig{4, 32, true}, QuantConfig{8, 128, false},
                                    QuantConfig{2, nibble::kPerChannel, false}}) {
    const int64_t m = 5, n = 19, k = 200;
    const std::vector<float> weights = nibble::testing::gaussian(n * k, 3);
    const QuantTensor<float> q =
        nibble::quantize<float>(TensorView<const float>(weights.data(), {n, k}), config);
    nibble::PackOptions pack_options;
    pack_options.isa = GetParam();
    const nibble::PackedWeights<float> packed = nibble::pack_for_cpu(q.view(), pack_options);
    const std::vector<float> x = nibble::testing::gaussian(m * k, 4);
    const auto run = [&](const std::vector<float>& values, ActivationPrecision as, bool twin) {
      std::vector<float> y(static_cast<std::size_t>(m * n));
      const TensorView<const float> x_view(values.data(), {m, k});
      if (twin) {
        nibble::gemm_packed_ref(packed, x_view, TensorView<float>(y.data(), {m, n}), as);
      } else {
        nibble::GemmOptions options;
        options.isa = GetParam();
        options.activations = as;
        nibble::gemm(packed, x_view, TensorView<float>(y.data(), {m, n}), options);
      }
      return y;
    };
    for (ActivationPrecision precision : {ActivationPrecision::bf16, ActivationPrecision::fp16}) {
      SCOPED_TRACE(nibble::to_string(precision));
      const std::vector<float> rounded = nibble::testing::as_multiplied(x, precision);
      for (bool twin : {false, true}) {
        const std::vector<float> y = run(x, precision, twin);
        EXPECT_NE(y, run(x, ActivationPrecision::fp32, twin));
        EXPECT_EQ(y, run(rounded, ActivationPrecision::fp32, twin));
      }
    }
  }
}

TEST_P(PackedOnIsa, LongRows) {
  NIBBLE_REQUIRE_ISA(GetParam());
  check_packed(GetParam(), 2, 24, 4096 + 32, QuantConfig{4, 32, true});
  check_packed(GetParam(), 1, 16, 4096, QuantConfig{4, nibble::kPerChannel, false});
  check_packed(GetParam(), 4, 16, 2048, QuantConfig{8, 256, false});
}

INSTANTIATE_TEST_SUITE_P(Isa, PackedOnIsa, ::testing::ValuesIn(nibble::testing::kIsas),
                         nibble::testing::isa_test_name);

// The bytes docs/packed-layout.md describes, derived the other way round: each canonical element
// (column, k) is placed where the document says it goes (block, chunk, byte, plane), where
// pack_for_cpu walks the packed bytes and fetches their elements. Pads stay 0.
TEST(Packed, BytesAreTheDocumentedLayout) {
  for (const QuantConfig& config :
       {QuantConfig{4, 32, true}, QuantConfig{4, 20, false}, QuantConfig{2, 48, false},
        QuantConfig{2, 16, true}, QuantConfig{8, 32, false},
        QuantConfig{8, nibble::kPerChannel, true}, QuantConfig{4, 512, false},
        QuantConfig{4, nibble::kPerChannel, false}}) {
    for (int64_t n : {int64_t{8}, int64_t{13}}) {
      const int64_t k = config.group_size == nibble::kPerChannel ? 37 : 2 * config.group_size + 7;
      SCOPED_TRACE(case_name(1, n, k, config));
      const std::vector<float> weights = nibble::testing::gaussian(n * k, 77);
      const QuantTensor<float> q =
          nibble::quantize<float>(TensorView<const float>(weights.data(), {n, k}), config);
      const nibble::PackedWeights<float> packed = nibble::pack_for_cpu(q.view());
      const int bits = config.bits;
      const int64_t chunk_k = 4 * (8 / bits);
      const int64_t group = q.layout().group_size;
      const int64_t block = packed.activation_block();
      const int64_t blocks = packed.n_groups() * packed.blocks_per_group();
      const int64_t chunks = packed.chunks_per_block();
      const int64_t tiles = (n + 7) / 8;
      ASSERT_EQ(packed.codes().size(), static_cast<std::size_t>(tiles * blocks * chunks * 32));
      std::vector<uint8_t> expected(packed.codes().size(), 0);
      const auto& codes = q.qweight();  // [n, packed_row_bytes]: code i at bits i * bits
      for (int64_t row = 0; row < n; ++row) {
        for (int64_t i = 0; i < k; ++i) {
          const int64_t byte_index = i * bits / 8;
          const int code =
              (codes[static_cast<std::size_t>(row * q.layout().packed_row_bytes + byte_index)] >>
               (i * bits % 8)) &
              ((1 << bits) - 1);
          const int64_t b = (i / group) * packed.blocks_per_group() + (i % group) / block;
          const int64_t e = (i % group) % block;  // element of the block
          const int64_t chunk = e / chunk_k;
          const int64_t plane = (e % chunk_k) / 4;
          const int64_t t = e % 4;
          const int64_t tile = row / 8;
          const int64_t column = row % 8;
          const auto at = static_cast<std::size_t>(((tile * blocks + b) * chunks + chunk) * 32 +
                                                   column * 4 + t);
          const unsigned value = bits == 8 ? static_cast<uint8_t>(code - 128) : unsigned(code);
          expected[at] = static_cast<uint8_t>(expected[at] | (value << (plane * bits)));
        }
      }
      EXPECT_EQ(packed.codes(), expected);
      // Scales [tiles][groups][8] (0 past N), zero points likewise (z, or z - 128 at 8 bits).
      for (int64_t tile = 0; tile < tiles; ++tile) {
        for (int64_t g = 0; g < packed.n_groups(); ++g) {
          for (int64_t c = 0; c < 8; ++c) {
            const int64_t row = tile * 8 + c;
            const auto at = static_cast<std::size_t>((tile * packed.n_groups() + g) * 8 + c);
            EXPECT_EQ(packed.scales()[at], row < n ? q.view().scale_row(row)[g] : 0.0f);
            if (!config.symmetric) {
              const int zero = row < n ? q.view().zero_point(row, g) - (bits == 8 ? 128 : 0) : 0;
              EXPECT_EQ(packed.zeros()[at], zero);
            }
          }
        }
      }
      EXPECT_EQ(packed.zeros().empty(), config.symmetric);
    }
  }
}

// The packed tensor holds everything its kernels read: the canonical one may go.
TEST(Packed, OutlivesTheCanonicalTensor) {
  const int64_t n = 33;
  const int64_t k = 160;
  const std::vector<float> weights = nibble::testing::gaussian(n * k, 5);
  const std::vector<float> x = nibble::testing::gaussian(2 * k, 6);
  std::vector<float> expected(static_cast<std::size_t>(2 * n));
  std::optional<nibble::PackedWeights<float>> packed;
  {
    const QuantTensor<float> q = nibble::quantize<float>(
        TensorView<const float>(weights.data(), {n, k}), QuantConfig{4, 32, false});
    packed = nibble::pack_for_cpu(q.view());
    nibble::gemm(q.view(), TensorView<const float>(x.data(), {2, k}),
                 TensorView<float>(expected.data(), {2, n}));
  }
  std::vector<float> y(expected.size());
  nibble::gemm(*packed, TensorView<const float>(x.data(), {2, k}),
               TensorView<float>(y.data(), {2, n}));
  for (std::size_t i = 0; i < y.size(); ++i)
    EXPECT_NEAR(y[i], expected[i], 1e-4 * (1 + std::fabs(expected[i]))) << i;
  // Symmetric 4-bit g32: 16 code bytes and 8 fp32 scale bytes... per column and group of 32:
  // 5 tiles x 5 groups x (8 x 16 + 8 x 4) bytes.
  const nibble::QuantTensor<float> q_sym = nibble::quantize<float>(
      TensorView<const float>(weights.data(), {n, k}), QuantConfig{4, 32, true});
  EXPECT_EQ(nibble::pack_for_cpu(q_sym.view()).bytes(), std::size_t{5 * 5 * (8 * 16 + 8 * 4)});
}

// Rank 3 (MoE experts [E, N, K]) packs as its E * N rows.
TEST(Packed, Rank3IsOneMatrixOfAllItsRows) {
  const std::vector<float> weights = nibble::testing::gaussian(3 * 10 * 64, 9);
  const QuantTensor<float> q = nibble::quantize<float>(
      TensorView<const float>(weights.data(), {3, 10, 64}), QuantConfig{4, 32, false});
  const auto packed = nibble::pack_for_cpu(q.view());
  EXPECT_EQ(packed.rows(), 30);
  EXPECT_EQ(packed.shape(), (Shape{3, 10, 64}));
  const std::vector<float> x = nibble::testing::gaussian(64, 10);
  std::vector<float> y(30);
  std::vector<float> expected(30);
  nibble::gemm(packed, TensorView<const float>(x.data(), {1, 64}),
               TensorView<float>(y.data(), {1, 30}));
  nibble::gemm_ref(q.view(), TensorView<const float>(x.data(), {1, 64}),
                   TensorView<float>(expected.data(), {1, 30}));
  for (std::size_t i = 0; i < y.size(); ++i)
    EXPECT_NEAR(y[i], expected[i], 1e-4 * (1 + std::fabs(expected[i]))) << i;
}

// Each output is computed by one thread in a fixed order: the thread count changes nothing.
TEST(Packed, ThreadCountDoesNotChangeTheResult) {
  const int64_t n = 300;
  const int64_t k = 256;
  const std::vector<float> weights = nibble::testing::gaussian(n * k, 11);
  const QuantTensor<float> q = nibble::quantize<float>(
      TensorView<const float>(weights.data(), {n, k}), QuantConfig{4, 32, false});
  const auto packed = nibble::pack_for_cpu(q.view());
  for (ActivationPrecision activations : {ActivationPrecision::int8, ActivationPrecision::fp32}) {
    const std::vector<float> x = nibble::testing::gaussian(5 * k, 12);
    std::vector<float> one(static_cast<std::size_t>(5 * n));
    std::vector<float> three(one.size());
    nibble::GemmOptions options;
    options.activations = activations;
    options.num_threads = 1;
    nibble::gemm(packed, TensorView<const float>(x.data(), {5, k}),
                 TensorView<float>(one.data(), {5, n}), options);
    options.num_threads = 3;
    nibble::gemm(packed, TensorView<const float>(x.data(), {5, k}),
                 TensorView<float>(three.data(), {5, n}), options);
    EXPECT_EQ(one, three);
  }
}

TEST(Packed, BadInputIsAnError) {
  using nibble::ErrorCode;
  using nibble::testing::expect_error;
  const std::vector<float> weights = nibble::testing::gaussian(16 * 64, 13);
  const QuantTensor<float> q = nibble::quantize<float>(
      TensorView<const float>(weights.data(), {16, 64}), QuantConfig{4, 32, false});
  const auto packed = nibble::pack_for_cpu(q.view());
  std::vector<float> x(2 * 65);
  std::vector<float> y(2 * 17);
  expect_error(
      [&] {
        nibble::gemm(packed, TensorView<const float>(x.data(), {2, 65}),
                     TensorView<float>(y.data(), {2, 16}));
      },
      ErrorCode::shape_mismatch, "have K = 64");
  expect_error(
      [&] {
        nibble::gemm(packed, TensorView<const float>(x.data(), {2, 64}),
                     TensorView<float>(y.data(), {2, 17}));
      },
      ErrorCode::shape_mismatch, "expected [2, 16]");
  expect_error(
      [&] {
        nibble::gemm(packed, TensorView<const float>(x.data(), {2, 64}),
                     TensorView<float>(y.data(), {2, 16}), TensorView<const float>(y.data(), {15}));
      },
      ErrorCode::shape_mismatch, "bias has shape [15]");
  nibble::GemmOptions threads;
  threads.num_threads = -1;
  expect_error(
      [&] {
        nibble::gemm(packed, TensorView<const float>(x.data(), {2, 64}),
                     TensorView<float>(y.data(), {2, 16}), threads);
      },
      ErrorCode::invalid_argument, "num_threads = -1");
  nibble::PackOptions pack_threads;
  pack_threads.num_threads = -2;
  expect_error([&] { (void)nibble::pack_for_cpu(q.view(), pack_threads); },
               ErrorCode::invalid_argument, "num_threads = -2");

  // Packed for one ISA, called on another: an error naming both, never a wrong answer.
  nibble::PackOptions generic;
  generic.isa = Isa::generic;
  const auto packed_generic = nibble::pack_for_cpu(q.view(), generic);
  if (nibble::detail::resolve_isa(Isa::automatic) != Isa::generic) {
    expect_error(
        [&] {
          nibble::gemm(packed_generic, TensorView<const float>(x.data(), {2, 64}),
                       TensorView<float>(y.data(), {2, 16}));
        },
        ErrorCode::invalid_argument, "packed for generic");
  }
  nibble::GemmOptions on_generic;
  on_generic.isa = Isa::generic;
  if (packed.isa() != Isa::generic) {
    expect_error(
        [&] {
          nibble::gemm(packed, TensorView<const float>(x.data(), {2, 64}),
                       TensorView<float>(y.data(), {2, 16}), on_generic);
        },
        ErrorCode::invalid_argument, "but this call runs generic");
  }
  nibble::gemm(packed_generic, TensorView<const float>(x.data(), {2, 64}),
               TensorView<float>(y.data(), {2, 16}), on_generic);
}

}  // namespace
