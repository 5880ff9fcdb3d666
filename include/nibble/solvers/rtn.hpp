// Round-to-nearest (RTN) for one group, driven by a Convention row (core/convention.hpp).
//
// The quantizer (quantizer.hpp) walks rows and groups; this header holds the arithmetic:
//   group_params  (lo, hi) -> scale, zero point      per SymmetricScale / RangeRule / EmptyRange
//   GroupCoder    x -> code                          per CodeOp / Rounding / SymmetricCodes
// both in the precision the convention prescribes (Arithmetic), emulated exactly.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "nibble/core/convention.hpp"
#include "nibble/core/float16.hpp"

namespace nibble::rtn {

// ---- arithmetic ---------------------------------------------------------------------------------
// A "Math" rounds the exact result of each operation to the precision a tool computes in:
// value_type holds operands, round() is applied after every + - * /.
//
// Emulating fp16/bf16 arithmetic by computing in float and rounding the result to fp16/bf16 is
// exact: float has 24 significand bits >= 2p + 2 for p = 11 (fp16) and p = 8 (bf16), so the
// double rounding of a single + - * / is innocuous (Figueroa, "When is double rounding
// innocuous?", 1995). This is also what torch and numpy do for fp16/bf16 on the CPU.
template <class W>
struct WeightTypeMath {
  using value_type = float;
  static float round(float value) { return to_float(from_float<W>(value)); }
};
struct Fp32Math {
  using value_type = float;
  static float round(float value) { return value; }
};
struct Fp64Math {
  using value_type = double;
  static double round(double value) { return value; }
};

// Calls f(Math{}) with the Math that `arithmetic` names for weights of type W.
template <class W, class F>
decltype(auto) with_math(Arithmetic arithmetic, F&& f) {
  switch (arithmetic) {
    case Arithmetic::weight_type:
      return f(WeightTypeMath<W>{});
    case Arithmetic::fp32:
      return f(Fp32Math{});
    default:
      return f(Fp64Math{});
  }
}

// a * b rounded on its own. A compiler may fuse `a * b + c` into one FMA when FMA is enabled
// (GCC contracts across statements by default in GNU mode, clang within an expression), which
// rounds once instead of twice and moves ties; MLAS, which the `ort` convention reproduces, rounds
// the product first. The empty asm makes the product opaque, so no contraction can reach across
// it whatever the consumer's flags (test_rtn_contracted builds the tests with -mfma
// -ffp-contract=fast).
template <class V>
V rounded_product(V a, V b) {
  V product = a * b;
#if defined(__GNUC__) || defined(__clang__)
  __asm__ volatile("" : "+m"(product));
#endif
  return product;
}

template <class V>
V round_half_to_even(V value) {
  // v - trunc(v) is exact, so the tie test is exact; at a tie, 2 * round(v / 2) is the even
  // neighbour (v / 2 is exact too).
  if (std::fabs(value - std::trunc(value)) == V(0.5)) return V(2) * std::round(value / V(2));
  return std::round(value);
}

template <class V>
V round_with(Rounding rounding, V value) {
  return rounding == Rounding::half_to_even ? round_half_to_even(value) : std::round(value);
}

// ---- parameters ---------------------------------------------------------------------------------

template <class V>
struct GroupParams {
  V scale;   // as computed, in the convention's arithmetic (may be negative, may be 0)
  int zero;  // zero point, 0 .. 2^bits - 1 (2^(bits-1) when symmetric)
};

// Scale and zero point of a group whose statistics are lo = min, hi = max (as floats; the
// statistics set is chosen by the caller per PadStatistics). RangeMath computes hi - lo and
// 2 * amax, Math everything after.
template <class RangeMath, class Math>
GroupParams<typename Math::value_type> group_params(const Convention& convention, int bits,
                                                    bool symmetric, float lo, float hi) {
  using V = typename Math::value_type;
  const int maxq = (1 << bits) - 1;
  const int mid = 1 << (bits - 1);
  const auto range_difference = [](float a, float b) { return V(RangeMath::round(a - b)); };
  const auto over_maxq = [&](V range) { return Math::round(range / V(maxq)); };
  const Rounding rounding = convention.rounding;

  // The range rule first: it decides both the scale and whether the range is empty.
  float range_lo = lo;
  float range_hi = hi;
  if (symmetric ? convention.symmetric_scale == SymmetricScale::gptq_range
                : convention.asymmetric_range == RangeRule::include_zero) {
    range_lo = std::min(lo, 0.0f);
    range_hi = std::max(hi, 0.0f);
  }
  bool empty = false;
  if (symmetric) {
    switch (convention.symmetric_scale) {
      case SymmetricScale::gptq_range:
        range_hi = std::max(std::fabs(range_lo), range_hi);
        if (range_lo < 0) range_lo = -range_hi;  // a group without negatives keeps lo = 0
        empty = range_lo == 0 && range_hi == 0;
        break;
      case SymmetricScale::twice_amax_over_maxq:
        empty = std::max(std::fabs(lo), std::fabs(hi)) == 0;
        break;
      case SymmetricScale::signed_extreme_over_mid:
        empty = lo == 0 && hi == 0;
        break;
    }
  } else {
    empty = range_lo == range_hi;
  }

  if (empty && convention.empty_range == EmptyRange::unit_range) {
    range_lo = -1.0f;  // Olive / GPTQ: an all-zero group quantizes over [-1, 1]
    range_hi = 1.0f;
    empty = false;
    lo = -1.0f;
    hi = 1.0f;
  }
  if (empty && convention.empty_range == EmptyRange::unit_scale) {
    // ORT weight_only: scale 1, zero point from the usual formula.
    const int zero = symmetric
                         ? mid
                         : static_cast<int>(std::clamp(
                               round_with(rounding, Math::round(-V(range_lo))), V(0), V(maxq)));
    return {V(1), zero};
  }

  V scale = V(0);
  if (symmetric) {
    switch (convention.symmetric_scale) {
      case SymmetricScale::gptq_range:
        scale = over_maxq(range_difference(range_hi, range_lo));
        break;
      case SymmetricScale::twice_amax_over_maxq: {
        const float amax = std::max(std::fabs(lo), std::fabs(hi));
        scale = over_maxq(V(RangeMath::round(amax * 2.0f)));
        break;
      }
      case SymmetricScale::signed_extreme_over_mid: {
        // The signed value of largest magnitude; a tie picks lo (the negative one).
        const float extreme = std::fabs(hi) > std::fabs(lo) ? hi : lo;
        scale = Math::round(V(extreme) / V(-mid));
        break;
      }
    }
    return {scale, mid};
  }

  scale = over_maxq(range_difference(range_hi, range_lo));
  if (scale == V(0)) {
    // Only reachable for EmptyRange::zero_scale* (the other rules returned above).
    if (convention.empty_range == EmptyRange::zero_scale_mid_zero) return {scale, mid};
    // MLAS: zero_point_fp = min when the scale is 0.
    return {scale, static_cast<int>(std::clamp(round_with(rounding, V(range_lo)), V(0), V(maxq)))};
  }
  const V zero_real = Math::round(-V(range_lo) / scale);
  return {scale, static_cast<int>(std::clamp(round_with(rounding, zero_real), V(0), V(maxq)))};
}

// ---- codes --------------------------------------------------------------------------------------

// Maps the values of one group to codes given its parameters. `code_scale` is the scale the
// codes are computed with (per CodeScale).
template <class Math>
class GroupCoder {
 public:
  using V = typename Math::value_type;

