// Fused projections (qkv_proj = [q; k; v], gate_up_proj = [gate; up]): split one quantized tensor
// into its parts and merge parts into one, scales and zero points included, in every layout.
//
// The parts of a fused projection share the input (K) and differ in their outputs (N), so fusing
// concatenates along the OUTPUT axis, which is a different array axis per layout:
//
//   layout                          fused along          arrays (one part of N outputs)
//   canonical / Olive / ORT         dim 0 (rows)         qweight uint8 [N, packed_row_bytes]
//   MatMulNBits  [out, in]                               scales [N, n_groups], zeros [N,
//   zero_row_bytes] GPTQ  [in, out]                 dim 1 (columns)      qweight int32 [K / pack,
//   N],
//                                                        qzeros int32 [n_groups, N / pack],
//                                                        scales [n_groups, N], g_idx [K] (shared)
//   AWQ   [in, out]                 dim 1 (columns)      qweight int32 [K, N / 8],
//                                                        qzeros int32 [n_groups, N / 8],
//                                                        scales [n_groups, N]
//
// Invariants that make every operation a byte-exact copy (no code is unpacked):
//   - canonical rows are independent: a row's qweight, scales and zero bytes are contiguous and
//     padded on their own, so fusing is concatenation of whole buffers (any K, pad codes too).
//   - GPTQ and AWQ pack several OUTPUTS into one qzeros word (and AWQ also into qweight words),
//     so a part boundary must fall on a word boundary: every part's N is a multiple of
//     pack = 32 / bits (GPTQ) or 8 (AWQ). Otherwise a word would straddle two parts: an Error.
//   - GPTQ's g_idx describes the shared input, so it must be identical across parts.
// So split(merge(parts)) == parts and merge(split(t)) == t bit for bit, and merging canonical
// tensors then converting (gptq::to_gptq, awq::to_awq) equals converting each then merging.
//
// merge and split are overloaded on the layout; pass merge a std::vector of pointers (a braced
// list with an explicit ScaleT, merge<fp16>({&q, &k}), is ambiguous between the overloads).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/convention.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/formats/awq.hpp"
#include "nibble/formats/gptq.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble::fused {

