// AWQ checkpoints (AutoAWQ WQLinear_GEMM, "version": "gemm"; the same packing as
// mit-han-lab/llm-awq)
// <-> nibble's canonical layout, exact in both directions. 4-bit only.
//
// One linear layer, K = in_features, N = out_features, G = group_size (-1: G = K),
// n_groups = K / G. Sources: AutoAWQ awq/modules/linear/gemm.py (WQLinear_GEMM.from_linear),
// awq/utils/packing_utils.py (AWQ_ORDER, AWQ_REVERSE_ORDER, unpack_awq, dequantize_gemm).
//
//   qweight  int32 [K, N / 8]          packed along N (the OUTPUT dim, unlike GPTQ), interleaved:
//                                      nibble i (bits [4i, 4i + 4)) of word qweight[k, c] holds
//                                      the code of output n = 8c + kOrder[i],
//                                      kOrder = [0, 2, 4, 6, 1, 3, 5, 7]
//   qzeros   int32 [n_groups, N / 8]   the TRUE zero points (no minus one), same interleave
//   scales   float16 [n_groups, N]     (the canonical scales transposed; float / bf16 also offered)
//   dequant  w[k, n] = (q[k, n] - z[k / G, n]) * s[k / G, n]
//
// So the nibbles of one word, from bit 0 up, are the outputs 0 2 4 6 1 3 5 7 of its 8 columns;
// output j sits in nibble kReverse[j], kReverse = [0, 4, 1, 5, 2, 6, 3, 7] (the inverse
// permutation: what unpack_awq + reverse_awq_order undo). Example: codes q(n) = n for n = 0..7
// pack to 0x75316420 (a natural-order packing would give 0x76543210).
//
// Canonical <-> AWQ:
//   - bits must be 4; K % G == 0 and N % 8 == 0 (WQLinear_GEMM asserts both); else an Error.
//   - AWQ is asymmetric: a symmetric nibble tensor exports with every zero point 8 (0x88888888).
//     On import the default is Symmetry::asymmetric (AWQ's own meaning); Symmetry::detect makes
//     it symmetric when every zero point is 8.
//   - No g_idx / act-order in AWQ. Scales are copied bit for bit.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "nibble/core/dtype.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/formats/gptq.hpp"  // formats::Symmetry, ImportOptions and the int32 helpers
#include "nibble/pack.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble::awq {

using formats::Symmetry;

// AWQ's import default differs from GPTQ's: AWQ checkpoints are asymmetric by definition.
struct ImportOptions {
  Symmetry symmetry = Symmetry::asymmetric;
  ConventionId convention = ConventionId::olive;  // as formats::ImportOptions::convention
};

// The GEMM packing: 8 four-bit codes per int32 word, interleaved.
struct Packing {
  static constexpr int kBits = 4;
  static constexpr int kCodesPerWord = 8;
  static constexpr uint32_t kMask = 0xF;
  // Nibble i holds output 8c + kOrder[i] (AutoAWQ's order_map / AWQ_ORDER).
  static constexpr std::array<int, 8> kOrder = {0, 2, 4, 6, 1, 3, 5, 7};

  // Output j is in nibble kReverse[j] (AWQ_REVERSE_ORDER).
  static constexpr std::array<int, 8> kReverse = {0, 4, 1, 5, 2, 6, 3, 7};
  static_assert(kCodesPerWord * kBits == 32, "eight nibbles fill a word");

  // Packs 8 codes of consecutive outputs (codes[j] = output 8c + j) into one word.
  static uint32_t pack_word(const uint8_t* codes) {
    uint32_t word = 0;
    for (int i = 0; i < kCodesPerWord; ++i)
      word |= uint32_t{codes[kOrder[static_cast<std::size_t>(i)]]} << (kBits * i);
    return word;
  }
  // The code of output 8c + j of a word: its nibble kReverse[j], shifted down and masked.
  static int code_of_output(uint32_t word, int64_t j) {
    return static_cast<int>((word >> (kBits * kReverse[static_cast<std::size_t>(j)])) & kMask);
  }
};

