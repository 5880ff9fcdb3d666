// Fast dequantization on the CPU: whole tensors, and rows gathered by index (ONNX Runtime's
// GatherBlockQuantized: a quantized embedding table looked up by token ids).
//
//   nibble::dequantize(w, out);                  // out = dequant(w), w's shape; float/fp16/bf16
//   nibble::gather_dequantize(w, ids, out);      // out[i..., :] = dequant(w[ids[i...]])
//
// Values are exactly dequantize_ref's ((q - z) converted to float, times the float scale), on the
// best ISA (the same tables as gemm), threaded over rows.
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
#include "nibble/kernels/cpu/dispatch.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble {

struct DequantizeOptions {
  int num_threads = 0;       // OpenMP threads over rows; 0 = OpenMP's default
  Isa isa = Isa::automatic;  // as GemmOptions::isa
};

namespace detail {

// out rows [0, count) = dequant(w rows `rows[r]` (or r when null)), out of type OutT.
template <class ScaleT, class OutT>
void run_dequantize_rows(const QuantTensorView<ScaleT>& w, const int64_t* rows, int64_t count,
                         OutT* out, const DequantizeOptions& options) {
  static_assert(is_float_type_v<OutT>, "dequantize: the output is float, fp16 or bf16");
  check_threads("dequantize", options.num_threads);
  if (count == 0 || w.k() == 0) return;
  const nibble_cpu_kernel_table& table = kernels_for(w, options.isa);
  const RowLayout& layout = w.layout();
  nibble_dequantize_operands op{};
  op.qweight = w.qweight();
  op.packed_row_bytes = layout.packed_row_bytes;
  op.scales = w.scales();
  op.zeros = w.zeros();
  op.zero_row_bytes = layout.zero_row_bytes;
  op.group_size = layout.group_size;
  op.n_groups = layout.n_groups;
  op.k = w.k();
  op.rows = rows;
  op.out_stride = w.k();
  const nibble_dequantize_rows_fn kernel =
      table.dequantize_rows[bits_index(w.bits())][scale_index<ScaleT>()];
  // Chunks of rows; a float output is written in place, others through a per-chunk buffer.
  constexpr int64_t kChunk = 64;
  const int64_t chunks = ceil_div(count, kChunk);
  parallel_for(options.num_threads, chunks, [&](int64_t chunk) {
    const int64_t begin = chunk * kChunk;
    const int64_t end = std::min(count, begin + kChunk);
    nibble_dequantize_operands part = op;
    if constexpr (std::is_same_v<OutT, float>) {
      part.out = out;
      kernel(&part, begin, end);
    } else {
      // The chunk's rows into a buffer (source rows listed explicitly), then converted.
      std::vector<int64_t> sources(static_cast<std::size_t>(end - begin));
      for (int64_t r = begin; r < end; ++r)
        sources[static_cast<std::size_t>(r - begin)] = rows != nullptr ? rows[r] : r;
      std::vector<float> buffer(static_cast<std::size_t>((end - begin) * w.k()));
      part.rows = sources.data();
      part.out = buffer.data();
      kernel(&part, 0, end - begin);
      for (int64_t i = 0; i < (end - begin) * w.k(); ++i)
        out[begin * w.k() + i] = from_float<OutT>(buffer[static_cast<std::size_t>(i)]);
    }
  });
}

}  // namespace detail

// out = dequant(w); out has w's shape (or any shape with its rows and last dimension K).
template <class ScaleT, class OutT>
void dequantize(const QuantTensorView<ScaleT>& w, TensorView<OutT> out,
                const DequantizeOptions& options = {}) {
  if (out.numel() != w.shape().numel() || out.cols() != w.k()) {
    detail::fail(ErrorCode::shape_mismatch, "dequantize: out has shape ", out.shape(),
                 " (expected ", w.shape(), ")");
  }
  detail::run_dequantize_rows(w, nullptr, w.rows(), out.data(), options);
}

// GatherBlockQuantized (gather_axis 0, quantize_axis last): w [D0, ..., K] (slices along the
// first dimension), indices of any shape (int32 or int64; negative counts from the end, as ONNX
// Gather), out = indices.shape + w.shape[1:] with out[i..., :] = dequant(w[indices[i...]]).
template <class ScaleT, class IndexT, class OutT>
void gather_dequantize(const QuantTensorView<ScaleT>& w, TensorView<const IndexT> indices,
                       TensorView<OutT> out, const DequantizeOptions& options = {}) {
  static_assert(std::is_same_v<IndexT, int32_t> || std::is_same_v<IndexT, int64_t>,
                "gather_dequantize: indices are int32 or int64");
  const int64_t slices = w.shape()[0];
  const int64_t rows_per_slice = w.rows() / slices;
  std::vector<int64_t> expected(indices.shape().dims().begin(), indices.shape().dims().end());
  for (std::size_t d = 1; d < w.shape().dims().size(); ++d)
    expected.push_back(w.shape().dims()[d]);
  if (out.shape() != Shape(expected)) {
    detail::fail(ErrorCode::shape_mismatch, "gather_dequantize: out has shape ", out.shape(),
                 " (expected indices.shape + w.shape[1:] = ", Shape(expected), ")");
  }
  const int64_t count = indices.numel();
  std::vector<int64_t> rows(
      static_cast<std::size_t>(detail::checked_mul(count, rows_per_slice, "gathered rows")));
  for (int64_t i = 0; i < count; ++i) {
    int64_t index = static_cast<int64_t>(indices.data()[i]);
    if (index < -slices || index >= slices) {
      detail::fail(ErrorCode::invalid_argument, "gather_dequantize: indices[", i, "] = ", index,
                   " (expected -", slices, " <= index < ", slices, ")");
    }
    if (index < 0) index += slices;
    for (int64_t r = 0; r < rows_per_slice; ++r)
      rows[static_cast<std::size_t>(i * rows_per_slice + r)] = index * rows_per_slice + r;
  }
  detail::run_dequantize_rows(w, rows.data(), static_cast<int64_t>(rows.size()), out.data(),
                              options);
}

}  // namespace nibble
