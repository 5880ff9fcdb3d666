// TensorRT-LLM W4A16 (INT4-AWQ) and W4A8 (W4A8-AWQ: INT4 weights, FP8 e4m3 activations):
//   (a) the checkpoint tensors NVIDIA ModelOpt exports for them <-> nibble's canonical layout,
//       exact in both directions;
//   (b) the W4A8 scale folding TensorRT-LLM applies when it loads such a checkpoint;
//   (c) TensorRT-LLM's weight preprocessing for its mixed-input (fpA_intB) CUTLASS GEMM, and its
//       inverse.
// Sources (read, not copied): ModelOpt 0.47.0 modelopt/torch/export/quant_utils.py
// (pack_int4_in_uint8, to_quantized_weight, get_weight_scaling_factor(_2),
// get_activation_scaling_factor, TensorQuantizer.maxbound), postprocess.py (postprocess_tensors);
// TensorRT-LLM tensorrt_llm/models/modeling_utils.py (preprocess_perlayer_weights) and
// cpp/tensorrt_llm/kernels/cutlass_kernels/cutlass_preprocessors.cpp (commit b35ac1b6) with
// cutlass_extensions/gemm/kernel/mixed_gemm_B_layout.h (LayoutDetailsB<TypeA, TypeB, Arch>).
//
// ---- (a) ModelOpt checkpoint, one linear layer (or [E, N, K] experts); K = in, N = out
// ------------
//   weight                    uint8 [..., N / 2, K]  signed int4 q = code - 8 in -8 .. 7, packed
//                                                    along N (the OUTPUT dim): byte (i, k) =
//                                                    (q[2i, k] & 0xF) | (q[2i + 1, k] & 0xF) << 4
//                                                    (TensorRT-LLM checkpoints view it as int8)
//   weights_scaling_factor    float32 [..., N, K / G] per-group scale = amax / 7 (ModelOpt's int4
//                                                    maxbound 2^(4-1) - 1); w = q * scale
//   G = block_size (awq_block_size), K % G == 0 (ModelOpt refuses partial blocks), N even.
// nibble's symmetric 4-bit code u (0 .. 15, implied zero point 8) is q + 8, so the nibble is
// u ^ 8 (adding 8 modulo 16 flips the top bit of a 4-bit two's complement value) and the
// canonical scale is the ModelOpt scale: (u - 8) * s = q * s, bit for bit.
//
// ---- (b) W4A8-AWQ folding (preprocess_perlayer_weights, quant_algo W4A8_AWQ)
// ----------------------
//   extra tensors: weights_scaling_factor_2 float32 scalar = amax(w) / 448 (the FP8 quantizer of
//   ModelOpt's SequentialQuantizer [int4 block, fp8 tensor]); activation_scaling_factor float32
//   scalar = amax(x * pre_quant) / 448; prequant_scaling_factor [K] in the model dtype (AWQ
//   smoothing; postprocess_tensors casts it). TensorRT-LLM then, in this order:
//     wsf   = transpose(wsf).to(model dtype)           [K / G, N]
//     wsf  /= weights_scaling_factor_2                  (in place: stays in the model dtype)
//     wsf   = wsf.to(float16).view(model dtype)         (so the GEMM always reads fp16 bits)
//     pre  /= activation_scaling_factor                 (in place, model dtype)   [1, K]
//     alpha = activation_scaling_factor * weights_scaling_factor_2   (float32)
//   Run time: x8 = fp8(x * pre) saturating; w8 = fp8(q * wsf); y = alpha * sum_k x8 * w8. Since
//   |q| <= 7 for ModelOpt's own rounding (round(w / (amax_g / 7)) never exceeds 7) and
//   amax_g <= amax(w), |q * wsf| <= 7 * 448 * amax_g / (7 * amax(w)) <= 448: the dequantized
//   weight fits FP8 exactly at the top of its range, which is why wsf2 is amax / 448.
//
// ---- (c) preprocess_weights_for_mixed_gemm (int4: QuantType W4_A16 and W4_AFP8)
// ------------------- Input: row-major [K, N] (or [E, K, N]) signed int4 packed along N, byte (k,
// j) = columns 2j (low nibble), 2j + 1 (high): ModelOpt's weight transposed (TensorRT-LLM passes
// param.transpose(-1, -2)). Steps, each on every expert matrix; "word" = 4 bytes = 8 nibbles, read
// little-endian:
//   1 permute_rows (LDSM; uses_imma_ldsm, every arch here): in each group of 32 rows of K, output
//     row r = input row map[r] (whole rows move). W4_A16 map = 2a + (b % 2) + 8 (b / 2) and
//     W4_AFP8 map = 4a + (b % 4) + 16 (b / 4) for r = 8a + b: the published tables
//       W4_A16  0 1 8 9 16 17 24 25  2 3 10 11 18 19 26 27  4 5 12 13 20 21 28 29  6 7 14 15 ...
//       W4_AFP8 0 1 2 3 16 17 18 19  4 5 6 7 20 21 22 23  8 9 10 11 24 25 26 27  12 13 14 15 ...
//     It puts, after ldmatrix (which moves 16-bit rows), the k values each thread's mma fragment
//     needs into that thread's registers despite the 4-bit width. Needs K % 32, N % 8.
//   2 subbyte_transpose (layout column-major): [K, N] -> [N, K]: output row n holds column n's K
//     nibbles, byte n * K / 2 + k / 2, nibble k % 2. TensorRT-LLM requires K / 2 and N / 2 bytes
//     to be multiples of 32: K % 64, N % 64.
//   3 interleave_column_major (columns_interleaved > 1 and arch != 90): with R = ThreadblockK =
//     128 * 8 / bits(activation) (64 for fp16, 128 for fp8) K rows per tile and I = 256 / R
//     columns (4, 2), take the columns in sets of I; within a set, for each R-row K tile t, write
//     the R / 8 words of tile t of each column, one column after the other. Word v of column n is
//     written at
//     (n / I) * (K / 8) * I + (v / (R / 8)) * (R / 8) * I + (n % I) * (R / 8) + v % (R / 8).
//     One 128-byte line then holds one K tile of I columns. Needs K % R.
//   4 add_bias_and_interleave_int4s (every arch in this TensorRT-LLM version): every nibble q ->
//     q + 8 (unsigned, = nibble ^ 8), then each word's nibbles [e7 .. e0] -> [e7 e5 e3 e1 e6 e4
//     e2 e0]: output slot d holds source nibble [0, 2, 4, 6, 1, 3, 5, 7][d]. The kernel then
//     turns e0, e2 (or e1, e3) into two fp16 values with one lop3 / prmt against 0x6400 magic.
// Arch: TensorRT-LLM sm75 .. sm89, sm100+ and sm120 (forced to sm80) all take the Sm80 branch
// (GemmArch::sm80); sm90 skips step 3 (GemmArch::sm90); sm90 MoE (force_interleave) is sm80.
// Older TensorRT-LLM (e.g. commit 05316d33) differed on sm90: its LayoutDetailsB<Sm90> was plain
// column-major (no step 1 or 3) and step 4 ran only for 70 <= arch < 90; that layout is not
// produced here.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/convention.hpp"
#include "nibble/core/dtype.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/float8.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/pack.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble::trtllm {

