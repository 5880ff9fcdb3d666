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
//
// Two ways in, one grammar:
//   - JsonReader, a pull parser: the caller walks the document (read_object / read_array call it
//     back per member / element) and keeps only what it needs, so memory follows the caller's
//     result, not the document (the safetensors header is read this way);
//   - parse_json, a document tree (JsonValue) built with JsonReader. A JsonValue is 24 bytes;
//     strings, arrays and objects add one allocation holding exactly their contents (empty ones
//     none), so a document of n values takes about 24 n bytes plus its strings.
// Documents are at most kMaxJsonBytes (4 GiB - 1): offsets are kept in 32 bits.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <locale>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "nibble/core/error.hpp"

namespace nibble::io {

// Arrays and objects nested deeper than this are rejected: the parsers recurse once per level,
// so the bound keeps hostile input from exhausting the stack. A top-level array is depth 1.
inline constexpr int kMaxJsonDepth = 64;
// Byte offsets are stored in 32 bits.
inline constexpr std::size_t kMaxJsonBytes = std::numeric_limits<uint32_t>::max();

struct JsonMember;

class JsonValue {
 public:
  enum class Kind : uint8_t { null, boolean, integer, real, string, array, object };
  using Array = std::vector<JsonValue>;
  // Members in document order; parse_json guarantees the keys are distinct.
  using Object = std::vector<JsonMember>;

  JsonValue() = default;
  JsonValue(const JsonValue& other);
  JsonValue(JsonValue&& other) noexcept = default;
  JsonValue& operator=(const JsonValue& other);
  JsonValue& operator=(JsonValue&& other) noexcept = default;
  ~JsonValue() = default;

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
  struct Payload;  // the string, elements or members; defined after JsonMember (incomplete here)
  struct PayloadDeleter {
    void operator()(Payload* payload) const noexcept;
  };

  JsonValue(Kind kind, std::size_t offset);
  [[noreturn]] void fail_kind(std::string_view what, const char* expected) const;

  // 24 bytes: kind, flag, 32-bit offset, one 8-byte scalar, one pointer to the contents of a
  // string / array / object (null for an empty array or object).
  Kind kind_ = Kind::null;
  bool boolean_ = false;
  uint32_t offset_ = 0;
  union {
    int64_t integer_ = 0;
    double real_;
  };
  std::unique_ptr<Payload, PayloadDeleter> payload_;
};

struct JsonMember {
  std::string key;
  JsonValue value;
  std::size_t key_offset = 0;  // byte offset of the key's opening quote
};

// A pull parser over one JSON document. Each read_* consumes one value at the current position
// (leading whitespace skipped); containers call back per member / element, and the callback
// must consume exactly one value (with read_* or skip_value). finish() checks that only
// whitespace follows. Errors are ErrorCode::malformed naming `source`, the byte offset and what
// was expected there; the checks are those described at the top of this file.
//
//   JsonReader reader(text, "header");
//   reader.read_object([&](std::string key, std::size_t key_offset) { reader.skip_value(); });
//   reader.finish();
class JsonReader {
 public:
  JsonReader(std::string_view text, std::string_view source);

  // The kind of the next value (a number is Kind::integer or Kind::real as parse_json would
  // make it); fails at end of input or on a byte that starts no value.
  JsonValue::Kind peek_kind();
  // Offset of the next value (after whitespace).
  std::size_t offset();

  void read_null();
  bool read_bool();
  std::string read_string();
  struct Number {
    bool integral = false;  // written without fraction or exponent, and fits int64
    int64_t integer = 0;
    double real = 0.0;  // the value as a double (also set when integral)
  };
  Number read_number();
  // member(std::string key, std::size_t key_offset) per member, in document order; duplicate
  // keys are rejected when the object closes.
  template <class Member>
  void read_object(Member&& member);
  // element(std::size_t index) per element.
  template <class Element>
  void read_array(Element&& element);
  // Consumes one value of any kind, checking it as strictly as the read_* would.
  void skip_value();
  void finish();

