// The fast dequantize and gather_dequantize against dequantize_ref, bit for bit, on every ISA:
// every bits x group x symmetry x scale type, odd K, rank 3; fp16 / bf16 outputs;
// GatherBlockQuantized index semantics (int32 / int64, negative, any index rank) and bad indices /
// shapes.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "nibble/kernels/cpu/dequantize.hpp"
#include "nibble/quantizer.hpp"
#include "support/kernel_checks.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::Isa;
using nibble::QuantConfig;
using nibble::TensorView;

class DequantizeOnIsa : public ::testing::TestWithParam<Isa> {};

template <class ScaleT>
void check_dequantize(Isa isa, const nibble::Shape& shape, const QuantConfig& config) {
  SCOPED_TRACE("bits " + std::to_string(config.bits) + " group " +
               std::to_string(config.group_size) + (config.symmetric ? " sym" : " asym") + " K " +
               std::to_string(shape.last()) + " on " + nibble::to_string(isa));
  const std::vector<float> weights = nibble::testing::gaussian(shape.numel(), 31);
  const auto q = nibble::quantize<ScaleT>(TensorView<const float>(weights.data(), shape), config);
  const std::vector<float> expected = nibble::dequantize_ref(q.view());
  std::vector<float> got(expected.size(), -1.0f);
  nibble::DequantizeOptions options;
  options.isa = isa;
  nibble::dequantize(q.view(), TensorView<float>(got.data(), shape), options);
  // Bit for bit: the same (q - z) * s, rounded once.
  ASSERT_EQ(0, std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)));
}

TEST_P(DequantizeOnIsa, IsBitExactWithTheReference) {
  NIBBLE_REQUIRE_ISA(GetParam());
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (int64_t group :
           {int64_t{16}, int64_t{32}, int64_t{48}, int64_t{64}, int64_t{128}, int64_t{256}}) {
        check_dequantize<float>(GetParam(), nibble::Shape{5, 2 * group + 37},
                                QuantConfig{bits, group, symmetric});
      }
      check_dequantize<nibble::fp16>(GetParam(), nibble::Shape{3, 4, 200},
                                     QuantConfig{bits, 32, symmetric});
      check_dequantize<nibble::bf16>(GetParam(), nibble::Shape{7, 1},
                                     QuantConfig{bits, 16, symmetric});
      check_dequantize<float>(GetParam(), nibble::Shape{3, 256},
                              QuantConfig{bits, nibble::kPerChannel, symmetric});
      check_dequantize<float>(GetParam(), nibble::Shape{3, 401},
                              QuantConfig{bits, nibble::kPerChannel, symmetric});
    }
  }
}

TEST_P(DequantizeOnIsa, GatherFollowsGatherBlockQuantized) {
  NIBBLE_REQUIRE_ISA(GetParam());
  const int64_t vocab = 50;
  const int64_t k = 96;
  const std::vector<float> table = nibble::testing::gaussian(vocab * k, 41);
  const auto q = nibble::quantize<nibble::fp16>(TensorView<const float>(table.data(), {vocab, k}),
                                                QuantConfig{4, 32, true});
  const std::vector<float> reference = nibble::dequantize_ref(q.view());
  nibble::DequantizeOptions options;
  options.isa = GetParam();
  // int64 ids of rank 2, one negative (counts from the end, as ONNX Gather).
  const std::vector<int64_t> ids = {3, 0, 49, -1, 17, 3};
  std::vector<float> out(ids.size() * k);
  nibble::gather_dequantize(q.view(), TensorView<const int64_t>(ids.data(), {2, 3}),
                            TensorView<float>(out.data(), {2, 3, k}), options);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const int64_t row = ids[i] < 0 ? ids[i] + vocab : ids[i];
    ASSERT_EQ(0, std::memcmp(out.data() + i * k, reference.data() + row * k, k * sizeof(float)))
        << "index " << i;
  }
  // int32 ids into a bf16 output: the reference rounded once.
  const std::vector<int32_t> ids32 = {5, 6};
  std::vector<nibble::bf16> out16(2 * k);
  nibble::gather_dequantize(q.view(), TensorView<const int32_t>(ids32.data(), {2}),
                            TensorView<nibble::bf16>(out16.data(), {2, k}), options);
  for (int64_t i = 0; i < 2 * k; ++i) {
    const float expected =
        reference[static_cast<std::size_t>(ids32[static_cast<std::size_t>(i / k)] * k + i % k)];
    ASSERT_EQ(out16[static_cast<std::size_t>(i)].bits,
              nibble::from_float<nibble::bf16>(expected).bits)
        << i;
  }
}

