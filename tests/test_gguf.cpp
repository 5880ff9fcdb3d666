// GGUF / ggml block formats (formats/gguf.hpp).
//
// Independent truths:
//   - the block structs and type ids of ggml-common.h / ggml.h (sizes, offsets, ids);
//   - blocks derived by hand from llama.cpp's quantize_row_*_ref formulas (comments below);
//   - gguf-py itself: tests/reference/gguf_vectors.bin holds inputs, gguf-py 0.19.0's bytes
//     (Q4_0, Q4_1, Q8_0: the types it quantizes) and its dequantized floats (all five types),
//     written by tests/reference/gguf_vectors.py. The test reads it next to this source file.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "nibble/formats/gguf.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/quantizer.hpp"
#include "support/fixture_file.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::Error;
using nibble::ErrorCode;
namespace gguf = nibble::gguf;
using gguf::GgmlType;

constexpr GgmlType kAllTypes[] = {GgmlType::q4_0, GgmlType::q4_1, GgmlType::q8_0,
                                  GgmlType::q2_K, GgmlType::q4_K, GgmlType::q6_K};

std::vector<uint8_t> quantize(GgmlType type, const std::vector<float>& x) {
  const auto k = static_cast<int64_t>(x.size());
  std::vector<uint8_t> blocks(static_cast<std::size_t>(gguf::row_size(type, k)));
  gguf::quantize_row(type, x.data(), k, blocks.data());
  return blocks;
}

std::vector<float> dequantize(GgmlType type, const std::vector<uint8_t>& blocks, int64_t k) {
  std::vector<float> y(static_cast<std::size_t>(k));
  gguf::dequantize_row(type, blocks.data(), k, y.data());
  return y;
}

uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

uint16_t u16_at(const std::vector<uint8_t>& bytes, std::size_t offset) {
  return static_cast<uint16_t>(bytes[offset] | (bytes[offset + 1] << 8));
}

template <class F>
ErrorCode error_code_of(F&& call) {
  try {
    call();
  } catch (const Error& error) {
    return error.code();
  }
  ADD_FAILURE() << "expected nibble::Error";
  return ErrorCode::malformed;
}

