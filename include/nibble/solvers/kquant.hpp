// k-quant: an importance-weighted search for each group's scale and offset, instead of RTN's
// min / max rule. Same N-D last-dimension path as the RTN quantizer (quantizer.hpp): the leading
// dimensions flatten to rows, groups run along K.
//
//   QuantTensor<float> q = kquant_quantize<float>(TensorView<const float>(w, {N, K}),
//                                                 QuantConfig{4, 32, false,
//                                                             ConventionId::ort_weight_only});
//
// Variants (KQuantVariant), each a named transcription of one tool:
//   ort        onnxruntime's `k_quant` (neural_compressor/weight_only.py quant_tensor_k_quant_cpu),
//              which the ONNX Runtime GenAI builder runs for int4_algo_config=k_quant: the same
//              float32 operations in the same order (numpy's pairwise sums included), so the
//              bytes are identical (python/tests/test_kquant.py runs onnxruntime). Asymmetric only
//              (onnxruntime ignores is_symmetric for k_quant and always writes zero points).
//   llama_cpp  llama.cpp's make_qkx2_quants (Q4_K's search, ggml-quants.c) for asymmetric groups:
//              the fitted offset is clamped to <= 0 (re-solving the scale), a candidate needs a
//              positive determinant, 21 candidates; make_qx_quants (Q6_K's, weights x^2) for
//              symmetric groups. The float (scale, offset, codes) of the search are available per
//              group (kquant::search_llama_cpp) for formats that store a float offset (GGUF);
//              a QuantTensor stores an integer zero point, so there the offset is rounded to one
//              (round(-min / scale)) and the codes are recomputed from (scale, zero point).
//
// Where the two searches differ (see ../shared/design/formats-ort-olive-detail.md, section 4):
// onnxruntime keeps an accepted offset above 0 (so an all-positive group's zero point clips to 0
// and its codes saturate), has no determinant guard, tries 20 candidates, and sums pairwise
// (numpy); llama.cpp sums left to right. Both update the offset a candidate wins with in place,
// so later candidates are placed relative to it.
//
// Importance: KQuantOptions::importance, one non-negative float per input column (e.g. the mean
// of x^2 over calibration activations, llama.cpp's imatrix), multiplies each element's search
// weight. Without importance the search is the tool's; with every importance 1 it is the same
// search bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/parallel.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/pack.hpp"
#include "nibble/quant_tensor.hpp"
#include "nibble/quantizer.hpp"
#include "nibble/solvers/rtn.hpp"

namespace nibble {

enum class KQuantVariant : uint8_t {
  ort,        // onnxruntime's k_quant, bit-exact; asymmetric
  llama_cpp,  // llama.cpp's make_qkx2_quants (asymmetric) / make_qx_quants (symmetric)
};

inline const char* kquant_variant_name(KQuantVariant variant) {
  return variant == KQuantVariant::ort ? "ort" : "llama_cpp";
}

inline KQuantVariant kquant_variant_from_name(const std::string& name) {
  if (name == "ort") return KQuantVariant::ort;
  if (name == "llama_cpp") return KQuantVariant::llama_cpp;
  detail::fail(ErrorCode::invalid_argument, "k-quant variant \"", name,
               "\" is not known (expected \"ort\" or \"llama_cpp\")");
}

struct KQuantOptions {
  KQuantVariant variant = KQuantVariant::ort;
  // Empty: no importance. Else K floats (shared by every row), or (rows / N) * K for a tensor
  // of rank >= 3 (one vector per leading index, e.g. per MoE expert of [E, N, K]).
  std::vector<float> importance;
  int num_threads = 0;  // OpenMP threads over rows; 0 = OpenMP's default
  NonFinitePolicy non_finite = NonFinitePolicy::error;
};

namespace kquant {

// a * b rounded on its own, never fused into a following add (see rtn::rounded_product).
inline float mul(float a, float b) {
  return rtn::rounded_product(a, b);
}

// numpy's float32 sum of a contiguous run (np.sum / add.reduce): 0 + pairwise(values), where
// pairwise sums runs of < 8 left to right, runs of <= 128 in 8 interleaved accumulators combined
// as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)) plus the tail left to right, and longer
// runs as two halves split at a multiple of 8 (numpy's pairwise_sum, PW_BLOCKSIZE 128).
inline float numpy_pairwise(const float* values, int64_t n) {
  if (n < 8) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i)
      sum += values[i];
    return sum;
  }
  if (n <= 128) {
    float r[8];
    for (int j = 0; j < 8; ++j)
      r[j] = values[j];
    int64_t i = 8;
    for (; i < n - n % 8; i += 8) {
      for (int j = 0; j < 8; ++j)
        r[j] += values[i + j];
    }
    float sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i)
      sum += values[i];
    return sum;
  }
  int64_t half = n / 2;
  half -= half % 8;
  return numpy_pairwise(values, half) + numpy_pairwise(values + half, n - half);
}
inline float numpy_sum(const float* values, int64_t n) {
  return 0.0f + numpy_pairwise(values, n);
}

