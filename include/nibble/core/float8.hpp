// 8-bit float FP8 E4M3 in its OCP "fn" variant (`fp8_e4m3`; CUDA __nv_fp8_e4m3, torch and
// ml_dtypes float8_e4m3fn), stored as a bit pattern. The activation and dequantized-weight type
// of TensorRT-LLM's W4A8 GEMM (formats/trtllm.hpp).
//
//   bits    s eeee mmm     1 sign | 4 exponent (bias 7) | 3 mantissa
//   normal  e = 1..15:     (-1)^s * (1 + m / 8) * 2^(e - 7)     except s.1111.111
//   sub     e = 0:         (-1)^s * (m / 8) * 2^-6 = m * 2^-9   (m = 0: +-0)
//   NaN     s.1111.111     0x7F and 0xFF, the only NaNs; there is NO infinity ("fn": finite)
//   range   max 448 (0.1111.110 = 1.75 * 2^8), min normal 2^-6, min subnormal 2^-9
//
// float -> fp8 rounds to nearest, ties to even (RNE), subnormals exactly. What happens beyond 448
// is a choice, named by Fp8Overflow (no default: a caller states which tool it follows):
//   saturate: |x| > 448 and +-Inf -> +-448 (CUDA __nv_cvt_float_to_fp8(x, __NV_SATFINITE,
//             __NV_E4M3), what TensorRT-LLM's kernels and ModelOpt's fake quantizer do). Values
//             up to 464 round to 448 anyway (464 is the tie between 448 and 480, and 448 is even).
//   to_nan:   |x| > 464 and +-Inf -> NaN with x's sign (ml_dtypes float8_e4m3fn astype from
//             float32; torch's .to(torch.float8_e4m3fn) on CPU is the same). 464 itself -> 448.
// NaN -> NaN with its sign in both modes (0x7F / 0xFF). Integer-only: no dependence on the
// floating-point environment or compiler flags.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace nibble {

struct fp8_e4m3 {
  uint8_t bits;
  static constexpr fp8_e4m3 from_bits(uint8_t value) { return fp8_e4m3{value}; }
};

static_assert(sizeof(fp8_e4m3) == 1 && std::is_trivially_copyable_v<fp8_e4m3>,
              "fp8_e4m3 is a 1-byte pattern");

inline bool operator==(fp8_e4m3 a, fp8_e4m3 b) {
  return a.bits == b.bits;  // bitwise: +0 != -0, NaN == the same NaN
}
inline bool operator!=(fp8_e4m3 a, fp8_e4m3 b) {
  return a.bits != b.bits;
}

// What float -> fp8 does with magnitudes that round beyond 448 (see the header comment).
enum class Fp8Overflow : uint8_t {
  saturate,  // -> +-448: CUDA __NV_SATFINITE, TensorRT-LLM
  to_nan,    // -> NaN: ml_dtypes / torch float8_e4m3fn casts
};

// The largest finite fp8 e4m3fn value, as ModelOpt and TensorRT-LLM spell it (amax / 448).
inline constexpr float kFp8E4m3Max = 448.0f;

