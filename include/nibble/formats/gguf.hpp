// GGUF / ggml block formats Q4_0, Q4_1, Q8_0, Q2_K, Q4_K, Q6_K: block structs, llama.cpp's
// reference quantizers and its dequantizers, byte for byte.
//
//   std::vector<uint8_t> row(nibble::gguf::row_size(GgmlType::q4_K, k));
//   nibble::gguf::quantize_row_q4_K(x, k, row.data());      // x: k floats, k % 256 == 0
//   nibble::gguf::dequantize_row_q4_K(row.data(), k, y);    // y: k floats
//
// A row of k weights is k / block_size consecutive blocks, no padding, all fields little-endian
// (this header assumes a little-endian host, as ggml does). The quantizers transcribe llama.cpp's
// `quantize_row_<type>_ref` (ggml/src/ggml-quants.c; for Q4_K / Q6_K the path
// `llama-quantize` takes without an imatrix) and the dequantizers `dequantize_row_<type>`:
//   - every float operation in the same order, each product rounded on its own (never fused
//     into a following add: rtn::rounded_product), i.e. a build of ggml-quants.c without FMA
//     contraction (x86-64's baseline). Built with -mfma under GCC's default -ffp-contract=fast
//     the C code itself gives other bytes: in a one-off check of a C transcription of
//     quantize_row_q4_K_ref / q6_K_ref, 12% of Q4_K and 0.6% of Q6_K blocks changed (0 differ
//     from nibble without FMA, 2560 blocks each). Dequantization is immune: its products are
//     exact (fp16 d times a small integer), so one rounding remains either way;
//   - fp32 -> fp16 round-to-nearest-even (GGML_FP32_TO_FP16 = F16C / its scalar twin), via
//     nibble::from_float<fp16>;
//   - nearest_int (K-quants) = round half to even (ggml's bit trick in detail::nearest_int; the
//     kquant searches' round_even agrees wherever nearest_int is valid); Q4_0 / Q4_1 truncate
//     x * id + 8.5f (+ 0.5f), i.e. round half up; Q8_0 uses roundf (half away from zero);
//   - Q4_K's and Q6_K's searches are kquant::search_llama_cpp (make_qkx2_quants with -1, 0.1, 20)
//     and kquant::search_symmetric (make_qx_quants, rmse_type 1); Q2_K's is make_qkx2_quants
//     with (-0.5, 0.1, 15, use_mad).
// Bytes equal gguf-py 0.19.0's (gguf.quants) for Q4_0, Q4_1, Q8_0 except the sign of a zero
// scale (see docs/formats.md: nibble follows the C code there); dequantized values equal
// gguf-py's for all five types (tests/test_gguf.cpp against tests/reference/gguf_vectors.bin).
//
// Where nibble refuses what llama.cpp accepts (errors, nibble::Error): NaN / Inf inputs (the
// reference quantizers do not check; only nearest_int's assert, debug builds only, can catch them
// in the K-quants; the codes are otherwise undefined), and a block whose fp16 scale or
// min would overflow to Inf (|d| >= 65520, e.g. Q8_0 with |x| >= 127 * 65520): llama.cpp and
// gguf-py store Inf there. On an error the output blocks are unspecified.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/quant_tensor.hpp"
#include "nibble/solvers/kquant.hpp"
#include "nibble/solvers/rtn.hpp"