// ================================ (a) ModelOpt INT4 checkpoint ===================================

// The shapes of one layer's (or one stack of experts') ModelOpt INT4-AWQ / W4A8-AWQ tensors.
struct Int4Layout {
  std::vector<int64_t> batch;  // leading dimensions: {} for a linear layer, {E} for experts
  int64_t out_features = 0;    // N, even
  int64_t in_features = 0;     // K, a multiple of block_size
  int64_t block_size = 128;    // G (awq_block_size)

  int64_t matrices() const {
    int64_t count = 1;
    for (int64_t dim : batch)
      count = detail::checked_mul(count, dim, "Int4Layout batch");
    return count;
  }
  int64_t n_groups() const { return in_features / block_size; }
  std::vector<int64_t> weight_shape() const { return with_batch({out_features / 2, in_features}); }
  std::vector<int64_t> scale_shape() const { return with_batch({out_features, n_groups()}); }
  int64_t weight_bytes() const { return matrices() * (out_features / 2) * in_features; }
  int64_t scale_count() const { return matrices() * out_features * n_groups(); }

  // Throws Error naming the field, its value and what ModelOpt needs.
  void validate() const {
    for (std::size_t axis = 0; axis < batch.size(); ++axis) {
      if (batch[axis] < 1) {
        detail::fail(ErrorCode::shape_mismatch, "ModelOpt INT4: batch dimension ", axis, " is ",
                     batch[axis], " (expected >= 1)");
      }
    }
    if (in_features < 1 || out_features < 1) {
      detail::fail(ErrorCode::shape_mismatch, "ModelOpt INT4: in_features K = ", in_features,
                   ", out_features N = ", out_features, " (expected >= 1)");
    }
    if (out_features % 2 != 0) {
      detail::fail(ErrorCode::unsupported, "ModelOpt INT4: out_features N = ", out_features,
                   " is odd (expected an even N: pack_int4_in_uint8 puts outputs 2i and 2i + 1 in "
                   "one byte)");
    }
    if (block_size < 1) {
      detail::fail(ErrorCode::invalid_argument, "ModelOpt INT4: block_size = ", block_size,
                   " (expected a positive block size; ModelOpt INT4 is always blockwise)");
    }
    if (in_features % block_size != 0) {
      detail::fail(ErrorCode::unsupported, "ModelOpt INT4: in_features K = ", in_features,
                   " is not a multiple of block_size ", block_size,
                   " (ModelOpt does not pack partial blocks: K % block_size == 0)");
    }
    detail::checked_bytes(detail::checked_mul(matrices(), out_features * in_features, "weights"), 1,
                          "ModelOpt INT4 weights");
  }

  // A tensor as a file describes it (e.g. safetensors) against this layout: "weight" (U8 or I8)
  // or "weights_scaling_factor" (F32).
  void check_tensor(const char* name, DType dtype, const std::vector<int64_t>& shape) const {
    validate();
    const std::string which = name;
    if (which == "weight") {
      if (dtype != DType::u8 && dtype != DType::i8) {
        detail::fail(ErrorCode::type_mismatch, "ModelOpt INT4: weight has dtype ", to_string(dtype),
                     " (expected U8, or I8 as TensorRT-LLM checkpoints store it)");
      }
      check_shape(name, shape, weight_shape());
    } else if (which == "weights_scaling_factor") {
      if (dtype != DType::f32) {
        detail::fail(ErrorCode::type_mismatch, "ModelOpt INT4: weights_scaling_factor has dtype ",
                     to_string(dtype), " (expected F32: amax.float() / 7)");
      }
      check_shape(name, shape, scale_shape());
    } else {
      detail::fail(ErrorCode::invalid_argument, "ModelOpt INT4: tensor name \"", which,
                   "\" (expected weight or weights_scaling_factor)");
    }
  }

 private:
  std::vector<int64_t> with_batch(std::initializer_list<int64_t> tail) const {
    std::vector<int64_t> shape = batch;
    shape.insert(shape.end(), tail.begin(), tail.end());
    return shape;
  }
  static void check_shape(const char* name, const std::vector<int64_t>& shape,
                          const std::vector<int64_t>& expected) {
    if (shape != expected) {
      detail::fail(ErrorCode::shape_mismatch, "ModelOpt INT4: ", name, " has shape ",
                   detail::format_dims(shape), " but the layout needs ",
                   detail::format_dims(expected));
    }
  }
};

