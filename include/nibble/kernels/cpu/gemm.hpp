// Dequant-GEMM on the CPU: Y[M, N] = X[M, K] * dequant(W)[N, K]^T (+ bias).
//
//   nibble::gemm(w, x, y);                                   // fp32 activations, best ISA
//   nibble::gemm(w, x, y, bias, {.activations = nibble::ActivationPrecision::int8});
//
// W is any QuantTensorView (2/4/8 bits, symmetric or not, any group size; its leading
// dimensions flatten into N). X and Y are float, fp16 or bf16 (the same type), row-major, with
// any leading dimensions; Y has X's leading dimensions and N columns. M = 1 is a GEMV.
//
// Activations: fp32 (the products are computed in float; the default) or int8 (ONNX Runtime's
// accuracy_level 4, llama.cpp's Q8 activations): each row of X is quantized once, in blocks that
// divide the weights' group size, to int8 with scale max|x| / 127; integer dot products are
// scaled per block. Its error against fp32 is bounded by sum_k |w_k| * max|x|_block / 254 per
// output (tests/test_gemm.cpp checks that bound).
//
// The kernels run on the best ISA compiled in and supported by the CPU (see isa.hpp), threaded
// over N with OpenMP (GemmOptions::num_threads, 0 = OpenMP's default). They are re-entrant: no
// mutable global state but the lazily built kernel tables. M = 0 (an empty batch) is a no-op.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/parallel.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/kernels/cpu/detail/activation_blocks.hpp"
#include "nibble/kernels/cpu/dispatch.hpp"
#include "nibble/kernels/cpu/isa.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble {

// What X is multiplied as. Every precision accumulates in fp32 (int8: exact int32 per block).
//   fp32: X's values as they are (fp16 / bf16 X widened exactly).
//   int8: X quantized per block to int8 (max|x| / 127, round to nearest even); integer dot
//         products.
//   bf16, fp16: each X value rounded to that type first (nearest even, as from_float), then
//         multiplied as fp32 does: exactly fp32's result on the rounded X, as a model run in that
//         type has it. For bf16 X, bf16 is fp32; for float X, bf16 lets the avx512bf16 table's
//         vdpbf16ps kernel run (twice an fp32 FMA's multiplies per instruction).
enum class ActivationPrecision : uint8_t { fp32, int8, bf16, fp16 };

inline const char* to_string(ActivationPrecision precision) {
  switch (precision) {
    case ActivationPrecision::fp32:
      return "fp32";
    case ActivationPrecision::int8:
      return "int8";
    case ActivationPrecision::bf16:
      return "bf16";
    case ActivationPrecision::fp16:
      return "fp16";
  }
  return "unknown";
}

struct GemmOptions {
  int num_threads = 0;  // OpenMP threads over N; 0 = OpenMP's default
  ActivationPrecision activations = ActivationPrecision::fp32;
  Isa isa = Isa::automatic;  // automatic: NIBBLE_ISA if set, else the best available
};

// X quantized to int8 per row in blocks: what the int8 path multiplies with.
struct QuantizedActivations {
  int64_t rows = 0;
  int64_t padded_k = 0;            // row length (X's K rounded up to the weights' whole groups)
  int64_t block = 0;               // elements per block; divides the weights' group size
  std::vector<int8_t> codes;       // [rows, padded_k]; 0 in the padding
  std::vector<float> scales;       // [rows, padded_k / block]: max|x| / 127 (0 for all-zero)
  std::vector<int32_t> code_sums;  // [rows, padded_k / block]
};