template <class F>
std::string error_message_of(F&& call) {
  try {
    call();
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected nibble::Error";
  return "";
}

// ---- layout and type table ----------------------------------------------------------------------

TEST(GgufTypes, IdsSizesAndBitsPerWeightAreGgmls) {
  // ggml.h enum ggml_type and ggml-common.h's static_asserts.
  struct Expected {
    GgmlType type;
    uint32_t id;
    const char* name;
    int64_t block_size, type_size;
    double bits_per_weight;
  };
  const Expected expected[] = {
      {GgmlType::q4_0, 2, "q4_0", 32, 18, 4.5},    {GgmlType::q4_1, 3, "q4_1", 32, 20, 5.0},
      {GgmlType::q8_0, 8, "q8_0", 32, 34, 8.5},    {GgmlType::q2_K, 10, "q2_K", 256, 84, 2.625},
      {GgmlType::q4_K, 12, "q4_K", 256, 144, 4.5}, {GgmlType::q6_K, 14, "q6_K", 256, 210, 6.5625}};
  for (const Expected& e : expected) {
    EXPECT_EQ(static_cast<uint32_t>(e.type), e.id);
    EXPECT_EQ(&gguf::type_info_from_id(e.id), &gguf::type_info(e.type));
    EXPECT_STREQ(gguf::type_name(e.type), e.name);
    EXPECT_EQ(gguf::block_size(e.type), e.block_size);
    EXPECT_EQ(gguf::type_size(e.type), e.type_size);
    EXPECT_DOUBLE_EQ(8.0 * static_cast<double>(e.type_size) / static_cast<double>(e.block_size),
                     e.bits_per_weight);
    EXPECT_EQ(gguf::row_size(e.type, 4096), 4096 / e.block_size * e.type_size);
  }
  EXPECT_EQ(sizeof(gguf::block_q4_0), 18u);
  EXPECT_EQ(sizeof(gguf::block_q4_1), 20u);
  EXPECT_EQ(sizeof(gguf::block_q8_0), 34u);
  EXPECT_EQ(sizeof(gguf::block_q2_K), 84u);
  EXPECT_EQ(sizeof(gguf::block_q4_K), 144u);
  EXPECT_EQ(sizeof(gguf::block_q6_K), 210u);
}

TEST(GgufTypes, UnknownIdsAndBadRowLengthsAreErrors) {
  EXPECT_EQ(error_code_of([] { gguf::type_info_from_id(1); }), ErrorCode::unsupported);   // F16
  EXPECT_EQ(error_code_of([] { gguf::type_info_from_id(11); }), ErrorCode::unsupported);  // Q3_K
  EXPECT_EQ(error_code_of([] { gguf::row_size(GgmlType::q4_K, 100); }), ErrorCode::shape_mismatch);
  EXPECT_EQ(error_code_of([] { gguf::row_size(GgmlType::q4_0, 0); }), ErrorCode::shape_mismatch);
  EXPECT_EQ(error_code_of([] { gguf::row_size(GgmlType::q8_0, -32); }), ErrorCode::shape_mismatch);
}

TEST(GgufTypes, ScaleMinPackingRoundTrips) {
  // get_scale_min_k4 inverts quantize_row_q4_K_ref's packing (ggml-quants.c), for all 6-bit values.
  for (int value = 0; value < 64; ++value) {
    for (int j = 0; j < 8; ++j) {
      uint8_t packed[12] = {};
      const auto ls = static_cast<uint8_t>(value);
      const auto lm = static_cast<uint8_t>(63 - value);
      if (j < 4) {
        packed[j] = ls;
        packed[j + 4] = lm;
      } else {
        packed[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
        packed[j - 4] = static_cast<uint8_t>(packed[j - 4] | ((ls >> 4) << 6));
        packed[j] = static_cast<uint8_t>(packed[j] | ((lm >> 4) << 6));
      }
      uint8_t sc = 0;
      uint8_t m = 0;
      gguf::get_scale_min_k4(j, packed, sc, m);
      EXPECT_EQ(sc, ls);
      EXPECT_EQ(m, lm);
    }
  }
}

// ---- hand-derived blocks ------------------------------------------------------------------------

TEST(GgufQ4_0, HandDerivedBlock) {
  // x[0] = 1, x[1] = -2 (largest |x|: max = -2), x[2] = 0.125, x[3] = -0.125, x[16] = 0.5,
  // x[17] = 1.99, all others 0.
  // d = max / -8 = 0.25 -> fp16 0x3400 (bytes 00 34); id = 4.
  // code = MIN(15, trunc(x * 4 + 8.5)):
  //   x[0]: 4 + 8.5 = 12.5 -> 12          x[16]: 2 + 8.5 = 10.5 -> 10
  //   x[1]: -8 + 8.5 = 0.5 -> 0           x[17]: 7.96 + 8.5 = 16.46 -> 16 -> 15
  //   x[2]: 0.5 + 8.5 = 9 -> 9 (a tie goes up: round-half-even would give 8)
  //   x[3]: -0.5 + 8.5 = 8 -> 8 (a tie goes up, towards +inf)
  //   zeros: 8.5 -> 8
  // qs[j] = code j | code (j + 16) << 4: qs[0] = 12 | 10 << 4 = 0xAC, qs[1] = 0 | 15 << 4 = 0xF0,
  // qs[2] = 9 | 8 << 4 = 0x89, qs[3..15] = 0x88.
  std::vector<float> x(32, 0.0f);
  x[0] = 1.0f;
  x[1] = -2.0f;
  x[2] = 0.125f;
  x[3] = -0.125f;
  x[16] = 0.5f;
  x[17] = 1.99f;
  std::vector<uint8_t> expected = {0x00, 0x34, 0xAC, 0xF0, 0x89};
  expected.resize(18, 0x88);
  const std::vector<uint8_t> blocks = quantize(GgmlType::q4_0, x);
  EXPECT_EQ(blocks, expected);
  // (code - 8) * 0.25
  const std::vector<float> y = dequantize(GgmlType::q4_0, blocks, 32);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -2.0f);
  EXPECT_EQ(y[2], 0.25f);
  EXPECT_EQ(y[3], 0.0f);
  EXPECT_EQ(y[16], 0.5f);
  EXPECT_EQ(y[17], 1.75f);
  EXPECT_EQ(y[31], 0.0f);
}

TEST(GgufQ8_0, HandDerivedBlock) {
  // amax = 63.5 -> d = 63.5 / 127 = 0.5 -> fp16 0x3800 (bytes 00 38); id = 2.
  // qs = roundf(x * 2), half away from zero:
  //   63.5 -> 127 (0x7F), -63.5 -> -127 (0x81), 0.25 -> 0.5 -> 1, -0.25 -> -0.5 -> -1 (0xFF),
  //   0.75 -> 1.5 -> 2, 1.25 -> 2.5 -> 3 (round-half-even would give 2), -1.3 -> -2.6 -> -3
  //   (0xFD), zeros -> 0.
  std::vector<float> x(32, 0.0f);
  const float head[] = {63.5f, -63.5f, 0.25f, -0.25f, 0.75f, 1.25f, -1.3f};
  std::copy(std::begin(head), std::end(head), x.begin());
  std::vector<uint8_t> expected = {0x00, 0x38, 0x7F, 0x81, 0x01, 0xFF, 0x02, 0x03, 0xFD};
  expected.resize(34, 0x00);
  const std::vector<uint8_t> blocks = quantize(GgmlType::q8_0, x);
  EXPECT_EQ(blocks, expected);
  const std::vector<float> y = dequantize(GgmlType::q8_0, blocks, 32);  // qs * 0.5
  EXPECT_EQ(y[0], 63.5f);
  EXPECT_EQ(y[1], -63.5f);
  EXPECT_EQ(y[2], 0.5f);
  EXPECT_EQ(y[5], 1.5f);
  EXPECT_EQ(y[6], -1.5f);
}

// ---- round trip on Gaussian rows ----------------------------------------------------------------

// Relative RMS error sqrt(sum (y - x)^2 / sum x^2) on unit Gaussian rows of 4096, per type.
// Model for the 32-blocks: step / sqrt(12) with step = 2 * amax / 15 (Q4_0: the extreme takes the
// -8 side, so 16 levels span 2 * amax with the top one unused), (max - min) / 15 (Q4_1), and
// amax / 127 (Q8_0); amax of 32 normals ~2.1 sigma, the range ~4.1 sigma: Q4_0 ~0.081,
// Q4_1 ~0.079, Q8_0 ~0.0048. Measured (seed 11): Q4_0 0.0849, Q4_1 0.0781, Q8_0 0.00521, Q4_K
// 0.0716 (its search and 6-bit sub-scales beat Q4_1 at the same 4 bits), Q6_K 0.0176, Q2_K
// 0.294 (4 levels per 16 weights).
// Tolerances are the measured values plus ~10%.
double round_trip_tolerance(GgmlType type) {
  switch (type) {
    case GgmlType::q4_0:
      return 0.094;
    case GgmlType::q4_1:
      return 0.086;
    case GgmlType::q8_0:
      return 0.0058;
    case GgmlType::q2_K:
      return 0.324;
    case GgmlType::q4_K:
      return 0.079;
    case GgmlType::q6_K:
      return 0.0194;
  }
  return 0.0;
}

TEST(GgufQ2_K, HandDerivedBlockDequantizes) {
  // ggml-common.h block_q2_K and dequantize_row_q2_K: weight e = d * (sc & 15) * code -
  // dmin * (sc >> 4), sc = scales[e / 16], code = bits 2i..2i+1 of qs[32 (e / 128) + e % 32] with
  // i = (e % 128) / 32. Block: d = 1, dmin = 0.5, every sc = 0x21 (scale 1, min 2), qs[0] = 0xE4
  // = 0b11100100: codes 0, 1, 2, 3 for weights 0, 32, 64, 96, so -1, 0, 1, 2; every other
  // byte 0: code 0, weight -1. Sub-block 0 with sc = 0x03 instead: weight 0 = 3 * 0 - 0 = 0.
  gguf::block_q2_K block{};
  for (uint8_t& sc : block.scales)
    sc = 0x21;
  block.qs[0] = 0xE4;
  block.d = nibble::from_float<nibble::fp16>(1.0f);
  block.dmin = nibble::from_float<nibble::fp16>(0.5f);
  std::vector<uint8_t> bytes(sizeof block);
  std::memcpy(bytes.data(), &block, sizeof block);
  const std::vector<float> y = dequantize(GgmlType::q2_K, bytes, 256);
  EXPECT_EQ(y[0], -1.0f);
  EXPECT_EQ(y[32], 0.0f);
  EXPECT_EQ(y[64], 1.0f);
  EXPECT_EQ(y[96], 2.0f);
  EXPECT_EQ(y[1], -1.0f);
  EXPECT_EQ(y[255], -1.0f);
  block.scales[0] = 0x03;
  std::memcpy(bytes.data(), &block, sizeof block);
  EXPECT_EQ(dequantize(GgmlType::q2_K, bytes, 256)[0], 0.0f);
}

TEST(GgufQ2_K, QuantizesGaussianRowsAndZeroBlocks) {
  const std::vector<float> x = nibble::testing::gaussian(4 * 256, 71);
  const std::vector<uint8_t> blocks = quantize(GgmlType::q2_K, x);
  const std::vector<float> y = dequantize(GgmlType::q2_K, blocks, static_cast<int64_t>(x.size()));
  double error = 0, norm = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    error += (x[i] - y[i]) * double(x[i] - y[i]);
    norm += x[i] * double(x[i]);
  }
  // 2 bits with a 4-bit scale and min per 16 weights: llama.cpp's Q2_K gives ~0.3 relative RMS
  // on Gaussian data (4 levels per group); 0.45 leaves margin without admitting a broken search.
  EXPECT_LT(std::sqrt(error / norm), 0.45);
  EXPECT_GT(std::sqrt(error / norm), 0.1);
  const std::vector<float> zeros(256, 0.0f);
  const std::vector<uint8_t> zero_block = quantize(GgmlType::q2_K, zeros);
  EXPECT_EQ(zero_block, std::vector<uint8_t>(84, 0));
  EXPECT_EQ(dequantize(GgmlType::q2_K, zero_block, 256), zeros);
}

