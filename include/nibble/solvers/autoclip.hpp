// AutoClip: per group, the clipping of the weight range that minimizes the layer's output error on
// calibration activations, measured through the solver that will quantize the clipped weights.
//
//   AutoClipOptions options;  // RTN under the config's convention; options.solver picks k-quant
//   AutoClipResult clip = autoclip<float>(TensorView<const float>(w, {N, K}),
//                                         TensorView<const float>(x, {T, K}), config, options);
//   QuantTensor<float> q =
//       quantize_with_solver<float>(clip.clipped_view(), config, options.solver);
//   // or in one call: autoclip_quantize<float>(weights, {activations}, config, options)
//
// Same N-D last-dimension path as the quantizers: weights [..., N, K] are quantized along K, the
// leading dimensions flatten to rows. Calibration activations X are [T, K] (any rank; the leading
// dimensions flatten to T tokens), given either as one matrix shared by every row or as one matrix
// per leading index: activations[e] for expert e of [E, N, K] (rows e * N .. e * N + N - 1), so a
// rank-3 MoE tensor with per-expert activations gives exactly the result of each expert alone.
// Token counts may differ between matrices (routing sends each expert its own tokens).
//
// The rule (llm-awq awq/quantize/auto_clip.py auto_clip_layer; AutoAWQ awq/quantize/quantizer.py
// AwqQuantizer._compute_best_clip). For row n, group g (columns [b, e)) and candidate bounds
// [lo, hi] derived from the group's range and a ratio r:
//   error_{n,g}(r) = mean_t ( X[t, b:e] . (W[n, b:e] - Q(clamp(W, lo, hi))[n, b:e]) )^2
// where Q quantizes-then-dequantizes with the chosen solver (RTN under the config's convention, or
// k-quant), X is the matrix of row n. Each (row, group) keeps the first candidate with the smallest
// error (AWQ's strict `err < min_errs`). Every solver nibble has computes a group's codes from that
// group's values alone, so one quantization of the whole tensor per candidate scores every group at
// once, and quantizing `clipped` afterwards reproduces exactly the searched result.
//
// Ranges (AutoClipOptions::range):
//   abs_max  AWQ: amax = max |W[n, b:e]|, [lo, hi] = [-r amax, r amax], for symmetric and
//            asymmetric configs alike (auto_clip_layer: `min_val = -max_val`). The default.
//   min_max  Olive (olive/passes/pytorch/autoclip.py AutoClip._auto_clip_layer): the signed min and
//            max of the group shrink separately, [lo, hi] = [r_lo min, r_hi max], over every pair
//            (steps^2 candidates, r_hi in the outer loop). Clamping is torch.clamp's
//            min(max(w, lo), hi), so hi wins when a one-signed group makes lo > hi.
//
// Ratios: r_i = 1 - i (1 - min_ratio) / steps for i = 0 .. steps - 1. The tools' n_grid = 20,
// max_shrink = 0.5 give range(int(0.5 * 20)): r = 1 - i / 20 = 1.0, 0.95, ..., 0.55, i.e.
// steps = 10, min_ratio = 0.5 (the defaults; min_ratio itself is one step past the last
// candidate, as in the tools). r_0 = 1 clips nothing and ties keep the earlier candidate, so the
// result is never worse than the solver alone on the calibration data.
//
// Tokens: the tools score at most n_sample_token = 512 tokens, taking every (T / 512)-th row
// (Olive only when T > 512); AutoClipOptions::max_tokens does the same (0, the default: all rows).
//
// Cost: one quantization of the tensor per candidate plus, per (matrix, group), either the GEMM
// X[:, g] (T x G) by the group's weight error (G x rows), or, when G < T / 2, the quadratic form
// with the Gram matrix X[:, g]^T X[:, g] computed once in double (G x G per group).
//
// Threads: AutoClipOptions::num_threads OpenMP threads (0 = OpenMP's default) run the solver's rows
// and the error GEMMs, each GEMM on one thread (Eigen's own threading is kept off inside them).
//
// The pieces AWQ (solvers/awq.hpp) shares live here too: QuantSolver / quantize_with_solver, the
// calibration checks and the output-error kernel.
#pragma once

#include "nibble/core/eigen_host.hpp"  // Eigen/Dense, host-only under nvcc

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/parallel.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/quant_tensor.hpp"
#include "nibble/quantizer.hpp"
#include "nibble/solvers/kquant.hpp"

