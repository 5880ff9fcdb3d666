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

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
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

template <class T>
const char* scale_dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, nibble::fp16>) return "float16";
  return "bfloat16";
}

// `array` holds ScaleT values: float32, or the uint16 bit patterns of fp16 / bf16.
template <class ScaleT>
void check_scale_array(const InArray& array, const char* what) {
  const bool ok =
      std::is_same_v<ScaleT, float> ? has_dtype<float>(array) : has_dtype<uint16_t>(array);
  if (!ok) {
    type_error(what,
               std::string(stored_dtype_name<ScaleT>()) + " (" + scale_dtype_name<ScaleT>() + ")");
  }
}

// `array`'s shape is exactly `expected` (checkpoint arrays: no reshaping is guessed).
void expect_dims(const InArray& array, const std::vector<int64_t>& expected, const char* what) {
  std::vector<int64_t> dims(array.ndim());
  for (std::size_t axis = 0; axis < array.ndim(); ++axis)
    dims[axis] = static_cast<int64_t>(array.shape(axis));
  if (dims != expected) {
    nibble::detail::fail(ErrorCode::shape_mismatch, what, " has shape ",
                         nibble::detail::format_dims(dims), " (expected ",
                         nibble::detail::format_dims(expected), ")");
  }
}

template <class T>
const T* data_of(const InArray& array) {
  return static_cast<const T*>(array.data());
}

// The arrays and metadata of one Python QuantTensor, validated once (by building the
// QuantTensorView over them) and kept alive for as long as this object lives.
class TensorRef {
 public:
  // Calls f(QuantTensorView<ScaleT>) over the arrays, without copying them.
  template <class F>
  decltype(auto) visit(F&& f) const {
    return with_scale_type(
        scale_dtype_, [&](auto scale) -> decltype(auto) { return f(view<decltype(scale)>()); });
  }