TEST(GgufRoundTrip, GaussianRowsWithinTolerance) {
  const int64_t k = 4096;
  const std::vector<float> x = nibble::testing::gaussian(k, 11);
  for (GgmlType type : kAllTypes) {
    const std::vector<float> y = dequantize(type, quantize(type, x), k);
    double error = 0.0;
    double energy = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      const double diff = static_cast<double>(y[i]) - static_cast<double>(x[i]);
      error += diff * diff;
      energy += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    }
    const double relative_rms = std::sqrt(error / energy);
    EXPECT_LT(relative_rms, round_trip_tolerance(type)) << gguf::type_name(type);
    EXPECT_GT(relative_rms, round_trip_tolerance(type) / 4) << gguf::type_name(type);
  }
}

// ---- odd blocks ---------------------------------------------------------------------------------

TEST(GgufOddBlocks, AllZeroRows) {
  for (GgmlType type : kAllTypes) {
    const int64_t k = gguf::block_size(type) * 2;
    const std::vector<float> x(static_cast<std::size_t>(k), 0.0f);
    const std::vector<uint8_t> blocks = quantize(type, x);
    std::vector<uint8_t> expected(blocks.size(), 0x00);
    if (type == GgmlType::q4_0) {
      // max stays at its initial +0, d = +0 / -8 = -0 (fp16 0x8000), codes trunc(8.5) = 8.
      for (std::size_t b = 0; b < 2; ++b) {
        std::fill(expected.begin() + static_cast<std::ptrdiff_t>(18 * b + 2),
                  expected.begin() + static_cast<std::ptrdiff_t>(18 * b + 18), uint8_t{0x88});
        expected[18 * b + 1] = 0x80;
      }
    }
    // Q4_1: d = (0 - 0) / 15 = 0, m = 0, codes 0. Q8_0: d = 0, qs 0. Q4_K: scale 0, min 0 for
    // every sub-block, so d = dmin = 0, 6-bit values 0, codes 0. Q6_K: the all-zero block.
    EXPECT_EQ(blocks, expected) << gguf::type_name(type);
    for (float value : dequantize(type, blocks, k))
      EXPECT_EQ(value, 0.0f) << gguf::type_name(type);
  }
}

