// fp16 / bf16 conversions, checked exhaustively over all 65536 patterns of each type.
//
// Independent truths used here:
//  - the compiler's own _Float16 conversions (libgcc soft-float on x86 without AVX512-FP16),
//  - the definition of round-to-nearest-even: every midpoint between two neighbours (exact in
//    float) must go to the even neighbour, and one float ulp either side to the nearer one,
//  - a brute-force nearest-value search over all finite patterns (for double -> fp16/bf16),
//  - the textbook value formula sign * 2^(e - bias) * (1 + m / 2^mbits) for decoding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "nibble/core/float16.hpp"

namespace {

using nibble::bf16;
using nibble::fp16;

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

bool fp16_is_nan(uint16_t h) {
  return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
}
bool bf16_is_nan(uint16_t b) {
  return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0;
}

// The textbook value of a finite 16-bit pattern with `mantissa_bits` and exponent `bias`.
double decode(uint16_t pattern, int mantissa_bits, int exponent_bits, int bias) {
  const int sign = (pattern >> 15) != 0 ? -1 : 1;
  const int exponent = (pattern >> mantissa_bits) & ((1 << exponent_bits) - 1);
  const int mantissa = pattern & ((1 << mantissa_bits) - 1);
  if (exponent == 0) return sign * std::ldexp(mantissa, 1 - bias - mantissa_bits);
  return sign * std::ldexp((1 << mantissa_bits) + mantissa, exponent - bias - mantissa_bits);
}

template <class T>
uint16_t pattern_from_float(float value) {
  return nibble::from_float<T>(value).bits;
}

template <class T>
float to_float_pattern(uint16_t pattern) {
  return nibble::to_float(T::from_bits(pattern));
}

// Midpoints between every pair of adjacent positive finite values (and the largest finite value
// and the first overflowing one) must round to the even neighbour; one float ulp either side
// rounds to the nearer neighbour. Negative values mirror. `largest_finite` is the pattern of the
// largest finite value; `infinity` the pattern of +Inf.
template <class T>
void check_ties_to_even(uint16_t largest_finite, uint16_t infinity, double overflow_value) {
  for (uint32_t low = 0; low <= largest_finite; ++low) {
    const uint16_t high = static_cast<uint16_t>(low == largest_finite ? infinity : low + 1);
    const double low_value = to_float_pattern<T>(static_cast<uint16_t>(low));
    const double high_value = low == largest_finite ? overflow_value : to_float_pattern<T>(high);
    const auto midpoint = static_cast<float>((low_value + high_value) / 2);  // exact in float
    ASSERT_EQ(static_cast<double>(midpoint), (low_value + high_value) / 2) << "pattern " << low;
    const uint16_t even = (low & 1u) == 0 ? static_cast<uint16_t>(low) : high;
    for (const float sign : {1.0f, -1.0f}) {
      const auto sign_bit = static_cast<uint16_t>(sign < 0 ? 0x8000u : 0u);
      ASSERT_EQ(pattern_from_float<T>(sign * midpoint), even | sign_bit) << "midpoint of " << low;
      const float above = std::nextafter(midpoint, std::numeric_limits<float>::infinity());
      const float below = std::nextafter(midpoint, 0.0f);
      ASSERT_EQ(pattern_from_float<T>(sign * above), high | sign_bit) << "above midpoint " << low;
      if (low_value != 0 || below > 0) {
        ASSERT_EQ(pattern_from_float<T>(sign * below), low | sign_bit) << "below midpoint " << low;
      }
    }
  }
}

// The nearest finite pattern to `value` (ties to even), or Inf beyond the overflow threshold,
// by binary search over the sorted positive finite patterns: a brute-force definition of RNE.
template <class T>
uint16_t nearest_pattern(double value, uint16_t largest_finite, uint16_t infinity,
                         double overflow_value) {
  const double magnitude = std::fabs(value);
  const auto sign_bit = static_cast<uint16_t>(std::signbit(value) ? 0x8000u : 0u);
  uint32_t lo = 0;
  uint32_t hi = largest_finite;
  if (magnitude >= to_float_pattern<T>(largest_finite)) {
    const double midpoint = (to_float_pattern<T>(largest_finite) + overflow_value) / 2;
    if (magnitude < midpoint) return largest_finite | sign_bit;
    return infinity | sign_bit;  // the midpoint itself ties to the even (overflowing) side
  }
  while (hi - lo > 1) {  // invariant: value(lo) <= magnitude < value(hi)
    const uint32_t mid = (lo + hi) / 2;
    if (to_float_pattern<T>(static_cast<uint16_t>(mid)) <= magnitude) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const double below = magnitude - to_float_pattern<T>(static_cast<uint16_t>(lo));
  const double above = to_float_pattern<T>(static_cast<uint16_t>(hi)) - magnitude;
  uint32_t chosen = below < above ? lo : hi;
  if (below == above) chosen = (lo & 1u) == 0 ? lo : hi;
  return static_cast<uint16_t>(chosen | sign_bit);
}

// ---- fp16 ---------------------------------------------------------------------------------------

TEST(Fp16, DecodesEveryPatternToItsTextbookValue) {
  for (uint32_t pattern = 0; pattern <= 0xffffu; ++pattern) {
    const auto h = static_cast<uint16_t>(pattern);
    const float value = to_float_pattern<fp16>(h);
    if (fp16_is_nan(h)) {
      EXPECT_TRUE(std::isnan(value)) << pattern;
      EXPECT_EQ(std::signbit(value), (h & 0x8000u) != 0) << pattern;
    } else if ((h & 0x7fffu) == 0x7c00u) {
      EXPECT_EQ(value, (h & 0x8000u) ? -INFINITY : INFINITY) << pattern;
    } else {
      ASSERT_EQ(static_cast<double>(value), decode(h, 10, 5, 15)) << pattern;
      ASSERT_EQ(std::signbit(value), (h & 0x8000u) != 0) << pattern;  // -0.0 keeps its sign
    }
  }
}

#if defined(__FLT16_MAX__)
TEST(Fp16, DecodesEveryPatternLikeTheCompiler) {
  for (uint32_t pattern = 0; pattern <= 0xffffu; ++pattern) {
    const auto h = static_cast<uint16_t>(pattern);
    _Float16 native;
    std::memcpy(&native, &h, sizeof native);
    const auto expected = static_cast<float>(native);
    const float actual = to_float_pattern<fp16>(h);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(actual)) << pattern;
    } else {
      ASSERT_EQ(bits_of(actual), bits_of(expected)) << pattern;
    }
  }
}

