// QuantTensor (owns) and QuantTensorView (borrows): a weight tensor in nibble's canonical layout.
//
//   W        [..., N, K]                     logical shape, quantized along K
//   qweight  uint8 [rows, packed_row_bytes]  codes packed as in pack.hpp, each row padded to
//                                            padded_k = n_groups * G codes (see "pad codes")
//   scales   ScaleT [rows, n_groups]         float, fp16 or bf16; may be negative (some
//                                            conventions map the largest-magnitude value to
//                                            -2^(bits-1))
//   zeros    uint8 [rows, zero_row_bytes]    zero points packed like qweight along the group
//                                            axis (pad bits 0); ABSENT when symmetric
//   dequant  w = (q - z) * s, computed in float; symmetric: z = 2^(bits-1)
//
// Pad codes: when K is not a multiple of G, the codes for k in [K, padded_k) hold the last group's
// zero point, so they dequantize to exactly 0.0. No kernel and no statistic reads them; their
// value only makes a whole-block consumer (e.g. ONNX Runtime's MatMulNBits) compute 0 there.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/pack.hpp"

namespace nibble {

template <class ScaleT>
class QuantTensorView {
  static_assert(is_float_type_v<ScaleT>, "QuantTensorView<ScaleT>: ScaleT is float, fp16 or bf16");

 public:
  using scale_type = ScaleT;

  // Wraps buffers in the canonical layout (e.g. initializers read from a model file). Checks the
  // config, every pointer (null, alignment) and every buffer size against the shape; `zeros`
  // must be null exactly when config.symmetric. Sizes are counts of elements of each buffer.
  QuantTensorView(Shape shape, QuantConfig config, const uint8_t* qweight, int64_t qweight_bytes,
                  const ScaleT* scales, int64_t scale_count, const uint8_t* zeros,
                  int64_t zero_bytes)
      : shape_(std::move(shape)),
        config_(config),
        layout_(RowLayout::make(config, shape_.last())),
        qweight_(qweight),
        scales_(scales),
        zeros_(zeros) {
    const int64_t rows = shape_.rows();
    check_buffer(qweight_, qweight_bytes,
                 detail::checked_mul(rows, layout_.packed_row_bytes, "qweight bytes"), "qweight");
    check_buffer(scales_, scale_count, detail::checked_mul(rows, layout_.n_groups, "scale count"),
                 "scales");
    if (config_.symmetric) {
      if (zeros_ != nullptr) {
        detail::fail(ErrorCode::invalid_argument,
                     "QuantTensorView: zeros given for a symmetric config (symmetric tensors carry "
                     "no zero points; the implied zero point is ",
                     1 << (config_.bits - 1), ")");
      }
    } else {
      check_buffer(zeros_, zero_bytes,
                   detail::checked_mul(rows, layout_.zero_row_bytes, "zero-point bytes"), "zeros");
    }
  }

  const Shape& shape() const { return shape_; }
  const QuantConfig& config() const { return config_; }
  const RowLayout& layout() const { return layout_; }
  int bits() const { return config_.bits; }
  int64_t rows() const { return shape_.rows(); }
  int64_t k() const { return shape_.last(); }

  const uint8_t* qweight() const { return qweight_; }
  const ScaleT* scales() const { return scales_; }
  const uint8_t* zeros() const { return zeros_; }  // null when symmetric
  int64_t qweight_bytes() const { return rows() * layout_.packed_row_bytes; }
  int64_t scale_count() const { return rows() * layout_.n_groups; }
  int64_t zero_bytes() const { return config_.symmetric ? 0 : rows() * layout_.zero_row_bytes; }

  const uint8_t* qweight_row(int64_t row) const {
    return qweight_ + row * layout_.packed_row_bytes;
  }
  const ScaleT* scale_row(int64_t row) const { return scales_ + row * layout_.n_groups; }
  const uint8_t* zero_row(int64_t row) const {
    return zeros_ == nullptr ? nullptr : zeros_ + row * layout_.zero_row_bytes;
  }