// llama.cpp's nearest_int and numpy's np.round: round half to even (the default rounding mode).
inline float round_even(float value) {
  return std::nearbyint(value);
}

// x ~ scale * code + offset over one group.
struct AffineFit {
  float scale;
  float offset;  // the fitted minimum (llama.cpp returns -offset as `the_min`)
};

// Scratch for one group of n elements.
struct GroupScratch {
  std::vector<float> codes, candidate, product;
  explicit GroupScratch(int64_t n)
      : codes(static_cast<std::size_t>(n)),
        candidate(static_cast<std::size_t>(n)),
        product(static_cast<std::size_t>(n)) {}
};

// onnxruntime's search weights for a group: sqrt(sum x^2 / n) + |x_i| (n: the padded length).
inline void ort_weights(const float* x, int64_t n, float* weights, float* product) {
  for (int64_t i = 0; i < n; ++i)
    product[i] = mul(x[i], x[i]);
  const float rms = std::sqrt(numpy_sum(product, n) / static_cast<float>(n));
  for (int64_t i = 0; i < n; ++i)
    weights[i] = rms + std::fabs(x[i]);
}

// onnxruntime's quant_tensor_k_quant_cpu for one group (the numpy code vectorizes over groups;
// every operation is elementwise or a per-group sum, so one group at a time is the same
// arithmetic). Returns the winning (scale, offset); the codes are then recomputed from them.
inline AffineFit search_ort(const float* x, const float* weights, int64_t n, int maxq,
                            GroupScratch& scratch) {
  float* q = scratch.candidate.data();
  float* product = scratch.product.data();
  const float levels = static_cast<float>(maxq);
  float lo = *std::min_element(x, x + n);
  const float hi = *std::max_element(x, x + n);
  for (int64_t i = 0; i < n; ++i)
    product[i] = mul(weights[i], x[i]);
  const float sum_w = numpy_sum(weights, n);
  const float sum_x = numpy_sum(product, n);
  const auto quantize_at = [&](float inverse_scale) {
    for (int64_t i = 0; i < n; ++i)
      q[i] = std::clamp(round_even(mul(inverse_scale, x[i] - lo)), 0.0f, levels);
  };
  // Weighted squared error of x ~ scale * q + offset: sum w ((scale q + offset) - x)^2.
  const auto error_of = [&](float scale, float offset) {
    for (int64_t i = 0; i < n; ++i) {
      const float diff = (mul(scale, q[i]) + offset) - x[i];
      product[i] = mul(weights[i], mul(diff, diff));
    }
    return numpy_sum(product, n);
  };

  float inverse = lo != hi ? levels / (hi - lo) : 1.0f;
  float scale = 1.0f / inverse;
  quantize_at(inverse);
  float best = error_of(scale, lo);
  for (int step = 0; step < 20; ++step) {
    // numpy: float32(rrmin + rdelta * is + maxq - minq), evaluated in double first.
    const auto factor = static_cast<float>(-1.0 + 0.1 * step + maxq - 0);
    inverse = lo != hi ? factor / (hi - lo) : 1.0f;  // lo: the offset accepted so far
    quantize_at(inverse);
    for (int64_t i = 0; i < n; ++i)
      product[i] = mul(weights[i], q[i]);
    const float sum_l = numpy_sum(product, n);
    for (int64_t i = 0; i < n; ++i)
      product[i] = mul(mul(weights[i], q[i]), q[i]);
    const float sum_l2 = numpy_sum(product, n);
    for (int64_t i = 0; i < n; ++i)
      product[i] = mul(mul(weights[i], q[i]), x[i]);
    const float sum_xl = numpy_sum(product, n);
    const float determinant = mul(sum_w, sum_l2) - mul(sum_l, sum_l);
    const float this_scale = (mul(sum_w, sum_xl) - mul(sum_x, sum_l)) / determinant;
    const float this_offset = (mul(sum_l2, sum_x) - mul(sum_l, sum_xl)) / determinant;
    const float error = error_of(this_scale, this_offset);
    if (error < best) {  // NaN (a zero determinant) never wins
      best = error;
      scale = this_scale;
      lo = this_offset;
    }
  }
  return {scale, lo};
}

