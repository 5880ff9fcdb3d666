// GPTQ checkpoints (AutoGPTQ "gptq" = v1, GPTQModel "gptq_v2") <-> nibble's canonical layout,
// exact in both directions (every code, zero point and scale bit survives a round trip).
//
// One linear layer, K = in_features, N = out_features, G = group_size (-1: G = K), pack = 32 / bits
// codes per int32, n_groups = K / G. Sources: AutoGPTQ auto_gptq/nn_modules/qlinear/
// qlinear_cuda_old.py (pack, forward), GPTQModel gptqmodel/utils/model.py (v1 <-> v2).
//
//   qweight  int32 [K / pack, N]        packed along K (the input dim), natural LSB-first order:
//                                       word qweight[r, n] holds code (n, k = r * pack + t) in
//                                       bits [bits * t, bits * t + bits), t = 0 .. pack - 1
//   qzeros   int32 [n_groups, N / pack] packed along N, same order: word qzeros[g, c] holds the
//                                       stored zero of (n = c * pack + t, g) at bits * t
//   scales   float16 (or float32) [n_groups, N]     (the canonical scales transposed)
//   g_idx    int32 [K]                  group of input column k; trivial: k / G
//   dequant  w[k, n] = scales[g, n] * (q[k, n] - zero[g, n]),  g = g_idx[k]
//   stored zero: v1 (AutoGPTQ; `zeros -= 1` before packing, kernels add 1 back) = zero - 1;
//                v2 (GPTQModel) = zero.
//
// 4-bit example: qweight[0, n] = q(n,0) | q(n,1) << 4 | ... | q(n,7) << 28. Symmetric GPTQ stores
// zero = 2^(bits-1) like any other zero point: v1 words are 0x55555555 (2-bit), 0x77777777 (4-bit),
// 0x7F7F7F7F (8-bit); v2 words 0xAAAAAAAA, 0x88888888, 0x80808080.
//
// Canonical <-> GPTQ (nibble rows = N outputs, groups of G along K):
//   - bits 2, 4, 8. 3-bit GPTQ (codes straddling int32 words) is not in nibble: an Error.
//   - GPTQ needs K % G == 0 (AutoGPTQ reshapes K into [K / G, G]), K % pack == 0 and
//     N % pack == 0 (whole int32 words). A canonical tensor that violates one is an Error saying
//     which; otherwise there are no pad codes and the conversion is a pure re-pack.
//   - v1 can store zero points 1 .. 2^bits only (stored 0 .. maxq): exporting a zero point 0 to v1
//     is an Error (AutoGPTQ's own pack writes -1 there and corrupts the neighbouring fields; use
//     ZeroFormat::v2), and importing a v1 field maxq (zero 2^bits) is an Error (nibble's codes are
//     0 .. maxq).
//   - Symmetry on import (ImportOptions::symmetry; set it from quantize_config.json "sym"):
//     detect = symmetric exactly when every zero point is 2^(bits-1); symmetric = the same, but a
//     zero point that is not the midpoint is an Error; asymmetric = keep the zero points.
//   - g_idx. Exporting: a GptqResult's g_idx (act_order) is carried through unchanged; a plain
//     tensor gets the trivial one. Importing: the canonical layout has group k / G, so from_gptq
//     refuses a non-trivial g_idx (desc_act) with an Error, and from_gptq_permuted returns the
//     tensor with its K columns sorted by group plus the permutation to apply to activations
//     (y = x[:, permutation] @ dequant(tensor)^T, as vLLM's GPTQ-Marlin does).
//   - Scales are copied bit for bit (ScaleT of both sides is the same type: fp16 as in
//     checkpoints, or float / bf16).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/convention.hpp"
#include "nibble/core/dtype.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/pack.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble {

template <class ScaleT>
struct GptqResult;  // solvers/gptq.hpp; only needed by the to_gptq overload that takes one

