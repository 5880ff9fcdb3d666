// AWQ scale search: an activation-aware per-input-channel scale s that moves quantization error
// away from the input channels with large activations, searched through the solver that will
// quantize the scaled weights.
//
//   AwqResult awq = awq_search<float>(TensorView<const float>(w, {N, K}),
//                                     TensorView<const float>(x, {T, K}), config);
//   QuantTensor<float> q = quantize_with_solver<float>(awq.scaled_view(), config, QuantSolver{});
//   // at run time: y = (x * awq.pre_quant_scale) @ dequantize(q)^T   (== (x / s) @ Q(W s)^T)
//
// Same N-D last-dimension path and activation layout as AutoClip (solvers/autoclip.hpp): weights
// [..., N, K], activations one shared [T, K] matrix or one per leading index (expert e of
// [E, N, K] -> activations[e]). One scale vector is searched per activation matrix: shared
// activations give one s [K] for the whole tensor (its error summed over every row, as llm-awq
// scores linears sharing an input together), per-expert activations give each expert its own s,
// exactly what that expert alone would get.
//
// The rule (llm-awq awq/quantize/auto_scale.py auto_scale_block._search_module_scale and
// get_act_scale), for alpha = i / grid, i = 0 .. grid - 1 (n_grid = 20):
//   x_mean[j] = mean_t |X[t, j]|
//   s = max(x_mean^alpha, 1e-4);  s = s / sqrt(max(s) min(s))
//   W' = W[:, j] s[j];            error(alpha) = mean_{t,n} (X W^T - (X / s) Q(W')^T)[t, n]^2
// Q quantizes-then-dequantizes with the chosen solver (RTN under the config's convention, or
// k-quant); the first alpha with the smallest error wins (llm-awq's strict `loss < best_error`).
// alpha = 0 gives s = 1 (no scaling) and comes first, so the search never does worse than plain
// quantization on the calibration data. A candidate whose s is not finite is skipped (AutoAWQ's
// _compute_best_scale replaces inf / NaN scales; with finite activations none occurs).
// The error is the layer's own output; llm-awq scores q/k/v and gate/up through their whole block
// (attention, MLP), which is the caller's business.
//
// Variants not implemented: AutoAWQ's duo_scaling (awq/quantize/quantizer.py _compute_best_scale)
// and ModelOpt's awq_lite (modelopt/torch/quantization/model_calib.py get_scale) also divide by
// w_mean^(1 - alpha), w_mean the mean of |W| / group max per input channel; awq_lite tries
// alpha = 0, 0.1, ..., 1. Their alpha = 0 is not s = 1.
//
// pre_quant_scale. TensorRT-LLM's `prequant_scaling_factor` [1, K] is ModelOpt's
// input_quantizer._pre_quant_scale (tensorrt_llm/quantization/layers.py tllm_to_externel_key_dict),
// which MULTIPLIES the activations before the GEMM (ModelOpt TensorQuantizer.forward:
// `inputs = inputs * self.pre_quant_scale`; TensorRT-LLM functional.py
// weight_only_groupwise_quant_matmul: `input = input * pre_quant_scale`). ModelOpt sets it to
// 1 / best_scale and multiplies the weights by best_scale (awq_lite postprocess:
// apply_pre_quant_scale_and_smooth(module, 1.0 / best_scale)). So here
//   scaled_weights = W * s  and  pre_quant_scale = 1 / s  (activations are divided by s).
// llm-awq instead folds 1 / s into the previous op (scale_ln_fcs: ln.weight /= s).
//
// To follow AutoAWQ's pipeline (scale, then clip), run autoclip on scaled_weights with the
// activations multiplied by pre_quant_scale (llm-awq apply_scale: input_feat /= scales).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "nibble/core/error.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/solvers/autoclip.hpp"  // also Eigen, included host-only under nvcc

namespace nibble {

struct AwqOptions {
  int grid = 20;        // alphas i / grid for i = 0 .. grid - 1 (llm-awq's n_grid)
  QuantSolver solver;   // the Q of the error
  int num_threads = 0;  // OpenMP threads; 0 = OpenMP's default (1 below 2^14 weights)
};

struct AwqResult {
  Shape shape{1};                      // the weights' shape [..., N, K]
  int64_t n_scales = 0;                // scale vectors: 1, or one per activation matrix
  std::vector<float> scale;            // [n_scales, K]: s (W' = W * s)
  std::vector<float> pre_quant_scale;  // [n_scales, K]: 1 / s, multiplies the activations
  std::vector<float> scaled_weights;   // [rows, K]: W * s with each row's s, ready to quantize
  std::vector<float> alpha;            // [n_scales]: the chosen alpha
  std::vector<double> error;           // [n_scales]: mean_{t,n} squared output error at alpha
  std::vector<double> unscaled_error;  // [n_scales]: the same at alpha = 0 (s = 1)

