// Shape and TensorView: an N-D, row-major, contiguous tensor whose last dimension is K.
//
// nibble's one invariant: a weight tensor [d0, ..., N, K] of any rank >= 1 is processed along its
// last dimension. Every leading dimension flattens into `rows()`, so a linear layer [N, K]
// (rows = N) and fused MoE experts [E, N, K] (rows = E * N, expert = row / N) run the same code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"

namespace nibble {

namespace detail {

// "[a, b, c]": how shapes and indices appear in messages.
inline std::string format_dims(const std::vector<int64_t>& values) {
  std::ostringstream text;
  text << '[';
  for (std::size_t i = 0; i < values.size(); ++i)
    text << (i ? ", " : "") << values[i];
  text << ']';
  return text.str();
}

}  // namespace detail

// The extents of a tensor: rank >= 1, every dimension >= 1, element count within int64_t.
// Empty tensors (a zero dimension) are rejected: no nibble operation has a use for them, and
// rejecting them keeps "rows >= 1, K >= 1" an invariant of every view.
class Shape {
 public:
  Shape(std::initializer_list<int64_t> dims) : Shape(std::vector<int64_t>(dims)) {}

  explicit Shape(std::vector<int64_t> dims) : dims_(std::move(dims)) {
    if (dims_.empty()) {
      detail::fail(ErrorCode::shape_mismatch, "Shape: rank 0 is not allowed (expected rank >= 1)");
    }
    numel_ = 1;
    for (std::size_t axis = 0; axis < dims_.size(); ++axis) {
      if (dims_[axis] < 1) {
        detail::fail(ErrorCode::shape_mismatch, "Shape ", to_string(), ": dimension ", axis, " is ",
                     dims_[axis], " (expected >= 1; empty tensors are not allowed)");
      }
      numel_ = detail::checked_mul(numel_, dims_[axis], "Shape element count");
    }
  }

  int rank() const { return static_cast<int>(dims_.size()); }
  int64_t operator[](int axis) const { return dims_[static_cast<std::size_t>(axis)]; }
  const std::vector<int64_t>& dims() const { return dims_; }

  int64_t last() const { return dims_.back(); }     // K, the quantized dimension
  int64_t rows() const { return numel_ / last(); }  // product of all leading dimensions
  int64_t numel() const { return numel_; }

  // The same leading dimensions with the last one replaced (e.g. K -> packed bytes).
  Shape with_last(int64_t last_dim) const {
    std::vector<int64_t> dims = dims_;
    dims.back() = last_dim;
    return Shape(std::move(dims));
  }

  // The shape without its first dimension (one expert of [E, N, K] is [N, K]); rank must be >= 2.
  Shape drop_first() const {
    if (rank() < 2) {
      detail::fail(ErrorCode::shape_mismatch, "Shape ", to_string(),
                   ": cannot drop the first dimension of a rank-1 shape");
    }
    return Shape(std::vector<int64_t>(dims_.begin() + 1, dims_.end()));
  }

  // The shape of sub-tensor `index` along the first dimension, after checking the index;
  // `who` names the caller in the message.
  Shape slice_shape(int64_t index, const char* who) const {
    Shape inner = drop_first();
    if (index < 0 || index >= dims_[0]) {
      detail::fail(ErrorCode::invalid_argument, who, ": index ", index,
                   " is out of range for shape ", to_string(), " (expected 0 <= index < ", dims_[0],
                   ")");
    }
    return inner;
  }

  std::string to_string() const { return detail::format_dims(dims_); }

  friend bool operator==(const Shape& a, const Shape& b) { return a.dims_ == b.dims_; }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }
  friend std::ostream& operator<<(std::ostream& out, const Shape& shape) {
    return out << shape.to_string();
  }

 private:
  std::vector<int64_t> dims_;
  int64_t numel_ = 0;
};

// A non-owning view of numel() contiguous elements of T laid out row-major with `shape`.
// Construction checks what a pointer + shape can get wrong: null data, a pointer misaligned for
// T, and a byte size that does not fit the address space. `name` only labels error messages.
template <class T>
class TensorView {
 public:
  TensorView(T* data, Shape shape, const char* name = "tensor")
      : data_(data), shape_(std::move(shape)) {
    if (data_ == nullptr) {
      detail::fail(ErrorCode::null_pointer, name, ": data is null (shape ", shape_, ")");
    }
    if (reinterpret_cast<std::uintptr_t>(data_) % alignof(T) != 0) {
      detail::fail(ErrorCode::misaligned, name, ": data pointer is not aligned to ", alignof(T),
                   " bytes as its element type requires");
    }
    detail::checked_bytes(shape_.numel(), sizeof(T), name);
  }

  // A view of const T from a view of T.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  TensorView(const TensorView<U>& other) : data_(other.data()), shape_(other.shape()) {}

  T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  int64_t rows() const { return shape_.rows(); }
  int64_t cols() const { return shape_.last(); }
  int64_t numel() const { return shape_.numel(); }
  std::size_t size_bytes() const { return static_cast<std::size_t>(numel()) * sizeof(T); }

  // Row r of the [rows, K] flattening.
  T* row(int64_t r) const { return data_ + r * cols(); }

  // Sub-tensor `index` along the first dimension (expert e of [E, N, K] is an [N, K] view).
  TensorView slice(int64_t index) const {
    Shape inner = shape_.slice_shape(index, "TensorView::slice");
    return TensorView(data_ + index * inner.numel(), std::move(inner));
  }

 private:
  T* data_;
  Shape shape_;
};

}  // namespace nibble