namespace detail {

// parts is non-empty and holds no null pointer; `who` names the caller.
template <class T>
void check_parts(const char* who, const std::vector<const T*>& parts) {
  if (parts.empty()) {
    nibble::detail::fail(ErrorCode::invalid_argument, who,
                         ": no parts given (expected at least one, e.g. q, k and v)");
  }
  for (std::size_t index = 0; index < parts.size(); ++index) {
    if (parts[index] == nullptr) {
      nibble::detail::fail(ErrorCode::null_pointer, who, ": part ", index, " is null");
    }
  }
}

// Each count >= 1 and a multiple of `multiple`; they sum to `total`. `unit` names what is counted.
inline void check_counts(const char* who, const std::vector<int64_t>& counts, int64_t total,
                         int64_t multiple, const char* unit, const char* why_multiple) {
  if (counts.empty()) {
    nibble::detail::fail(ErrorCode::invalid_argument, who, ": no ", unit,
                         " counts given (expected one per part, summing to ", total, ")");
  }
  int64_t sum = 0;
  for (std::size_t index = 0; index < counts.size(); ++index) {
    if (counts[index] < 1) {
      nibble::detail::fail(ErrorCode::invalid_argument, who, ": ", unit, " count ", index, " is ",
                           counts[index], " (expected >= 1)");
    }
    if (counts[index] % multiple != 0) {
      nibble::detail::fail(ErrorCode::unsupported, who, ": ", unit, " count ", index, " is ",
                           counts[index], ", not a multiple of ", multiple, " (", why_multiple,
                           ")");
    }
    sum = nibble::detail::checked_add(sum, counts[index], "sum of counts");
  }
  if (sum != total) {
    nibble::detail::fail(ErrorCode::shape_mismatch, who, ": ", unit, " counts ",
                         nibble::detail::format_dims(counts), " sum to ", sum,
                         " but the fused tensor has ", total, " ", unit);
  }
}

// dest [rows, sum(widths)] = the row-major sources [rows, widths[p]] side by side.
template <class T>
void concat_columns(const std::vector<const T*>& sources, const std::vector<int64_t>& widths,
                    int64_t rows, T* dest) {
  int64_t total = 0;
  for (int64_t width : widths)
    total += width;
  for (int64_t row = 0; row < rows; ++row) {
    int64_t offset = 0;
    for (std::size_t part = 0; part < sources.size(); ++part) {
      std::memcpy(dest + row * total + offset, sources[part] + row * widths[part],
                  static_cast<std::size_t>(widths[part]) * sizeof(T));
      offset += widths[part];
    }
  }
}

// dests[p] [rows, widths[p]] = columns [offset_p, offset_p + widths[p]) of source [rows, sum].
template <class T>
void split_columns(const T* source, const std::vector<int64_t>& widths, int64_t rows,
                   const std::vector<T*>& dests) {
  int64_t total = 0;
  for (int64_t width : widths)
    total += width;
  for (int64_t row = 0; row < rows; ++row) {
    int64_t offset = 0;
    for (std::size_t part = 0; part < dests.size(); ++part) {
      std::memcpy(dests[part] + row * widths[part], source + row * total + offset,
                  static_cast<std::size_t>(widths[part]) * sizeof(T));
      offset += widths[part];
    }
  }
}

// Throws: part `index` differs from part 0 in `field`; `why` says why they must agree.
template <class V>
[[noreturn]] void fail_field(const char* who, std::size_t index, const char* field, const V& value,
                             const V& first_value, const char* why) {
  nibble::detail::fail(ErrorCode::shape_mismatch, who, ": part ", index, " has ", field, " = ",
                       value, " but part 0 has ", field, " = ", first_value, " (", why, ")");
}

inline const char* bool_name(bool value) {
  return value ? "true" : "false";
}

// An element count already checked by a layout's validate() / check_array, as a vector size.
inline std::size_t to_size(int64_t count) {
  return static_cast<std::size_t>(count);
}

}  // namespace detail

// ---- canonical layout [out, in] (nibble QuantTensor, Olive, ORT MatMulNBits) -------------------

// Parts [N_p, K] (rank 2, same K, bits, group_size, symmetric, convention) -> [sum N_p, K]: rows
// concatenated in order, every byte of qweight, scales and zeros copied.
template <class ScaleT>
QuantTensor<ScaleT> merge(const std::vector<const QuantTensor<ScaleT>*>& parts) {
  const char* who = "fused::merge";
  detail::check_parts(who, parts);
  const QuantTensor<ScaleT>& first = *parts.front();
  int64_t total_rows = 0;
  for (std::size_t index = 0; index < parts.size(); ++index) {
    const QuantTensor<ScaleT>& part = *parts[index];
    if (part.shape().rank() != 2) {
      nibble::detail::fail(ErrorCode::shape_mismatch, who, ": part ", index, " has shape ",
                           part.shape(),
                           " (expected rank 2, [N, K]: one projection; merge experts of "
                           "[E, N, K] one slice at a time)");
    }
    part.view();  // checks the buffer sizes against the shape
    const char* same_input = "every part of a fused projection reads the same input";
    const char* same_format = "a fused tensor has one quantization format";
    const QuantConfig& config = part.config();
    const QuantConfig& first_config = first.config();
    if (part.k() != first.k()) detail::fail_field(who, index, "K", part.k(), first.k(), same_input);
    if (config.bits != first_config.bits) {
      detail::fail_field(who, index, "bits", config.bits, first_config.bits, same_format);
    }
    if (config.group_size != first_config.group_size) {
      detail::fail_field(who, index, "group_size", config.group_size, first_config.group_size,
                         same_format);
    }
    if (config.symmetric != first_config.symmetric) {
      detail::fail_field(who, index, "symmetric", std::string(detail::bool_name(config.symmetric)),
                         std::string(detail::bool_name(first_config.symmetric)),
                         "a fused tensor stores zero points for all rows or for none");
    }
    if (config.convention != first_config.convention) {
      detail::fail_field(who, index, "convention", std::string(to_string(config.convention)),
                         std::string(to_string(first_config.convention)), same_format);
    }
    total_rows = nibble::detail::checked_add(total_rows, part.rows(), "fused row count");
  }

  QuantTensor<ScaleT> out(Shape{total_rows, first.k()}, first.config());
  const RowLayout& layout = out.layout();
  int64_t row = 0;
  for (const QuantTensor<ScaleT>* part : parts) {
    const int64_t rows = part->rows();
    std::memcpy(out.qweight().data() + row * layout.packed_row_bytes, part->qweight().data(),
                static_cast<std::size_t>(rows * layout.packed_row_bytes));
    std::memcpy(out.scales().data() + row * layout.n_groups, part->scales().data(),
                static_cast<std::size_t>(rows * layout.n_groups) * sizeof(ScaleT));
    if (!out.config().symmetric) {
      std::memcpy(out.zeros().data() + row * layout.zero_row_bytes, part->zeros().data(),
                  static_cast<std::size_t>(rows * layout.zero_row_bytes));
    }
    row += rows;
  }
  return out;
}