// Borrowed ModelOpt tensors (e.g. read from safetensors).
struct Int4CheckpointView {
  Int4Layout layout;
  const uint8_t* weight = nullptr;  // [..., N / 2, K]
  int64_t weight_bytes = 0;
  const float* weights_scaling_factor = nullptr;  // [..., N, K / G]
  int64_t scale_count = 0;
};

// Owned ModelOpt tensors, as to_modelopt writes them.
struct Int4Checkpoint {
  Int4Layout layout;
  std::vector<uint8_t> weight;                // [..., N / 2, K]
  std::vector<float> weights_scaling_factor;  // [..., N, K / G]

  Int4CheckpointView view() const {
    return {layout, weight.data(), static_cast<int64_t>(weight.size()),
            weights_scaling_factor.data(), static_cast<int64_t>(weights_scaling_factor.size())};
  }
};

namespace detail {

using nibble::detail::fail;

// A checkpoint array: non-null, aligned, exactly `required` elements.
template <class T>
void check_array(const char* who, const char* name, const T* data, int64_t given,
                 int64_t required) {
  if (data == nullptr) fail(ErrorCode::null_pointer, who, ": ", name, " is null");
  if (reinterpret_cast<std::uintptr_t>(data) % alignof(T) != 0) {
    fail(ErrorCode::misaligned, who, ": ", name, " is not aligned to ", alignof(T), " bytes");
  }
  if (given != required) {
    fail(ErrorCode::shape_mismatch, who, ": ", name, " holds ", given,
         " elements but the layout needs exactly ", required);
  }
}

// nibble code u (0 .. 15, zero point 8) <-> the 4-bit two's complement pattern of q = u - 8.
inline uint8_t signed_nibble_of_code(unsigned code) {
  return static_cast<uint8_t>((code ^ 8u) & 0xfu);
}
inline uint8_t code_of_signed_nibble(unsigned nibble) {
  return static_cast<uint8_t>((nibble ^ 8u) & 0xfu);
}

// ModelOpt scales are amax / 7 > 0 (get_scaling_factor asserts it; all-zero blocks get 1.0);
// TensorRT-LLM multiplies q by the scale with no sign handling. nibble accepts 0 too (a block of
// zeros), refuses negative and non-finite scales.
inline void check_scale(const char* who, float scale, int64_t matrix, int64_t n, int64_t g) {
  if (!std::isfinite(scale) || scale < 0.0f) {
    fail(ErrorCode::unsupported, who, ": scale of matrix ", matrix, ", output ", n, ", group ", g,
         " is ", scale,
         " (expected a finite scale >= 0: ModelOpt's INT4 scales are amax / 7 and TensorRT-LLM "
         "has no sign flip; a negative canonical scale cannot be expressed)");
  }
}

template <class ScaleT>
constexpr const char* scale_type_name() {
  if constexpr (std::is_same_v<ScaleT, float>) {
    return "float32";
  } else if constexpr (std::is_same_v<ScaleT, fp16>) {
    return "float16";
  } else {
    return "bfloat16";
  }
}

}  // namespace detail

// Canonical symmetric 4-bit [N, K] or [E, N, K] -> ModelOpt INT4 tensors (byte exact: the codes
// and the float32 value of every scale). Refuses asymmetric or non-4-bit tensors, K not a
// multiple of the group size, odd N, and negative / non-finite scales, each with an Error.
template <class ScaleT>
Int4Checkpoint to_modelopt(const QuantTensorView<ScaleT>& w) {
  const char* who = "trtllm::to_modelopt";
  const QuantConfig& config = w.config();
  if (config.bits != 4) {
    detail::fail(ErrorCode::unsupported, who, ": bits = ", config.bits,
                 " (expected 4: ModelOpt INT4-AWQ / W4A8-AWQ weights are int4)");
  }
  if (!config.symmetric) {
    detail::fail(ErrorCode::unsupported, who,
                 ": the tensor is asymmetric (expected a symmetric 4-bit tensor: ModelOpt INT4 "
                 "stores no zero points; codes are q + 8 with q in -8 .. 7)");
  }
  if (w.shape().rank() != 2 && w.shape().rank() != 3) {
    detail::fail(ErrorCode::shape_mismatch, who, ": weights have shape ", w.shape(),
                 " (expected [N, K] or [E, N, K], as pack_int4_in_uint8 takes)");
  }
  const RowLayout& row_layout = w.layout();
  if (row_layout.padded_k != row_layout.k) {
    detail::fail(ErrorCode::unsupported, who, ": K = ", row_layout.k,
                 " is not a multiple of group_size ", row_layout.group_size,
                 " (ModelOpt needs whole blocks: K % block_size == 0)");
  }
  Int4Checkpoint out;
  const int rank = w.shape().rank();
  if (rank == 3) out.layout.batch = {w.shape()[0]};
  out.layout.out_features = w.shape()[rank - 2];
  out.layout.in_features = w.k();
  out.layout.block_size = row_layout.group_size;
  out.layout.validate();  // N even
  const int64_t n_outputs = out.layout.out_features;
  const int64_t k = out.layout.in_features;
  const int64_t n_groups = out.layout.n_groups();
  out.weight.assign(static_cast<std::size_t>(out.layout.weight_bytes()), 0);
  out.weights_scaling_factor.resize(static_cast<std::size_t>(out.layout.scale_count()));
  std::vector<uint8_t> even(static_cast<std::size_t>(k));
  std::vector<uint8_t> odd(static_cast<std::size_t>(k));
  for (int64_t e = 0; e < out.layout.matrices(); ++e) {
    for (int64_t i = 0; i < n_outputs / 2; ++i) {
      const int64_t row = e * n_outputs + 2 * i;  // canonical rows 2i and 2i + 1 of matrix e
      BitPacking<4>::unpack_row(w.qweight_row(row), k, even.data());
      BitPacking<4>::unpack_row(w.qweight_row(row + 1), k, odd.data());
      uint8_t* dst = out.weight.data() + (e * (n_outputs / 2) + i) * k;
      for (int64_t col = 0; col < k; ++col) {
        const auto c = static_cast<std::size_t>(col);
        dst[col] = static_cast<uint8_t>(detail::signed_nibble_of_code(even[c]) |
                                        detail::signed_nibble_of_code(odd[c]) << 4);
      }
    }
    for (int64_t n = 0; n < n_outputs; ++n) {
      for (int64_t g = 0; g < n_groups; ++g) {
        const float scale = w.scale(e * n_outputs + n, g);
        detail::check_scale(who, scale, e, n, g);
        out.weights_scaling_factor[static_cast<std::size_t>((e * n_outputs + n) * n_groups + g)] =
            scale;
      }
    }
  }
  return out;
}

