// GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
// Transformers", 2022): quantize one input column at a time and spread each column's error over
// the columns not yet quantized, weighted by the inverse Hessian of the layer's calibration
// inputs, so that ||X W^T - X W_q^T|| is small rather than ||W - W_q||.
//
//   GptqHessian hessian(K);
//   hessian.add_batch(TensorView<const float>(x, {tokens, K}));   // as calibration runs,
//   repeatedly GptqResult<float> r = gptq_quantize<float>(TensorView<const float>(w, {N, K}),
//                                              QuantConfig{4, 128, false}, {hessian});
//
// The algorithm is the published one (IST-DASLab/gptq gptq.py fasterquant, as AutoGPTQ runs it):
//   dead columns (H_jj = 0): H_jj = 1, W[:, j] = 0;
//   act_order: columns by descending H_jj; static_groups: group parameters from the original
//     weights before any update (so act_order does not change group membership);
//   damping: H += damp_percent * mean(diag H) * I;
//   U = upper Cholesky factor of H^-1 (H^-1 = U^T U);
//   blocks of block_size columns: inside a block each column is quantized, its error
//     e = (w - q) / U_ii is subtracted from the block's later columns (times U_i,j), and the
//     block's errors update all later columns at once (one GEMM, the "lazy batch" update);
//   group parameters (GPTQ's Quantizer.find_params: range including 0, GPTQ's symmetric rule,
//     scale = (max - min) / maxq, zero = round(-min / scale), or 2^(bits-1) when symmetric) are
//     found when the sweep reaches a group's first column, from the weights as the previous
//     blocks' lazy updates left them (the published code reads W, not the block's working copy;
//     kept for the same codes);
//   codes q = clamp(round(w / scale) + zero, 0, maxq).
// Scalars are float (as the published code) or double (GptqOptions::fp64).
//
// The output is a normal QuantTensor (codes in original column order, groups of G along K)
// plus, when act_order without static_groups changes group membership, g_idx: the group of each
// input column (GPTQ's g_idx; dequantize_gptq applies it).
//
// Rank 3 ([E, N, K] experts): one Hessian per leading index (each expert sees its own tokens),
// or one shared by all.
//
// Edge cases: a group size >= K (or per-channel) is one group per row, as in the RTN quantizer
// (the canonical layout pads the codes); act_order with one group per row still orders the
// sweep (it changes the codes, not membership: no g_idx). A Hessian that stays singular after
// damping (e.g. damp_percent = 0 with fewer calibration rows than K) or is not finite is an
// Error; so are a Hessian without calibration rows, one of the wrong K, and non-finite weights
// or calibration inputs.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "nibble/core/eigen_host.hpp"  // Eigen/Dense, host-only under nvcc
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/parallel.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/pack.hpp"
#include "nibble/quant_tensor.hpp"
#include "nibble/quantizer.hpp"
#include "nibble/solvers/rtn.hpp"

namespace nibble {

// H = 2 / n * sum over calibration rows x of x x^T, accumulated batch by batch (a running mean,
// as GPTQ's add_batch: H *= n / (n + m); H += 2 / (n + m) X^T X), in double.
class GptqHessian {
 public:
  explicit GptqHessian(int64_t k) : k_(k) {
    if (k < 1) detail::fail(ErrorCode::shape_mismatch, "GptqHessian: K = ", k, " (expected >= 1)");
    hessian_ = Eigen::MatrixXd::Zero(k, k);
  }

  // x [..., K]: every row is one calibration input of the layer.
  template <class X>
  void add_batch(TensorView<const X> x) {
    static_assert(is_float_type_v<X>, "GptqHessian::add_batch: x must be float, fp16 or bf16");
    if (x.cols() != k_) {
      detail::fail(ErrorCode::shape_mismatch, "GptqHessian::add_batch: x has shape ", x.shape(),
                   " (expected K = ", k_, " columns, the layer's input features)");
    }
    const int64_t m = x.rows();
    Eigen::MatrixXd batch(m, k_);
    for (int64_t row = 0; row < m; ++row) {
      for (int64_t col = 0; col < k_; ++col) {
        const double value = to_float(x.row(row)[col]);
        if (!std::isfinite(value)) {
          detail::fail(ErrorCode::non_finite, "GptqHessian::add_batch: x",
                       detail::format_dims(std::vector<int64_t>{row, col}), " = ", value,
                       " (calibration inputs must be finite)");
        }
        batch(row, col) = value;
      }
    }
    const double total = static_cast<double>(samples_ + m);
    hessian_ *= static_cast<double>(samples_) / total;
    hessian_.selfadjointView<Eigen::Lower>().rankUpdate(batch.transpose(), 2.0 / total);
    hessian_.triangularView<Eigen::StrictlyUpper>() = hessian_.transpose();
    samples_ += m;
  }
  template <class X>
  void add_batch(TensorView<X> x) {
    add_batch(TensorView<const X>(x));
  }

