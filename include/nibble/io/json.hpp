// A minimal, strict JSON (RFC 8259) parser for file headers such as safetensors'.
//
//   JsonValue header = parse_json(text, "model.safetensors header");
//   const JsonValue* entry = header.find("weight");   // null when absent
//   int64_t rows = entry->find("shape")->as_array()[0].as_int("weight.shape[0]");
//
// Strict means every document some other parser could read differently is an Error
// (ErrorCode::malformed) rather than a guess: trailing content after the value, duplicate object
// keys (JSON leaves their meaning open; parsers disagree on which one wins), raw
// control characters in strings, lone UTF-16 surrogates in \u escapes, leading zeros, numbers
// outside double's range, and nesting deeper than kMaxJsonDepth. Bytes >= 0x80 in strings pass
// through unchecked; a caller that needs valid UTF-8 checks it itself.
//
// Numbers written without fraction or exponent that fit int64_t are kept exactly (kind integer);
// every other number is a double (kind real), so offsets and sizes above 2^53 never round.
// Every error message names the byte offset in the input and what was expected there.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <locale>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nibble/core/error.hpp"

namespace nibble::io {

// Arrays and objects nested deeper than this are rejected: the parser recurses once per level,
// so the bound keeps hostile input from exhausting the stack. A top-level array is depth 1.
inline constexpr int kMaxJsonDepth = 64;

struct JsonMember;

class JsonValue {
 public:
  enum class Kind { null, boolean, integer, real, string, array, object };
  using Array = std::vector<JsonValue>;
  // Members in document order; parse_json guarantees the keys are distinct.
  using Object = std::vector<JsonMember>;

  JsonValue() = default;

  Kind kind() const { return kind_; }
  // Byte offset in the parsed text where this value starts (0 for values built in code).
  std::size_t offset() const { return offset_; }