// ModelOpt INT4 tensors -> canonical symmetric 4-bit [N, K] (or [E, N, K]) with group_size =
// block_size and scales in ScaleT. A float32 scale that ScaleT cannot hold exactly is an Error
// (use ScaleT = float for any checkpoint). `convention` is recorded in the QuantConfig.
template <class ScaleT>
QuantTensor<ScaleT> from_modelopt(const Int4CheckpointView& in,
                                  ConventionId convention = ConventionId::olive) {
  static_assert(is_float_type_v<ScaleT>, "trtllm::from_modelopt<ScaleT>: float, fp16 or bf16");
  const char* who = "trtllm::from_modelopt";
  const Int4Layout& layout = in.layout;
  layout.validate();
  detail::check_array(who, "weight", in.weight, in.weight_bytes, layout.weight_bytes());
  detail::check_array(who, "weights_scaling_factor", in.weights_scaling_factor, in.scale_count,
                      layout.scale_count());
  const int64_t n_outputs = layout.out_features;
  const int64_t k = layout.in_features;
  const int64_t n_groups = layout.n_groups();
  std::vector<int64_t> dims = layout.batch;
  dims.push_back(n_outputs);
  dims.push_back(k);
  QuantTensor<ScaleT> out(Shape(dims), QuantConfig{4, layout.block_size, true, convention});
  const int64_t row_bytes = out.layout().packed_row_bytes;
  std::vector<uint8_t> codes(static_cast<std::size_t>(k));
  for (int64_t e = 0; e < layout.matrices(); ++e) {
    for (int64_t n = 0; n < n_outputs; ++n) {
      const uint8_t* src = in.weight + (e * (n_outputs / 2) + n / 2) * k;
      const unsigned shift = static_cast<unsigned>(n % 2) * 4u;
      for (int64_t col = 0; col < k; ++col)
        codes[static_cast<std::size_t>(col)] = detail::code_of_signed_nibble(src[col] >> shift);
      BitPacking<4>::pack_row(codes.data(), k,
                              out.qweight().data() + (e * n_outputs + n) * row_bytes);
      for (int64_t g = 0; g < n_groups; ++g) {
        const std::size_t at = static_cast<std::size_t>((e * n_outputs + n) * n_groups + g);
        const float scale = in.weights_scaling_factor[at];
        detail::check_scale(who, scale, e, n, g);
        const ScaleT stored = from_float<ScaleT>(scale);
        if (nibble::detail::float_bits(to_float(stored)) != nibble::detail::float_bits(scale)) {
          detail::fail(ErrorCode::unsupported, who, ": weights_scaling_factor of matrix ", e,
                       ", output ", n, ", group ", g, " is ", scale, " (float32 bits 0x", std::hex,
                       nibble::detail::float_bits(scale), std::dec, "), which ",
                       detail::scale_type_name<ScaleT>(),
                       " cannot hold exactly (expected a value representable in the scale type; "
                       "import with ScaleT = float to keep every checkpoint scale)");
        }
        out.scales()[at] = stored;
      }
    }
  }
  return out;
}

// ModelOpt weight [..., N / 2, K] -> the preprocessor's row-major [..., K, N] int4 input
// ([..., K, N / 2] bytes): a byte transpose (TensorRT-LLM: param.transpose(-1, -2)).
inline std::vector<uint8_t> mixed_gemm_input(const Int4CheckpointView& in) {
  in.layout.validate();
  detail::check_array("trtllm::mixed_gemm_input", "weight", in.weight, in.weight_bytes,
                      in.layout.weight_bytes());
  const int64_t half_n = in.layout.out_features / 2;
  const int64_t k = in.layout.in_features;
  std::vector<uint8_t> out(static_cast<std::size_t>(in.layout.weight_bytes()));
  for (int64_t e = 0; e < in.layout.matrices(); ++e) {
    const uint8_t* src = in.weight + e * half_n * k;
    uint8_t* dst = out.data() + e * half_n * k;
    for (int64_t i = 0; i < half_n; ++i)
      for (int64_t col = 0; col < k; ++col)
        dst[col * half_n + i] = src[i * k + col];
  }
  return out;
}

// ================================ (b) W4A8 scale folding =========================================