namespace detail {

inline uint32_t fp8_float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float fp8_float_from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline uint8_t fp32_to_fp8_e4m3_bits(float value, Fp8Overflow overflow) {
  const uint32_t f = fp8_float_bits(value);
  // fp32 sign bit 31 -> fp8 sign bit 7.
  const auto sign = static_cast<uint8_t>((f >> 24) & 0x80u);
  const uint32_t magnitude = f & 0x7fffffffu;
  constexpr uint8_t kNan = 0x7f;        // s.1111.111
  constexpr uint8_t kMaxFinite = 0x7e;  // s.1111.110 = 448

  if (magnitude > 0x7f800000u) return static_cast<uint8_t>(sign | kNan);  // NaN stays NaN
  // 0x43e80000 = 464 = 448 + half an ulp (ulp = 32 in the top binade [256, 512)). Above it RNE
  // would give 480, whose pattern s.1111.111 is the NaN; 464 itself is a tie that goes to the
  // even 448 (mantissa 110) and is handled by the normal path below. +-Inf is in this branch.
  if (magnitude > 0x43e80000u) {
    return static_cast<uint8_t>(sign | (overflow == Fp8Overflow::saturate ? kMaxFinite : kNan));
  }
  if (magnitude >= 0x3c800000u) {  // >= 2^-6 (fp32 exponent 127 - 6 = 121): a normal fp8
    // Round the 23-bit mantissa to 3 bits, dropping 20: add just under half of the dropped
    // bits (0x7ffff) plus the lowest kept bit (bit 20), so an exact tie carries into the kept
    // bits only when that bit is odd (ties to even). A carry out of the mantissa bumps the
    // exponent, which is the correctly rounded result (e.g. 15.5 -> 16).
    const uint32_t rounded = magnitude + 0x7ffffu + ((magnitude >> 20) & 1u);
    // Rebias the exponent from 127 to 7: subtract (127 - 7) << 23 = 0x3c000000; then bits
    // [30:20] of the rebiased word are exactly eeee.mmm (the exponent fits in 4 bits because
    // magnitude <= 464 keeps the rebiased exponent <= 15).
    return static_cast<uint8_t>(sign | ((rounded - 0x3c000000u) >> 20));
  }
  // Below 2^-6 the result is subnormal: round value / 2^-9 to an integer, ties to even. Up to
  // 2^-10 (0x3a800000) inclusive that integer is 0: 2^-10 is the tie between 0 and 2^-9, even
  // = 0. Every fp32 subnormal is far below, so from here on the fp32 input is normal.
  if (magnitude <= 0x3a800000u) return sign;
  const uint32_t exponent = magnitude >> 23;                         // 117 ... 120
  const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;  // with the implicit 1
  // value = significand * 2^(exponent - 150) = significand * 2^(exponent - 141) * 2^-9, so the
  // integer number of 2^-9 units is significand >> (141 - exponent), with a remainder.
  const uint32_t shift = 141u - exponent;  // 21 ... 24
  uint32_t units = significand >> shift;
  const uint32_t remainder = significand & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (remainder > half || (remainder == half && (units & 1u) != 0)) ++units;
  // units is 0 .. 8; units == 8 is the pattern 0.0001.000 = 2^-6, the right answer when a value
  // just below the smallest normal rounds up to it.
  return static_cast<uint8_t>(sign | units);
}

inline float fp8_e4m3_bits_to_fp32(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
  const uint32_t exponent = (b >> 3) & 0xfu;
  uint32_t mantissa = b & 0x7u;
  if (exponent == 0xfu && mantissa == 0x7u) {
    return fp8_float_from_bits(sign | 0x7fc00000u);  // the quiet NaN, sign kept (as ml_dtypes)
  }
  if (exponent == 0) {
    if (mantissa == 0) return fp8_float_from_bits(sign);  // +-0
    // Subnormal mantissa * 2^-9: shift the leading 1 up to the implicit-bit position (bit 3),
    // lowering the exponent once per shift. The fp32 exponent of 2^-6 is 127 - 6 = 121.
    uint32_t float_exponent = 121;
    while ((mantissa & 0x8u) == 0) {
      mantissa <<= 1;
      --float_exponent;
    }
    return fp8_float_from_bits(sign | (float_exponent << 23) | ((mantissa & 0x7u) << 20));
  }
  // Normal: rebias 7 -> 127 (add 120) and widen the mantissa by 20 bits.
  return fp8_float_from_bits(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

}  // namespace detail

// fp8 -> float: exact (every fp8 value is a float); NaN -> quiet NaN with the sign.
inline float to_float(fp8_e4m3 value) {
  return detail::fp8_e4m3_bits_to_fp32(value.bits);
}

// float -> fp8 e4m3fn, round to nearest even; `overflow` decides magnitudes beyond 464 and Inf.
inline fp8_e4m3 to_fp8_e4m3(float value, Fp8Overflow overflow) {
  return fp8_e4m3::from_bits(detail::fp32_to_fp8_e4m3_bits(value, overflow));
}

// float -> the nearest fp8 value, as a float (round trip through fp8_e4m3).
inline float round_to_fp8_e4m3(float value, Fp8Overflow overflow) {
  return to_float(to_fp8_e4m3(value, overflow));
}

inline bool is_nan(fp8_e4m3 value) {
  return (value.bits & 0x7fu) == 0x7fu;
}

}  // namespace nibble
