// libFuzzer: io/json.hpp. parse_json and the pull parser (JsonReader::skip_value) must accept and
// refuse exactly the same documents with the same message (one grammar, two ways in), each
// refusal a nibble::Error; a parsed tree's accessors, copies and describe() never crash.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_support.hpp"
#include "nibble/io/json.hpp"

namespace {

// Walks the tree: every accessor of every value.
void visit(const nibble::io::JsonValue& value, int depth) {
  if (depth == 0) (void)value.describe();
  (void)value.offset();
  switch (value.kind()) {
    case nibble::io::JsonValue::Kind::array:
      for (const auto& element : value.as_array())
        visit(element, depth + 1);
      break;
    case nibble::io::JsonValue::Kind::object:
      for (const auto& member : value.as_object()) {
        if (value.find(member.key) != &member.value) nibble::fuzz::fail("find() disagrees");
        visit(member.value, depth + 1);
      }
      break;
    case nibble::io::JsonValue::Kind::string:
      (void)value.as_string();
      break;
    case nibble::io::JsonValue::Kind::integer:
      if (value.as_double() != static_cast<double>(value.as_int())) {
        nibble::fuzz::fail("integer and double views differ");
      }
      break;
    default:
      break;
  }
  if (depth > nibble::io::kMaxJsonDepth) nibble::fuzz::fail("a tree deeper than the limit");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  bool tree_ok = false, pull_ok = false;
  std::string tree_error, pull_error;
  try {
    const nibble::io::JsonValue value = nibble::io::parse_json(text, "fuzz");
    const nibble::io::JsonValue copy = value;  // deep copy, then both destroyed
    visit(copy, 0);
    tree_ok = true;
  } catch (const nibble::Error& error) {
    tree_error = error.what();
  }
  try {
    nibble::io::JsonReader reader(text, "fuzz");
    (void)reader.describe_next();
    reader.skip_value();
    reader.finish();
    pull_ok = true;
  } catch (const nibble::Error& error) {
    pull_error = error.what();
  }
  if (tree_ok != pull_ok) {
    nibble::fuzz::fail("parse_json " + std::string(tree_ok ? "accepts" : "refuses") +
                       " what the pull parser " + (pull_ok ? "accepts" : "refuses") + ": " +
                       tree_error + pull_error);
  }
  if (tree_error != pull_error) {
    nibble::fuzz::fail("the two parsers refuse with different messages:\n  " + tree_error +
                       "\n  " + pull_error);
  }
  return 0;
}
