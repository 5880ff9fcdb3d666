// nibble._nibble: the C++ core of the Python package (python/nibble/__init__.py is the API).
//
// Arrays cross the boundary without copies: inputs are viewed in place (C-contiguous, CPU);
// outputs are numpy arrays that own the C++ buffers they view. fp16 and bf16 travel as uint16
// bit patterns with a dtype name, because numpy has no bf16 of its own; the Python layer views
// them as numpy.float16 / ml_dtypes.bfloat16. Every call validates through nibble's own entry
// points: nibble::Error becomes ValueError (TypeError for a type mismatch, OSError for io) with
// the same message.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nibble/nibble.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using nibble::ErrorCode;
using InArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

[[noreturn]] void type_error(const std::string& what, const std::string& expected) {
  nibble::detail::fail(ErrorCode::type_mismatch, what, ": expected ", expected);
}

template <class T>
bool has_dtype(const InArray& array) {
  return array.dtype() == nb::dtype<T>();
}

// The shape of `array` as a nibble::Shape (rank >= 1, every dim >= 1: nibble's rules).
nibble::Shape shape_of(const InArray& array, const char* what) {
  if (array.ndim() == 0) {
    nibble::detail::fail(ErrorCode::shape_mismatch, what, " is a 0-d array (expected rank >= 1)");
  }
  std::vector<int64_t> dims(array.ndim());
  for (std::size_t axis = 0; axis < array.ndim(); ++axis) {
    dims[axis] = static_cast<int64_t>(array.shape(axis));
  }
  return nibble::Shape(std::move(dims));
}

// A numpy array of `dims` that owns `values` (moved, not copied). `Stored` is the C++ element
// type, `Exposed` the numpy one (fp16/bf16 are exposed as their uint16 bit patterns).
template <class Exposed, class Stored>
nb::ndarray<nb::numpy, Exposed> owned_array(std::vector<Stored>&& values,
                                            const std::vector<int64_t>& dims) {
  static_assert(sizeof(Exposed) == sizeof(Stored), "same bytes, another name");
  auto* holder = new std::vector<Stored>(std::move(values));
  nb::capsule owner(
      holder, [](void* pointer) noexcept { delete static_cast<std::vector<Stored>*>(pointer); });
  std::vector<std::size_t> shape(dims.begin(), dims.end());
  return nb::ndarray<nb::numpy, Exposed>(reinterpret_cast<Exposed*>(holder->data()), shape.size(),
                                         shape.data(), owner);
}

// Calls f(T{}) with the scale type named `name`.
template <class F>
decltype(auto) with_scale_type(const std::string& name, F&& f) {
  if (name == "float32") return f(float{});
  if (name == "float16") return f(nibble::fp16{});
  if (name == "bfloat16") return f(nibble::bf16{});
  nibble::detail::fail(ErrorCode::invalid_argument, "scale dtype \"", name,
                       "\" is not supported (expected float32, float16 or bfloat16)");
}

template <class T>
const char* stored_dtype_name() {
  return std::is_same_v<T, float> ? "float32" : "uint16";
}

// The arrays and metadata of one Python QuantTensor, validated once (by building the
// QuantTensorView over them) and kept alive for as long as this object lives.
class TensorRef {
 public:
  // Calls f(QuantTensorView<ScaleT>) over the arrays, without copying them.
  template <class F>
  decltype(auto) visit(F&& f) const {
    return with_scale_type(scale_dtype_, [&](auto scale) -> decltype(auto) {
      using ScaleT = decltype(scale);
      const nibble::QuantTensorView<ScaleT> view(
          shape(), config_, static_cast<const uint8_t*>(qweight_.data()),
          static_cast<int64_t>(qweight_.size()), static_cast<const ScaleT*>(scales_.data()),
          static_cast<int64_t>(scales_.size()),
          zeros_ ? static_cast<const uint8_t*>(zeros_->data()) : nullptr,
          zeros_ ? static_cast<int64_t>(zeros_->size()) : 0);
      return f(view);
    });
  }