// The grid of make_qkx2_quants' candidate scales, iscale = (rmin + rdelta * step + nmax) / range
// for step = 0 .. steps, and its error measure: weighted squared error, or with use_mad the
// weighted absolute error. The defaults are the call Q4_K / Q5_K / ORT's k_quant make
// (-1, 0.1, 20, false); Q2_K uses (-0.5, 0.1, 15, true).
struct LlamaCppGrid {
  float rmin = -1.0f;
  float rdelta = 0.1f;
  int steps = 20;
  bool use_mad = false;
};

// llama.cpp's make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep,
// use_mad): `codes` receives the search's codes (0 .. nmax). Sums run left to right.
inline AffineFit search_llama_cpp(const float* x, const float* weights, int64_t n, int nmax,
                                  uint8_t* codes, GroupScratch& scratch,
                                  const LlamaCppGrid& grid = {}) {
  float lo = x[0];
  float hi = x[0];
  float sum_w = weights[0];
  float sum_x = mul(sum_w, x[0]);
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sum_w += weights[i];
    sum_x += mul(weights[i], x[i]);
  }
  lo = std::min(lo, 0.0f);
  if (hi == lo) {
    std::fill(codes, codes + n, uint8_t{0});
    return {0.0f, lo};
  }
  const float levels = static_cast<float>(nmax);
  float* candidate = scratch.candidate.data();
  const auto quantize_at = [&](float inverse_scale, float* out) {
    for (int64_t i = 0; i < n; ++i)
      out[i] = std::clamp(round_even(mul(inverse_scale, x[i] - lo)), 0.0f, levels);
  };
  const auto error_of = [&](const float* q, float scale, float offset) {
    float error = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      const float diff = (mul(scale, q[i]) + offset) - x[i];
      error += mul(weights[i], grid.use_mad ? std::fabs(diff) : mul(diff, diff));
    }
    return error;
  };
  float* best_codes = scratch.codes.data();
  float inverse = levels / (hi - lo);
  float scale = 1.0f / inverse;
  quantize_at(inverse, best_codes);
  float best = error_of(best_codes, scale, lo);
  for (int step = 0; step <= grid.steps; ++step) {
    inverse = (grid.rmin + mul(grid.rdelta, static_cast<float>(step)) + levels) / (hi - lo);
    quantize_at(inverse, candidate);
    float sum_l = 0.0f;
    float sum_l2 = 0.0f;
    float sum_xl = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      const float wl = mul(weights[i], candidate[i]);
      sum_l += wl;
      sum_l2 += mul(wl, candidate[i]);
      sum_xl += mul(wl, x[i]);
    }
    const float determinant = mul(sum_w, sum_l2) - mul(sum_l, sum_l);
    if (!(determinant > 0)) continue;
    float this_scale = (mul(sum_w, sum_xl) - mul(sum_x, sum_l)) / determinant;
    float this_offset = (mul(sum_l2, sum_x) - mul(sum_l, sum_xl)) / determinant;
    if (this_offset > 0) {  // keep 0 representable: refit the scale with the offset at 0
      this_offset = 0.0f;
      this_scale = sum_xl / sum_l2;
    }
    const float error = error_of(candidate, this_scale, this_offset);
    if (error < best) {
      std::copy(candidate, candidate + n, best_codes);
      best = error;
      scale = this_scale;
      lo = this_offset;
    }
  }
  for (int64_t i = 0; i < n; ++i)
    codes[i] = static_cast<uint8_t>(best_codes[i]);
  return {scale, lo};
}

