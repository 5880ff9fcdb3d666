// nibble::Error: the one exception every public entry point throws on bad input.
//
// Public functions validate their arguments once, at the boundary, and throw an Error whose
// message names the argument, the value it had, and what was expected, e.g.
//   "nibble: QuantConfig.bits = 3 is not supported (expected 2, 4 or 8)".
// Inner code assumes validated input. No entry point returns a silently wrong answer.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace nibble {

// What kind of mistake an Error reports; bindings map it to their own exception types
// (e.g. Python: type_mismatch -> TypeError, everything else -> ValueError, io -> OSError).
enum class ErrorCode {
  invalid_argument,  // a value outside the allowed set (bits = 3, group_size = 0)
  shape_mismatch,    // shapes that do not agree with each other or with a buffer
  type_mismatch,     // an element type other than the one required
  non_finite,        // NaN or Inf where finite numbers are required
  overflow,          // a size that does not fit int64_t / size_t
  null_pointer,      // a required pointer is null
  buffer_too_small,  // a caller-provided buffer holds fewer bytes than required
  misaligned,        // a pointer not aligned for its element type
  unsupported,       // a well-formed request nibble does not implement or a format cannot express
  io,                // a file could not be opened, read or written
  malformed,         // file or buffer contents that violate their format
};

inline const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::invalid_argument:
      return "invalid_argument";
    case ErrorCode::shape_mismatch:
      return "shape_mismatch";
    case ErrorCode::type_mismatch:
      return "type_mismatch";
    case ErrorCode::non_finite:
      return "non_finite";
    case ErrorCode::overflow:
      return "overflow";
    case ErrorCode::null_pointer:
      return "null_pointer";
    case ErrorCode::buffer_too_small:
      return "buffer_too_small";
    case ErrorCode::misaligned:
      return "misaligned";
    case ErrorCode::unsupported:
      return "unsupported";
    case ErrorCode::io:
      return "io";
    case ErrorCode::malformed:
      return "malformed";
  }
  return "unknown";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error("nibble: " + message), code_(code) {}

  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

namespace detail {

// Throws Error(code, concatenation of `parts`), each part streamed with operator<<.
template <class... Parts>
[[noreturn]] void fail(ErrorCode code, const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw Error(code, message.str());
}

}  // namespace detail
}  // namespace nibble
