// What the CPU-kernel tests share: the ISAs to run on (skipping, with the reason, those this
// build or CPU lacks), and the independent expectations the kernels are held to.
//
// Named tolerances, each derived from the arithmetic:
//  fp32 path vs the exact product (double):  (K + 2) * 2^-23 * sum_k |x_k| |w_k|, the bound on a
//      K-term float dot product in any summation order (plus one rounding of a scale fold); the
//      weights themselves are dequantized exactly as dequantize_ref does;
//  fp16 / bf16 outputs: plus one rounding of the result, 2^-11 / 2^-8 relative;
//  int8 path vs the same int8 activations evaluated exactly (double): the float accumulation of
//      one term per activation block, (blocks + 2) * 2^-23 * sum |terms|, plus the fp32 bound for
//      the zero-point term;
//  int8 path vs fp32: plus the activation quantization error, sum_k |w_k| * scale_block(k) / 2.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "nibble/kernels/cpu/dispatch.hpp"
#include "nibble/kernels/cpu/gemm.hpp"
#include "nibble/kernels/cpu/isa.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble::testing {

// X's values as `precision` multiplies them: rounded to bf16 / fp16 (via nibble's from_float,
// whose round-to-nearest-even test_float16 holds to ml_dtypes' truth), else as they are.
inline std::vector<float> as_multiplied(std::vector<float> values, ActivationPrecision precision) {
  for (float& value : values) {
    if (precision == ActivationPrecision::bf16) value = to_float(from_float<bf16>(value));
    if (precision == ActivationPrecision::fp16) value = to_float(from_float<fp16>(value));
  }
  return values;
}

inline const Isa kIsas[] = {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512vnni, Isa::avx512bf16};

inline std::string isa_test_name(const ::testing::TestParamInfo<Isa>& param) {
  return to_string(param.param);
}

// Skips the test unless `isa` is compiled in and supported.
#define NIBBLE_REQUIRE_ISA(isa)                                                     \
  do {                                                                              \
    if (!nibble::detail::kernels_compiled(isa)) {                                   \
      GTEST_SKIP() << nibble::to_string(isa) << " kernels are not compiled in (no " \
                   << "nibble::cpu_kernels for this compiler / architecture)";      \
    }                                                                               \
    if (!nibble::cpu_supports(isa)) {                                               \
      GTEST_SKIP() << "this CPU does not support " << nibble::to_string(isa);       \
    }                                                                               \
  } while (false)

template <class ActT>
double output_rounding() {
  if constexpr (std::is_same_v<ActT, fp16>) return std::ldexp(1.0, -11);
  if constexpr (std::is_same_v<ActT, bf16>) return std::ldexp(1.0, -8);
  return 0.0;
}

// x . w_hat in double, and the fp32-path tolerance for it.
struct Expected {
  double value;
  double tolerance;
};

inline Expected fp32_expectation(const float* x, const float* w_hat, int64_t k) {
  double exact = 0.0;
  double magnitude = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    exact += double{x[i]} * double{w_hat[i]};
    magnitude += std::fabs(double{x[i]} * double{w_hat[i]});
  }
  return {exact, static_cast<double>(k + 2) * std::ldexp(1.0, -23) * magnitude + 1e-30};
}

// The int8 path's exact value for activation row `x_row` against weight row `w_row`: X
// quantized as quantize_activations does (the definition), then multiplied with the
// dequantized weights in double. The kernels compute it as
//   sum over blocks (and lanes) of s_w s_x sum(q c)  -  sum over groups of s_w z sum(s_x c),
// exact int32 sums combined in float: at most K + n_groups float terms, each bounded by its
// share of M = sum_k |s_w s_x c_k| (|q_k| + |z|), so any summation order stays within
// (K + n_groups + 4) * 2^-23 * M. `fp32_bound` receives the distance allowed to the fp32
// product: plus the activation quantization error sum_k |w_k| * s_x / 2.
template <class ScaleT>
Expected int8_expectation(const QuantTensorView<ScaleT>& w, int64_t w_row,
                          const QuantizedActivations& x_int8, int64_t x_row,
                          double* fp32_bound = nullptr) {
  const int64_t k = w.k();
  const int64_t blocks = x_int8.padded_k / x_int8.block;
  const int64_t group_size = w.layout().group_size;
  double exact = 0.0;
  double magnitude = 0.0;
  double quantization = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t group = i / group_size;
    const double scale = w.scale(w_row, group);
    const int zero = w.zero_point(w_row, group);
    const int code = w.code(w_row, i);
    const double w_hat =
        static_cast<double>(static_cast<float>(code - zero) * static_cast<float>(scale));
    const double x_scale =
        x_int8.scales[static_cast<std::size_t>(x_row * blocks + i / x_int8.block)];
    const double c = x_int8.codes[static_cast<std::size_t>(x_row * x_int8.padded_k + i)];
    exact += w_hat * c * x_scale;
    magnitude += std::fabs(scale * x_scale * c) * (std::abs(code) + std::abs(zero));
    quantization += std::fabs(w_hat) * x_scale / 2;
  }
  const double accumulation =
      static_cast<double>(k + w.layout().n_groups + 4) * std::ldexp(1.0, -23) * magnitude + 1e-30;
  if (fp32_bound != nullptr) *fp32_bound = quantization * (1 + 1e-6) + 2 * accumulation;
  return {exact, accumulation};
}

}  // namespace nibble::testing