  // Element access for references and tests (dispatches on bits per call: not for hot loops).
  int code(int64_t row, int64_t col) const {
    return dispatch_bits([&](auto packing) { return int{packing.code_at(qweight_row(row), col)}; });
  }
  int zero_point(int64_t row, int64_t group) const {
    if (config_.symmetric) return 1 << (config_.bits - 1);
    return dispatch_bits([&](auto packing) { return int{packing.code_at(zero_row(row), group)}; });
  }
  float scale(int64_t row, int64_t group) const { return to_float(scale_row(row)[group]); }

  // Sub-tensor `index` along the first dimension: expert e of [E, N, K] is an [N, K] view of
  // the same bytes (rows are independent, so a slice is a pointer offset).
  QuantTensorView slice(int64_t index) const {
    Shape inner = shape_.slice_shape(index, "QuantTensorView::slice");
    const int64_t first_row = index * inner.rows();
    const int64_t rows = inner.rows();
    return QuantTensorView(std::move(inner), config_, qweight_row(first_row),
                           rows * layout_.packed_row_bytes, scale_row(first_row),
                           rows * layout_.n_groups, zero_row(first_row),
                           config_.symmetric ? 0 : rows * layout_.zero_row_bytes);
  }

  // Calls f(BitPacking<bits>{}) with the packing of this tensor's bit width, so a caller's
  // template resolves the width once, outside its loops.
  template <class F>
  decltype(auto) dispatch_bits(F&& f) const {
    return with_bit_packing(config_.bits, std::forward<F>(f));  // validated: 2, 4 or 8
  }

 private:
  template <class T>
  static void check_buffer(const T* data, int64_t given, int64_t required, const char* name) {
    if (data == nullptr) {
      detail::fail(ErrorCode::null_pointer, "QuantTensorView: ", name, " is null");
    }
    if (reinterpret_cast<std::uintptr_t>(data) % alignof(T) != 0) {
      detail::fail(ErrorCode::misaligned, "QuantTensorView: ", name, " is not aligned to ",
                   alignof(T), " bytes");
    }
    if (given < required) {
      detail::fail(ErrorCode::buffer_too_small, "QuantTensorView: ", name, " holds ", given,
                   " elements but the shape needs ", required);
    }
  }

  Shape shape_;
  QuantConfig config_;
  RowLayout layout_;
  const uint8_t* qweight_;
  const ScaleT* scales_;
  const uint8_t* zeros_;
};

// Owns a tensor in the canonical layout. Made by WeightQuantizer, or filled by a format reader.
template <class ScaleT>
class QuantTensor {
  static_assert(is_float_type_v<ScaleT>, "QuantTensor<ScaleT>: ScaleT is float, fp16 or bf16");

 public:
  using scale_type = ScaleT;

  // Zero-filled buffers sized for `shape` under `config` (validated).
  QuantTensor(Shape shape, QuantConfig config)
      : shape_(std::move(shape)), config_(config), layout_(RowLayout::make(config, shape_.last())) {
    const int64_t rows = shape_.rows();
    qweight_.resize(allocation_size<uint8_t>(rows, layout_.packed_row_bytes, "qweight"));
    scales_.resize(allocation_size<ScaleT>(rows, layout_.n_groups, "scales"));
    if (!config_.symmetric) {
      zeros_.resize(allocation_size<uint8_t>(rows, layout_.zero_row_bytes, "zeros"));
    }
  }

  const Shape& shape() const { return shape_; }
  const QuantConfig& config() const { return config_; }
  const RowLayout& layout() const { return layout_; }
  int64_t rows() const { return shape_.rows(); }
  int64_t k() const { return shape_.last(); }

