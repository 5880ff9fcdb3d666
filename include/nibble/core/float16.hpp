// 16-bit floats: IEEE binary16 (`fp16`) and bfloat16 (`bf16`), stored as bit patterns.
//
// Every conversion to a narrower type rounds to nearest, ties to even (RNE), handles
// subnormals, keeps Inf, and keeps NaN a NaN (quiet, sign kept). Conversions are integer-only
// so they do not depend on the floating-point environment or on compiler flags.
//
//   fp16: 1 sign | 5 exponent (bias 15)  | 10 mantissa   max 65504, min subnormal 2^-24
//   bf16: 1 sign | 8 exponent (bias 127) |  7 mantissa   the top half of an fp32
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace nibble {

struct fp16 {
  uint16_t bits;
  static constexpr fp16 from_bits(uint16_t value) { return fp16{value}; }
};

struct bf16 {
  uint16_t bits;
  static constexpr bf16 from_bits(uint16_t value) { return bf16{value}; }
};

static_assert(sizeof(fp16) == 2 && std::is_trivially_copyable_v<fp16>, "fp16 is a 2-byte pattern");
static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16>, "bf16 is a 2-byte pattern");

inline bool operator==(fp16 a, fp16 b) {
  return a.bits == b.bits;
}  // bitwise, NaN == same NaN
inline bool operator!=(fp16 a, fp16 b) {
  return a.bits != b.bits;
}
inline bool operator==(bf16 a, bf16 b) {
  return a.bits == b.bits;
}
inline bool operator!=(bf16 a, bf16 b) {
  return a.bits != b.bits;
}

namespace detail {

inline uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float float_from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline uint16_t fp32_to_fp16_bits(float value) {
  const uint32_t f = float_bits(value);
  const auto sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  const uint32_t magnitude = f & 0x7fffffffu;

  if (magnitude >= 0x7f800000u) {  // Inf or NaN
    if (magnitude == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
    // NaN: keep the top 9 payload bits and set the quiet bit (0x200), so a NaN whose payload
    // sits only in the 13 dropped bits cannot collapse into Inf.
    return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x1ffu));
  }
  // 65520 = 65504 + half an ulp (ulp = 32 at the top binade): from here on RNE gives Inf.
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);

  if (magnitude >= 0x38800000u) {  // >= 2^-14: the result is a normal fp16
    // Round the 23-bit mantissa to 10 bits: add just under half of the 13 dropped bits (0xfff)
    // plus the lowest kept bit, so exact ties go up only when that bit is odd (ties to even).
    // A carry out of the mantissa bumps the exponent, which is the right result.
    const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
    // Rebias the exponent from 127 to 15: subtract (127 - 15) << 23 = 0x38000000.
    return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
  }
  // Below 2^-14 the result is subnormal: round value / 2^-24 to an integer, ties to even.
  // Up to 2^-25 (0x33000000) inclusive that integer is 0 (2^-25 itself is a tie, even = 0).
  if (magnitude <= 0x33000000u) return sign;
  const uint32_t exponent = magnitude >> 23;                         // 102 ... 112
  const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;  // with the implicit 1
  // value = significand * 2^(exponent - 150) = (significand >> shift) * 2^-24 + remainder
  const uint32_t shift = 126u - exponent;  // 14 ... 24
  uint32_t units = significand >> shift;
  const uint32_t remainder = significand & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (remainder > half || (remainder == half && (units & 1u) != 0)) ++units;
  return static_cast<uint16_t>(sign | units);  // units == 0x400 encodes 2^-14, the right answer
}