TEST_P(DequantizeOnIsa, GatherSlicesRank3Tensors) {
  NIBBLE_REQUIRE_ISA(GetParam());
  // [E, N, K]: an index picks a whole [N, K] slice.
  const std::vector<float> weights = nibble::testing::gaussian(4 * 3 * 64, 42);
  const auto q = nibble::quantize<float>(TensorView<const float>(weights.data(), {4, 3, 64}),
                                         QuantConfig{2, 64, false});
  const std::vector<float> reference = nibble::dequantize_ref(q.view());
  const std::vector<int32_t> ids = {2, 0};
  std::vector<float> out(2 * 3 * 64);
  nibble::DequantizeOptions options;
  options.isa = GetParam();
  nibble::gather_dequantize(q.view(), TensorView<const int32_t>(ids.data(), {2}),
                            TensorView<float>(out.data(), {2, 3, 64}), options);
  EXPECT_EQ(0, std::memcmp(out.data(), reference.data() + 2 * 3 * 64, 3 * 64 * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(out.data() + 3 * 64, reference.data(), 3 * 64 * sizeof(float)));
}

INSTANTIATE_TEST_SUITE_P(Isa, DequantizeOnIsa, ::testing::ValuesIn(nibble::testing::kIsas),
                         nibble::testing::isa_test_name);

TEST(Dequantize, BadIndicesAndShapesAreErrors) {
  const std::vector<float> table = nibble::testing::gaussian(10 * 32, 43);
  const auto q = nibble::quantize<float>(TensorView<const float>(table.data(), {10, 32}),
                                         QuantConfig{4, 32, false});
  std::vector<float> out(4 * 32);
  const auto code_of = [&](auto&& call) {
    try {
      call();
    } catch (const nibble::Error& error) {
      return error.code();
    }
    return nibble::ErrorCode::io;
  };
  for (int64_t bad : {int64_t{10}, int64_t{-11}}) {
    const std::vector<int64_t> ids = {1, bad};
    EXPECT_EQ(code_of([&] {
                nibble::gather_dequantize(q.view(), TensorView<const int64_t>(ids.data(), {2}),
                                          TensorView<float>(out.data(), {2, 32}));
              }),
              nibble::ErrorCode::invalid_argument)
        << bad;
  }
  const std::vector<int64_t> ids = {1, 2};
  EXPECT_EQ(code_of([&] {  // out must be indices.shape + [K]
              nibble::gather_dequantize(q.view(), TensorView<const int64_t>(ids.data(), {2}),
                                        TensorView<float>(out.data(), {4, 32}));
            }),
            nibble::ErrorCode::shape_mismatch);
  EXPECT_EQ(code_of([&] {
              nibble::dequantize(q.view(), TensorView<float>(out.data(), {4, 32}));
            }),
            nibble::ErrorCode::shape_mismatch);
  nibble::DequantizeOptions negative;
  negative.num_threads = -1;
  std::vector<float> all(10 * 32);
  EXPECT_EQ(code_of([&] {
              nibble::dequantize(q.view(), TensorView<float>(all.data(), {10, 32}), negative);
            }),
            nibble::ErrorCode::invalid_argument);
}

}  // namespace
