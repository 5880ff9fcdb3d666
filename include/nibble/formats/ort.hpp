// ONNX Runtime contrib ops: MatMulNBits and GatherBlockQuantized, as views of nibble's layout.
//
// The canonical layout was chosen so that these are (mostly) zero-copy:
//   MatMulNBits  B [N, n_blocks, blob]  = qweight [N, padded_k * bits / 8]   (a reshape)
//                scales [N, n_blocks]   = scales                             (same bytes)
//                zero_points [N, ceil(n_blocks * bits / 8)] = zeros; absent when symmetric
//   GatherBlockQuantized, uint8 data with quantize_axis = last: the same three buffers, data
//                shaped [..., K * bits / 8] (requires K % block_size == 0).
//   GatherBlockQuantized, INT4/UINT4-typed data (what ORT's own Gather quantizer writes):
//                elements flat-packed over the logical shape, zero points flat-packed over the
//                scales' shape; symmetric codes stored signed. This one is a copy.
//   Tied embeddings (ORT GenAI's shared_embeddings): one table [vocab, hidden] for both ops; the
//                Gather's uint8 data is lm_head's B through a Reshape to [vocab, hidden * bits /
//                8], scales and zero points are the same initializers (as_tied_embedding).
// Byte-level details and sources: docs/formats.md.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "nibble/core/error.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/pack.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble::ort {

namespace detail {

inline bool is_power_of_two(int64_t value) {
  return value > 0 && (value & (value - 1)) == 0;
}

inline int64_t next_power_of_two(int64_t value) {
  int64_t power = 1;
  while (power < value)
    power *= 2;
  return power;
}

// The ops take block_size as a power of two >= 16.
inline void check_block_size(const char* op, const RowLayout& layout, bool per_channel) {
  if (layout.group_size >= 16 && is_power_of_two(layout.group_size)) return;
  if (per_channel) {
    nibble::detail::fail(ErrorCode::unsupported, op, ": per-channel quantization of K = ", layout.k,
                         " gives block_size ", layout.group_size, ", but ", op,
                         " needs a power of two >= 16; quantize with group_size = ",
                         next_power_of_two(layout.k < 16 ? 16 : layout.k),
                         " instead (one block per row, the same statistics)");
  }
  nibble::detail::fail(ErrorCode::unsupported, op, ": group_size ", layout.group_size,
                       " is not a valid block_size (", op, " needs a power of two >= 16)");
}

}  // namespace detail

// MatMulNBits(A, B, scales[, zero_points]) for a weight W [N, K] (torch Linear layout), the op
// computing Y = A * dequant(B)^T. Pointers borrow the QuantTensor's buffers.
template <class ScaleT>
struct MatMulNBitsInputs {
  int64_t K = 0;           // attribute K
  int64_t N = 0;           // attribute N
  int64_t bits = 0;        // attribute bits
  int64_t block_size = 0;  // attribute block_size
  const uint8_t* B = nullptr;
  std::array<int64_t, 3> B_shape{};  // [N, n_blocks, blob_size]
  const ScaleT* scales = nullptr;
  std::array<int64_t, 2> scales_shape{};       // [N, n_blocks] (older ops: flat, same bytes)
  const uint8_t* zero_points = nullptr;        // null when symmetric: the op uses 2^(bits-1)
  std::array<int64_t, 2> zero_points_shape{};  // [N, ceil(n_blocks * bits / 8)]
};

template <class ScaleT>
MatMulNBitsInputs<ScaleT> as_matmul_nbits(const QuantTensorView<ScaleT>& w) {
  if (w.shape().rank() != 2) {
    nibble::detail::fail(ErrorCode::shape_mismatch, "MatMulNBits: weights have shape ", w.shape(),
                         " (expected [N, K]; take one expert of [E, N, K] with slice(e))");
  }
  const RowLayout& layout = w.layout();
  detail::check_block_size("MatMulNBits", layout, w.config().per_channel());
  MatMulNBitsInputs<ScaleT> inputs;
  inputs.K = w.k();
  inputs.N = w.rows();
  inputs.bits = w.bits();
  inputs.block_size = layout.group_size;
  inputs.B = w.qweight();
  inputs.B_shape = {w.rows(), layout.n_groups, layout.group_size * w.bits() / 8};
  inputs.scales = w.scales();
  inputs.scales_shape = {w.rows(), layout.n_groups};
  inputs.zero_points = w.zeros();
  inputs.zero_points_shape = {w.rows(), layout.zero_row_bytes};
  return inputs;
}