// What the int32-packed formats (GPTQ here, AWQ in formats/awq.hpp) share.
namespace formats {

// How an imported tensor's symmetry is decided (the checkpoints store zero points either way).
enum class Symmetry : uint8_t {
  detect,      // symmetric exactly when every zero point is 2^(bits-1)
  symmetric,   // symmetric; a zero point other than 2^(bits-1) is an Error
  asymmetric,  // keep the zero points as they are
};

struct ImportOptions {
  Symmetry symmetry = Symmetry::detect;
  // Recorded in the QuantConfig (how the tensor was made; it does not change its meaning). Its
  // zero_point_pad decides the unused slots of each row's last zero-point byte.
  ConventionId convention = ConventionId::olive;
};

namespace detail {

// Words are built as uint32_t (shifts of unsigned values are defined for every bit) and stored
// as the int32 torch writes; memcpy reinterprets the bits without C++17's implementation-defined
// out-of-range signed conversion.
inline int32_t to_int32(uint32_t word) {
  int32_t value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}
inline uint32_t to_uint32(int32_t word) {
  uint32_t value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}

// A checkpoint array: non-null, aligned, exactly `required` elements.
template <class T>
void check_array(const char* who, const char* name, const T* data, int64_t given,
                 int64_t required) {
  if (data == nullptr) nibble::detail::fail(ErrorCode::null_pointer, who, ": ", name, " is null");
  if (reinterpret_cast<std::uintptr_t>(data) % alignof(T) != 0) {
    nibble::detail::fail(ErrorCode::misaligned, who, ": ", name, " is not aligned to ", alignof(T),
                         " bytes");
  }
  if (given != required) {
    nibble::detail::fail(ErrorCode::shape_mismatch, who, ": ", name, " holds ", given,
                         " elements but the layout needs exactly ", required);
  }
}

// A tensor as a file describes it (e.g. io::TensorInfo's dtype and shape) against the layout.
inline void check_tensor(const char* who, const char* name, DType dtype,
                         const std::vector<int64_t>& shape, DType expected_dtype,
                         const std::vector<int64_t>& expected_shape) {
  if (dtype != expected_dtype) {
    nibble::detail::fail(ErrorCode::type_mismatch, who, ": ", name, " has dtype ", to_string(dtype),
                         " (", size_of(dtype), " bytes per element) but the layout needs ",
                         to_string(expected_dtype), " (", size_of(expected_dtype), " bytes)");
  }
  if (shape != expected_shape) {
    nibble::detail::fail(ErrorCode::shape_mismatch, who, ": ", name, " has shape ",
                         nibble::detail::format_dims(shape), " but the layout needs ",
                         nibble::detail::format_dims(expected_shape));
  }
}

template <class ScaleT>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<ScaleT, float>) {
    return DType::f32;
  } else if constexpr (std::is_same_v<ScaleT, fp16>) {
    return DType::f16;
  } else {
    static_assert(std::is_same_v<ScaleT, bf16>, "dtype_of: ScaleT is float, fp16 or bf16");
    return DType::bf16;
  }
}

// The canonical tensor must be one linear layer [N, K] in whole groups (no pad codes).
template <class ScaleT>
void check_exportable(const char* who, const QuantTensorView<ScaleT>& w) {
  if (w.shape().rank() != 2) {
    nibble::detail::fail(ErrorCode::shape_mismatch, who, ": weights have shape ", w.shape(),
                         " (expected [N, K], one linear layer; take expert e of [E, N, K] with "
                         "slice(e))");
  }
  const RowLayout& layout = w.layout();
  if (layout.padded_k != layout.k) {
    nibble::detail::fail(ErrorCode::unsupported, who, ": K = ", layout.k,
                         " is not a multiple of group_size ", layout.group_size,
                         "; the checkpoint format needs whole groups (K % group_size == 0): "
                         "quantize with a group size dividing K, or per-channel (group_size -1)");
  }
}

// Whether the zero points zero_at(n, g) make a symmetric tensor, per `symmetry`.
template <class ZeroAt>
bool resolve_symmetric(const char* who, Symmetry symmetry, int bits, int64_t n_outputs,
                       int64_t n_groups, ZeroAt&& zero_at) {
  if (symmetry == Symmetry::asymmetric) return false;
  const int mid = 1 << (bits - 1);
  for (int64_t n = 0; n < n_outputs; ++n) {
    for (int64_t g = 0; g < n_groups; ++g) {
      const int zero = zero_at(n, g);
      if (zero == mid) continue;
      if (symmetry == Symmetry::detect) return false;
      nibble::detail::fail(ErrorCode::invalid_argument, who,
                           ": Symmetry::symmetric but the zero point of output ", n, ", group ", g,
                           " is ", zero, " (expected 2^(bits-1) = ", mid,
                           " everywhere; use Symmetry::asymmetric or detect)");
    }
  }
  return true;
}

