// Scalar reference kernels: the definitions every fast kernel is tested against.
//
//   dequantize_ref  W[rows, K] = (q - z) * s                       (float, real elements only;
//                   column j in group j / G, or as a group map says: GPTQ's g_idx)
//   gemm_ref        Y[M, N] = X[M, K] * dequant(W)[N, K]^T (+ bias[N])
//   moe_gemm_ref    Y[T, N] = sum_j gate[t, j] * X[t, :] * dequant(W[expert[t, j]])^T
//
// Obviously correct over fast: a weight is dequantized exactly as the format defines it
// ((q - z) converted to float, times the float scale), and dot products are accumulated in
// double, so the reference is at least as accurate as any kernel compared with it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble {

namespace detail {

// Row `row` of W dequantized into out[0, K). `column_groups`: null (column j is in group j / G),
// or K entries, the group of each column (GPTQ's g_idx).
template <class Packing, class ScaleT>
void dequantize_row_ref(const QuantTensorView<ScaleT>& w, Packing, int64_t row, float* out,
                        const int32_t* column_groups = nullptr) {
  const RowLayout& layout = w.layout();
  const uint8_t* codes = w.qweight_row(row);
  const uint8_t* zeros = w.zero_row(row);
  const ScaleT* scales = w.scale_row(row);
  const int symmetric_zero = 1 << (w.bits() - 1);
  const auto zero_of = [&](int64_t group) {
    return zeros == nullptr ? symmetric_zero : int{Packing::code_at(zeros, group)};
  };
  if (column_groups != nullptr) {
    for (int64_t col = 0; col < layout.k; ++col) {
      const int64_t group = column_groups[col];
      out[col] = static_cast<float>(int{Packing::code_at(codes, col)} - zero_of(group)) *
                 to_float(scales[group]);
    }
    return;
  }
  for (int64_t group = 0; group < layout.n_groups; ++group) {
    const float scale = to_float(scales[group]);
    const int zero = zero_of(group);
    const int64_t begin = group * layout.group_size;
    const int64_t end = begin + layout.group_size < layout.k ? begin + layout.group_size : layout.k;
    for (int64_t col = begin; col < end; ++col) {
      out[col] = static_cast<float>(int{Packing::code_at(codes, col)} - zero) * scale;
    }
  }
}

template <class ScaleT, class XT, class YT>
void check_gemm_operands(const char* function, const QuantTensorView<ScaleT>& w,
                         const TensorView<const XT>& x, const TensorView<YT>& y, int64_t n) {
  if (x.cols() != w.k()) {
    fail(ErrorCode::shape_mismatch, function, ": x has shape ", x.shape(), " (K = ", x.cols(),
         ") but the weights ", w.shape(), " have K = ", w.k());
  }
  const Shape expected_y = x.shape().with_last(n);
  if (y.shape() != expected_y) {
    fail(ErrorCode::shape_mismatch, function, ": y has shape ", y.shape(), " (expected ",
         expected_y, " for x ", x.shape(), " and N = ", n, ")");
  }
}

}  // namespace detail

namespace detail {

// dequantize_ref's body; `group_map` null, or checked as dequantize_ref documents it.
template <class ScaleT>
void dequantize_ref_impl(const QuantTensorView<ScaleT>& w, const TensorView<float>& out,
                         const TensorView<const int32_t>* group_map) {
  if (out.numel() != w.shape().numel() || out.cols() != w.k()) {
    fail(ErrorCode::shape_mismatch, "dequantize_ref: out has shape ", out.shape(), " (expected ",
         w.shape(), ")");
  }
  int64_t rows_per_map_row = 0;
  if (group_map != nullptr) {
    const int64_t map_rows = group_map->rows();
    if (group_map->cols() != w.k() || w.rows() % map_rows != 0) {
      fail(ErrorCode::shape_mismatch, "dequantize_ref: group_map has shape ", group_map->shape(),
           " (expected [M, K = ", w.k(), "] with M dividing the ", w.rows(), " rows of weights ",
           w.shape(), ")");
    }
    for (int64_t i = 0; i < group_map->numel(); ++i) {
      const int32_t group = group_map->data()[i];
      if (group < 0 || group >= w.layout().n_groups) {
        fail(ErrorCode::invalid_argument, "dequantize_ref: group_map",
             format_dims(std::vector<int64_t>{i / w.k(), i % w.k()}), " = ", group,
             " (expected a group in [0, ", w.layout().n_groups, "))");
      }
    }
    rows_per_map_row = w.rows() / map_rows;
  }
  w.dispatch_bits([&](auto packing) {
    for (int64_t row = 0; row < w.rows(); ++row) {
      const int32_t* column_groups =
          group_map != nullptr ? group_map->row(row / rows_per_map_row) : nullptr;
      dequantize_row_ref(w, packing, row, out.row(row), column_groups);
    }
  });
}

template <class ScaleT>
std::vector<float> dequantized_ref(const QuantTensorView<ScaleT>& w,
                                   const TensorView<const int32_t>* group_map) {
  checked_bytes(w.shape().numel(), sizeof(float), "dequantized weights");
  std::vector<float> out(static_cast<std::size_t>(w.shape().numel()));
  dequantize_ref_impl(w, TensorView<float>(out.data(), w.shape(), "dequantized"), group_map);
  return out;
}

}  // namespace detail