  bool is_null() const { return kind_ == Kind::null; }
  bool is_bool() const { return kind_ == Kind::boolean; }
  bool is_integer() const { return kind_ == Kind::integer; }
  bool is_number() const { return kind_ == Kind::integer || kind_ == Kind::real; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_object() const { return kind_ == Kind::object; }

  // Accessors throw ErrorCode::malformed when the value has another kind; `what` names the value
  // in that message (e.g. "tensor \"w\" shape[0]").
  bool as_bool(std::string_view what = "JSON value") const;
  int64_t as_int(std::string_view what = "JSON value") const;
  double as_double(std::string_view what = "JSON value") const;  // integer or real
  const std::string& as_string(std::string_view what = "JSON value") const;
  const Array& as_array(std::string_view what = "JSON value") const;
  const Object& as_object(std::string_view what = "JSON value") const;

  // The member named `key` of an object, or null when there is none (or this is not an object).
  const JsonValue* find(std::string_view key) const;

  // "null", "true", "an integer (5)", "a string", "an array", ...: for error messages.
  std::string describe() const;

  // Values built in code (tests, writers); `offset` is 0 unless they stand for parsed text.
  // make_object does not check `members` for duplicate keys; parse_json does.
  static JsonValue make_null(std::size_t offset = 0);
  static JsonValue make_bool(bool value, std::size_t offset = 0);
  static JsonValue make_integer(int64_t value, std::size_t offset = 0);
  static JsonValue make_real(double value, std::size_t offset = 0);
  static JsonValue make_string(std::string value, std::size_t offset = 0);
  static JsonValue make_array(Array elements, std::size_t offset = 0);
  static JsonValue make_object(Object members, std::size_t offset = 0);

 private:
  JsonValue(Kind kind, std::size_t offset);

  [[noreturn]] void fail_kind(std::string_view what, const char* expected) const;

  // One field per kind; only the one selected by kind_ is meaningful. (A tagged struct rather than
  // std::variant because Object's element type is incomplete here; for the same reason every
  // member function that touches object_ is defined below, after JsonMember.)
  Kind kind_ = Kind::null;
  std::size_t offset_ = 0;
  bool boolean_ = false;
  int64_t integer_ = 0;
  double real_ = 0.0;
  std::string string_;
  Array array_;
  Object object_;
};

struct JsonMember {
  std::string key;
  JsonValue value;
  std::size_t key_offset = 0;  // byte offset of the key's opening quote
};

// Parses one JSON document: optional whitespace, one value, optional whitespace, end of input.
// `source` names the text in error messages ("model.safetensors header").
inline JsonValue parse_json(std::string_view text, std::string_view source = "JSON");

// ---- implementation ----------------------------------------------------------------------------

inline JsonValue::JsonValue(Kind kind, std::size_t offset) : kind_(kind), offset_(offset) {}

inline JsonValue JsonValue::make_null(std::size_t offset) {
  return JsonValue(Kind::null, offset);
}

inline JsonValue JsonValue::make_bool(bool value, std::size_t offset) {
  JsonValue result(Kind::boolean, offset);
  result.boolean_ = value;
  return result;
}

inline JsonValue JsonValue::make_integer(int64_t value, std::size_t offset) {
  JsonValue result(Kind::integer, offset);
  result.integer_ = value;
  return result;
}

inline JsonValue JsonValue::make_real(double value, std::size_t offset) {
  JsonValue result(Kind::real, offset);
  result.real_ = value;
  return result;
}

inline JsonValue JsonValue::make_string(std::string value, std::size_t offset) {
  JsonValue result(Kind::string, offset);
  result.string_ = std::move(value);
  return result;
}

inline JsonValue JsonValue::make_array(Array elements, std::size_t offset) {
  JsonValue result(Kind::array, offset);
  result.array_ = std::move(elements);
  return result;
}

inline JsonValue JsonValue::make_object(Object members, std::size_t offset) {
  JsonValue result(Kind::object, offset);
  result.object_ = std::move(members);
  return result;
}

inline void JsonValue::fail_kind(std::string_view what, const char* expected) const {
  nibble::detail::fail(ErrorCode::malformed, what, " at byte ", offset_, ": expected ", expected,
                       ", found ", describe());
}

inline bool JsonValue::as_bool(std::string_view what) const {
  if (kind_ != Kind::boolean) fail_kind(what, "true or false");
  return boolean_;
}

inline int64_t JsonValue::as_int(std::string_view what) const {
  if (kind_ != Kind::integer) fail_kind(what, "an integer that fits int64");
  return integer_;
}

inline double JsonValue::as_double(std::string_view what) const {
  if (kind_ == Kind::integer) return static_cast<double>(integer_);
  if (kind_ != Kind::real) fail_kind(what, "a number");
  return real_;
}

inline const std::string& JsonValue::as_string(std::string_view what) const {
  if (kind_ != Kind::string) fail_kind(what, "a string");
  return string_;
}

inline const JsonValue::Array& JsonValue::as_array(std::string_view what) const {
  if (kind_ != Kind::array) fail_kind(what, "an array");
  return array_;
}

inline const JsonValue::Object& JsonValue::as_object(std::string_view what) const {
  if (kind_ != Kind::object) fail_kind(what, "an object");
  return object_;
}

inline const JsonValue* JsonValue::find(std::string_view key) const {
  if (kind_ != Kind::object) return nullptr;
  for (const JsonMember& member : object_) {
    if (member.key == key) return &member.value;
  }
  return nullptr;
}

inline std::string JsonValue::describe() const {
  std::ostringstream text;
  text.imbue(std::locale::classic());
  switch (kind_) {
    case Kind::null:
      return "null";
    case Kind::boolean:
      return boolean_ ? "true" : "false";
    case Kind::integer:
      text << "an integer (" << integer_ << ")";
      return text.str();
    case Kind::real:
      text.precision(17);
      text << "a non-integer number (" << real_ << ")";
      return text.str();
    case Kind::string:
      return "a string";
    case Kind::array:
      return "an array";
    case Kind::object:
      return "an object";
  }
  return "?";
}

namespace detail {

// Recursive-descent parser over `text`; `position` is the next unread byte.
class JsonParser {
 public:
  JsonParser(std::string_view text, std::string_view source) : text_(text), source_(source) {}