// Fused [N, K] (rank 2) -> parts [row_counts[p], K] in order; row_counts (each >= 1) sum to N.
template <class ScaleT>
std::vector<QuantTensor<ScaleT>> split(const QuantTensor<ScaleT>& fused,
                                       const std::vector<int64_t>& row_counts) {
  const char* who = "fused::split";
  if (fused.shape().rank() != 2) {
    nibble::detail::fail(ErrorCode::shape_mismatch, who, ": tensor has shape ", fused.shape(),
                         " (expected rank 2, [N, K]: one fused projection; split experts of "
                         "[E, N, K] one slice at a time)");
  }
  fused.view();  // checks the buffer sizes against the shape
  detail::check_counts(who, row_counts, fused.rows(), 1, "rows", "");
  const RowLayout& layout = fused.layout();
  std::vector<QuantTensor<ScaleT>> parts;
  parts.reserve(row_counts.size());
  int64_t row = 0;
  for (int64_t rows : row_counts) {
    QuantTensor<ScaleT> part(Shape{rows, fused.k()}, fused.config());
    std::memcpy(part.qweight().data(), fused.qweight().data() + row * layout.packed_row_bytes,
                static_cast<std::size_t>(rows * layout.packed_row_bytes));
    std::memcpy(part.scales().data(), fused.scales().data() + row * layout.n_groups,
                static_cast<std::size_t>(rows * layout.n_groups) * sizeof(ScaleT));
    if (!fused.config().symmetric) {
      std::memcpy(part.zeros().data(), fused.zeros().data() + row * layout.zero_row_bytes,
                  static_cast<std::size_t>(rows * layout.zero_row_bytes));
    }
    parts.push_back(std::move(part));
    row += rows;
  }
  return parts;
}

// ---- GPTQ layout [in, out] ------------------------------------------------------------------

namespace detail {

// A checkpoint's arrays against its layout (g_idx: empty, or [K] with groups in range).
template <class ScaleT>
void check_gptq(const std::string& who, const gptq::Checkpoint<ScaleT>& c) {
  gptq::detail::check_view(who.c_str(), c.view());
}

// The g_idx a checkpoint stands for: its own, or the trivial k / G when it has none.
template <class ScaleT>
int32_t gptq_group_of(const gptq::Checkpoint<ScaleT>& c, int64_t col) {
  return c.g_idx.empty() ? static_cast<int32_t>(col / c.layout.group())
                         : c.g_idx[static_cast<std::size_t>(col)];
}

}  // namespace detail