  int64_t k() const { return k_; }
  int64_t samples() const { return samples_; }
  const Eigen::MatrixXd& matrix() const { return hessian_; }

 private:
  int64_t k_;
  int64_t samples_ = 0;
  Eigen::MatrixXd hessian_;
};

struct GptqOptions {
  double damp_percent = 0.01;  // of the mean diagonal, added to the diagonal
  int64_t block_size = 128;    // columns per lazy-batch block
  bool act_order = false;      // columns by descending Hessian diagonal
  bool static_groups = false;  // group parameters from the original weights (act_order keeps
                               // groups contiguous; g_idx stays trivial)
  bool fp64 = false;           // double instead of float throughout
  int num_threads = 0;         // threads of the sweep and of Eigen's GEMMs, for this call only
                               // (see ScopedEigenThreads); 0 = OpenMP's / Eigen's default
};

template <class ScaleT>
struct GptqResult {
  QuantTensor<ScaleT> tensor;
  // Empty when every column j is in group j / G (the canonical layout). Else rows / N * K
  // entries: g_idx[e * K + j] is the group of input column j of leading index e.
  std::vector<int32_t> g_idx;
  double loss = 0;  // sum over columns of (w - q)^2 / U_jj^2 / 2, the published code's "error"
  // Wall time of the phases, summed over leading indices: preparing H (permutation, damping,
  // inverse Cholesky factor) and the sweep (quantizing columns and the updates), and the sweep's
  // floating-point operations (2 per multiply-add of the in-block and lazy updates).
  double prepare_seconds = 0;
  double sweep_seconds = 0;
  double sweep_flops = 0;
};

namespace gptq_detail {

// GPTQ's Quantizer.find_params (weight=True, per channel) for one group of columns, rows
// [row_begin, row_end): scale[r] and zero[r]. column_at(c) points at column c's values (indexed
// by row). Scalar arithmetic.
template <class Scalar, class ColumnAt>
void find_params(int64_t row_begin, int64_t row_end, int64_t column_count, int bits, bool symmetric,
                 ColumnAt&& column_at, Scalar* scale, Scalar* zero) {
  const Scalar maxq = static_cast<Scalar>((1 << bits) - 1);
  for (int64_t r = row_begin; r < row_end; ++r) {
    scale[r] = 0;  // lo, then the scale
    zero[r] = 0;   // hi, then the zero point: the range includes 0
  }
  for (int64_t c = 0; c < column_count; ++c) {
    const Scalar* column = column_at(c);
    for (int64_t r = row_begin; r < row_end; ++r) {
      scale[r] = std::min(scale[r], column[r]);
      zero[r] = std::max(zero[r], column[r]);
    }
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    Scalar low = scale[r];
    Scalar high = zero[r];
    if (symmetric) {
      high = std::max(std::fabs(low), high);
      if (low < 0) low = -high;  // a group without negatives keeps low = 0 (GPTQ's rule)
    }
    if (low == 0 && high == 0) {
      low = -1;
      high = 1;
    }
    scale[r] = (high - low) / maxq;
    zero[r] = symmetric ? (maxq + 1) / 2 : rtn::round_half_to_even(-low / scale[r]);
  }
}

// Scopes GptqOptions::num_threads to one gptq_quantize call. Eigen's products run on
// Eigen::nbThreads() threads: the process-wide count of Eigen::setNbThreads when one is set, else
// omp_get_max_threads(), the calling thread's own OpenMP count. So the guard sets that per-thread
// OpenMP count, which touches no state another thread sees; only if the application has set an
// Eigen count of its own (which the OpenMP count then does not reach) does it set Eigen's
// process-wide count instead. Both are restored to what they were when the guard ends,
// exceptions included. `threads` <= 0 (Eigen's default) or no OpenMP: nothing changes.
class ScopedEigenThreads {
 public:
  explicit ScopedEigenThreads(int threads) {
#if defined(_OPENMP)
    if (threads <= 0 || Eigen::nbThreads() == threads) return;
    saved_openmp_ = omp_get_max_threads();
    omp_set_num_threads(threads);
    if (Eigen::nbThreads() == threads) return;  // Eigen follows this thread's OpenMP count
    omp_set_num_threads(saved_openmp_);
    saved_openmp_ = 0;
    saved_eigen_ = Eigen::nbThreads();
    Eigen::setNbThreads(threads);
#else
    (void)threads;
#endif
  }
  ~ScopedEigenThreads() {
#if defined(_OPENMP)
    if (saved_openmp_ > 0) omp_set_num_threads(saved_openmp_);
    if (saved_eigen_ > 0) Eigen::setNbThreads(saved_eigen_);
#endif
  }
  ScopedEigenThreads(const ScopedEigenThreads&) = delete;
  ScopedEigenThreads& operator=(const ScopedEigenThreads&) = delete;

