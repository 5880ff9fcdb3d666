// WeightQuantizer<Bits, ScaleT>: RTN quantization of an N-D tensor along its last dimension.
//
//   WeightQuantizer<4, fp16> quantizer(/*group_size=*/32, /*symmetric=*/false);   // Olive RTN
//   QuantTensor<fp16> q = quantizer.quantize(TensorView<const float>(w, {N, K}));
//   std::vector<float> w_hat = quantizer.dequantize(q);                            // [N, K]
//
// Any rank >= 1: the leading dimensions flatten to rows, so [E, N, K] MoE experts give exactly
// the bytes of quantizing each [N, K] expert alone. Weights are float, fp16 or bf16; scales are
// stored as ScaleT. The arithmetic, rounding and statistics follow the config's Convention
// (core/convention.hpp), bit-exact with the tool each one names.
//
// K need not be a multiple of the group size: rows are padded to whole groups (quant_tensor.hpp
// says what pad codes hold). Statistics see only real elements, except under conventions whose
// tool pads first (PadStatistics::zero_padded, i.e. ort_weight_only).
//
// NaN and Inf weights are an Error by default (naming the element); QuantizeOptions can instead
// quantize them as 0. A group whose scale overflows the scale type is an Error too.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "nibble/core/convention.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/parallel.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/pack.hpp"
#include "nibble/quant_tensor.hpp"
#include "nibble/solvers/rtn.hpp"

namespace nibble {

enum class NonFinitePolicy : uint8_t {
  error,              // a NaN or Inf weight is an Error naming its index (the default)
  replace_with_zero,  // NaN and Inf weights are quantized (and take part in statistics) as 0.0
};

struct QuantizeOptions {
  int num_threads = 0;  // OpenMP threads over rows; 0 = OpenMP's default
  NonFinitePolicy non_finite = NonFinitePolicy::error;
};

namespace detail {

// "[i0, i1, ..., k]" for element `col` of flattened row `row` of `shape`.
inline std::string format_index(const Shape& shape, int64_t row, int64_t col) {
  std::vector<int64_t> index(static_cast<std::size_t>(shape.rank()));
  index.back() = col;
  for (int axis = shape.rank() - 2; axis >= 0; --axis) {
    index[static_cast<std::size_t>(axis)] = row % shape[axis];
    row /= shape[axis];
  }
  return format_dims(index);
}

// Rejects a negative thread count, naming the options struct ("QuantizeOptions", ...).
inline void check_num_threads(const char* options_name, int num_threads) {
  if (num_threads < 0) {
    fail(ErrorCode::invalid_argument, options_name, ".num_threads = ", num_threads,
         " (expected >= 0; 0 uses OpenMP's default)");
  }
}

// Throws ErrorCode::non_finite for the first NaN / Inf of weights [..., K], naming it:
// "<who>: weights[i0, ..., k] = nan (shape [...]); <remedy>". The one check every entry point that
// rejects non-finite weights runs (RTN, k-quant, GPTQ, the calibration searches).
template <class W>
void check_finite_weights(const TensorView<const W>& weights, const char* who, const char* remedy) {
  for (int64_t row = 0; row < weights.rows(); ++row) {
    const W* values = weights.row(row);
    for (int64_t col = 0; col < weights.cols(); ++col) {
      const float value = to_float(values[col]);  // exact for every W
      if (!std::isfinite(value)) {
        fail(ErrorCode::non_finite, who, ": weights", format_index(weights.shape(), row, col),
             " = ", value, " (shape ", weights.shape(), "); ", remedy);
      }
    }
  }
}

}  // namespace detail

template <int Bits, class ScaleT = float>
class WeightQuantizer {
  static_assert(Bits == 2 || Bits == 4 || Bits == 8, "WeightQuantizer: Bits must be 2, 4 or 8");
  static_assert(is_float_type_v<ScaleT>, "WeightQuantizer: ScaleT must be float, fp16 or bf16");

 public:
  explicit WeightQuantizer(const QuantConfig& config, const QuantizeOptions& options = {})
      : config_(config), options_(options) {
    config_.validate();
    detail::check_num_threads("QuantizeOptions", options_.num_threads);
    if (config_.bits != Bits) {
      detail::fail(ErrorCode::invalid_argument, "WeightQuantizer<", Bits,
                   ">: config.bits = ", config_.bits, " (expected ", Bits, ")");
    }
  }

  WeightQuantizer(int64_t group_size, bool symmetric, ConventionId convention = ConventionId::olive,
                  const QuantizeOptions& options = {})
      : WeightQuantizer(QuantConfig{Bits, group_size, symmetric, convention}, options) {}

  const QuantConfig& config() const { return config_; }
  const QuantizeOptions& options() const { return options_; }

  // weights [..., K] (float, fp16 or bf16) -> canonical QuantTensor of the same logical shape.
  template <class W>
  QuantTensor<ScaleT> quantize(TensorView<const W> weights) const {
    static_assert(is_float_type_v<W>, "quantize: weights must be float, fp16 or bf16");
    if (options_.non_finite == NonFinitePolicy::error) {
      detail::check_finite_weights(weights, "quantize",
                                   "NaN/Inf weights are rejected by default "
                                   "(QuantizeOptions::non_finite = "
                                   "NonFinitePolicy::replace_with_zero quantizes them as 0)");
    }
    QuantTensor<ScaleT> out(weights.shape(), config_);
    const Convention& convention = config_.convention_of();
    rtn::with_math<W>(convention.range_arithmetic, [&](auto range_math) {
      rtn::with_math<W>(convention.arithmetic, [&](auto math) {
        quantize_rows<decltype(range_math), decltype(math)>(weights, out);
      });
    });
    return out;
  }

