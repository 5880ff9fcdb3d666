// Quantization conventions: "RTN" as data.
//
// Round-to-nearest is not one formula. The tools nibble must match differ in how a group's range
// is taken, how a symmetric scale is defined, what an all-equal group gets, the rounding mode,
// division versus multiplication by a reciprocal, the precision of the arithmetic, and whether
// padding takes part in the statistics. A Convention names each choice; one quantizer
// (solvers/rtn.hpp) consumes it. A new tool is a new row in kConventions, not a new code path.
// Sources and byte-level details: docs/formats.md.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>

#include "nibble/core/error.hpp"

namespace nibble {

// How an asymmetric group's range [lo, hi] is taken from its values x.
enum class RangeRule : uint8_t {
  include_zero,  // lo = min(min x, 0), hi = max(max x, 0): 0.0 is always exactly representable
  raw,           // lo = min x, hi = max x: an all-positive group clips its zero point to 0
};

// How a symmetric scale is defined. The stored codes are unsigned with the implied zero point
// 2^(bits-1) in every case; maxq = 2^bits - 1, mid = 2^(bits-1).
enum class SymmetricScale : uint8_t {
  // GPTQ's rule (Olive, AutoGPTQ): lo, hi as include_zero; hi = max(|lo|, hi); lo = -hi ONLY
  // when lo < 0; scale = (hi - lo) / maxq. A group with no negative value keeps lo = 0, so its
  // scale is max / maxq and values above (maxq - mid) * scale clip (kept for bit-exactness).
  gptq_range,
  // scale = 2 * max(|min x|, |max x|) / maxq (ORT weight_only / Intel Neural Compressor "uint").
  twice_amax_over_maxq,
  // m = the signed value of largest magnitude (a tie picks the negative one), scale = m / -mid:
  // m lands exactly on code 0 and the scale is negative when m > 0 (ORT MLAS, ORT Gather).
  signed_extreme_over_mid,
};

// What a group with an empty range gets (all values 0, or all equal under RangeRule::raw).
enum class EmptyRange : uint8_t {
  unit_range,  // (lo, hi) = (-1, 1), then the usual formulas (Olive / GPTQ)
  zero_scale,  // scale 0, zero point from the usual formula, every code = zero point (MLAS)
  zero_scale_mid_zero,  // scale 0, zero point and every code = 2^(bits-1) (ORT Gather, numpy)
  unit_scale,           // scale 1, then the usual formulas (ORT weight_only)
};

enum class Rounding : uint8_t {
  half_to_even,         // torch.round, numpy.round, nearbyint
  half_away_from_zero,  // C roundf
};

// How a value becomes a code: q = round(x / scale + zero) or round(x * (1 / scale) + zero).
enum class CodeOp : uint8_t {
  divide,
  multiply_by_reciprocal,  // reciprocal = 0 when the scale is 0; product rounded before the add
};

// The precision each step is computed in.
enum class Arithmetic : uint8_t {
  weight_type,  // each operation rounded to the weight's own type (fp16 weights: fp16 math)
  fp32,         // float32 throughout
  fp64,         // float64 throughout
};

// Which elements of a group the statistics (min, max) see when K is not a multiple of the group.
enum class PadStatistics : uint8_t {
  real_elements,  // only the group's real elements
  zero_padded,    // the real elements and the zeros K was padded with
};

// Which scale the codes are computed with. In every case the stored scale (ScaleT) is one
// rounding of the computed scale made after the codes: the scale type never changes a code.
enum class CodeScale : uint8_t {
  computed,  // the scale as computed, in the convention's arithmetic
  // MLAS computes in fp32, rounds the scale to its element type and codes with that: fp16
  // weights code with the fp16-rounded scale; fp32 weights, and bf16 weights (which ONNX
  // Runtime's quantizer runs through fp32, casting the scales to bf16 afterwards), with fp32.
  mlas_element_type,
};

// How symmetric codes are formed before they are stored unsigned.
enum class SymmetricCodes : uint8_t {
  offset,  // q = clamp(round(x / s + mid), 0, maxq): the zero point is added before rounding
  signed_then_offset,  // q = clamp(round(x / s), -mid, mid - 1) + mid: rounded as a signed integer
};

// What the unused bits of a row's last zero-point byte hold (odd group counts at 4 bits, etc.).
// No consumer reads them; they differ between tools, and matching them makes the bytes equal.
enum class ZeroPointPad : uint8_t {
  zero,  // 0 bits (Olive's pack_to_uint8 pads with 0)
  mid,   // the code 2^(bits-1) in every unused slot (MLAS initialises zero points to kMid)
};

struct Convention {
  const char* name;
  const char* reproduces;  // the tool and function this row is bit-exact with
  RangeRule asymmetric_range;
  SymmetricScale symmetric_scale;
  EmptyRange empty_range;
  Rounding rounding;
  CodeOp code_op;
  Arithmetic range_arithmetic;  // for hi - lo and 2 * amax
  Arithmetic arithmetic;        // for the scale, the zero point and the codes
  CodeScale code_scale;
  PadStatistics pad_statistics;
  SymmetricCodes symmetric_codes;
  ZeroPointPad zero_point_pad;
};

enum class ConventionId : uint8_t { olive, ort, ort_gather, ort_weight_only };

// The table. Each row is bit-exact with the named tool (tests: fixtures from independent numpy
// transcriptions; onnxruntime itself in the Python interop tests).
inline constexpr Convention kConventions[] = {
    {"olive", "Olive olive.common.quant.utils.WeightQuantizer (torch, per-op in the weight dtype)",
     RangeRule::include_zero, SymmetricScale::gptq_range, EmptyRange::unit_range,
     Rounding::half_to_even, CodeOp::divide, Arithmetic::weight_type, Arithmetic::weight_type,
     CodeScale::computed, PadStatistics::real_elements, SymmetricCodes::offset, ZeroPointPad::zero},
    {"ort", "ONNX Runtime MatMulNBits quantizer (MLAS BlockwiseQuantizer, q4_dq.cpp)",
     RangeRule::include_zero, SymmetricScale::signed_extreme_over_mid, EmptyRange::zero_scale,
     Rounding::half_away_from_zero, CodeOp::multiply_by_reciprocal, Arithmetic::fp32,
     Arithmetic::fp32, CodeScale::mlas_element_type, PadStatistics::real_elements,
     SymmetricCodes::offset, ZeroPointPad::mid},
    {"ort_gather",
     "ONNX Runtime GatherBlockQuantized quantizer (matmul_nbits_quantizer.py quantize_ndarray)",
     RangeRule::include_zero, SymmetricScale::signed_extreme_over_mid,
     EmptyRange::zero_scale_mid_zero, Rounding::half_to_even, CodeOp::divide,
     Arithmetic::weight_type, Arithmetic::weight_type, CodeScale::computed,
     PadStatistics::real_elements, SymmetricCodes::signed_then_offset, ZeroPointPad::zero},
    {"ort_weight_only",
     "ONNX Runtime weight_only RTN (neural_compressor weight_only.py quant_tensor, 'uint'), "
     "run by the ORT GenAI builder for int4_algo_config=rtn",
     RangeRule::raw, SymmetricScale::twice_amax_over_maxq, EmptyRange::unit_scale,
     Rounding::half_to_even, CodeOp::divide, Arithmetic::weight_type, Arithmetic::fp64,
     CodeScale::computed, PadStatistics::zero_padded, SymmetricCodes::offset, ZeroPointPad::mid},
};

inline constexpr int kConventionCount =
    static_cast<int>(sizeof(kConventions) / sizeof(kConventions[0]));
static_assert(kConventionCount == static_cast<int>(ConventionId::ort_weight_only) + 1,
              "one kConventions row per ConventionId, in order");

inline const Convention& convention(ConventionId id) {
  const auto index = static_cast<int>(id);
  if (index < 0 || index >= kConventionCount) {
    detail::fail(ErrorCode::invalid_argument, "convention id ", index,
                 " is not a known convention");
  }
  return kConventions[index];
}

inline const char* to_string(ConventionId id) {
  return convention(id).name;
}

// Looks a convention up by its name ("olive", "ort", "ort_gather", "ort_weight_only").
inline ConventionId convention_from_name(std::string_view name) {
  for (int index = 0; index < kConventionCount; ++index) {
    if (name == kConventions[index].name) return static_cast<ConventionId>(index);
  }
  std::ostringstream known;
  for (int index = 0; index < kConventionCount; ++index) {
    known << (index ? ", " : "") << kConventions[index].name;
  }
  detail::fail(ErrorCode::invalid_argument, "convention \"", name,
               "\" is unknown (expected one of ", known.str(), ")");
}

}  // namespace nibble
