// int8 activations (ActivationPrecision::int8): how one row of X is quantized. The single
// definition used by nibble::quantize_activations (the reference the tests check against) and by
// every kernel's preparation, so all ISAs multiply exactly the same codes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace nibble::detail {

// The activation block for weights with `group_size`: the group itself when it is small, else
// the largest power of two <= 256 dividing it (per-channel rows of odd length: the whole row).
inline int64_t activation_block(int64_t group_size) {
  if (group_size <= 256) return group_size;
  for (int64_t block : {256, 128, 64, 32, 16}) {
    if (group_size % block == 0) return block;
  }
  return group_size;
}

// x [padded_k] (pads 0) in blocks of `block` elements: codes[i] = nearbyint(x[i] * 127 / amax),
// scales[b] = amax / 127 and code_sums[b] = sum of the block's codes, amax = max |x| over block b;
// an all-zero block has codes 0 and scale 0.
inline void quantize_activation_row(const float* x, int64_t padded_k, int64_t block, int8_t* codes,
                                    float* scales, int32_t* code_sums) {
  for (int64_t b = 0; b * block < padded_k; ++b) {
    const float* values = x + b * block;
    int8_t* out = codes + b * block;
    float amax = 0.0f;
    for (int64_t i = 0; i < block; ++i)
      amax = std::max(amax, std::fabs(values[i]));
    if (amax == 0.0f) {
      std::fill(out, out + block, int8_t{0});
      scales[b] = 0.0f;
      code_sums[b] = 0;
      continue;
    }
    const float inverse = 127.0f / amax;
    int32_t sum = 0;
    for (int64_t i = 0; i < block; ++i) {
      // nearbyint: round half to even in the default environment; |x| <= amax keeps the code
      // within [-127, 127].
      out[i] = static_cast<int8_t>(std::nearbyint(values[i] * inverse));
      sum += out[i];
    }
    scales[b] = amax / 127.0f;
    code_sums[b] = sum;
  }
}

}  // namespace nibble::detail