TEST(GgufOddBlocks, OneHugeValueIsKeptAndTheRestStayFinite) {
  for (GgmlType type : kAllTypes) {
    const int64_t k = gguf::block_size(type);
    std::vector<float> x = nibble::testing::gaussian(k, 5, 0.01f);
    x[5] = 1000.0f;
    const std::vector<float> y = dequantize(type, quantize(type, x), k);
    // Q4_0: the extreme maps to code 0 exactly, d = 1000 / -8 = -125 (exact in fp16). Q8_0:
    // 127 * fp16(1000 / 127) = 127 * 7.875 = 1000.125. K-quants: within half a step.
    const double step = type == GgmlType::q8_0 ? 1000.0 / 127 : 1000.0 / 15;
    EXPECT_NEAR(y[5], 1000.0f, step / 2 + 1.0) << gguf::type_name(type);
    if (type == GgmlType::q4_0) {
      EXPECT_EQ(y[5], 1000.0f);
    }
    if (type == GgmlType::q8_0) {
      EXPECT_EQ(y[5], 1000.125f);
    }
    for (int64_t i = 0; i < k; ++i) {
      EXPECT_TRUE(std::isfinite(y[i]));
      if (i != 5 && (type == GgmlType::q4_0 || type == GgmlType::q8_0)) {
        EXPECT_EQ(y[i], 0.0f) << i;  // |x| = 0.01 < half a step
      }
    }
  }
}

TEST(GgufOddBlocks, NegativeAndPositiveExtremes) {
  // Q4_0: the signed extreme decides d's sign and takes code 0; an opposite value of equal
  // magnitude would need code 16 and clamps to 15. The first of two equal |x| wins.
  std::vector<float> x(32, 0.0f);
  x[3] = -4.0f;
  x[4] = 4.0f;
  std::vector<uint8_t> q = quantize(GgmlType::q4_0, x);
  EXPECT_EQ(u16_at(q, 0), 0x3800);  // d = -4 / -8 = 0.5
  EXPECT_EQ(q[2 + 3], 0x80);        // code 0 (x[3]) | code 8 (x[19]) << 4
  EXPECT_EQ(q[2 + 4], 0x8F);        // code 15 (x[4]: 16 clamped)
  std::swap(x[3], x[4]);
  q = quantize(GgmlType::q4_0, x);
  EXPECT_EQ(u16_at(q, 0), 0xB800);  // d = 4 / -8 = -0.5
  EXPECT_EQ(q[2 + 3], 0x80);        // x[3] = 4: 4 * -2 + 8.5 -> 0
  EXPECT_EQ(q[2 + 4], 0x8F);        // x[4] = -4 -> 16 -> 15
  // Q8_0: symmetric, -amax -> -127.
  x.assign(32, 0.0f);
  x[0] = -3.0f;
  x[1] = 1.5f;
  q = quantize(GgmlType::q8_0, x);
  EXPECT_EQ(static_cast<int8_t>(q[2]), -127);
  EXPECT_EQ(static_cast<int8_t>(q[3]), 64);  // 1.5 * 127 / 3 = 63.5 -> 64 (away from zero)
  // Q4_1: the minimum is stored as m and takes code 0.
  x.assign(32, 1.0f);
  x[7] = -5.0f;
  q = quantize(GgmlType::q4_1, x);
  EXPECT_EQ(u16_at(q, 2), 0xC500);  // m = -5
  EXPECT_EQ(q[4 + 7] & 0x0F, 0);
  EXPECT_EQ(dequantize(GgmlType::q4_1, q, 32)[7], -5.0f);
  // K-quants: an all-negative and an all-positive row round-trip within their tolerances.
  for (GgmlType type : {GgmlType::q4_K, GgmlType::q6_K}) {
    for (float sign : {-1.0f, 1.0f}) {
      std::vector<float> row = nibble::testing::gaussian(256, 9);
      for (float& value : row)
        value = sign * (std::fabs(value) + 0.5f);
      const std::vector<float> y = dequantize(type, quantize(type, row), 256);
      for (int i = 0; i < 256; ++i)
        EXPECT_NEAR(y[i], row[i], 0.25) << gguf::type_name(type) << " " << i;
    }
  }
}

TEST(GgufOddBlocks, SignedZeroScaleFollowsTheCCode) {
  // An all-zero Q4_0 block gets d = -0 in quantize_row_q4_0_ref whatever the zeros' signs (max
  // keeps its initial +0.0f); gguf-py takes max = x[argmax |x|] = x[0], so a leading -0 gives
  // +0 there (checked against gguf-py's bytes in GgufVectors below).
  std::vector<float> x(32, -0.0f);
  EXPECT_EQ(u16_at(quantize(GgmlType::q4_0, x), 0), 0x8000);
  // Q4_1: the C loop's strict comparisons keep min = max = x[0], so m has x[0]'s sign and
  // d = (x[0] - x[0]) / 15 = +0.
  x[0] = 0.0f;
  std::vector<uint8_t> q = quantize(GgmlType::q4_1, x);
  EXPECT_EQ(u16_at(q, 0), 0x0000);
  EXPECT_EQ(u16_at(q, 2), 0x0000);
  x[0] = -0.0f;
  q = quantize(GgmlType::q4_1, x);
  EXPECT_EQ(u16_at(q, 2), 0x8000);
}

