// FP8 E4M3 "fn" conversions (core/float8.hpp).
//
// Independent truths:
//   - ml_dtypes itself: tests/reference/fp8_vectors.bin, written by tests/reference/fp8_vectors.py
//     (ml_dtypes 0.7.0): all 256 codes decoded, and the codes of ~26000 float32 inputs (every fp8
//     value, every midpoint between neighbours and one float32 ulp either side, the overflow
//     region, subnormals, +-0, NaN, +-Inf, random values and bit patterns) for both overflow
//     modes: to_nan = ml_dtypes' astype, saturate = np.clip(x, -448, 448) then astype. The test
//     reads it next to this source file.
//   - the textbook value formula (-1)^s * 2^(e - 7) * (1 + m / 8) (subnormal m * 2^-9);
//   - the definition of round-to-nearest-even, checked by a brute-force nearest search below;
//   - hand-derived values for the edges (448, 464, 480, 2^-10, 2^-9, 2^-6).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "nibble/core/float8.hpp"
#include "support/fixture_file.hpp"

namespace {

using nibble::fp8_e4m3;
using nibble::Fp8Overflow;

uint32_t bits_of(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float float_of(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

uint8_t encode(float value, Fp8Overflow overflow) {
  return nibble::to_fp8_e4m3(value, overflow).bits;
}

float decode(uint8_t code) {
  return nibble::to_float(fp8_e4m3::from_bits(code));
}

// The textbook value of a non-NaN code.
double textbook(uint8_t code) {
  const int sign = (code & 0x80) != 0 ? -1 : 1;
  const int exponent = (code >> 3) & 0xf;
  const int mantissa = code & 0x7;
  if (exponent == 0) return sign * std::ldexp(mantissa, -9);
  return sign * std::ldexp(8 + mantissa, exponent - 10);
}

bool is_nan_code(uint8_t code) {
  return (code & 0x7f) == 0x7f;
}

// ---- hand-derived values
// -------------------------------------------------------------------------

TEST(Float8, DecodesEveryCodeByTheTextbookFormula) {
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<uint8_t>(c);
    if (is_nan_code(code)) {
      EXPECT_TRUE(std::isnan(decode(code))) << c;
      EXPECT_EQ(std::signbit(decode(code)), (c & 0x80) != 0) << c;
      continue;
    }
    EXPECT_EQ(static_cast<double>(decode(code)), textbook(code)) << c;
    EXPECT_EQ(std::signbit(decode(code)), (c & 0x80) != 0) << c;  // -0 is -0
  }
  EXPECT_EQ(decode(0x7e), 448.0f);
  EXPECT_EQ(decode(0x08), 0.015625f);     // 2^-6, smallest normal
  EXPECT_EQ(decode(0x01), 0.001953125f);  // 2^-9, smallest subnormal
  EXPECT_EQ(decode(0x07), 7 * 0.001953125f);
  EXPECT_EQ(decode(0x38), 1.0f);   // 0.0111.000: e = 7 -> 2^0
  EXPECT_EQ(decode(0xc4), -3.0f);  // 1.1000.100: -(1 + 4/8) * 2^1
}

TEST(Float8, EdgesOfTheRangeRoundAsDerived) {
  for (const Fp8Overflow mode : {Fp8Overflow::saturate, Fp8Overflow::to_nan}) {
    EXPECT_EQ(encode(448.0f, mode), 0x7e);
    EXPECT_EQ(encode(464.0f, mode), 0x7e);  // tie 448 | 480: even mantissa 110 wins
    EXPECT_EQ(encode(-464.0f, mode), 0xfe);
    EXPECT_EQ(encode(0.0f, mode), 0x00);
    EXPECT_EQ(encode(-0.0f, mode), 0x80);
    EXPECT_EQ(encode(std::ldexp(1.0f, -10), mode), 0x00);  // tie 0 | 2^-9 -> 0
    EXPECT_EQ(encode(std::nextafter(std::ldexp(1.0f, -10), 1.0f), mode), 0x01);
    EXPECT_EQ(encode(1.5f * std::ldexp(1.0f, -9), mode), 0x02);  // tie 1 | 2 units -> 2
    EXPECT_EQ(encode(2.5f * std::ldexp(1.0f, -9), mode), 0x02);  // tie 2 | 3 units -> 2
    EXPECT_EQ(encode(7.5f * std::ldexp(1.0f, -9), mode), 0x08);  // tie 7 | 8 units -> 2^-6
    EXPECT_EQ(encode(std::numeric_limits<float>::denorm_min(), mode), 0x00);
    // 16 = 1.000 * 2^4: exponent field 4 + 7 = 11 -> 0.1011.000 = 0x58; ulp 2 in [16, 32).
    EXPECT_EQ(encode(15.5f, mode), 0x58);  // tie 15 (1.111 * 2^3, odd) | 16 -> 16: exponent carry
    EXPECT_EQ(encode(17.0f, mode), 0x58);  // tie 16 | 18 -> 16 (mantissa 000 even)
    EXPECT_EQ(encode(19.0f, mode), 0x5a);  // tie 18 | 20 -> 20 (1.010 * 2^4, mantissa even)
    EXPECT_EQ(encode(std::numeric_limits<float>::quiet_NaN(), mode), 0x7f);
    EXPECT_EQ(encode(-std::numeric_limits<float>::quiet_NaN(), mode), 0xff);
  }
  const float just_above_tie = std::nextafter(464.0f, 1000.0f);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(encode(just_above_tie, Fp8Overflow::saturate), 0x7e);
  EXPECT_EQ(encode(just_above_tie, Fp8Overflow::to_nan), 0x7f);
  EXPECT_EQ(encode(480.0f, Fp8Overflow::saturate), 0x7e);
  EXPECT_EQ(encode(480.0f, Fp8Overflow::to_nan), 0x7f);
  EXPECT_EQ(encode(-1e30f, Fp8Overflow::saturate), 0xfe);
  EXPECT_EQ(encode(-1e30f, Fp8Overflow::to_nan), 0xff);
  EXPECT_EQ(encode(inf, Fp8Overflow::saturate), 0x7e);
  EXPECT_EQ(encode(-inf, Fp8Overflow::saturate), 0xfe);
  EXPECT_EQ(encode(inf, Fp8Overflow::to_nan), 0x7f);
  EXPECT_EQ(encode(-inf, Fp8Overflow::to_nan), 0xff);
  EXPECT_EQ(nibble::kFp8E4m3Max, decode(0x7e));
}

TEST(Float8, EveryValueRoundTripsAndEncodingIsTheNearestEven) {
  // Brute force: for random floats in range, the code must be a nearest finite value, and of two
  // equally near ones the even (mantissa LSB 0) one.
  std::mt19937 random(7);
  std::uniform_real_distribution<float> exponent(-12.0f, 9.0f);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  for (int i = 0; i < 20000; ++i) {
    float x = std::ldexp(mantissa(random), static_cast<int>(std::floor(exponent(random))));
    if ((i & 1) != 0) x = -x;
    if (std::fabs(x) > 464.0f) continue;
    double best = std::numeric_limits<double>::infinity();
    for (int c = 0; c < 256; ++c) {
      if (!is_nan_code(static_cast<uint8_t>(c)))
        best = std::fmin(best, std::fabs(textbook(static_cast<uint8_t>(c)) - x));
    }
    const uint8_t code = encode(x, Fp8Overflow::to_nan);
    ASSERT_EQ(std::fabs(textbook(code) - x), best) << x;
    ASSERT_EQ(std::signbit(decode(code)), std::signbit(x)) << x;  // the sign survives, even to 0
    // A tie (two codes equally near) must pick the even one.
    int nearest = 0;
    for (int c = 0; c < 256; ++c) {
      const auto candidate = static_cast<uint8_t>(c);
      if (!is_nan_code(candidate) && std::fabs(textbook(candidate) - x) == best &&
          (candidate & 0x80) == (code & 0x80))
        ++nearest;
    }
    if (nearest == 2) {
      ASSERT_EQ(code & 1, 0) << x;
    }
  }
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<uint8_t>(c);
    if (is_nan_code(code)) continue;
    for (const Fp8Overflow mode : {Fp8Overflow::saturate, Fp8Overflow::to_nan})
      EXPECT_EQ(encode(decode(code), mode), code) << c;
  }
}

// ---- ml_dtypes fixture
// ---------------------------------------------------------------------------

struct Vectors {
  std::string provenance;
  std::vector<uint32_t> decoded;  // 256 float32 patterns
  std::vector<uint32_t> inputs;   // float32 patterns
  std::vector<uint8_t> to_nan;
  std::vector<uint8_t> saturate;
};

// The format is described in tests/reference/fp8_vectors.py (little-endian, like this host).
Vectors read_vectors() {
  nibble::testing::FixtureFile file(nibble::testing::reference_path("fp8_vectors.bin"),
                                    "fp8_vectors.py", "NBFP8V01");
  Vectors v;
  v.provenance = file.text();
  v.decoded = file.values<uint32_t>(256);
  const uint32_t count = file.u32();
  v.inputs = file.values<uint32_t>(count);
  v.to_nan = file.values<uint8_t>(count);
  v.saturate = file.values<uint8_t>(count);
  file.expect_end();
  return v;
}

const Vectors& vectors() {
  static const Vectors loaded = read_vectors();
  return loaded;
}

TEST(Float8Vectors, FixtureIsMlDtypes0_7) {
  const Vectors& v = vectors();
  EXPECT_EQ(v.provenance.rfind("ml_dtypes 0.7.0;", 0), 0u) << v.provenance;
  EXPECT_GT(v.inputs.size(), 20000u);
}

TEST(Float8Vectors, DecodeMatchesMlDtypesBitForBit) {
  const Vectors& v = vectors();
  for (int c = 0; c < 256; ++c)
    EXPECT_EQ(bits_of(decode(static_cast<uint8_t>(c))), v.decoded[static_cast<std::size_t>(c)])
        << "code 0x" << std::hex << c;
}

TEST(Float8Vectors, EncodeMatchesMlDtypesInBothOverflowModes) {
  const Vectors& v = vectors();
  int nan_inputs = 0;
  int overflowing = 0;
  int ties = 0;
  for (std::size_t i = 0; i < v.inputs.size(); ++i) {
    const float x = float_of(v.inputs[i]);
    ASSERT_EQ(encode(x, Fp8Overflow::to_nan), v.to_nan[i])
        << "to_nan, x = " << x << " (0x" << std::hex << v.inputs[i] << ")";
    ASSERT_EQ(encode(x, Fp8Overflow::saturate), v.saturate[i])
        << "saturate, x = " << x << " (0x" << std::hex << v.inputs[i] << ")";
    if (std::isnan(x)) ++nan_inputs;
    if (!std::isnan(x) && std::fabs(x) > 464.0f) ++overflowing;
    // A midpoint: halfway between the decoded code and a neighbour.
    const uint8_t code = v.to_nan[i];
    if (!is_nan_code(code) && code != 0x7e && code != 0xfe) {
      const double gap = std::fabs(textbook(static_cast<uint8_t>(code + 1)) - textbook(code));
      if (std::fabs(std::fabs(static_cast<double>(x)) - std::fabs(textbook(code))) == gap / 2)
        ++ties;
    }
  }
  // The fixture does exercise NaN, overflow and ties.
  EXPECT_GE(nan_inputs, 6);
  EXPECT_GE(overflowing, 100);
  EXPECT_GE(ties, 200);
}

}  // namespace