  TensorView<const float> scaled_view() const {
    return TensorView<const float>(scaled_weights.data(), shape, "scaled weights");
  }
};

// weights [..., N, K] (float, fp16 or bf16; searched as float), activations: 1 shared [T, K] or
// rows / N per-leading-index [T_m, K] matrices -> per matrix the best s, 1 / s and W * s.
template <class ScaleT, class W>
AwqResult awq_search(TensorView<const W> weights,
                     const std::vector<TensorView<const float>>& activations,
                     const QuantConfig& config, const AwqOptions& options = {}) {
  static_assert(is_float_type_v<ScaleT>, "awq_search: ScaleT must be float, fp16 or bf16");
  constexpr const char* who = "awq_search";
  config.validate();
  if (options.grid < 1) {
    detail::fail(ErrorCode::invalid_argument, "AwqOptions.grid = ", options.grid,
                 " (expected >= 1 alphas; llm-awq's n_grid is 20)");
  }
  const Shape& shape = weights.shape();
  const detail::SearchInputs inputs = detail::check_search_inputs(
      who, "AwqOptions", options.num_threads, weights, activations, /*max_tokens=*/0);
  const detail::Calibration& calibration = inputs.calibration;
  const std::vector<float>& original = inputs.weights;

  const int64_t rows = shape.rows();
  const int64_t k = shape.last();
  const int64_t rows_per_matrix = calibration.rows_per_matrix;
  const auto n_matrices = static_cast<int64_t>(calibration.matrices.size());
  const int64_t row_blocks =
      (rows_per_matrix + detail::kCalibrationRowBlock - 1) / detail::kCalibrationRowBlock;
  const auto scale_size = static_cast<std::size_t>(n_matrices * k);
  const int threads = detail::search_threads(options.num_threads, shape.numel());

  // llm-awq get_act_scale: the mean |x| of each input channel (accumulated in double).
  std::vector<float> x_mean(scale_size);
  for (int64_t m = 0; m < n_matrices; ++m) {
    const TensorView<const float>& x = calibration.matrices[static_cast<std::size_t>(m)];
    std::vector<double> sums(static_cast<std::size_t>(k), 0.0);
    for (int64_t t = 0; t < x.rows(); ++t) {
      for (int64_t j = 0; j < k; ++j)
        sums[static_cast<std::size_t>(j)] += std::fabs(static_cast<double>(x.row(t)[j]));
    }
    for (int64_t j = 0; j < k; ++j) {
      x_mean[static_cast<std::size_t>(m * k + j)] =
          static_cast<float>(sums[static_cast<std::size_t>(j)] / static_cast<double>(x.rows()));
    }
  }

  std::vector<Eigen::MatrixXd> grams(static_cast<std::size_t>(n_matrices));
  detail::run_calibration_tasks(n_matrices, threads, [&](int64_t m) {
    if (detail::use_gram(k, calibration.tokens_used[static_cast<std::size_t>(m)])) {
      grams[static_cast<std::size_t>(m)] = detail::gram_of(calibration, m, 0, k);
    }
  });

  AwqResult result;
  result.shape = shape;
  result.n_scales = n_matrices;
  result.scale.assign(scale_size, 1.0f);
  result.scaled_weights = original;
  result.alpha.assign(static_cast<std::size_t>(n_matrices), 0.0f);
  result.error.assign(static_cast<std::size_t>(n_matrices),
                      std::numeric_limits<double>::infinity());
  result.unscaled_error.assign(static_cast<std::size_t>(n_matrices), 0.0);

  std::vector<float> scale(scale_size);
  std::vector<uint8_t> usable(static_cast<std::size_t>(n_matrices));
  std::vector<float> scaled(original.size());
  std::vector<float> delta(original.size());
  std::vector<double> row_error(static_cast<std::size_t>(rows));
  for (int step = 0; step < options.grid; ++step) {
    const float alpha = static_cast<float>(static_cast<double>(step) / options.grid);
    for (int64_t m = 0; m < n_matrices; ++m) {
      float* s = scale.data() + m * k;
      const float* mean = x_mean.data() + m * k;
      for (int64_t j = 0; j < k; ++j)
        s[j] = std::max(std::pow(mean[j], alpha), 1e-4f);
      const auto [lowest, highest] = std::minmax_element(s, s + k);
      const float norm = std::sqrt(*highest * *lowest);
      bool finite = std::isfinite(norm) && norm > 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        s[j] = s[j] / norm;
        finite = finite && std::isfinite(s[j]) && s[j] > 0.0f;
      }
      usable[static_cast<std::size_t>(m)] = finite ? 1 : 0;
      if (!finite) std::fill(s, s + k, 1.0f);  // scored as unusable below
    }

    detail::parallel_for(threads, rows, [&](int64_t row) {
      const float* s = scale.data() + (row / rows_per_matrix) * k;
      for (int64_t j = 0; j < k; ++j) {
        const auto i = static_cast<std::size_t>(row * k + j);
        scaled[i] = original[i] * s[j];
      }
    });
    const std::vector<float> dequantized =
        detail::fake_quantize<ScaleT>(scaled, shape, config, options.solver, threads);
    detail::parallel_for(threads, rows, [&](int64_t row) {
      const float* s = scale.data() + (row / rows_per_matrix) * k;
      for (int64_t j = 0; j < k; ++j) {
        const auto i = static_cast<std::size_t>(row * k + j);
        // X W^T - (X / s) Q^T = X (W - Q / s)^T; in double, so delta is rounded once (at 8 bits
        // it is ~1/256 of W, and a float Q / s would carry W's rounding into it).
        delta[i] = static_cast<float>(static_cast<double>(original[i]) -
                                      static_cast<double>(dequantized[i]) / s[j]);
      }
    });

    std::fill(row_error.begin(), row_error.end(), 0.0);
    detail::run_calibration_tasks(n_matrices * row_blocks, threads, [&](int64_t task) {
      const int64_t matrix = task / row_blocks;
      const int64_t first_row =
          matrix * rows_per_matrix + (task % row_blocks) * detail::kCalibrationRowBlock;
      const int64_t block_rows =
          std::min(detail::kCalibrationRowBlock, (matrix + 1) * rows_per_matrix - first_row);
      const detail::ConstFloatBlock delta_block(delta.data() + first_row * k, block_rows, k,
                                                Eigen::OuterStride<>(k));
      const Eigen::MatrixXd& gram = grams[static_cast<std::size_t>(matrix)];
      detail::add_output_error(calibration.columns(matrix, 0, k), delta_block,
                               gram.size() > 0 ? &gram : nullptr, row_error.data() + first_row);
    });

    for (int64_t m = 0; m < n_matrices; ++m) {
      const auto index = static_cast<std::size_t>(m);
      double total = 0.0;
      for (int64_t row = m * rows_per_matrix; row < (m + 1) * rows_per_matrix; ++row)
        total += row_error[static_cast<std::size_t>(row)];
      // llm-awq: (org_out - out).pow(2).mean() over the [T, N] output.
      const double error = total / (static_cast<double>(calibration.tokens_used[index]) *
                                    static_cast<double>(rows_per_matrix));
      if (step == 0) result.unscaled_error[index] = error;
      if (usable[index] == 0 || !(error < result.error[index])) continue;
      result.error[index] = error;
      result.alpha[index] = alpha;
      std::copy(scale.begin() + m * k, scale.begin() + (m + 1) * k, result.scale.begin() + m * k);
      std::copy(scaled.begin() + m * rows_per_matrix * k,
                scaled.begin() + (m + 1) * rows_per_matrix * k,
                result.scaled_weights.begin() + m * rows_per_matrix * k);
    }
  }

  result.pre_quant_scale.resize(scale_size);
  for (std::size_t i = 0; i < scale_size; ++i)
    result.pre_quant_scale[i] = 1.0f / result.scale[i];
  return result;
}

// One activation matrix shared by every row.
template <class ScaleT, class W>
AwqResult awq_search(TensorView<const W> weights, TensorView<const float> activations,
                     const QuantConfig& config, const AwqOptions& options = {}) {
  return awq_search<ScaleT>(weights, std::vector<TensorView<const float>>{activations}, config,
                            options);
}

}  // namespace nibble