namespace detail {

// Rows of `x` (K valid elements each) quantized in blocks of `block` over `padded_k` elements.
template <class ActT>
QuantizedActivations quantize_activation_blocks(const TensorView<const ActT>& x, int64_t padded_k,
                                                int64_t block) {
  QuantizedActivations out;
  out.rows = x.rows();
  out.padded_k = padded_k;
  out.block = block;
  const int64_t blocks = padded_k / block;
  out.codes.assign(static_cast<std::size_t>(checked_mul(x.rows(), padded_k, "int8 activations")),
                   0);
  out.scales.assign(static_cast<std::size_t>(x.rows() * blocks), 0.0f);
  out.code_sums.assign(static_cast<std::size_t>(x.rows() * blocks), 0);
  std::vector<float> row_values(static_cast<std::size_t>(padded_k), 0.0f);
  for (int64_t row = 0; row < x.rows(); ++row) {
    for (int64_t i = 0; i < x.cols(); ++i)
      row_values[static_cast<std::size_t>(i)] = to_float(x.row(row)[i]);
    quantize_activation_row(row_values.data(), padded_k, block, out.codes.data() + row * padded_k,
                            out.scales.data() + row * blocks, out.code_sums.data() + row * blocks);
  }
  return out;
}

// Writes rows [begin, end) of X (K values each, type ActT) as float rows of padded_k (zero pads),
// each value first rounded to Rounded (float: as it is; fp16 / bf16: ActivationPrecision's
// rounding, exact when ActT already is Rounded).
template <class Rounded, class ActT>
void convert_activation_rows_as(const TensorView<const ActT>& x, const int64_t* source_rows,
                                int64_t begin, int64_t end, int64_t padded_k, float* out) {
  const int64_t k = x.cols();
  for (int64_t row = begin; row < end; ++row) {
    const ActT* in = x.row(source_rows != nullptr ? source_rows[row] : row);
    float* values = out + row * padded_k;
    for (int64_t i = 0; i < k; ++i) {
      if constexpr (std::is_same_v<Rounded, float> || std::is_same_v<Rounded, ActT>) {
        values[i] = to_float(in[i]);
      } else {
        values[i] = to_float(from_float<Rounded>(to_float(in[i])));
      }
    }
    std::fill(values + k, values + padded_k, 0.0f);
  }
}

// Whether `precision` rounds ActT values (bf16 / fp16 precision on X of another type).
template <class ActT>
bool rounds_activations(ActivationPrecision precision) {
  return (precision == ActivationPrecision::bf16 && !std::is_same_v<ActT, bf16>) ||
         (precision == ActivationPrecision::fp16 && !std::is_same_v<ActT, fp16>);
}

// convert_activation_rows_as with the rounding `precision` names (fp32 / int8: none; int8
// quantizes the float rows afterwards).
template <class ActT>
void convert_activation_rows(const TensorView<const ActT>& x, const int64_t* source_rows,
                             int64_t begin, int64_t end, int64_t padded_k, float* out,
                             ActivationPrecision precision = ActivationPrecision::fp32) {
  switch (precision) {
    case ActivationPrecision::bf16:
      return convert_activation_rows_as<bf16>(x, source_rows, begin, end, padded_k, out);
    case ActivationPrecision::fp16:
      return convert_activation_rows_as<fp16>(x, source_rows, begin, end, padded_k, out);
    default:
      return convert_activation_rows_as<float>(x, source_rows, begin, end, padded_k, out);
  }
}

// Rows [begin, end) of float rows already rounded to bf16 (`values`, padded_k each) as bf16 bits.
inline void bf16_bits_of_rounded_rows(const float* values, int64_t begin, int64_t end,
                                      int64_t padded_k, uint16_t* out) {
  for (int64_t i = begin * padded_k; i < end * padded_k; ++i)
    out[i] = from_float<bf16>(values[i]).bits;  // exact: values[i] is a bf16 value
}

inline void check_activation_precision(const char* function, ActivationPrecision precision) {
  if (static_cast<unsigned>(precision) > static_cast<unsigned>(ActivationPrecision::fp16)) {
    fail(ErrorCode::invalid_argument, function,
         ": GemmOptions::activations = ", static_cast<unsigned>(precision),
         " is not an ActivationPrecision (expected fp32, int8, bf16 or fp16)");
  }
}

// Rows [begin, end) of bf16 X as bf16 bits, padded to padded_k with zeros.
inline void bf16_activation_rows(const TensorView<const bf16>& x, int64_t begin, int64_t end,
                                 int64_t padded_k, uint16_t* out) {
  for (int64_t row = begin; row < end; ++row) {
    const bf16* in = x.row(row);
    uint16_t* values = out + row * padded_k;
    for (int64_t i = 0; i < x.cols(); ++i)
      values[i] = in[i].bits;
    std::fill(values + x.cols(), values + padded_k, uint16_t{0});
  }
}

template <class ActT>
void convert_outputs(const std::vector<float>& y_float, ActT* y, int num_threads) {
  const auto count = static_cast<int64_t>(y_float.size());
  parallel_for_ranges(num_threads, count, int64_t{1} << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      y[i] = from_float<ActT>(y_float[static_cast<std::size_t>(i)]);
  });
}