namespace nibble {

// ---- the solver a calibration search measures (and the caller then applies) ---------------------

enum class SearchSolver : uint8_t {
  rtn,      // nibble::quantize: round to nearest under the QuantConfig's convention
  k_quant,  // nibble::kquant_quantize with QuantSolver::kquant
};

struct QuantSolver {
  SearchSolver kind = SearchSolver::rtn;
  // kind == k_quant: variant, importance and non_finite; num_threads is the caller's (below).
  KQuantOptions kquant;
};

inline const char* to_string(SearchSolver solver) {
  return solver == SearchSolver::rtn ? "rtn" : "k_quant";
}

// weights [..., K] (float) -> the QuantTensor `solver` makes of them under `config`, on
// `num_threads` OpenMP threads (0 = OpenMP's default).
template <class ScaleT>
QuantTensor<ScaleT> quantize_with_solver(TensorView<const float> weights, const QuantConfig& config,
                                         const QuantSolver& solver, int num_threads = 0) {
  if (solver.kind == SearchSolver::k_quant) {
    KQuantOptions options = solver.kquant;
    options.num_threads = num_threads;
    return kquant_quantize<ScaleT>(weights, config, options);
  }
  QuantizeOptions options;
  options.num_threads = num_threads;
  return quantize<ScaleT>(weights, config, options);
}

// ---- AutoClip -----------------------------------------------------------------------------------

enum class ClipRange : uint8_t {
  abs_max,  // AWQ: [-r amax, r amax] of the group's max |w|
  min_max,  // Olive: [r_lo min, r_hi max] of the group's signed extremes, ratios searched jointly
};

struct AutoClipOptions {
  int steps = 10;          // candidate ratios per bound: r_i = 1 - i (1 - min_ratio) / steps
  float min_ratio = 0.5f;  // in (0, 1]: the grid's end, one step past the last candidate
  ClipRange range = ClipRange::abs_max;
  int64_t max_tokens = 0;  // > 0: score every (T / max_tokens)-th token when T > max_tokens
  QuantSolver solver;      // the Q of the error, e.g. {SearchSolver::k_quant, {...}}
  int num_threads = 0;     // OpenMP threads; 0 = OpenMP's default (1 below 2^14 weights)
};

struct AutoClipResult {
  Shape shape{1};                  // the weights' shape [..., N, K]
  int64_t n_groups = 0;            // groups per row, ceil(K / G)
  std::vector<float> clipped;      // [rows, K]: the weights, each group clamped to its best range
  std::vector<float> upper_ratio;  // [rows, n_groups]: r of hi (abs_max: of r amax)
  std::vector<float> lower_ratio;  // [rows, n_groups]: r of lo (abs_max: the same r)
  std::vector<double> error;       // [rows, n_groups]: error_{n,g} at the chosen bounds
  std::vector<double> unclipped_error;  // [rows, n_groups]: error_{n,g} at r = 1 (no clipping)

  TensorView<const float> clipped_view() const {
    return TensorView<const float>(clipped.data(), shape, "clipped weights");
  }
};

namespace detail {

using RowMajorFloatMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstFloatBlock =
    Eigen::Map<const RowMajorFloatMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

// Rows per task of the error GEMMs (llm-awq's oc_batch_size).
inline constexpr int64_t kCalibrationRowBlock = 256;

// A search runs a few parallel regions per candidate; below this many weights each region costs
// more than its work (and on a loaded machine its barriers spin far longer), so small tensors
// are searched on one thread. The result does not depend on the thread count.
inline constexpr int64_t kParallelSearchMinWeights = int64_t{1} << 14;

inline int search_threads(int requested, int64_t weight_count) {
  return weight_count < kParallelSearchMinWeights ? 1 : requested;
}

// Runs body(task) for task in [0, count) on `num_threads` OpenMP threads. Eigen's GEMM starts its
// own OpenMP team unless it already runs in a team of > 1 threads, and it sizes that team from
// omp_get_max_threads(); setting this thread's (task-local) ICV to 1 keeps every GEMM on the
// thread that runs it, also when the team has one thread. The lowest failing task's exception
// is rethrown after the region (core/parallel.hpp).
template <class Body>
void run_calibration_tasks(int64_t count, int num_threads, const Body& body) {
  Eigen::initParallel();
  ExceptionCapture capture;
#if defined(_OPENMP)
  NIBBLE_PRAGMA(omp parallel num_threads(::nibble::detail::thread_count(num_threads))) {
    omp_set_num_threads(1);
    NIBBLE_PRAGMA(omp for schedule(dynamic, 1))
    for (int64_t task = 0; task < count; ++task)
      capture.run(task, [&] { body(task); });
  }
#else
  (void)num_threads;
  for (int64_t task = 0; task < count; ++task)
    capture.run(task, [&] { body(task); });
#endif
  capture.rethrow();
}

// The calibration activations of one weight tensor, checked: `matrices` holds 1 (shared) or
// rows / N (one per leading index) views of [T_m, K]; `rows_per_matrix` rows of the weights use
// each. `token_step` > 1 scores every token_step-th token only.
struct Calibration {
  std::vector<TensorView<const float>> matrices;
  int64_t rows_per_matrix = 0;
  std::vector<int64_t> token_step;   // per matrix
  std::vector<int64_t> tokens_used;  // per matrix: ceil(T_m / token_step)