// llama.cpp's make_qx_quants(n, nmax = 2^(bits-1), x, L, rmse_type = 1, weights): a symmetric
// scale search. `codes` receives L + nmax (0 .. 2 nmax - 1: the stored symmetric code). Returns
// the scale (negative when the extreme value is positive: the extreme maps to code 0).
inline float search_symmetric(const float* x, const float* weights, int64_t n, int nmax,
                              uint8_t* codes) {
  float extreme = 0.0f;
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      extreme = x[i];
    }
  }
  if (amax < 1e-15f) {  // GROUP_MAX_EPS: all (nearly) zero
    std::fill(codes, codes + n, static_cast<uint8_t>(nmax));
    return 0.0f;
  }
  const auto level = [&](float inverse_scale, int64_t i) {
    return std::clamp(round_even(mul(inverse_scale, x[i])), static_cast<float>(-nmax),
                      static_cast<float>(nmax - 1));
  };
  const auto store = [&](float inverse_scale) {
    for (int64_t i = 0; i < n; ++i)
      codes[i] = static_cast<uint8_t>(level(inverse_scale, i) + static_cast<float>(nmax));
  };
  // (sum w x l, sum w l^2) at one inverse scale.
  const auto moments = [&](float inverse_scale, float& sum_lx, float& sum_l2) {
    sum_lx = 0.0f;
    sum_l2 = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      const float l = level(inverse_scale, i);
      sum_lx += mul(mul(weights[i], x[i]), l);
      sum_l2 += mul(mul(weights[i], l), l);
    }
  };
  float inverse = -static_cast<float>(nmax) / extreme;
  float sum_lx = 0.0f;
  float sum_l2 = 0.0f;
  moments(inverse, sum_lx, sum_l2);
  store(inverse);
  float scale = sum_l2 != 0.0f ? sum_lx / sum_l2 : 0.0f;
  float best = mul(scale, sum_lx);
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    inverse = -(static_cast<float>(nmax) + mul(0.1f, static_cast<float>(step))) / extreme;
    moments(inverse, sum_lx, sum_l2);
    if (sum_l2 > 0 && mul(sum_lx, sum_lx) > mul(best, sum_l2)) {
      store(inverse);
      scale = sum_lx / sum_l2;
      best = mul(scale, sum_lx);
    }
  }
  return scale;
}

}  // namespace kquant