// The two tables describe one permutation: output kOrder[i] is in nibble i.
constexpr bool awq_reverse_inverts_order() {
  for (int i = 0; i < Packing::kCodesPerWord; ++i) {
    const auto output = static_cast<std::size_t>(Packing::kOrder[static_cast<std::size_t>(i)]);
    if (Packing::kReverse[output] != i) return false;
  }
  return true;
}
static_assert(awq_reverse_inverts_order(), "kReverse is the inverse permutation of kOrder");

struct Layout {
  int64_t in_features = 0;   // K
  int64_t out_features = 0;  // N
  int64_t group_size = 128;  // > 0, or -1 (kPerChannel): one group of K

  int64_t group() const { return group_size == kPerChannel ? in_features : group_size; }
  int64_t n_groups() const { return in_features / group(); }
  std::vector<int64_t> qweight_shape() const { return {in_features, out_features / 8}; }
  std::vector<int64_t> qzeros_shape() const { return {n_groups(), out_features / 8}; }
  std::vector<int64_t> scales_shape() const { return {n_groups(), out_features}; }

  void validate() const {
    if (group_size <= 0 && group_size != kPerChannel) {
      nibble::detail::fail(ErrorCode::invalid_argument, "AWQ group_size = ", group_size,
                           " is invalid (expected > 0, or -1 for one group per row)");
    }
    if (in_features < 1 || out_features < 1) {
      nibble::detail::fail(ErrorCode::shape_mismatch, "AWQ in_features = ", in_features,
                           ", out_features = ", out_features, " (expected >= 1)");
    }
    if (out_features % Packing::kCodesPerWord != 0) {
      nibble::detail::fail(ErrorCode::unsupported, "AWQ out_features N = ", out_features,
                           " is not a multiple of 8 (qweight and qzeros pack 8 four-bit codes of "
                           "N into each int32)");
    }
    if (in_features % group() != 0) {
      nibble::detail::fail(ErrorCode::unsupported, "AWQ in_features K = ", in_features,
                           " is not a multiple of group_size ", group_size,
                           " (WQLinear_GEMM needs whole groups: K % group_size == 0)");
    }
  }

  // A tensor as a file describes it against this layout: `name` is "qweight", "qzeros" or
  // "scales"; scales are F16 in AutoAWQ checkpoints (`scale_dtype`).
  void check_tensor(const char* name, DType dtype, const std::vector<int64_t>& shape,
                    DType scale_dtype = DType::f16) const {
    validate();
    const std::string which = name;
    if (which == "qweight") {
      formats::detail::check_tensor("AWQ", name, dtype, shape, DType::i32, qweight_shape());
    } else if (which == "qzeros") {
      formats::detail::check_tensor("AWQ", name, dtype, shape, DType::i32, qzeros_shape());
    } else if (which == "scales") {
      formats::detail::check_tensor("AWQ", name, dtype, shape, scale_dtype, scales_shape());
    } else {
      nibble::detail::fail(ErrorCode::invalid_argument, "AWQ: tensor name \"", which,
                           "\" (expected qweight, qzeros or scales)");
    }
  }
};

template <class ScaleT>
struct CheckpointView {
  static_assert(is_float_type_v<ScaleT>, "awq::CheckpointView<ScaleT>: float, fp16 or bf16");
  Layout layout;
  const int32_t* qweight = nullptr;  // [K, N / 8]
  int64_t qweight_count = 0;
  const int32_t* qzeros = nullptr;  // [n_groups, N / 8]
  int64_t qzeros_count = 0;
  const ScaleT* scales = nullptr;  // [n_groups, N]
  int64_t scale_count = 0;
};

template <class ScaleT>
struct Checkpoint {
  static_assert(is_float_type_v<ScaleT>, "awq::Checkpoint<ScaleT>: float, fp16 or bf16");
  Layout layout;
  std::vector<int32_t> qweight;  // [K, N / 8]
  std::vector<int32_t> qzeros;   // [n_groups, N / 8]
  std::vector<ScaleT> scales;    // [n_groups, N]

  CheckpointView<ScaleT> view() const {
    return {layout,
            qweight.data(),
            static_cast<int64_t>(qweight.size()),
            qzeros.data(),
            static_cast<int64_t>(qzeros.size()),
            scales.data(),
            static_cast<int64_t>(scales.size())};
  }
};