  GroupCoder(const Convention& convention, int bits, bool symmetric, V code_scale, int zero)
      : rounding_(convention.rounding),
        divide_(convention.code_op == CodeOp::divide),
        signed_codes_(symmetric &&
                      convention.symmetric_codes == SymmetricCodes::signed_then_offset),
        zero_scale_(code_scale == V(0)),
        scale_(code_scale),
        // MLAS: reciprocal = scale ? 1 / scale : 0 (computed once per group).
        reciprocal_(code_scale == V(0) ? V(0) : Math::round(V(1) / code_scale)),
        zero_(zero),
        mid_(1 << (bits - 1)),
        maxq_((1 << bits) - 1) {}

  // The reciprocal a multiply_by_reciprocal convention uses; not finite when the scale is so
  // small that 1 / scale overflows (the caller rejects such groups).
  V reciprocal() const { return reciprocal_; }

  uint8_t code(float x) const {
    if (zero_scale_) return static_cast<uint8_t>(zero_);  // every code is the zero point
    const V scaled = divide_ ? Math::round(V(x) / scale_) : rounded_product(V(x), reciprocal_);
    if (signed_codes_) {
      // Rounded as a signed integer in [-mid, mid - 1], then offset into unsigned storage.
      const V q = std::clamp(round_with(rounding_, scaled), V(-mid_), V(mid_ - 1));
      return static_cast<uint8_t>(static_cast<int>(q) + mid_);
    }
    const V shifted = Math::round(scaled + V(zero_));
    return static_cast<uint8_t>(std::clamp(round_with(rounding_, shifted), V(0), V(maxq_)));
  }

 private:
  Rounding rounding_;
  bool divide_;
  bool signed_codes_;
  bool zero_scale_;
  V scale_;
  V reciprocal_;
  int zero_;
  int mid_;
  int maxq_;
};

// The scale as stored: one rounding from the arithmetic's type to ScaleT.
template <class ScaleT, class V>
ScaleT store_scale(V scale) {
  if constexpr (std::is_same_v<V, double>) {
    return from_double<ScaleT>(scale);
  } else {
    return from_float<ScaleT>(scale);
  }
}

}  // namespace nibble::rtn
