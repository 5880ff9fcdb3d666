// Shared by the CUDA tests: skip without a suitable device, poisoned outputs, random inputs.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "nibble/core/float16.hpp"
#include "nibble/cuda/detail/int4_gemm.cuh"
#include "nibble/cuda/device_buffer.cuh"
#include "support/quant_fixtures.hpp"

// Skips the test, saying why, unless device 0 has compute capability >= min_arch.
#define NIBBLE_REQUIRE_GPU(min_arch)                          \
  do {                                                        \
    std::string nibble_why;                                   \
    if (!::nibble::cuda::have_device(min_arch, nibble_why)) { \
      GTEST_SKIP() << nibble_why;                             \
    }                                                         \
  } while (0)

namespace nibble::cuda::testing {

// All bits set: NaN in fp16 and bf16 (and fp32), so an element a kernel never writes fails every
// comparison.
template <class T>
void poison(DeviceBuffer<T>& buffer) {
  check_cuda(cudaMemset(buffer.data(), 0xFF, buffer.bytes()), "poison", "cudaMemset");
}

// Normal(0, spread) values rounded to T, from `seed`.
template <class T>
std::vector<T> random_values(int64_t count, uint32_t seed, float spread = 1.0f) {
  std::mt19937 random(seed);
  std::normal_distribution<float> value(0.0f, spread);
  std::vector<T> out(static_cast<std::size_t>(count));
  for (T& v : out)
    v = from_float<T>(value(random));
  return out;
}

// A problem's random canonical int4 weights, [experts, N, K] (or [N, K]), repacked for a kernel
// and uploaded.
struct Int4Problem {
  int64_t experts;
  int64_t n;
  int64_t k;
  int64_t group_size;  // or kPerChannel
  bool symmetric;
};

template <class S>
struct DeviceInt4 {
  explicit DeviceInt4(QuantTensor<float> tensor) : canonical(std::move(tensor)) {}
  QuantTensor<float> canonical;                // [experts * N, K]
  std::optional<QuantTensorView<float>> view;  // [experts, N, K] or [N, K], the same bytes
  w4a16::PackedWeights<S> packed;
  DeviceBuffer<uint32_t> words;
  DeviceBuffer<S> scales;
  DeviceBuffer<S> zeros;

  // Expert e's [N, K] weights.
  QuantTensorView<float> expert(int64_t e) const {
    return view->shape().rank() == 2 ? *view : view->slice(e);
  }
  Int4Weights<S> weights() const {
    Int4Weights<S> w;
    w.words = words.data();
    w.scales = scales.data();
    w.zeros = packed.symmetric() ? nullptr : zeros.data();
    w.experts = packed.experts;
    w.n = packed.n;
    w.k = packed.k;
    w.group_size = packed.group_size;
    return w;
  }
};

// `repack(view)` is w4a16::repack<T> or w4a8::repack.
template <class S, class Repack>
DeviceInt4<S> make_device_int4(const Int4Problem& p, uint32_t seed, Repack repack) {
  DeviceInt4<S> d(nibble::testing::random_tensor<float>(
      p.experts * p.n, p.k, nibble::testing::int4_config(p.group_size, p.symmetric), seed));
  d.view.emplace(nibble::testing::reshaped(
      d.canonical, p.experts == 1 ? Shape{p.n, p.k} : Shape{p.experts, p.n, p.k}));
  d.packed = repack(*d.view);
  d.words = DeviceBuffer<uint32_t>(d.packed.words);
  d.scales = DeviceBuffer<S>(d.packed.scales);
  if (!p.symmetric) d.zeros = DeviceBuffer<S>(d.packed.zeros);
  return d;
}

}  // namespace nibble::cuda::testing
