#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "nibble/core/float16.hpp"
#include "nibble/core/tensor_view.hpp"

namespace {

using nibble::Error;
using nibble::ErrorCode;
using nibble::Shape;
using nibble::TensorView;

template <class F>
ErrorCode error_code_of(F&& f) {
  try {
    f();
  } catch (const Error& error) {
    return error.code();
  }
  ADD_FAILURE() << "no nibble::Error thrown";
  return ErrorCode::unsupported;
}

TEST(Shape, FlattensLeadingDimensionsIntoRows) {
  const Shape rank1{7};
  EXPECT_EQ(rank1.rows(), 1);
  EXPECT_EQ(rank1.last(), 7);
  const Shape rank3{4, 3, 5};
  EXPECT_EQ(rank3.rank(), 3);
  EXPECT_EQ(rank3.rows(), 12);
  EXPECT_EQ(rank3.last(), 5);
  EXPECT_EQ(rank3.numel(), 60);
  EXPECT_EQ(rank3.with_last(2), (Shape{4, 3, 2}));
  EXPECT_EQ(rank3.drop_first(), (Shape{3, 5}));
  EXPECT_EQ(rank3.to_string(), "[4, 3, 5]");
}

TEST(Shape, RejectsEmptyNegativeAndOverflowingShapes) {
  EXPECT_EQ(error_code_of([] { Shape(std::vector<int64_t>{}); }), ErrorCode::shape_mismatch);
  EXPECT_EQ(error_code_of([] { Shape{3, 0}; }), ErrorCode::shape_mismatch);
  EXPECT_EQ(error_code_of([] { Shape{-1, 4}; }), ErrorCode::shape_mismatch);
  EXPECT_EQ(error_code_of([] { Shape{int64_t{1} << 40, int64_t{1} << 40}; }), ErrorCode::overflow);
  EXPECT_EQ(error_code_of([] { Shape{5}.drop_first(); }), ErrorCode::shape_mismatch);
  try {
    Shape{3, 0, 2};
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("dimension 1 is 0"), std::string::npos)
        << error.what();
  }
}

TEST(TensorView, RowsAndSlicesAddressTheRightElements) {
  std::vector<float> data(24);
  for (std::size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<float>(i);
  const TensorView<float> view(data.data(), {2, 3, 4});
  EXPECT_EQ(view.rows(), 6);
  EXPECT_EQ(view.cols(), 4);
  EXPECT_EQ(view.row(4)[1], 17.0f);
  const TensorView<float> second = view.slice(1);
  EXPECT_EQ(second.shape(), (Shape{3, 4}));
  EXPECT_EQ(second.row(0)[0], 12.0f);
  const TensorView<const float> as_const = view;
  EXPECT_EQ(as_const.size_bytes(), 24 * sizeof(float));
  EXPECT_EQ(error_code_of([&] { view.slice(2); }), ErrorCode::invalid_argument);
  EXPECT_EQ(error_code_of([&] { view.slice(-1); }), ErrorCode::invalid_argument);
}

TEST(TensorView, RejectsNullMisalignedAndUnaddressableBuffers) {
  EXPECT_EQ(error_code_of([] {
              TensorView<const float>(nullptr, {2, 2});
            }),
            ErrorCode::null_pointer);
  alignas(4) uint8_t bytes[16] = {};
  const auto* odd = reinterpret_cast<const nibble::fp16*>(bytes + 1);
  EXPECT_EQ(error_code_of([&] { TensorView<const nibble::fp16>(odd, {2}); }),
            ErrorCode::misaligned);
  // 2^61 floats fit int64 as a count but not as a byte count.
  EXPECT_EQ(error_code_of([&] {
              TensorView<const float>(reinterpret_cast<const float*>(bytes), {int64_t{1} << 61});
            }),
            ErrorCode::overflow);
}

}  // namespace