// A canonical [N, K] tensor (K % G == 0) from code_at(n, k), zero_at(n, g), scale_at(n, g).
template <class ScaleT, class CodeAt, class ZeroAt, class ScaleAt>
QuantTensor<ScaleT> make_canonical(int64_t n_outputs, int64_t k, const QuantConfig& config,
                                   CodeAt&& code_at, ZeroAt&& zero_at, ScaleAt&& scale_at) {
  QuantTensor<ScaleT> out(Shape{n_outputs, k}, config);
  const RowLayout& layout = out.layout();
  const int bits = config.bits;
  const int64_t zero_slots = layout.zero_row_bytes * (8 / bits);
  const auto zero_pad = static_cast<uint8_t>(
      config.convention_of().zero_point_pad == ZeroPointPad::mid ? 1 << (bits - 1) : 0);
  std::vector<uint8_t> codes(static_cast<std::size_t>(k));
  std::vector<uint8_t> zeros(static_cast<std::size_t>(zero_slots));
  for (int64_t n = 0; n < n_outputs; ++n) {
    for (int64_t col = 0; col < k; ++col)
      codes[static_cast<std::size_t>(col)] = static_cast<uint8_t>(code_at(n, col));
    std::fill(zeros.begin(), zeros.end(), zero_pad);
    for (int64_t g = 0; g < layout.n_groups; ++g) {
      out.scales()[static_cast<std::size_t>(n * layout.n_groups + g)] = scale_at(n, g);
      zeros[static_cast<std::size_t>(g)] = static_cast<uint8_t>(zero_at(n, g));
    }
    const auto pack = [&](auto packing) {
      using Packing = decltype(packing);
      Packing::pack_row(codes.data(), k, out.qweight().data() + n * layout.packed_row_bytes);
      if (!config.symmetric) {
        Packing::pack_row(zeros.data(), zero_slots, out.zeros().data() + n * layout.zero_row_bytes);
      }
    };
    with_bit_packing(bits, pack);
  }
  return out;
}

}  // namespace detail
}  // namespace formats

namespace gptq {

using formats::ImportOptions;
using formats::Symmetry;

// How zero points are stored in qzeros.
enum class ZeroFormat : uint8_t {
  v1,  // stored = zero - 1 (AutoGPTQ, checkpoint_format "gptq"; kernels add 1 after unpacking)
  v2,  // stored = zero (GPTQModel's internal "gptq_v2")
};

// The packing of one bit width: pack codes per int32 word, code t at bit offset bits * t.
template <int Bits>
struct Packing {
  static_assert(Bits == 2 || Bits == 4 || Bits == 8,
                "nibble::gptq::Packing: bits 2, 4 or 8 (3-bit GPTQ straddles int32 words and is "
                "not in nibble)");
  static constexpr int kBits = Bits;
  static constexpr int kCodesPerWord = 32 / Bits;       // "pack": 16, 8 or 4
  static constexpr uint32_t kMask = (1u << Bits) - 1u;  // maxq
  static_assert(kCodesPerWord * Bits == 32, "whole codes fill a word: no unused bits");
};

// Calls f(Packing<bits>{}) for a validated bit width.
template <class F>
decltype(auto) dispatch_bits(int bits, F&& f) {
  switch (bits) {
    case 2:
      return f(Packing<2>{});
    case 4:
      return f(Packing<4>{});
    default:
      return f(Packing<8>{});
  }
}

// The shapes a layer's GPTQ tensors have (quantize_config.json "bits", "group_size" and the
// checkpoint format, plus the layer's in/out features).
struct Layout {
  int64_t in_features = 0;   // K
  int64_t out_features = 0;  // N
  int bits = 4;              // 2, 4 or 8
  int64_t group_size = 128;  // > 0, or -1 (kPerChannel): one group of K
  ZeroFormat zero_format = ZeroFormat::v1;

  int codes_per_word() const { return 32 / bits; }
  int64_t group() const { return group_size == kPerChannel ? in_features : group_size; }
  int64_t n_groups() const { return in_features / group(); }
  std::vector<int64_t> qweight_shape() const {
    return {in_features / codes_per_word(), out_features};
  }
  std::vector<int64_t> qzeros_shape() const {
    return {n_groups(), out_features / codes_per_word()};
  }
  std::vector<int64_t> scales_shape() const { return {n_groups(), out_features}; }
  std::vector<int64_t> g_idx_shape() const { return {in_features}; }

