// Overflow-checked size arithmetic. Every size nibble derives from user input (element counts,
// byte counts, padded lengths) goes through these, so a huge shape is an Error, never UB.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "nibble/core/error.hpp"

namespace nibble::detail {

// a * b for non-negative a, b; throws ErrorCode::overflow naming `what` if it exceeds int64_t.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) {
    fail(ErrorCode::overflow, what, " overflows int64 (", a, " * ", b, ")");
  }
  return a * b;
}

// a + b for non-negative a, b; throws ErrorCode::overflow naming `what` if it exceeds int64_t.
inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  if (b > std::numeric_limits<int64_t>::max() - a) {
    fail(ErrorCode::overflow, what, " overflows int64 (", a, " + ", b, ")");
  }
  return a + b;
}

// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b.
constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return a / b + (a % b != 0 ? 1 : 0);
}

// count * element_size as a byte count that fits both size_t and ptrdiff_t (so that pointer
// arithmetic over the whole buffer is defined); throws ErrorCode::overflow otherwise.
inline std::size_t checked_bytes(int64_t count, std::size_t element_size, const char* what) {
  const int64_t bytes = checked_mul(count, static_cast<int64_t>(element_size), what);
  if (static_cast<uint64_t>(bytes) >
      static_cast<uint64_t>(std::numeric_limits<std::ptrdiff_t>::max())) {
    fail(ErrorCode::overflow, what, " needs ", bytes,
         " bytes, more than this platform can address");
  }
  return static_cast<std::size_t>(bytes);
}

}  // namespace nibble::detail