// weights [..., K] (float, fp16 or bf16) -> canonical QuantTensor (same logical shape), with the
// k-quant search of `options.variant` choosing every group's scale (and zero point).
template <class ScaleT, class W>
QuantTensor<ScaleT> kquant_quantize(TensorView<const W> weights, const QuantConfig& config,
                                    const KQuantOptions& options = {}) {
  static_assert(is_float_type_v<W>, "kquant_quantize: weights must be float, fp16 or bf16");
  static_assert(is_float_type_v<ScaleT>, "kquant_quantize: ScaleT must be float, fp16 or bf16");
  config.validate();
  detail::check_num_threads("KQuantOptions", options.num_threads);
  if (options.variant == KQuantVariant::ort && config.symmetric) {
    detail::fail(ErrorCode::invalid_argument,
                 "k-quant variant \"ort\" is asymmetric only: onnxruntime's k_quant ignores "
                 "is_symmetric and always writes zero points (use symmetric = false to reproduce "
                 "it, or the \"llama_cpp\" variant for a symmetric search)");
  }
  const Shape& shape = weights.shape();
  const int64_t rows = weights.rows();
  const int64_t k = weights.cols();
  // Which importance vector row r uses: shared, or per leading index (rows / N of them).
  int64_t rows_per_importance = rows;
  if (!options.importance.empty()) {
    const auto given = static_cast<int64_t>(options.importance.size());
    const int64_t per_leading = shape.rank() >= 3 ? rows / shape[shape.rank() - 2] : 1;
    if (given == k) {
      rows_per_importance = rows;
    } else if (shape.rank() >= 3 && given == per_leading * k) {
      rows_per_importance = shape[shape.rank() - 2];
    } else {
      detail::fail(ErrorCode::shape_mismatch, "k-quant importance has ", given,
                   " values for weights of shape ", shape, " (expected K = ", k,
                   shape.rank() >= 3 ? " or (leading dims) x K = " : "",
                   shape.rank() >= 3 ? std::to_string(per_leading * k) : std::string(), ")");
    }
    for (std::size_t i = 0; i < options.importance.size(); ++i) {
      const float value = options.importance[i];
      if (!std::isfinite(value) || value < 0) {
        detail::fail(ErrorCode::invalid_argument, "k-quant importance[", i, "] = ", value,
                     " (expected a finite value >= 0)");
      }
    }
  }
  if (options.non_finite == NonFinitePolicy::error) {
    detail::check_finite_weights(weights, "kquant_quantize",
                                 "NaN/Inf weights are rejected (KQuantOptions::non_finite = "
                                 "NonFinitePolicy::replace_with_zero quantizes them as 0)");
  }

  QuantTensor<ScaleT> out(shape, config);
  const RowLayout& layout = out.layout();
  const int bits = config.bits;
  const int maxq = (1 << bits) - 1;
  const int mid = 1 << (bits - 1);
  const bool symmetric = config.symmetric;
  const bool ort = options.variant == KQuantVariant::ort;
  // One row; throws ErrorCode::non_finite if a group's scale does not fit ScaleT.
  const auto quantize_row = [&](int64_t row) {
    const int64_t g = layout.group_size;
    std::vector<float> values(static_cast<std::size_t>(g));
    std::vector<float> search_weights(static_cast<std::size_t>(g));
    std::vector<uint8_t> codes(static_cast<std::size_t>(layout.padded_k));
    std::vector<uint8_t> zero_codes(static_cast<std::size_t>(out.zero_slots()));
    kquant::GroupScratch scratch(g);
    const W* x = weights.row(row);
    const float* importance = options.importance.empty()
                                  ? nullptr
                                  : options.importance.data() + (row / rows_per_importance) * k;
    ScaleT* scales = out.scales().data() + row * layout.n_groups;
    for (int64_t group = 0; group < layout.n_groups; ++group) {
      const int64_t begin = group * g;
      const int64_t count = std::min(g, k - begin);
      // onnxruntime pads K with zeros and searches over whole groups; llama.cpp's search sees
      // the real elements only.
      const int64_t n = ort ? g : count;
      for (int64_t i = 0; i < n; ++i) {
        const float value = i < count ? to_float(x[begin + i]) : 0.0f;
        values[static_cast<std::size_t>(i)] = std::isfinite(value) ? value : 0.0f;
      }
      // Search weights: onnxruntime's / Q4_K's sqrt(mean x^2) + |x| (mean over the padded
      // group, Q4_K's over its 32), make_qx_quants' x^2 for symmetric groups.
      if (symmetric) {
        for (int64_t i = 0; i < n; ++i)
          search_weights[static_cast<std::size_t>(i)] = kquant::mul(values[i], values[i]);
      } else if (ort) {
        kquant::ort_weights(values.data(), n, search_weights.data(), scratch.product.data());
      } else {
        float sum_x2 = 0.0f;
        for (int64_t i = 0; i < n; ++i)
          sum_x2 += kquant::mul(values[i], values[i]);
        const float rms = std::sqrt(sum_x2 / static_cast<float>(n));
        for (int64_t i = 0; i < n; ++i)
          search_weights[static_cast<std::size_t>(i)] = rms + std::fabs(values[i]);
      }
      if (importance != nullptr) {
        for (int64_t i = 0; i < n; ++i) {
          const float w = i < count ? importance[begin + i] : 1.0f;  // padding: neutral
          search_weights[static_cast<std::size_t>(i)] =
              kquant::mul(search_weights[static_cast<std::size_t>(i)], w);
        }
      }

      uint8_t* group_codes = codes.data() + begin;
      float scale = 0.0f;
      int zero = mid;
      if (symmetric) {
        scale = kquant::search_symmetric(values.data(), search_weights.data(), n, mid, group_codes);
      } else {
        const kquant::AffineFit fit =
            ort ? kquant::search_ort(values.data(), search_weights.data(), n, maxq, scratch)
                : kquant::search_llama_cpp(values.data(), search_weights.data(), n, maxq,
                                           group_codes, scratch);
        scale = fit.scale;
        float offset = fit.offset;
        if (!ort && scale == 0.0f && offset != 0.0f) {
          // llama.cpp's fit of a group of equal values c < 0 is (scale 0, offset c), which an
          // integer zero point cannot hold: c = (c / -maxq) * (0 - maxq) can.
          scale = offset / -static_cast<float>(maxq);
        }
        // onnxruntime: zp = clip(round(-min / scale), 0, maxq) in float32, then codes
        // clip(round(x / scale + zp), 0, maxq) in float64 (scale.astype(float64)).
        const float zero_real =
            std::clamp(kquant::round_even(-offset / scale), 0.0f, static_cast<float>(maxq));
        zero = std::isnan(zero_real) ? 0 : static_cast<int>(zero_real);
        for (int64_t i = 0; i < count; ++i) {
          const double code =
              std::nearbyint(static_cast<double>(values[i]) / static_cast<double>(scale) + zero);
          group_codes[i] = static_cast<uint8_t>(
              std::isnan(code) ? zero : std::clamp(code, 0.0, static_cast<double>(maxq)));
        }
      }
      const ScaleT stored = rtn::store_scale<ScaleT>(scale);
      if (!std::isfinite(scale) || !std::isfinite(to_float(stored))) {
        detail::fail(ErrorCode::non_finite, "kquant_quantize: row ",
                     detail::format_index(shape, row, begin), " group ", group,
                     ": the search gave scale ", scale, " stored as ", to_float(stored), " (",
                     type_name<ScaleT>(), "); the range does not fit this scale type");
      }
      scales[group] = stored;
      zero_codes[static_cast<std::size_t>(group)] = static_cast<uint8_t>(zero);
    }
    out.pack_row(row, codes.data(), zero_codes.data());  // pads: 0.0's code, the convention's
  };
  // The lowest failing row's error is rethrown after the region.
  detail::parallel_for(options.num_threads, rows, quantize_row);
  return out;
}

template <class ScaleT, class W>
QuantTensor<ScaleT> kquant_quantize(TensorView<W> weights, const QuantConfig& config,
                                    const KQuantOptions& options = {}) {
  return kquant_quantize<ScaleT>(TensorView<const W>(weights), config, options);
}

}  // namespace nibble