  TensorRef(InArray qweight, InArray scales, std::optional<InArray> zeros,
            std::vector<int64_t> dims, int bits, int64_t group_size, bool symmetric,
            const std::string& convention, std::string scale_dtype)
      : qweight_(std::move(qweight)),
        scales_(std::move(scales)),
        zeros_(std::move(zeros)),
        shape_(std::move(dims)),
        config_{bits, group_size, symmetric, nibble::convention_from_name(convention)},
        scale_dtype_(std::move(scale_dtype)) {
    if (!has_dtype<uint8_t>(qweight_)) type_error("qweight", "uint8");
    if (zeros_ && !has_dtype<uint8_t>(*zeros_)) type_error("zeros", "uint8");
    with_scale_type(scale_dtype_, [&](auto scale) {
      using ScaleT = decltype(scale);
      const bool ok =
          std::is_same_v<ScaleT, float> ? has_dtype<float>(scales_) : has_dtype<uint16_t>(scales_);
      if (!ok)
        type_error("scales", std::string(stored_dtype_name<ScaleT>()) + " (" + scale_dtype_ + ")");
      return 0;
    });
    // Exact sizes (a view accepts larger buffers; a tensor's arrays must be exactly its own).
    const nibble::RowLayout layout = nibble::RowLayout::make(config_, shape().last());
    expect_size(qweight_, shape().rows() * layout.packed_row_bytes, "qweight");
    expect_size(scales_, shape().rows() * layout.n_groups, "scales");
    if (zeros_) expect_size(*zeros_, shape().rows() * layout.zero_row_bytes, "zeros");
    visit([](const auto&) { return 0; });  // builds (and so validates) the view
  }

  nibble::Shape shape() const { return nibble::Shape(shape_); }
  const nibble::QuantConfig& config() const { return config_; }
  const std::string& scale_dtype() const { return scale_dtype_; }

 private:
  static void expect_size(const InArray& array, int64_t expected, const char* what) {
    if (static_cast<int64_t>(array.size()) != expected) {
      nibble::detail::fail(ErrorCode::shape_mismatch, what, " has ", array.size(),
                           " elements (expected ", expected, " for this shape and config)");
    }
  }

  InArray qweight_;
  InArray scales_;
  std::optional<InArray> zeros_;
  std::vector<int64_t> shape_;
  nibble::QuantConfig config_;
  std::string scale_dtype_;
};

// Leading dims of `shape` followed by `last`.
std::vector<int64_t> with_last(const nibble::Shape& shape, int64_t last) {
  return shape.with_last(last).dims();
}

// (qweight, scales, zeros or None) of solve(TensorView<const W>, ScaleT{}) -> QuantTensor<ScaleT>,
// run without the GIL, for weights of `weight_dtype` and scales of `scale_dtype`.
template <class Solve>
nb::tuple quantize_with(const InArray& weights, const std::string& weight_dtype,
                        const std::string& scale_dtype, bool symmetric, Solve&& solve) {
  const nibble::Shape shape = shape_of(weights, "weights");
  const auto run = [&](auto weight, auto scale) -> nb::tuple {
    using W = decltype(weight);
    using ScaleT = decltype(scale);
    const nibble::TensorView<const W> view(static_cast<const W*>(weights.data()), shape, "weights");
    std::optional<nibble::QuantTensor<ScaleT>> result;
    {
      nb::gil_scoped_release no_gil;
      result.emplace(solve(view, scale));
    }
    const nibble::RowLayout& layout = result->layout();
    nb::object zeros = nb::none();
    if (!symmetric) {
      zeros = nb::cast(owned_array<uint8_t>(std::move(result->zeros()),
                                            with_last(shape, layout.zero_row_bytes)));
    }
    nb::object scales;
    if constexpr (std::is_same_v<ScaleT, float>) {
      scales = nb::cast(
          owned_array<float>(std::move(result->scales()), with_last(shape, layout.n_groups)));
    } else {
      scales = nb::cast(
          owned_array<uint16_t>(std::move(result->scales()), with_last(shape, layout.n_groups)));
    }
    return nb::make_tuple(owned_array<uint8_t>(std::move(result->qweight()),
                                               with_last(shape, layout.packed_row_bytes)),
                          scales, zeros);
  };
  return with_scale_type(scale_dtype, [&](auto scale) -> nb::tuple {
    if (weight_dtype == "float32") {
      if (!has_dtype<float>(weights)) type_error("weights", "float32");
      return run(float{}, scale);
    }
    if (weight_dtype == "float16" || weight_dtype == "bfloat16") {
      if (!has_dtype<uint16_t>(weights))
        type_error("weights", "uint16 bit patterns of " + weight_dtype);
      return weight_dtype == "float16" ? run(nibble::fp16{}, scale) : run(nibble::bf16{}, scale);
    }
    nibble::detail::fail(ErrorCode::type_mismatch, "weights dtype \"", weight_dtype,
                         "\" is not supported (expected float32, float16 or bfloat16)");
  });
}

