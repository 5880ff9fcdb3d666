// One quantized tensor carried through every checkpoint format nibble converts without
// requantizing: canonical -> GPTQ (v1 and v2) -> canonical -> AWQ -> canonical -> ModelOpt
// (TensorRT-LLM) -> canonical -> GGUF Q4_0 -> canonical. Lossless where both formats can hold
// the numbers: every hop's dequantized values equal the original's bit for bit and the
// canonical bytes come back identical. Where a format cannot hold them, the hop says so.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "nibble/formats/awq.hpp"
#include "nibble/formats/gguf.hpp"
#include "nibble/formats/gptq.hpp"
#include "nibble/formats/trtllm.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/quantizer.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::fp16;
using nibble::QuantTensor;

template <class F>
std::string error_message_of(F&& call) {
  try {
    call();
  } catch (const nibble::Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected nibble::Error";
  return "";
}

void expect_same(const QuantTensor<fp16>& a, const QuantTensor<fp16>& b, const char* hop) {
  SCOPED_TRACE(hop);
  EXPECT_EQ(a.qweight(), b.qweight());
  EXPECT_EQ(a.scales(), b.scales());
  EXPECT_EQ(a.zeros(), b.zeros());
  EXPECT_EQ(a.config().bits, b.config().bits);
  EXPECT_EQ(a.config().group_size, b.config().group_size);
  EXPECT_EQ(a.config().symmetric, b.config().symmetric);
  const std::vector<float> x = nibble::dequantize(a);
  const std::vector<float> y = nibble::dequantize(b);
  ASSERT_EQ(x.size(), y.size());
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], y[i]) << "element " << i;
}

TEST(FormatChain, SymmetricFourBitGroup32ThroughEveryFormat) {
  const int64_t n = 16;  // GPTQ / AWQ pack 8 outputs per word; ModelOpt pairs outputs
  const int64_t k = 64;
  const std::vector<float> w = nibble::testing::gaussian(n * k, 51);
  const auto original = nibble::quantize<fp16>(
      nibble::TensorView<const float>(w.data(), {n, k}),
      nibble::QuantConfig{4, 32, true, nibble::ConventionId::olive});

  nibble::gptq::ImportOptions symmetric_gptq;
  symmetric_gptq.symmetry = nibble::formats::Symmetry::symmetric;
  QuantTensor<fp16> current = original;
  for (auto zero_format : {nibble::gptq::ZeroFormat::v1, nibble::gptq::ZeroFormat::v2}) {
    const auto gptq = nibble::gptq::to_gptq(current.view(), zero_format);
    current = nibble::gptq::from_gptq(gptq.view(), symmetric_gptq);
    expect_same(original, current, "GPTQ");
  }

  // AWQ checkpoints are asymmetric: the symmetric tensor goes in with explicit zero points 8
  // and comes back as symmetric when asked to detect it.
  const auto awq = nibble::awq::to_awq(current.view());
  nibble::awq::ImportOptions detect_awq;
  detect_awq.symmetry = nibble::formats::Symmetry::detect;
  current = nibble::awq::from_awq(awq.view(), detect_awq);
  expect_same(original, current, "AWQ");

  const auto modelopt = nibble::trtllm::to_modelopt(current.view());
  current = nibble::trtllm::from_modelopt<fp16>(modelopt.view());
  expect_same(original, current, "ModelOpt");

  const std::vector<uint8_t> blocks = nibble::gguf::to_blocks(current.view());
  current = nibble::gguf::from_blocks<fp16>(blocks.data(), static_cast<int64_t>(blocks.size()),
                                            nibble::gguf::GgmlType::q4_0, nibble::Shape{n, k});
  expect_same(original, current, "GGUF Q4_0");
}

TEST(FormatChain, AsymmetricTensorsStopWhereAFormatCannotHoldThem) {
  const int64_t n = 16;
  const int64_t k = 64;
  const std::vector<float> w = nibble::testing::gaussian(n * k, 52);
  const auto asym = nibble::quantize<fp16>(
      nibble::TensorView<const float>(w.data(), {n, k}),
      nibble::QuantConfig{4, 32, false, nibble::ConventionId::olive});
  // GPTQ and AWQ hold zero points: lossless.
  nibble::gptq::ImportOptions asymmetric_gptq;
  asymmetric_gptq.symmetry = nibble::formats::Symmetry::asymmetric;
  const auto gptq = nibble::gptq::to_gptq(asym.view(), nibble::gptq::ZeroFormat::v2);
  expect_same(asym, nibble::gptq::from_gptq(gptq.view(), asymmetric_gptq), "GPTQ v2");
  const auto awq = nibble::awq::to_awq(asym.view());
  expect_same(asym, nibble::awq::from_awq(awq.view()), "AWQ");
  // ModelOpt INT4 is symmetric only; Q4_1 stores the min in fp16, which -z * s rarely is.
  EXPECT_NE(error_message_of([&] { nibble::trtllm::to_modelopt(asym.view()); }), "");
  EXPECT_NE(error_message_of([&] { nibble::gguf::to_blocks(asym.view()); })
                .find("is not exactly representable in fp16"),
            std::string::npos);
}

}  // namespace