 private:
  int saved_openmp_ = 0;  // > 0: the OpenMP count to restore
  int saved_eigen_ = 0;   // > 0: the Eigen count to restore
};

template <class Scalar>
Scalar quantize_code(Scalar w, Scalar scale, Scalar zero, Scalar maxq) {
  return std::clamp(rtn::round_half_to_even(w / scale) + zero, Scalar(0), maxq);
}

template <class Scalar>
using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// U upper triangular with H^-1 = U^T U, without forming H^-1: with P the exchange matrix and
// P H P = M M^T (lower Cholesky factor M), H^-1 = (P M^-1 P)^T (P M^-1 P), and P M^-1 P is upper
// triangular. One Cholesky and one triangular inverse instead of Cholesky, inverse, Cholesky.
template <class Scalar>
bool inverse_cholesky_upper(const RowMajor<Scalar>& hessian, RowMajor<Scalar>& upper) {
  const int64_t k = hessian.rows();
  RowMajor<Scalar> reversed = hessian.reverse();  // P H P: both axes reversed
  Eigen::LLT<Eigen::Ref<RowMajor<Scalar>>> llt(reversed);
  if (llt.info() != Eigen::Success) return false;
  RowMajor<Scalar> inverse = RowMajor<Scalar>::Identity(k, k);
  llt.matrixL().solveInPlace(inverse);  // M^-1
  upper = inverse.reverse();
  return upper.allFinite();
}

}  // namespace gptq_detail

// Quantizes one row block [rows, K] (one Hessian) into `out` rows [row_begin, row_begin + rows).
template <class Scalar, class ScaleT, class W>
void gptq_rows(const TensorView<const W>& weights, int64_t row_begin, int64_t rows,
               const Eigen::MatrixXd& hessian_in, const QuantConfig& config,
               const GptqOptions& options, GptqResult<ScaleT>& result, int32_t* g_idx) {
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  const Clock::time_point prepare_start = Clock::now();
  QuantTensor<ScaleT>& out = result.tensor;
  using Matrix = gptq_detail::RowMajor<Scalar>;
  const RowLayout& layout = out.layout();
  const int64_t k = weights.cols();
  const int64_t group = layout.group_size;
  const int bits = config.bits;
  const bool symmetric = config.symmetric;
  const auto maxq = static_cast<Scalar>((1 << bits) - 1);

  // The weights transposed: row j of `w` is input column j (N contiguous values), so a column
  // update is one contiguous axpy and the lazy update one row-major GEMM.
  Matrix w(k, rows);
  for (int64_t r = 0; r < rows; ++r) {
    const W* source = weights.row(row_begin + r);
    for (int64_t j = 0; j < k; ++j)
      w(j, r) = static_cast<Scalar>(to_float(source[j]));
  }
  Matrix hessian = hessian_in.cast<Scalar>();
  for (int64_t j = 0; j < k; ++j) {
    if (hessian(j, j) == 0) {  // a dead input: never active in calibration
      hessian(j, j) = 1;
      w.row(j).setZero();
    }
  }

  // Group parameters, [rows][n_groups] (row-major like the stored scales).
  std::vector<Scalar> scales(static_cast<std::size_t>(rows * layout.n_groups), Scalar(0));
  std::vector<Scalar> zeros(static_cast<std::size_t>(rows * layout.n_groups), Scalar(0));
  // Per group, [n_groups][rows]: the sweep reads one group's parameters for every row.
  std::vector<Scalar> group_scale(static_cast<std::size_t>(layout.n_groups * rows));
  std::vector<Scalar> group_zero(static_cast<std::size_t>(layout.n_groups * rows));
  if (options.static_groups) {
    for (int64_t g = 0; g < layout.n_groups; ++g) {
      const int64_t begin = g * group;
      gptq_detail::find_params<Scalar>(
          0, rows, std::min(group, k - begin), bits, symmetric,
          [&](int64_t c) { return &w(begin + c, 0); }, group_scale.data() + g * rows,
          group_zero.data() + g * rows);
    }
  }

  std::vector<int64_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  if (options.act_order) {
    // Descending diagonal; ties keep index order (a stable sort: deterministic).
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return hessian(a, a) > hessian(b, b); });
    Matrix permuted_w(k, rows);
    Matrix permuted_h(k, k);
    for (int64_t i = 0; i < k; ++i) {
      permuted_w.row(i) = w.row(perm[static_cast<std::size_t>(i)]);
      for (int64_t j = 0; j < k; ++j)
        permuted_h(i, j) =
            hessian(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
    }
    w.swap(permuted_w);
    hessian.swap(permuted_h);
  }