TEST(GgufOddBlocks, Fp16ScaleLimit) {
  // Q4_0: d = -524000 / -8 = 65500 rounds to 65504 (fp16 0x7BFF); -524288 / -8 = 65536
  // rounds to Inf, which nibble refuses.
  std::vector<float> x(32, 1.0f);
  x[9] = -524000.0f;
  EXPECT_EQ(u16_at(quantize(GgmlType::q4_0, x), 0), 0x7BFF);
  x[9] = -524288.0f;
  const std::string message = error_message_of([&] { quantize(GgmlType::q4_0, x); });
  EXPECT_NE(message.find("overflows fp16"), std::string::npos) << message;
  EXPECT_EQ(error_code_of([&] { quantize(GgmlType::q4_0, x); }), ErrorCode::non_finite);
  // Q8_0: d = amax / 127 overflows from 127 * 65520 on; Q4_1: m = min overflows at -65520.
  x.assign(32, 0.0f);
  x[0] = 127.0f * 65520.0f;
  EXPECT_EQ(error_code_of([&] { quantize(GgmlType::q8_0, x); }), ErrorCode::non_finite);
  x[0] = -65520.0f;
  EXPECT_EQ(error_code_of([&] { quantize(GgmlType::q4_1, x); }), ErrorCode::non_finite);
  std::vector<float> wide = nibble::testing::gaussian(256, 4);
  wide[0] = 3e9f;  // d = scale / 63 with scale ~ 3e9 / 15
  EXPECT_EQ(error_code_of([&] { quantize(GgmlType::q4_K, wide); }), ErrorCode::non_finite);
  EXPECT_EQ(error_code_of([&] { quantize(GgmlType::q6_K, wide); }), ErrorCode::non_finite);
}

TEST(GgufOddBlocks, Fp32SubnormalWeightsGiveZeroBlocks) {
  // 1 / d overflows (|d| < 2^-128): ggml's float -> int conversion is undefined there; nibble
  // writes code 0 (what x86 and gguf-py give). The fp16 d is 0 either way, so y = 0.
  for (GgmlType type : kAllTypes) {
    const int64_t k = gguf::block_size(type);
    std::vector<float> x = nibble::testing::gaussian(k, 6);
    for (float& value : x)
      value *= 1e-40f;
    const std::vector<float> y = dequantize(type, quantize(type, x), k);
    for (float value : y)
      EXPECT_EQ(value, 0.0f) << gguf::type_name(type);
  }
}

// ---- bad input ----------------------------------------------------------------------------------

TEST(GgufErrors, BadRowLengthNullAndNonFinite) {
  std::vector<float> x(512, 0.5f);
  std::vector<uint8_t> blocks(4096);
  std::vector<float> y(512);
  for (GgmlType type : kAllTypes) {
    const int64_t block = gguf::block_size(type);
    for (int64_t k : {int64_t{0}, int64_t{-1}, block + 1, block / 2 + 1}) {
      EXPECT_EQ(error_code_of([&] { gguf::quantize_row(type, x.data(), k, blocks.data()); }),
                ErrorCode::shape_mismatch);
      EXPECT_EQ(error_code_of([&] { gguf::dequantize_row(type, blocks.data(), k, y.data()); }),
                ErrorCode::shape_mismatch);
    }
    EXPECT_EQ(error_code_of([&] { gguf::quantize_row(type, nullptr, block, blocks.data()); }),
              ErrorCode::null_pointer);
    EXPECT_EQ(error_code_of([&] { gguf::quantize_row(type, x.data(), block, nullptr); }),
              ErrorCode::null_pointer);
    EXPECT_EQ(error_code_of([&] { gguf::dequantize_row(type, nullptr, block, y.data()); }),
              ErrorCode::null_pointer);
    EXPECT_EQ(error_code_of([&] { gguf::dequantize_row(type, blocks.data(), block, nullptr); }),
              ErrorCode::null_pointer);
    for (float bad :
         {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
          -std::numeric_limits<float>::infinity()}) {
      x[37] = bad;
      EXPECT_EQ(error_code_of([&] { gguf::quantize_row(type, x.data(), 512, blocks.data()); }),
                ErrorCode::non_finite);
      x[37] = 0.5f;
    }
  }
  const std::string message =
      error_message_of([&] { gguf::quantize_row_q4_K(x.data(), 100, blocks.data()); });
  EXPECT_NE(message.find("k = 100"), std::string::npos) << message;
  EXPECT_NE(message.find("256"), std::string::npos) << message;
  x[37] = std::numeric_limits<float>::quiet_NaN();
  const std::string nan_message =
      error_message_of([&] { gguf::quantize_row_q8_0(x.data(), 64, blocks.data()); });
  EXPECT_NE(nan_message.find("x[37]"), std::string::npos) << nan_message;
  EXPECT_NE(nan_message.find("block 1"), std::string::npos) << nan_message;
}

// ---- gguf-py's vectors --------------------------------------------------------------------------

struct VectorCase {
  std::string name;
  GgmlType type;
  int64_t k = 0;
  std::vector<float> input;  // empty for dequantize-only cases
  std::vector<uint8_t> blocks;
  std::vector<float> dequantized;
};

struct Vectors {
  std::string provenance;
  std::vector<VectorCase> cases;
};

// The format is described in tests/reference/gguf_vectors.py (little-endian, like this host).
Vectors read_vectors() {
  nibble::testing::FixtureFile file(nibble::testing::reference_path("gguf_vectors.bin"),
                                    "gguf_vectors.py", "NBGGUFV1");
  Vectors vectors;
  vectors.provenance = file.text();
  const uint32_t n_cases = file.u32();
  for (uint32_t c = 0; c < n_cases; ++c) {
    VectorCase vc;
    vc.name = file.text();
    vc.type = gguf::type_info_from_id(file.u32()).type;
    const bool has_input = file.u32() != 0;
    vc.k = file.u32();
    if (has_input) vc.input = file.values<float>(static_cast<std::size_t>(vc.k));
    vc.blocks = file.values<uint8_t>(file.u32());
    vc.dequantized = file.values<float>(static_cast<std::size_t>(vc.k));
    vectors.cases.push_back(std::move(vc));
  }
  file.expect_end();
  return vectors;
}