inline float fp16_bits_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return float_from_bits(sign | 0x7f800000u | (mantissa << 13));  // Inf/NaN
  if (exponent == 0) {
    if (mantissa == 0) return float_from_bits(sign);  // +-0
    // Subnormal mantissa * 2^-24: shift the leading 1 up to the implicit-bit position (bit 10),
    // lowering the exponent once per shift. fp32 exponent of 2^-14 is 127 - 14 = 113.
    uint32_t float_exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --float_exponent;
    }
    return float_from_bits(sign | (float_exponent << 23) | ((mantissa & 0x3ffu) << 13));
  }
  // Normal: rebias 15 -> 127 (add 112) and widen the mantissa by 13 bits.
  return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline uint16_t fp32_to_bf16_bits(float value) {
  const uint32_t f = float_bits(value);
  if ((f & 0x7fffffffu) > 0x7f800000u) {
    // NaN: truncate and set the quiet bit (bit 6 of bf16 = bit 22 of fp32), so a payload held
    // only in the dropped low half cannot turn the result into Inf.
    return static_cast<uint16_t>((f >> 16) | 0x0040u);
  }
  // Drop the low 16 bits rounding to nearest even: add 0x7fff plus the lowest kept bit. Carries
  // propagate into the exponent (and from the largest finite value into Inf) as RNE requires.
  return static_cast<uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

inline float bf16_bits_to_fp32(uint16_t b) {
  return float_from_bits(static_cast<uint32_t>(b) << 16);
}

// Rounds `value` to a binary floating-point grid with `precision` significand bits (implicit bit
// included) and smallest normal exponent `min_exponent` (values below 2^min_exponent land on the
// subnormal grid of spacing 2^(min_exponent - precision + 1)); ties to even; no overflow
// handling (the caller checks the result against its format's largest finite value).
// Every step is exact in double: frexp/ldexp scale by powers of two and floor/subtract of a
// value with at most 53 significant bits lose nothing, so the tie test below is exact. Used for
// double -> fp16/bf16, where going through float first would round twice.
inline double round_to_precision(double value, int precision, int min_exponent) {
  if (value == 0.0 || !std::isfinite(value)) return value;
  const double magnitude = std::fabs(value);
  int frexp_exponent = 0;
  std::frexp(magnitude, &frexp_exponent);  // magnitude in [2^(e-1), 2^e)
  int binade = frexp_exponent - 1;
  if (binade < min_exponent) binade = min_exponent;
  const int ulp_exponent = binade - (precision - 1);
  const double units = std::ldexp(magnitude, -ulp_exponent);  // exact
  double whole = std::floor(units);
  const double fraction = units - whole;  // exact
  if (fraction > 0.5 || (fraction == 0.5 && std::fmod(whole, 2.0) != 0.0)) whole += 1.0;
  return std::copysign(std::ldexp(whole, ulp_exponent), value);
}

}  // namespace detail

// ---- conversions -------------------------------------------------------------------------------

inline float to_float(float value) {
  return value;
}
inline float to_float(fp16 value) {
  return detail::fp16_bits_to_fp32(value.bits);
}
inline float to_float(bf16 value) {
  return detail::bf16_bits_to_fp32(value.bits);
}

// float -> T, rounding to nearest even. T is float, fp16 or bf16.
template <class T>
T from_float(float value) {
  if constexpr (std::is_same_v<T, float>) {
    return value;
  } else if constexpr (std::is_same_v<T, fp16>) {
    return fp16::from_bits(detail::fp32_to_fp16_bits(value));
  } else {
    static_assert(std::is_same_v<T, bf16>, "from_float<T>: T must be float, fp16 or bf16");
    return bf16::from_bits(detail::fp32_to_bf16_bits(value));
  }
}

// double -> T with a single rounding to nearest even (no double rounding through float).
template <class T>
T from_double(double value) {
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<float>(value);  // IEEE conversion: one RNE rounding
  } else {
    static_assert(std::is_same_v<T, fp16> || std::is_same_v<T, bf16>,
                  "from_double<T>: T must be float, fp16 or bf16");
    if (std::isnan(value)) return from_float<T>(std::numeric_limits<float>::quiet_NaN());
    constexpr bool kHalf = std::is_same_v<T, fp16>;
    // fp16: 11 significand bits, smallest normal 2^-14; bf16: 8 bits, 2^-126.
    const double rounded = detail::round_to_precision(value, kHalf ? 11 : 8, kHalf ? -14 : -126);
    // The rounded value is exactly representable in T when finite in T; anything beyond float's
    // range is already Inf in both formats (fp16 overflows far below it). Converting an
    // out-of-range double to float would be undefined, so produce the Inf explicitly.
    if (std::fabs(rounded) > static_cast<double>(std::numeric_limits<float>::max())) {
      const float infinity = std::numeric_limits<float>::infinity();
      return from_float<T>(value < 0 ? -infinity : infinity);
    }
    return from_float<T>(static_cast<float>(rounded));
  }
}

// The type's name as it appears in messages ("float32", "float16", "bfloat16").
template <class T>
constexpr const char* type_name() {
  if constexpr (std::is_same_v<T, float>) {
    return "float32";
  } else if constexpr (std::is_same_v<T, fp16>) {
    return "float16";
  } else if constexpr (std::is_same_v<T, bf16>) {
    return "bfloat16";
  } else if constexpr (std::is_same_v<T, double>) {
    return "float64";
  } else {
    static_assert(!sizeof(T*), "type_name<T>: no name for this type");
    return "";
  }
}

// True for the element types nibble accepts as weights and scales.
template <class T>
inline constexpr bool is_float_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, fp16> || std::is_same_v<T, bf16>;

}  // namespace nibble