  JsonValue parse_document() {
    skip_whitespace();
    JsonValue value = parse_value(0);
    skip_whitespace();
    if (position_ != text_.size()) fail_at(position_, "end of input after the JSON value");
    return value;
  }

 private:
  static constexpr std::string_view kValueExpected =
      "a JSON value (object, array, string, number, true, false or null)";

  // What sits at `at`, for messages: 'x', byte 0x1f, or end of input.
  std::string found_at(std::size_t at) const {
    if (at >= text_.size()) return "end of input";
    const auto byte = static_cast<unsigned char>(text_[at]);
    if (byte >= 0x20 && byte < 0x7f) return std::string("'") + static_cast<char>(byte) + "'";
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", byte);
    return std::string("byte ") + hex;
  }

  [[noreturn]] void fail_at(std::size_t at, std::string_view expected) const {
    nibble::detail::fail(ErrorCode::malformed, source_, ": byte ", at, ": expected ", expected,
                         ", found ", found_at(at));
  }

  [[noreturn]] void fail_message(std::size_t at, std::string_view message) const {
    nibble::detail::fail(ErrorCode::malformed, source_, ": byte ", at, ": ", message);
  }

  bool at_end() const { return position_ >= text_.size(); }
  char peek() const { return text_[position_]; }

  // RFC 8259 whitespace is exactly space, tab, line feed and carriage return.
  void skip_whitespace() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) {
      ++position_;
    }
  }

  void expect_literal(std::string_view literal) {
    if (text_.substr(position_, literal.size()) != literal) {
      // Point at the first byte that differs so the message shows the offending character.
      std::size_t at = position_;
      while (at < text_.size() && at - position_ < literal.size() &&
             text_[at] == literal[at - position_]) {
        ++at;
      }
      fail_at(at, std::string("the literal ") + std::string(literal));
    }
    position_ += literal.size();
  }

  JsonValue parse_value(int depth) {
    if (at_end()) fail_at(position_, kValueExpected);
    const std::size_t start = position_;
    switch (peek()) {
      case '{':
        return parse_object(depth + 1);
      case '[':
        return parse_array(depth + 1);
      case '"':
        return JsonValue::make_string(parse_string(), start);
      case 't':
        expect_literal("true");
        return JsonValue::make_bool(true, start);
      case 'f':
        expect_literal("false");
        return JsonValue::make_bool(false, start);
      case 'n':
        expect_literal("null");
        return JsonValue::make_null(start);
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
        fail_at(position_, kValueExpected);
    }
  }

  void check_depth(int depth) const {
    if (depth > kMaxJsonDepth) {
      nibble::detail::fail(ErrorCode::malformed, source_, ": byte ", position_,
                           ": arrays/objects nested ", depth, " deep (expected at most ",
                           kMaxJsonDepth, ")");
    }
  }

  JsonValue parse_array(int depth) {
    check_depth(depth);
    const std::size_t start = position_;
    ++position_;  // '['
    JsonValue::Array elements;
    skip_whitespace();
    if (!at_end() && peek() == ']') {
      ++position_;
      return JsonValue::make_array(std::move(elements), start);
    }
    while (true) {
      skip_whitespace();
      elements.push_back(parse_value(depth));
      skip_whitespace();
      if (at_end()) fail_at(position_, "',' or ']' after an array element");
      if (peek() == ']') {
        ++position_;
        return JsonValue::make_array(std::move(elements), start);
      }
      if (peek() != ',') fail_at(position_, "',' or ']' after an array element");
      ++position_;
    }
  }

