// pack<Bits> / unpack<Bits>. The independent definition used here is the bitstream view: a
// packed row is a little-endian bit string in which code i occupies bits [i * Bits, (i+1) * Bits).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "nibble/pack.hpp"

namespace {

using nibble::Error;
using nibble::ErrorCode;
using nibble::Shape;
using nibble::TensorView;

// Packs by setting individual bits of the row's little-endian bit string.
std::vector<uint8_t> pack_by_bits(const std::vector<uint8_t>& codes, int64_t rows, int64_t k,
                                  int bits) {
  const int64_t row_bytes = (k * bits + 7) / 8;
  std::vector<uint8_t> packed(static_cast<std::size_t>(rows * row_bytes), 0);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t i = 0; i < k; ++i) {
      const uint8_t code = codes[static_cast<std::size_t>(row * k + i)];
      for (int bit = 0; bit < bits; ++bit) {
        const int64_t position = i * bits + bit;
        if ((code >> bit) & 1) {
          packed[static_cast<std::size_t>(row * row_bytes + position / 8)] |=
              static_cast<uint8_t>(1u << (position % 8));
        }
      }
    }
  }
  return packed;
}

template <int Bits>
void check_round_trip(const std::vector<int64_t>& dims, uint32_t seed) {
  const Shape shape(dims);
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> code(0, (1 << Bits) - 1);
  std::vector<uint8_t> codes(static_cast<std::size_t>(shape.numel()));
  for (uint8_t& value : codes)
    value = static_cast<uint8_t>(code(random));

  const std::vector<uint8_t> packed =
      nibble::pack<Bits>(TensorView<const uint8_t>(codes.data(), shape));
  ASSERT_EQ(packed, pack_by_bits(codes, shape.rows(), shape.last(), Bits)) << shape;
  const Shape packed_shape = nibble::packed_shape<Bits>(shape);
  ASSERT_EQ(packed_shape.last(), (shape.last() * Bits + 7) / 8);
  const std::vector<uint8_t> unpacked =
      nibble::unpack<Bits>(TensorView<const uint8_t>(packed.data(), packed_shape), shape.last());
  ASSERT_EQ(unpacked, codes) << shape;
}

template <int Bits>
void sweep_round_trips() {
  uint32_t seed = 1;
  for (int64_t k : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 31, 33, 127, 129}) {
    check_round_trip<Bits>({k}, seed++);
    check_round_trip<Bits>({3, k}, seed++);
    check_round_trip<Bits>({2, 3, k}, seed++);
    check_round_trip<Bits>({2, 1, 2, k}, seed++);
  }
}

TEST(Pack, RoundTrips2Bit) {
  sweep_round_trips<2>();
}
TEST(Pack, RoundTrips4Bit) {
  sweep_round_trips<4>();
}
TEST(Pack, RoundTrips8Bit) {
  sweep_round_trips<8>();
}

TEST(Pack, WorkedExamplesByteForByte) {
  // 4-bit: byte j = code[2j] | code[2j+1] << 4; K = 5 leaves the top nibble of byte 2 zero.
  const std::vector<uint8_t> four{1, 2, 3, 4, 5};
  EXPECT_EQ(nibble::pack<4>(TensorView<const uint8_t>(four.data(), {5})),
            (std::vector<uint8_t>{0x21, 0x43, 0x05}));
  // 2-bit: codes 1, 2, 3, 0 -> 1 | 2 << 2 | 3 << 4 | 0 << 6 = 0x39; code 1 alone -> 0x01.
  const std::vector<uint8_t> two{1, 2, 3, 0, 1};
  EXPECT_EQ(nibble::pack<2>(TensorView<const uint8_t>(two.data(), {5})),
            (std::vector<uint8_t>{0x39, 0x01}));
  const std::vector<uint8_t> eight{0, 255, 7};
  EXPECT_EQ(nibble::pack<8>(TensorView<const uint8_t>(eight.data(), {3})), eight);
}

TEST(Pack, RowsArePaddedIndependently) {
  // Two rows of 3 four-bit codes: each row takes 2 bytes; the pad nibble of each row is 0.
  const std::vector<uint8_t> codes{0xf, 0xe, 0xd, 0x1, 0x2, 0x3};
  EXPECT_EQ(nibble::pack<4>(TensorView<const uint8_t>(codes.data(), {2, 3})),
            (std::vector<uint8_t>{0xef, 0x0d, 0x21, 0x03}));
}

TEST(Pack, RejectsCodesThatDoNotFit) {
  const std::vector<uint8_t> codes{1, 2, 16, 3};
  try {
    nibble::pack<4>(TensorView<const uint8_t>(codes.data(), {2, 2}));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::invalid_argument);
    const std::string message = error.what();
    EXPECT_NE(message.find("code 16 at row 1, column 0"), std::string::npos) << message;
  }
  const std::vector<uint8_t> two_bit{4};
  EXPECT_THROW(nibble::pack<2>(TensorView<const uint8_t>(two_bit.data(), {1})), Error);
}

TEST(Pack, RejectsMismatchedShapes) {
  std::vector<uint8_t> codes(10, 1);
  std::vector<uint8_t> packed(6, 0);
  try {
    nibble::pack<4>(TensorView<const uint8_t>(codes.data(), {2, 5}),
                    TensorView<uint8_t>(packed.data(), {2, 2}));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::shape_mismatch);
  }
  EXPECT_THROW(nibble::unpack<4>(TensorView<const uint8_t>(packed.data(), {2, 3}), 7), Error);
  EXPECT_NO_THROW(nibble::unpack<4>(TensorView<const uint8_t>(packed.data(), {2, 3}), 6));
}

TEST(Pack, UnpackIgnoresPadBits) {
  // Pad bits are written 0, but a reader must not depend on them (ORT can leave stale nibbles).
  const std::vector<uint8_t> packed{0xf1};
  EXPECT_EQ(nibble::unpack<4>(TensorView<const uint8_t>(packed.data(), {1}), 1),
            (std::vector<uint8_t>{1}));
}

TEST(Pack, Rank3EqualsItsRank2Slices) {
  const Shape shape{3, 4, 9};
  std::vector<uint8_t> codes(static_cast<std::size_t>(shape.numel()));
  for (std::size_t i = 0; i < codes.size(); ++i)
    codes[i] = static_cast<uint8_t>((i * 7) % 4);
  const auto whole = nibble::pack<2>(TensorView<const uint8_t>(codes.data(), shape));
  std::vector<uint8_t> sliced;
  for (int64_t e = 0; e < 3; ++e) {
    const auto part =
        nibble::pack<2>(TensorView<const uint8_t>(codes.data() + e * 36, Shape{4, 9}));
    sliced.insert(sliced.end(), part.begin(), part.end());
  }
  EXPECT_EQ(whole, sliced);
}

}  // namespace