// Canonical [N, K] (4-bit) -> AWQ GEMM checkpoint tensors.
template <class ScaleT>
Checkpoint<ScaleT> to_awq(const QuantTensorView<ScaleT>& w) {
  const char* who = "to_awq";
  if (w.bits() != Packing::kBits) {
    nibble::detail::fail(ErrorCode::unsupported, who, ": bits = ", w.bits(),
                         " (AWQ GEMM checkpoints hold 4-bit codes only)");
  }
  formats::detail::check_exportable(who, w);
  Checkpoint<ScaleT> out;
  out.layout = Layout{w.k(), w.rows(), w.config().group_size};
  out.layout.validate();
  const int64_t k = w.k();
  const int64_t n_outputs = w.rows();
  const int64_t words = n_outputs / Packing::kCodesPerWord;
  const int64_t n_groups = w.layout().n_groups;

  // qweight[k, c] from the codes (8c + j, k), j = 0..7: one unpacked canonical row per output.
  std::vector<uint8_t> codes(static_cast<std::size_t>(n_outputs * k));  // [n][k]
  for (int64_t n = 0; n < n_outputs; ++n)
    BitPacking<4>::unpack_row(w.qweight_row(n), k, codes.data() + n * k);
  out.qweight.resize(static_cast<std::size_t>(k * words));
  std::array<uint8_t, 8> column{};
  for (int64_t col = 0; col < k; ++col) {
    for (int64_t c = 0; c < words; ++c) {
      for (int64_t j = 0; j < 8; ++j)
        column[static_cast<std::size_t>(j)] =
            codes[static_cast<std::size_t>((8 * c + j) * k + col)];
      out.qweight[static_cast<std::size_t>(col * words + c)] =
          formats::detail::to_int32(Packing::pack_word(column.data()));
    }
  }
  out.qzeros.resize(static_cast<std::size_t>(n_groups * words));
  for (int64_t g = 0; g < n_groups; ++g) {
    for (int64_t c = 0; c < words; ++c) {
      for (int64_t j = 0; j < 8; ++j)
        column[static_cast<std::size_t>(j)] = static_cast<uint8_t>(w.zero_point(8 * c + j, g));
      out.qzeros[static_cast<std::size_t>(g * words + c)] =
          formats::detail::to_int32(Packing::pack_word(column.data()));
    }
  }
  out.scales.resize(static_cast<std::size_t>(n_groups * n_outputs));
  for (int64_t n = 0; n < n_outputs; ++n) {
    for (int64_t g = 0; g < n_groups; ++g)
      out.scales[static_cast<std::size_t>(g * n_outputs + n)] = w.scale_row(n)[g];
  }
  return out;
}

// AWQ GEMM checkpoint tensors -> canonical [N, K] (4-bit).
template <class ScaleT>
QuantTensor<ScaleT> from_awq(const CheckpointView<ScaleT>& in, const ImportOptions& options = {}) {
  const char* who = "from_awq";
  const Layout& layout = in.layout;
  layout.validate();
  const int64_t k = layout.in_features;
  const int64_t n_outputs = layout.out_features;
  const int64_t words = n_outputs / Packing::kCodesPerWord;
  const int64_t n_groups = layout.n_groups();
  formats::detail::check_array(who, "qweight", in.qweight, in.qweight_count, k * words);
  formats::detail::check_array(who, "qzeros", in.qzeros, in.qzeros_count, n_groups * words);
  formats::detail::check_array(who, "scales", in.scales, in.scale_count, n_groups * n_outputs);

  const auto zero_at = [&](int64_t n, int64_t g) {
    return Packing::code_of_output(formats::detail::to_uint32(in.qzeros[g * words + n / 8]), n % 8);
  };
  QuantConfig config{Packing::kBits, layout.group_size, false, options.convention};
  config.symmetric = formats::detail::resolve_symmetric(who, options.symmetry, Packing::kBits,
                                                        n_outputs, n_groups, zero_at);
  return formats::detail::make_canonical<ScaleT>(
      n_outputs, k, config,
      [&](int64_t n, int64_t col) {
        return Packing::code_of_output(formats::detail::to_uint32(in.qweight[col * words + n / 8]),
                                       n % 8);
      },
      zero_at, [&](int64_t n, int64_t g) { return in.scales[g * n_outputs + n]; });
}

}  // namespace nibble::awq
