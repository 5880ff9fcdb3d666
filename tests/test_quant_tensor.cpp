#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "nibble/quant_tensor.hpp"

namespace {

using nibble::Error;
using nibble::ErrorCode;
using nibble::fp16;
using nibble::QuantConfig;
using nibble::QuantTensor;
using nibble::QuantTensorView;
using nibble::Shape;

template <class F>
std::string error_of(F&& f, ErrorCode expected) {
  try {
    f();
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), expected) << error.what();
    return error.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(QuantTensor, SizesFollowTheCanonicalLayout) {
  const QuantTensor<fp16> asym(Shape{8, 4096}, QuantConfig{4, 32, false});
  EXPECT_EQ(asym.qweight().size(), 8u * 2048u);
  EXPECT_EQ(asym.scales().size(), 8u * 128u);
  EXPECT_EQ(asym.zeros().size(), 8u * 64u);
  // 4 bits + 16-bit scale / 32 + 4-bit zero / 32 = 4.625 bits per weight.
  EXPECT_DOUBLE_EQ(asym.bits_per_weight(), 4.625);
  const QuantTensor<fp16> sym(Shape{8, 4096}, QuantConfig{4, 32, true});
  EXPECT_TRUE(sym.zeros().empty());
  EXPECT_DOUBLE_EQ(sym.bits_per_weight(), 4.5);
  // 2 bits + 32-bit scale / 128 = 2.25.
  EXPECT_DOUBLE_EQ((QuantTensor<float>(Shape{3, 256}, QuantConfig{2, 128, true}).bits_per_weight()),
                   2.25);
  // Padding counts: K = 5, G = 4, 8-bit: 8 bytes of codes, 2 scales, 2 zero bytes per 5 weights.
  const QuantTensor<float> padded(Shape{5}, QuantConfig{8, 4, false});
  EXPECT_EQ(padded.storage_bytes(), 8 + 2 * 4 + 2);
}

TEST(QuantTensor, PackRowWritesCodesZerosAndTheirPads) {
  // K = 20, G = 8: 3 groups, padded_k = 24; 4 bits: 2 zero-point bytes, 4 slots (1 unused).
  std::vector<uint8_t> codes(24, 0xAA);  // the pads [20, 24) are overwritten
  for (int col = 0; col < 20; ++col)
    codes[static_cast<std::size_t>(col)] = static_cast<uint8_t>(col % 16);
  const std::vector<uint8_t> zero_points_in{3, 9, 5, 0xAA};
  for (auto convention : {nibble::ConventionId::olive, nibble::ConventionId::ort}) {
    QuantTensor<float> t(Shape{2, 20}, QuantConfig{4, 8, false, convention});
    EXPECT_EQ(t.zero_slots(), 4);
    const uint8_t pad = convention == nibble::ConventionId::ort ? 8 : 0;  // ZeroPointPad::mid
    EXPECT_EQ(t.zero_point_pad(), pad);
    std::vector<uint8_t> row_codes = codes;
    std::vector<uint8_t> zero_points = zero_points_in;
    t.pack_row(1, row_codes.data(), zero_points.data());
    const auto view = t.view();
    for (int col = 0; col < 24; ++col) {
      EXPECT_EQ(nibble::BitPacking<4>::code_at(view.qweight_row(1), col), col < 20 ? col % 16 : 5)
          << col;  // pad codes: the last group's zero point
    }
    EXPECT_EQ(t.zeros()[2], 3 | (9 << 4));
    EXPECT_EQ(t.zeros()[3], 5 | (pad << 4));
    EXPECT_EQ(t.qweight()[0], 0);  // row 0 untouched
    // An explicit pad overrides the convention's.
    zero_points = zero_points_in;
    t.pack_row(0, row_codes.data(), zero_points.data(), /*zero_pad=*/0);
    EXPECT_EQ(t.zeros()[1], 5);
  }
  // Symmetric: codes only (the pad codes still take the last group's zero point).
  QuantTensor<float> sym(Shape{1, 20}, QuantConfig{4, 8, true});
  std::vector<uint8_t> row_codes = codes;
  std::vector<uint8_t> zero_points{8, 8, 8, 0};
  sym.pack_row(0, row_codes.data(), zero_points.data());
  EXPECT_EQ(nibble::BitPacking<4>::code_at(sym.qweight().data(), 23), 8);
  EXPECT_TRUE(sym.zeros().empty());
}

TEST(QuantTensor, RejectsShapesWhoseBuffersCannotBeAddressed) {
  // A group far larger than K pads each row to 2^62 codes: 2^65 bits per row.
  error_of(
      [] {
        QuantTensor<float>(Shape{4, 1}, QuantConfig{8, int64_t{1} << 62, false});
      },
      ErrorCode::overflow);
  // 2^40 rows of 2^30 padded bytes: the row count times the row size overflows.
  error_of(
      [] {
        QuantTensor<float>(Shape{int64_t{1} << 40, 1}, QuantConfig{8, int64_t{1} << 30, true});
      },
      ErrorCode::overflow);
  error_of(
      [] {
        QuantTensor<float>(Shape{4, 4}, QuantConfig{3, 32, false});
      },
      ErrorCode::invalid_argument);
}

TEST(QuantTensorView, AccessorsReadTheRightBitsAndSlicesOffsetRows) {
  // [2, 3, 5] 2-bit asymmetric, G = 2: 3 groups, 6 codes = 2 bytes per row, 1 zero byte per row.
  QuantTensor<float> tensor(Shape{2, 3, 5}, QuantConfig{2, 2, false});
  for (std::size_t i = 0; i < tensor.qweight().size(); ++i) {
    tensor.qweight()[i] = static_cast<uint8_t>(17 * i + 3);
  }
  for (std::size_t i = 0; i < tensor.scales().size(); ++i)
    tensor.scales()[i] = 0.5f * static_cast<float>(i);
  for (std::size_t i = 0; i < tensor.zeros().size(); ++i)
    tensor.zeros()[i] = static_cast<uint8_t>(0x1b * (i + 1));
  const QuantTensorView<float> view = tensor.view();
  for (int64_t row = 0; row < 6; ++row) {
    for (int64_t col = 0; col < 5; ++col) {
      const uint8_t byte = tensor.qweight()[static_cast<std::size_t>(row * 2 + col / 4)];
      ASSERT_EQ(view.code(row, col), (byte >> (2 * (col % 4))) & 3) << row << "," << col;
    }
    for (int64_t group = 0; group < 3; ++group) {
      const uint8_t byte = tensor.zeros()[static_cast<std::size_t>(row)];
      EXPECT_EQ(view.zero_point(row, group), (byte >> (2 * group)) & 3);
      EXPECT_EQ(view.scale(row, group), 0.5f * static_cast<float>(row * 3 + group));
    }
  }
  const QuantTensorView<float> second = view.slice(1);
  EXPECT_EQ(second.shape(), (Shape{3, 5}));
  EXPECT_EQ(second.qweight(), view.qweight() + 3 * 2);
  EXPECT_EQ(second.scales(), view.scales() + 3 * 3);
  EXPECT_EQ(second.zeros(), view.zeros() + 3);
  EXPECT_EQ(second.code(2, 4), view.code(5, 4));
  error_of([&] { view.slice(2); }, ErrorCode::invalid_argument);
  // Symmetric tensors report the implied zero point.
  const QuantTensor<float> sym(Shape{1, 4}, QuantConfig{8, 4, true});
  EXPECT_EQ(sym.view().zero_point(0, 0), 128);
}

TEST(QuantTensorView, ValidatesExternalBuffers) {
  const QuantConfig asym{4, 16, false};
  const Shape shape{3, 40};  // 3 groups of 16 -> 24 code bytes, 3 scales, 2 zero bytes per row
  std::vector<uint8_t> qweight(72);
  std::vector<fp16> scales(9);
  std::vector<uint8_t> zeros(6);
  EXPECT_NO_THROW(
      (QuantTensorView<fp16>(shape, asym, qweight.data(), 72, scales.data(), 9, zeros.data(), 6)));
  error_of(
      [&] { QuantTensorView<fp16>(shape, asym, nullptr, 72, scales.data(), 9, zeros.data(), 6); },
      ErrorCode::null_pointer);
  const std::string small = error_of(
      [&] {
        QuantTensorView<fp16>(shape, asym, qweight.data(), 71, scales.data(), 9, zeros.data(), 6);
      },
      ErrorCode::buffer_too_small);
  EXPECT_NE(small.find("qweight holds 71 elements but the shape needs 72"), std::string::npos)
      << small;
  error_of(
      [&] {
        QuantTensorView<fp16>(shape, asym, qweight.data(), 72, scales.data(), 8, zeros.data(), 6);
      },
      ErrorCode::buffer_too_small);
  error_of(
      [&] {
        QuantTensorView<fp16>(shape, asym, qweight.data(), 72, scales.data(), 9, zeros.data(), 5);
      },
      ErrorCode::buffer_too_small);
  error_of(
      [&] { QuantTensorView<fp16>(shape, asym, qweight.data(), 72, scales.data(), 9, nullptr, 0); },
      ErrorCode::null_pointer);
  const QuantConfig sym{4, 16, true};
  error_of(
      [&] {
        QuantTensorView<fp16>(shape, sym, qweight.data(), 72, scales.data(), 9, zeros.data(), 6);
      },
      ErrorCode::invalid_argument);
  EXPECT_NO_THROW(
      (QuantTensorView<fp16>(shape, sym, qweight.data(), 72, scales.data(), 9, nullptr, 0)));
  alignas(4) uint8_t raw[32] = {};
  const auto* misaligned = reinterpret_cast<const fp16*>(raw + 1);
  error_of(
      [&] {
        QuantTensorView<fp16>(Shape{1, 16}, sym, qweight.data(), 8, misaligned, 1, nullptr, 0);
      },
      ErrorCode::misaligned);
}

}  // namespace