// The reverse: MatMulNBits initializers (uint8 zero points or none) viewed as a QuantTensorView
// without a copy. `convention` records how the tensor was made (it does not change its meaning).
template <class ScaleT>
QuantTensorView<ScaleT> view_matmul_nbits(int64_t K, int64_t N, int bits, int64_t block_size,
                                          const uint8_t* B, int64_t B_bytes, const ScaleT* scales,
                                          int64_t scale_count, const uint8_t* zero_points,
                                          int64_t zero_point_bytes,
                                          ConventionId convention = ConventionId::ort) {
  const QuantConfig config{bits, block_size, zero_points == nullptr, convention};
  QuantTensorView<ScaleT> view(Shape{N, K}, config, B, B_bytes, scales, scale_count, zero_points,
                               zero_point_bytes);
  detail::check_block_size("MatMulNBits", view.layout(), false);
  return view;
}

// GatherBlockQuantized(data, indices, scales[, zero_points]) with uint8 data: a quantized
// embedding table W [..., K] gathered along axis 0, quantized along the last axis.
template <class ScaleT>
struct GatherBlockQuantizedInputs {
  int64_t gather_axis = 0;    // attribute gather_axis (uint8 data requires 0)
  int64_t quantize_axis = 0;  // attribute quantize_axis (uint8 data requires the last axis)
  int64_t block_size = 0;     // attribute block_size
  int64_t bits = 0;           // attribute bits
  const uint8_t* data = nullptr;
  std::vector<int64_t> data_shape;  // [..., K * bits / 8]
  const ScaleT* scales = nullptr;
  std::vector<int64_t> scales_shape;       // [..., n_blocks]
  const uint8_t* zero_points = nullptr;    // null when symmetric: the op uses 2^(bits-1)
  std::vector<int64_t> zero_points_shape;  // [..., ceil(n_blocks * bits / 8)]
};

template <class ScaleT>
GatherBlockQuantizedInputs<ScaleT> as_gather_block_quantized(const QuantTensorView<ScaleT>& w) {
  const RowLayout& layout = w.layout();
  detail::check_block_size("GatherBlockQuantized", layout, w.config().per_channel());
  if (layout.padded_k != layout.k) {
    nibble::detail::fail(ErrorCode::unsupported,
                         "GatherBlockQuantized (uint8 data): K = ", layout.k,
                         " is not a multiple of block_size ", layout.group_size,
                         "; the op's uint8 layout has no row padding (use "
                         "to_gather_block_quantized_int4 for 4 bits, or a group size dividing K)");
  }
  GatherBlockQuantizedInputs<ScaleT> inputs;
  inputs.quantize_axis = w.shape().rank() - 1;
  inputs.block_size = layout.group_size;
  inputs.bits = w.bits();
  inputs.data = w.qweight();
  inputs.data_shape = w.shape().with_last(layout.packed_row_bytes).dims();
  inputs.scales = w.scales();
  inputs.scales_shape = w.shape().with_last(layout.n_groups).dims();
  inputs.zero_points = w.zeros();
  inputs.zero_points_shape = w.shape().with_last(layout.zero_row_bytes).dims();
  return inputs;
}

namespace detail {

// ORT's INT4/UINT4 GatherBlockQuantized bytes of a validated 4-bit tensor: `data` (every element
// flat) and, when asymmetric, `zero_points` (flat over the scales' shape; left empty otherwise).
template <class ScaleT>
void pack_int4_flat(const QuantTensorView<ScaleT>& w, std::vector<uint8_t>& data,
                    std::vector<uint8_t>& zero_points) {
  const RowLayout& layout = w.layout();
  const bool signed_data = w.config().symmetric;
  // Flat packing: element i of the whole tensor in byte i / 2 (low nibble when i is even).
  // Signed storage: the canonical code q = s + 8 for the signed value s, and s's two's-complement
  // nibble is (s & 0xF) = (q - 8) & 0xF = q ^ 8 for q in 0..15.
  const uint8_t code_xor = signed_data ? 0x8 : 0x0;
  data.assign(static_cast<std::size_t>(BitPacking<4>::packed_bytes(w.shape().numel())), 0);
  int64_t flat = 0;
  for (int64_t row = 0; row < w.rows(); ++row) {
    const uint8_t* codes = w.qweight_row(row);
    for (int64_t col = 0; col < w.k(); ++col, ++flat) {
      const auto nibble_value = static_cast<uint8_t>(BitPacking<4>::code_at(codes, col) ^ code_xor);
      data[static_cast<std::size_t>(flat / 2)] |=
          static_cast<uint8_t>(nibble_value << ((flat % 2) * 4));
    }
  }
  zero_points.clear();
  if (!signed_data) {
    zero_points.assign(static_cast<std::size_t>(BitPacking<4>::packed_bytes(w.scale_count())), 0);
    int64_t flat_group = 0;
    for (int64_t row = 0; row < w.rows(); ++row) {
      for (int64_t group = 0; group < layout.n_groups; ++group, ++flat_group) {
        const auto zero = static_cast<uint8_t>(w.zero_point(row, group));
        zero_points[static_cast<std::size_t>(flat_group / 2)] |=
            static_cast<uint8_t>(zero << ((flat_group % 2) * 4));
      }
    }
  }
}

}  // namespace detail