// Parts (same in_features, bits, group_size, zero_format, sym and g_idx; each out_features a
// multiple of pack = 32 / bits) -> one checkpoint of sum out_features: qweight [K / pack, N],
// qzeros [n_groups, N / pack] and scales [n_groups, N] concatenated along columns.
template <class ScaleT>
gptq::Checkpoint<ScaleT> merge(const std::vector<const gptq::Checkpoint<ScaleT>*>& parts) {
  const char* who = "fused::merge (GPTQ)";
  detail::check_parts(who, parts);
  const gptq::Checkpoint<ScaleT>& first = *parts.front();
  const gptq::Layout& first_layout = first.layout;
  int64_t total_outputs = 0;
  for (std::size_t index = 0; index < parts.size(); ++index) {
    const gptq::Checkpoint<ScaleT>& part = *parts[index];
    const gptq::Layout& layout = part.layout;
    // Before validate(): its message would not say that the part boundary is the problem.
    if ((layout.bits == 2 || layout.bits == 4 || layout.bits == 8) &&
        layout.out_features % layout.codes_per_word() != 0) {
      nibble::detail::fail(ErrorCode::unsupported, who, ": part ", index,
                           " has out_features N = ", layout.out_features, ", not a multiple of ",
                           layout.codes_per_word(),
                           " (qzeros packs 32 / bits = ", layout.codes_per_word(),
                           " outputs into each int32 word; every part's N must be a multiple of ",
                           layout.codes_per_word(), " so that no word straddles two parts)");
    }
    detail::check_gptq(std::string(who) + " part " + std::to_string(index), part);
    const char* same_input = "every part of a fused projection reads the same input";
    const char* same_format = "a fused checkpoint has one quantization format";
    if (layout.in_features != first_layout.in_features) {
      detail::fail_field(who, index, "in_features", layout.in_features, first_layout.in_features,
                         same_input);
    }
    if (layout.bits != first_layout.bits) {
      detail::fail_field(who, index, "bits", layout.bits, first_layout.bits, same_format);
    }
    if (layout.group_size != first_layout.group_size) {
      detail::fail_field(who, index, "group_size", layout.group_size, first_layout.group_size,
                         same_format);
    }
    if (layout.zero_format != first_layout.zero_format) {
      detail::fail_field(
          who, index, "zero_format",
          std::string(layout.zero_format == gptq::ZeroFormat::v1 ? "v1" : "v2"),
          std::string(first_layout.zero_format == gptq::ZeroFormat::v1 ? "v1" : "v2"), same_format);
    }
    if (part.sym != first.sym) {
      detail::fail_field(who, index, "sym", std::string(detail::bool_name(part.sym)),
                         std::string(detail::bool_name(first.sym)), same_format);
    }
    for (int64_t col = 0; col < layout.in_features; ++col) {
      const int32_t group = detail::gptq_group_of(part, col);
      const int32_t first_group = detail::gptq_group_of(first, col);
      if (group != first_group) {
        nibble::detail::fail(ErrorCode::shape_mismatch, who, ": part ", index, " has g_idx[", col,
                             "] = ", group, " but part 0 has g_idx[", col, "] = ", first_group,
                             " (every part of a fused projection reads the same input, so g_idx "
                             "must be identical across parts)");
      }
    }
    total_outputs =
        nibble::detail::checked_add(total_outputs, layout.out_features, "fused out_features");
  }

  gptq::Checkpoint<ScaleT> out;
  out.layout = first_layout;
  out.layout.out_features = total_outputs;
  out.sym = first.sym;
  out.desc_act = first.desc_act;
  for (const gptq::Checkpoint<ScaleT>* part : parts) {
    if (!part->g_idx.empty()) {
      out.g_idx = part->g_idx;  // identical in every part that has one
      break;
    }
  }
  const int64_t pack = first_layout.codes_per_word();
  const int64_t n_groups = first_layout.n_groups();
  std::vector<const int32_t*> qweights, qzeros;
  std::vector<const ScaleT*> scales;
  std::vector<int64_t> widths, zero_widths;
  for (const gptq::Checkpoint<ScaleT>* part : parts) {
    qweights.push_back(part->qweight.data());
    qzeros.push_back(part->qzeros.data());
    scales.push_back(part->scales.data());
    widths.push_back(part->layout.out_features);
    zero_widths.push_back(part->layout.out_features / pack);
  }
  const int64_t word_rows = first_layout.in_features / pack;
  out.qweight.resize(detail::to_size(word_rows * total_outputs));
  out.qzeros.resize(detail::to_size(n_groups * (total_outputs / pack)));
  out.scales.resize(detail::to_size(n_groups * total_outputs));
  detail::concat_columns(qweights, widths, word_rows, out.qweight.data());
  detail::concat_columns(qzeros, zero_widths, n_groups, out.qzeros.data());
  detail::concat_columns(scales, widths, n_groups, out.scales.data());
  return out;
}