  ConstFloatBlock columns(int64_t matrix, int64_t begin, int64_t count) const {
    const auto m = static_cast<std::size_t>(matrix);
    const TensorView<const float>& x = matrices[m];
    return ConstFloatBlock(x.data() + begin, tokens_used[m], count,
                           Eigen::OuterStride<>(token_step[m] * x.cols()));
  }
};

// Checks `activations` against weights of `shape` for entry point `who`; max_tokens as in
// AutoClipOptions (0 = all tokens).
inline Calibration check_calibration(const char* who, const Shape& shape,
                                     const std::vector<TensorView<const float>>& activations,
                                     int64_t max_tokens) {
  const int64_t rows = shape.rows();
  const int64_t k = shape.last();
  const int64_t n = shape.rank() >= 2 ? shape[shape.rank() - 2] : 1;
  const int64_t per_leading = rows / n;
  const auto given = static_cast<int64_t>(activations.size());
  if (given != 1 && given != per_leading) {
    std::vector<int64_t> leading(shape.dims().begin(),
                                 shape.dims().end() - std::min(shape.rank(), 2));
    detail::fail(ErrorCode::shape_mismatch, who, ": ", given,
                 " activation matrices for weights of shape ", shape,
                 " (expected 1, shared by every row",
                 per_leading > 1 ? ", or " + std::to_string(per_leading) +
                                       ", one per leading index " + format_dims(leading)
                                 : std::string(),
                 ")");
  }
  if (max_tokens < 0) {
    detail::fail(ErrorCode::invalid_argument, who, ": max_tokens = ", max_tokens,
                 " (expected >= 0; 0 scores every calibration token)");
  }
  Calibration calibration;
  calibration.matrices = activations;
  calibration.rows_per_matrix = given == 1 ? rows : n;
  for (std::size_t m = 0; m < activations.size(); ++m) {
    const TensorView<const float>& x = activations[m];
    if (x.cols() != k) {
      detail::fail(ErrorCode::shape_mismatch, who, ": activations[", m, "] has shape ", x.shape(),
                   ", whose last dimension ", x.cols(), " is not the weights' K = ", k,
                   " (weights shape ", shape, "; expected activations [tokens, ", k, "])");
    }
    for (int64_t t = 0; t < x.rows(); ++t) {
      const float* values = x.row(t);
      for (int64_t col = 0; col < k; ++col) {
        if (!std::isfinite(values[col])) {
          detail::fail(ErrorCode::non_finite, who, ": activations[", m, "]",
                       format_index(x.shape(), t, col), " = ", values[col],
                       " (calibration activations must be finite)");
        }
      }
    }
    const int64_t tokens = x.rows();
    const int64_t step = max_tokens > 0 && tokens > max_tokens ? tokens / max_tokens : 1;
    calibration.token_step.push_back(step);
    calibration.tokens_used.push_back((tokens + step - 1) / step);
  }
  return calibration;
}

// The weights as float [rows * K], rejecting NaN / Inf (no range or error means anything then).
template <class W>
std::vector<float> finite_weights(const char* who, const TensorView<const W>& weights) {
  static_assert(is_float_type_v<W>, "calibration searches: weights must be float, fp16 or bf16");
  check_finite_weights(weights, who, "expected finite weights");
  std::vector<float> values(static_cast<std::size_t>(weights.numel()));
  for (int64_t row = 0; row < weights.rows(); ++row) {
    for (int64_t col = 0; col < weights.cols(); ++col)
      values[static_cast<std::size_t>(row * weights.cols() + col)] =
          to_float(weights.row(row)[col]);
  }
  return values;
}

// What autoclip and awq_search (entry point `who`, options struct `options_name`) check after
// their own options, in this order: num_threads, that activations are given, the activations
// (check_calibration, max_tokens as there) and the weights.
struct SearchInputs {
  Calibration calibration;
  std::vector<float> weights;  // [rows * K] as float, finite
};

template <class W>
SearchInputs check_search_inputs(const char* who, const char* options_name, int num_threads,
                                 const TensorView<const W>& weights,
                                 const std::vector<TensorView<const float>>& activations,
                                 int64_t max_tokens) {
  check_num_threads(options_name, num_threads);
  if (activations.empty()) {
    fail(ErrorCode::invalid_argument, who,
         ": no calibration activations (expected at least one [tokens, K] matrix)");
  }
  SearchInputs inputs;
  inputs.calibration = check_calibration(who, weights.shape(), activations, max_tokens);
  inputs.weights = finite_weights(who, weights);
  return inputs;
}

// The dequantized weights of `solver` applied to `weights` (float, `shape`), [rows * K].
template <class ScaleT>
std::vector<float> fake_quantize(const std::vector<float>& weights, const Shape& shape,
                                 const QuantConfig& config, const QuantSolver& solver,
                                 int num_threads) {
  const QuantTensor<ScaleT> quantized = quantize_with_solver<ScaleT>(
      TensorView<const float>(weights.data(), shape, "weights"), config, solver, num_threads);
  return dequantize(quantized);
}

// Per row r of `delta` (R x count): sum_t (x[t, :] . delta[r, :])^2 over the tokens of `x`
// (T x count), added to out[r]. With `gram` (x^T x in double) the same sum is delta H delta^T,
// which costs count instead of T per element.
inline void add_output_error(const ConstFloatBlock& x, const ConstFloatBlock& delta,
                             const Eigen::MatrixXd* gram, double* out) {
  if (gram != nullptr) {
    const Eigen::MatrixXd delta_d = delta.cast<double>();
    const Eigen::MatrixXd projected = delta_d * (*gram);
    const Eigen::VectorXd sums = (projected.array() * delta_d.array()).rowwise().sum();
    for (Eigen::Index r = 0; r < sums.size(); ++r)
      out[r] += sums[r];
    return;
  }
  const Eigen::MatrixXf products = x * delta.transpose();  // T x R partial outputs
  const Eigen::VectorXd sums = products.cast<double>().array().square().colwise().sum().transpose();
  for (Eigen::Index r = 0; r < sums.size(); ++r)
    out[r] += sums[r];
}

// The Gram form pays off once the group is narrower than half the tokens (it runs in double).
inline bool use_gram(int64_t count, int64_t tokens) {
  return 2 * count < tokens;
}

// x^T x in double for columns [begin, begin + count) of calibration matrix `matrix`.
inline Eigen::MatrixXd gram_of(const Calibration& calibration, int64_t matrix, int64_t begin,
                               int64_t count) {
  const Eigen::MatrixXd x = calibration.columns(matrix, begin, count).cast<double>();
  return x.transpose() * x;
}

}  // namespace detail

// weights [..., N, K] (float, fp16 or bf16; searched as float), activations: 1 shared [T, K] or
// rows / N per-leading-index [T_m, K] matrices -> the clipped weights and the chosen ratios.
template <class ScaleT, class W>
AutoClipResult autoclip(TensorView<const W> weights,
                        const std::vector<TensorView<const float>>& activations,
                        const QuantConfig& config, const AutoClipOptions& options = {}) {
  static_assert(is_float_type_v<ScaleT>, "autoclip: ScaleT must be float, fp16 or bf16");
  constexpr const char* who = "autoclip";
  config.validate();
  if (options.steps < 1) {
    detail::fail(ErrorCode::invalid_argument, "AutoClipOptions.steps = ", options.steps,
                 " (expected >= 1 candidate ratios; AWQ's grid is 10)");
  }
  if (!(options.min_ratio > 0.0f && options.min_ratio <= 1.0f)) {
    detail::fail(ErrorCode::invalid_argument, "AutoClipOptions.min_ratio = ", options.min_ratio,
                 " (expected a ratio in (0, 1]; AWQ's is 0.5)");
  }
  const Shape& shape = weights.shape();
  const detail::SearchInputs inputs = detail::check_search_inputs(
      who, "AutoClipOptions", options.num_threads, weights, activations, options.max_tokens);
  const detail::Calibration& calibration = inputs.calibration;
  const std::vector<float>& original = inputs.weights;

  const int64_t rows = shape.rows();
  const int64_t k = shape.last();
  const RowLayout layout = RowLayout::make(config, k);
  const int64_t group_size = layout.group_size;
  const int64_t n_groups = layout.n_groups;
  const auto n_matrices = static_cast<int64_t>(calibration.matrices.size());
  const int64_t row_blocks = (calibration.rows_per_matrix + detail::kCalibrationRowBlock - 1) /
                             detail::kCalibrationRowBlock;
  const auto slots = static_cast<std::size_t>(rows * n_groups);
  const int threads = detail::search_threads(options.num_threads, shape.numel());

  // The group's extremes: AWQ's max |w|, Olive's signed min and max.
  std::vector<float> group_lo(slots), group_hi(slots);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t group = 0; group < n_groups; ++group) {
      const float* values = original.data() + row * k + group * group_size;
      const int64_t count = std::min(group_size, k - group * group_size);
      float lo = values[0], hi = values[0];
      for (int64_t i = 1; i < count; ++i) {
        lo = std::min(lo, values[i]);
        hi = std::max(hi, values[i]);
      }
      const auto slot = static_cast<std::size_t>(row * n_groups + group);
      if (options.range == ClipRange::abs_max) {
        const float amax = std::max(std::fabs(lo), std::fabs(hi));
        group_lo[slot] = -amax;
        group_hi[slot] = amax;
      } else {
        group_lo[slot] = lo;
        group_hi[slot] = hi;
      }
    }
  }

  std::vector<float> ratios(static_cast<std::size_t>(options.steps));
  for (int i = 0; i < options.steps; ++i) {
    ratios[static_cast<std::size_t>(i)] = static_cast<float>(
        1.0 - static_cast<double>(i) * (1.0 - static_cast<double>(options.min_ratio)) /
                  static_cast<double>(options.steps));
  }
  // Candidates in the tools' order: (upper, lower) ratio index pairs.
  std::vector<std::pair<int, int>> candidates;
  for (int upper = 0; upper < options.steps; ++upper) {
    if (options.range == ClipRange::abs_max) {
      candidates.emplace_back(upper, upper);
    } else {
      for (int lower = 0; lower < options.steps; ++lower)
        candidates.emplace_back(upper, lower);
    }
  }

  // Gram matrices where they are cheaper, one per (matrix, group).
  std::vector<Eigen::MatrixXd> grams(static_cast<std::size_t>(n_matrices * n_groups));
  detail::run_calibration_tasks(n_matrices * n_groups, threads, [&](int64_t task) {
    const int64_t matrix = task / n_groups;
    const int64_t group = task % n_groups;
    const int64_t count = std::min(group_size, k - group * group_size);
    if (detail::use_gram(count, calibration.tokens_used[static_cast<std::size_t>(matrix)])) {
      grams[static_cast<std::size_t>(task)] =
          detail::gram_of(calibration, matrix, group * group_size, count);
    }
  });

  AutoClipResult result;
  result.shape = shape;
  result.n_groups = n_groups;
  result.upper_ratio.assign(slots, 1.0f);
  result.lower_ratio.assign(slots, 1.0f);
  result.error.assign(slots, std::numeric_limits<double>::infinity());
  result.unclipped_error.assign(slots, 0.0);

  const auto clamp_group = [](float value, float lo, float hi) {
    return std::min(std::max(value, lo), hi);  // torch.clamp: hi wins when lo > hi
  };
  // Writes the weights clamped per group with ratios (upper(slot), lower(slot)) into `out`.
  const auto clip_into = [&](std::vector<float>& out, const auto& upper_of, const auto& lower_of) {
    detail::parallel_for(threads, rows, [&](int64_t row) {
      for (int64_t group = 0; group < n_groups; ++group) {
        const auto slot = static_cast<std::size_t>(row * n_groups + group);
        const float hi = group_hi[slot] * upper_of(slot);
        const float lo = group_lo[slot] * lower_of(slot);
        const int64_t begin = row * k + group * group_size;
        const int64_t end = row * k + std::min(k, (group + 1) * group_size);
        for (int64_t i = begin; i < end; ++i) {
          out[static_cast<std::size_t>(i)] =
              clamp_group(original[static_cast<std::size_t>(i)], lo, hi);
        }
      }
    });
  };

  std::vector<float> clipped(original.size());
  std::vector<float> delta(original.size());
  std::vector<double> error(slots);
  for (std::size_t c = 0; c < candidates.size(); ++c) {
    const float upper = ratios[static_cast<std::size_t>(candidates[c].first)];
    const float lower = ratios[static_cast<std::size_t>(candidates[c].second)];
    clip_into(
        clipped, [&](std::size_t) { return upper; }, [&](std::size_t) { return lower; });
    const std::vector<float> dequantized =
        detail::fake_quantize<ScaleT>(clipped, shape, config, options.solver, threads);
    for (std::size_t i = 0; i < delta.size(); ++i)
      delta[i] = original[i] - dequantized[i];  // against the unclipped weights, as AWQ's org_out

    // error_{n,g} for every (row, group): tasks over (matrix, group, block of rows).
    detail::run_calibration_tasks(n_matrices * n_groups * row_blocks, threads, [&](int64_t task) {
      const int64_t block = task % row_blocks;
      const int64_t group = (task / row_blocks) % n_groups;
      const int64_t matrix = task / (row_blocks * n_groups);
      const int64_t first_row =
          matrix * calibration.rows_per_matrix + block * detail::kCalibrationRowBlock;
      const int64_t block_rows = std::min(detail::kCalibrationRowBlock,
                                          (matrix + 1) * calibration.rows_per_matrix - first_row);
      const int64_t begin = group * group_size;
      const int64_t count = std::min(group_size, k - begin);
      const detail::ConstFloatBlock delta_block(delta.data() + first_row * k + begin, block_rows,
                                                count, Eigen::OuterStride<>(k));
      const Eigen::MatrixXd& gram = grams[static_cast<std::size_t>(matrix * n_groups + group)];
      std::vector<double> sums(static_cast<std::size_t>(block_rows), 0.0);
      detail::add_output_error(calibration.columns(matrix, begin, count), delta_block,
                               gram.size() > 0 ? &gram : nullptr, sums.data());
      const auto tokens =
          static_cast<double>(calibration.tokens_used[static_cast<std::size_t>(matrix)]);
      for (int64_t r = 0; r < block_rows; ++r) {
        error[static_cast<std::size_t>((first_row + r) * n_groups + group)] =
            sums[static_cast<std::size_t>(r)] / tokens;  // AWQ: mean over tokens
      }
    });

    for (std::size_t slot = 0; slot < slots; ++slot) {
      if (c == 0) result.unclipped_error[slot] = error[slot];
      if (error[slot] < result.error[slot]) {
        result.error[slot] = error[slot];
        result.upper_ratio[slot] = upper;
        result.lower_ratio[slot] = lower;
      }
    }
  }

  result.clipped.resize(original.size());
  clip_into(
      result.clipped, [&](std::size_t slot) { return result.upper_ratio[slot]; },
      [&](std::size_t slot) { return result.lower_ratio[slot]; });
  return result;
}

// One activation matrix shared by every row.
template <class ScaleT, class W>
AutoClipResult autoclip(TensorView<const W> weights, TensorView<const float> activations,
                        const QuantConfig& config, const AutoClipOptions& options = {}) {
  return autoclip<ScaleT>(weights, std::vector<TensorView<const float>>{activations}, config,
                          options);
}

// The searched clipping, quantized with the search's solver: the QuantTensor AutoClip chose.
template <class ScaleT, class W>
QuantTensor<ScaleT> autoclip_quantize(TensorView<const W> weights,
                                      const std::vector<TensorView<const float>>& activations,
                                      const QuantConfig& config,
                                      const AutoClipOptions& options = {}) {
  const AutoClipResult clip = autoclip<ScaleT>(weights, activations, config, options);
  return quantize_with_solver<ScaleT>(clip.clipped_view(), config, options.solver,
                                      options.num_threads);
}

}  // namespace nibble