// One W4A8-AWQ layer's scales as ModelOpt exports them. ModelT (fp16 or bf16) is the model dtype
// (config.json "dtype"): TensorRT-LLM does its arithmetic on the scales in it.
template <class ModelT>
struct W4A8ScalesView {
  Int4Layout layout;                              // batch must be empty (one layer)
  const float* weights_scaling_factor = nullptr;  // [N, K / G] float32
  int64_t scale_count = 0;
  float weights_scaling_factor_2 = 0.0f;            // amax(w) / 448
  float activation_scaling_factor = 0.0f;           // amax(x * pre) / 448
  const ModelT* prequant_scaling_factor = nullptr;  // [K], model dtype
  int64_t prequant_count = 0;
};

// What TensorRT-LLM's engine gets after folding (preprocess_perlayer_weights, W4A8_AWQ).
template <class ModelT>
struct W4A8Folded {
  int64_t in_features = 0;                      // K
  int64_t out_features = 0;                     // N
  int64_t block_size = 0;                       // G
  std::vector<fp16> weights_scaling_factor;     // [K / G, N]: fp16 bits (viewed as ModelT there)
  std::vector<ModelT> prequant_scaling_factor;  // [1, K]: pre / activation_scaling_factor
  float alpha = 0.0f;                           // activation_scaling_factor * wsf2
  float activation_scaling_factor = 0.0f;       // kept as is (TensorRT-LLM re-adds it)
};

// Folds as preprocess_perlayer_weights does, rounding exactly where torch rounds:
//   wsf'[g, n] = fp16(ModelT(float(ModelT(wsf[n, g])) / wsf2))
//   pre'[k]    = ModelT(float(pre[k]) / act)
//   alpha      = act * wsf2 (float32)
// Errors: non-positive or non-finite wsf2 / act, non-finite inputs, results that overflow.
template <class ModelT>
W4A8Folded<ModelT> fold_w4a8(const W4A8ScalesView<ModelT>& in) {
  static_assert(std::is_same_v<ModelT, fp16> || std::is_same_v<ModelT, bf16>,
                "trtllm::fold_w4a8<ModelT>: the model dtype is fp16 or bf16");
  const char* who = "trtllm::fold_w4a8";
  const Int4Layout& layout = in.layout;
  layout.validate();
  if (!layout.batch.empty()) {
    detail::fail(ErrorCode::shape_mismatch, who, ": batch dimensions ",
                 nibble::detail::format_dims(layout.batch),
                 " (expected one layer: fold each expert with its own scalars)");
  }
  detail::check_array(who, "weights_scaling_factor", in.weights_scaling_factor, in.scale_count,
                      layout.scale_count());
  detail::check_array(who, "prequant_scaling_factor", in.prequant_scaling_factor, in.prequant_count,
                      layout.in_features);
  const auto check_positive = [&](const char* name, float value) {
    if (!std::isfinite(value) || value <= 0.0f) {
      detail::fail(ErrorCode::invalid_argument, who, ": ", name, " = ", value,
                   " (expected a finite value > 0: ModelOpt writes amax / 448 and asserts > 0)");
    }
  };
  check_positive("weights_scaling_factor_2", in.weights_scaling_factor_2);
  check_positive("activation_scaling_factor", in.activation_scaling_factor);
  const int64_t n_outputs = layout.out_features;
  const int64_t n_groups = layout.n_groups();
  W4A8Folded<ModelT> out;
  out.in_features = layout.in_features;
  out.out_features = n_outputs;
  out.block_size = layout.block_size;
  out.weights_scaling_factor.resize(static_cast<std::size_t>(n_groups * n_outputs));
  for (int64_t n = 0; n < n_outputs; ++n) {
    for (int64_t g = 0; g < n_groups; ++g) {
      const float scale = in.weights_scaling_factor[n * n_groups + g];
      const float in_model = to_float(from_float<ModelT>(scale));
      const float quotient = to_float(from_float<ModelT>(in_model / in.weights_scaling_factor_2));
      const fp16 folded = from_float<fp16>(quotient);
      if (!std::isfinite(scale) || !std::isfinite(to_float(folded))) {
        detail::fail(ErrorCode::non_finite, who, ": weights_scaling_factor[", n, ", ", g,
                     "] = ", scale, " / weights_scaling_factor_2 ", in.weights_scaling_factor_2,
                     " is not a finite float16 (expected |wsf / wsf2| <= 65504; ModelOpt's "
                     "wsf2 = amax / 448 keeps it <= 64)");
      }
      out.weights_scaling_factor[static_cast<std::size_t>(g * n_outputs + n)] = folded;
    }
  }
  out.prequant_scaling_factor.resize(static_cast<std::size_t>(layout.in_features));
  for (int64_t col = 0; col < layout.in_features; ++col) {
    const float pre = to_float(in.prequant_scaling_factor[col]);
    const ModelT folded = from_float<ModelT>(pre / in.activation_scaling_factor);
    if (!std::isfinite(pre) || !std::isfinite(to_float(folded))) {
      detail::fail(ErrorCode::non_finite, who, ": prequant_scaling_factor[", col, "] = ", pre,
                   " / activation_scaling_factor ", in.activation_scaling_factor,
                   " is not finite in the model dtype");
    }
    out.prequant_scaling_factor[static_cast<std::size_t>(col)] = folded;
  }
  out.alpha = in.activation_scaling_factor * in.weights_scaling_factor_2;
  out.activation_scaling_factor = in.activation_scaling_factor;
  return out;
}

// ====================== (c) preprocess_weights_for_mixed_gemm (int4) =============================

// TensorRT-LLM's QuantType for 4-bit weights: the activation type decides steps 1 and 3.
enum class QuantType : uint8_t {
  w4_a16,   // fp16 / bf16 activations (INT4-AWQ, W4A16)
  w4_afp8,  // fp8 e4m3 activations (W4A8-AWQ)
};

// The layout family (see the header comment for which SM versions take which).
enum class GemmArch : uint8_t {
  sm80,  // sm75 .. sm89, sm100+, sm120, and sm90 MoE (force_interleave): steps 1 2 3 4
  sm90,  // sm90 (Hopper) dense GEMM: steps 1 2 4
};