// GatherBlockQuantized with INT4 (symmetric) or UINT4 (asymmetric) typed data, byte-for-byte
// what ONNX Runtime's Gather quantizer (quantize_ndarray) writes for quantize_axis = last.
template <class ScaleT>
struct GatherBlockQuantizedInt4 {
  bool signed_data = false;          // INT4 (two's complement, implied zero point 0) vs UINT4
  std::vector<int64_t> shape;        // the logical shape; data holds ceil(numel / 2) bytes
  std::vector<uint8_t> data;         // element i (flat, C order) in byte i / 2, low nibble if even
  std::vector<ScaleT> scales;        // [..., n_blocks]
  std::vector<uint8_t> zero_points;  // UINT4 flat-packed over the scales' shape; empty if signed
  int64_t block_size = 0;
};

template <class ScaleT>
GatherBlockQuantizedInt4<ScaleT> to_gather_block_quantized_int4(const QuantTensorView<ScaleT>& w) {
  if (w.bits() != 4) {
    nibble::detail::fail(ErrorCode::unsupported,
                         "GatherBlockQuantized INT4/UINT4 data: bits = ", w.bits(),
                         " (this typed layout holds 4-bit codes only)");
  }
  const RowLayout& layout = w.layout();
  detail::check_block_size("GatherBlockQuantized", layout, w.config().per_channel());
  GatherBlockQuantizedInt4<ScaleT> out;
  out.signed_data = w.config().symmetric;
  out.shape = w.shape().dims();
  out.block_size = layout.group_size;
  out.scales.assign(w.scales(), w.scales() + w.scale_count());
  detail::pack_int4_flat(w, out.data, out.zero_points);
  return out;
}

// ---- tied embeddings ---------------------------------------------------------------------------
//
// ORT GenAI's model builder (src/python/py/models/builders/base.py: make_embedding with
// shared_embeddings, make_tied_quantized_embedding_input_names) quantizes lm_head's MatMul into
// MatMulNBits and builds the token embedding from the same initializers:
//   GatherBlockQuantized(Reshape(B, [vocab, hidden * bits / 8]), input_ids, scales[, zero_points])
//   attributes bits, block_size (lm_head's), gather_axis = 0, quantize_axis = 1; data is uint8.
// For a table W [vocab, hidden] (lm_head: N = vocab, K = hidden) the two ops agree on
//   scales       [vocab, n_blocks] in both                                           -> shared
//   zero points  uint8 [vocab, ceil(n_blocks * bits / 8)] packed per row in both; absent means
//                2^(bits-1) in both (uint8 data)                                      -> shared
//   codes        B [vocab, n_blocks, blob] vs data [vocab, hidden * bits / 8]: the same bytes
//                exactly when hidden % block_size == 0 (otherwise B's rows end in pad codes)
// Where the codes disagree the embedding gets its own data (TiedData says which) and keeps
// sharing whatever still agrees.
enum class TiedData : uint8_t {
  reshape,         // hidden % block_size == 0: data = B reshaped, nothing copied (the builder's)
  unpadded_uint8,  // else, hidden * bits % 8 == 0: uint8 data = B without each row's pad codes
                   // (a copy; the op takes a partial last block); scales, zero points shared.
                   // The builder's Reshape fails on these tables (its element count is wrong).
  int4,            // else (4 bits, odd hidden: rows are not whole bytes): INT4 / UINT4 data as
                   // to_gather_block_quantized_int4 writes it (a copy); scales shared; UINT4 zero
                   // points are their own flat-packed copy; symmetric data is signed INT4 with
                   // the op's implied zero point 0 (the same values as 2^(bits-1) for uint8).
};

inline const char* to_string(TiedData data) {
  switch (data) {
    case TiedData::reshape:
      return "reshape";
    case TiedData::unpadded_uint8:
      return "unpadded_uint8";
    case TiedData::int4:
      return "int4";
  }
  return "?";
}

// Both nodes' inputs for one quantized table. Pointers borrow the table's buffers, except the
// embedding's data (and int4 zero points) when TiedData is not reshape: those point into
// data_copy / zero_points_copy, which is why this is move-only (a moved vector keeps its buffer).
template <class ScaleT>
struct TiedEmbeddingInputs {
  MatMulNBitsInputs<ScaleT> lm_head;  // as as_matmul_nbits(table): logits = hidden * W_hat^T
  // embedding.data_shape: uint8 bytes [vocab, hidden * bits / 8], or for int4 the typed tensor's
  // element shape [vocab, hidden] (zero_points_shape likewise [vocab, n_blocks] elements).
  GatherBlockQuantizedInputs<ScaleT> embedding;
  TiedData data = TiedData::reshape;
  bool signed_data = false;                // int4 only: INT4 (symmetric) rather than UINT4
  std::array<int64_t, 2> reshape_shape{};  // reshape only: the Reshape's shape constant
  std::vector<uint8_t> data_copy;          // the embedding's own data (not reshape)
  std::vector<uint8_t> zero_points_copy;   // int4, asymmetric: UINT4 zero points

