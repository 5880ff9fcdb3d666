// GPU tests of the W4A16 kernels (ctest label `gpu`): every result element against two CPU
// references, over odd row counts, both activation types, symmetric and asymmetric weights and
// every group-size family. Without a device (or below sm_80) the GPU tests skip and say why; the
// argument checks, which run before any device call, are tested everywhere.
//
// Tolerances, each derived from what the kernel rounds:
//   vs the kernel's own weights (w4a16::kernel_weight: the dequantized weight rounded to T, as
//   the kernel computes it) in double: fp32 accumulation (kAccumulation * sum |x w|) plus the
//   output's rounding to T (half an ulp of |y|).
//   vs gemm_ref (weights dequantized in float from the canonical tensor): in addition, each weight
//   rounded to T once (fp16 2^-11, bf16 2^-7 with the scale's own rounding), times sum |x w|.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "nibble/cuda/device_buffer.cuh"
#include "nibble/cuda/w4a16.cuh"
#include "nibble/kernels/cpu/reference.hpp"
#include "support/gpu_fixtures.cuh"
#include "support/quant_fixtures.hpp"

namespace nibble::cuda {
namespace {

constexpr double kAccumulation = 1.0 / (1 << 16);  // fp32 sums of up to 4096 terms, with margin

template <class T>
constexpr double output_half_ulp() {
  return std::is_same_v<T, fp16> ? 1.0 / (1 << 11) : 1.0 / (1 << 8);
}
template <class T>
constexpr double weight_rounding() {
  return std::is_same_v<T, fp16> ? 1.0 / (1 << 11) : 1.0 / (1 << 7);
}

using Problem = testing::Int4Problem;

template <class T>
using DeviceProblem = testing::DeviceInt4<T>;

template <class T>
DeviceProblem<T> make_problem(const Problem& p, uint32_t seed) {
  return testing::make_device_int4<T>(
      p, seed, [](const QuantTensorView<float>& w) { return w4a16::repack<T>(w); });
}

// Checks rows [begin, end) of y (expert `expert`) against both references.
template <class T>
void expect_rows_match(const DeviceProblem<T>& problem, int64_t expert, const std::vector<T>& x,
                       const std::vector<T>& y, int64_t begin, int64_t end) {
  const int64_t n_out = problem.packed.n;
  const int64_t k_in = problem.packed.k;
  // gemm_ref on this expert's canonical rows, x as float.
  const QuantTensorView<float> expert_view = problem.expert(expert);
  const int64_t rows = end - begin;
  std::vector<float> x_float(static_cast<std::size_t>(rows * k_in));
  for (int64_t i = 0; i < rows * k_in; ++i) {
    x_float[static_cast<std::size_t>(i)] = to_float(x[static_cast<std::size_t>(begin * k_in + i)]);
  }
  std::vector<float> reference(static_cast<std::size_t>(rows * n_out));
  gemm_ref(expert_view, TensorView<const float>(x_float.data(), Shape{rows, k_in}),
           TensorView<float>(reference.data(), Shape{rows, n_out}));
  std::vector<float> kernel_w(static_cast<std::size_t>(n_out * k_in));
  for (int64_t n = 0; n < n_out; ++n) {
    for (int64_t k = 0; k < k_in; ++k) {
      kernel_w[static_cast<std::size_t>(n * k_in + k)] =
          w4a16::kernel_weight(problem.packed, expert, n, k);
    }
  }
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t n = 0; n < n_out; ++n) {
      double exact = 0.0;
      double magnitude = 0.0;
      for (int64_t k = 0; k < k_in; ++k) {
        const double term = double{x_float[static_cast<std::size_t>(row * k_in + k)]} *
                            kernel_w[static_cast<std::size_t>(n * k_in + k)];
        exact += term;
        magnitude += std::abs(term);
      }
      const double got = to_float(y[static_cast<std::size_t>((begin + row) * n_out + n)]);
      const double tight = kAccumulation * magnitude + output_half_ulp<T>() * std::abs(exact);
      ASSERT_LE(std::abs(got - exact), tight)
          << "vs kernel weights: row " << begin + row << " n " << n << " expected " << exact;
      const double ref = reference[static_cast<std::size_t>(row * n_out + n)];
      const double loose = tight + weight_rounding<T>() * magnitude;
      ASSERT_LE(std::abs(got - ref), loose) << "vs gemm_ref: row " << begin + row << " n " << n;
    }
  }
}