  // What the next value is, as JsonValue::describe() says it ("an integer (5)", "an array"),
  // without consuming it; scalars are parsed (and must be valid), containers are not.
  std::string describe_next();
  // Throws "<what> at byte <offset of the next value>: expected <expected>, found <its
  // description>", the message of JsonValue's accessors.
  [[noreturn]] void fail_kind(std::string_view what, std::string_view expected);

  [[noreturn]] void fail_at(std::size_t at, std::string_view expected) const;
  [[noreturn]] void fail_message(std::size_t at, std::string_view message) const;

 private:
  static constexpr std::string_view kValueExpected =
      "a JSON value (object, array, string, number, true, false or null)";

  std::string found_at(std::size_t at) const;
  bool at_end() const { return position_ >= text_.size(); }
  char peek() const { return text_[position_]; }
  void skip_whitespace();
  void expect_literal(std::string_view literal);
  void enter();  // one level deeper (checked against kMaxJsonDepth)
  void leave() { --depth_; }
  static int hex_digit(char c);
  uint32_t parse_hex4();
  static void append_utf8(std::string& out, uint32_t code_point);
  // The string starting at the '"' at position_; `out` receives its decoded bytes. Returns
  // whether it held an escape.
  bool parse_string(std::string& out);
  // Keys of one object being read: views into the text where no escape occurs, else decoded.
  struct Key {
    std::string_view text;
    std::size_t offset;
  };
  void reject_duplicate_keys(std::vector<Key>& keys) const;

  std::string_view text_;
  std::string_view source_;
  std::size_t position_ = 0;
  int depth_ = 0;
};

// Parses one JSON document: optional whitespace, one value, optional whitespace, end of input.
// `source` names the text in error messages ("model.safetensors header").
inline JsonValue parse_json(std::string_view text, std::string_view source = "JSON");

// ---- implementation: JsonValue ------------------------------------------------------------------

// Exactly the kind's contents (one allocation per string, non-empty array or object).
struct JsonValue::Payload {
  std::variant<std::string, Array, Object> content;
};

inline void JsonValue::PayloadDeleter::operator()(Payload* payload) const noexcept {
  delete payload;
}

inline JsonValue::JsonValue(Kind kind, std::size_t offset)
    : kind_(kind),
      offset_(static_cast<uint32_t>(std::min<std::size_t>(offset, kMaxJsonBytes))) {}

inline JsonValue::JsonValue(const JsonValue& other)
    : kind_(other.kind_), boolean_(other.boolean_), offset_(other.offset_) {
  if (kind_ == Kind::real) {
    real_ = other.real_;
  } else {
    integer_ = other.integer_;
  }
  if (other.payload_) payload_.reset(new Payload(*other.payload_));
}

inline JsonValue& JsonValue::operator=(const JsonValue& other) {
  if (this != &other) *this = JsonValue(other);
  return *this;
}

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
  result.payload_.reset(new Payload{std::move(value)});
  return result;
}

inline JsonValue JsonValue::make_array(Array elements, std::size_t offset) {
  JsonValue result(Kind::array, offset);
  if (!elements.empty()) {
    result.payload_.reset(new Payload{std::move(elements)});
  }
  return result;
}

inline JsonValue JsonValue::make_object(Object members, std::size_t offset) {
  JsonValue result(Kind::object, offset);
  if (!members.empty()) {
    result.payload_.reset(new Payload{std::move(members)});
  }
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
  return std::get<std::string>(payload_->content);
}

inline const JsonValue::Array& JsonValue::as_array(std::string_view what) const {
  static const Array kEmpty;
  if (kind_ != Kind::array) fail_kind(what, "an array");
  return payload_ ? std::get<Array>(payload_->content) : kEmpty;
}

inline const JsonValue::Object& JsonValue::as_object(std::string_view what) const {
  static const Object kEmpty;
  if (kind_ != Kind::object) fail_kind(what, "an object");
  return payload_ ? std::get<Object>(payload_->content) : kEmpty;
}