  // Throws Error naming the field, its value, and what GPTQ needs.
  void validate() const {
    if (bits == 3) {
      nibble::detail::fail(ErrorCode::unsupported,
                           "GPTQ bits = 3 is not supported: 3-bit GPTQ packs 32 codes into 3 int32 "
                           "words and nibble has no 3-bit layout (expected 2, 4 or 8)");
    }
    if (bits != 2 && bits != 4 && bits != 8) {
      nibble::detail::fail(ErrorCode::invalid_argument, "GPTQ bits = ", bits,
                           " is not supported (expected 2, 4 or 8)");
    }
    if (group_size <= 0 && group_size != kPerChannel) {
      nibble::detail::fail(ErrorCode::invalid_argument, "GPTQ group_size = ", group_size,
                           " is invalid (expected > 0, or -1 for one group per row)");
    }
    if (in_features < 1 || out_features < 1) {
      nibble::detail::fail(ErrorCode::shape_mismatch, "GPTQ in_features = ", in_features,
                           ", out_features = ", out_features, " (expected >= 1)");
    }
    const int pack = codes_per_word();
    if (in_features % pack != 0) {
      nibble::detail::fail(ErrorCode::unsupported, "GPTQ in_features K = ", in_features,
                           " is not a multiple of ", pack, " (qweight packs 32 / bits = ", pack,
                           " codes of K into each int32 at ", bits, " bits)");
    }
    if (out_features % pack != 0) {
      nibble::detail::fail(ErrorCode::unsupported, "GPTQ out_features N = ", out_features,
                           " is not a multiple of ", pack, " (qzeros packs 32 / bits = ", pack,
                           " zero points of N into each int32 at ", bits, " bits)");
    }
    if (in_features % group() != 0) {
      nibble::detail::fail(ErrorCode::unsupported, "GPTQ in_features K = ", in_features,
                           " is not a multiple of group_size ", group_size,
                           " (GPTQ needs whole groups: K % group_size == 0)");
    }
  }

  // A tensor as a file describes it (e.g. a safetensors entry) against this layout: `name` is
  // "qweight", "qzeros", "scales" or "g_idx"; scales may be F16, F32 or BF16 (`scale_dtype`).
  void check_tensor(const char* name, DType dtype, const std::vector<int64_t>& shape,
                    DType scale_dtype = DType::f16) const {
    validate();
    const std::string which = name;
    if (which == "qweight") {
      formats::detail::check_tensor("GPTQ", name, dtype, shape, DType::i32, qweight_shape());
    } else if (which == "qzeros") {
      formats::detail::check_tensor("GPTQ", name, dtype, shape, DType::i32, qzeros_shape());
    } else if (which == "scales") {
      formats::detail::check_tensor("GPTQ", name, dtype, shape, scale_dtype, scales_shape());
    } else if (which == "g_idx") {
      formats::detail::check_tensor("GPTQ", name, dtype, shape, DType::i32, g_idx_shape());
    } else {
      nibble::detail::fail(ErrorCode::invalid_argument, "GPTQ: tensor name \"", which,
                           "\" (expected qweight, qzeros, scales or g_idx)");
    }
  }
};

// Borrowed checkpoint tensors (e.g. read from safetensors). g_idx may be null: trivial.
template <class ScaleT>
struct CheckpointView {
  static_assert(is_float_type_v<ScaleT>, "gptq::CheckpointView<ScaleT>: float, fp16 or bf16");
  Layout layout;
  const int32_t* qweight = nullptr;  // [K / pack, N]
  int64_t qweight_count = 0;
  const int32_t* qzeros = nullptr;  // [n_groups, N / pack]
  int64_t qzeros_count = 0;
  const ScaleT* scales = nullptr;  // [n_groups, N]
  int64_t scale_count = 0;
  const int32_t* g_idx = nullptr;  // [K] or null
  int64_t g_idx_count = 0;
};

// An owned checkpoint, as to_gptq writes it.
template <class ScaleT>
struct Checkpoint {
  static_assert(is_float_type_v<ScaleT>, "gptq::Checkpoint<ScaleT>: float, fp16 or bf16");
  Layout layout;
  bool sym = false;              // quantize_config.json "sym": the canonical tensor was symmetric
  bool desc_act = false;         // g_idx is not trivial (act_order)
  std::vector<int32_t> qweight;  // [K / pack, N]
  std::vector<int32_t> qzeros;   // [n_groups, N / pack]
  std::vector<ScaleT> scales;    // [n_groups, N]
  std::vector<int32_t> g_idx;    // [K], always present (trivial: k / G)