  const Scalar damp = static_cast<Scalar>(options.damp_percent) * hessian.diagonal().mean();
  hessian.diagonal().array() += damp;
  Matrix upper;
  if (!hessian.allFinite() || !gptq_detail::inverse_cholesky_upper(hessian, upper)) {
    detail::fail(ErrorCode::invalid_argument, "gptq_quantize: the Hessian of rows [", row_begin,
                 ", ", row_begin + rows, ") is not positive definite after damping ",
                 options.damp_percent,
                 " of its mean diagonal (it is singular or not finite; raise "
                 "GptqOptions::damp_percent or add calibration rows)");
  }

  result.prepare_seconds += seconds_since(prepare_start);
  const Clock::time_point sweep_start = Clock::now();
  std::vector<uint8_t> codes(static_cast<std::size_t>(rows * layout.padded_k));
  // The group each sweep position belongs to (g_idx in sweep order).
  std::vector<int64_t> position_group(static_cast<std::size_t>(k));
  for (int64_t position = 0; position < k; ++position) {
    const int64_t column = perm[static_cast<std::size_t>(position)];
    position_group[static_cast<std::size_t>(position)] =
        options.static_groups ? column / group : position / group;
    if (g_idx != nullptr) {
      g_idx[column] = static_cast<int32_t>(position_group[static_cast<std::size_t>(position)]);
    }
  }
  // Rows are independent inside a block: each chunk of rows runs the block's whole column sweep
  // with its slice of the working copy in cache (kChunkRows x block_size scalars), in parallel.
  constexpr int64_t kChunkRows = 128;
  const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
  std::vector<double> chunk_loss(static_cast<std::size_t>(chunks), 0.0);
  Matrix errors;  // the block's scaled errors, [count, rows]
  for (int64_t block_begin = 0; block_begin < k; block_begin += options.block_size) {
    const int64_t block_end = std::min(block_begin + options.block_size, k);
    const int64_t count = block_end - block_begin;
    Matrix block = w.middleRows(block_begin, count);  // the working copy W1
    errors.resize(count, rows);
    detail::parallel_for(options.num_threads, chunks, [&](int64_t chunk) {
      const int64_t r0 = chunk * kChunkRows;
      const int64_t r1 = std::min(r0 + kChunkRows, rows);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t position = block_begin + i;  // in the (act-)order of the sweep
        const int64_t column = perm[static_cast<std::size_t>(position)];
        const int64_t g = position_group[static_cast<std::size_t>(position)];
        Scalar* scale = group_scale.data() + g * rows;
        Scalar* zero = group_zero.data() + g * rows;
        if (!options.static_groups && position % group == 0) {
          // From `w`: lazily updated by earlier blocks, not by this block's columns.
          gptq_detail::find_params<Scalar>(
              r0, r1, std::min(group, k - position), bits, symmetric,
              [&](int64_t c) { return &w(position + c, 0); }, scale, zero);
        }
        const Scalar diagonal = upper(position, position);
        Scalar* column_values = &block(i, 0);
        Scalar* column_errors = &errors(i, 0);
        double loss = 0;
        for (int64_t r = r0; r < r1; ++r) {
          const Scalar code = gptq_detail::quantize_code(column_values[r], scale[r], zero[r], maxq);
          codes[static_cast<std::size_t>(r * layout.padded_k + column)] =
              static_cast<uint8_t>(code);
          const Scalar error = (column_values[r] - scale[r] * (code - zero[r])) / diagonal;
          loss += static_cast<double>(error) * static_cast<double>(error) / 2;
          column_errors[r] = error;
        }
        chunk_loss[static_cast<std::size_t>(chunk)] += loss;
        // W1[i + 1:, chunk] -= U[i, i + 1:]^T e[chunk]  (the in-block update; W1[i] is done)
        for (int64_t j = i + 1; j < count; ++j) {
          const Scalar factor = upper(position, block_begin + j);
          Scalar* target = &block(j, 0);
          for (int64_t r = r0; r < r1; ++r)
            target[r] -= factor * column_errors[r];
        }
      }
    });
    result.sweep_flops += static_cast<double>(rows * count * (count - 1));
    // W[block_end:, :] -= U[block, block_end:]^T E  (the lazy batch update)
    if (block_end < k) {
      result.sweep_flops += 2.0 * static_cast<double>(rows * count * (k - block_end));
      w.bottomRows(k - block_end).noalias() -=
          upper.block(block_begin, block_end, count, k - block_end).transpose() * errors;
    }
  }
  double loss = 0;
  for (double value : chunk_loss)
    loss += value;
  for (int64_t g = 0; g < layout.n_groups; ++g) {
    for (int64_t r = 0; r < rows; ++r) {
      scales[static_cast<std::size_t>(r * layout.n_groups + g)] =
          group_scale[static_cast<std::size_t>(g * rows + r)];
      zeros[static_cast<std::size_t>(r * layout.n_groups + g)] =
          group_zero[static_cast<std::size_t>(g * rows + r)];
    }
  }
  result.sweep_seconds += seconds_since(sweep_start);
  result.loss += loss;

  // Into the canonical layout (pad codes: the last group's zero point; the unused zero-point
  // slots as the convention pads them, e.g. 8 under ort like MatMulNBits' own quantizer).
  std::vector<uint8_t> zero_codes(static_cast<std::size_t>(out.zero_slots()));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = row_begin + r;
    for (int64_t g = 0; g < layout.n_groups; ++g) {
      const Scalar scale = scales[static_cast<std::size_t>(r * layout.n_groups + g)];
      const ScaleT stored = rtn::store_scale<ScaleT>(scale);
      if (!std::isfinite(to_float(stored))) {
        detail::fail(ErrorCode::non_finite, "gptq_quantize: row ", row, " group ", g, " has scale ",
                     scale, ", which ", type_name<ScaleT>(), " cannot hold");
      }
      out.scales()[static_cast<std::size_t>(row * layout.n_groups + g)] = stored;
      zero_codes[static_cast<std::size_t>(g)] =
          static_cast<uint8_t>(zeros[static_cast<std::size_t>(r * layout.n_groups + g)]);
    }
    out.pack_row(row, codes.data() + r * layout.padded_k, zero_codes.data());
  }
}

