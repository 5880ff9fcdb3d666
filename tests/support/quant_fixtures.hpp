// Canonical tensors built from chosen codes, byte comparisons and error expectations shared by the
// format tests (test_gptq_format, test_awq_format, test_fused).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble::testing {

// The bit pattern of a checkpoint's int32 word (the conversion is modular).
inline uint32_t word_bits(int32_t word) {
  return static_cast<uint32_t>(word);
}

// A canonical [n, k] tensor with code(n, k), zero(n, g) and scale(n, g) given by functions, packed
// here with pack.hpp's BitPacking, not by a quantizer: pad codes and the unused zero-point slots
// are 0 (as the olive convention writes the slots).
template <class ScaleT>
QuantTensor<ScaleT> make_tensor(int64_t n_outputs, int64_t k, const QuantConfig& config,
                                const std::function<int(int64_t, int64_t)>& code,
                                const std::function<int(int64_t, int64_t)>& zero,
                                const std::function<float(int64_t, int64_t)>& scale) {
  QuantTensor<ScaleT> t(Shape{n_outputs, k}, config);
  const RowLayout& layout = t.layout();
  const int64_t zero_slots = layout.zero_row_bytes * (8 / config.bits);
  std::vector<uint8_t> codes(static_cast<std::size_t>(layout.padded_k), 0);
  std::vector<uint8_t> zeros(static_cast<std::size_t>(zero_slots), 0);
  for (int64_t n = 0; n < n_outputs; ++n) {
    for (int64_t col = 0; col < k; ++col)
      codes[static_cast<std::size_t>(col)] = static_cast<uint8_t>(code(n, col));
    for (int64_t g = 0; g < layout.n_groups; ++g) {
      zeros[static_cast<std::size_t>(g)] = static_cast<uint8_t>(zero(n, g));
      t.scales()[static_cast<std::size_t>(n * layout.n_groups + g)] =
          from_float<ScaleT>(scale(n, g));
    }
    t.view().dispatch_bits([&](auto packing) {
      using P = decltype(packing);
      P::pack_row(codes.data(), layout.padded_k, t.qweight().data() + n * layout.packed_row_bytes);
      if (!config.symmetric) {
        P::pack_row(zeros.data(), zero_slots, t.zeros().data() + n * layout.zero_row_bytes);
      }
      return 0;
    });
  }
  return t;
}

// Random codes 0..maxq, zero points min_zero..maxq, Gaussian(0, 0.05) scales, from `seed`.
template <class ScaleT>
QuantTensor<ScaleT> random_tensor(int64_t n_outputs, int64_t k, const QuantConfig& config,
                                  uint32_t seed, int min_zero = 0) {
  std::mt19937 random(seed);
  const int maxq = (1 << config.bits) - 1;
  std::uniform_int_distribution<int> code_dist(0, maxq);
  std::uniform_int_distribution<int> zero_dist(min_zero, maxq);
  std::normal_distribution<float> scale_dist(0.0f, 0.05f);
  return make_tensor<ScaleT>(
      n_outputs, k, config, [&](int64_t, int64_t) { return code_dist(random); },
      [&](int64_t, int64_t) { return zero_dist(random); },
      [&](int64_t, int64_t) { return scale_dist(random); });
}

// A 4-bit config: groups of `group_size` (or kPerChannel), with or without zero points.
inline QuantConfig int4_config(int64_t group_size, bool symmetric) {
  QuantConfig config;
  config.bits = 4;
  config.group_size = group_size;
  config.symmetric = symmetric;
  return config;
}

// The same bytes under another shape with the same rows and K ([E * N, K] as [E, N, K]).
template <class ScaleT>
QuantTensorView<ScaleT> reshaped(const QuantTensor<ScaleT>& t, const Shape& shape) {
  const QuantTensorView<ScaleT> all = t.view();
  return QuantTensorView<ScaleT>(shape, all.config(), all.qweight(), all.qweight_bytes(),
                                 all.scales(), all.scale_count(), all.zeros(), all.zero_bytes());
}

template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Shape, config and every byte of qweight, scales and zeros equal.
template <class ScaleT>
void expect_same_tensor(const QuantTensor<ScaleT>& a, const QuantTensor<ScaleT>& b) {
  EXPECT_EQ(a.shape(), b.shape());
  EXPECT_TRUE(a.config() == b.config());
  EXPECT_EQ(a.qweight(), b.qweight());
  EXPECT_EQ(a.zeros(), b.zeros());
  ASSERT_EQ(a.scales().size(), b.scales().size());
  EXPECT_TRUE(same_bytes(a.scales(), b.scales()));
}

// `call` throws an Error of `code` whose message holds every fragment.
inline void expect_error(const std::function<void()>& call, ErrorCode code,
                         std::initializer_list<const char*> fragments) {
  try {
    call();
    ADD_FAILURE() << "no Error; expected one containing \"" << *fragments.begin() << "\"";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), code) << error.what();
    for (const char* fragment : fragments) {
      EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos)
          << "message \"" << error.what() << "\" lacks \"" << fragment << "\"";
    }
  }
}
inline void expect_error(const std::function<void()>& call, ErrorCode code,
                         const std::string& fragment) {
  expect_error(call, code, {fragment.c_str()});
}

}  // namespace nibble::testing
