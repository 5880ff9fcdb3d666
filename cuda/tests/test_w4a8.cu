// GPU tests of W4A8 (ctest label `gpu`; sm_89+ for the GEMM, sm_80+ for the activation kernel;
// skipped, saying why, without such a device). Argument checks run everywhere.
//
//   activation kernel == quantize_activations_ref, byte for byte (static with and without the
//   per-channel pre-quant scale, dynamic per-token), fp16 and bf16
//   GEMM vs gemm_w4a8_ref element by element: every fp8 x fp8 product is exact in fp32; the
//   kernel differs in the order of its additions and in the fp8 tensor core's own accumulator,
//   reported to keep about 13 mantissa bits (SageAttention2; DeepSeek-V3 on Hopper). The kernel
//   lets it sum only one stage's two mma steps before adding in fp32 (w4a8.cuh), so the error is
//   at most two 2^-13 truncations of a partial plus fp32 rounding: kAccumulation = 2^-11 of
//   sum |x8 w8| * |scale| covers it with margin; plus an ulp of T for the two outputs' roundings
//   the pipeline's error vs the fp32 GEMM is printed (and bounded as in test_w4a8_layout)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <vector>

#include "nibble/cuda/device_buffer.cuh"
#include "nibble/cuda/w4a8.cuh"
#include "nibble/kernels/cpu/reference.hpp"
#include "support/gpu_fixtures.cuh"
#include "support/quant_fixtures.hpp"

namespace nibble::cuda {
namespace {

constexpr double kAccumulation = 1.0 / (1 << 11);

template <class T>
constexpr double output_half_ulp() {
  return std::is_same_v<T, fp16> ? 1.0 / (1 << 11) : 1.0 / (1 << 8);
}

template <class T>
void expect_activation_kernel_matches(int64_t rows, int64_t k, bool dynamic, bool channel,
                                      float spread) {
  SCOPED_TRACE(::testing::Message()
               << "rows " << rows << " K " << k << (dynamic ? " dynamic" : " static")
               << (channel ? " channel" : ""));
  const std::vector<T> x = testing::random_values<T>(rows * k, 3u, spread);
  const std::vector<T> c = testing::random_values<T>(k, 4u, 0.5f);
  w4a8::ActivationQuant<T> quant;
  quant.dynamic = dynamic;
  quant.inverse_scale = 1.0f / 3.0f;
  std::vector<uint8_t> expected(x.size());
  std::vector<float> expected_scales(static_cast<std::size_t>(rows));
  const DeviceBuffer<T> x_device(x);
  const DeviceBuffer<T> c_device(c);
  quant.channel_scale = channel ? c.data() : nullptr;
  w4a8::quantize_activations_ref(x.data(), rows, k, quant, expected.data(), expected_scales.data());
  quant.channel_scale = channel ? c_device.data() : nullptr;
  DeviceBuffer<uint8_t> codes(x.size());
  DeviceBuffer<float> scales(static_cast<std::size_t>(rows));
  testing::poison(codes);
  quantize_activations_fp8(x_device.data(), rows, k, quant, codes.data(), scales.data());
  check_cuda(cudaDeviceSynchronize(), "test", "the activation kernel");
  const std::vector<uint8_t> got = codes.download();
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], expected[i]) << "element " << i << " x " << to_float(x[i]);
  }
  const std::vector<float> got_scales = scales.download();
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_EQ(got_scales[static_cast<std::size_t>(r)],
              expected_scales[static_cast<std::size_t>(r)]);
  }
}

TEST(W4A8Gpu, ActivationKernelIsBitExactWithTheReference) {
  NIBBLE_REQUIRE_GPU(80);
  for (int64_t rows : {1, 7, 33}) {
    for (int64_t k : {128, 4096, 14336}) {
      for (bool dynamic : {false, true}) {
        for (bool channel : {false, true}) {
          // spread 300: many values past 448 (saturation) in the static case
          expect_activation_kernel_matches<fp16>(rows, k, dynamic, channel, 300.0f);
          expect_activation_kernel_matches<bf16>(rows, k, dynamic, channel, 1.0f);
        }
      }
    }
  }
}