// Fused checkpoint -> parts of output_counts[p] outputs (each >= 1 and a multiple of
// pack = 32 / bits; summing to out_features), each with the fused g_idx, sym and desc_act.
template <class ScaleT>
std::vector<gptq::Checkpoint<ScaleT>> split(const gptq::Checkpoint<ScaleT>& fused,
                                            const std::vector<int64_t>& output_counts) {
  const char* who = "fused::split (GPTQ)";
  detail::check_gptq(who, fused);
  const gptq::Layout& layout = fused.layout;
  const int64_t pack = layout.codes_per_word();
  detail::check_counts(who, output_counts, layout.out_features, pack, "outputs",
                       "qzeros packs 32 / bits outputs into each int32 word; a part must hold "
                       "whole words");
  const int64_t n_groups = layout.n_groups();
  const int64_t word_rows = layout.in_features / pack;
  std::vector<gptq::Checkpoint<ScaleT>> parts(output_counts.size());
  std::vector<int32_t*> qweights, qzeros;
  std::vector<ScaleT*> scales;
  std::vector<int64_t> zero_widths;
  for (std::size_t index = 0; index < parts.size(); ++index) {
    gptq::Checkpoint<ScaleT>& part = parts[index];
    const int64_t outputs = output_counts[index];
    part.layout = layout;
    part.layout.out_features = outputs;
    part.sym = fused.sym;
    part.desc_act = fused.desc_act;
    part.g_idx = fused.g_idx;
    part.qweight.resize(detail::to_size(word_rows * outputs));
    part.qzeros.resize(detail::to_size(n_groups * (outputs / pack)));
    part.scales.resize(detail::to_size(n_groups * outputs));
    qweights.push_back(part.qweight.data());
    qzeros.push_back(part.qzeros.data());
    scales.push_back(part.scales.data());
    zero_widths.push_back(outputs / pack);
  }
  detail::split_columns(fused.qweight.data(), output_counts, word_rows, qweights);
  detail::split_columns(fused.qzeros.data(), zero_widths, n_groups, qzeros);
  detail::split_columns(fused.scales.data(), output_counts, n_groups, scales);
  return parts;
}

// ---- AWQ layout [in, out] -------------------------------------------------------------------

namespace detail {

template <class ScaleT>
void check_awq(const std::string& who, const awq::Checkpoint<ScaleT>& c) {
  const awq::Layout& layout = c.layout;
  layout.validate();
  const int64_t words = layout.out_features / awq::Packing::kCodesPerWord;
  formats::detail::check_array(who.c_str(), "qweight", c.qweight.data(),
                               static_cast<int64_t>(c.qweight.size()), layout.in_features * words);
  formats::detail::check_array(who.c_str(), "qzeros", c.qzeros.data(),
                               static_cast<int64_t>(c.qzeros.size()), layout.n_groups() * words);
  formats::detail::check_array(who.c_str(), "scales", c.scales.data(),
                               static_cast<int64_t>(c.scales.size()),
                               layout.n_groups() * layout.out_features);
}

}  // namespace detail

