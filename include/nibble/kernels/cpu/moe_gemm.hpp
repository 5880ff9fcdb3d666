// Mixture-of-experts GEMM on the CPU: tokens routed to their top-k experts.
//
//   nibble::moe_gemm(w, x, expert_ids, gates, y);   // w [E, N, K], x [T, K], ids/gates [T, top_k]
//   y[t, :] = sum_j gates[t, j] * x[t, :] * dequant(w[expert_ids[t, j]])^T          y [T, N]
//
// The same kernels as gemm (any bits / group / symmetry / ISA, fp32 or int8 activations): each
// expert's tokens are gathered into one batch and multiplied as a GEMM over that expert's rows,
// all experts in one threaded pass (expert x column-chunk work items), then combined per token
// in slot order. w has the experts along its first dimension; N = rows / E. A token may name the
// same expert twice (its contributions add); experts no token names cost nothing. T = 0 is a
// no-op. The scalar definition is moe_gemm_ref (reference.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/parallel.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/kernels/cpu/dispatch.hpp"
#include "nibble/kernels/cpu/gemm.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble {

namespace detail {

template <class ScaleT, class ActT>
void run_moe_gemm(const QuantTensorView<ScaleT>& w, const TensorView<const ActT>& x,
                  const TensorView<const int32_t>& expert_ids, const float* gates,
                  const TensorView<ActT>& y, const GemmOptions& options) {
  static_assert(is_float_type_v<ActT>, "moe_gemm: activations are float, fp16 or bf16");
  check_threads("moe_gemm", options.num_threads);
  check_activation_precision("moe_gemm", options.activations);
  if (w.shape().rank() < 2) {
    fail(ErrorCode::shape_mismatch, "moe_gemm: weights have shape ", w.shape(),
         " (expected [E, N, K]: experts along the first dimension)");
  }
  const int64_t experts = w.shape()[0];
  const int64_t n = w.rows() / experts;
  check_gemm_operands("moe_gemm", w, x, y, n);
  if (x.shape().rank() != 2 || expert_ids.shape().rank() != 2 || expert_ids.rows() != x.rows()) {
    fail(ErrorCode::shape_mismatch, "moe_gemm: x has shape ", x.shape(), " and expert_ids ",
         expert_ids.shape(), " (expected x [T, K] and expert_ids [T, top_k])");
  }
  const int64_t tokens = x.rows();
  const int64_t top_k = expert_ids.cols();
  // Routes, grouped by expert (a counting sort: experts in order, each expert's slots in token
  // order): route r is (token, slot) of entry order[r].
  std::vector<int64_t> first_route(static_cast<std::size_t>(experts + 1), 0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t expert = expert_ids.row(t)[j];
      if (expert < 0 || expert >= experts) {
        fail(ErrorCode::invalid_argument, "moe_gemm: expert_ids[", t, ", ", j, "] = ", expert,
             " (expected 0 <= id < E = ", experts, ")");
      }
      ++first_route[static_cast<std::size_t>(expert) + 1];
    }
  }
  if (tokens == 0 || n == 0) return;
  for (int64_t e = 0; e < experts; ++e)
    first_route[static_cast<std::size_t>(e) + 1] += first_route[static_cast<std::size_t>(e)];
  const int64_t routes = tokens * top_k;
  std::vector<int64_t> route_token(static_cast<std::size_t>(routes));    // token of each route
  std::vector<int64_t> route_of_slot(static_cast<std::size_t>(routes));  // [t * top_k + j] -> route
  {
    std::vector<int64_t> next(first_route.begin(), first_route.end() - 1);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < top_k; ++j) {
        const auto expert = static_cast<std::size_t>(expert_ids.row(t)[j]);
        const int64_t route = next[expert]++;
        route_token[static_cast<std::size_t>(route)] = t;
        route_of_slot[static_cast<std::size_t>(t * top_k + j)] = route;
      }
    }
  }

  const nibble_cpu_kernel_table& table = kernels_for(w, options.isa);
  const int64_t padded_k = w.layout().padded_k;
  // X gathered per expert (float rows of padded_k), and Y per route.
  std::vector<float> x_routes(static_cast<std::size_t>(checked_mul(routes, padded_k, "routes")));
  std::vector<float> y_routes(static_cast<std::size_t>(checked_mul(routes, n, "routes")));
  std::vector<nibble_gemm_operands> ops;
  std::vector<int64_t> op_first_route;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t begin = first_route[static_cast<std::size_t>(e)];
    const int64_t count = first_route[static_cast<std::size_t>(e) + 1] - begin;
    if (count == 0) continue;
    nibble_gemm_operands op = weight_operands(w, e * n, n);
    op.m = count;
    op.x = x_routes.data() + begin * padded_k;
    op.y = y_routes.data() + begin * n;
    ops.push_back(op);
    op_first_route.push_back(begin);
  }
  run_gemm_batch(table, w.bits(), scale_index<ScaleT>(),
                 options.activations == ActivationPrecision::int8, ops, options.num_threads,
                 [&](std::size_t problem, int64_t begin, int64_t end) {
                   const int64_t first = op_first_route[problem];
                   convert_activation_rows(x, route_token.data() + first, begin, end, padded_k,
                                           x_routes.data() + first * padded_k, options.activations);
                 });

  // y[t] = sum over slots in order of gate * (its route's row).
  parallel_for(options.num_threads, tokens, [&](int64_t t) {
    std::vector<float> sum(static_cast<std::size_t>(n), 0.0f);
    for (int64_t j = 0; j < top_k; ++j) {
      const float gate = gates != nullptr ? gates[t * top_k + j] : 1.0f;
      const float* row =
          y_routes.data() + route_of_slot[static_cast<std::size_t>(t * top_k + j)] * n;
      for (int64_t col = 0; col < n; ++col)
        sum[static_cast<std::size_t>(col)] += gate * row[col];
    }
    ActT* out = y.row(t);
    for (int64_t col = 0; col < n; ++col)
      out[col] = from_float<ActT>(sum[static_cast<std::size_t>(col)]);
  });
}

}  // namespace detail

// Every gate 1: y[t, :] = sum_j x[t, :] * dequant(w[expert_ids[t, j]])^T.
template <class ScaleT, class ActT>
void moe_gemm(const QuantTensorView<ScaleT>& w, TensorView<const ActT> x,
              TensorView<const int32_t> expert_ids, TensorView<ActT> y,
              const GemmOptions& options = {}) {
  detail::run_moe_gemm(w, x, expert_ids, nullptr, y, options);
}

// gates [T, top_k] (float): y[t, :] = sum_j gates[t, j] * x[t, :] * dequant(w[e_tj])^T.
template <class ScaleT, class ActT>
void moe_gemm(const QuantTensorView<ScaleT>& w, TensorView<const ActT> x,
              TensorView<const int32_t> expert_ids, TensorView<const float> gates,
              TensorView<ActT> y, const GemmOptions& options = {}) {
  if (gates.shape() != expert_ids.shape()) {
    detail::fail(ErrorCode::shape_mismatch, "moe_gemm: gates have shape ", gates.shape(),
                 " (expected the shape of expert_ids, ", expert_ids.shape(), ")");
  }
  detail::run_moe_gemm(w, x, expert_ids, gates.data(), y, options);
}

}  // namespace nibble