  template <class W>
  QuantTensor<ScaleT> quantize(TensorView<W> weights) const {
    return quantize(TensorView<const W>(weights));
  }

  // The fp32 weights a QuantTensor stands for, [rows * K] row-major.
  std::vector<float> dequantize(const QuantTensor<ScaleT>& tensor) const {
    return dequantize_ref(tensor.view());
  }

 private:
  template <class W>
  static float value_of(W weight, NonFinitePolicy policy) {
    const float value = to_float(weight);  // exact for every W
    if (policy == NonFinitePolicy::replace_with_zero && !std::isfinite(value)) return 0.0f;
    return value;
  }

  // Quantizes every row; rows are independent, so they run in parallel. A row whose scale
  // overflows throws; parallel_for rethrows the lowest such row's error after the region.
  template <class RangeMath, class Math, class W>
  void quantize_rows(const TensorView<const W>& weights, QuantTensor<ScaleT>& out) const {
    detail::parallel_for(options_.num_threads, weights.rows(), [&](int64_t row) {
      quantize_row<RangeMath, Math>(weights, row, out);
    });
  }

  // Quantizes one row into `out`; throws ErrorCode::non_finite if a group's scale is unusable.
  template <class RangeMath, class Math, class W>
  void quantize_row(const TensorView<const W>& weights, int64_t row,
                    QuantTensor<ScaleT>& out) const {
    using V = typename Math::value_type;
    const Convention& convention = config_.convention_of();
    const RowLayout& layout = out.layout();
    const bool symmetric = config_.symmetric;
    const NonFinitePolicy policy = options_.non_finite;
    const W* x = weights.row(row);
    std::vector<uint8_t> codes(static_cast<std::size_t>(layout.padded_k));
    std::vector<uint8_t> zero_codes(static_cast<std::size_t>(out.zero_slots()));
    ScaleT* scales = out.scales().data() + row * layout.n_groups;

    for (int64_t group = 0; group < layout.n_groups; ++group) {
      const int64_t begin = group * layout.group_size;
      const int64_t end = std::min(begin + layout.group_size, layout.k);
      float lo = value_of(x[begin], policy);
      float hi = lo;
      for (int64_t col = begin + 1; col < end; ++col) {
        const float value = value_of(x[col], policy);
        lo = std::min(lo, value);
        hi = std::max(hi, value);
      }
      if (convention.pad_statistics == PadStatistics::zero_padded &&
          end - begin < layout.group_size) {
        lo = std::min(lo, 0.0f);  // the tool padded K with zeros before taking min / max
        hi = std::max(hi, 0.0f);
      }

      const auto params = rtn::group_params<RangeMath, Math>(convention, Bits, symmetric, lo, hi);
      const ScaleT stored = rtn::store_scale<ScaleT>(params.scale);
      V code_scale = params.scale;
      if constexpr (std::is_same_v<W, fp16>) {
        if (convention.code_scale == CodeScale::mlas_element_type) {
          code_scale = V(to_float(rtn::store_scale<fp16>(params.scale)));  // MLAS's fp16 path
        }
      }
      const rtn::GroupCoder<Math> coder(convention, Bits, symmetric, code_scale, params.zero);
      const bool reciprocal_overflows = convention.code_op == CodeOp::multiply_by_reciprocal &&
                                        !std::isfinite(coder.reciprocal());
      if (!std::isfinite(params.scale) || !std::isfinite(to_float(stored)) ||
          reciprocal_overflows) {
        detail::fail(ErrorCode::non_finite, "quantize: row ",
                     detail::format_index(weights.shape(), row, begin), " group ", group,
                     ": values in [", lo, ", ", hi, "] give scale ", params.scale, " stored as ",
                     to_float(stored), " (", type_name<ScaleT>(), ")",
                     reciprocal_overflows ? ", whose reciprocal overflows float" : "",
                     "; the range does not fit this scale type");
      }

      for (int64_t col = begin; col < end; ++col) {
        codes[static_cast<std::size_t>(col)] = coder.code(value_of(x[col], policy));
      }
      scales[group] = stored;
      zero_codes[static_cast<std::size_t>(group)] = static_cast<uint8_t>(params.zero);
    }
    out.pack_row(row, codes.data(), zero_codes.data());  // pads: 0.0's code, the convention's
  }

  QuantConfig config_;
  QuantizeOptions options_;
};

// Quantizes with the bit width chosen at run time (config.bits), e.g. from a CLI or Python.
template <class ScaleT, class W>
QuantTensor<ScaleT> quantize(TensorView<const W> weights, const QuantConfig& config,
                             const QuantizeOptions& options = {}) {
  config.validate();
  switch (config.bits) {
    case 2:
      return WeightQuantizer<2, ScaleT>(config, options).quantize(weights);
    case 4:
      return WeightQuantizer<4, ScaleT>(config, options).quantize(weights);
    default:
      return WeightQuantizer<8, ScaleT>(config, options).quantize(weights);
  }
}

// The fp32 weights a QuantTensor stands for, row-major in its logical shape.
template <class ScaleT>
std::vector<float> dequantize(const QuantTensor<ScaleT>& tensor) {
  return dequantize_ref(tensor.view());
}

}  // namespace nibble