TEST(Fp16, EncodesLikeTheCompilerOnSweptAndRandomFloats) {
  const auto check = [](uint32_t float_pattern) {
    const float value = float_of(float_pattern);
    const auto native = static_cast<_Float16>(value);
    uint16_t expected;
    std::memcpy(&expected, &native, sizeof expected);
    const uint16_t actual = pattern_from_float<fp16>(value);
    if (std::isnan(value)) {
      ASSERT_TRUE(fp16_is_nan(actual)) << std::hex << float_pattern;
    } else {
      ASSERT_EQ(actual, expected) << std::hex << float_pattern;
    }
  };
  // Every float whose low 12 bits are 0, 0x7ff, 0x800, 0x801 or 0xfff: all exponents, every
  // fp16-relevant mantissa prefix, and the values next to every tie.
  for (uint32_t high = 0; high < (1u << 20); ++high) {
    for (const uint32_t low : {0x000u, 0x7ffu, 0x800u, 0x801u, 0xfffu})
      check((high << 12) | low);
  }
  std::mt19937 random(20261124);
  for (int i = 0; i < 2000000; ++i)
    check(static_cast<uint32_t>(random()));
}
#else
TEST(Fp16, DecodesEveryPatternLikeTheCompiler) {
  GTEST_SKIP() << "this compiler has no _Float16 on this target (GCC >= 12 and clang >= 15 do)";
}
TEST(Fp16, EncodesLikeTheCompilerOnSweptAndRandomFloats) {
  GTEST_SKIP() << "this compiler has no _Float16 on this target (GCC >= 12 and clang >= 15 do)";
}
#endif