  std::vector<uint8_t>& qweight() { return qweight_; }
  const std::vector<uint8_t>& qweight() const { return qweight_; }
  std::vector<ScaleT>& scales() { return scales_; }
  const std::vector<ScaleT>& scales() const { return scales_; }
  std::vector<uint8_t>& zeros() { return zeros_; }  // empty when symmetric
  const std::vector<uint8_t>& zeros() const { return zeros_; }

  // Zero-point slots of one row, zero_row_bytes * (8 / bits): the n_groups real ones, then the
  // unused slots of the last byte.
  int64_t zero_slots() const { return layout_.zero_row_bytes * (8 / config_.bits); }

  // What the unused zero-point slots hold under the config's convention (ZeroPointPad): 0, or
  // the code 2^(bits-1).
  uint8_t zero_point_pad() const {
    return config_.convention_of().zero_point_pad == ZeroPointPad::mid
               ? static_cast<uint8_t>(1u << (config_.bits - 1))
               : uint8_t{0};
  }

  // Writes row `row` of qweight (and of zeros unless symmetric) from unpacked codes, the one way
  // every quantizer fills a canonical row (scales are the caller's):
  //   codes        [padded_k]: codes [0, K) given; the pad codes [K, padded_k) are set here to
  //                the last group's zero point, so they dequantize to 0.0 (see "pad codes")
  //   zero_points  [zero_slots()]: group g's zero point at g, given also when symmetric (the last
  //                one is the pad code); the slots [n_groups, zero_slots()) are set here to
  //                `zero_pad`
  // Both buffers are the caller's scratch: the call writes the pads into them.
  void pack_row(int64_t row, uint8_t* codes, uint8_t* zero_points, uint8_t zero_pad) {
    const uint8_t last_zero = zero_points[layout_.n_groups - 1];
    for (int64_t col = layout_.k; col < layout_.padded_k; ++col)
      codes[col] = last_zero;
    const int64_t slots = zero_slots();
    for (int64_t slot = layout_.n_groups; slot < slots; ++slot)
      zero_points[slot] = zero_pad;
    with_bit_packing(config_.bits, [&](auto packing) {
      using Packing = decltype(packing);
      Packing::pack_row(codes, layout_.padded_k, qweight_.data() + row * layout_.packed_row_bytes);
      if (!config_.symmetric) {
        Packing::pack_row(zero_points, slots, zeros_.data() + row * layout_.zero_row_bytes);
      }
    });
  }
  // As above with the convention's pad (zero_point_pad()).
  void pack_row(int64_t row, uint8_t* codes, uint8_t* zero_points) {
    pack_row(row, codes, zero_points, zero_point_pad());
  }

  QuantTensorView<ScaleT> view() const {
    return QuantTensorView<ScaleT>(
        shape_, config_, qweight_.data(), static_cast<int64_t>(qweight_.size()), scales_.data(),
        static_cast<int64_t>(scales_.size()), config_.symmetric ? nullptr : zeros_.data(),
        static_cast<int64_t>(zeros_.size()));
  }

  // Bytes of qweight + scales + zeros.
  int64_t storage_bytes() const {
    return static_cast<int64_t>(qweight_.size() + scales_.size() * sizeof(ScaleT) + zeros_.size());
  }
  // Storage bits per logical weight (padding, scales and zero points included).
  double bits_per_weight() const {
    return 8.0 * static_cast<double>(storage_bytes()) / static_cast<double>(shape_.numel());
  }

 private:
  // rows * per_row elements of T, checked against int64_t and the address space.
  template <class T>
  static std::size_t allocation_size(int64_t rows, int64_t per_row, const char* name) {
    const int64_t count = detail::checked_mul(rows, per_row, name);
    detail::checked_bytes(count, sizeof(T), name);
    return static_cast<std::size_t>(count);
  }

  Shape shape_;
  QuantConfig config_;
  RowLayout layout_;
  std::vector<uint8_t> qweight_;
  std::vector<ScaleT> scales_;
  std::vector<uint8_t> zeros_;
};

}  // namespace nibble