const Vectors& vectors() {
  static const Vectors loaded = read_vectors();
  return loaded;
}

// Byte offsets of a block's fp16 fields: the only bytes where the signed-zero cases may differ.
bool is_fp16_sign_byte(GgmlType type, std::size_t offset_in_block) {
  switch (type) {
    case GgmlType::q4_1:
      return offset_in_block == 1 || offset_in_block == 3;
    default:
      return offset_in_block == 1;
  }
}

TEST(GgufVectors, FixtureIsGgufPy0_19AndCoversEveryType) {
  const Vectors& v = vectors();
  EXPECT_EQ(v.provenance.rfind("gguf 0.19.0;", 0), 0u) << v.provenance;
  for (GgmlType type : kAllTypes) {
    int quantized = 0;
    int dequantized = 0;
    for (const VectorCase& vc : v.cases) {
      if (vc.type != type) continue;
      ++dequantized;
      if (!vc.input.empty()) ++quantized;
    }
    EXPECT_GE(dequantized, 1) << gguf::type_name(type);
    const bool gguf_py_quantizes =
        type == GgmlType::q4_0 || type == GgmlType::q4_1 || type == GgmlType::q8_0;
    if (gguf_py_quantizes) {
      EXPECT_GE(quantized, 7) << gguf::type_name(type);
    }
  }
}

TEST(GgufVectors, BytesEqualGgufPysWhereItQuantizes) {
  for (const VectorCase& vc : vectors().cases) {
    if (vc.input.empty()) continue;
    SCOPED_TRACE(std::string(gguf::type_name(vc.type)) + " " + vc.name);
    const std::vector<uint8_t> ours = quantize(vc.type, vc.input);
    ASSERT_EQ(ours.size(), vc.blocks.size());
    if (vc.name.rfind("signed_zero", 0) != 0) {
      EXPECT_EQ(ours, vc.blocks);
      continue;
    }
    // All-zero blocks with -0 inputs: gguf-py and the C code may disagree on the sign of a zero
    // d / m (see SignedZeroScaleFollowsTheCCode); nibble follows C. Everything else is equal.
    const auto type_size = static_cast<std::size_t>(gguf::type_size(vc.type));
    for (std::size_t i = 0; i < ours.size(); ++i) {
      if (is_fp16_sign_byte(vc.type, i % type_size)) {
        EXPECT_EQ(ours[i] & 0x7F, vc.blocks[i] & 0x7F) << "byte " << i;
      } else {
        EXPECT_EQ(ours[i], vc.blocks[i]) << "byte " << i;
      }
    }
  }
}

TEST(GgufVectors, SignedZeroDifferencesAreExactlyTheKnownOnes) {
  // gguf-py 0.19.0 vs quantize_row_*_ref on the three signed-zero rows (x[0], rest):
  //   Q4_0 d: gguf-py -(x[0]) / 8 -> +0 when x[0] = -0; C always -0.
  //   Q4_1 m: gguf-py np.min (its pick among +-0 depends on numpy's SIMD path); C x[0].
  // Q8_0 agrees (both take d = max |x| / 127 = +0).
  int differing = 0;
  for (const VectorCase& vc : vectors().cases) {
    if (vc.name.rfind("signed_zero", 0) != 0) continue;
    const std::vector<uint8_t> ours = quantize(vc.type, vc.input);
    const bool x0_negative = std::signbit(vc.input[0]);
    switch (vc.type) {
      case GgmlType::q4_0:
        EXPECT_EQ(u16_at(ours, 0), 0x8000) << vc.name;
        EXPECT_EQ(u16_at(vc.blocks, 0), x0_negative ? 0x0000 : 0x8000) << vc.name;
        break;
      case GgmlType::q4_1:
        EXPECT_EQ(u16_at(ours, 0), 0x0000) << vc.name;
        EXPECT_EQ(u16_at(ours, 2), x0_negative ? 0x8000 : 0x0000) << vc.name;
        break;
      default:
        EXPECT_EQ(ours, vc.blocks) << vc.name;
    }
    differing += ours != vc.blocks ? 1 : 0;
  }
  EXPECT_GE(differing, 2);  // the fixture does exercise the difference
}