inline const JsonValue* JsonValue::find(std::string_view key) const {
  if (kind_ != Kind::object || !payload_) return nullptr;
  for (const JsonMember& member : std::get<Object>(payload_->content)) {
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

// ---- implementation: JsonReader -----------------------------------------------------------------

inline JsonReader::JsonReader(std::string_view text, std::string_view source)
    : text_(text), source_(source) {
  if (text.size() > kMaxJsonBytes) {
    nibble::detail::fail(ErrorCode::unsupported, source_, ": ", text.size(),
                         " bytes of JSON (expected at most ", kMaxJsonBytes, ")");
  }
}

// What sits at `at`, for messages: 'x', byte 0x1f, or end of input.
inline std::string JsonReader::found_at(std::size_t at) const {
  if (at >= text_.size()) return "end of input";
  const auto byte = static_cast<unsigned char>(text_[at]);
  if (byte >= 0x20 && byte < 0x7f) return std::string("'") + static_cast<char>(byte) + "'";
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02x", byte);
  return std::string("byte ") + hex;
}

inline void JsonReader::fail_at(std::size_t at, std::string_view expected) const {
  nibble::detail::fail(ErrorCode::malformed, source_, ": byte ", at, ": expected ", expected,
                       ", found ", found_at(at));
}

inline void JsonReader::fail_message(std::size_t at, std::string_view message) const {
  nibble::detail::fail(ErrorCode::malformed, source_, ": byte ", at, ": ", message);
}

// RFC 8259 whitespace is exactly space, tab, line feed and carriage return.
inline void JsonReader::skip_whitespace() {
  while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) {
    ++position_;
  }
}

inline void JsonReader::expect_literal(std::string_view literal) {
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

inline void JsonReader::enter() {
  if (++depth_ > kMaxJsonDepth) {
    nibble::detail::fail(ErrorCode::malformed, source_, ": byte ", position_,
                         ": arrays/objects nested ", depth_, " deep (expected at most ",
                         kMaxJsonDepth, ")");
  }
}

inline std::size_t JsonReader::offset() {
  skip_whitespace();
  return position_;
}

inline JsonValue::Kind JsonReader::peek_kind() {
  skip_whitespace();
  if (at_end()) fail_at(position_, kValueExpected);
  switch (peek()) {
    case '{':
      return JsonValue::Kind::object;
    case '[':
      return JsonValue::Kind::array;
    case '"':
      return JsonValue::Kind::string;
    case 't':
    case 'f':
      return JsonValue::Kind::boolean;
    case 'n':
      return JsonValue::Kind::null;
    default:
      break;
  }
  if (peek() != '-' && (peek() < '0' || peek() > '9')) fail_at(position_, kValueExpected);
  // Integral when no fraction or exponent follows the digits and it fits int64 (read_number
  // decides the latter; a caller needing the exact kind reads the number).
  std::size_t at = position_ + (peek() == '-' ? 1 : 0);
  while (at < text_.size() && text_[at] >= '0' && text_[at] <= '9')
    ++at;
  const bool fraction = at < text_.size() && (text_[at] == '.' || text_[at] == 'e' ||
                                              text_[at] == 'E');
  return fraction ? JsonValue::Kind::real : JsonValue::Kind::integer;
}

inline void JsonReader::read_null() {
  skip_whitespace();
  if (at_end() || peek() != 'n') fail_at(position_, "null");
  expect_literal("null");
}

inline bool JsonReader::read_bool() {
  skip_whitespace();
  if (!at_end() && peek() == 't') {
    expect_literal("true");
    return true;
  }
  if (!at_end() && peek() == 'f') {
    expect_literal("false");
    return false;
  }
  fail_at(position_, "true or false");
}

inline std::string JsonReader::read_string() {
  skip_whitespace();
  if (at_end() || peek() != '"') fail_at(position_, "a string");
  std::string out;
  parse_string(out);
  return out;
}

template <class Member>
void JsonReader::read_object(Member&& member) {
  skip_whitespace();
  if (at_end() || peek() != '{') fail_at(position_, "an object");
  enter();
  ++position_;  // '{'
  std::vector<Key> keys;
  std::vector<std::unique_ptr<std::string>> decoded;  // keys that held escapes
  skip_whitespace();
  if (!at_end() && peek() == '}') {
    ++position_;
    leave();
    return;
  }
  while (true) {
    skip_whitespace();
    if (at_end() || peek() != '"') fail_at(position_, "a string key");
    const std::size_t key_offset = position_;
    std::string key;
    const bool escaped = parse_string(key);
    if (escaped) {
      decoded.push_back(std::make_unique<std::string>(key));
      keys.push_back({*decoded.back(), key_offset});
    } else {
      keys.push_back({text_.substr(key_offset + 1, key.size()), key_offset});
    }
    skip_whitespace();
    if (at_end() || peek() != ':') fail_at(position_, "':' after an object key");
    ++position_;
    skip_whitespace();
    member(std::move(key), key_offset);
    skip_whitespace();
    if (at_end()) fail_at(position_, "',' or '}' after an object member");
    if (peek() == '}') {
      ++position_;
      reject_duplicate_keys(keys);
      leave();
      return;
    }
    if (peek() != ',') fail_at(position_, "',' or '}' after an object member");
    ++position_;
  }
}

template <class Element>
void JsonReader::read_array(Element&& element) {
  skip_whitespace();
  if (at_end() || peek() != '[') fail_at(position_, "an array");
  enter();
  ++position_;  // '['
  skip_whitespace();
  if (!at_end() && peek() == ']') {
    ++position_;
    leave();
    return;
  }
  for (std::size_t index = 0;; ++index) {
    skip_whitespace();
    element(index);
    skip_whitespace();
    if (at_end()) fail_at(position_, "',' or ']' after an array element");
    if (peek() == ']') {
      ++position_;
      leave();
      return;
    }
    if (peek() != ',') fail_at(position_, "',' or ']' after an array element");
    ++position_;
  }
}

inline void JsonReader::skip_value() {
  switch (peek_kind()) {
    case JsonValue::Kind::object:
      read_object([&](std::string, std::size_t) { skip_value(); });
      return;
    case JsonValue::Kind::array:
      read_array([&](std::size_t) { skip_value(); });
      return;
    case JsonValue::Kind::string: {
      std::string ignored;
      parse_string(ignored);
      return;
    }
    case JsonValue::Kind::boolean:
      (void)read_bool();
      return;
    case JsonValue::Kind::null:
      read_null();
      return;
    default:
      (void)read_number();
      return;
  }
}

inline std::string JsonReader::describe_next() {
  const JsonValue::Kind kind = peek_kind();
  const std::size_t start = position_;
  const int depth = depth_;
  std::string text;
  switch (kind) {
    case JsonValue::Kind::array:
      return "an array";
    case JsonValue::Kind::object:
      return "an object";
    case JsonValue::Kind::string:
      return "a string";
    case JsonValue::Kind::null:
      read_null();
      text = "null";
      break;
    case JsonValue::Kind::boolean:
      text = read_bool() ? "true" : "false";
      break;
    default: {
      const Number number = read_number();
      text = (number.integral ? JsonValue::make_integer(number.integer)
                              : JsonValue::make_real(number.real))
                 .describe();
      break;
    }
  }
  position_ = start;
  depth_ = depth;
  return text;
}

inline void JsonReader::fail_kind(std::string_view what, std::string_view expected) {
  const std::size_t at = offset();
  const std::string found = describe_next();
  nibble::detail::fail(ErrorCode::malformed, what, " at byte ", at, ": expected ", expected,
                       ", found ", found);
}

inline void JsonReader::finish() {
  skip_whitespace();
  if (position_ != text_.size()) fail_at(position_, "end of input after the JSON value");
}

// Sorting the keys by (text, offset) puts equal keys side by side, the first occurrence first:
// O(n log n), so headers with many thousands of tensors stay fast.
inline void JsonReader::reject_duplicate_keys(std::vector<Key>& keys) const {
  if (keys.size() < 2) return;
  std::sort(keys.begin(), keys.end(), [](const Key& a, const Key& b) {
    if (a.text != b.text) return a.text < b.text;
    return a.offset < b.offset;
  });
  for (std::size_t rank = 1; rank < keys.size(); ++rank) {
    if (keys[rank - 1].text == keys[rank].text) {
      nibble::detail::fail(ErrorCode::malformed, source_, ": byte ", keys[rank].offset,
                           ": duplicate object key \"", keys[rank].text, "\" (first at byte ",
                           keys[rank - 1].offset, "; expected unique keys)");
    }
  }
}

inline int JsonReader::hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The 4 hex digits after "\u" at position_ (which points at the 'u'); advances past them.
inline uint32_t JsonReader::parse_hex4() {
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

inline void JsonReader::append_utf8(std::string& out, uint32_t code_point) {
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

inline bool JsonReader::parse_string(std::string& out) {
  const std::size_t start = position_;
  ++position_;  // '"'
  bool escaped = false;
  while (true) {
    // The run of plain bytes up to the next quote, backslash or control byte, copied at once.
    std::size_t end = position_;
    while (end < text_.size()) {
      const auto byte = static_cast<unsigned char>(text_[end]);
      if (byte == '"' || byte == '\\' || byte < 0x20) break;
      ++end;
    }
    out.append(text_.data() + position_, end - position_);
    position_ = end;
    if (at_end()) fail_message(start, "string is not terminated (expected a closing '\"')");
    const auto byte = static_cast<unsigned char>(peek());
    if (byte == '"') {
      ++position_;
      return escaped;
    }
    if (byte < 0x20) fail_at(position_, "no raw control character in a string (escape it)");
    escaped = true;
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
inline JsonReader::Number JsonReader::read_number() {
  skip_whitespace();
  const std::size_t start = position_;
  const auto is_digit = [&] { return !at_end() && peek() >= '0' && peek() <= '9'; };
  if (at_end() || (peek() != '-' && !is_digit())) fail_at(position_, "a number");
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

  Number number;
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
    if (fits) {
      number.integral = true;
      number.integer = value;
      number.real = static_cast<double>(value);
      return number;
    }
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
  number.real = value;
  return number;
}

// ---- implementation: parse_json ------------------------------------------------------------------

namespace detail {

inline JsonValue read_json_value(JsonReader& reader) {
  const std::size_t start = reader.offset();
  switch (reader.peek_kind()) {
    case JsonValue::Kind::object: {
      JsonValue::Object members;
      reader.read_object([&](std::string key, std::size_t key_offset) {
        JsonMember member;
        member.key = std::move(key);
        member.key_offset = key_offset;
        member.value = read_json_value(reader);
        members.push_back(std::move(member));
      });
      members.shrink_to_fit();
      return JsonValue::make_object(std::move(members), start);
    }
    case JsonValue::Kind::array: {
      JsonValue::Array elements;
      reader.read_array([&](std::size_t) { elements.push_back(read_json_value(reader)); });
      elements.shrink_to_fit();
      return JsonValue::make_array(std::move(elements), start);
    }
    case JsonValue::Kind::string:
      return JsonValue::make_string(reader.read_string(), start);
    case JsonValue::Kind::boolean:
      return JsonValue::make_bool(reader.read_bool(), start);
    case JsonValue::Kind::null:
      reader.read_null();
      return JsonValue::make_null(start);
    default: {
      const JsonReader::Number number = reader.read_number();
      return number.integral ? JsonValue::make_integer(number.integer, start)
                             : JsonValue::make_real(number.real, start);
    }
  }
}

}  // namespace detail

inline JsonValue parse_json(std::string_view text, std::string_view source) {
  JsonReader reader(text, source);
  JsonValue value = detail::read_json_value(reader);
  reader.finish();
  return value;
}

}  // namespace nibble::io