template <class T>
void run_dense(const Problem& p, int64_t m, int sm_count_for_plan = 0) {
  SCOPED_TRACE(::testing::Message() << "M " << m << " N " << p.n << " K " << p.k << " G "
                                    << p.group_size << (p.symmetric ? " sym" : " asym"));
  const DeviceProblem<T> problem = make_problem<T>(p, static_cast<uint32_t>(m + p.k));
  const std::vector<T> x = testing::random_values<T>(m * p.k, static_cast<uint32_t>(m));
  DeviceBuffer<T> x_device(x);
  DeviceBuffer<T> y_device(static_cast<std::size_t>(m * p.n));
  testing::poison(y_device);
  const W4A16Weights<T> w = problem.weights();
  w4a16::LaunchPlan plan = plan_gemm_w4a16(w, m);
  if (sm_count_for_plan > 0) plan = w4a16::plan_launch(m, p.n, p.k, 1, m, sm_count_for_plan);
  DeviceBuffer<unsigned char> workspace(static_cast<std::size_t>(plan.workspace_bytes));
  gemm_w4a16(w, x_device.data(), y_device.data(), m, plan, workspace.data(), plan.workspace_bytes);
  check_cuda(cudaDeviceSynchronize(), "run_dense", "the W4A16 kernel");
  expect_rows_match(problem, 0, x, y_device.download(), 0, m);
}

std::vector<int64_t> row_counts() {
  std::vector<int64_t> counts;
  for (int64_t m = 1; m <= 16; ++m)
    counts.push_back(m);
  for (int64_t m : {31, 64, 129, 1024})
    counts.push_back(m);
  return counts;
}

TEST(W4A16Gpu, DenseFp16EveryRowCount) {
  NIBBLE_REQUIRE_GPU(80);
  for (int64_t m : row_counts())
    run_dense<fp16>({1, 128, 512, 128, true}, m);
}

TEST(W4A16Gpu, DenseBf16EveryRowCount) {
  NIBBLE_REQUIRE_GPU(80);
  for (int64_t m : row_counts())
    run_dense<bf16>({1, 128, 512, 128, false}, m);
}

TEST(W4A16Gpu, GroupSizesAndZeroPoints) {
  NIBBLE_REQUIRE_GPU(80);
  for (int64_t group :
       {int64_t{16}, int64_t{32}, int64_t{64}, int64_t{128}, int64_t{256}, kPerChannel}) {
    for (bool symmetric : {true, false}) {
      for (int64_t m : {1, 7, 33}) {
        run_dense<fp16>({1, 192, 768, group, symmetric}, m);
        run_dense<bf16>({1, 192, 768, group, symmetric}, m);
      }
    }
  }
}

TEST(W4A16Gpu, SplitKAgreesWithOneSplit) {
  NIBBLE_REQUIRE_GPU(80);
  // sm_count 1: one split; 1000: as many as the plan allows (up to 16).
  for (int sm_count : {1, 1000}) {
    run_dense<fp16>({1, 64, 4096, 128, false}, 3, sm_count);
    run_dense<bf16>({1, 64, 4096, 32, true}, 20, sm_count);
  }
}

TEST(W4A16Gpu, LargeLayerShapes) {
  NIBBLE_REQUIRE_GPU(80);
  run_dense<fp16>({1, 4096, 4096, 128, true}, 1);
  run_dense<bf16>({1, 1024, 14336, 128, false}, 16);
  run_dense<fp16>({1, 512, 4096, 64, false}, 256);
}

// Grouped GEMM: tokens sorted by expert, experts with 0, 1, 17 and 40 tokens, one launch.
template <class T>
void run_moe(const Problem& p, const std::vector<int32_t>& offsets) {
  const int64_t tokens = offsets.back();
  const DeviceProblem<T> problem = make_problem<T>(p, 99u);
  const std::vector<T> x = testing::random_values<T>(tokens * p.k, 5u);
  DeviceBuffer<T> x_device(x);
  DeviceBuffer<T> y_device(static_cast<std::size_t>(tokens * p.n));
  testing::poison(y_device);
  DeviceBuffer<int32_t> offsets_device(offsets);
  const W4A16Weights<T> w = problem.weights();
  const w4a16::LaunchPlan plan =
      plan_moe_gemm_w4a16(w, tokens, std::max<int64_t>(1, tokens / p.experts));
  DeviceBuffer<unsigned char> workspace(static_cast<std::size_t>(plan.workspace_bytes));
  moe_gemm_w4a16(w, x_device.data(), y_device.data(), tokens, offsets_device.data(), plan,
                 workspace.data(), plan.workspace_bytes);
  check_cuda(cudaDeviceSynchronize(), "run_moe", "the grouped W4A16 kernel");
  const std::vector<T> y = y_device.download();
  for (int64_t expert = 0; expert < p.experts; ++expert) {
    SCOPED_TRACE(::testing::Message() << "expert " << expert);
    if (offsets[expert] < offsets[expert + 1]) {
      expect_rows_match(problem, expert, x, y, offsets[expert], offsets[expert + 1]);
    }
  }
}