namespace nibble::gguf {

// ggml's type ids (enum ggml_type in ggml.h; GGMLQuantizationType in gguf-py), as stored in a
// GGUF file's tensor info. Only the types nibble implements.
enum class GgmlType : uint32_t {
  q4_0 = 2,
  q4_1 = 3,
  q8_0 = 8,
  q2_K = 10,
  q4_K = 12,
  q6_K = 14,
};

// Block sizes (weights per block), ggml-common.h's names.
inline constexpr int64_t QK4_0 = 32;
inline constexpr int64_t QK4_1 = 32;
inline constexpr int64_t QK8_0 = 32;
inline constexpr int64_t QK_K = 256;         // K-quant super-block
inline constexpr int64_t K_SCALE_SIZE = 12;  // Q4_K's packed 6-bit scales and mins

// ---- block structs (ggml-common.h): offsets in the comments, sizes asserted ------------------

// Q4_0: 32 weights, symmetric 4-bit, one fp16 scale; effectively 4.5 bits per weight.
// weight j = (code j - 8) * d.
struct block_q4_0 {
  fp16 d;                 // offset 0: scale = (signed value of largest |x|) / -8
  uint8_t qs[QK4_0 / 2];  // offset 2: byte j: low nibble = code j, high nibble = code j + 16
};

// Q4_1: 32 weights, asymmetric 4-bit, fp16 scale and min; effectively 5.0 bits per weight.
// weight j = code j * d + m.
struct block_q4_1 {
  fp16 d;                 // offset 0: scale = (max - min) / 15
  fp16 m;                 // offset 2: min of the block
  uint8_t qs[QK4_1 / 2];  // offset 4: byte j: low nibble = code j, high nibble = code j + 16
};

// Q8_0: 32 weights, symmetric 8-bit, one fp16 scale; effectively 8.5 bits per weight.
// weight j = qs[j] * d.
struct block_q8_0 {
  fp16 d;            // offset 0: scale = max |x| / 127
  int8_t qs[QK8_0];  // offset 2: qs[j] = code of weight j, -127 .. 127
};

// Q2_K: super-block of 256 weights = 16 sub-blocks of 16, each with a 4-bit scale and a 4-bit
// min, those scaled by fp16 d and dmin; effectively 2.625 bits per weight.
// weight e of sub-block s = d * (scales[s] & 15) * code - dmin * (scales[s] >> 4), code 0 .. 3.
struct block_q2_K {
  uint8_t scales[QK_K / 16];  // offset 0: low nibble = scale, high nibble = min of sub-block s
  uint8_t qs[QK_K / 4];       // offset 16: 2 chunks of 32 bytes; chunk c byte l, bits 2i..2i+1:
                              // code of weight 128c + 32i + l
  fp16 d;                     // offset 80: super-block scale of the 4-bit scales
  fp16 dmin;                  // offset 82: super-block scale of the 4-bit mins
};

// Q4_K: super-block of 256 weights = 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit
// min, those two sets scaled by fp16 d and dmin; effectively 4.5 bits per weight.
// weight e of sub-block s = d * sc[s] * code - dmin * m[s].
struct block_q4_K {
  fp16 d;                        // offset 0: super-block scale of the 6-bit scales sc[0..7]
  fp16 dmin;                     // offset 2: super-block scale of the 6-bit mins m[0..7]
  uint8_t scales[K_SCALE_SIZE];  // offset 4: sc and m packed 6-bit (get_scale_min_k4 below)
  uint8_t qs[QK_K / 2];          // offset 16: 4 chunks of 32 bytes; chunk c byte l: low nibble =
                                 // code of weight 64c + l, high nibble = weight 64c + 32 + l
};

// Q6_K: super-block of 256 weights = 16 sub-blocks of 16, int8 scales, one fp16 d;
// effectively 6.5625 bits per weight. weight = d * scales[s] * (code - 32), code 0 .. 63.
struct block_q6_K {
  uint8_t ql[QK_K / 2];      // offset 0: low 4 bits of the codes (element order below)
  uint8_t qh[QK_K / 4];      // offset 128: high 2 bits of the codes
  int8_t scales[QK_K / 16];  // offset 192: sub-block scales (sub-block s = weights 16s..16s+15)
  fp16 d;                    // offset 208: super-block scale
};
// Q6_K element order, per half h (weights 128h .. 128h + 127; ql advances 64 bytes, qh 32), for
// l = 0..31 and w = 128h: code(w + l)      = ql[l]      low nibble | (qh[l] bits 0-1) << 4
//                          code(w + l + 32) = ql[l + 32] low nibble | (qh[l] bits 2-3) << 4
//                          code(w + l + 64) = ql[l]      high nibble | (qh[l] bits 4-5) << 4
//                          code(w + l + 96) = ql[l + 32] high nibble | (qh[l] bits 6-7) << 4

static_assert(sizeof(block_q4_0) == 18 && offsetof(block_q4_0, qs) == 2, "block_q4_0 layout");
static_assert(sizeof(block_q4_1) == 20 && offsetof(block_q4_1, m) == 2 &&
                  offsetof(block_q4_1, qs) == 4,
              "block_q4_1 layout");
static_assert(sizeof(block_q8_0) == 34 && offsetof(block_q8_0, qs) == 2, "block_q8_0 layout");
static_assert(sizeof(block_q2_K) == 84 && offsetof(block_q2_K, qs) == 16 &&
                  offsetof(block_q2_K, d) == 80 && offsetof(block_q2_K, dmin) == 82,
              "block_q2_K layout");
static_assert(sizeof(block_q4_K) == 144 && offsetof(block_q4_K, dmin) == 2 &&
                  offsetof(block_q4_K, scales) == 4 && offsetof(block_q4_K, qs) == 16,
              "block_q4_K layout");
static_assert(sizeof(block_q6_K) == 210 && offsetof(block_q6_K, qh) == 128 &&
                  offsetof(block_q6_K, scales) == 192 && offsetof(block_q6_K, d) == 208,
              "block_q6_K layout");

// ---- type table -------------------------------------------------------------------------------

struct TypeInfo {
  GgmlType type;
  const char* name;    // ggml_type_name: "q4_0", "q4_K", ...
  int64_t block_size;  // weights per block
  int64_t type_size;   // bytes per block
};

inline constexpr TypeInfo kTypes[] = {
    {GgmlType::q4_0, "q4_0", QK4_0, sizeof(block_q4_0)},
    {GgmlType::q4_1, "q4_1", QK4_1, sizeof(block_q4_1)},
    {GgmlType::q8_0, "q8_0", QK8_0, sizeof(block_q8_0)},
    {GgmlType::q2_K, "q2_K", QK_K, sizeof(block_q2_K)},
    {GgmlType::q4_K, "q4_K", QK_K, sizeof(block_q4_K)},
    {GgmlType::q6_K, "q6_K", QK_K, sizeof(block_q6_K)},
};

// The table entry of a ggml type id; Error(unsupported) for ids nibble does not implement.
inline const TypeInfo& type_info_from_id(uint32_t id) {
  for (const TypeInfo& info : kTypes) {
    if (static_cast<uint32_t>(info.type) == id) return info;
  }
  nibble::detail::fail(ErrorCode::unsupported, "gguf: ggml type id ", id,
                       " is not implemented (expected 2 = q4_0, 3 = q4_1, 8 = q8_0, 10 = q2_K, "
                       "12 = q4_K or 14 = q6_K)");
}
inline const TypeInfo& type_info(GgmlType type) {
  return type_info_from_id(static_cast<uint32_t>(type));
}
inline const char* type_name(GgmlType type) {
  return type_info(type).name;
}
inline int64_t block_size(GgmlType type) {
  return type_info(type).block_size;
}
inline int64_t type_size(GgmlType type) {
  return type_info(type).type_size;
}

// Bytes of one row of k weights (ggml_row_size); k must be a positive multiple of the block size.
inline int64_t row_size(GgmlType type, int64_t k) {
  const TypeInfo& info = type_info(type);
  if (k <= 0 || k % info.block_size != 0) {
    nibble::detail::fail(ErrorCode::shape_mismatch, "gguf::row_size: k = ", k,
                         " is not a positive multiple of the ", info.name, " block size ",
                         info.block_size, " (ggml rows hold whole blocks)");
  }
  return k / info.block_size * info.type_size;
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
// Bytes 0-3: sc[0..3] in bits 0-5, top 2 bits of sc[4..7]; bytes 4-7: m[0..3], top 2 bits of
// m[4..7]; bytes 8-11: low nibble = low 4 bits of sc[4..7], high nibble = low 4 bits of m[4..7].
inline void get_scale_min_k4(int j, const uint8_t* packed, uint8_t& scale, uint8_t& min) {
  if (j < 4) {
    scale = static_cast<uint8_t>(packed[j] & 63);
    min = static_cast<uint8_t>(packed[j + 4] & 63);
  } else {
    scale = static_cast<uint8_t>((packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4));
    min = static_cast<uint8_t>((packed[j + 4] >> 4) | ((packed[j] >> 6) << 4));
  }
}

namespace detail {

inline float mul(float a, float b) {
  return rtn::rounded_product(a, b);
}

// llama.cpp's nearest_int, the same bit trick: adding 1.5 * 2^23 leaves round-half-to-even(value)
// in the low mantissa bits. Exact for |value| <= 2^22 (ggml asserts that in debug builds only);
// beyond it, and for Inf / NaN, this returns what ggml's release build computes (no UB here).
inline int nearest_int(float value) {
  const float shifted = value + 12582912.f;
  int32_t bits = 0;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}

// C's (int8_t) / (uint8_t) of a float that is in range, or 0 when it is not finite: ggml's
// conversion is undefined there (it happens only when 1 / d overflows, |d| < 2^-128, i.e. a
// block of fp32-subnormal weights whose fp16 d is 0 anyway); x86's cvttss2si gives 0x80000000,
// whose low byte 0 is what both ggml on x86 and gguf-py store.
inline int truncate_or_zero(float value) {
  return std::isfinite(value) ? static_cast<int>(value) : 0;
}

// The boundary checks every row function makes once: the pointers, k, and finite inputs.
inline const TypeInfo& check_row(const char* function, GgmlType type, int64_t k, const void* in,
                                 const char* in_name, const void* out, const char* out_name) {
  const TypeInfo& info = type_info(type);
  if (k <= 0 || k % info.block_size != 0) {
    nibble::detail::fail(ErrorCode::shape_mismatch, "gguf::", function, ": k = ", k,
                         " is not a positive multiple of the ", info.name, " block size ",
                         info.block_size, " (ggml rows hold whole blocks)");
  }
  if (in == nullptr)
    nibble::detail::fail(ErrorCode::null_pointer, "gguf::", function, ": ", in_name, " is null");
  if (out == nullptr)
    nibble::detail::fail(ErrorCode::null_pointer, "gguf::", function, ": ", out_name, " is null");
  return info;
}

inline void check_finite(const char* function, const TypeInfo& info, const float* x, int64_t k) {
  for (int64_t i = 0; i < k; ++i) {
    if (!std::isfinite(x[i])) {
      nibble::detail::fail(ErrorCode::non_finite, "gguf::", function, ": x[", i, "] = ", x[i],
                           " (block ", i / info.block_size, " of ", info.name,
                           "); NaN/Inf weights cannot be quantized (llama.cpp asserts)");
    }
  }
}

// A stored fp16 block parameter; Error(non_finite) when it overflows (|value| >= 65520).
inline fp16 store_fp16(float value, const char* function, const TypeInfo& info, int64_t block,
                       const char* field) {
  const fp16 stored = from_float<fp16>(value);
  if (!std::isfinite(to_float(stored))) {
    nibble::detail::fail(ErrorCode::non_finite, "gguf::", function, ": block ", block, " (x[",
                         block * info.block_size, " .. ", (block + 1) * info.block_size - 1,
                         "]) needs ", info.name, " ", field, " = ", value,
                         ", which overflows fp16 (largest finite 65504); the weights' range is "
                         "too large for this format");
  }
  return stored;
}

// Runs `quantize_block(x_block, block&, block_index)` over the row, storing each block with
// memcpy (the output need not be aligned for the struct).
template <class Block, class QuantizeBlock>
void quantize_blocks(const float* x, int64_t k, void* blocks, const TypeInfo& info,
                     QuantizeBlock&& quantize_block) {
  auto* out = static_cast<unsigned char*>(blocks);
  for (int64_t b = 0; b < k / info.block_size; ++b) {
    Block block{};
    quantize_block(x + b * info.block_size, block, b);
    std::memcpy(out + b * static_cast<int64_t>(sizeof(Block)), &block, sizeof(Block));
  }
}

template <class Block, class DequantizeBlock>
void dequantize_blocks(const void* blocks, int64_t k, float* y, const TypeInfo& info,
                       DequantizeBlock&& dequantize_block) {
  const auto* in = static_cast<const unsigned char*>(blocks);
  for (int64_t b = 0; b < k / info.block_size; ++b) {
    Block block;
    std::memcpy(&block, in + b * static_cast<int64_t>(sizeof(Block)), sizeof(Block));
    dequantize_block(block, y + b * info.block_size);
  }
}

// Low nibble = code j, high nibble = code j + 16 (Q4_0 / Q4_1).
inline void pack_q4_halves(const uint8_t* codes, uint8_t* qs) {
  for (int j = 0; j < 16; ++j)
    qs[j] = static_cast<uint8_t>(codes[j] | (codes[j + 16] << 4));
}

}  // namespace detail

// ---- Q4_0 -------------------------------------------------------------------------------------

// x: k floats (k % 32 == 0) -> blocks: k / 32 block_q4_0 (18 bytes each). quantize_row_q4_0_ref:
// d = max / -8 where max is the signed value of largest |x| (first one on ties), id = 1 / d from
// the fp32 d (0 when d == 0), code = MIN(15, (int8_t)(x * id + 8.5f)): the extreme maps to 0,
// and since d is -max / 8 the opposite extreme +|max| would be 16, clamped to 15.
inline void quantize_row_q4_0(const float* x, int64_t k, void* blocks) {
  const char* function = "quantize_row_q4_0";
  const TypeInfo& info = detail::check_row(function, GgmlType::q4_0, k, x, "x", blocks, "blocks");
  detail::check_finite(function, info, x, k);
  detail::quantize_blocks<block_q4_0>(
      x, k, blocks, info, [&](const float* xb, block_q4_0& out, int64_t b) {
        float amax = 0.0f;
        float max = 0.0f;  // an all-zero block keeps +0, so d = 0 / -8 = -0 (stored 0x8000)
        for (int j = 0; j < QK4_0; ++j) {
          if (amax < std::fabs(xb[j])) {
            amax = std::fabs(xb[j]);
            max = xb[j];
          }
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        out.d = detail::store_fp16(d, function, info, b, "d");
        uint8_t codes[QK4_0];
        for (int j = 0; j < QK4_0; ++j) {
          // x * id + 8.5f >= 0.49 here (x * id >= -8 up to one rounding), so the conversion is
          // C's truncation toward zero of an in-range value, as (int8_t) is in ggml.
          const int truncated = detail::truncate_or_zero(detail::mul(xb[j], id) + 8.5f);
          codes[j] = static_cast<uint8_t>(std::min(15, truncated));
        }
        detail::pack_q4_halves(codes, out.qs);
      });
}

// blocks: k / 32 block_q4_0 -> y: k floats; y = (code - 8) * d.
inline void dequantize_row_q4_0(const void* blocks, int64_t k, float* y) {
  const TypeInfo& info =
      detail::check_row("dequantize_row_q4_0", GgmlType::q4_0, k, blocks, "blocks", y, "y");
  detail::dequantize_blocks<block_q4_0>(blocks, k, y, info, [](const block_q4_0& in, float* yb) {
    const float d = to_float(in.d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      yb[j] = static_cast<float>((in.qs[j] & 0x0F) - 8) * d;
      yb[j + QK4_0 / 2] = static_cast<float>((in.qs[j] >> 4) - 8) * d;
    }
  });
}

// ---- Q4_1 -------------------------------------------------------------------------------------

// x: k floats (k % 32 == 0) -> blocks: k / 32 block_q4_1 (20 bytes each). quantize_row_q4_1_ref:
// d = (max - min) / 15, m = min, id = 1 / d (0 when d == 0), code = MIN(15, (int8_t)((x - min)
// * id + 0.5f)).
inline void quantize_row_q4_1(const float* x, int64_t k, void* blocks) {
  const char* function = "quantize_row_q4_1";
  const TypeInfo& info = detail::check_row(function, GgmlType::q4_1, k, x, "x", blocks, "blocks");
  detail::check_finite(function, info, x, k);
  detail::quantize_blocks<block_q4_1>(
      x, k, blocks, info, [&](const float* xb, block_q4_1& out, int64_t b) {
        float min = FLT_MAX;
        float max = -FLT_MAX;
        for (int j = 0; j < QK4_1; ++j) {  // strict comparisons: the first of equal values wins
          if (xb[j] < min) min = xb[j];
          if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        out.d = detail::store_fp16(d, function, info, b, "d");
        out.m = detail::store_fp16(min, function, info, b, "m (the block's min)");
        uint8_t codes[QK4_1];
        for (int j = 0; j < QK4_1; ++j) {
          const int truncated = detail::truncate_or_zero(detail::mul(xb[j] - min, id) + 0.5f);
          codes[j] = static_cast<uint8_t>(std::min(15, truncated));
        }
        detail::pack_q4_halves(codes, out.qs);
      });
}

// blocks: k / 32 block_q4_1 -> y: k floats; y = code * d + m (product rounded, then the add).
inline void dequantize_row_q4_1(const void* blocks, int64_t k, float* y) {
  const TypeInfo& info =
      detail::check_row("dequantize_row_q4_1", GgmlType::q4_1, k, blocks, "blocks", y, "y");
  detail::dequantize_blocks<block_q4_1>(blocks, k, y, info, [](const block_q4_1& in, float* yb) {
    const float d = to_float(in.d);
    const float m = to_float(in.m);
    for (int j = 0; j < QK4_1 / 2; ++j) {
      yb[j] = detail::mul(static_cast<float>(in.qs[j] & 0x0F), d) + m;
      yb[j + QK4_1 / 2] = detail::mul(static_cast<float>(in.qs[j] >> 4), d) + m;
    }
  });
}

// ---- Q8_0 -------------------------------------------------------------------------------------

// x: k floats (k % 32 == 0) -> blocks: k / 32 block_q8_0 (34 bytes each). quantize_row_q8_0_ref:
// d = max |x| / 127, id = 1 / d (0 when d == 0), qs = roundf(x * id) (half away from zero).
inline void quantize_row_q8_0(const float* x, int64_t k, void* blocks) {
  const char* function = "quantize_row_q8_0";
  const TypeInfo& info = detail::check_row(function, GgmlType::q8_0, k, x, "x", blocks, "blocks");
  detail::check_finite(function, info, x, k);
  detail::quantize_blocks<block_q8_0>(
      x, k, blocks, info, [&](const float* xb, block_q8_0& out, int64_t b) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; ++j)
          amax = std::max(amax, std::fabs(xb[j]));
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        out.d = detail::store_fp16(d, function, info, b, "d");
        for (int j = 0; j < QK8_0; ++j) {  // |x * id| <= 127 up to one rounding: in range
          out.qs[j] =
              static_cast<int8_t>(detail::truncate_or_zero(std::round(detail::mul(xb[j], id))));
        }
      });
}

// blocks: k / 32 block_q8_0 -> y: k floats; y = qs * d.
inline void dequantize_row_q8_0(const void* blocks, int64_t k, float* y) {
  const TypeInfo& info =
      detail::check_row("dequantize_row_q8_0", GgmlType::q8_0, k, blocks, "blocks", y, "y");
  detail::dequantize_blocks<block_q8_0>(blocks, k, y, info, [](const block_q8_0& in, float* yb) {
    const float d = to_float(in.d);
    for (int j = 0; j < QK8_0; ++j)
      yb[j] = static_cast<float>(in.qs[j]) * d;
  });
}

// ---- Q4_K -------------------------------------------------------------------------------------

// x: k floats (k % 256 == 0) -> blocks: k / 256 block_q4_K (144 bytes each). quantize_row_q4_K_ref:
// per sub-block of 32, weights av_x + |x| (av_x = sqrt(sum x^2 / 32)) and make_qkx2_quants(32,
// 15, ..., -1, 0.1, 20) give a float scale and min (min >= 0, subtracted); the 8 scales and 8
// mins are quantized to 6 bits against max / 63 (nearest_int, MIN 63), d = fp16(max_scale / 63),
// dmin = fp16(max_min / 63); then every code is recomputed against the stored values:
// code = clamp(nearest_int((x + dmin * m) / (d * sc)), 0, 15), except in a sub-block whose
// d * sc is 0, which keeps the search's codes.
inline void quantize_row_q4_K(const float* x, int64_t k, void* blocks) {
  const char* function = "quantize_row_q4_K";
  const TypeInfo& info = detail::check_row(function, GgmlType::q4_K, k, x, "x", blocks, "blocks");
  detail::check_finite(function, info, x, k);
  constexpr int kSub = 32;
  kquant::GroupScratch scratch(kSub);
  detail::quantize_blocks<block_q4_K>(
      x, k, blocks, info, [&](const float* xb, block_q4_K& out, int64_t b) {
        uint8_t codes[QK_K];
        float weights[kSub];
        float scales[QK_K / kSub];
        float mins[QK_K / kSub];
        float max_scale = 0.0f;  // scales are >= 0 (the min is subtracted)
        float max_min = 0.0f;
        for (int j = 0; j < QK_K / kSub; ++j) {
          const float* xs = xb + kSub * j;
          float sum_x2 = 0.0f;
          for (int l = 0; l < kSub; ++l)
            sum_x2 += detail::mul(xs[l], xs[l]);
          const float av_x = std::sqrt(sum_x2 / kSub);
          for (int l = 0; l < kSub; ++l)
            weights[l] = av_x + std::fabs(xs[l]);
          const float lo = std::min(*std::min_element(xs, xs + kSub), 0.0f);
          const float hi = *std::max_element(xs, xs + kSub);
          if (hi != lo && !std::isfinite(16.f / (hi - lo))) {
            // A range below ~4.7e-38 (fp32-subnormal weights): make_qkx2_quants' iscale = nmax /
            // range is Inf, its nearest_int maps Inf / NaN to code 0 and no candidate has D > 0, so
            // it returns scale 0, codes 0, the_min = -min. (Computed here: kquant's search, made
            // for finite iscales, would convert NaN codes.) In the band range in [14, 16] / FLT_MAX
            // ggml's candidates with a finite iscale could still win; nibble keeps scale 0 there.
            std::fill(codes + kSub * j, codes + kSub * (j + 1), uint8_t{0});
            scales[j] = 0.0f;
            mins[j] = -lo;
          } else {
            const kquant::AffineFit fit =
                kquant::search_llama_cpp(xs, weights, kSub, 15, codes + kSub * j, scratch);
            scales[j] = fit.scale;
            mins[j] = -fit.offset;  // make_qkx2_quants' the_min
          }
          if (scales[j] > max_scale) max_scale = scales[j];
          if (mins[j] > max_min) max_min = mins[j];
        }
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < QK_K / kSub; ++j) {
          // ggml assigns nearest_int's int to a uint8_t (modulo 256), then takes MIN(63, .).
          const auto ls = std::min<uint8_t>(
              63, static_cast<uint8_t>(detail::nearest_int(detail::mul(inv_scale, scales[j]))));
          const auto lm = std::min<uint8_t>(
              63, static_cast<uint8_t>(detail::nearest_int(detail::mul(inv_min, mins[j]))));
          if (j < 4) {
            out.scales[j] = ls;
            out.scales[j + 4] = lm;
          } else {
            out.scales[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
            out.scales[j - 4] = static_cast<uint8_t>(out.scales[j - 4] | ((ls >> 4) << 6));
            out.scales[j] = static_cast<uint8_t>(out.scales[j] | ((lm >> 4) << 6));
          }
        }
        out.d = detail::store_fp16(max_scale / 63.f, function, info, b, "d");
        out.dmin = detail::store_fp16(max_min / 63.f, function, info, b, "dmin");
        for (int j = 0; j < QK_K / kSub; ++j) {
          uint8_t sc = 0;
          uint8_t m = 0;
          get_scale_min_k4(j, out.scales, sc, m);
          const float d = detail::mul(to_float(out.d), static_cast<float>(sc));
          if (d == 0.0f) continue;
          const float dm = detail::mul(to_float(out.dmin), static_cast<float>(m));
          for (int l = 0; l < kSub; ++l) {
            const int code = detail::nearest_int((xb[kSub * j + l] + dm) / d);
            codes[kSub * j + l] = static_cast<uint8_t>(std::clamp(code, 0, 15));
          }
        }
        for (int c = 0; c < QK_K / 64; ++c) {
          for (int l = 0; l < 32; ++l) {
            out.qs[32 * c + l] =
                static_cast<uint8_t>(codes[64 * c + l] | (codes[64 * c + 32 + l] << 4));
          }
        }
      });
}

// blocks: k / 256 block_q4_K -> y: k floats; y = (d * sc) * code - (dmin * m), each product
// rounded, per sub-block (sc, m) from get_scale_min_k4.
inline void dequantize_row_q4_K(const void* blocks, int64_t k, float* y) {
  const TypeInfo& info =
      detail::check_row("dequantize_row_q4_K", GgmlType::q4_K, k, blocks, "blocks", y, "y");
  detail::dequantize_blocks<block_q4_K>(blocks, k, y, info, [](const block_q4_K& in, float* yb) {
    const float d = to_float(in.d);
    const float dmin = to_float(in.dmin);
    for (int c = 0; c < QK_K / 64; ++c) {
      for (int half = 0; half < 2; ++half) {
        uint8_t sc = 0;
        uint8_t m = 0;
        get_scale_min_k4(2 * c + half, in.scales, sc, m);
        const float scale = detail::mul(d, static_cast<float>(sc));
        const float min = detail::mul(dmin, static_cast<float>(m));
        for (int l = 0; l < 32; ++l) {
          const int code = half == 0 ? in.qs[32 * c + l] & 0xF : in.qs[32 * c + l] >> 4;
          yb[64 * c + 32 * half + l] = detail::mul(scale, static_cast<float>(code)) - min;
        }
      }
    }
  });
}

// ---- Q6_K -------------------------------------------------------------------------------------

// x: k floats (k % 256 == 0) -> blocks: k / 256 block_q6_K (210 bytes each). quantize_row_q6_K_ref:
// per sub-block of 16, make_qx_quants(16, 32, ..., rmse_type 1: weights x^2) gives a signed
// scale; the scale of largest |.| gives iscale = -128 / max_scale, d = fp16(1 / iscale),
// scales[s] = MIN(127, nearest_int(iscale * scale_s)); codes recomputed as clamp(nearest_int(x /
// (d * scales[s])), -32, 31) + 32, except in a sub-block whose d * scales[s] is 0, which keeps
// the search's codes (code 0 for an all-zero sub-block, as make_qx_quants writes L = 0 there).
// A block whose largest |scale| is below 1e-15 is all zero bytes.
inline void quantize_row_q6_K(const float* x, int64_t k, void* blocks) {
  const char* function = "quantize_row_q6_K";
  const TypeInfo& info = detail::check_row(function, GgmlType::q6_K, k, x, "x", blocks, "blocks");
  detail::check_finite(function, info, x, k);
  constexpr int kSub = 16;
  constexpr float kGroupMaxEps = 1e-15f;  // ggml-quants.c GROUP_MAX_EPS
  detail::quantize_blocks<block_q6_K>(
      x, k, blocks, info, [&](const float* xb, block_q6_K& out, int64_t b) {
        uint8_t codes[QK_K];
        float weights[kSub];
        float scales[QK_K / kSub];
        float max_scale = 0.0f;
        float max_abs_scale = 0.0f;
        for (int s = 0; s < QK_K / kSub; ++s) {
          const float* xs = xb + kSub * s;
          float amax = 0.0f;
          for (int l = 0; l < kSub; ++l) {
            weights[l] = detail::mul(xs[l], xs[l]);
            amax = std::max(amax, std::fabs(xs[l]));
          }
          scales[s] = kquant::search_symmetric(xs, weights, kSub, 32, codes + kSub * s);
          if (amax < kGroupMaxEps) std::fill(codes + kSub * s, codes + kSub * (s + 1), uint8_t{0});
          if (std::fabs(scales[s]) > max_abs_scale) {
            max_abs_scale = std::fabs(scales[s]);
            max_scale = scales[s];
          }
        }
        if (max_abs_scale < kGroupMaxEps) return;  // out is all zero bytes (d = +0)
        const float iscale = -128.f / max_scale;
        out.d = detail::store_fp16(1 / iscale, function, info, b, "d");
        for (int s = 0; s < QK_K / kSub; ++s) {  // |iscale * scale| <= 128: >= -128 fits int8
          out.scales[s] = static_cast<int8_t>(
              std::min(127, detail::nearest_int(detail::mul(iscale, scales[s]))));
        }
        for (int s = 0; s < QK_K / kSub; ++s) {
          const float d = detail::mul(to_float(out.d), static_cast<float>(out.scales[s]));
          if (d == 0.0f) continue;
          for (int l = 0; l < kSub; ++l) {
            const int code = detail::nearest_int(xb[kSub * s + l] / d);
            codes[kSub * s + l] = static_cast<uint8_t>(std::clamp(code, -32, 31) + 32);
          }
        }
        for (int h = 0; h < QK_K / 128; ++h) {
          const uint8_t* c = codes + 128 * h;
          uint8_t* ql = out.ql + 64 * h;
          uint8_t* qh = out.qh + 32 * h;
          for (int l = 0; l < 32; ++l) {
            ql[l] = static_cast<uint8_t>((c[l] & 0xF) | ((c[l + 64] & 0xF) << 4));
            ql[l + 32] = static_cast<uint8_t>((c[l + 32] & 0xF) | ((c[l + 96] & 0xF) << 4));
            qh[l] = static_cast<uint8_t>((c[l] >> 4) | ((c[l + 32] >> 4) << 2) |
                                         ((c[l + 64] >> 4) << 4) | ((c[l + 96] >> 4) << 6));
          }
        }
      });
}

// blocks: k / 256 block_q6_K -> y: k floats; y = (d * scales[s]) * (code - 32), products rounded.
inline void dequantize_row_q6_K(const void* blocks, int64_t k, float* y) {
  const TypeInfo& info =
      detail::check_row("dequantize_row_q6_K", GgmlType::q6_K, k, blocks, "blocks", y, "y");
  detail::dequantize_blocks<block_q6_K>(blocks, k, y, info, [](const block_q6_K& in, float* yb) {
    const float d = to_float(in.d);
    for (int h = 0; h < QK_K / 128; ++h) {
      const uint8_t* ql = in.ql + 64 * h;
      const uint8_t* qh = in.qh + 32 * h;
      float* out = yb + 128 * h;
      for (int l = 0; l < 32; ++l) {
        const int codes[4] = {
            (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4),
            (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
            (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
            (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
        };
        for (int quarter = 0; quarter < 4; ++quarter) {
          const int e = 32 * quarter + l;  // element within the half
          const float scale = detail::mul(d, static_cast<float>(in.scales[8 * h + e / 16]));
          out[e] = detail::mul(scale, static_cast<float>(codes[quarter] - 32));
        }
      }
    }
  });
}

// ---- Q2_K -------------------------------------------------------------------------------------

// x: k floats (k % 256 == 0) -> k / 256 block_q2_K (84 bytes each). quantize_row_q2_K_ref (the
// path without an imatrix): per sub-block of 16, make_qkx2_quants(16, 3, x, |x|, ..., -0.5,
// 0.1, 15, use_mad = true) gives (scale, min >= 0); the 16 scales and mins are quantized to 4
// bits against their maxima (d = max_scale / 15, dmin = max_min / 15, nearest_int), and the codes
// are recomputed from the stored values: code = clamp(nearest_int((x + dmin * m) / (d * sc)),
// 0, 3), skipped (left as the search's) where d * sc == 0.
inline void quantize_row_q2_K(const float* x, int64_t k, void* blocks) {
  const char* function = "quantize_row_q2_K";
  const TypeInfo& info = detail::check_row(function, GgmlType::q2_K, k, x, "x", blocks, "blocks");
  detail::check_finite(function, info, x, k);
  constexpr int kSub = 16;
  constexpr float kLevels = 15.0f;  // q4scale: the 4-bit scale and min grid
  const kquant::LlamaCppGrid grid{-0.5f, 0.1f, 15, true};
  kquant::GroupScratch scratch(kSub);
  detail::quantize_blocks<block_q2_K>(
      x, k, blocks, info, [&](const float* xb, block_q2_K& out, int64_t b) {
        uint8_t codes[QK_K];
        float weights[kSub];
        float scales[QK_K / kSub];
        float mins[QK_K / kSub];
        float max_scale = 0.0f;  // scales are >= 0 (the min is subtracted)
        float max_min = 0.0f;
        for (int j = 0; j < QK_K / kSub; ++j) {
          const float* xs = xb + kSub * j;
          for (int l = 0; l < kSub; ++l)
            weights[l] = std::fabs(xs[l]);
          const float lo = std::min(*std::min_element(xs, xs + kSub), 0.0f);
          const float hi = *std::max_element(xs, xs + kSub);
          if (hi != lo && !std::isfinite(4.f / (hi - lo))) {
            // A range below ~1.2e-38: make_qkx2_quants' iscale is Inf (see quantize_row_q4_K).
            std::fill(codes + kSub * j, codes + kSub * (j + 1), uint8_t{0});
            scales[j] = 0.0f;
            mins[j] = -lo;
          } else {
            const kquant::AffineFit fit =
                kquant::search_llama_cpp(xs, weights, kSub, 3, codes + kSub * j, scratch, grid);
            scales[j] = fit.scale;
            mins[j] = -fit.offset;  // make_qkx2_quants' the_min
          }
          if (scales[j] > max_scale) max_scale = scales[j];
          if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
          const float inverse = kLevels / max_scale;
          // ggml assigns nearest_int's int to the uint8_t scales[j] (at most 15 here).
          for (int j = 0; j < QK_K / kSub; ++j)
            out.scales[j] =
                static_cast<uint8_t>(detail::nearest_int(detail::mul(inverse, scales[j])));
          out.d = detail::store_fp16(max_scale / kLevels, function, info, b, "d");
        } else {
          for (int j = 0; j < QK_K / kSub; ++j)
            out.scales[j] = 0;
          out.d = from_float<fp16>(0.0f);
        }
        if (max_min > 0) {
          const float inverse = kLevels / max_min;
          for (int j = 0; j < QK_K / kSub; ++j) {
            // ggml's `scales[j] |= (l << 4)` keeps the low byte; the shift is done unsigned so a
            // negative l (nearest_int of an Inf product when max_min is fp32-subnormal) stays
            // defined and gives the bits x86 gives.
            const int level = detail::nearest_int(detail::mul(inverse, mins[j]));
            out.scales[j] =
                static_cast<uint8_t>(out.scales[j] | (static_cast<uint32_t>(level) << 4));
          }
          out.dmin = detail::store_fp16(max_min / kLevels, function, info, b, "dmin");
        } else {
          out.dmin = from_float<fp16>(0.0f);
        }
        for (int j = 0; j < QK_K / kSub; ++j) {
          const float d = detail::mul(to_float(out.d), static_cast<float>(out.scales[j] & 0xF));
          if (d == 0.0f) continue;
          const float dm = detail::mul(to_float(out.dmin), static_cast<float>(out.scales[j] >> 4));
          for (int l = 0; l < kSub; ++l) {
            const int code = detail::nearest_int((xb[kSub * j + l] + dm) / d);
            codes[kSub * j + l] = static_cast<uint8_t>(std::clamp(code, 0, 3));
          }
        }
        // Byte l of chunk c holds weights 128c + l, + 32, + 64, + 96 in bits 0-1, 2-3, 4-5, 6-7.
        for (int c = 0; c < QK_K / 128; ++c) {
          for (int l = 0; l < 32; ++l) {
            const uint8_t* w = codes + 128 * c + l;
            out.qs[32 * c + l] =
                static_cast<uint8_t>(w[0] | (w[32] << 2) | (w[64] << 4) | (w[96] << 6));
          }
        }
      });
}

// blocks: k / 256 block_q2_K -> y: k floats. dequantize_row_q2_K: weight = dl * code - ml with
// dl = d * (sc & 15), ml = dmin * (sc >> 4), each product rounded on its own.
inline void dequantize_row_q2_K(const void* blocks, int64_t k, float* y) {
  const TypeInfo& info =
      detail::check_row("dequantize_row_q2_K", GgmlType::q2_K, k, blocks, "blocks", y, "y");
  detail::dequantize_blocks<block_q2_K>(blocks, k, y, info, [](const block_q2_K& in, float* yb) {
    const float d = to_float(in.d);
    const float dmin = to_float(in.dmin);
    for (int e = 0; e < QK_K; ++e) {
      const int c = e / 128;         // chunk of 32 bytes
      const int i = (e % 128) / 32;  // bit pair in the byte
      const int l = e % 32;          // byte in the chunk
      const uint8_t sc = in.scales[e / 16];
      const float dl = detail::mul(d, static_cast<float>(sc & 0xF));
      const float ml = detail::mul(dmin, static_cast<float>(sc >> 4));
      const int code = (in.qs[32 * c + l] >> (2 * i)) & 3;
      yb[e] = detail::mul(dl, static_cast<float>(code)) - ml;
    }
  });
}

// ---- by type id -------------------------------------------------------------------------------

// x: k floats -> blocks: row_size(type, k) bytes.
inline void quantize_row(GgmlType type, const float* x, int64_t k, void* blocks) {
  switch (type) {
    case GgmlType::q4_0:
      return quantize_row_q4_0(x, k, blocks);
    case GgmlType::q4_1:
      return quantize_row_q4_1(x, k, blocks);
    case GgmlType::q8_0:
      return quantize_row_q8_0(x, k, blocks);
    case GgmlType::q2_K:
      return quantize_row_q2_K(x, k, blocks);
    case GgmlType::q4_K:
      return quantize_row_q4_K(x, k, blocks);
    case GgmlType::q6_K:
      return quantize_row_q6_K(x, k, blocks);
  }
  type_info(type);  // throws: an id outside the enum
}

// blocks: row_size(type, k) bytes -> y: k floats.
inline void dequantize_row(GgmlType type, const void* blocks, int64_t k, float* y) {
  switch (type) {
    case GgmlType::q4_0:
      return dequantize_row_q4_0(blocks, k, y);
    case GgmlType::q4_1:
      return dequantize_row_q4_1(blocks, k, y);
    case GgmlType::q8_0:
      return dequantize_row_q8_0(blocks, k, y);
    case GgmlType::q2_K:
      return dequantize_row_q2_K(blocks, k, y);
    case GgmlType::q4_K:
      return dequantize_row_q4_K(blocks, k, y);
    case GgmlType::q6_K:
      return dequantize_row_q6_K(blocks, k, y);
  }
  type_info(type);
}

// ---- canonical <-> blocks, without requantizing
// ---------------------------------------------------
//
// Where a GGUF type and nibble's canonical layout (quant_tensor.hpp: weight = (q - z) * s per
// group) describe the same numbers, these convert codes and scales as they are, so a tensor
// quantized once (by any of nibble's solvers, or read from a GPTQ / AWQ / ORT checkpoint) moves
// between formats with every dequantized value unchanged. Both directions check that the
// numbers are representable and say which block is not:
//   Q4_0  = 4-bit symmetric, group 32:  (q - 8) * d, the same 4-bit codes; s = d (fp16).
//   Q8_0  = 8-bit symmetric, group 32:  qs * d with qs = q - 128 (int8), s = d.
//   Q4_1  = 4-bit asymmetric, group 32: q * d + m, which is (q - z) * d exactly when
//           m = -z * d for an integer z in [0, 15]: both products are exact in float (an fp16
//           times an integer below 16), so both dequantize to the same float.
//   Q4_K  -> canonical only (4-bit asymmetric, group 32): sub-block scale d * sc and offset
//           dmin * m (exact float products of an fp16 and a 6-bit integer), representable when
//           dmin * m = z * d * sc for an integer z in [0, 15]. The other way would need every
//           group's scale to be a 6-bit multiple of one fp16 per 256 weights: requantize with
//           quantize_row_q4_K instead (Error(unsupported) says so).
//   Q6_K  has 6-bit codes: no canonical form (nibble's widths are 2, 4 and 8).
// A canonical scale must be exactly an fp16 for the block types (float or bf16 ScaleT is
// checked value by value); K must be a whole number of blocks (rows are not padded).

namespace detail {

// `value` as fp16 if that is exact, else Error(unsupported) naming the place.
inline fp16 exact_fp16(float value, const char* who, const char* what, int64_t row, int64_t group) {
  const fp16 half = from_float<fp16>(value);
  if (!(to_float(half) == value) && !(std::isnan(value) && std::isnan(to_float(half)))) {
    nibble::detail::fail(ErrorCode::unsupported, who, ": row ", row, " group ", group, " ", what,
                         " = ", value,
                         " is not exactly representable in fp16 (GGUF stores fp16; "
                         "quantize with fp16 scales, or requantize from float)");
  }
  return half;
}

template <class ScaleT>
ScaleT exact_scale(float value, const char* who, int64_t row, int64_t group) {
  const ScaleT scale = from_float<ScaleT>(value);
  if (!(to_float(scale) == value)) {
    nibble::detail::fail(ErrorCode::unsupported, who, ": row ", row, " group ", group, ": scale ",
                         value,
                         " is not exactly representable in the requested scale "
                         "type (use float scales)");
  }
  return scale;
}

// The canonical form a type maps to, or Error(unsupported).
inline QuantConfig canonical_config(GgmlType type, ConventionId convention, const char* who) {
  switch (type) {
    case GgmlType::q4_0:
      return QuantConfig{4, QK4_0, true, convention};
    case GgmlType::q8_0:
      return QuantConfig{8, QK8_0, true, convention};
    case GgmlType::q4_1:
      return QuantConfig{4, QK4_1, false, convention};
    case GgmlType::q4_K:
      return QuantConfig{4, 32, false, convention};
    case GgmlType::q6_K:
      nibble::detail::fail(ErrorCode::unsupported, who,
                           ": Q6_K holds 6-bit codes, which the canonical layout (2, 4 or 8 bits) "
                           "cannot hold; dequantize it (dequantize_row) instead");
    case GgmlType::q2_K:
      nibble::detail::fail(ErrorCode::unsupported, who,
                           ": Q2_K's offsets (dmin * m) are rarely whole multiples of its scales "
                           "and no import is implemented; dequantize it (dequantize_row) instead");
  }
  type_info(type);  // throws for an id outside the enum
  return QuantConfig{};
}

}  // namespace detail

// The GGUF type holding `config`'s numbers, when there is one (Q4_0, Q8_0, Q4_1); else
// Error(unsupported) saying what would be needed.
inline GgmlType type_for(const QuantConfig& config) {
  if (config.group_size != 32) {
    nibble::detail::fail(ErrorCode::unsupported, "GGUF: group size ", config.group_size,
                         " has no block type (Q4_0, Q4_1 and Q8_0 blocks hold 32 weights; "
                         "quantize with group_size 32)");
  }
  if (config.bits == 4) return config.symmetric ? GgmlType::q4_0 : GgmlType::q4_1;
  if (config.bits == 8 && config.symmetric) return GgmlType::q8_0;
  nibble::detail::fail(ErrorCode::unsupported, "GGUF: ", config.bits, "-bit ",
                       config.symmetric ? "symmetric" : "asymmetric",
                       " weights have no block type here (Q4_0: 4-bit symmetric, Q4_1: 4-bit "
                       "asymmetric, Q8_0: 8-bit symmetric)");
}

// Canonical [..., N, K] -> GGUF blocks of type_for(w.config()), rows back to back
// (row_size(type, K) bytes each). Error(unsupported) when a scale or min is not exact in fp16.
template <class ScaleT>
std::vector<uint8_t> to_blocks(const QuantTensorView<ScaleT>& w) {
  const char* who = "gguf::to_blocks";
  const GgmlType type = type_for(w.config());
  const int64_t k = w.k();
  if (k % 32 != 0) {
    nibble::detail::fail(ErrorCode::unsupported, who, ": K = ", k,
                         " is not a multiple of the block size 32 (GGUF rows are whole blocks)");
  }
  const int64_t row_bytes = row_size(type, k);
  std::vector<uint8_t> out(static_cast<std::size_t>(w.rows() * row_bytes));
  const int64_t n_blocks = k / 32;
  for (int64_t row = 0; row < w.rows(); ++row) {
    uint8_t* blocks = out.data() + row * row_bytes;
    for (int64_t b = 0; b < n_blocks; ++b) {
      const float scale = w.scale(row, b);
      const fp16 d = detail::exact_fp16(scale, who, "scale", row, b);
      uint8_t codes[32];
      for (int j = 0; j < 32; ++j)
        codes[j] = static_cast<uint8_t>(w.code(row, 32 * b + j));
      if (type == GgmlType::q8_0) {
        block_q8_0 block{};
        block.d = d;
        // qs = q - 128: the canonical code's offset removed (two's complement int8).
        for (int j = 0; j < 32; ++j)
          block.qs[j] = static_cast<int8_t>(int{codes[j]} - 128);
        std::memcpy(blocks + b * sizeof block, &block, sizeof block);
      } else if (type == GgmlType::q4_0) {
        block_q4_0 block{};
        block.d = d;
        detail::pack_q4_halves(codes, block.qs);
        std::memcpy(blocks + b * sizeof block, &block, sizeof block);
      } else {  // q4_1
        block_q4_1 block{};
        block.d = d;
        const int zero = w.zero_point(row, b);
        // m = -z * d: exact in float (fp16 mantissa times an integer < 16), then checked in fp16.
        block.m = detail::exact_fp16(-static_cast<float>(zero) * scale, who, "min (-zero * scale)",
                                     row, b);
        detail::pack_q4_halves(codes, block.qs);
        std::memcpy(blocks + b * sizeof block, &block, sizeof block);
      }
    }
  }
  return out;
}

// GGUF blocks of `type` for a tensor of row-major `shape` [..., N, K] -> the canonical tensor
// with the same dequantized values (see above), scales as ScaleT, `convention` recorded.
// Error(unsupported) for Q6_K and for blocks that are not representable (naming the block).
template <class ScaleT = fp16>
QuantTensor<ScaleT> from_blocks(const void* blocks, int64_t byte_count, GgmlType type,
                                const Shape& shape, ConventionId convention = ConventionId::olive) {
  const char* who = "gguf::from_blocks";
  const QuantConfig config = detail::canonical_config(type, convention, who);
  const int64_t k = shape.last();
  const int64_t row_bytes = row_size(type, k);  // throws unless K is whole blocks
  const int64_t rows = shape.rows();
  if (blocks == nullptr || byte_count != rows * row_bytes) {
    nibble::detail::fail(ErrorCode::buffer_too_small, who, ": ", byte_count, " bytes for ",
                         type_name(type), " ", shape, " (expected ", rows * row_bytes, ")");
  }
  QuantTensor<ScaleT> out(shape, config);
  const RowLayout& layout = out.layout();
  std::vector<uint8_t> codes(static_cast<std::size_t>(layout.padded_k));
  std::vector<uint8_t> zeros(static_cast<std::size_t>(out.zero_slots()));
  const auto* bytes = static_cast<const uint8_t*>(blocks);
  for (int64_t row = 0; row < rows; ++row) {
    const uint8_t* row_blocks = bytes + row * row_bytes;
    ScaleT* scales = out.scales().data() + row * layout.n_groups;
    if (type == GgmlType::q4_K) {
      for (int64_t super = 0; super < k / QK_K; ++super) {
        block_q4_K block;
        std::memcpy(&block, row_blocks + super * static_cast<int64_t>(sizeof block), sizeof block);
        const float d = to_float(block.d);
        const float dmin = to_float(block.dmin);
        for (int sub = 0; sub < QK_K / 32; ++sub) {
          uint8_t sc = 0, m = 0;
          get_scale_min_k4(sub, block.scales, sc, m);
          const int64_t group = super * (QK_K / 32) + sub;
          const float scale = d * static_cast<float>(sc);     // exact: fp16 x 6-bit integer
          const float offset = dmin * static_cast<float>(m);  // weight = scale * q - offset
          // z = offset / scale must be an integer 0..15 with z * scale == offset exactly.
          const float zero = scale != 0.0f ? std::nearbyint(offset / scale) : 0.0f;
          if (!(zero >= 0.0f && zero <= 15.0f && zero * scale == offset)) {
            nibble::detail::fail(ErrorCode::unsupported, who, ": Q4_K row ", row, " sub-block ",
                                 group, ": offset dmin * m = ", offset,
                                 " is not an integer multiple (0..15) of the scale d * sc = ",
                                 scale, ", so (q - z) * s cannot express it; dequantize instead");
          }
          scales[group] = detail::exact_scale<ScaleT>(scale, who, row, group);
          zeros[static_cast<std::size_t>(group)] = static_cast<uint8_t>(zero);
          // Codes: chunk c = sub / 2 of 32 bytes; even sub-blocks in the low nibbles.
          const uint8_t* qs = block.qs + 32 * (sub / 2);
          for (int l = 0; l < 32; ++l) {
            codes[static_cast<std::size_t>(group * 32 + l)] =
                static_cast<uint8_t>(sub % 2 == 0 ? qs[l] & 0x0f : qs[l] >> 4);
          }
        }
      }
    } else {
      for (int64_t b = 0; b < k / 32; ++b) {
        uint8_t* group_codes = codes.data() + b * 32;
        if (type == GgmlType::q8_0) {
          block_q8_0 block;
          std::memcpy(&block, row_blocks + b * static_cast<int64_t>(sizeof block), sizeof block);
          scales[b] = detail::exact_scale<ScaleT>(to_float(block.d), who, row, b);
          for (int j = 0; j < 32; ++j)
            group_codes[j] = static_cast<uint8_t>(block.qs[j] + 128);
          zeros[static_cast<std::size_t>(b)] = 128;
        } else {
          const uint8_t* qs = nullptr;
          block_q4_0 block0;
          block_q4_1 block1;
          if (type == GgmlType::q4_0) {
            std::memcpy(&block0, row_blocks + b * static_cast<int64_t>(sizeof block0),
                        sizeof block0);
            scales[b] = detail::exact_scale<ScaleT>(to_float(block0.d), who, row, b);
            zeros[static_cast<std::size_t>(b)] = 8;
            qs = block0.qs;
          } else {
            std::memcpy(&block1, row_blocks + b * static_cast<int64_t>(sizeof block1),
                        sizeof block1);
            const float d = to_float(block1.d);
            const float m = to_float(block1.m);
            const float zero = d != 0.0f ? std::nearbyint(-m / d) : 0.0f;
            if (!(zero >= 0.0f && zero <= 15.0f && -zero * d == m)) {
              nibble::detail::fail(ErrorCode::unsupported, who, ": Q4_1 row ", row, " block ", b,
                                   ": min m = ", m,
                                   " is not -z * d for an integer z in 0..15 (d = ", d,
                                   "), so (q - z) * d cannot express it; dequantize instead");
            }
            scales[b] = detail::exact_scale<ScaleT>(d, who, row, b);
            zeros[static_cast<std::size_t>(b)] = static_cast<uint8_t>(zero);
            qs = block1.qs;
          }
          // Byte j: low nibble = weight j, high nibble = weight j + 16 (pack_q4_halves' inverse).
          for (int j = 0; j < 16; ++j) {
            group_codes[j] = static_cast<uint8_t>(qs[j] & 0x0f);
            group_codes[j + 16] = static_cast<uint8_t>(qs[j] >> 4);
          }
        }
      }
    }
    out.pack_row(row, codes.data(), zeros.data());
  }
  return out;
}

}  // namespace nibble::gguf
