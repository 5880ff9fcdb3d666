#include <gtest/gtest.h>

#include <set>
#include <string>

#include "nibble/core/error.hpp"

namespace {

using nibble::Error;
using nibble::ErrorCode;

TEST(Error, CarriesCodeAndPrefixedMessage) {
  try {
    nibble::detail::fail(ErrorCode::shape_mismatch, "x has K = ", 5, " but W has K = ", 6);
    FAIL() << "fail() returned";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::shape_mismatch);
    EXPECT_STREQ(error.what(), "nibble: x has K = 5 but W has K = 6");
  }
}

TEST(Error, IsAStdRuntimeError) {
  EXPECT_THROW(nibble::detail::fail(ErrorCode::io, "disk"), std::runtime_error);
}

TEST(Error, EveryCodeHasADistinctName) {
  std::set<std::string> names;
  for (int code = 0; code <= static_cast<int>(ErrorCode::malformed); ++code) {
    const std::string name = nibble::to_string(static_cast<ErrorCode>(code));
    EXPECT_NE(name, "unknown") << code;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), static_cast<std::size_t>(ErrorCode::malformed) + 1);
}

}  // namespace