TEST(Fp16, EveryPatternRoundTripsThroughFloat) {
  for (uint32_t pattern = 0; pattern <= 0xffffu; ++pattern) {
    const auto h = static_cast<uint16_t>(pattern);
    const uint16_t back = pattern_from_float<fp16>(to_float_pattern<fp16>(h));
    if (fp16_is_nan(h)) {
      EXPECT_TRUE(fp16_is_nan(back)) << pattern;
      EXPECT_EQ(back & 0x8000u, h & 0x8000u) << pattern;
    } else {
      ASSERT_EQ(back, h) << pattern;
    }
  }
}

TEST(Fp16, RoundsEveryMidpointToEven) {
  // 0x7bff = 65504 (largest finite); the next step would be 65536 = Inf's position.
  check_ties_to_even<fp16>(0x7bffu, 0x7c00u, 65536.0);
}

TEST(Fp16, OverflowAndUnderflowBoundaries) {
  EXPECT_EQ(pattern_from_float<fp16>(65504.0f), 0x7bffu);
  EXPECT_EQ(pattern_from_float<fp16>(std::nextafter(65520.0f, 0.0f)), 0x7bffu);
  EXPECT_EQ(pattern_from_float<fp16>(65520.0f), 0x7c00u);  // the tie goes to even: Inf
  EXPECT_EQ(pattern_from_float<fp16>(-1e30f), 0xfc00u);
  EXPECT_EQ(pattern_from_float<fp16>(std::ldexp(1.0f, -25)), 0x0000u);  // tie -> even 0
  EXPECT_EQ(pattern_from_float<fp16>(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001u);
  EXPECT_EQ(pattern_from_float<fp16>(-std::ldexp(1.0f, -26)), 0x8000u);  // -0
  EXPECT_EQ(pattern_from_float<fp16>(std::numeric_limits<float>::denorm_min()), 0x0000u);
}

TEST(Fp16, NaNsStayNaN) {
  // Signalling NaNs whose payload lives only in the low 13 bits must not collapse into Inf.
  for (const uint32_t pattern : {0x7f800001u, 0x7fc00000u, 0xff800fffu, 0x7fffffffu, 0xffc00001u}) {
    const uint16_t h = pattern_from_float<fp16>(float_of(pattern));
    EXPECT_TRUE(fp16_is_nan(h)) << std::hex << pattern;
    EXPECT_EQ((h & 0x8000u) != 0, (pattern & 0x80000000u) != 0) << std::hex << pattern;
    EXPECT_NE(h & 0x200u, 0u) << "quiet bit set for " << std::hex << pattern;
  }
}

// ---- bf16 ---------------------------------------------------------------------------------------

TEST(Bf16, DecodesEveryPatternToItsTextbookValue) {
  for (uint32_t pattern = 0; pattern <= 0xffffu; ++pattern) {
    const auto b = static_cast<uint16_t>(pattern);
    const float value = to_float_pattern<bf16>(b);
    if (bf16_is_nan(b)) {
      EXPECT_TRUE(std::isnan(value)) << pattern;
    } else if ((b & 0x7fffu) == 0x7f80u) {
      EXPECT_EQ(value, (b & 0x8000u) ? -INFINITY : INFINITY) << pattern;
    } else {
      ASSERT_EQ(static_cast<double>(value), decode(b, 7, 8, 127)) << pattern;
      ASSERT_EQ(std::signbit(value), (b & 0x8000u) != 0) << pattern;
    }
  }
}

TEST(Bf16, EveryPatternRoundTripsThroughFloat) {
  for (uint32_t pattern = 0; pattern <= 0xffffu; ++pattern) {
    const auto b = static_cast<uint16_t>(pattern);
    const uint16_t back = pattern_from_float<bf16>(to_float_pattern<bf16>(b));
    if (bf16_is_nan(b)) {
      EXPECT_TRUE(bf16_is_nan(back)) << pattern;
      EXPECT_EQ(back & 0x8000u, b & 0x8000u) << pattern;
    } else {
      ASSERT_EQ(back, b) << pattern;
    }
  }
}

TEST(Bf16, RoundsEveryMidpointToEven) {
  // 0x7f7f is the largest finite bf16; the next step, 2^128, is where Inf sits.
  check_ties_to_even<bf16>(0x7f7fu, 0x7f80u, std::ldexp(1.0, 128));
}

TEST(Bf16, EncodesRandomFloatsToTheNearestPattern) {
  std::mt19937 random(7);
  for (int i = 0; i < 200000; ++i) {
    const float value = float_of(static_cast<uint32_t>(random()));
    if (std::isnan(value)) continue;
    ASSERT_EQ(pattern_from_float<bf16>(value),
              nearest_pattern<bf16>(value, 0x7f7fu, 0x7f80u, std::ldexp(1.0, 128)))
        << std::hex << bits_of(value);
  }
}

TEST(Bf16, NaNsStayNaN) {
  for (const uint32_t pattern : {0x7f800001u, 0x7fc00000u, 0xff80ffffu, 0x7fffffffu}) {
    const uint16_t b = pattern_from_float<bf16>(float_of(pattern));
    EXPECT_TRUE(bf16_is_nan(b)) << std::hex << pattern;
    EXPECT_EQ((b & 0x8000u) != 0, (pattern & 0x80000000u) != 0) << std::hex << pattern;
  }
  EXPECT_EQ(pattern_from_float<bf16>(std::numeric_limits<float>::max()), 0x7f80u);  // rounds to Inf
}

// ---- double -> fp16 / bf16: one rounding, not two
// ------------------------------------------------

template <class T>
void check_from_double(uint16_t largest_finite, uint16_t infinity, double overflow_value,
                       int mantissa_bits) {
  std::mt19937_64 random(11);
  std::uniform_int_distribution<uint32_t> any_pattern(0, largest_finite);
  for (int i = 0; i < 100000; ++i) {
    // Values near every kind of pattern: on a value, on a midpoint, just off a midpoint by far
    // less than a float ulp (where rounding through float first would create a false tie).
    const auto low = static_cast<uint16_t>(any_pattern(random));
    const double low_value = to_float_pattern<T>(low);
    const double high_value =
        low == largest_finite
            ? overflow_value
            : static_cast<double>(to_float_pattern<T>(static_cast<uint16_t>(low + 1)));
    const double midpoint = (low_value + high_value) / 2;
    const double nudge = (high_value - low_value) * std::ldexp(1.0, -40);
    for (const double value : {low_value, midpoint, midpoint + nudge, midpoint - nudge,
                               -(midpoint + nudge), low_value + (high_value - low_value) / 3}) {
      const uint16_t expected = nearest_pattern<T>(value, largest_finite, infinity, overflow_value);
      ASSERT_EQ(nibble::from_double<T>(value).bits, expected)
          << "value " << value << " near pattern " << low << " (" << mantissa_bits << " bits)";
    }
  }
}

TEST(FromDouble, Fp16RoundsOnceToTheNearest) {
  check_from_double<fp16>(0x7bffu, 0x7c00u, 65536.0, 10);
}

TEST(FromDouble, Bf16RoundsOnceToTheNearest) {
  check_from_double<bf16>(0x7f7fu, 0x7f80u, std::ldexp(1.0, 128), 7);
}

TEST(FromDouble, AvoidsTheDoubleRoundingThroughFloat) {
  // 1 + 2^-11 + 2^-40 is just above the fp16 midpoint between 1 and 1 + 2^-10. Through float it
  // becomes exactly the midpoint (the 2^-40 is lost) and then ties down to 1.0.
  const double value = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  EXPECT_EQ(nibble::from_float<fp16>(static_cast<float>(value)).bits, 0x3c00u);  // 1.0: wrong
  EXPECT_EQ(nibble::from_double<fp16>(value).bits, 0x3c01u);                     // right
  EXPECT_EQ(nibble::from_double<fp16>(1e300).bits, 0x7c00u);
  EXPECT_EQ(nibble::from_double<bf16>(-1e300).bits, 0xff80u);
  EXPECT_TRUE(std::isnan(nibble::to_float(nibble::from_double<bf16>(std::nan("")))));
}

}  // namespace