nibble::NonFinitePolicy non_finite_policy(bool replace_non_finite) {
  return replace_non_finite ? nibble::NonFinitePolicy::replace_with_zero
                            : nibble::NonFinitePolicy::error;
}

nb::tuple quantize(const InArray& weights, const std::string& weight_dtype, int bits,
                   int64_t group_size, bool symmetric, const std::string& convention,
                   const std::string& scale_dtype, int num_threads, bool replace_non_finite) {
  const nibble::QuantConfig config{bits, group_size, symmetric,
                                   nibble::convention_from_name(convention)};
  nibble::QuantizeOptions options;
  options.num_threads = num_threads;
  options.non_finite = non_finite_policy(replace_non_finite);
  return quantize_with(weights, weight_dtype, scale_dtype, symmetric,
                       [&](const auto& view, auto scale) {
                         return nibble::quantize<decltype(scale)>(view, config, options);
                       });
}

nb::tuple kquant(const InArray& weights, const std::string& weight_dtype, int bits,
                 int64_t group_size, bool symmetric, const std::string& convention,
                 const std::string& scale_dtype, int num_threads, bool replace_non_finite,
                 const std::string& variant, std::optional<InArray> importance) {
  const nibble::QuantConfig config{bits, group_size, symmetric,
                                   nibble::convention_from_name(convention)};
  nibble::KQuantOptions options;
  options.variant = nibble::kquant_variant_from_name(variant);
  options.num_threads = num_threads;
  options.non_finite = non_finite_policy(replace_non_finite);
  if (importance) {
    if (!has_dtype<float>(*importance)) type_error("importance", "float32");
    const auto* values = static_cast<const float*>(importance->data());
    options.importance.assign(values, values + importance->size());
  }
  return quantize_with(weights, weight_dtype, scale_dtype, symmetric,
                       [&](const auto& view, auto scale) {
                         return nibble::kquant_quantize<decltype(scale)>(view, config, options);
                       });
}

// (qweight, scales, zeros or None, g_idx or None, loss): GPTQ with one Hessian per calibration
// array (one shared, or one per leading index of the weights).
nb::tuple gptq(const InArray& weights, const std::string& weight_dtype,
               const std::vector<InArray>& calibration, int bits, int64_t group_size,
               bool symmetric, const std::string& convention, const std::string& scale_dtype,
               double damp_percent, int64_t block_size, bool act_order, bool static_groups,
               bool fp64, int num_threads) {
  const nibble::QuantConfig config{bits, group_size, symmetric,
                                   nibble::convention_from_name(convention)};
  const nibble::Shape shape = shape_of(weights, "weights");
  std::vector<nibble::GptqHessian> hessians;
  hessians.reserve(calibration.size());
  for (const InArray& x : calibration) {
    if (!has_dtype<float>(x)) type_error("calibration", "float32");
    const nibble::Shape x_shape = shape_of(x, "calibration");
    hessians.emplace_back(shape.last());
    nb::gil_scoped_release no_gil;
    hessians.back().add_batch(nibble::TensorView<const float>(static_cast<const float*>(x.data()),
                                                              x_shape, "calibration"));
  }
  nibble::GptqOptions options;
  options.damp_percent = damp_percent;
  options.block_size = block_size;
  options.act_order = act_order;
  options.static_groups = static_groups;
  options.fp64 = fp64;
  options.num_threads = num_threads;
  std::vector<int32_t> g_idx;
  double loss = 0;
  nb::tuple arrays = quantize_with(
      weights, weight_dtype, scale_dtype, symmetric, [&](const auto& view, auto scale) {
        auto result = nibble::gptq_quantize<decltype(scale)>(view, config, hessians, options);
        g_idx = std::move(result.g_idx);
        loss = result.loss;
        return std::move(result.tensor);
      });
  nb::object g_idx_array = nb::none();
  if (!g_idx.empty()) {
    // [leading..., K]: the dims before [N, K], then K.
    const std::vector<int64_t>& dims = shape.dims();
    std::vector<int64_t> g_idx_dims(
        dims.begin(),
        dims.end() - std::min<std::ptrdiff_t>(2, static_cast<std::ptrdiff_t>(dims.size())));
    g_idx_dims.push_back(shape.last());
    g_idx_array = nb::cast(owned_array<int32_t>(std::move(g_idx), g_idx_dims));
  }
  return nb::make_tuple(arrays[0], arrays[1], arrays[2], g_idx_array, loss);
}