TEST(W4A16Gpu, MoeOneLaunchForAllExperts) {
  NIBBLE_REQUIRE_GPU(80);
  run_moe<fp16>({4, 128, 512, 128, true}, {0, 0, 1, 18, 58});
  run_moe<bf16>({4, 128, 512, 64, false}, {0, 16, 16, 97, 100});
  run_moe<fp16>({8, 64, 256, 32, false}, {0, 1, 2, 3, 4, 5, 6, 7, 8});
}

// ---- argument checks: no device needed
// -----------------------------------------------------------

// A well-formed 64 x 128 weights descriptor over host memory (never read: the calls below fail
// before touching it).
W4A16Weights<fp16> tiny_weights() {
  alignas(16) static uint32_t words[64];
  alignas(16) static fp16 scales[64];
  W4A16Weights<fp16> w;
  w.words = words;
  w.scales = scales;
  w.n = 64;
  w.k = 128;
  w.group_size = 128;
  return w;
}

TEST(W4A16Arguments, RefusedBeforeAnyDeviceCall) {
  const W4A16Weights<fp16> w = tiny_weights();
  alignas(16) static fp16 activations[1024];
  const w4a16::LaunchPlan plan = w4a16::plan_launch(1, 64, 128, 1, 1, 132);
  nibble::testing::expect_error(
      [&] { gemm_w4a16(w, activations + 1, activations + 512, 1, plan, nullptr, 0); },
      ErrorCode::misaligned, {"x is not 16-byte aligned"});
  nibble::testing::expect_error(
      [&] { gemm_w4a16(w, activations, activations + 512, 2, plan, nullptr, 0); },
      ErrorCode::invalid_argument, {"made for another problem", "rows 2"});
  W4A16Weights<fp16> odd = w;
  odd.n = 96;
  nibble::testing::expect_error(
      [&] { gemm_w4a16(odd, activations, activations + 512, 1, plan, nullptr, 0); },
      ErrorCode::unsupported, {"N = 96", "multiple of 64"});
  W4A16Weights<fp16> no_words = w;
  no_words.words = nullptr;
  nibble::testing::expect_error(
      [&] { gemm_w4a16(no_words, activations, activations + 512, 1, plan, nullptr, 0); },
      ErrorCode::null_pointer, {"null"});
  const w4a16::LaunchPlan split = w4a16::plan_launch(1, 64, 4096, 1, 1, 132);
  W4A16Weights<fp16> deep = w;
  deep.k = 4096;
  ASSERT_GT(split.splits, 1);
  nibble::testing::expect_error(
      [&] { gemm_w4a16(deep, activations, activations + 512, 1, split, nullptr, 0); },
      ErrorCode::buffer_too_small, {"workspace"});
  nibble::testing::expect_error(
      [&] { moe_gemm_w4a16(w, activations, activations + 512, 1, nullptr, plan, nullptr, 0); },
      ErrorCode::null_pointer, {"expert_offsets"});
}

// Without a usable device, a well-formed call fails with a clear error instead of launching.
TEST(W4A16Arguments, NoDeviceIsAClearError) {
  std::string why;
  if (have_device(80, why)) GTEST_SKIP() << "a device is present";
  const W4A16Weights<fp16> w = tiny_weights();
  alignas(16) static fp16 activations[1024];
  const w4a16::LaunchPlan plan = w4a16::plan_launch(1, 64, 128, 1, 1, 132);
  nibble::testing::expect_error(
      [&] { gemm_w4a16(w, activations, activations + 512, 1, plan, nullptr, 0); },
      ErrorCode::unsupported, {"gemm_w4a16"});
}

}  // namespace
}  // namespace nibble::cuda