  // Whether the embedding reads lm_head's bytes for codes / zero points (scales: always).
  bool shares_codes() const { return data == TiedData::reshape; }
  bool shares_zero_points() const { return data != TiedData::int4; }

  TiedEmbeddingInputs() = default;
  TiedEmbeddingInputs(TiedEmbeddingInputs&&) noexcept = default;
  TiedEmbeddingInputs& operator=(TiedEmbeddingInputs&&) noexcept = default;
  TiedEmbeddingInputs(const TiedEmbeddingInputs&) = delete;
  TiedEmbeddingInputs& operator=(const TiedEmbeddingInputs&) = delete;
};

// A table W [vocab, hidden] quantized once, as lm_head's MatMulNBits and the embedding's
// GatherBlockQuantized. With allow_copy = false only TiedData::reshape (the builder's form) is
// accepted; any other table is an Error saying why the Reshape cannot work.
template <class ScaleT>
TiedEmbeddingInputs<ScaleT> as_tied_embedding(const QuantTensorView<ScaleT>& table,
                                              bool allow_copy = true) {
  if (table.shape().rank() != 2) {
    nibble::detail::fail(ErrorCode::shape_mismatch, "tied embedding: table has shape ",
                         table.shape(), " (expected [vocab, hidden])");
  }
  const RowLayout& layout = table.layout();
  const int64_t vocab = table.rows();
  const int64_t hidden = table.k();
  const int bits = table.bits();
  TiedEmbeddingInputs<ScaleT> out;
  out.lm_head = as_matmul_nbits(table);  // checks the block size for both ops
  GatherBlockQuantizedInputs<ScaleT>& embedding = out.embedding;
  embedding.gather_axis = 0;
  embedding.quantize_axis = 1;
  embedding.block_size = layout.group_size;
  embedding.bits = bits;
  embedding.scales = table.scales();
  embedding.scales_shape = {vocab, layout.n_groups};
  embedding.zero_points = table.zeros();
  embedding.zero_points_shape = {vocab, layout.zero_row_bytes};
  if (layout.padded_k == hidden) {
    out.data = TiedData::reshape;
    out.reshape_shape = {vocab, layout.packed_row_bytes};
    embedding.data = table.qweight();
    embedding.data_shape = {vocab, layout.packed_row_bytes};
    return out;
  }
  if (!allow_copy) {
    nibble::detail::fail(ErrorCode::unsupported, "tied embedding: hidden = ", hidden,
                         " is not a multiple of block_size ", layout.group_size,
                         ", so lm_head's B rows hold ", layout.padded_k,
                         " codes (pads included) and cannot be reshaped to the Gather's [vocab, ",
                         "hidden * bits / 8] (ORT GenAI's shared_embeddings Reshape); allow a copy "
                         "of the embedding's codes, or quantize with a block size dividing hidden");
  }
  if (hidden * bits % 8 == 0) {
    // Codes are packed low bits first, so a row's real codes are its first hidden * bits / 8
    // bytes; the pad codes after them are dropped.
    out.data = TiedData::unpadded_uint8;
    const int64_t row_bytes = hidden * bits / 8;
    out.data_copy.resize(static_cast<std::size_t>(vocab * row_bytes));
    for (int64_t row = 0; row < vocab; ++row) {
      std::memcpy(out.data_copy.data() + row * row_bytes, table.qweight_row(row),
                  static_cast<std::size_t>(row_bytes));
    }
    embedding.data = out.data_copy.data();
    embedding.data_shape = {vocab, row_bytes};
    return out;
  }
  if (bits != 4) {
    nibble::detail::fail(ErrorCode::unsupported, "tied embedding: hidden = ", hidden, " at ", bits,
                         " bits is not whole bytes per row (GatherBlockQuantized's uint8 "
                         "data needs hidden * bits % 8 == 0; its INT4/UINT4 data holds 4-bit "
                         "codes only)");
  }
  out.data = TiedData::int4;
  out.signed_data = table.config().symmetric;
  detail::pack_int4_flat(table, out.data_copy, out.zero_points_copy);
  embedding.data = out.data_copy.data();
  embedding.data_shape = {vocab, hidden};
  embedding.zero_points = out.signed_data ? nullptr : out.zero_points_copy.data();
  embedding.zero_points_shape = {vocab, layout.n_groups};
  return out;
}

}  // namespace nibble::ort