// Views of float32 calibration matrices (validated: float32, C-contiguous, rank >= 1).
std::vector<nibble::TensorView<const float>> calibration_views(
    const std::vector<InArray>& calibration) {
  std::vector<nibble::TensorView<const float>> views;
  for (const InArray& x : calibration) {
    if (!has_dtype<float>(x)) type_error("calibration", "float32");
    views.emplace_back(static_cast<const float*>(x.data()), shape_of(x, "calibration"),
                       "calibration");
  }
  return views;
}

nibble::QuantSolver solver_named(const std::string& solver, const std::string& kquant_variant) {
  nibble::QuantSolver out;
  if (solver == "rtn") {
    out.kind = nibble::SearchSolver::rtn;
  } else if (solver == "k_quant") {
    out.kind = nibble::SearchSolver::k_quant;
    out.kquant.variant = nibble::kquant_variant_from_name(kquant_variant);
  } else {
    nibble::detail::fail(ErrorCode::invalid_argument, "solver \"", solver,
                         "\" is not supported here (expected \"rtn\" or \"k_quant\")");
  }
  return out;
}

// (clipped weights [shape], upper ratio [rows, groups], lower ratio [rows, groups]).
nb::tuple autoclip(const InArray& weights, const std::vector<InArray>& calibration, int bits,
                   int64_t group_size, bool symmetric, const std::string& convention,
                   const std::string& solver, const std::string& kquant_variant, int steps,
                   float min_ratio, bool min_max, int num_threads) {
  if (!has_dtype<float>(weights)) type_error("weights", "float32");
  const nibble::Shape shape = shape_of(weights, "weights");
  const nibble::QuantConfig config{bits, group_size, symmetric,
                                   nibble::convention_from_name(convention)};
  nibble::AutoClipOptions options;
  options.steps = steps;
  options.min_ratio = min_ratio;
  options.range = min_max ? nibble::ClipRange::min_max : nibble::ClipRange::abs_max;
  options.solver.kind = solver_named(solver, kquant_variant).kind;
  options.solver.kquant.variant = solver_named(solver, kquant_variant).kquant.variant;
  options.num_threads = num_threads;
  const std::vector<nibble::TensorView<const float>> views = calibration_views(calibration);
  std::optional<nibble::AutoClipResult> result;
  {
    nb::gil_scoped_release no_gil;
    result.emplace(
        nibble::autoclip<float>(nibble::TensorView<const float>(
                                    static_cast<const float*>(weights.data()), shape, "weights"),
                                views, config, options));
  }
  const std::vector<int64_t> ratio_dims = with_last(shape, result->n_groups);
  return nb::make_tuple(owned_array<float>(std::move(result->clipped), shape.dims()),
                        owned_array<float>(std::move(result->upper_ratio), ratio_dims),
                        owned_array<float>(std::move(result->lower_ratio), ratio_dims));
}

// (scaled weights [shape], scale [n_scales, K], pre_quant_scale [n_scales, K], alpha [n_scales]).
nb::tuple awq(const InArray& weights, const std::vector<InArray>& calibration, int bits,
              int64_t group_size, bool symmetric, const std::string& convention,
              const std::string& solver, const std::string& kquant_variant, int grid,
              int num_threads) {
  if (!has_dtype<float>(weights)) type_error("weights", "float32");
  const nibble::Shape shape = shape_of(weights, "weights");
  const nibble::QuantConfig config{bits, group_size, symmetric,
                                   nibble::convention_from_name(convention)};
  nibble::AwqOptions options;
  options.grid = grid;
  options.solver.kind = solver_named(solver, kquant_variant).kind;
  options.solver.kquant.variant = solver_named(solver, kquant_variant).kquant.variant;
  options.num_threads = num_threads;
  const std::vector<nibble::TensorView<const float>> views = calibration_views(calibration);
  std::optional<nibble::AwqResult> result;
  {
    nb::gil_scoped_release no_gil;
    result.emplace(
        nibble::awq_search<float>(nibble::TensorView<const float>(
                                      static_cast<const float*>(weights.data()), shape, "weights"),
                                  views, config, options));
  }
  const std::vector<int64_t> scale_dims{result->n_scales, shape.last()};
  return nb::make_tuple(owned_array<float>(std::move(result->scaled_weights), shape.dims()),
                        owned_array<float>(std::move(result->scale), scale_dims),
                        owned_array<float>(std::move(result->pre_quant_scale), scale_dims),
                        owned_array<float>(std::move(result->alpha), {result->n_scales}));
}