// out [rows, K] (any shape with rows * K elements and last dim K) = dequantized W.
template <class ScaleT>
void dequantize_ref(const QuantTensorView<ScaleT>& w, TensorView<float> out) {
  detail::dequantize_ref_impl(w, out, nullptr);
}

// The same with a group map instead of column j in group j / G: group_map int32 [M, K], M
// dividing rows, row r of W uses map row r / (rows / M), whose entry j (in [0, n_groups)) is the
// group of column j. GPTQ's g_idx: [K] shared, or [E, K] for experts [E, N, K].
template <class ScaleT>
void dequantize_ref(const QuantTensorView<ScaleT>& w, TensorView<float> out,
                    TensorView<const int32_t> group_map) {
  detail::dequantize_ref_impl(w, out, &group_map);
}

template <class ScaleT>
std::vector<float> dequantize_ref(const QuantTensorView<ScaleT>& w) {
  return detail::dequantized_ref(w, nullptr);
}

template <class ScaleT>
std::vector<float> dequantize_ref(const QuantTensorView<ScaleT>& w,
                                  TensorView<const int32_t> group_map) {
  return detail::dequantized_ref(w, &group_map);
}

namespace detail {

template <class ScaleT>
void gemm_ref_impl(const QuantTensorView<ScaleT>& w, const TensorView<const float>& x,
                   const TensorView<float>& y, const float* bias) {
  const int64_t n = w.rows();
  const int64_t k = w.k();
  std::vector<float> weight_row(static_cast<std::size_t>(k));
  w.dispatch_bits([&](auto packing) {
    for (int64_t col = 0; col < n; ++col) {
      dequantize_row_ref(w, packing, col, weight_row.data());
      for (int64_t token = 0; token < x.rows(); ++token) {
        const float* x_row = x.row(token);
        const float* w_row = weight_row.data();
        double sum = bias != nullptr ? double{bias[col]} : 0.0;
        for (int64_t i = 0; i < k; ++i)
          sum += double{x_row[i]} * double{w_row[i]};
        y.row(token)[col] = static_cast<float>(sum);
      }
    }
  });
}

template <class ScaleT>
void moe_gemm_ref_impl(const QuantTensorView<ScaleT>& w, const TensorView<const float>& x,
                       const TensorView<const int32_t>& expert_ids, const float* gates,
                       const TensorView<float>& y) {
  if (w.shape().rank() < 2) {
    fail(ErrorCode::shape_mismatch, "moe_gemm_ref: weights have shape ", w.shape(),
         " (expected [E, N, K]: experts along the first dimension)");
  }
  const int64_t experts = w.shape()[0];
  const int64_t n = w.rows() / experts;
  check_gemm_operands("moe_gemm_ref", w, x, y, n);
  if (x.shape().rank() != 2 || expert_ids.shape().rank() != 2 || expert_ids.rows() != x.rows()) {
    fail(ErrorCode::shape_mismatch, "moe_gemm_ref: x has shape ", x.shape(), " and expert_ids ",
         expert_ids.shape(), " (expected x [T, K] and expert_ids [T, top_k])");
  }
  const int64_t top_k = expert_ids.cols();
  for (int64_t token = 0; token < x.rows(); ++token) {
    for (int64_t slot = 0; slot < top_k; ++slot) {
      const int32_t expert = expert_ids.row(token)[slot];
      if (expert < 0 || expert >= experts) {
        fail(ErrorCode::invalid_argument, "moe_gemm_ref: expert_ids[", token, ", ", slot,
             "] = ", expert, " (expected 0 <= id < E = ", experts, ")");
      }
    }
  }
  std::vector<float> weight_row(static_cast<std::size_t>(w.k()));
  std::vector<double> sums(static_cast<std::size_t>(n));
  w.dispatch_bits([&](auto packing) {
    for (int64_t token = 0; token < x.rows(); ++token) {
      const float* x_row = x.row(token);
      std::fill(sums.begin(), sums.end(), 0.0);
      for (int64_t slot = 0; slot < top_k; ++slot) {
        const int64_t expert = expert_ids.row(token)[slot];
        const double gate = gates != nullptr ? double{gates[token * top_k + slot]} : 1.0;
        for (int64_t col = 0; col < n; ++col) {
          dequantize_row_ref(w, packing, expert * n + col, weight_row.data());
          const float* w_row = weight_row.data();
          double dot = 0.0;
          for (int64_t i = 0; i < w.k(); ++i)
            dot += double{x_row[i]} * double{w_row[i]};
          sums[static_cast<std::size_t>(col)] += gate * dot;
        }
      }
      for (int64_t col = 0; col < n; ++col) {
        y.row(token)[col] = static_cast<float>(sums[static_cast<std::size_t>(col)]);
      }
    }
  });
}

}  // namespace detail