// TensorRT-LLM's choice for an SM version (getSMVersion() * 1, e.g. 80, 86, 89, 90, 100, 120).
inline GemmArch gemm_arch_for_sm(int sm_version, bool force_interleave = false) {
  if (sm_version < 75) {
    detail::fail(ErrorCode::unsupported, "trtllm::gemm_arch_for_sm: sm_version = ", sm_version,
                 " (expected >= 75: TensorRT-LLM's int4 mixed GEMM needs Turing or newer)");
  }
  if (sm_version >= 90 && sm_version < 100 && !force_interleave) return GemmArch::sm90;
  return GemmArch::sm80;
}

// The shape the preprocessor takes: [K, N] or [E, K, N] int4 (K rows of N nibbles).
struct MixedGemmShape {
  int64_t experts = 1;
  int64_t k = 0;  // rows (input features)
  int64_t n = 0;  // columns (output features)

  static MixedGemmShape from_dims(const std::vector<int64_t>& dims) {
    if (dims.size() != 2 && dims.size() != 3) {
      detail::fail(ErrorCode::shape_mismatch, "trtllm mixed GEMM: shape ",
                   nibble::detail::format_dims(dims), " (expected [K, N] or [E, K, N])");
    }
    MixedGemmShape shape;
    if (dims.size() == 3) shape.experts = dims[0];
    shape.k = dims[dims.size() - 2];
    shape.n = dims[dims.size() - 1];
    if (shape.experts < 1 || shape.k < 1 || shape.n < 1) {
      detail::fail(ErrorCode::shape_mismatch, "trtllm mixed GEMM: shape ",
                   nibble::detail::format_dims(dims), " (expected every dimension >= 1)");
    }
    return shape;
  }
  int64_t matrix_bytes() const { return k * n / 2; }
  int64_t bytes() const { return nibble::detail::checked_mul(experts, matrix_bytes(), "bytes"); }
};

// ThreadblockK = 128 * 8 / bits(activation): K rows per interleaved tile (step 3).
inline int64_t rows_per_column_tile(QuantType quant) {
  return quant == QuantType::w4_a16 ? 64 : 128;
}
// ColumnsInterleaved = (128-byte line = 256 int4) / ThreadblockK.
inline int64_t columns_interleaved(QuantType quant) {
  return 256 / rows_per_column_tile(quant);
}

// The LDSM row permutation of step 1 (TensorRT-LLM get_permutation_map): output row r of each
// group of 32 reads input row map[r].
inline const std::array<int, 32>& ldsm_row_permutation(QuantType quant) {
  static constexpr std::array<int, 32> kW4A16 = {0,  1,  8,  9,  16, 17, 24, 25, 2,  3,  10,
                                                 11, 18, 19, 26, 27, 4,  5,  12, 13, 20, 21,
                                                 28, 29, 6,  7,  14, 15, 22, 23, 30, 31};
  static constexpr std::array<int, 32> kW4Afp8 = {0,  1,  2,  3,  16, 17, 18, 19, 4,  5,  6,
                                                  7,  20, 21, 22, 23, 8,  9,  10, 11, 24, 25,
                                                  26, 27, 12, 13, 14, 15, 28, 29, 30, 31};
  return quant == QuantType::w4_a16 ? kW4A16 : kW4Afp8;
}

inline constexpr int64_t kLdsmRowsPerGroup = 32;  // B_ROWS_PER_MMA = 8 * (16 / 4)

namespace detail {

inline void check_buffer(const char* who, const uint8_t* data, int64_t given, int64_t required) {
  if (data == nullptr) fail(ErrorCode::null_pointer, who, ": the weight buffer is null");
  if (given != required) {
    fail(ErrorCode::shape_mismatch, who, ": the weight buffer holds ", given,
         " bytes but the shape needs exactly ", required, " (K * N / 2 per expert)");
  }
}

inline void require_multiple(const char* who, const char* name, int64_t value, int64_t multiple,
                             const char* why) {
  if (value % multiple != 0) {
    fail(ErrorCode::unsupported, who, ": ", name, " = ", value, " is not a multiple of ", multiple,
         " (", why, ")");
  }
}

// The shape checks of the steps a layout runs, with TensorRT-LLM's reasons.
inline void check_mixed_gemm_shape(const char* who, const MixedGemmShape& shape, QuantType quant,
                                   GemmArch arch) {
  require_multiple(who, "K", shape.k, kLdsmRowsPerGroup,
                   "permute_B_rows_for_mixed_gemm moves rows in groups of 32 for int4");
  require_multiple(who, "N", shape.n, 8,
                   "permute_B_rows_for_mixed_gemm moves 32-bit words of 8 int4 columns");
  require_multiple(who, "K", shape.k, 64,
                   "subbyte_transpose needs K * 4 / 8 bytes to be a multiple of 32");
  require_multiple(who, "N", shape.n, 64,
                   "subbyte_transpose needs N * 4 / 8 bytes to be a multiple of 32");
  if (arch == GemmArch::sm80) {
    require_multiple(who, "K", shape.k, rows_per_column_tile(quant),
                     quant == QuantType::w4_a16
                         ? "interleave_column_major_tensor tiles K by ThreadblockK = 64 for fp16 "
                           "activations"
                         : "interleave_column_major_tensor tiles K by ThreadblockK = 128 for fp8 "
                           "activations");
  }
}

// Step 1 on one row-major [K, N] matrix; `inverse` undoes it.
inline void permute_rows(const uint8_t* in, uint8_t* out, int64_t k, int64_t n, QuantType quant,
                         bool inverse) {
  const std::array<int, 32>& map = ldsm_row_permutation(quant);
  const int64_t row_bytes = n / 2;
  for (int64_t base = 0; base < k; base += kLdsmRowsPerGroup) {
    for (int r = 0; r < 32; ++r) {
      const int64_t permuted = base + map[static_cast<std::size_t>(r)];
      const int64_t plain = base + r;
      // forward: out[plain] = in[permuted]; inverse: out[permuted] = in[plain].
      const int64_t src = inverse ? plain : permuted;
      const int64_t dst = inverse ? permuted : plain;
      std::memcpy(out + dst * row_bytes, in + src * row_bytes, static_cast<std::size_t>(row_bytes));
    }
  }
}

// Step 2 on one matrix: int4 [rows, cols] row-major -> [cols, rows] row-major (the inverse is
// the same call with rows and cols swapped).
inline void transpose_int4(const uint8_t* in, uint8_t* out, int64_t rows, int64_t cols) {
  std::memset(out, 0, static_cast<std::size_t>(rows * cols / 2));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const unsigned nibble = (in[r * (cols / 2) + c / 2] >> ((c % 2) * 4)) & 0xfu;
      out[c * (rows / 2) + r / 2] |= static_cast<uint8_t>(nibble << ((r % 2) * 4));
    }
  }
}

