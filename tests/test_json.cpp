// parse_json: every kind of value, escapes, number edge cases, and one test per rejection.
//
// Expected values are written out by hand from RFC 8259 and the Unicode standard (UTF-8 bytes of
// each code point are listed in the tests), not produced by another parser.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "nibble/io/json.hpp"

#include "support/allocation_counter.hpp"

NIBBLE_DEFINE_COUNTING_OPERATOR_NEW

namespace {

using nibble::Error;
using nibble::ErrorCode;
using nibble::io::JsonValue;
using nibble::io::parse_json;

// The Error parse_json throws for `text`; fails the test if it parses.
Error parse_error(const std::string& text) {
  try {
    parse_json(text, "doc");
  } catch (const Error& error) {
    return error;
  }
  ADD_FAILURE() << "parsed without error: " << text;
  return Error(ErrorCode::invalid_argument, "no error");
}

// Asserts `text` is rejected as malformed with a message holding `fragment`.
void expect_rejected(const std::string& text, const std::string& fragment) {
  const Error error = parse_error(text);
  EXPECT_EQ(error.code(), ErrorCode::malformed) << text;
  EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos)
      << "input: " << text << "\nmessage: " << error.what() << "\nexpected fragment: " << fragment;
}

TEST(Json, Literals) {
  EXPECT_TRUE(parse_json("null").is_null());
  EXPECT_TRUE(parse_json("true").as_bool());
  EXPECT_FALSE(parse_json("false").as_bool());
  EXPECT_TRUE(parse_json(" \t\r\n true \t\r\n ").as_bool());
}

TEST(Json, Strings) {
  EXPECT_EQ(parse_json(R"("")").as_string(), "");
  EXPECT_EQ(parse_json(R"("plain text")").as_string(), "plain text");
  EXPECT_EQ(parse_json(R"("\" \\ \/ \b \f \n \r \t")").as_string(), "\" \\ / \b \f \n \r \t");
  // \u escapes at each UTF-8 length: U+0041 (1 byte), U+00E9 (2), U+20AC (3), U+0000.
  EXPECT_EQ(parse_json(R"("\u0041\u00e9\u20AC")").as_string(), "A\xc3\xa9\xe2\x82\xac");
  EXPECT_EQ(parse_json(R"("a\u0000b")").as_string(), std::string("a\0b", 3));
  // Raw multi-byte UTF-8 and even invalid UTF-8 pass through unchanged.
  EXPECT_EQ(parse_json("\"\xc3\xa9\xff\"").as_string(), "\xc3\xa9\xff");
}

TEST(Json, SurrogatePairsBecomeOneFourByteCodePoint) {
  // U+1F600 = D83D DE00 in UTF-16 = F0 9F 98 80 in UTF-8.
  EXPECT_EQ(parse_json(R"("\ud83d\ude00")").as_string(), "\xf0\x9f\x98\x80");
  // U+10000 (D800 DC00) and U+10FFFF (DBFF DFFF), the first and last supplementary code points.
  EXPECT_EQ(parse_json(R"("\uD800\uDC00")").as_string(), "\xf0\x90\x80\x80");
  EXPECT_EQ(parse_json(R"("\uDBFF\uDFFF")").as_string(), "\xf4\x8f\xbf\xbf");
}