TEST(GgufVectors, DequantizedValuesEqualGgufPysForEveryType) {
  for (const VectorCase& vc : vectors().cases) {
    SCOPED_TRACE(std::string(gguf::type_name(vc.type)) + " " + vc.name);
    const std::vector<float> ours = dequantize(vc.type, vc.blocks, vc.k);
    ASSERT_EQ(ours.size(), vc.dequantized.size());
    int mismatches = 0;
    for (std::size_t i = 0; i < ours.size(); ++i) {
      if (float_bits(ours[i]) != float_bits(vc.dequantized[i]) && ++mismatches <= 5) {
        ADD_FAILURE() << "y[" << i << "] = " << ours[i] << ", gguf-py " << vc.dequantized[i];
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

// ---- canonical <-> blocks without requantizing -------------------------------------------------
// Truth: llama.cpp's own dequantizers (dequantize_row_*, bit-exact with gguf-py above) on one side
// and dequantize_ref on the other: a conversion is lossless iff every value agrees bit for bit.

std::vector<float> dequantize_rows(GgmlType type, const std::vector<uint8_t>& blocks, int64_t rows,
                                   int64_t k) {
  std::vector<float> y(static_cast<std::size_t>(rows * k));
  const int64_t row_bytes = gguf::row_size(type, k);
  for (int64_t row = 0; row < rows; ++row)
    gguf::dequantize_row(type, blocks.data() + row * row_bytes, k, y.data() + row * k);
  return y;
}

std::vector<uint8_t> quantize_rows(GgmlType type, const std::vector<float>& x, int64_t rows,
                                   int64_t k) {
  std::vector<uint8_t> blocks(static_cast<std::size_t>(rows * gguf::row_size(type, k)));
  const int64_t row_bytes = gguf::row_size(type, k);
  for (int64_t row = 0; row < rows; ++row)
    gguf::quantize_row(type, x.data() + row * k, k, blocks.data() + row * row_bytes);
  return blocks;
}

void expect_bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i)
    ASSERT_EQ(float_bits(a[i]), float_bits(b[i]))
        << "element " << i << ": " << a[i] << " vs " << b[i];
}

TEST(GgufCanonical, LlamaCppBlocksImportAndExportUnchanged) {
  // Q4_0 and Q8_0 from llama.cpp's quantizers: import, compare values, export, compare bytes.
  const int64_t rows = 3;
  const int64_t k = 96;
  const std::vector<float> x = nibble::testing::gaussian(rows * k, 41);
  for (GgmlType type : {GgmlType::q4_0, GgmlType::q8_0}) {
    SCOPED_TRACE(gguf::type_name(type));
    const std::vector<uint8_t> blocks = quantize_rows(type, x, rows, k);
    const auto canonical = gguf::from_blocks<nibble::fp16>(
        blocks.data(), static_cast<int64_t>(blocks.size()), type, nibble::Shape{rows, k});
    EXPECT_EQ(canonical.config().group_size, 32);
    EXPECT_TRUE(canonical.config().symmetric);
    expect_bit_equal(nibble::dequantize_ref(canonical.view()),
                     dequantize_rows(type, blocks, rows, k));
    EXPECT_EQ(gguf::to_blocks(canonical.view()), blocks);
    // Float scales hold the same numbers.
    const auto wide = gguf::from_blocks<float>(blocks.data(), static_cast<int64_t>(blocks.size()),
                                               type, nibble::Shape{rows, k});
    EXPECT_EQ(gguf::to_blocks(wide.view()), blocks);
  }
}

TEST(GgufCanonical, NibbleTensorsExportToBlocksWithTheSameValues) {
  // A tensor quantized by nibble (4-bit sym g32 and 8-bit sym g32, fp16 scales) becomes Q4_0 /
  // Q8_0 whose llama.cpp dequantization equals nibble's, and comes back byte for byte.
  const int64_t rows = 4;
  const int64_t k = 64;
  const std::vector<float> x = nibble::testing::gaussian(rows * k, 42);
  const nibble::TensorView<const float> view(x.data(), {rows, k});
  for (int bits : {4, 8}) {
    SCOPED_TRACE(bits);
    const auto q = nibble::quantize<nibble::fp16>(
        view, nibble::QuantConfig{bits, 32, true, nibble::ConventionId::ort});
    const GgmlType type = gguf::type_for(q.config());
    EXPECT_EQ(type, bits == 4 ? GgmlType::q4_0 : GgmlType::q8_0);
    const std::vector<uint8_t> blocks = gguf::to_blocks(q.view());
    expect_bit_equal(dequantize_rows(type, blocks, rows, k), nibble::dequantize(q));
    const auto back =
        gguf::from_blocks<nibble::fp16>(blocks.data(), static_cast<int64_t>(blocks.size()), type,
                                        nibble::Shape{rows, k}, nibble::ConventionId::ort);
    EXPECT_EQ(back.qweight(), q.qweight());
    EXPECT_EQ(back.scales(), q.scales());
  }
}

TEST(GgufCanonical, Q4_1WhereTheMinIsAMultipleOfTheScale) {
  // Asymmetric 4-bit with scales that are powers of two: -z * s is exact in fp16, so Q4_1 holds
  // it. Built by hand: row r, group g has scale 2^-(r+g) and zero point (3r + g) % 16.
  const int64_t rows = 2;
  const int64_t k = 64;
  nibble::QuantTensor<nibble::fp16> q(
      nibble::Shape{rows, k}, nibble::QuantConfig{4, 32, false, nibble::ConventionId::olive});
  std::vector<uint8_t> codes(static_cast<std::size_t>(k));
  std::vector<uint8_t> zeros(static_cast<std::size_t>(q.zero_slots()));
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t col = 0; col < k; ++col)
      codes[static_cast<std::size_t>(col)] = static_cast<uint8_t>((7 * col + row) % 16);
    for (int64_t g = 0; g < 2; ++g) {
      zeros[static_cast<std::size_t>(g)] = static_cast<uint8_t>((3 * row + g) % 16);
      q.scales()[static_cast<std::size_t>(row * 2 + g)] =
          nibble::from_float<nibble::fp16>(std::ldexp(1.0f, -static_cast<int>(row + g)));
    }
    q.pack_row(row, codes.data(), zeros.data());
  }
  EXPECT_EQ(gguf::type_for(q.config()), GgmlType::q4_1);
  const std::vector<uint8_t> blocks = gguf::to_blocks(q.view());
  expect_bit_equal(dequantize_rows(GgmlType::q4_1, blocks, rows, k), nibble::dequantize(q));
  const auto back = gguf::from_blocks<nibble::fp16>(
      blocks.data(), static_cast<int64_t>(blocks.size()), GgmlType::q4_1, nibble::Shape{rows, k});
  EXPECT_EQ(back.qweight(), q.qweight());
  EXPECT_EQ(back.zeros(), q.zeros());
  EXPECT_EQ(back.scales(), q.scales());

  // The general case is not representable, both ways, and the message says which block.
  const std::vector<float> x = nibble::testing::gaussian(rows * k, 43);
  const std::vector<uint8_t> llama = quantize_rows(GgmlType::q4_1, x, rows, k);
  const std::string message = error_message_of([&] {
    gguf::from_blocks<nibble::fp16>(llama.data(), static_cast<int64_t>(llama.size()),
                                    GgmlType::q4_1, nibble::Shape{rows, k});
  });
  EXPECT_NE(message.find("Q4_1 row 0 block 0: min m = "), std::string::npos) << message;
  EXPECT_NE(message.find("dequantize instead"), std::string::npos) << message;
  const auto nibble_asym = nibble::quantize<nibble::fp16>(
      nibble::TensorView<const float>(x.data(), {rows, k}),
      nibble::QuantConfig{4, 32, false, nibble::ConventionId::olive});
  const std::string export_message = error_message_of([&] { gguf::to_blocks(nibble_asym.view()); });
  EXPECT_NE(export_message.find("min (-zero * scale)"), std::string::npos) << export_message;
}