// Step 3 on one column-major [N][K] matrix: word v of column col moves to interleaved_word().
inline int64_t interleaved_word(int64_t col, int64_t v, int64_t k, QuantType quant) {
  const int64_t words_per_column = k / 8;
  const int64_t tile_words = rows_per_column_tile(quant) / 8;  // R / 8
  const int64_t interleave = columns_interleaved(quant);       // I
  return (col / interleave) * words_per_column * interleave +
         (v / tile_words) * tile_words * interleave + (col % interleave) * tile_words +
         v % tile_words;
}

inline void interleave_columns(const uint8_t* in, uint8_t* out, int64_t k, int64_t n,
                               QuantType quant, bool inverse) {
  const int64_t words_per_column = k / 8;
  for (int64_t col = 0; col < n; ++col) {
    for (int64_t v = 0; v < words_per_column; ++v) {
      const int64_t plain = col * words_per_column + v;
      const int64_t moved = interleaved_word(col, v, k, quant);
      const int64_t src = inverse ? moved : plain;
      const int64_t dst = inverse ? plain : moved;
      std::memcpy(out + dst * 4, in + src * 4, 4);
    }
  }
}

// Step 4 on a whole buffer (bytes % 4 == 0). Words are little-endian, as the GPU loads them.
inline void bias_and_interleave_nibbles(uint8_t* data, int64_t bytes, bool inverse) {
  // Output slot d of a word holds source nibble kSource[d]; kSlot is its inverse.
  static constexpr int kSource[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  for (int64_t at = 0; at < bytes; at += 4) {
    uint32_t word = 0;
    for (int b = 0; b < 4; ++b)
      word |= static_cast<uint32_t>(data[at + b]) << (8 * b);
    uint32_t result = 0;
    for (int d = 0; d < 8; ++d) {
      const int src_slot = inverse ? d : kSource[d];
      const int dst_slot = inverse ? kSource[d] : d;
      result |= ((word >> (4 * src_slot)) & 0xfu) << (4 * dst_slot);
    }
    // q + 8 modulo 16 on every nibble of a signed int4 = flip bit 3 of each nibble; the same
    // flip undoes it (the inverse's q - 8). TensorRT-LLM's range check (0 .. 15) always holds.
    result ^= 0x88888888u;
    for (int b = 0; b < 4; ++b)
      data[at + b] = static_cast<uint8_t>(result >> (8 * b));
  }
}

}  // namespace detail

// ---- the individual steps, on [K, N] / [E, K, N] buffers (exposed for tests and tools) ----------

// Step 1: row-major in, row-major out (rows permuted in groups of 32). Needs K % 32, N % 8.
inline std::vector<uint8_t> permute_rows_for_ldsm(const std::vector<uint8_t>& row_major,
                                                  const std::vector<int64_t>& dims, QuantType quant,
                                                  bool inverse = false) {
  const char* who = "trtllm::permute_rows_for_ldsm";
  const MixedGemmShape shape = MixedGemmShape::from_dims(dims);
  detail::check_buffer(who, row_major.data(), static_cast<int64_t>(row_major.size()),
                       shape.bytes());
  detail::require_multiple(who, "K", shape.k, kLdsmRowsPerGroup,
                           "rows move in groups of 32 for int4");
  detail::require_multiple(who, "N", shape.n, 8, "rows move as 32-bit words of 8 int4");
  std::vector<uint8_t> out(row_major.size());
  for (int64_t e = 0; e < shape.experts; ++e) {
    detail::permute_rows(row_major.data() + e * shape.matrix_bytes(),
                         out.data() + e * shape.matrix_bytes(), shape.k, shape.n, quant, inverse);
  }
  return out;
}

// Step 2: row-major [K, N] -> [N, K] (inverse: [N, K] -> [K, N]; `dims` is always [.., K, N]).
inline std::vector<uint8_t> subbyte_transpose(const std::vector<uint8_t>& data,
                                              const std::vector<int64_t>& dims,
                                              bool inverse = false) {
  const char* who = "trtllm::subbyte_transpose";
  const MixedGemmShape shape = MixedGemmShape::from_dims(dims);
  detail::check_buffer(who, data.data(), static_cast<int64_t>(data.size()), shape.bytes());
  detail::require_multiple(who, "K", shape.k, 64, "K * 4 / 8 bytes must be a multiple of 32");
  detail::require_multiple(who, "N", shape.n, 64, "N * 4 / 8 bytes must be a multiple of 32");
  std::vector<uint8_t> out(data.size());
  for (int64_t e = 0; e < shape.experts; ++e) {
    const uint8_t* src = data.data() + e * shape.matrix_bytes();
    uint8_t* dst = out.data() + e * shape.matrix_bytes();
    if (inverse) {
      detail::transpose_int4(src, dst, shape.n, shape.k);
    } else {
      detail::transpose_int4(src, dst, shape.k, shape.n);
    }
  }
  return out;
}