template <class ScaleT, class ActT>
void run_gemm(const QuantTensorView<ScaleT>& w, const TensorView<const ActT>& x,
              const TensorView<ActT>& y, const ActT* bias, const GemmOptions& options) {
  static_assert(is_float_type_v<ActT>, "gemm: activations are float, fp16 or bf16");
  check_threads("gemm", options.num_threads);
  check_activation_precision("gemm", options.activations);
  const nibble_cpu_kernel_table& table = kernels_for(w, options.isa);
  const int64_t m = x.rows();
  const int64_t n = w.rows();
  if (m == 0 || n == 0) return;  // nothing to compute (documented: an empty batch is a no-op)

  std::vector<nibble_gemm_operands> ops{weight_operands(w, 0, n)};
  nibble_gemm_operands& op = ops[0];
  op.m = m;

  // Activations as float rows of padded_k: X itself when it already is, else converted (and
  // rounded, for bf16 / fp16 precision) rows.
  std::vector<float> x_float;
  const bool rounds = rounds_activations<ActT>(options.activations);
  const bool convert = !std::is_same_v<ActT, float> || op.padded_k != x.cols() || rounds;
  if (convert) {
    x_float.resize(static_cast<std::size_t>(checked_mul(m, op.padded_k, "activations")));
    op.x = x_float.data();
  } else {
    op.x = reinterpret_cast<const float*>(x.data());
  }
  // bf16 values (bf16 X at fp32 precision, any X at bf16 precision) also as bf16 rows, for the
  // kernels that take them as they are (AVX512_BF16).
  std::vector<uint16_t> x_bf16;
  const bool bf16_values =
      options.activations == ActivationPrecision::bf16 ||
      (std::is_same_v<ActT, bf16> && options.activations == ActivationPrecision::fp32);
  const bool bf16_rows = bf16_values && table.uses_bf16_activations != 0;
  if (bf16_rows) {
    x_bf16.resize(static_cast<std::size_t>(checked_mul(m, op.padded_k, "activations")));
    op.x_bf16 = x_bf16.data();
  }
  std::vector<float> bias_float;
  if (bias != nullptr) {
    if constexpr (std::is_same_v<ActT, float>) {
      op.bias = bias;
    } else {
      for (int64_t col = 0; col < n; ++col)
        bias_float.push_back(to_float(bias[col]));
      op.bias = bias_float.data();
    }
  }
  std::vector<float> y_float;
  if constexpr (std::is_same_v<ActT, float>) {
    op.y = y.data();
  } else {
    y_float.assign(static_cast<std::size_t>(m * n), 0.0f);
    op.y = y_float.data();
  }

  run_gemm_batch(
      table, w.bits(), scale_index<ScaleT>(), options.activations == ActivationPrecision::int8, ops,
      options.num_threads, [&](std::size_t, int64_t begin, int64_t end) {
        if (convert) {
          convert_activation_rows(x, nullptr, begin, end, op.padded_k, x_float.data(),
                                  options.activations);
        }
        if (bf16_rows) {
          if constexpr (std::is_same_v<ActT, bf16>) {
            bf16_activation_rows(x, begin, end, op.padded_k, x_bf16.data());
          } else {
            bf16_bits_of_rounded_rows(x_float.data(), begin, end, op.padded_k, x_bf16.data());
          }
        }
      });
  if constexpr (!std::is_same_v<ActT, float>)
    convert_outputs(y_float, y.data(), options.num_threads);
}

}  // namespace detail

// Y = X * dequant(W)^T. X [..., K], Y [..., N] (N = W's rows), both float, fp16 or bf16.
template <class ScaleT, class ActT>
void gemm(const QuantTensorView<ScaleT>& w, TensorView<const ActT> x, TensorView<ActT> y,
          const GemmOptions& options = {}) {
  detail::check_gemm_operands("gemm", w, x, y, w.rows());
  detail::run_gemm(w, x, y, static_cast<const ActT*>(nullptr), options);
}

// Y = X * dequant(W)^T + bias, bias [N] of the activation type.
template <class ScaleT, class ActT>
void gemm(const QuantTensorView<ScaleT>& w, TensorView<const ActT> x, TensorView<ActT> y,
          TensorView<const ActT> bias, const GemmOptions& options = {}) {
  detail::check_gemm_operands("gemm", w, x, y, w.rows());
  if (bias.shape() != Shape{w.rows()}) {
    detail::fail(ErrorCode::shape_mismatch, "gemm: bias has shape ", bias.shape(),
                 " (expected [N] = [", w.rows(), "])");
  }
  detail::run_gemm(w, x, y, bias.data(), options);
}

// The ISA whose kernels a gemm call with these weights and options runs ("avx512vnni", ...;
// the portable kernels report xsimd's architecture name, e.g. "sse2").
template <class ScaleT>
const char* gemm_isa(const QuantTensorView<ScaleT>& w, const GemmOptions& options = {}) {
  return detail::kernels_for(w, options.isa).isa;
}

// X [M, K] quantized as the int8 path does for weights with `group_size` (exposed for tests and
// for callers that reuse quantized activations).
template <class ActT>
QuantizedActivations quantize_activations(TensorView<const ActT> x, int64_t padded_k,
                                          int64_t group_size) {
  if (padded_k < x.cols() || group_size < 1 || padded_k % group_size != 0) {
    detail::fail(ErrorCode::invalid_argument, "quantize_activations: padded_k = ", padded_k,
                 ", group_size = ", group_size, " for K = ", x.cols(),
                 " (expected padded_k >= K, a multiple of group_size)");
  }
  return detail::quantize_activation_blocks(x, padded_k, detail::activation_block(group_size));
}

}  // namespace nibble