using Problem = testing::Int4Problem;
using DeviceWeights = testing::DeviceInt4<fp16>;

DeviceWeights make_weights(const Problem& p, uint32_t seed) {
  return testing::make_device_int4<fp16>(
      p, seed, [](const QuantTensorView<float>& w) { return w4a8::repack(w); });
}

// Rows [begin, end) of y (expert `expert`) against gemm_w4a8_ref on the same fp8 codes.
template <class T>
void expect_rows_match(const DeviceWeights& d, int64_t expert, const std::vector<uint8_t>& codes,
                       const std::vector<float>& row_scales, float alpha, const std::vector<T>& y,
                       int64_t begin, int64_t end) {
  const int64_t n_out = d.packed.n;
  const int64_t k_in = d.packed.k;
  const int64_t rows = end - begin;
  std::vector<T> expected(static_cast<std::size_t>(rows * n_out));
  w4a8::gemm_w4a8_ref(*d.view, d.packed.scales, expert, codes.data() + begin * k_in, rows,
                      row_scales.data() + begin, alpha, expected.data());
  // sum |x8 w8| for the tolerance
  std::vector<float> w8(static_cast<std::size_t>(n_out * k_in));
  const int64_t n_groups = d.packed.n_groups;
  for (int64_t n = 0; n < n_out; ++n) {
    for (int64_t k = 0; k < k_in; ++k) {
      const int64_t row = expert * n_out + n;
      const int64_t group = k / d.packed.group_size;
      w8[static_cast<std::size_t>(n * k_in + k)] = to_float(w4a8::fp8_weight(
          d.view->code(row, k), d.view->zero_point(row, group),
          d.packed.scales[static_cast<std::size_t>((expert * n_groups + group) * n_out + n)]));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const double scale = std::abs(double{alpha} * row_scales[static_cast<std::size_t>(begin + r)]);
    for (int64_t n = 0; n < n_out; ++n) {
      double magnitude = 0.0;
      for (int64_t k = 0; k < k_in; ++k) {
        magnitude += std::abs(double{to_float(fp8_e4m3::from_bits(
                                  codes[static_cast<std::size_t>((begin + r) * k_in + k)]))} *
                              w8[static_cast<std::size_t>(n * k_in + k)]);
      }
      const double want = to_float(expected[static_cast<std::size_t>(r * n_out + n)]);
      const double got = to_float(y[static_cast<std::size_t>((begin + r) * n_out + n)]);
      const double tolerance =
          kAccumulation * magnitude * scale + output_half_ulp<T>() * 2.0 * std::abs(want);
      ASSERT_LE(std::abs(got - want), tolerance)
          << "row " << begin + r << " n " << n << " expected " << want;
    }
  }
}

// x on the device, quantized there to fp8 with dynamic per-token scales.
struct DeviceActivations {
  DeviceBuffer<uint8_t> codes;
  DeviceBuffer<float> row_scales;
};
template <class T>
DeviceActivations quantize_on_device(const std::vector<T>& x, int64_t rows, int64_t k) {
  const DeviceBuffer<T> x_device(x);
  DeviceActivations a{DeviceBuffer<uint8_t>(static_cast<std::size_t>(rows * k)),
                      DeviceBuffer<float>(static_cast<std::size_t>(rows))};
  w4a8::ActivationQuant<T> quant;
  quant.dynamic = true;
  quantize_activations_fp8(x_device.data(), rows, k, quant, a.codes.data(), a.row_scales.data());
  check_cuda(cudaDeviceSynchronize(), "quantize_on_device", "the activation kernel");  // x_device
  return a;
}

// Activations through the device kernel (dynamic per-token), then the GEMM.
template <class T>
void run_dense(const Problem& p, int64_t m, int sm_count_for_plan = 0) {
  SCOPED_TRACE(::testing::Message() << "M " << m << " N " << p.n << " K " << p.k << " G "
                                    << p.group_size << (p.symmetric ? " sym" : " asym"));
  const DeviceWeights d = make_weights(p, static_cast<uint32_t>(m + p.k));
  const std::vector<T> x = testing::random_values<T>(m * p.k, static_cast<uint32_t>(m), 2.0f);
  DeviceActivations activations = quantize_on_device(x, m, p.k);
  DeviceBuffer<uint8_t>& codes = activations.codes;
  DeviceBuffer<float>& row_scales = activations.row_scales;
  DeviceBuffer<T> y(static_cast<std::size_t>(m * p.n));
  testing::poison(y);
  const W4A8Weights w = d.weights();
  w4a16::LaunchPlan plan = plan_gemm_w4a8(w, m);
  if (sm_count_for_plan > 0) plan = w4a16::plan_launch(m, p.n, p.k, 1, m, sm_count_for_plan);
  DeviceBuffer<unsigned char> workspace(static_cast<std::size_t>(plan.workspace_bytes));
  const float alpha = 0.75f;
  gemm_w4a8(w, codes.data(), row_scales.data(), alpha, y.data(), m, plan, workspace.data(),
            plan.workspace_bytes);
  check_cuda(cudaDeviceSynchronize(), "run_dense", "the W4A8 kernel");
  expect_rows_match(d, 0, codes.download(), row_scales.download(), alpha, y.download(), 0, m);
}

TEST(W4A8Gpu, DenseEveryRowCount) {
  NIBBLE_REQUIRE_GPU(89);
  std::vector<int64_t> counts;
  for (int64_t m = 1; m <= 16; ++m)
    counts.push_back(m);
  for (int64_t m : {31, 64, 129, 1024})
    counts.push_back(m);
  for (int64_t m : counts) {
    run_dense<fp16>({1, 128, 512, 128, true}, m);
    run_dense<bf16>({1, 128, 512, 128, false}, m);
  }
}

TEST(W4A8Gpu, GroupSizesAndZeroPoints) {
  NIBBLE_REQUIRE_GPU(89);
  for (int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}, int64_t{256}, kPerChannel}) {
    for (bool symmetric : {true, false}) {
      for (int64_t m : {1, 9, 40})
        run_dense<fp16>({1, 192, 768, group, symmetric}, m);
    }
  }
}