// Step 3: column-major [N][K] in, interleaved out. Needs K % ThreadblockK (64 / 128), N % I.
inline std::vector<uint8_t> interleave_column_major(const std::vector<uint8_t>& column_major,
                                                    const std::vector<int64_t>& dims,
                                                    QuantType quant, bool inverse = false) {
  const char* who = "trtllm::interleave_column_major";
  const MixedGemmShape shape = MixedGemmShape::from_dims(dims);
  detail::check_buffer(who, column_major.data(), static_cast<int64_t>(column_major.size()),
                       shape.bytes());
  detail::require_multiple(who, "K", shape.k, rows_per_column_tile(quant),
                           "K is tiled by ThreadblockK = 128 * 8 / bits(activation)");
  detail::require_multiple(who, "N", shape.n, columns_interleaved(quant),
                           "columns are interleaved in sets of 256 / ThreadblockK");
  std::vector<uint8_t> out(column_major.size());
  for (int64_t e = 0; e < shape.experts; ++e) {
    detail::interleave_columns(column_major.data() + e * shape.matrix_bytes(),
                               out.data() + e * shape.matrix_bytes(), shape.k, shape.n, quant,
                               inverse);
  }
  return out;
}

// Step 4: signed nibbles -> unsigned (q + 8) and the [0,2,4,6,1,3,5,7] register interleave.
inline std::vector<uint8_t> add_bias_and_interleave_int4(const std::vector<uint8_t>& data,
                                                         bool inverse = false) {
  if (data.size() % 4 != 0) {
    detail::fail(ErrorCode::shape_mismatch, "trtllm::add_bias_and_interleave_int4: ", data.size(),
                 " bytes (expected a multiple of 4: the interleave works on 32-bit registers of "
                 "8 int4)");
  }
  std::vector<uint8_t> out = data;
  detail::bias_and_interleave_nibbles(out.data(), static_cast<int64_t>(out.size()), inverse);
  return out;
}

// ---- the whole preprocessing
// ---------------------------------------------------------------------

// Row-major signed int4 [K, N] / [E, K, N] -> the bytes TensorRT-LLM's mixed GEMM reads for
// `quant` on `arch` (= torch.ops.trtllm.preprocess_weights_for_mixed_gemm). Errors name the
// dimension and the multiple it needs: K % 64 and N % 64 always, K % 128 for W4_AFP8 on sm80.
inline std::vector<uint8_t> preprocess_weights_for_mixed_gemm(const std::vector<uint8_t>& row_major,
                                                              const std::vector<int64_t>& dims,
                                                              QuantType quant, GemmArch arch) {
  const char* who = "trtllm::preprocess_weights_for_mixed_gemm";
  const MixedGemmShape shape = MixedGemmShape::from_dims(dims);
  detail::check_buffer(who, row_major.data(), static_cast<int64_t>(row_major.size()),
                       shape.bytes());
  detail::check_mixed_gemm_shape(who, shape, quant, arch);
  std::vector<uint8_t> data = permute_rows_for_ldsm(row_major, dims, quant);
  data = subbyte_transpose(data, dims);
  if (arch == GemmArch::sm80) data = interleave_column_major(data, dims, quant);
  return add_bias_and_interleave_int4(data);
}

// The inverse: preprocessed bytes -> row-major signed int4 [K, N] / [E, K, N].
inline std::vector<uint8_t> unpreprocess_weights_for_mixed_gemm(
    const std::vector<uint8_t>& preprocessed, const std::vector<int64_t>& dims, QuantType quant,
    GemmArch arch) {
  const char* who = "trtllm::unpreprocess_weights_for_mixed_gemm";
  const MixedGemmShape shape = MixedGemmShape::from_dims(dims);
  detail::check_buffer(who, preprocessed.data(), static_cast<int64_t>(preprocessed.size()),
                       shape.bytes());
  detail::check_mixed_gemm_shape(who, shape, quant, arch);
  std::vector<uint8_t> data = add_bias_and_interleave_int4(preprocessed, /*inverse=*/true);
  if (arch == GemmArch::sm80) data = interleave_column_major(data, dims, quant, true);
  data = subbyte_transpose(data, dims, true);
  return permute_rows_for_ldsm(data, dims, quant, true);
}

// Canonical symmetric 4-bit [N, K] / [E, N, K] -> the preprocessor's row-major signed int4 input
// [K, N] / [E, K, N] (the same bytes as mixed_gemm_input(to_modelopt(w).view())).
template <class ScaleT>
std::vector<uint8_t> mixed_gemm_input(const QuantTensorView<ScaleT>& w) {
  return mixed_gemm_input(to_modelopt(w).view());
}

// Canonical -> TensorRT-LLM engine weight bytes in one call.
template <class ScaleT>
std::vector<uint8_t> to_mixed_gemm_weight(const QuantTensorView<ScaleT>& w, QuantType quant,
                                          GemmArch arch) {
  const Int4Checkpoint checkpoint = to_modelopt(w);
  std::vector<int64_t> dims = checkpoint.layout.batch;
  dims.push_back(checkpoint.layout.in_features);
  dims.push_back(checkpoint.layout.out_features);
  return preprocess_weights_for_mixed_gemm(mixed_gemm_input(checkpoint.view()), dims, quant, arch);
}

}  // namespace nibble::trtllm