TEST(Json, IntegersStayExact) {
  EXPECT_EQ(parse_json("0").as_int(), 0);
  EXPECT_EQ(parse_json("-0").as_int(), 0);
  EXPECT_EQ(parse_json("42").as_int(), 42);
  EXPECT_EQ(parse_json("-17").as_int(), -17);
  // 2^53 + 1 is not a double; int64 keeps it.
  EXPECT_EQ(parse_json("9007199254740993").as_int(), int64_t{9007199254740993});
  EXPECT_EQ(parse_json("9223372036854775807").as_int(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(parse_json("-9223372036854775808").as_int(), std::numeric_limits<int64_t>::min());
}

TEST(Json, IntegersBeyondInt64BecomeReal) {
  const JsonValue above = parse_json("9223372036854775808");
  EXPECT_EQ(above.kind(), JsonValue::Kind::real);
  EXPECT_EQ(above.as_double(), 9223372036854775808.0);
  const JsonValue below = parse_json("-9223372036854775809");
  EXPECT_EQ(below.kind(), JsonValue::Kind::real);
  EXPECT_EQ(below.as_double(), -9223372036854775808.0);
  EXPECT_EQ(parse_json("18446744073709551616").as_double(), 18446744073709551616.0);  // 2^64
}

TEST(Json, RealNumbers) {
  EXPECT_EQ(parse_json("1.5").as_double(), 1.5);
  EXPECT_EQ(parse_json("-0.25").as_double(), -0.25);
  EXPECT_EQ(parse_json("1e3").as_double(), 1000.0);
  EXPECT_EQ(parse_json("1E+3").as_double(), 1000.0);
  EXPECT_EQ(parse_json("25e-2").as_double(), 0.25);
  EXPECT_EQ(parse_json("0.1").as_double(), 0.1);  // correctly rounded, like the literal
  EXPECT_EQ(parse_json("1.0").kind(), JsonValue::Kind::real);  // a fraction makes it real
  EXPECT_EQ(parse_json("1e0").kind(), JsonValue::Kind::real);
  EXPECT_EQ(parse_json("7").as_double(), 7.0);  // integers read as double too
  // Underflow rounds (to a subnormal or zero) rather than failing.
  EXPECT_EQ(parse_json("4.9406564584124654e-324").as_double(),
            std::numeric_limits<double>::denorm_min());
  EXPECT_EQ(parse_json("1e-400").as_double(), 0.0);
  EXPECT_EQ(parse_json("1.7976931348623157e308").as_double(), std::numeric_limits<double>::max());
}

TEST(Json, Arrays) {
  EXPECT_TRUE(parse_json("[]").as_array().empty());
  EXPECT_TRUE(parse_json("[ \n ]").as_array().empty());
  const JsonValue mixed = parse_json(R"([1, "two", [3], {"four": 4}, null, true])");
  const JsonValue::Array& elements = mixed.as_array();
  ASSERT_EQ(elements.size(), 6u);
  EXPECT_EQ(elements[0].as_int(), 1);
  EXPECT_EQ(elements[1].as_string(), "two");
  EXPECT_EQ(elements[2].as_array()[0].as_int(), 3);
  EXPECT_EQ(elements[3].find("four")->as_int(), 4);
  EXPECT_TRUE(elements[4].is_null());
  EXPECT_TRUE(elements[5].as_bool());
}

TEST(Json, ObjectsKeepDocumentOrderAndOffsets) {
  EXPECT_TRUE(parse_json("{}").as_object().empty());
  const JsonValue object = parse_json(R"({"b": 1, "a": [true], "\u0063": "x"})");
  const JsonValue::Object& members = object.as_object();
  ASSERT_EQ(members.size(), 3u);
  EXPECT_EQ(members[0].key, "b");
  EXPECT_EQ(members[1].key, "a");
  EXPECT_EQ(members[2].key, "c");
  EXPECT_EQ(members[0].key_offset, 1u);
  EXPECT_EQ(members[1].value.offset(), 14u);  // the '[' of [true]
  EXPECT_EQ(object.find("c")->as_string(), "x");
  EXPECT_EQ(object.find("missing"), nullptr);
  EXPECT_EQ(members[0].value.find("b"), nullptr);  // not an object
}

TEST(Json, NestingUpToTheLimit) {
  const std::string deepest =
      std::string(nibble::io::kMaxJsonDepth, '[') + std::string(nibble::io::kMaxJsonDepth, ']');
  EXPECT_TRUE(parse_json(deepest).is_array());
  std::string objects;
  for (int level = 0; level < nibble::io::kMaxJsonDepth; ++level)
    objects += "{\"k\":";
  objects += "0" + std::string(nibble::io::kMaxJsonDepth, '}');
  EXPECT_TRUE(parse_json(objects).is_object());
}

TEST(Json, AccessorsThrowOnKindMismatch) {
  const JsonValue number = parse_json("  5");
  try {
    number.as_string("tensor \"w\" dtype");
    FAIL() << "as_string accepted a number";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::malformed);
    EXPECT_STREQ(error.what(),
                 "nibble: tensor \"w\" dtype at byte 2: expected a string, found an integer (5)");
  }
  EXPECT_THROW(parse_json("1.5").as_int(), Error);
  EXPECT_THROW(parse_json("\"1\"").as_double(), Error);
  EXPECT_THROW(parse_json("null").as_bool(), Error);
  EXPECT_THROW(parse_json("{}").as_array(), Error);
  EXPECT_THROW(parse_json("[]").as_object(), Error);
}

TEST(Json, RejectsEmptyInput) {
  expect_rejected("",
                  "doc: byte 0: expected a JSON value (object, array, string, number, true, "
                  "false or null), found end of input");
  expect_rejected("   ",
                  "byte 3: expected a JSON value (object, array, string, number, true, "
                  "false or null), found end of input");
}

TEST(Json, RejectsTrailingContent) {
  expect_rejected("{} x", "byte 3: expected end of input after the JSON value, found 'x'");
  expect_rejected("1 2", "byte 2: expected end of input");
  expect_rejected("[]]", "byte 2: expected end of input");
  expect_rejected(std::string("{}\0", 3), "found byte 0x00");
}

TEST(Json, RejectsDuplicateKeys) {
  expect_rejected(R"({"a": 1, "b": 2, "a": 3})",
                  "byte 17: duplicate object key \"a\" (first at byte 1");
  // Duplicates are compared after unescaping: "\u0061" is "a".
  expect_rejected(R"({"a": 1, "\u0061": 2})", "duplicate object key \"a\"");
  // Nested objects are checked too; equal keys in sibling objects are fine.
  expect_rejected(R"({"x": {"k": 1, "k": 1}})", "duplicate object key \"k\"");
  EXPECT_NO_THROW(parse_json(R"([{"k": 1}, {"k": 2}])"));
}

TEST(Json, RejectsNestingBeyondTheLimit) {
  const int depth = nibble::io::kMaxJsonDepth + 1;
  expect_rejected(std::string(static_cast<std::size_t>(depth), '[') +
                      std::string(static_cast<std::size_t>(depth), ']'),
                  "nested 65 deep (expected at most 64)");
  // Far deeper input fails the same way instead of overflowing the stack.
  expect_rejected(std::string(100000, '['), "expected at most 64");
  std::string objects;
  for (int level = 0; level < 100000; ++level)
    objects += "{\"k\":";
  expect_rejected(objects, "expected at most 64");
}

TEST(Json, RejectsControlCharactersInStrings) {
  expect_rejected("\"a\nb\"", "byte 2: expected no raw control character in a string");
  expect_rejected("\"a\tb\"", "byte 2: expected no raw control character");
  expect_rejected(std::string("\"a\0b\"", 5), "byte 2: expected no raw control character");
  expect_rejected("\"\x1f\"", "found byte 0x1f");
}

TEST(Json, RejectsBadStrings) {
  expect_rejected("\"abc", "byte 0: string is not terminated");
  expect_rejected(R"("\x")", "byte 2: expected one of");
  expect_rejected(R"("\)", "expected an escape character");
  expect_rejected(R"("\u12")", "byte 5: expected 4 hex digits after \\u, found '\"'");
  expect_rejected(R"("\u12G4")", "expected 4 hex digits");
  expect_rejected("'single'", "expected a JSON value");
}

TEST(Json, RejectsLoneSurrogates) {
  expect_rejected(R"("\ude00")", "byte 1: lone low surrogate");
  expect_rejected(R"("\ud83d")", "byte 1: high surrogate \\u escape not followed");
  expect_rejected(R"("\ud83dx")", "not followed by a \\u low surrogate");
  expect_rejected(R"("\ud83d\u0041")",
                  "byte 7: high surrogate \\u escape followed by a \\u escape "
                  "that is not a low surrogate");
  expect_rejected(R"("\ud83d\ud83d")", "not a low surrogate");
}

TEST(Json, RejectsBadNumbers) {
  expect_rejected("-", "byte 1: expected a digit, found end of input");
  expect_rejected("-a", "byte 1: expected a digit, found 'a'");
  expect_rejected("01", "byte 1: expected no leading zero");
  expect_rejected("-01", "byte 2: expected no leading zero");
  expect_rejected("00", "no leading zero");
  expect_rejected("1.", "byte 2: expected a digit after the decimal point");
  expect_rejected(".5", "byte 0: expected a JSON value");
  expect_rejected("+1", "byte 0: expected a JSON value");
  expect_rejected("1e", "byte 2: expected a digit in the exponent");
  expect_rejected("1e+", "byte 3: expected a digit in the exponent");
  expect_rejected("0x10", "byte 1: expected end of input");
  expect_rejected("1e400", "byte 0: number 1e400 is outside the range of a double");
  expect_rejected("-1e400", "outside the range of a double");
  expect_rejected("NaN", "expected a JSON value");
  expect_rejected("Infinity", "expected a JSON value");
}

TEST(Json, RejectsBadLiterals) {
  expect_rejected("tru", "byte 3: expected the literal true, found end of input");
  expect_rejected("nul1", "byte 3: expected the literal null, found '1'");
  expect_rejected("False", "expected a JSON value");
}

TEST(Json, RejectsBadStructure) {
  expect_rejected("[1,]", "byte 3: expected a JSON value");
  expect_rejected("[1 2]", "byte 3: expected ',' or ']' after an array element, found '2'");
  expect_rejected("[1", "byte 2: expected ',' or ']'");
  expect_rejected("{\"a\" 1}", "byte 5: expected ':' after an object key");
  expect_rejected("{\"a\": 1,}", "byte 8: expected a string key, found '}'");
  expect_rejected("{a: 1}", "byte 1: expected a string key, found 'a'");
  expect_rejected("{\"a\": 1 \"b\": 2}", "byte 8: expected ',' or '}' after an object member");
  expect_rejected("{\"a\":}", "byte 5: expected a JSON value");
  expect_rejected("{", "byte 1: expected a string key, found end of input");
  expect_rejected("\xef\xbb\xbf{}", "false or null), found byte 0xef");  // BOM
}

TEST(Json, ErrorsNameTheSource) {
  try {
    parse_json("[1,", "model.safetensors header");
    FAIL() << "parsed";
  } catch (const Error& error) {
    EXPECT_STREQ(error.what(),
                 "nibble: model.safetensors header: byte 3: expected a JSON value (object, array, "
                 "string, number, true, false or null), found end of input");
  }
}

// ---- memory ---------------------------------------------------------------------------------------

static_assert(sizeof(void*) != 8 || sizeof(JsonValue) == 24,
              "a JsonValue is 24 bytes on 64-bit targets (json.hpp's memory bound)");

// A document tree costs about 24 bytes per value plus its strings (json.hpp), where it used to
// cost ~120 (~240 with vector growth): a hostile 10 MB array of 5 M values took over 1 GB.
TEST(Json, ADocumentTreeCostsAbout24BytesPerValue) {
  const int64_t count = 1 << 20;
  std::string ones = "[";
  for (int64_t index = 0; index < count; ++index)
    ones += index ? ",1" : "1";
  ones += "]";
  {
    nibble::testing::AllocationPeak peak;
    const JsonValue value = parse_json(ones);
    ASSERT_EQ(value.as_array().size(), static_cast<std::size_t>(count));
    // Held once parsed: the elements, shrunk to fit; at most 2x while the vector grows.
    EXPECT_LE(peak.bytes(), 2 * 24 * count + 4096) << peak.bytes() / count << " bytes per value";
  }
  std::string empties = "[";
  for (int64_t index = 0; index < count; ++index)
    empties += index ? ",[]" : "[]";
  empties += "]";
  nibble::testing::AllocationPeak peak;
  const JsonValue value = parse_json(empties);
  EXPECT_TRUE(value.as_array()[0].as_array().empty());
  EXPECT_LE(peak.bytes(), 2 * 24 * count + 4096) << "empty arrays allocate nothing";
}

TEST(Json, CopiesAreDeep) {
  JsonValue original = parse_json(R"({"a": [1, "two", {"b": 2.5}], "c": "x"})");
  const JsonValue copy = original;
  original = parse_json("null");
  EXPECT_EQ(copy.find("a")->as_array()[1].as_string(), "two");
  EXPECT_EQ(copy.find("a")->as_array()[2].find("b")->as_double(), 2.5);
  EXPECT_EQ(copy.find("c")->offset(), 35u);  // the quote of "x"
}

// ---- the pull parser ------------------------------------------------------------------------------

TEST(JsonReader, WalksADocumentWithoutATree) {
  nibble::io::JsonReader reader(R"( {"n": [1, -2.5e1, true], "s": "\u00e9", "z": null} )", "doc");
  std::vector<std::string> seen;
  reader.read_object([&](std::string key, std::size_t key_offset) {
    seen.push_back(key + "@" + std::to_string(key_offset));
    if (key == "n") {
      reader.read_array([&](std::size_t index) {
        if (index == 0) {
          EXPECT_EQ(reader.read_number().integer, 1);
        } else if (index == 1) {
          EXPECT_EQ(reader.read_number().real, -25.0);
        } else {
          EXPECT_TRUE(reader.read_bool());
        }
      });
    } else if (key == "s") {
      EXPECT_EQ(reader.read_string(), "\xc3\xa9");
    } else {
      EXPECT_EQ(reader.describe_next(), "null");
      reader.skip_value();
    }
  });
  reader.finish();
  EXPECT_EQ(seen, (std::vector<std::string>{"n@2", "s@26", "z@41"}));
}

TEST(JsonReader, SkippedValuesAreCheckedAsStrictly) {
  for (const char* text : {R"({"a": [1, 01]})", R"({"a": {"k": 1, "k": 2}})", R"({"a": "\ud800"})",
                           R"({"a": [[[1]]], "a": 2})"}) {
    nibble::io::JsonReader reader(text, "doc");
    EXPECT_THROW(
        {
          reader.read_object([&](std::string, std::size_t) { reader.skip_value(); });
          reader.finish();
        },
        Error)
        << text;
  }
}

TEST(JsonReader, KindErrorsNameWhatWasFound) {
  nibble::io::JsonReader reader("  [7, 2.5]", "doc");
  EXPECT_EQ(reader.describe_next(), "an array");
  reader.read_array([&](std::size_t index) {
    try {
      reader.fail_kind("element", "a string");
    } catch (const Error& error) {
      EXPECT_STREQ(error.what(), index == 0
                                     ? "nibble: element at byte 3: expected a string, found an "
                                       "integer (7)"
                                     : "nibble: element at byte 6: expected a string, found a "
                                       "non-integer number (2.5)");
    }
    reader.skip_value();
  });
  reader.finish();
}

}  // namespace