// Parts (same in_features and group_size; each out_features a multiple of 8) -> one checkpoint:
// qweight [K, N / 8] and qzeros [n_groups, N / 8] concatenated on word columns (the interleave
// stays inside each word), scales [n_groups, N] on columns.
template <class ScaleT>
awq::Checkpoint<ScaleT> merge(const std::vector<const awq::Checkpoint<ScaleT>*>& parts) {
  const char* who = "fused::merge (AWQ)";
  constexpr int64_t pack = awq::Packing::kCodesPerWord;
  detail::check_parts(who, parts);
  const awq::Layout& first_layout = parts.front()->layout;
  int64_t total_outputs = 0;
  for (std::size_t index = 0; index < parts.size(); ++index) {
    const awq::Layout& layout = parts[index]->layout;
    if (layout.out_features % pack != 0) {
      nibble::detail::fail(ErrorCode::unsupported, who, ": part ", index,
                           " has out_features N = ", layout.out_features,
                           ", not a multiple of 8 (qweight and qzeros pack 8 interleaved outputs "
                           "into each int32 word; every part's N must be a multiple of 8 so that "
                           "no word straddles two parts)");
    }
    detail::check_awq(std::string(who) + " part " + std::to_string(index), *parts[index]);
    if (layout.in_features != first_layout.in_features) {
      detail::fail_field(who, index, "in_features", layout.in_features, first_layout.in_features,
                         "every part of a fused projection reads the same input");
    }
    if (layout.group_size != first_layout.group_size) {
      detail::fail_field(who, index, "group_size", layout.group_size, first_layout.group_size,
                         "a fused checkpoint has one quantization format");
    }
    total_outputs =
        nibble::detail::checked_add(total_outputs, layout.out_features, "fused out_features");
  }

  awq::Checkpoint<ScaleT> out;
  out.layout = first_layout;
  out.layout.out_features = total_outputs;
  const int64_t n_groups = first_layout.n_groups();
  std::vector<const int32_t*> qweights, qzeros;
  std::vector<const ScaleT*> scales;
  std::vector<int64_t> widths, word_widths;
  for (const awq::Checkpoint<ScaleT>* part : parts) {
    qweights.push_back(part->qweight.data());
    qzeros.push_back(part->qzeros.data());
    scales.push_back(part->scales.data());
    widths.push_back(part->layout.out_features);
    word_widths.push_back(part->layout.out_features / pack);
  }
  out.qweight.resize(detail::to_size(first_layout.in_features * (total_outputs / pack)));
  out.qzeros.resize(detail::to_size(n_groups * (total_outputs / pack)));
  out.scales.resize(detail::to_size(n_groups * total_outputs));
  detail::concat_columns(qweights, word_widths, first_layout.in_features, out.qweight.data());
  detail::concat_columns(qzeros, word_widths, n_groups, out.qzeros.data());
  detail::concat_columns(scales, widths, n_groups, out.scales.data());
  return out;
}

// Fused checkpoint -> parts of output_counts[p] outputs (each >= 1 and a multiple of 8, summing
// to out_features).
template <class ScaleT>
std::vector<awq::Checkpoint<ScaleT>> split(const awq::Checkpoint<ScaleT>& fused,
                                           const std::vector<int64_t>& output_counts) {
  const char* who = "fused::split (AWQ)";
  constexpr int64_t pack = awq::Packing::kCodesPerWord;
  detail::check_awq(who, fused);
  const awq::Layout& layout = fused.layout;
  detail::check_counts(who, output_counts, layout.out_features, pack, "outputs",
                       "qweight and qzeros pack 8 interleaved outputs into each int32 word; a "
                       "part must hold whole words");
  const int64_t n_groups = layout.n_groups();
  std::vector<awq::Checkpoint<ScaleT>> parts(output_counts.size());
  std::vector<int32_t*> qweights, qzeros;
  std::vector<ScaleT*> scales;
  std::vector<int64_t> word_widths;
  for (std::size_t index = 0; index < parts.size(); ++index) {
    awq::Checkpoint<ScaleT>& part = parts[index];
    const int64_t outputs = output_counts[index];
    part.layout = layout;
    part.layout.out_features = outputs;
    part.qweight.resize(detail::to_size(layout.in_features * (outputs / pack)));
    part.qzeros.resize(detail::to_size(n_groups * (outputs / pack)));
    part.scales.resize(detail::to_size(n_groups * outputs));
    qweights.push_back(part.qweight.data());
    qzeros.push_back(part.qzeros.data());
    scales.push_back(part.scales.data());
    word_widths.push_back(outputs / pack);
  }
  detail::split_columns(fused.qweight.data(), word_widths, layout.in_features, qweights);
  detail::split_columns(fused.qzeros.data(), word_widths, n_groups, qzeros);
  detail::split_columns(fused.scales.data(), output_counts, n_groups, scales);
  return parts;
}

}  // namespace nibble::fused
