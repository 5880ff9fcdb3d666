// The RTN arithmetic of each convention on hand-derived groups. The derivation of every expected
// value is in the comment beside it; values are chosen so the arithmetic is exact in float.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "nibble/core/convention.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/solvers/rtn.hpp"

namespace {

using nibble::Convention;
using nibble::ConventionId;
using nibble::fp16;
using nibble::rtn::Fp32Math;
using nibble::rtn::Fp64Math;
using nibble::rtn::GroupCoder;
using nibble::rtn::WeightTypeMath;

const Convention& olive() {
  return nibble::convention(ConventionId::olive);
}
const Convention& ort() {
  return nibble::convention(ConventionId::ort);
}
const Convention& gather() {
  return nibble::convention(ConventionId::ort_gather);
}
const Convention& weight_only() {
  return nibble::convention(ConventionId::ort_weight_only);
}

template <class Math>
auto params(const Convention& convention, int bits, bool symmetric, float lo, float hi) {
  return nibble::rtn::group_params<Math, Math>(convention, bits, symmetric, lo, hi);
}

TEST(RtnRounding, HalfToEvenAndHalfAway) {
  using nibble::rtn::round_half_to_even;
  for (const auto& [value, even] : std::vector<std::pair<float, float>>{{0.5f, 0.0f},
                                                                        {1.5f, 2.0f},
                                                                        {2.5f, 2.0f},
                                                                        {-2.5f, -2.0f},
                                                                        {-3.5f, -4.0f},
                                                                        {0.49999997f, 0.0f},
                                                                        {2.5000002f, 3.0f},
                                                                        {8388607.5f, 8388608.0f},
                                                                        {-0.5f, -0.0f}}) {
    EXPECT_EQ(round_half_to_even(value), even) << value;
  }
  EXPECT_EQ(round_half_to_even(2.5), 2.0);  // the double instantiation
  EXPECT_EQ(nibble::rtn::round_with(nibble::Rounding::half_away_from_zero, 2.5f), 3.0f);
  EXPECT_EQ(nibble::rtn::round_with(nibble::Rounding::half_away_from_zero, -2.5f), -3.0f);
}

TEST(RtnParams, OliveAsymmetric) {
  // [-1, 2]: range 3, scale = 3 / 15; zero = round(1 / scale) = round(5 - a few ulps) = 5.
  const auto p = params<Fp32Math>(olive(), 4, false, -1.0f, 2.0f);
  EXPECT_EQ(p.scale, 3.0f / 15.0f);
  EXPECT_EQ(p.zero, 5);
  // 2-bit, [-1.25, 0.25]: scale = 1.5 / 3 = 0.5, zero = round(2.5) = 2 (half to even).
  EXPECT_EQ(params<Fp32Math>(olive(), 2, false, -1.25f, 0.25f).zero, 2);
  // All-positive [0.5, 1]: the range is widened to include 0: scale = 1 / 15, zero 0.
  const auto positive = params<Fp32Math>(olive(), 4, false, 0.5f, 1.0f);
  EXPECT_EQ(positive.scale, 1.0f / 15.0f);
  EXPECT_EQ(positive.zero, 0);
}

TEST(RtnParams, OliveSymmetricKeepsTheGptqQuirk) {
  // [-1, 2]: hi = 2, lo = -2 -> scale = 4 / 15, zero 8.
  const auto p = params<Fp32Math>(olive(), 4, true, -1.0f, 2.0f);
  EXPECT_EQ(p.scale, 4.0f / 15.0f);
  EXPECT_EQ(p.zero, 8);
  // [0, 2] has no negative value: lo stays 0, scale = 2 / 15 (half the symmetric range).
  EXPECT_EQ(params<Fp32Math>(olive(), 4, true, 0.0f, 2.0f).scale, 2.0f / 15.0f);
}

TEST(RtnParams, OliveEmptyGroupUsesTheUnitRange) {
  // [0, 0] -> [-1, 1]: scale = fl(2 / maxq), zero = round(fl(1 / scale)) with ties to even.
  //  4-bit: 2/15 = 0.13333334, 1/0.13333334 = 7.4999995 -> 7 (not the 8 exact math suggests)
  //  8-bit: 2/255 = 0.007843138, 1/0.007843138 = 127.49999 -> 127
  //  2-bit: 2/3 = 0.6666667, 1/0.6666667 = 1.5 in float (the error is under half an ulp) -> 2
  EXPECT_EQ(params<Fp32Math>(olive(), 4, false, 0.0f, 0.0f).scale, 2.0f / 15.0f);
  EXPECT_EQ(params<Fp32Math>(olive(), 4, false, 0.0f, 0.0f).zero, 7);
  EXPECT_EQ(params<Fp32Math>(olive(), 8, false, 0.0f, 0.0f).zero, 127);
  EXPECT_EQ(params<Fp32Math>(olive(), 2, false, 0.0f, 0.0f).zero, 2);
  EXPECT_EQ(params<Fp32Math>(olive(), 4, true, 0.0f, 0.0f).scale, 2.0f / 15.0f);
  EXPECT_EQ(params<Fp32Math>(olive(), 4, true, 0.0f, 0.0f).zero, 8);
}

TEST(RtnParams, OrtAsymmetricRoundsTheZeroPointHalfAway) {
  // 2-bit, [-1.25, 0.25]: scale = 1.5 / 3 = 0.5, zero_fp = 2.5 -> roundf = 3 (Olive: 2).
  const auto p = params<Fp32Math>(ort(), 2, false, -1.25f, 0.25f);
  EXPECT_EQ(p.scale, 0.5f);
  EXPECT_EQ(p.zero, 3);
  // All zero: scale 0 and zero_point_fp = min = 0.
  const auto zero = params<Fp32Math>(ort(), 4, false, 0.0f, 0.0f);
  EXPECT_EQ(zero.scale, 0.0f);
  EXPECT_EQ(zero.zero, 0);
}

TEST(RtnParams, OrtSymmetricUsesTheSignedExtreme) {
  // [-1, 3]: the extreme is +3 -> scale = 3 / -8 = -0.375 (negative: +3 lands on code 0).
  EXPECT_EQ(params<Fp32Math>(ort(), 4, true, -1.0f, 3.0f).scale, -0.375f);
  // [-3, 3]: a tie picks the negative one -> scale = -3 / -8 = +0.375.
  EXPECT_EQ(params<Fp32Math>(ort(), 4, true, -3.0f, 3.0f).scale, 0.375f);
  // 8-bit: [-1, 0.5] -> -1 / -128.
  EXPECT_EQ(params<Fp32Math>(ort(), 8, true, -1.0f, 0.5f).scale, 1.0f / 128.0f);
  // All zero: m = +0 -> scale = -0.0, stored with its sign bit as MLAS does.
  const auto zero = params<Fp32Math>(ort(), 4, true, 0.0f, 0.0f);
  EXPECT_EQ(zero.scale, 0.0f);
  EXPECT_TRUE(std::signbit(zero.scale));
}

TEST(RtnParams, GatherEmptyGroupGetsMidZeroPoint) {
  const auto p = params<Fp32Math>(gather(), 4, false, 0.0f, 0.0f);
  EXPECT_EQ(p.scale, 0.0f);
  EXPECT_EQ(p.zero, 8);
  const GroupCoder<Fp32Math> coder(gather(), 4, false, p.scale, p.zero);
  EXPECT_EQ(coder.code(0.0f), 8);
}

TEST(RtnParams, WeightOnlyUsesTheRawRangeAndUnitScale) {
  // Raw [0.5, 1]: scale = 0.5 / 15 in double; zero = clamp(round(-15), 0, 15) = 0, so 1.0 maps
  // to 30 -> clipped to 15 (the tool's all-positive saturation).
  const auto positive = params<Fp64Math>(weight_only(), 4, false, 0.5f, 1.0f);
  EXPECT_EQ(positive.scale, 0.5 / 15.0);
  EXPECT_EQ(positive.zero, 0);
  EXPECT_EQ(GroupCoder<Fp64Math>(weight_only(), 4, false, positive.scale, 0).code(1.0f), 15);
  // Symmetric [-1, 3]: scale = 2 * 3 / 15 in double.
  EXPECT_EQ(params<Fp64Math>(weight_only(), 4, true, -1.0f, 3.0f).scale, 6.0 / 15.0);
  // Constant 0.75: scale 1, zero = clamp(round(-0.75)) = 0.
  const auto constant = params<Fp64Math>(weight_only(), 4, false, 0.75f, 0.75f);
  EXPECT_EQ(constant.scale, 1.0);
  EXPECT_EQ(constant.zero, 0);
}

TEST(RtnCodes, TiesFollowEachConventionsRounding) {
  // Range [-2.5, 5]: scale 0.5 exactly, zero point 5 (both conventions).
  // x = 0.25: 0.5 + 5 = 5.5 -> 6 under both roundings. x = 0.75: 1.5 + 5 = 6.5 -> 6 (even) or 7.
  const auto olive_params = params<Fp32Math>(olive(), 4, false, -2.5f, 5.0f);
  const auto ort_params = params<Fp32Math>(ort(), 4, false, -2.5f, 5.0f);
  ASSERT_EQ(olive_params.scale, 0.5f);
  ASSERT_EQ(olive_params.zero, 5);
  ASSERT_EQ(ort_params.zero, 5);
  const GroupCoder<Fp32Math> olive_coder(olive(), 4, false, olive_params.scale, olive_params.zero);
  const GroupCoder<Fp32Math> ort_coder(ort(), 4, false, ort_params.scale, ort_params.zero);
  EXPECT_EQ(olive_coder.code(0.25f), 6);
  EXPECT_EQ(ort_coder.code(0.25f), 6);
  EXPECT_EQ(olive_coder.code(0.75f), 6);
  EXPECT_EQ(ort_coder.code(0.75f), 7);
  // Clamping at both ends.
  EXPECT_EQ(olive_coder.code(-100.0f), 0);
  EXPECT_EQ(olive_coder.code(100.0f), 15);
}

TEST(RtnCodes, SignedCodesRoundBeforeTheOffset) {
  // In fp16 arithmetic, x / s = 3.498046875 (= 3 + 255 / 512, exact in fp16).
  //  signed (ORT Gather):  round(3.498...) = 3, stored 3 + 8 = 11.
  //  offset (Olive):       fp16(3.498... + 8) = 11.5 (fp16 spacing is 1/128 there) -> 12.
  const float x = nibble::to_float(nibble::from_float<fp16>(3.498046875f));
  ASSERT_EQ(x, 3.498046875f);
  const GroupCoder<WeightTypeMath<fp16>> signed_coder(gather(), 4, true, 1.0f, 8);
  const GroupCoder<WeightTypeMath<fp16>> offset_coder(olive(), 4, true, 1.0f, 8);
  EXPECT_EQ(signed_coder.code(x), 11);
  EXPECT_EQ(offset_coder.code(x), 12);
  // Signed codes clamp to [-8, 7] before the offset.
  EXPECT_EQ(signed_coder.code(100.0f), 15);
  EXPECT_EQ(signed_coder.code(-100.0f), 0);
}

TEST(RtnCodes, WeightTypeArithmeticRoundsEveryStep) {
  // fp16: 1 / 3 = 0.333251953125 (nearest fp16); x / s with x = 1, s = 3 and zero 0.
  const GroupCoder<WeightTypeMath<fp16>> coder(olive(), 8, false, 3.0f, 0);
  EXPECT_EQ(coder.code(1.0f), 0);
  EXPECT_EQ(WeightTypeMath<fp16>::round(1.0f / 3.0f), 0.333251953125f);
  EXPECT_EQ(WeightTypeMath<float>::round(1.0f / 3.0f), 1.0f / 3.0f);
}

// x * r + zero with x * r rounded on its own (MLAS) differs from one fused multiply-add exactly
// when the rounded product makes the float sum land on a midpoint that the exact sum misses.
// With zero = 100 the sum's spacing is 2^-17, so a product rounding to n + 0.5 - 2^-18 puts the
// two-rounding sum on the midpoint below 100 + n + 0.5 (which ties up to it, then rounds away
// to 101 + n), while the exact sum falls below it (and rounds to 100 + n). Scan the floats x
// whose x * fl(1/3) is near such a product and check the coder always takes the two-rounding
// answer. This file is also compiled with -mfma -ffp-contract=fast (test_rtn_contracted).
TEST(RtnCodes, OrtProductIsNeverFusedWithTheZeroPointAdd) {
  const float scale = 3.0f;
  const float reciprocal = 1.0f / scale;
  const int zero = 100;
  const GroupCoder<Fp32Math> coder(ort(), 8, false, scale, zero);
  ASSERT_EQ(coder.reciprocal(), reciprocal);
  int differing = 0;
  for (int n = 0; n < 5; ++n) {
    const double product_target = n + 0.5 - std::ldexp(1.0, -18);
    float x = static_cast<float>(product_target * 3.0);
    for (int i = 0; i < 2000; ++i)
      x = std::nextafter(x, 0.0f);
    for (int i = 0; i < 4000; ++i, x = std::nextafter(x, 100.0f)) {
      volatile float product = x * reciprocal;  // volatile: rounded to float, never fused
      const float two_roundings = std::round(product + static_cast<float>(zero));
      const float fused = std::round(std::fma(x, reciprocal, static_cast<float>(zero)));
      differing += two_roundings != fused ? 1 : 0;
      ASSERT_EQ(coder.code(x), static_cast<uint8_t>(two_roundings)) << "x = " << x;
    }
  }
  // The scan is only meaningful if fusing would have changed some answers.
  EXPECT_GT(differing, 0);
}

}  // namespace