nb::ndarray<nb::numpy, float> dequantize(const TensorRef& tensor) {
  return tensor.visit([&](const auto& view) {
    std::vector<float> out;
    {
      nb::gil_scoped_release no_gil;
      out = nibble::dequantize_ref(view);
    }
    return owned_array<float>(std::move(out), view.shape().dims());
  });
}

nibble::TensorView<const float> float_view(const InArray& array, const char* what) {
  if (!has_dtype<float>(array)) type_error(what, "float32");
  return nibble::TensorView<const float>(static_cast<const float*>(array.data()),
                                         shape_of(array, what), what);
}

nb::ndarray<nb::numpy, float> gemm(const InArray& x, const TensorRef& tensor,
                                   const std::optional<InArray>& bias) {
  const nibble::TensorView<const float> x_view = float_view(x, "x");
  return tensor.visit([&](const auto& view) {
    const nibble::Shape y_shape = x_view.shape().with_last(view.rows());
    std::vector<float> y(static_cast<std::size_t>(y_shape.numel()));
    const nibble::TensorView<float> y_view(y.data(), y_shape, "y");
    if (bias) {
      const nibble::TensorView<const float> bias_view = float_view(*bias, "bias");
      nb::gil_scoped_release no_gil;
      nibble::gemm_ref(view, x_view, y_view, bias_view);
    } else {
      nb::gil_scoped_release no_gil;
      nibble::gemm_ref(view, x_view, y_view);
    }
    return owned_array<float>(std::move(y), y_shape.dims());
  });
}

nb::ndarray<nb::numpy, float> moe_gemm(const InArray& x, const TensorRef& tensor,
                                       const InArray& expert_ids,
                                       const std::optional<InArray>& gates) {
  const nibble::TensorView<const float> x_view = float_view(x, "x");
  if (!has_dtype<int32_t>(expert_ids)) type_error("expert_ids", "int32");
  const nibble::TensorView<const int32_t> ids(static_cast<const int32_t*>(expert_ids.data()),
                                              shape_of(expert_ids, "expert_ids"), "expert_ids");
  return tensor.visit([&](const auto& view) {
    const int64_t n = view.rows() / view.shape()[0];
    const nibble::Shape y_shape = x_view.shape().with_last(n);
    std::vector<float> y(static_cast<std::size_t>(y_shape.numel()));
    const nibble::TensorView<float> y_view(y.data(), y_shape, "y");
    if (gates) {
      const nibble::TensorView<const float> gate_view = float_view(*gates, "gates");
      nb::gil_scoped_release no_gil;
      nibble::moe_gemm_ref(view, x_view, ids, gate_view, y_view);
    } else {
      nb::gil_scoped_release no_gil;
      nibble::moe_gemm_ref(view, x_view, ids, y_view);
    }
    return owned_array<float>(std::move(y), y_shape.dims());
  });
}

template <class F>
decltype(auto) with_bits(int bits, F&& f) {
  switch (bits) {
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 8:
      return f(std::integral_constant<int, 8>{});
    default:
      nibble::detail::fail(ErrorCode::invalid_argument, "bits = ", bits,
                           " is not supported (expected 2, 4 or 8)");
  }
}