  CheckpointView<ScaleT> view() const {
    return {layout,
            qweight.data(),
            static_cast<int64_t>(qweight.size()),
            qzeros.data(),
            static_cast<int64_t>(qzeros.size()),
            scales.data(),
            static_cast<int64_t>(scales.size()),
            g_idx.empty() ? nullptr : g_idx.data(),
            static_cast<int64_t>(g_idx.size())};
  }
};

// A canonical tensor whose K columns were reordered: column j holds checkpoint input column
// permutation[j], so y = x[:, permutation] @ dequant(tensor)^T is the checkpoint's layer.
template <class ScaleT>
struct PermutedTensor {
  QuantTensor<ScaleT> tensor;
  std::vector<int64_t> permutation;  // [K]
};

namespace detail {

inline void check_g_idx(const char* who, const int32_t* g_idx, int64_t k, int64_t n_groups) {
  for (int64_t col = 0; col < k; ++col) {
    if (g_idx[col] < 0 || g_idx[col] >= n_groups) {
      nibble::detail::fail(ErrorCode::invalid_argument, who, ": g_idx[", col, "] = ", g_idx[col],
                           " (expected a group in [0, ", n_groups, "))");
    }
  }
}

template <class ScaleT>
Checkpoint<ScaleT> export_tensor(const QuantTensorView<ScaleT>& w, ZeroFormat zero_format,
                                 const int32_t* g_idx, int64_t g_idx_count) {
  const char* who = "to_gptq";
  formats::detail::check_exportable(who, w);
  const RowLayout& row_layout = w.layout();
  Checkpoint<ScaleT> out;
  out.layout = Layout{w.k(), w.rows(), w.bits(), w.config().group_size, zero_format};
  out.layout.validate();  // K % pack, N % pack (K % G was checked above)
  out.sym = w.config().symmetric;
  const int64_t k = w.k();
  const int64_t n_outputs = w.rows();
  const int64_t n_groups = row_layout.n_groups;
  const int64_t group = row_layout.group_size;

  out.g_idx.resize(static_cast<std::size_t>(k));
  if (g_idx != nullptr) {
    if (g_idx_count != k) {
      nibble::detail::fail(ErrorCode::shape_mismatch, who, ": g_idx holds ", g_idx_count,
                           " entries (expected K = ", k, ")");
    }
    check_g_idx(who, g_idx, k, n_groups);
    std::copy(g_idx, g_idx + k, out.g_idx.begin());
  } else {
    for (int64_t col = 0; col < k; ++col)
      out.g_idx[static_cast<std::size_t>(col)] = static_cast<int32_t>(col / group);
  }
  for (int64_t col = 0; col < k; ++col) {
    if (out.g_idx[static_cast<std::size_t>(col)] != col / group) out.desc_act = true;
  }

  dispatch_bits(w.bits(), [&](auto packing) {
    using P = decltype(packing);
    constexpr int pack = P::kCodesPerWord;
    // qweight[r, n]: code (n, r * pack + t) at bits [P::kBits * t, P::kBits * (t + 1)).
    out.qweight.assign(static_cast<std::size_t>(k / pack * n_outputs), 0);
    std::vector<uint8_t> codes(static_cast<std::size_t>(k));
    for (int64_t n = 0; n < n_outputs; ++n) {
      BitPacking<P::kBits>::unpack_row(w.qweight_row(n), k, codes.data());
      for (int64_t r = 0; r < k / pack; ++r) {
        uint32_t word = 0;
        for (int t = 0; t < pack; ++t)
          word |= uint32_t{codes[static_cast<std::size_t>(r * pack + t)]} << (P::kBits * t);
        out.qweight[static_cast<std::size_t>(r * n_outputs + n)] = formats::detail::to_int32(word);
      }
    }
    // qzeros[g, c]: stored zero of (c * pack + t, g) at P::kBits * t; v1 stores zero - 1.
    const int offset = zero_format == ZeroFormat::v1 ? 1 : 0;
    out.qzeros.assign(static_cast<std::size_t>(n_groups * (n_outputs / pack)), 0);
    for (int64_t g = 0; g < n_groups; ++g) {
      for (int64_t c = 0; c < n_outputs / pack; ++c) {
        uint32_t word = 0;
        for (int t = 0; t < pack; ++t) {
          const int64_t n = c * pack + t;
          const int zero = w.zero_point(n, g);
          if (zero < offset) {
            nibble::detail::fail(ErrorCode::unsupported, who, ": output ", n, ", group ", g,
                                 " has zero point ", zero,
                                 ", which GPTQ v1 cannot store (v1 stores zero - 1 in ", P::kBits,
                                 " bits, so zero points 1 .. ", 1 << P::kBits,
                                 "; AutoGPTQ itself overflows here): use ZeroFormat::v2");
          }
          word |= static_cast<uint32_t>(zero - offset) << (P::kBits * t);
        }
        out.qzeros[static_cast<std::size_t>(g * (n_outputs / pack) + c)] =
            formats::detail::to_int32(word);
      }
    }
  });

  out.scales.resize(static_cast<std::size_t>(n_groups * n_outputs));
  for (int64_t n = 0; n < n_outputs; ++n) {
    const ScaleT* row = w.scale_row(n);
    for (int64_t g = 0; g < n_groups; ++g)
      out.scales[static_cast<std::size_t>(g * n_outputs + n)] = row[g];
  }
  return out;
}

// The canonical tensor of `in` with canonical column j taken from checkpoint column
// column_of[j] (identity when null); the caller has checked that column column_of[j] is in
// group j / G.
template <class ScaleT>
QuantTensor<ScaleT> import_tensor(const char* who, const CheckpointView<ScaleT>& in,
                                  const ImportOptions& options, const int64_t* column_of) {
  const Layout& layout = in.layout;
  const int64_t k = layout.in_features;
  const int64_t n_outputs = layout.out_features;
  const int64_t n_groups = layout.n_groups();
  return dispatch_bits(layout.bits, [&](auto packing) {
    using P = decltype(packing);
    constexpr int pack = P::kCodesPerWord;
    const int64_t zero_words = n_outputs / pack;
    // Field t of a word: shift it down to bits [0, kBits) and mask off the fields above.
    const auto field = [](int32_t word, int64_t t) {
      return static_cast<int>((formats::detail::to_uint32(word) >> (P::kBits * t)) & P::kMask);
    };
    const int offset = layout.zero_format == ZeroFormat::v1 ? 1 : 0;
    std::vector<int> zeros(static_cast<std::size_t>(n_outputs * n_groups));  // [n][g]
    for (int64_t g = 0; g < n_groups; ++g) {
      for (int64_t n = 0; n < n_outputs; ++n) {
        const int zero = field(in.qzeros[g * zero_words + n / pack], n % pack) + offset;
        if (zero > static_cast<int>(P::kMask)) {
          nibble::detail::fail(ErrorCode::unsupported, who, ": qzeros field of output ", n,
                               ", group ", g, " is ", zero - offset, ", a v1 zero point of ", zero,
                               ", outside nibble's codes 0 .. ", P::kMask, " at ", P::kBits,
                               " bits");
        }
        zeros[static_cast<std::size_t>(n * n_groups + g)] = zero;
      }
    }
    const auto zero_at = [&](int64_t n, int64_t g) {
      return zeros[static_cast<std::size_t>(n * n_groups + g)];
    };
    QuantConfig config{layout.bits, layout.group_size, false, options.convention};
    config.symmetric = formats::detail::resolve_symmetric(who, options.symmetry, layout.bits,
                                                          n_outputs, n_groups, zero_at);
    return formats::detail::make_canonical<ScaleT>(
        n_outputs, k, config,
        [&](int64_t n, int64_t col) {
          const int64_t source = column_of == nullptr ? col : column_of[col];
          return field(in.qweight[(source / pack) * n_outputs + n], source % pack);
        },
        zero_at, [&](int64_t n, int64_t g) { return in.scales[g * n_outputs + n]; });
  });
}

template <class ScaleT>
void check_view(const char* who, const CheckpointView<ScaleT>& in) {
  const Layout& layout = in.layout;
  layout.validate();
  const int pack = layout.codes_per_word();
  formats::detail::check_array(who, "qweight", in.qweight, in.qweight_count,
                               layout.in_features / pack * layout.out_features);
  formats::detail::check_array(who, "qzeros", in.qzeros, in.qzeros_count,
                               layout.n_groups() * (layout.out_features / pack));
  formats::detail::check_array(who, "scales", in.scales, in.scale_count,
                               layout.n_groups() * layout.out_features);
  if (in.g_idx != nullptr) {
    formats::detail::check_array(who, "g_idx", in.g_idx, in.g_idx_count, layout.in_features);
    check_g_idx(who, in.g_idx, layout.in_features, layout.n_groups());
  }
}

}  // namespace detail

// Canonical [N, K] -> GPTQ checkpoint tensors. `g_idx` (K entries, optional): the group of each
// input column, for tensors whose codes were grouped by act-order (see GptqResult).
template <class ScaleT>
Checkpoint<ScaleT> to_gptq(const QuantTensorView<ScaleT>& w,
                           ZeroFormat zero_format = ZeroFormat::v1,
                           const std::vector<int32_t>& g_idx = {}) {
  return detail::export_tensor(w, zero_format, g_idx.empty() ? nullptr : g_idx.data(),
                               static_cast<int64_t>(g_idx.size()));
}

// A GptqResult [N, K] (from gptq_quantize; include solvers/gptq.hpp) -> GPTQ checkpoint tensors,
// its g_idx carried through (trivial when act_order did not change group membership).
template <class ScaleT>
Checkpoint<ScaleT> to_gptq(const GptqResult<ScaleT>& result,
                           ZeroFormat zero_format = ZeroFormat::v1) {
  return to_gptq(result.tensor.view(), zero_format, result.g_idx);
}

// GPTQ checkpoint tensors -> canonical [N, K]. A non-trivial g_idx (desc_act) is an Error: the
// canonical layout has column k in group k / G; use from_gptq_permuted for those checkpoints.
template <class ScaleT>
QuantTensor<ScaleT> from_gptq(const CheckpointView<ScaleT>& in, const ImportOptions& options = {}) {
  const char* who = "from_gptq";
  detail::check_view(who, in);
  if (in.g_idx != nullptr) {
    const int64_t group = in.layout.group();
    for (int64_t col = 0; col < in.layout.in_features; ++col) {
      if (in.g_idx[col] != col / group) {
        nibble::detail::fail(
            ErrorCode::unsupported, who, ": g_idx[", col, "] = ", in.g_idx[col],
            " but the canonical layout needs column k in group k / group_size = ", col / group,
            " (an act-order / desc_act checkpoint): use from_gptq_permuted, which "
            "reorders K and returns the permutation to apply to activations");
      }
    }
  }
  return detail::import_tensor(who, in, options, nullptr);
}

// GPTQ checkpoint tensors with any g_idx -> canonical [N, K] with K sorted by group (stable:
// columns of one group keep their order) and that permutation. Each group must hold exactly
// group_size columns (true of every act-order checkpoint: GPTQ assigns groups by sweep position).
template <class ScaleT>
PermutedTensor<ScaleT> from_gptq_permuted(const CheckpointView<ScaleT>& in,
                                          const ImportOptions& options = {}) {
  const char* who = "from_gptq_permuted";
  detail::check_view(who, in);
  const int64_t k = in.layout.in_features;
  const int64_t group = in.layout.group();
  std::vector<int64_t> permutation(static_cast<std::size_t>(k));
  std::iota(permutation.begin(), permutation.end(), int64_t{0});
  if (in.g_idx != nullptr) {
    std::vector<int64_t> members(static_cast<std::size_t>(in.layout.n_groups()), 0);
    for (int64_t col = 0; col < k; ++col)
      ++members[static_cast<std::size_t>(in.g_idx[col])];
    for (std::size_t g = 0; g < members.size(); ++g) {
      if (members[g] != group) {
        nibble::detail::fail(ErrorCode::unsupported, who, ": g_idx puts ", members[g],
                             " input columns in group ", g,
                             " (expected exactly group_size = ", group,
                             " per group, so that sorting K by group gives groups of ", group,
                             " consecutive columns)");
      }
    }
    std::stable_sort(permutation.begin(), permutation.end(),
                     [&](int64_t a, int64_t b) { return in.g_idx[a] < in.g_idx[b]; });
  }
  PermutedTensor<ScaleT> out{detail::import_tensor(who, in, options, permutation.data()), {}};
  out.permutation = std::move(permutation);
  return out;
}

}  // namespace gptq
}  // namespace nibble