  // The arrays as a QuantTensorView<ScaleT>; TypeError unless the scales are ScaleT.
  template <class ScaleT>
  nibble::QuantTensorView<ScaleT> view() const {
    if (scale_dtype_ != scale_dtype_name<ScaleT>()) {
      type_error("tensor scales", std::string(scale_dtype_name<ScaleT>()) + " (got " +
                                      scale_dtype_ + "; every tensor here must have one dtype)");
    }
    return nibble::QuantTensorView<ScaleT>(
        shape(), config_, data_of<uint8_t>(qweight_), static_cast<int64_t>(qweight_.size()),
        data_of<ScaleT>(scales_), static_cast<int64_t>(scales_.size()),
        zeros_ ? data_of<uint8_t>(*zeros_) : nullptr,
        zeros_ ? static_cast<int64_t>(zeros_->size()) : 0);
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
      check_scale_array<decltype(scale)>(scales_, "scales");
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

// The QuantConfig every quantizing binding takes (validated where a quantizer builds its layout).
nibble::QuantConfig make_config(int bits, int64_t group_size, bool symmetric,
                                const std::string& convention) {
  return nibble::QuantConfig{bits, group_size, symmetric, nibble::convention_from_name(convention)};
}

// A numpy array owning `scales`: float32 as they are, fp16 / bf16 as uint16 bit patterns.
template <class ScaleT>
nb::object scale_array(std::vector<ScaleT>&& scales, const std::vector<int64_t>& dims) {
  if constexpr (std::is_same_v<ScaleT, float>) {
    return nb::cast(owned_array<float>(std::move(scales), dims));
  } else {
    return nb::cast(owned_array<uint16_t>(std::move(scales), dims));
  }
}

// (qweight, scales, zeros or None): numpy arrays that take over a QuantTensor's buffers.
template <class ScaleT>
nb::tuple tensor_arrays(nibble::QuantTensor<ScaleT>&& tensor) {
  const nibble::Shape shape = tensor.shape();
  const nibble::RowLayout layout = tensor.layout();
  nb::object zeros = nb::none();
  if (!tensor.config().symmetric) {
    zeros = nb::cast(
        owned_array<uint8_t>(std::move(tensor.zeros()), with_last(shape, layout.zero_row_bytes)));
  }
  nb::object scales = scale_array(std::move(tensor.scales()), with_last(shape, layout.n_groups));
  return nb::make_tuple(
      owned_array<uint8_t>(std::move(tensor.qweight()), with_last(shape, layout.packed_row_bytes)),
      scales, zeros);
}

// (qweight, scales, zeros or None) of solve(TensorView<const W>, ScaleT{}) -> QuantTensor<ScaleT>,
// run without the GIL, for weights of `weight_dtype` and scales of `scale_dtype`.
template <class Solve>
nb::tuple quantize_with(const InArray& weights, const std::string& weight_dtype,
                        const std::string& scale_dtype, Solve&& solve) {
  const nibble::Shape shape = shape_of(weights, "weights");
  const auto run = [&](auto weight, auto scale) -> nb::tuple {
    using W = decltype(weight);
    using ScaleT = decltype(scale);
    const nibble::TensorView<const W> view(data_of<W>(weights), shape, "weights");
    std::optional<nibble::QuantTensor<ScaleT>> result;
    {
      nb::gil_scoped_release no_gil;
      result.emplace(solve(view, scale));
    }
    return tensor_arrays(std::move(*result));
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
  const nibble::QuantConfig config = make_config(bits, group_size, symmetric, convention);
  nibble::QuantizeOptions options;
  options.num_threads = num_threads;
  options.non_finite = non_finite_policy(replace_non_finite);
  return quantize_with(weights, weight_dtype, scale_dtype, [&](const auto& view, auto scale) {
    return nibble::quantize<decltype(scale)>(view, config, options);
  });
}

nb::tuple kquant(const InArray& weights, const std::string& weight_dtype, int bits,
                 int64_t group_size, bool symmetric, const std::string& convention,
                 const std::string& scale_dtype, int num_threads, bool replace_non_finite,
                 const std::string& variant, std::optional<InArray> importance) {
  const nibble::QuantConfig config = make_config(bits, group_size, symmetric, convention);
  nibble::KQuantOptions options;
  options.variant = nibble::kquant_variant_from_name(variant);
  options.num_threads = num_threads;
  options.non_finite = non_finite_policy(replace_non_finite);
  if (importance) {
    if (!has_dtype<float>(*importance)) type_error("importance", "float32");
    const auto* values = static_cast<const float*>(importance->data());
    options.importance.assign(values, values + importance->size());
  }
  return quantize_with(weights, weight_dtype, scale_dtype, [&](const auto& view, auto scale) {
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
  const nibble::QuantConfig config = make_config(bits, group_size, symmetric, convention);
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
  nb::tuple arrays =
      quantize_with(weights, weight_dtype, scale_dtype, [&](const auto& view, auto scale) {
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
    views.emplace_back(data_of<float>(x), shape_of(x, "calibration"), "calibration");
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

// What the searches (autoclip, awq) take alike: float32 weights, calibration views, the config,
// and Options (AutoClipOptions / AwqOptions) with the named solver and the thread count.
template <class Options>
struct SearchInputs {
  nibble::TensorView<const float> weights;
  std::vector<nibble::TensorView<const float>> calibration;
  nibble::QuantConfig config;
  Options options;
};

template <class Options>
SearchInputs<Options> search_inputs(const InArray& weights, const std::vector<InArray>& calibration,
                                    int bits, int64_t group_size, bool symmetric,
                                    const std::string& convention, const std::string& solver,
                                    const std::string& kquant_variant, int num_threads) {
  if (!has_dtype<float>(weights)) type_error("weights", "float32");
  SearchInputs<Options> inputs{
      nibble::TensorView<const float>(data_of<float>(weights), shape_of(weights, "weights"),
                                      "weights"),
      calibration_views(calibration),
      make_config(bits, group_size, symmetric, convention),
      {}};
  // Field by field: GCC 12 warns (-Wnonnull, a false positive) on copy-assigning a QuantSolver.
  const nibble::QuantSolver named = solver_named(solver, kquant_variant);
  inputs.options.solver.kind = named.kind;
  inputs.options.solver.kquant.variant = named.kquant.variant;
  inputs.options.num_threads = num_threads;
  return inputs;
}

// (clipped weights [shape], upper ratio [rows, groups], lower ratio [rows, groups]).
nb::tuple autoclip(const InArray& weights, const std::vector<InArray>& calibration, int bits,
                   int64_t group_size, bool symmetric, const std::string& convention,
                   const std::string& solver, const std::string& kquant_variant, int steps,
                   float min_ratio, bool min_max, int num_threads) {
  auto inputs =
      search_inputs<nibble::AutoClipOptions>(weights, calibration, bits, group_size, symmetric,
                                             convention, solver, kquant_variant, num_threads);
  inputs.options.steps = steps;
  inputs.options.min_ratio = min_ratio;
  inputs.options.range = min_max ? nibble::ClipRange::min_max : nibble::ClipRange::abs_max;
  std::optional<nibble::AutoClipResult> result;
  {
    nb::gil_scoped_release no_gil;
    result.emplace(
        nibble::autoclip<float>(inputs.weights, inputs.calibration, inputs.config, inputs.options));
  }
  const nibble::Shape& shape = inputs.weights.shape();
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
  auto inputs = search_inputs<nibble::AwqOptions>(weights, calibration, bits, group_size, symmetric,
                                                  convention, solver, kquant_variant, num_threads);
  inputs.options.grid = grid;
  std::optional<nibble::AwqResult> result;
  {
    nb::gil_scoped_release no_gil;
    result.emplace(nibble::awq_search<float>(inputs.weights, inputs.calibration, inputs.config,
                                             inputs.options));
  }
  const nibble::Shape& shape = inputs.weights.shape();
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

// ---- gemm / moe_gemm: the dispatched kernels (nibble::gemm), or the reference (gemm_ref) ----------

// x, bias and y share one dtype: "float32", or "float16" / "bfloat16" as uint16 bit patterns.
template <class ActT>
nibble::TensorView<const ActT> activation_view(const InArray& array, const char* what) {
  check_scale_array<ActT>(array, what);
  return nibble::TensorView<const ActT>(static_cast<const ActT*>(array.data()),
                                        shape_of(array, what), what);
}

nibble::ActivationPrecision activation_precision(const std::string& activations) {
  for (const auto precision :
       {nibble::ActivationPrecision::fp32, nibble::ActivationPrecision::int8,
        nibble::ActivationPrecision::bf16, nibble::ActivationPrecision::fp16}) {
    if (activations == nibble::to_string(precision)) return precision;
  }
  nibble::detail::fail(ErrorCode::invalid_argument, "activations \"", activations,
                       "\" is not supported (expected \"fp32\", \"int8\", \"bf16\" or \"fp16\")");
}

nibble::GemmOptions gemm_options(const std::string& activations, int num_threads) {
  nibble::GemmOptions options;
  options.num_threads = num_threads;
  options.activations = activation_precision(activations);
  return options;
}

template <class ActT, class Stored = std::conditional_t<std::is_same_v<ActT, float>, float, uint16_t>>
nb::object activation_array(std::vector<ActT>&& values, const std::vector<int64_t>& dims) {
  return nb::cast(owned_array<Stored>(std::move(values), dims));
}

// A new output of `y_shape`, filled by `kernel(y_view)` without the GIL, as a numpy array.
template <class ActT, class Kernel>
nb::object run_into_new_output(const nibble::Shape& y_shape, Kernel&& kernel) {
  std::vector<ActT> y(static_cast<std::size_t>(y_shape.numel()));
  const nibble::TensorView<ActT> y_view(y.data(), y_shape, "y");
  {
    nb::gil_scoped_release no_gil;
    kernel(y_view);
  }
  return activation_array<ActT>(std::move(y), y_shape.dims());
}

// The reference kernels take float32 activations only (double accumulation, no options).
template <class ActT>
void check_reference_dtype(bool reference) {
  if (reference && !std::is_same_v<ActT, float>) {
    nibble::detail::fail(ErrorCode::invalid_argument,
                         "reference=True runs the fp32 reference kernel: x must be float32");
  }
}

// reference: gemm_ref; otherwise nibble::gemm on the ISA the dispatcher picks.
nb::object gemm(const InArray& x, const std::string& dtype, const TensorRef& tensor,
                const std::optional<InArray>& bias, const std::string& activations,
                int num_threads, bool reference) {
  const nibble::GemmOptions options = gemm_options(activations, num_threads);
  return with_scale_type(dtype, [&](auto act_tag) {
    using ActT = decltype(act_tag);
    check_reference_dtype<ActT>(reference);
    const nibble::TensorView<const ActT> x_view = activation_view<ActT>(x, "x");
    std::optional<nibble::TensorView<const ActT>> bias_view;
    if (bias) bias_view = activation_view<ActT>(*bias, "bias");
    return tensor.visit([&](const auto& view) {
      const nibble::Shape y_shape = x_view.shape().with_last(view.rows());
      return run_into_new_output<ActT>(y_shape, [&](const nibble::TensorView<ActT>& y_view) {
        if constexpr (std::is_same_v<ActT, float>) {
          if (reference) {
            if (bias_view) {
              nibble::gemm_ref(view, x_view, y_view, *bias_view);
            } else {
              nibble::gemm_ref(view, x_view, y_view);
            }
            return;
          }
        }
        if (bias_view) {
          nibble::gemm(view, x_view, y_view, *bias_view, options);
        } else {
          nibble::gemm(view, x_view, y_view, options);
        }
      });
    });
  });
}

nb::object moe_gemm(const InArray& x, const std::string& dtype, const TensorRef& tensor,
                    const InArray& expert_ids, const std::optional<InArray>& gates,
                    const std::string& activations, int num_threads, bool reference) {
  const nibble::GemmOptions options = gemm_options(activations, num_threads);
  if (!has_dtype<int32_t>(expert_ids)) type_error("expert_ids", "int32");
  const nibble::TensorView<const int32_t> ids(static_cast<const int32_t*>(expert_ids.data()),
                                              shape_of(expert_ids, "expert_ids"), "expert_ids");
  std::optional<nibble::TensorView<const float>> gate_view;
  if (gates) gate_view = activation_view<float>(*gates, "gates");
  return with_scale_type(dtype, [&](auto act_tag) {
    using ActT = decltype(act_tag);
    check_reference_dtype<ActT>(reference);
    const nibble::TensorView<const ActT> x_view = activation_view<ActT>(x, "x");
    return tensor.visit([&](const auto& view) {
      const nibble::Shape y_shape = x_view.shape().with_last(view.rows() / view.shape()[0]);
      return run_into_new_output<ActT>(y_shape, [&](const nibble::TensorView<ActT>& y_view) {
        if constexpr (std::is_same_v<ActT, float>) {
          if (reference) {
            if (gate_view) {
              nibble::moe_gemm_ref(view, x_view, ids, *gate_view, y_view);
            } else {
              nibble::moe_gemm_ref(view, x_view, ids, y_view);
            }
            return;
          }
        }
        if (gate_view) {
          nibble::moe_gemm(view, x_view, ids, *gate_view, y_view, options);
        } else {
          nibble::moe_gemm(view, x_view, ids, y_view, options);
        }
      });
    });
  });
}

// ---- the packed CPU layout (pack_for_cpu): made once, owned by the Python PackedTensor ----------

class PackedRef {
 public:
  template <class ScaleT>
  explicit PackedRef(nibble::PackedWeights<ScaleT>&& weights) : weights_(std::move(weights)) {}

  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit(std::forward<F>(f), weights_);
  }

  std::vector<int64_t> shape() const {
    return visit([](const auto& w) { return w.shape().dims(); });
  }
  std::string isa() const {
    return visit([](const auto& w) { return std::string(nibble::to_string(w.isa())); });
  }
  std::size_t nbytes() const {
    return visit([](const auto& w) { return w.bytes(); });
  }

 private:
  std::variant<nibble::PackedWeights<float>, nibble::PackedWeights<nibble::fp16>,
               nibble::PackedWeights<nibble::bf16>>
      weights_;
};

PackedRef pack_for_cpu(const TensorRef& tensor, int num_threads) {
  nibble::PackOptions options;
  options.num_threads = num_threads;
  return tensor.visit([&](const auto& view) {
    nb::gil_scoped_release no_gil;
    return PackedRef(nibble::pack_for_cpu(view, options));
  });
}

// nibble::gemm over the packed layout, or (reference) its scalar twin gemm_packed_ref.
nb::object gemm_packed(const InArray& x, const std::string& dtype, const PackedRef& packed,
                       const std::optional<InArray>& bias, const std::string& activations,
                       int num_threads, bool reference) {
  const nibble::GemmOptions options = gemm_options(activations, num_threads);
  return with_scale_type(dtype, [&](auto act_tag) {
    using ActT = decltype(act_tag);
    if (reference && (!std::is_same_v<ActT, float> || bias)) {
      nibble::detail::fail(ErrorCode::invalid_argument,
                           "reference=True runs the packed layout's scalar twin "
                           "(gemm_packed_ref): x must be float32 and bias None");
    }
    const nibble::TensorView<const ActT> x_view = activation_view<ActT>(x, "x");
    std::optional<nibble::TensorView<const ActT>> bias_view;
    if (bias) bias_view = activation_view<ActT>(*bias, "bias");
    return packed.visit([&](const auto& w) {
      const nibble::Shape y_shape = x_view.shape().with_last(w.rows());
      return run_into_new_output<ActT>(y_shape, [&](const nibble::TensorView<ActT>& y_view) {
        if constexpr (std::is_same_v<ActT, float>) {
          if (reference) {
            nibble::gemm_packed_ref(w, x_view, y_view, options.activations);
            return;
          }
        }
        if (bias_view) {
          nibble::gemm(w, x_view, y_view, *bias_view, options);
        } else {
          nibble::gemm(w, x_view, y_view, options);
        }
      });
    });
  });
}

// The ISA whose kernels gemm runs for `tensor` ("avx512vnni", ..., or xsimd's portable
// architecture name): what a measured number came from.
std::string gemm_isa(const TensorRef& tensor, const std::string& activations) {
  const nibble::GemmOptions options = gemm_options(activations, 0);
  return tensor.visit([&](const auto& view) { return std::string(nibble::gemm_isa(view, options)); });
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
template <class ScaleT>
nb::dict matmul_nbits_dict(const nibble::ort::MatMulNBitsInputs<ScaleT>& inputs) {
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
}

nb::dict matmul_nbits(const TensorRef& tensor) {
  return tensor.visit(
      [](const auto& view) { return matmul_nbits_dict(nibble::ort::as_matmul_nbits(view)); });
}

// GatherBlockQuantized attributes and input shapes.
template <class ScaleT>
nb::dict gather_dict(const nibble::ort::GatherBlockQuantizedInputs<ScaleT>& inputs) {
  nb::dict out;
  out["gather_axis"] = inputs.gather_axis;
  out["quantize_axis"] = inputs.quantize_axis;
  out["block_size"] = inputs.block_size;
  out["bits"] = inputs.bits;
  out["data_shape"] = inputs.data_shape;
  out["scales_shape"] = inputs.scales_shape;
  out["zero_points_shape"] = inputs.zero_points_shape;
  return out;
}

nb::dict gather_block_quantized(const TensorRef& tensor) {
  return tensor.visit(
      [](const auto& view) { return gather_dict(nibble::ort::as_gather_block_quantized(view)); });
}

// Tied embeddings: {"lm_head": MatMulNBits dict, "embedding": GatherBlockQuantized dict, "data":
// the TiedData name, "signed_data", "reshape_shape" (None unless "reshape"), "data_copy" (the
// embedding's own data; None when it is lm_head's B), "zero_points_copy" (int4 UINT4 or None)}.
nb::dict tied_embedding(const TensorRef& tensor, bool allow_copy) {
  return tensor.visit([&](const auto& view) {
    auto tied = nibble::ort::as_tied_embedding(view, allow_copy);
    nb::dict out;
    out["lm_head"] = matmul_nbits_dict(tied.lm_head);
    out["embedding"] = gather_dict(tied.embedding);
    out["data"] = nibble::ort::to_string(tied.data);
    out["signed_data"] = tied.signed_data;
    out["reshape_shape"] = nb::none();
    out["data_copy"] = nb::none();
    out["zero_points_copy"] = nb::none();
    if (tied.data == nibble::ort::TiedData::reshape) {
      out["reshape_shape"] =
          std::vector<int64_t>(tied.reshape_shape.begin(), tied.reshape_shape.end());
    } else if (tied.data == nibble::ort::TiedData::unpadded_uint8) {
      out["data_copy"] = owned_array<uint8_t>(std::move(tied.data_copy), tied.embedding.data_shape);
    } else {
      const auto data_bytes = static_cast<int64_t>(tied.data_copy.size());
      out["data_copy"] = owned_array<uint8_t>(std::move(tied.data_copy), {data_bytes});
      if (!tied.signed_data) {
        const auto zero_bytes = static_cast<int64_t>(tied.zero_points_copy.size());
        out["zero_points_copy"] =
            owned_array<uint8_t>(std::move(tied.zero_points_copy), {zero_bytes});
      }
    }
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

// ---- GPTQ / AWQ checkpoints -------------------------------------------------------------------

nibble::formats::Symmetry symmetry_named(const std::string& name) {
  if (name == "detect") return nibble::formats::Symmetry::detect;
  if (name == "symmetric") return nibble::formats::Symmetry::symmetric;
  if (name == "asymmetric") return nibble::formats::Symmetry::asymmetric;
  nibble::detail::fail(ErrorCode::invalid_argument, "symmetry \"", name,
                       "\" is not supported (expected detect, symmetric or asymmetric)");
}

nibble::gptq::ZeroFormat zero_format_named(const std::string& name) {
  if (name == "v1") return nibble::gptq::ZeroFormat::v1;
  if (name == "v2") return nibble::gptq::ZeroFormat::v2;
  nibble::detail::fail(ErrorCode::invalid_argument, "zero_format \"", name,
                       "\" is not supported (expected v1 (AutoGPTQ \"gptq\") or v2 (GPTQModel "
                       "\"gptq_v2\"))");
}

// (qweight int32 [K / pack, N], qzeros int32 [n_groups, N / pack], scales [n_groups, N],
// g_idx int32 [K] or None (a checkpoint without one), sym, desc_act), owning its buffers.
template <class ScaleT>
nb::tuple gptq_arrays(nibble::gptq::Checkpoint<ScaleT>&& checkpoint) {
  const nibble::gptq::Layout layout = checkpoint.layout;
  nb::object g_idx = nb::none();
  if (!checkpoint.g_idx.empty())
    g_idx = nb::cast(owned_array<int32_t>(std::move(checkpoint.g_idx), layout.g_idx_shape()));
  return nb::make_tuple(owned_array<int32_t>(std::move(checkpoint.qweight), layout.qweight_shape()),
                        owned_array<int32_t>(std::move(checkpoint.qzeros), layout.qzeros_shape()),
                        scale_array(std::move(checkpoint.scales), layout.scales_shape()), g_idx,
                        checkpoint.sym, checkpoint.desc_act);
}

// The int32 qweight / qzeros and the scales of a GPTQ or AWQ checkpoint, checked against
// `layout` (types and exact shapes) and borrowed into a CheckpointView (both have these fields).
template <class View, class ScaleT, class Layout>
View int32_checkpoint_view(const InArray& qweight, const InArray& qzeros, const InArray& scales,
                           const Layout& layout) {
  layout.validate();
  if (!has_dtype<int32_t>(qweight)) type_error("qweight", "int32");
  if (!has_dtype<int32_t>(qzeros)) type_error("qzeros", "int32");
  check_scale_array<ScaleT>(scales, "scales");
  expect_dims(qweight, layout.qweight_shape(), "qweight");
  expect_dims(qzeros, layout.qzeros_shape(), "qzeros");
  expect_dims(scales, layout.scales_shape(), "scales");
  View view;
  view.layout = layout;
  view.qweight = data_of<int32_t>(qweight);
  view.qweight_count = static_cast<int64_t>(qweight.size());
  view.qzeros = data_of<int32_t>(qzeros);
  view.qzeros_count = static_cast<int64_t>(qzeros.size());
  view.scales = data_of<ScaleT>(scales);
  view.scale_count = static_cast<int64_t>(scales.size());
  return view;
}

// Checkpoint arrays borrowed as a gptq::CheckpointView, every dtype and shape checked against
// the layout of (in_features, out_features, bits, group_size, zero_format).
template <class ScaleT>
nibble::gptq::CheckpointView<ScaleT> gptq_view(const InArray& qweight, const InArray& qzeros,
                                               const InArray& scales,
                                               const std::optional<InArray>& g_idx,
                                               const nibble::gptq::Layout& layout) {
  auto view = int32_checkpoint_view<nibble::gptq::CheckpointView<ScaleT>, ScaleT>(qweight, qzeros,
                                                                                  scales, layout);
  if (g_idx) {
    if (!has_dtype<int32_t>(*g_idx)) type_error("g_idx", "int32");
    expect_dims(*g_idx, layout.g_idx_shape(), "g_idx");
    view.g_idx = data_of<int32_t>(*g_idx);
    view.g_idx_count = static_cast<int64_t>(g_idx->size());
  }
  return view;
}

nibble::gptq::Layout gptq_layout(int64_t in_features, int64_t out_features, int bits,
                                 int64_t group_size, const std::string& zero_format) {
  nibble::gptq::Layout layout;
  layout.in_features = in_features;
  layout.out_features = out_features;
  layout.bits = bits;
  layout.group_size = group_size;
  layout.zero_format = zero_format_named(zero_format);
  return layout;
}

nb::tuple to_gptq(const TensorRef& tensor, const std::string& zero_format,
                  const std::optional<InArray>& g_idx) {
  std::vector<int32_t> groups;
  if (g_idx) {
    if (!has_dtype<int32_t>(*g_idx)) type_error("g_idx", "int32");
    groups.assign(data_of<int32_t>(*g_idx), data_of<int32_t>(*g_idx) + g_idx->size());
  }
  const nibble::gptq::ZeroFormat format = zero_format_named(zero_format);
  return tensor.visit(
      [&](const auto& view) { return gptq_arrays(nibble::gptq::to_gptq(view, format, groups)); });
}

// (qweight, scales, zeros or None) of the canonical [N, K]; permuted: also permutation int64 [K].
nb::tuple from_gptq(const InArray& qweight, const InArray& qzeros, const InArray& scales,
                    const std::optional<InArray>& g_idx, const std::string& scale_dtype,
                    int64_t in_features, int64_t out_features, int bits, int64_t group_size,
                    const std::string& zero_format, const std::string& symmetry,
                    const std::string& convention, bool permuted) {
  const nibble::gptq::Layout layout =
      gptq_layout(in_features, out_features, bits, group_size, zero_format);
  nibble::gptq::ImportOptions options;
  options.symmetry = symmetry_named(symmetry);
  options.convention = nibble::convention_from_name(convention);
  return with_scale_type(scale_dtype, [&](auto scale) -> nb::tuple {
    using ScaleT = decltype(scale);
    const auto view = gptq_view<ScaleT>(qweight, qzeros, scales, g_idx, layout);
    if (!permuted) return tensor_arrays(nibble::gptq::from_gptq(view, options));
    auto result = nibble::gptq::from_gptq_permuted(view, options);
    const auto k = static_cast<int64_t>(result.permutation.size());
    nb::tuple arrays = tensor_arrays(std::move(result.tensor));
    return nb::make_tuple(arrays[0], arrays[1], arrays[2],
                          owned_array<int64_t>(std::move(result.permutation), {k}));
  });
}

// (qweight int32 [K, N / 8], qzeros int32 [n_groups, N / 8], scales [n_groups, N]).
template <class ScaleT>
nb::tuple awq_arrays(nibble::awq::Checkpoint<ScaleT>&& checkpoint) {
  const nibble::awq::Layout layout = checkpoint.layout;
  return nb::make_tuple(owned_array<int32_t>(std::move(checkpoint.qweight), layout.qweight_shape()),
                        owned_array<int32_t>(std::move(checkpoint.qzeros), layout.qzeros_shape()),
                        scale_array(std::move(checkpoint.scales), layout.scales_shape()));
}

template <class ScaleT>
nibble::awq::CheckpointView<ScaleT> awq_view(const InArray& qweight, const InArray& qzeros,
                                             const InArray& scales,
                                             const nibble::awq::Layout& layout) {
  return int32_checkpoint_view<nibble::awq::CheckpointView<ScaleT>, ScaleT>(qweight, qzeros, scales,
                                                                            layout);
}

nb::tuple to_awq(const TensorRef& tensor) {
  return tensor.visit([](const auto& view) { return awq_arrays(nibble::awq::to_awq(view)); });
}

nb::tuple from_awq(const InArray& qweight, const InArray& qzeros, const InArray& scales,
                   const std::string& scale_dtype, int64_t in_features, int64_t out_features,
                   int64_t group_size, const std::string& symmetry, const std::string& convention) {
  const nibble::awq::Layout layout{in_features, out_features, group_size};
  nibble::awq::ImportOptions options;
  options.symmetry = symmetry_named(symmetry);
  options.convention = nibble::convention_from_name(convention);
  return with_scale_type(scale_dtype, [&](auto scale) -> nb::tuple {
    using ScaleT = decltype(scale);
    return tensor_arrays(
        nibble::awq::from_awq(awq_view<ScaleT>(qweight, qzeros, scales, layout), options));
  });
}

// ---- TensorRT-LLM / ModelOpt, FP8 ---------------------------------------------------------------

// (weight uint8 [..., N / 2, K], weights_scaling_factor float32 [..., N, K / G]) of a canonical
// 4-bit symmetric tensor: trtllm::to_modelopt.
nb::tuple to_modelopt(const TensorRef& tensor) {
  return tensor.visit([](const auto& view) {
    nibble::trtllm::Int4Checkpoint checkpoint = nibble::trtllm::to_modelopt(view);
    const nibble::trtllm::Int4Layout layout = checkpoint.layout;
    return nb::make_tuple(
        owned_array<uint8_t>(std::move(checkpoint.weight), layout.weight_shape()),
        owned_array<float>(std::move(checkpoint.weights_scaling_factor), layout.scale_shape()));
  });
}

std::vector<int64_t> dims_of(const InArray& array) {
  std::vector<int64_t> dims(array.ndim());
  for (std::size_t axis = 0; axis < array.ndim(); ++axis)
    dims[axis] = static_cast<int64_t>(array.shape(axis));
  return dims;
}

// float32 (any shape) -> fp8 e4m3fn bit patterns (uint8): round to nearest even; overflow
// saturates to +-448 (TensorRT-LLM, CUDA SATFINITE) or, with saturate=False, becomes NaN
// (ml_dtypes / torch casts).
nb::ndarray<nb::numpy, uint8_t> fp8_e4m3_encode(const InArray& x, bool saturate) {
  if (!has_dtype<float>(x)) type_error("x", "float32");
  const auto overflow = saturate ? nibble::Fp8Overflow::saturate : nibble::Fp8Overflow::to_nan;
  std::vector<uint8_t> codes(x.size());
  const float* values = data_of<float>(x);
  for (std::size_t index = 0; index < codes.size(); ++index)
    codes[index] = nibble::to_fp8_e4m3(values[index], overflow).bits;
  return owned_array<uint8_t>(std::move(codes), dims_of(x));
}

// fp8 e4m3fn bit patterns (uint8, any shape) -> float32, exactly.
nb::ndarray<nb::numpy, float> fp8_e4m3_decode(const InArray& codes) {
  if (!has_dtype<uint8_t>(codes)) type_error("codes", "uint8");
  std::vector<float> values(codes.size());
  const uint8_t* bits = data_of<uint8_t>(codes);
  for (std::size_t index = 0; index < values.size(); ++index)
    values[index] = nibble::to_float(nibble::fp8_e4m3::from_bits(bits[index]));
  return owned_array<float>(std::move(values), dims_of(codes));
}

// ---- GGUF blocks ------------------------------------------------------------------------------

// x float32 [..., K] -> uint8 [..., row_size(type, K)]: each row quantized to ggml blocks.
nb::ndarray<nb::numpy, uint8_t> gguf_quantize(const InArray& x, uint32_t type_id) {
  const nibble::gguf::TypeInfo& info = nibble::gguf::type_info_from_id(type_id);
  if (!has_dtype<float>(x)) type_error("x", "float32");
  const nibble::Shape shape = shape_of(x, "x");
  const int64_t k = shape.last();
  const int64_t row_bytes = nibble::gguf::row_size(info.type, k);
  std::vector<uint8_t> blocks(static_cast<std::size_t>(
      nibble::detail::checked_mul(shape.rows(), row_bytes, "gguf block bytes")));
  {
    nb::gil_scoped_release no_gil;
    for (int64_t row = 0; row < shape.rows(); ++row) {
      nibble::gguf::quantize_row(info.type, data_of<float>(x) + row * k, k,
                                 blocks.data() + row * row_bytes);
    }
  }
  return owned_array<uint8_t>(std::move(blocks), with_last(shape, row_bytes));
}

// blocks uint8 [..., n_blocks * type_size] -> float32 [..., n_blocks * block_size].
nb::ndarray<nb::numpy, float> gguf_dequantize(const InArray& blocks, uint32_t type_id) {
  const nibble::gguf::TypeInfo& info = nibble::gguf::type_info_from_id(type_id);
  if (!has_dtype<uint8_t>(blocks)) type_error("blocks", "uint8");
  const nibble::Shape shape = shape_of(blocks, "blocks");
  const int64_t row_bytes = shape.last();
  if (row_bytes % info.type_size != 0) {
    nibble::detail::fail(ErrorCode::shape_mismatch, "gguf_dequantize: rows of ", row_bytes,
                         " bytes are not whole ", info.name, " blocks (", info.type_size,
                         " bytes each)");
  }
  const int64_t k = row_bytes / info.type_size * info.block_size;
  std::vector<float> y(static_cast<std::size_t>(
      nibble::detail::checked_mul(shape.rows(), k, "gguf dequantized values")));
  {
    nb::gil_scoped_release no_gil;
    for (int64_t row = 0; row < shape.rows(); ++row) {
      nibble::gguf::dequantize_row(info.type, data_of<uint8_t>(blocks) + row * row_bytes, k,
                                   y.data() + row * k);
    }
  }
  return owned_array<float>(std::move(y), with_last(shape, k));
}

// [(name, ggml type id, block_size, type_size)] of the types nibble implements.
std::vector<nb::tuple> gguf_types() {
  std::vector<nb::tuple> types;
  for (const nibble::gguf::TypeInfo& info : nibble::gguf::kTypes) {
    types.push_back(nb::make_tuple(info.name, static_cast<uint32_t>(info.type), info.block_size,
                                   info.type_size));
  }
  return types;
}

// ---- fused projections ------------------------------------------------------------------------

// An owned copy of a view: fused::merge and split work on QuantTensors.
template <class ScaleT>
nibble::QuantTensor<ScaleT> owned_copy(const nibble::QuantTensorView<ScaleT>& view) {
  nibble::QuantTensor<ScaleT> out(view.shape(), view.config());
  std::copy_n(view.qweight(), view.qweight_bytes(), out.qweight().begin());
  std::copy_n(view.scales(), view.scale_count(), out.scales().begin());
  if (!view.config().symmetric) std::copy_n(view.zeros(), view.zero_bytes(), out.zeros().begin());
  return out;
}

// (qweight, scales, zeros or None) of the parts [N_p, K] merged into [sum N_p, K].
nb::tuple fused_merge(const std::vector<nb::object>& parts) {
  if (parts.empty()) {
    nibble::detail::fail(ErrorCode::invalid_argument,
                         "fused_merge: no parts (expected at least one tensor)");
  }
  std::vector<const TensorRef*> refs;
  for (const nb::object& part : parts)
    refs.push_back(&nb::cast<const TensorRef&>(part));
  return with_scale_type(refs.front()->scale_dtype(), [&](auto scale) -> nb::tuple {
    using ScaleT = decltype(scale);
    std::vector<nibble::QuantTensor<ScaleT>> owned;
    owned.reserve(refs.size());
    for (const TensorRef* ref : refs)
      owned.push_back(owned_copy(ref->view<ScaleT>()));
    std::vector<const nibble::QuantTensor<ScaleT>*> pointers;
    for (const auto& tensor : owned)
      pointers.push_back(&tensor);
    return tensor_arrays(nibble::fused::merge(pointers));
  });
}

// [(qweight, scales, zeros or None)] of the parts [row_counts[p], K] of a fused [N, K].
std::vector<nb::tuple> fused_split(const TensorRef& tensor,
                                   const std::vector<int64_t>& row_counts) {
  return tensor.visit([&](const auto& view) {
    std::vector<nb::tuple> parts;
    for (auto& part : nibble::fused::split(owned_copy(view), row_counts))
      parts.push_back(tensor_arrays(std::move(part)));
    return parts;
  });
}

// A Python GptqCheckpoint's fields (qweight, qzeros, scales, g_idx or None, in_features,
// out_features, bits, group_size, zero_format, sym, desc_act), checked and copied: fused::merge
// and split work on owned checkpoints.
template <class ScaleT>
nibble::gptq::Checkpoint<ScaleT> gptq_checkpoint_of(const nb::tuple& fields) {
  std::optional<InArray> g_idx;
  if (!fields[3].is_none()) g_idx = nb::cast<InArray>(fields[3]);
  const nibble::gptq::Layout layout = gptq_layout(
      nb::cast<int64_t>(fields[4]), nb::cast<int64_t>(fields[5]), nb::cast<int>(fields[6]),
      nb::cast<int64_t>(fields[7]), nb::cast<std::string>(fields[8]));
  const auto view = gptq_view<ScaleT>(nb::cast<InArray>(fields[0]), nb::cast<InArray>(fields[1]),
                                      nb::cast<InArray>(fields[2]), g_idx, layout);
  nibble::gptq::Checkpoint<ScaleT> out;
  out.layout = layout;
  out.sym = nb::cast<bool>(fields[9]);
  out.desc_act = nb::cast<bool>(fields[10]);
  out.qweight.assign(view.qweight, view.qweight + view.qweight_count);
  out.qzeros.assign(view.qzeros, view.qzeros + view.qzeros_count);
  out.scales.assign(view.scales, view.scales + view.scale_count);
  if (view.g_idx != nullptr) out.g_idx.assign(view.g_idx, view.g_idx + view.g_idx_count);
  return out;
}

// A Python AwqCheckpoint's fields (qweight, qzeros, scales, in_features, out_features,
// group_size), checked and copied.
template <class ScaleT>
nibble::awq::Checkpoint<ScaleT> awq_checkpoint_of(const nb::tuple& fields) {
  const nibble::awq::Layout layout{nb::cast<int64_t>(fields[3]), nb::cast<int64_t>(fields[4]),
                                   nb::cast<int64_t>(fields[5])};
  const auto view = awq_view<ScaleT>(nb::cast<InArray>(fields[0]), nb::cast<InArray>(fields[1]),
                                     nb::cast<InArray>(fields[2]), layout);
  nibble::awq::Checkpoint<ScaleT> out;
  out.layout = layout;
  out.qweight.assign(view.qweight, view.qweight + view.qweight_count);
  out.qzeros.assign(view.qzeros, view.qzeros + view.qzeros_count);
  out.scales.assign(view.scales, view.scales + view.scale_count);
  return out;
}

// fused::merge / split of GPTQ ("gptq") or AWQ ("awq") checkpoints given as field tuples; the
// results are gptq_arrays / awq_arrays tuples.
template <class ScaleT, class Of, class Arrays>
nb::tuple merge_checkpoints(const std::vector<nb::tuple>& parts, Of&& checkpoint_of,
                            Arrays&& arrays) {
  using Checkpoint = decltype(checkpoint_of(parts.front()));
  std::vector<Checkpoint> owned;
  owned.reserve(parts.size());
  for (const nb::tuple& part : parts)
    owned.push_back(checkpoint_of(part));
  std::vector<const Checkpoint*> pointers;
  for (const Checkpoint& checkpoint : owned)
    pointers.push_back(&checkpoint);
  return arrays(nibble::fused::merge(pointers));
}

nb::tuple fused_merge_checkpoints(const std::string& format, const std::vector<nb::tuple>& parts,
                                  const std::string& scale_dtype) {
  if (parts.empty()) {
    nibble::detail::fail(ErrorCode::invalid_argument,
                         "fused_merge: no parts (expected at least one checkpoint)");
  }
  return with_scale_type(scale_dtype, [&](auto scale) -> nb::tuple {
    using ScaleT = decltype(scale);
    if (format == "gptq") {
      return merge_checkpoints<ScaleT>(
          parts, [](const nb::tuple& part) { return gptq_checkpoint_of<ScaleT>(part); },
          [](auto&& merged) { return gptq_arrays(std::move(merged)); });
    }
    return merge_checkpoints<ScaleT>(
        parts, [](const nb::tuple& part) { return awq_checkpoint_of<ScaleT>(part); },
        [](auto&& merged) { return awq_arrays(std::move(merged)); });
  });
}

std::vector<nb::tuple> fused_split_checkpoint(const std::string& format, const nb::tuple& fused,
                                              const std::string& scale_dtype,
                                              const std::vector<int64_t>& output_counts) {
  return with_scale_type(scale_dtype, [&](auto scale) {
    using ScaleT = decltype(scale);
    std::vector<nb::tuple> parts;
    if (format == "gptq") {
      for (auto& part : nibble::fused::split(gptq_checkpoint_of<ScaleT>(fused), output_counts))
        parts.push_back(gptq_arrays(std::move(part)));
    } else {
      for (auto& part : nibble::fused::split(awq_checkpoint_of<ScaleT>(fused), output_counts))
        parts.push_back(awq_arrays(std::move(part)));
    }
    return parts;
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
  // The CPU kernel tables compiled in (each used only where the CPU has its ISA), and the
  // reference kernels.
  std::vector<std::string> kernels{"reference (scalar)"};
  for (const nibble::Isa isa : {nibble::Isa::generic, nibble::Isa::avx2, nibble::Isa::avx512,
                                nibble::Isa::avx512vnni, nibble::Isa::avx512bf16}) {
    if (nibble::detail::kernels_compiled(isa)) kernels.emplace_back(nibble::to_string(isa));
  }
  info["kernels"] = kernels;
  // What this CPU offers (the dispatcher picks the best compiled table it supports at run time).
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

  nb::class_<PackedRef>(m, "PackedRef")
      .def_prop_ro("shape", &PackedRef::shape)
      .def_prop_ro("isa", &PackedRef::isa)
      .def_prop_ro("nbytes", &PackedRef::nbytes);

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
  m.def("gemm", &gemm, "x"_a, "dtype"_a, "tensor"_a, "bias"_a.none(), "activations"_a,
        "num_threads"_a, "reference"_a);
  m.def("moe_gemm", &moe_gemm, "x"_a, "dtype"_a, "tensor"_a, "expert_ids"_a, "gates"_a.none(),
        "activations"_a, "num_threads"_a, "reference"_a);
  m.def("gemm_isa", &gemm_isa, "tensor"_a, "activations"_a);
  m.def("pack_for_cpu", &pack_for_cpu, "tensor"_a, "num_threads"_a);
  m.def("gemm_packed", &gemm_packed, "x"_a, "dtype"_a, "packed"_a, "bias"_a.none(), "activations"_a,
        "num_threads"_a, "reference"_a);
  m.def("pack", &pack, "codes"_a, "bits"_a);
  m.def("unpack", &unpack, "packed"_a, "bits"_a, "k"_a);
  m.def("layout", &layout, "tensor"_a);
  m.def("matmul_nbits", &matmul_nbits, "tensor"_a);
  m.def("gather_block_quantized", &gather_block_quantized, "tensor"_a);
  m.def("gather_block_quantized_int4", &gather_block_quantized_int4, "tensor"_a);
  m.def("tied_embedding", &tied_embedding, "tensor"_a, "allow_copy"_a);
  m.def("to_gptq", &to_gptq, "tensor"_a, "zero_format"_a, "g_idx"_a.none());
  m.def("from_gptq", &from_gptq, "qweight"_a, "qzeros"_a, "scales"_a, "g_idx"_a.none(),
        "scale_dtype"_a, "in_features"_a, "out_features"_a, "bits"_a, "group_size"_a,
        "zero_format"_a, "symmetry"_a, "convention"_a, "permuted"_a);
  m.def("to_awq", &to_awq, "tensor"_a);
  m.def("to_modelopt", &to_modelopt, "tensor"_a);
  m.def("fp8_e4m3_encode", &fp8_e4m3_encode, "x"_a, "saturate"_a);
  m.def("fp8_e4m3_decode", &fp8_e4m3_decode, "codes"_a);
  m.def("from_awq", &from_awq, "qweight"_a, "qzeros"_a, "scales"_a, "scale_dtype"_a,
        "in_features"_a, "out_features"_a, "group_size"_a, "symmetry"_a, "convention"_a);
  m.def("gguf_quantize", &gguf_quantize, "x"_a, "type_id"_a);
  m.def("gguf_dequantize", &gguf_dequantize, "blocks"_a, "type_id"_a);
  m.def("gguf_types", &gguf_types);
  m.def("fused_merge", &fused_merge, "parts"_a);
  m.def("fused_split", &fused_split, "tensor"_a, "row_counts"_a);
  m.def("fused_merge_checkpoints", &fused_merge_checkpoints, "format"_a, "parts"_a,
        "scale_dtype"_a);
  m.def("fused_split_checkpoint", &fused_split_checkpoint, "format"_a, "fused"_a, "scale_dtype"_a,
        "output_counts"_a);
  m.def("build_info", &build_info);
}
