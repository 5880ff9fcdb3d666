// Deterministic test data shared by the unit tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "nibble/core/float16.hpp"

namespace nibble::testing {

// `count` normal(0, stddev) floats from a fixed seed.
inline std::vector<float> gaussian(int64_t count, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 random(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> values(static_cast<std::size_t>(count));
  for (float& value : values)
    value = normal(random);
  return values;
}

// The same values rounded to T (float, fp16 or bf16).
template <class T>
std::vector<T> converted(const std::vector<float>& values) {
  std::vector<T> out;
  out.reserve(values.size());
  for (float value : values)
    out.push_back(from_float<T>(value));
  return out;
}

// Gaussian values where every group of `group_size` along rows of length k holds at least one
// negative and one positive value (so no convention's all-one-sign quirk applies).
inline std::vector<float> gaussian_both_signs(int64_t rows, int64_t k, int64_t group_size,
                                              uint32_t seed) {
  std::vector<float> values = gaussian(rows * k, seed);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t begin = 0; begin < k; begin += group_size) {
      float* group = values.data() + row * k + begin;
      const int64_t size = begin + group_size < k ? group_size : k - begin;
      if (size >= 2) {
        group[0] = -std::abs(group[0]) - 0.1f;
        group[size - 1] = std::abs(group[size - 1]) + 0.1f;
      }
    }
  }
  return values;
}

// Relative RMS error of RTN on unit Gaussian weights with G = 32, per bit width. Model: a step
// of s = range / maxq gives an RMS error of s / sqrt(12); the expected range of 32 normal samples
// (widened here so every group holds both signs) is about 4.1 sigma, so asymmetric 4-bit should
// give ~4.1 / 15 / 3.46 = 0.079 (measured 0.081) and 8-bit ~0.0046 (measured 0.0047). Symmetric
// 2 * amax / maxq scales (olive, ort_weight_only) span twice the larger tail: measured 0.096 at
// 4 bits, 0.0056 at 8. At 2 bits clipping dominates the model: measured 0.36 - 0.47. Each
// tolerance is the worst convention plus ~10%.
inline double rtn_relative_rms_tolerance(int bits) {
  switch (bits) {
    case 2:
      return 0.52;
    case 4:
      return 0.105;
    default:
      return 0.0062;
  }
}

}  // namespace nibble::testing