nb::ndarray<nb::numpy, uint8_t> pack(const InArray& codes, int bits) {
  if (!has_dtype<uint8_t>(codes)) type_error("codes", "uint8");
  const nibble::Shape shape = shape_of(codes, "codes");
  return with_bits(bits, [&](auto width) {
    constexpr int kBits = decltype(width)::value;
    std::vector<uint8_t> packed = nibble::pack<kBits>(nibble::TensorView<const uint8_t>(
        static_cast<const uint8_t*>(codes.data()), shape, "codes"));
    return owned_array<uint8_t>(std::move(packed), nibble::packed_shape<kBits>(shape).dims());
  });
}

nb::ndarray<nb::numpy, uint8_t> unpack(const InArray& packed, int bits, int64_t k) {
  if (!has_dtype<uint8_t>(packed)) type_error("packed", "uint8");
  const nibble::Shape shape = shape_of(packed, "packed");
  return with_bits(bits, [&](auto width) {
    constexpr int kBits = decltype(width)::value;
    std::vector<uint8_t> codes =
        nibble::unpack<kBits>(nibble::TensorView<const uint8_t>(
                                  static_cast<const uint8_t*>(packed.data()), shape, "packed"),
                              k);
    return owned_array<uint8_t>(std::move(codes), shape.with_last(k).dims());
  });
}

nb::dict layout(const TensorRef& tensor) {
  const nibble::RowLayout row = nibble::RowLayout::make(tensor.config(), tensor.shape().last());
  nb::dict out;
  out["k"] = row.k;
  out["group_size"] = row.group_size;
  out["n_groups"] = row.n_groups;
  out["padded_k"] = row.padded_k;
  out["packed_row_bytes"] = row.packed_row_bytes;
  out["zero_row_bytes"] = row.zero_row_bytes;
  return out;
}

// MatMulNBits attributes and input shapes (the arrays are reshaped views, made in Python).
nb::dict matmul_nbits(const TensorRef& tensor) {
  return tensor.visit([](const auto& view) {
    const auto inputs = nibble::ort::as_matmul_nbits(view);
    nb::dict out;
    out["K"] = inputs.K;
    out["N"] = inputs.N;
    out["bits"] = inputs.bits;
    out["block_size"] = inputs.block_size;
    out["B_shape"] = std::vector<int64_t>(inputs.B_shape.begin(), inputs.B_shape.end());
    out["scales_shape"] =
        std::vector<int64_t>(inputs.scales_shape.begin(), inputs.scales_shape.end());
    out["zero_points_shape"] =
        std::vector<int64_t>(inputs.zero_points_shape.begin(), inputs.zero_points_shape.end());
    return out;
  });
}

nb::dict gather_block_quantized(const TensorRef& tensor) {
  return tensor.visit([](const auto& view) {
    const auto inputs = nibble::ort::as_gather_block_quantized(view);
    nb::dict out;
    out["gather_axis"] = inputs.gather_axis;
    out["quantize_axis"] = inputs.quantize_axis;
    out["block_size"] = inputs.block_size;
    out["bits"] = inputs.bits;
    out["data_shape"] = inputs.data_shape;
    out["scales_shape"] = inputs.scales_shape;
    out["zero_points_shape"] = inputs.zero_points_shape;
    return out;
  });
}

// ORT's INT4/UINT4 GatherBlockQuantized bytes: (data, zero_points or None, signed, block_size).
nb::tuple gather_block_quantized_int4(const TensorRef& tensor) {
  return tensor.visit([](const auto& view) {
    auto out = nibble::ort::to_gather_block_quantized_int4(view);
    const auto data_bytes = static_cast<int64_t>(out.data.size());
    nb::object zero_points = nb::none();
    if (!out.signed_data) {
      const auto zero_bytes = static_cast<int64_t>(out.zero_points.size());
      zero_points = nb::cast(owned_array<uint8_t>(std::move(out.zero_points), {zero_bytes}));
    }
    return nb::make_tuple(owned_array<uint8_t>(std::move(out.data), {data_bytes}), zero_points,
                          out.signed_data, out.block_size);
  });
}