TEST(GgufCanonical, Q4_KImportsWhenItsOffsetsAreWholeZeroPoints) {
  // One super-block built by hand: d = 0.5, dmin = 0.25; sub-block s < 4 has sc = s + 1 and
  // m = 2 * (s + 1) * z_s with z_s = s + 2, so dmin * m = 0.5 * (s + 1) * z_s = z_s * d * sc;
  // sub-blocks 4..7 have sc = m = 0 (scale 0, offset 0: zero point 0).
  gguf::block_q4_K block{};
  block.d = nibble::from_float<nibble::fp16>(0.5f);
  block.dmin = nibble::from_float<nibble::fp16>(0.25f);
  for (int s = 0; s < 4; ++s) {
    block.scales[s] = static_cast<uint8_t>(s + 1);
    block.scales[s + 4] = static_cast<uint8_t>(2 * (s + 1) * (s + 2));
  }
  for (int i = 0; i < 128; ++i)
    block.qs[i] = static_cast<uint8_t>((i * 37 + 11) & 0xff);
  std::vector<uint8_t> bytes(sizeof block);
  std::memcpy(bytes.data(), &block, sizeof block);
  const auto canonical = gguf::from_blocks<float>(bytes.data(), static_cast<int64_t>(bytes.size()),
                                                  GgmlType::q4_K, nibble::Shape{1, 256});
  expect_bit_equal(nibble::dequantize_ref(canonical.view()),
                   dequantize_rows(GgmlType::q4_K, bytes, 1, 256));
  EXPECT_EQ(canonical.view().zero_point(0, 2), 4);
  // The other way needs requantizing, and says so; llama.cpp's own Q4_K blocks rarely import.
  EXPECT_EQ(error_code_of([&] {
              gguf::type_for(nibble::QuantConfig{4, 256, false});
            }),
            ErrorCode::unsupported);
  const std::vector<float> x = nibble::testing::gaussian(256, 44);
  const std::vector<uint8_t> llama = quantize_rows(GgmlType::q4_K, x, 1, 256);
  EXPECT_NE(error_message_of([&] {
              gguf::from_blocks<float>(llama.data(), static_cast<int64_t>(llama.size()),
                                       GgmlType::q4_K, nibble::Shape{1, 256});
            }).find("is not an integer multiple (0..15) of the scale"),
            std::string::npos);
}

TEST(GgufCanonical, UnrepresentableRequestsAreRefusedSayingWhy) {
  const std::vector<float> x = nibble::testing::gaussian(2 * 64, 45);
  const nibble::TensorView<const float> view(x.data(), {2, 64});
  // Group 64: no block type.
  const auto g64 = nibble::quantize<nibble::fp16>(view, nibble::QuantConfig{4, 64, true});
  EXPECT_NE(
      error_message_of([&] { gguf::to_blocks(g64.view()); }).find("quantize with group_size 32"),
      std::string::npos);
  // 2 bits, 8-bit asymmetric: no block type here.
  EXPECT_EQ(error_code_of([&] {
              gguf::type_for(nibble::QuantConfig{2, 32, true});
            }),
            ErrorCode::unsupported);
  EXPECT_EQ(error_code_of([&] {
              gguf::type_for(nibble::QuantConfig{8, 32, false});
            }),
            ErrorCode::unsupported);
  // Float scales that fp16 cannot hold.
  const auto wide = nibble::quantize<float>(view, nibble::QuantConfig{4, 32, true});
  EXPECT_NE(error_message_of([&] {
              gguf::to_blocks(wide.view());
            }).find("is not exactly representable in fp16"),
            std::string::npos);
  // K not whole blocks.
  const std::vector<float> odd = nibble::testing::gaussian(2 * 48, 46);
  const auto ragged = nibble::quantize<nibble::fp16>(
      nibble::TensorView<const float>(odd.data(), {2, 48}), nibble::QuantConfig{4, 32, true});
  EXPECT_NE(error_message_of([&] { gguf::to_blocks(ragged.view()); }).find("whole blocks"),
            std::string::npos);
  // Q6_K has no canonical form; a wrong byte count is an error.
  std::vector<uint8_t> q6(static_cast<std::size_t>(gguf::row_size(GgmlType::q6_K, 256)));
  EXPECT_NE(error_message_of([&] {
              gguf::from_blocks<float>(q6.data(), static_cast<int64_t>(q6.size()), GgmlType::q6_K,
                                       nibble::Shape{1, 256});
            }).find("6-bit codes"),
            std::string::npos);
  EXPECT_EQ(error_code_of([&] {
              gguf::from_blocks<float>(q6.data(), 10, GgmlType::q4_0, nibble::Shape{1, 256});
            }),
            ErrorCode::buffer_too_small);
}

}  // namespace