TEST(W4A8Gpu, SplitKAgreesWithOneSplit) {
  NIBBLE_REQUIRE_GPU(89);
  for (int sm_count : {1, 1000})
    run_dense<bf16>({1, 64, 4096, 128, true}, 5, sm_count);
}

TEST(W4A8Gpu, MoeOneLaunchForAllExperts) {
  NIBBLE_REQUIRE_GPU(89);
  const Problem p{4, 128, 512, 128, true};
  const std::vector<int32_t> offsets = {0, 0, 3, 20, 61};
  const int64_t tokens = offsets.back();
  const DeviceWeights d = make_weights(p, 12u);
  const std::vector<fp16> x = testing::random_values<fp16>(tokens * p.k, 9u);
  DeviceActivations activations = quantize_on_device(x, tokens, p.k);
  DeviceBuffer<uint8_t>& codes = activations.codes;
  DeviceBuffer<float>& row_scales = activations.row_scales;
  DeviceBuffer<fp16> y(static_cast<std::size_t>(tokens * p.n));
  testing::poison(y);
  const DeviceBuffer<int32_t> offsets_device(offsets);
  const W4A8Weights w = d.weights();
  const w4a16::LaunchPlan plan = plan_moe_gemm_w4a8(w, tokens, tokens / p.experts);
  DeviceBuffer<unsigned char> workspace(static_cast<std::size_t>(plan.workspace_bytes));
  moe_gemm_w4a8(w, codes.data(), row_scales.data(), 1.0f, y.data(), tokens, offsets_device.data(),
                plan, workspace.data(), plan.workspace_bytes);
  check_cuda(cudaDeviceSynchronize(), "test", "the grouped W4A8 kernel");
  const std::vector<uint8_t> host_codes = codes.download();
  const std::vector<float> host_scales = row_scales.download();
  const std::vector<fp16> host_y = y.download();
  for (int64_t e = 0; e < p.experts; ++e) {
    if (offsets[e] < offsets[e + 1]) {
      expect_rows_match(d, e, host_codes, host_scales, 1.0f, host_y, offsets[e], offsets[e + 1]);
    }
  }
}