nb::dict build_info() {
  nb::dict info;
  info["version"] = nibble::kVersionString;
  info["compiler"] = NIBBLE_PYTHON_COMPILER;
  info["cplusplus"] = static_cast<long>(__cplusplus);
#if defined(_OPENMP)
  info["openmp"] = static_cast<long>(_OPENMP);
  info["openmp_max_threads"] = nibble::detail::thread_count(0);
#else
  info["openmp"] = nb::none();
  info["openmp_max_threads"] = 1;
#endif
  // The CPU kernels compiled in: only the scalar reference kernels exist so far.
  info["kernels"] = std::vector<std::string>{"reference (scalar)"};
  // What this CPU offers (the SIMD kernels will dispatch on it at run time).
  std::vector<std::string> features;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) features.emplace_back("avx2");
  if (__builtin_cpu_supports("fma")) features.emplace_back("fma");
  if (__builtin_cpu_supports("avx512f")) features.emplace_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) features.emplace_back("avx512bw");
  if (__builtin_cpu_supports("avx512vnni")) features.emplace_back("avx512vnni");
  if (__builtin_cpu_supports("avx512bf16")) features.emplace_back("avx512bf16");
#endif
  info["cpu_features"] = features;
  std::vector<std::string> conventions;
  for (const nibble::Convention& convention : nibble::kConventions)
    conventions.emplace_back(convention.name);
  info["conventions"] = conventions;
  return info;
}

void translate_errors(const std::exception_ptr& error, void*) {
  try {
    std::rethrow_exception(error);
  } catch (const nibble::Error& nibble_error) {
    PyObject* type = PyExc_ValueError;
    if (nibble_error.code() == ErrorCode::type_mismatch) type = PyExc_TypeError;
    if (nibble_error.code() == ErrorCode::io) type = PyExc_OSError;
    PyErr_SetString(type, nibble_error.what());
  }
}

}  // namespace

NB_MODULE(_nibble, m) {
  m.doc() = "nibble's C++ core; use the nibble package, not this module";
  m.attr("__version__") = nibble::kVersionString;
  nb::register_exception_translator(translate_errors);

  nb::class_<TensorRef>(m, "TensorRef")
      .def(nb::init<InArray, InArray, std::optional<InArray>, std::vector<int64_t>, int, int64_t,
                    bool, const std::string&, std::string>(),
           "qweight"_a, "scales"_a, "zeros"_a.none(), "shape"_a, "bits"_a, "group_size"_a,
           "symmetric"_a, "convention"_a, "scale_dtype"_a);

  m.def("quantize", &quantize, "weights"_a, "weight_dtype"_a, "bits"_a, "group_size"_a,
        "symmetric"_a, "convention"_a, "scale_dtype"_a, "num_threads"_a, "replace_non_finite"_a);
  m.def("gptq", &gptq, "weights"_a, "weight_dtype"_a, "calibration"_a, "bits"_a, "group_size"_a,
        "symmetric"_a, "convention"_a, "scale_dtype"_a, "damp_percent"_a, "block_size"_a,
        "act_order"_a, "static_groups"_a, "fp64"_a, "num_threads"_a);
  m.def("autoclip", &autoclip, "weights"_a, "calibration"_a, "bits"_a, "group_size"_a,
        "symmetric"_a, "convention"_a, "solver"_a, "kquant_variant"_a, "steps"_a, "min_ratio"_a,
        "min_max"_a, "num_threads"_a);
  m.def("awq", &awq, "weights"_a, "calibration"_a, "bits"_a, "group_size"_a, "symmetric"_a,
        "convention"_a, "solver"_a, "kquant_variant"_a, "grid"_a, "num_threads"_a);
  m.def("kquant", &kquant, "weights"_a, "weight_dtype"_a, "bits"_a, "group_size"_a, "symmetric"_a,
        "convention"_a, "scale_dtype"_a, "num_threads"_a, "replace_non_finite"_a, "variant"_a,
        "importance"_a.none());
  m.def("dequantize", &dequantize, "tensor"_a);
  m.def("gemm", &gemm, "x"_a, "tensor"_a, "bias"_a.none());
  m.def("moe_gemm", &moe_gemm, "x"_a, "tensor"_a, "expert_ids"_a, "gates"_a.none());
  m.def("pack", &pack, "codes"_a, "bits"_a);
  m.def("unpack", &unpack, "packed"_a, "bits"_a, "k"_a);
  m.def("layout", &layout, "tensor"_a);
  m.def("matmul_nbits", &matmul_nbits, "tensor"_a);
  m.def("gather_block_quantized", &gather_block_quantized, "tensor"_a);
  m.def("gather_block_quantized_int4", &gather_block_quantized_int4, "tensor"_a);
  m.def("build_info", &build_info);
}