  JsonValue parse_object(int depth) {
    check_depth(depth);
    const std::size_t start = position_;
    ++position_;  // '{'
    JsonValue::Object members;
    skip_whitespace();
    if (!at_end() && peek() == '}') {
      ++position_;
      return JsonValue::make_object(std::move(members), start);
    }
    while (true) {
      skip_whitespace();
      if (at_end() || peek() != '"') fail_at(position_, "a string key");
      JsonMember member;
      member.key_offset = position_;
      member.key = parse_string();
      skip_whitespace();
      if (at_end() || peek() != ':') fail_at(position_, "':' after an object key");
      ++position_;
      skip_whitespace();
      member.value = parse_value(depth);
      members.push_back(std::move(member));
      skip_whitespace();
      if (at_end()) fail_at(position_, "',' or '}' after an object member");
      if (peek() == '}') {
        ++position_;
        reject_duplicate_keys(members);
        return JsonValue::make_object(std::move(members), start);
      }
      if (peek() != ',') fail_at(position_, "',' or '}' after an object member");
      ++position_;
    }
  }

  // Sorting indices by (key, offset) puts equal keys side by side, the first occurrence first:
  // O(n log n), so headers with many thousands of tensors stay fast.
  void reject_duplicate_keys(const JsonValue::Object& members) const {
    std::vector<std::size_t> order(members.size());
    for (std::size_t index = 0; index < order.size(); ++index)
      order[index] = index;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      if (members[a].key != members[b].key) return members[a].key < members[b].key;
      return members[a].key_offset < members[b].key_offset;
    });
    for (std::size_t rank = 1; rank < order.size(); ++rank) {
      const JsonMember& first = members[order[rank - 1]];
      const JsonMember& second = members[order[rank]];
      if (first.key == second.key) {
        nibble::detail::fail(ErrorCode::malformed, source_, ": byte ", second.key_offset,
                             ": duplicate object key \"", second.key, "\" (first at byte ",
                             first.key_offset, "; expected unique keys)");
      }
    }
  }

  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // The 4 hex digits after "\u" at position_ (which points at the 'u'); advances past them.
  uint32_t parse_hex4() {
    ++position_;  // 'u'
    uint32_t code = 0;
    for (int digit = 0; digit < 4; ++digit) {
      const int value = at_end() ? -1 : hex_digit(peek());
      if (value < 0) fail_at(position_, "4 hex digits after \\u");
      code = code * 16u + static_cast<uint32_t>(value);
      ++position_;
    }
    return code;
  }

  static void append_utf8(std::string& out, uint32_t code_point) {
    if (code_point < 0x80) {
      out += static_cast<char>(code_point);
    } else if (code_point < 0x800) {
      out += static_cast<char>(0xc0 | (code_point >> 6));
      out += static_cast<char>(0x80 | (code_point & 0x3f));
    } else if (code_point < 0x10000) {
      out += static_cast<char>(0xe0 | (code_point >> 12));
      out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (code_point & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (code_point >> 18));
      out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (code_point & 0x3f));
    }
  }

  // A string starting at the '"' at position_; returns its decoded bytes (UTF-8).
  std::string parse_string() {
    const std::size_t start = position_;
    ++position_;  // '"'
    std::string out;
    while (true) {
      if (at_end()) fail_message(start, "string is not terminated (expected a closing '\"')");
      const auto byte = static_cast<unsigned char>(peek());
      if (byte == '"') {
        ++position_;
        return out;
      }
      if (byte < 0x20) fail_at(position_, "no raw control character in a string (escape it)");
      if (byte != '\\') {
        out += static_cast<char>(byte);
        ++position_;
        continue;
      }
      const std::size_t escape_start = position_;
      ++position_;  // '\\'
      if (at_end()) fail_at(position_, "an escape character after '\\'");
      switch (peek()) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t code_point = parse_hex4();
          // UTF-16 surrogates: a high one (D800-DBFF) must be followed by "\u" + a low one
          // (DC00-DFFF); together they encode one code point above U+FFFF. A lone half encodes
          // no character, so it is rejected rather than emitted as invalid UTF-8.
          if (code_point >= 0xdc00 && code_point <= 0xdfff) {
            fail_message(escape_start,
                         "lone low surrogate \\u escape (expected a high surrogate "
                         "D800-DBFF before it)");
          }
          if (code_point >= 0xd800 && code_point <= 0xdbff) {
            if (text_.substr(position_, 2) != "\\u") {
              fail_message(escape_start,
                           "high surrogate \\u escape not followed by a \\u low "
                           "surrogate (DC00-DFFF)");
            }
            const std::size_t low_start = position_;
            ++position_;  // '\\'
            const uint32_t low = parse_hex4();
            if (low < 0xdc00 || low > 0xdfff) {
              fail_message(low_start,
                           "high surrogate \\u escape followed by a \\u escape that is "
                           "not a low surrogate (expected DC00-DFFF)");
            }
            code_point = 0x10000 + ((code_point - 0xd800) << 10) + (low - 0xdc00);
          }
          append_utf8(out, code_point);
          continue;  // parse_hex4 already advanced past the digits
        }
        default:
          fail_at(position_, "one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u after '\\'");
      }
      ++position_;
    }
  }

  // Grammar: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
  JsonValue parse_number() {
    const std::size_t start = position_;
    const auto is_digit = [&] { return !at_end() && peek() >= '0' && peek() <= '9'; };
    const bool negative = peek() == '-';
    if (negative) ++position_;
    if (!is_digit()) fail_at(position_, "a digit");
    if (peek() == '0') {
      ++position_;
      if (is_digit()) fail_at(position_, "no leading zero ('.', 'e' or the end of the number)");
    } else {
      while (is_digit())
        ++position_;
    }
    bool integral = true;
    if (!at_end() && peek() == '.') {
      integral = false;
      ++position_;
      if (!is_digit()) fail_at(position_, "a digit after the decimal point");
      while (is_digit())
        ++position_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integral = false;
      ++position_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++position_;
      if (!is_digit()) fail_at(position_, "a digit in the exponent");
      while (is_digit())
        ++position_;
    }
    const std::string_view literal = text_.substr(start, position_ - start);

    if (integral) {
      // Accumulate toward the sign's side so that INT64_MIN, whose magnitude exceeds INT64_MAX,
      // parses exactly; anything outside int64 falls through to double.
      int64_t value = 0;
      bool fits = true;
      for (std::size_t at = negative ? 1 : 0; at < literal.size() && fits; ++at) {
        const int digit = literal[at] - '0';
        if (negative) {
          fits = value >= (std::numeric_limits<int64_t>::min() + digit) / 10;
          if (fits) value = value * 10 - digit;
        } else {
          fits = value <= (std::numeric_limits<int64_t>::max() - digit) / 10;
          if (fits) value = value * 10 + digit;
        }
      }
      if (fits) return JsonValue::make_integer(value, start);
    }

    // The classic locale makes '.' the decimal point whatever the global locale; the stream
    // reads with the C library's correctly rounded conversion.
    std::istringstream stream{std::string(literal)};
    stream.imbue(std::locale::classic());
    double value = 0.0;
    stream >> value;
    if (stream.fail()) {
      // Extraction fails (value = +-max) when the literal overflows double; underflow to zero or
      // a subnormal is a correct rounding and accepted.
      nibble::detail::fail(ErrorCode::malformed, source_, ": byte ", start, ": number ", literal,
                           " is outside the range of a double");
    }
    return JsonValue::make_real(value, start);
  }

  std::string_view text_;
  std::string_view source_;
  std::size_t position_ = 0;
};

}  // namespace detail

inline JsonValue parse_json(std::string_view text, std::string_view source) {
  return detail::JsonParser(text, source).parse_document();
}

}  // namespace nibble::io