// The whole pipeline's error against fp32 (same int4 weights, x in fp32), reported.
TEST(W4A8Gpu, PipelineErrorAgainstFp32) {
  NIBBLE_REQUIRE_GPU(89);
  const Problem p{1, 1024, 4096, 128, true};
  const int64_t m = 16;
  const DeviceWeights d = make_weights(p, 77u);
  const std::vector<bf16> x = testing::random_values<bf16>(m * p.k, 1u);
  DeviceActivations activations = quantize_on_device(x, m, p.k);
  DeviceBuffer<uint8_t>& codes = activations.codes;
  DeviceBuffer<float>& row_scales = activations.row_scales;
  DeviceBuffer<bf16> y(static_cast<std::size_t>(m * p.n));
  const W4A8Weights w = d.weights();
  const w4a16::LaunchPlan plan = plan_gemm_w4a8(w, m);
  DeviceBuffer<unsigned char> workspace(static_cast<std::size_t>(plan.workspace_bytes));
  gemm_w4a8(w, codes.data(), row_scales.data(), 1.0f, y.data(), m, plan, workspace.data(),
            plan.workspace_bytes);
  check_cuda(cudaDeviceSynchronize(), "test", "the W4A8 kernel");
  std::vector<float> x_float(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    x_float[i] = to_float(x[i]);
  std::vector<float> exact(static_cast<std::size_t>(m * p.n));
  gemm_ref(*d.view, TensorView<const float>(x_float.data(), Shape{m, p.k}),
           TensorView<float>(exact.data(), Shape{m, p.n}));
  const std::vector<bf16> got = y.download();
  double num = 0.0;
  double den = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    num += (double{to_float(got[i])} - exact[i]) * (double{to_float(got[i])} - exact[i]);
    den += double{exact[i]} * exact[i];
  }
  const double error = std::sqrt(num / den);
  std::printf("W4A8 GPU pipeline vs fp32 (M 16, N 1024, K 4096, g128, bf16 out): %.4f\n", error);
  EXPECT_LT(error, 0.08);
}

// ---- argument checks: no device needed
// -----------------------------------------------------------

TEST(W4A8Arguments, RefusedBeforeAnyDeviceCall) {
  alignas(16) static uint32_t words[64];
  alignas(16) static fp16 scales[64];
  alignas(16) static uint8_t codes[1024];
  alignas(16) static fp16 out[1024];
  W4A8Weights w;
  w.words = words;
  w.scales = scales;
  w.n = 64;
  w.k = 128;
  w.group_size = 128;
  const w4a16::LaunchPlan plan = w4a16::plan_launch(1, 64, 128, 1, 1, 132);
  nibble::testing::expect_error(
      [&] { gemm_w4a8(w, codes + 8, nullptr, 1.0f, out, 1, plan, nullptr, 0); },
      ErrorCode::misaligned, {"x is not 16-byte aligned"});
  nibble::testing::expect_error(
      [&] { gemm_w4a8(w, codes, nullptr, NAN, out, 1, plan, nullptr, 0); }, ErrorCode::non_finite,
      {"alpha"});
  W4A8Weights small_groups = w;
  small_groups.group_size = 16;
  nibble::testing::expect_error(
      [&] { gemm_w4a8(small_groups, codes, nullptr, 1.0f, out, 1, plan, nullptr, 0); },
      ErrorCode::unsupported, {"group size 16"});
  w4a8::ActivationQuant<fp16> dynamic;
  dynamic.dynamic = true;
  nibble::testing::expect_error(
      [&] { quantize_activations_fp8(out, 1, 128, dynamic, codes, nullptr); },
      ErrorCode::null_pointer, {"row_scales"});
  nibble::testing::expect_error(
      [&] { quantize_activations_fp8(out, 1, 100, w4a8::ActivationQuant<fp16>{}, codes, nullptr); },
      ErrorCode::shape_mismatch, {"K = 100", "multiple of 8"});
  w4a8::ActivationQuant<fp16> zero_scale;
  zero_scale.inverse_scale = 0.0f;
  nibble::testing::expect_error(
      [&] { quantize_activations_fp8(out, 1, 128, zero_scale, codes, nullptr); },
      ErrorCode::invalid_argument, {"inverse_scale"});
}

}  // namespace
}  // namespace nibble::cuda