// weights [..., N, K] -> GPTQ-quantized tensor. `hessians`: one (shared by every row) or one
// per leading index (rows / N of them, e.g. per expert of [E, N, K]); each of K x K.
template <class ScaleT, class W>
GptqResult<ScaleT> gptq_quantize(TensorView<const W> weights, const QuantConfig& config,
                                 const std::vector<GptqHessian>& hessians,
                                 const GptqOptions& options = {}) {
  static_assert(is_float_type_v<W>, "gptq_quantize: weights must be float, fp16 or bf16");
  static_assert(is_float_type_v<ScaleT>, "gptq_quantize: ScaleT must be float, fp16 or bf16");
  config.validate();
  const Shape& shape = weights.shape();
  const int64_t k = weights.cols();
  const int64_t rows = weights.rows();
  const int64_t rows_per_hessian = shape.rank() >= 2 ? shape[shape.rank() - 2] : 1;
  const int64_t leading = rows / rows_per_hessian;
  if (hessians.size() != 1 && static_cast<int64_t>(hessians.size()) != leading) {
    detail::fail(ErrorCode::shape_mismatch, "gptq_quantize: ", hessians.size(),
                 " Hessians for weights of shape ", shape, " (expected 1, shared, or ", leading,
                 ", one per leading index)");
  }
  for (std::size_t h = 0; h < hessians.size(); ++h) {
    if (hessians[h].k() != k) {
      detail::fail(ErrorCode::shape_mismatch, "gptq_quantize: Hessian ", h, " is ", hessians[h].k(),
                   " x ", hessians[h].k(), " but the weights have K = ", k, " (shape ", shape, ")");
    }
    if (hessians[h].samples() == 0) {
      detail::fail(ErrorCode::invalid_argument, "gptq_quantize: Hessian ", h,
                   " has no calibration rows (call add_batch first)");
    }
  }
  if (!(options.damp_percent >= 0) || !std::isfinite(options.damp_percent)) {
    detail::fail(ErrorCode::invalid_argument, "GptqOptions.damp_percent = ", options.damp_percent,
                 " (expected a finite value >= 0, e.g. 0.01)");
  }
  if (options.block_size < 1) {
    detail::fail(ErrorCode::invalid_argument, "GptqOptions.block_size = ", options.block_size,
                 " (expected >= 1, e.g. 128)");
  }
  detail::check_finite_weights(weights, "gptq_quantize", "GPTQ needs finite weights");

  GptqResult<ScaleT> result{QuantTensor<ScaleT>(shape, config), {}, 0, 0, 0, 0};
  // One group per row (per-channel, or G >= K) cannot change membership.
  const bool membership_changes =
      options.act_order && !options.static_groups && result.tensor.layout().n_groups > 1;
  std::vector<int32_t> g_idx(membership_changes ? static_cast<std::size_t>(leading * k) : 0);
  const gptq_detail::ScopedEigenThreads eigen_threads(options.num_threads);  // this call only
  for (int64_t e = 0; e < leading; ++e) {
    const GptqHessian& hessian =
        hessians.size() == 1 ? hessians[0] : hessians[static_cast<std::size_t>(e)];
    int32_t* expert_g_idx = membership_changes ? g_idx.data() + e * k : nullptr;
    if (options.fp64) {
      gptq_rows<double>(weights, e * rows_per_hessian, rows_per_hessian, hessian.matrix(), config,
                        options, result, expert_g_idx);
    } else {
      gptq_rows<float>(weights, e * rows_per_hessian, rows_per_hessian, hessian.matrix(), config,
                       options, result, expert_g_idx);
    }
  }
  result.g_idx = std::move(g_idx);
  return result;
}

template <class ScaleT, class W>
GptqResult<ScaleT> gptq_quantize(TensorView<W> weights, const QuantConfig& config,
                                 const std::vector<GptqHessian>& hessians,
                                 const GptqOptions& options = {}) {
  return gptq_quantize<ScaleT>(TensorView<const W>(weights), config, hessians, options);
}

// The fp32 weights a GptqResult stands for, [rows * K]: (q - z) * s with column j of leading
// index e in group g_idx[e * K + j] (or j / G when g_idx is empty).
template <class ScaleT>
std::vector<float> dequantize_gptq(const GptqResult<ScaleT>& result) {
  const QuantTensorView<ScaleT> view = result.tensor.view();
  if (result.g_idx.empty()) return dequantize_ref(view);
  const int64_t k = view.k();
  return dequantize_ref(
      view,
      TensorView<const int32_t>(result.g_idx.data(),
                                Shape{static_cast<int64_t>(result.g_idx.size()) / k, k}, "g_idx"));
}

}  // namespace nibble