// Y = X * dequant(W)^T. W of any rank: N = w.rows() (all leading dims flattened).
// x [..., K] row-major (M = x.rows()); y [..., N] with the same leading dims as x.
template <class ScaleT>
void gemm_ref(const QuantTensorView<ScaleT>& w, TensorView<const float> x, TensorView<float> y) {
  detail::check_gemm_operands("gemm_ref", w, x, y, w.rows());
  detail::gemm_ref_impl(w, x, y, nullptr);
}

// Y = X * dequant(W)^T + bias, bias of shape [N].
template <class ScaleT>
void gemm_ref(const QuantTensorView<ScaleT>& w, TensorView<const float> x, TensorView<float> y,
              TensorView<const float> bias) {
  detail::check_gemm_operands("gemm_ref", w, x, y, w.rows());
  if (bias.shape() != Shape{w.rows()}) {
    detail::fail(ErrorCode::shape_mismatch, "gemm_ref: bias has shape ", bias.shape(),
                 " (expected [N] = [", w.rows(), "])");
  }
  detail::gemm_ref_impl(w, x, y, bias.data());
}

// MoE: w [E, ...rest, K] holds E experts of N = rows / E output rows each. Token t of x [T, K]
// is routed to experts expert_ids[t, 0 .. top_k) (int32, each in [0, E)), every gate 1:
//   y[t, :] = sum_j x[t, :] * dequant(w[expert_ids[t, j]])^T,   y [T, N]
// A token may name the same expert twice; its contributions add.
template <class ScaleT>
void moe_gemm_ref(const QuantTensorView<ScaleT>& w, TensorView<const float> x,
                  TensorView<const int32_t> expert_ids, TensorView<float> y) {
  detail::moe_gemm_ref_impl(w, x, expert_ids, nullptr, y);
}

// As above with gates [T, top_k]: y[t, :] = sum_j gates[t, j] * x[t, :] * dequant(w[e_tj])^T.
template <class ScaleT>
void moe_gemm_ref(const QuantTensorView<ScaleT>& w, TensorView<const float> x,
                  TensorView<const int32_t> expert_ids, TensorView<const float> gates,
                  TensorView<float> y) {
  if (gates.shape() != expert_ids.shape()) {
    detail::fail(ErrorCode::shape_mismatch, "moe_gemm_ref: gates have shape ", gates.shape(),
                 " (expected the shape of expert_ids, ", expert_ids.shape(), ")");
  }
  detail::moe_gemm_ref_impl(w, x, expert_ids, gates.data(), y);
}

}  // namespace nibble
