// SafetensorsFile: files assembled byte by byte in a temporary directory, one valid file with
// every kind of entry and one test per way a file can be wrong, plus seeded random mutations.
// SafetensorsWriter: bytes against a header derived by hand, and read back by the reader (the
// Python tests also open its files with the `safetensors` package).
//
// Expected values are independent of nibble's converters: fp16/bf16 patterns are decoded by hand
// from the IEEE / bfloat16 definitions (noted beside each), fp32 patterns come from their bits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "nibble/io/safetensors.hpp"

#include "support/allocation_counter.hpp"

NIBBLE_DEFINE_COUNTING_OPERATOR_NEW

namespace {

namespace fs = std::filesystem;
using nibble::DType;
using nibble::Error;
using nibble::ErrorCode;
using nibble::io::SafetensorsFile;
using nibble::io::SafetensorsWriter;
using nibble::io::TensorInfo;

// `values`, each `byte_count` bytes little-endian, appended to a byte string.
std::string le_bytes(std::initializer_list<uint64_t> values, int byte_count) {
  std::string bytes;
  for (uint64_t value : values) {
    for (int index = 0; index < byte_count; ++index)
      bytes += static_cast<char>((value >> (8 * index)) & 0xffu);
  }
  return bytes;
}

uint32_t bits_of(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    directory_ =
        fs::temp_directory_path() / (std::string("nibble_test_safetensors_") + test->name() + "_" +
                                     std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    fs::remove_all(directory_);
    fs::create_directories(directory_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(directory_, ignored);
  }

  // Writes `bytes` verbatim to a file in the test's directory; returns its path.
  std::string write_bytes(const std::string& bytes, const std::string& name = "file.safetensors") {
    const std::string path = (directory_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << path;
    return path;
  }

  // A safetensors file: N (= header.size()) as 8 bytes LE, the header, the data section.
  std::string write_file(const std::string& header, const std::string& data,
                         const std::string& name = "file.safetensors") {
    return write_bytes(le_bytes({header.size()}, 8) + header + data, name);
  }

  // The Error open() throws for a file with `header` and `data`; fails the test if it opens.
  Error open_error(const std::string& header, const std::string& data) {
    return open_error_at(write_file(header, data));
  }

  static Error open_error_at(const std::string& path) {
    try {
      SafetensorsFile::open(path);
    } catch (const Error& error) {
      return error;
    }
    ADD_FAILURE() << "opened without error: " << path;
    return Error(ErrorCode::invalid_argument, "no error");
  }

  fs::path directory_;
};

// Asserts `error` has `code` and a message holding `fragment`.
void expect_error(const Error& error, ErrorCode code, const std::string& fragment) {
  EXPECT_EQ(error.code(), code) << error.what();
  EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos)
      << "message: " << error.what() << "\nexpected fragment: " << fragment;
}

// One F32 [2] tensor named `name` at [begin, begin + 8) of the data section.
std::string f32_pair_entry(const std::string& name, int begin) {
  return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(begin + 8) + "]}";
}

const std::string kTwoFloats = le_bytes({0x3f800000u, 0x40000000u}, 4);  // 1.0f, 2.0f

// Every dtype kind, a 0-sized tensor, a scalar and metadata; entries deliberately not in offset
// order, and the header padded with spaces as the Python writer pads it to 8 bytes.
//   data section: f16 [0,12) bf16 [12,22) f32 [22,38) empty [38,38) i32 [38,46)
//                 scalar [46,54) mask [54,57) bytes [57,59)
const std::string kValidHeader =
    R"({"scalar":{"dtype":"I64","shape":[],"data_offsets":[46,54]},)"
    R"("__metadata__":{"format":"pt","note":"caf\u00e9"},)"
    R"("bf16":{"dtype":"BF16","shape":[5],"data_offsets":[12,22]},)"
    R"("f16":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},)"
    R"("f32":{"shape":[2,2],"dtype":"F32","data_offsets":[22,38]},)"
    R"("empty":{"dtype":"F32","shape":[0,4],"data_offsets":[38,38]},)"
    R"("i32":{"dtype":"I32","shape":[2],"data_offsets":[38,46]},)"
    R"("mask":{"dtype":"BOOL","shape":[3],"data_offsets":[54,57]},)"
    R"("bytes":{"dtype":"U8","shape":[1,2],"data_offsets":[57,59]}}     )";

std::string valid_data() {
  return le_bytes({0x3c00, 0xc000, 0x3555, 0x7bff, 0x0001, 0xfc00}, 2) +      // f16
         le_bytes({0x3f80, 0x4049, 0xc2f7, 0x0001, 0x7fc0}, 2) +              // bf16
         le_bytes({0x3fc00000u, 0x80000000u, 0x7f7fffffu, 0x00000001u}, 4) +  // f32
         le_bytes({0xfffffffbu, 7}, 4) +                                      // i32: -5, 7
         le_bytes({0x0123456789abcdefu}, 8) +                                 // scalar
         std::string("\x01\x00\x01", 3) + std::string("\xfe\x02", 2);         // mask, bytes
}

TEST_F(Safetensors, OpensAValidFileWithEveryKindOfEntry) {
  SafetensorsFile file = SafetensorsFile::open(write_file(kValidHeader, valid_data()));
  EXPECT_EQ(file.data_start(), 8 + static_cast<int64_t>(kValidHeader.size()));

  // tensors() is in data-section order; the 0-byte "empty" sorts before "i32" at the same offset.
  std::vector<std::string> names;
  for (const TensorInfo& info : file.tensors())
    names.push_back(info.name);
  EXPECT_EQ(names, (std::vector<std::string>{"f16", "bf16", "f32", "empty", "i32", "scalar", "mask",
                                             "bytes"}));

  const TensorInfo* f16 = file.find("f16");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->dtype, DType::f16);
  EXPECT_EQ(f16->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f16->begin, 0);
  EXPECT_EQ(f16->end, 12);
  EXPECT_EQ(f16->numel(), 6);
  EXPECT_EQ(f16->size_bytes(), 12);

  const TensorInfo* empty = file.find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_TRUE(file.read_f32("empty").empty());

  const TensorInfo* scalar = file.find("scalar");
  ASSERT_NE(scalar, nullptr);
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->numel(), 1);
  EXPECT_EQ(scalar->dtype, DType::i64);
  EXPECT_EQ(file.find("bytes")->dtype, DType::u8);
  EXPECT_EQ(file.find("mask")->dtype, DType::boolean);
  EXPECT_EQ(file.find("bf16")->dtype, DType::bf16);
  EXPECT_EQ(file.find("missing"), nullptr);
  EXPECT_EQ(file.find("__metadata__"), nullptr);

  EXPECT_EQ(file.metadata().size(), 2u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "caf\xc3\xa9");
}

TEST_F(Safetensors, ReadF32DecodesF16AgainstKnownValues) {
  SafetensorsFile file = SafetensorsFile::open(write_file(kValidHeader, valid_data()));
  const std::vector<float> values = file.read_f32("f16");
  ASSERT_EQ(values.size(), 6u);
  EXPECT_EQ(values[0], 1.0f);                   // 0x3c00: exponent 15 - 15 = 0, mantissa 0
  EXPECT_EQ(values[1], -2.0f);                  // 0xc000: sign, exponent 16 - 15 = 1
  EXPECT_EQ(values[2], 1365.0f / 4096.0f);      // 0x3555: 2^-2 * (1 + 341/1024)
  EXPECT_EQ(values[3], 65504.0f);               // 0x7bff: the largest finite fp16
  EXPECT_EQ(values[4], std::ldexp(1.0f, -24));  // 0x0001: the smallest subnormal
  EXPECT_EQ(values[5], -std::numeric_limits<float>::infinity());  // 0xfc00
}

TEST_F(Safetensors, ReadF32DecodesBF16AgainstKnownValues) {
  SafetensorsFile file = SafetensorsFile::open(write_file(kValidHeader, valid_data()));
  const std::vector<float> values = file.read_f32("bf16");
  ASSERT_EQ(values.size(), 5u);
  EXPECT_EQ(values[0], 1.0f);                    // 0x3f80: exponent 127 - 127 = 0
  EXPECT_EQ(values[1], 3.140625f);               // 0x4049: 2^1 * (1 + 73/128)
  EXPECT_EQ(values[2], -123.5f);                 // 0xc2f7: -(2^6 * (1 + 119/128))
  EXPECT_EQ(values[3], std::ldexp(1.0f, -133));  // 0x0001: 2^-126 * 2^-7, a float subnormal
  EXPECT_TRUE(std::isnan(values[4]));            // 0x7fc0: quiet NaN
}

TEST_F(Safetensors, ReadF32CopiesF32BitForBit) {
  SafetensorsFile file = SafetensorsFile::open(write_file(kValidHeader, valid_data()));
  const std::vector<float> values = file.read_f32("f32");
  ASSERT_EQ(values.size(), 4u);
  EXPECT_EQ(bits_of(values[0]), 0x3fc00000u);  // 1.5
  EXPECT_EQ(bits_of(values[1]), 0x80000000u);  // -0.0, sign kept
  EXPECT_EQ(values[2], std::numeric_limits<float>::max());
  EXPECT_EQ(values[3], std::numeric_limits<float>::denorm_min());
}

TEST_F(Safetensors, ReadRawReturnsTheBytes) {
  SafetensorsFile file = SafetensorsFile::open(write_file(kValidHeader, valid_data()));
  int32_t pair[2] = {0, 0};
  file.read_raw(*file.find("i32"), pair, sizeof pair);
  EXPECT_EQ(pair[0], -5);  // assumes a little-endian host, like the format
  EXPECT_EQ(pair[1], 7);
  uint8_t mask[4] = {9, 9, 9, 9};  // a larger buffer is fine; the tail is untouched
  file.read_raw(*file.find("mask"), mask, sizeof mask);
  EXPECT_EQ(mask[0], 1);
  EXPECT_EQ(mask[1], 0);
  EXPECT_EQ(mask[2], 1);
  EXPECT_EQ(mask[3], 9);
  int64_t scalar = 0;
  file.read_raw(*file.find("scalar"), &scalar, sizeof scalar);
  EXPECT_EQ(scalar, int64_t{0x0123456789abcdef});
  file.read_raw(*file.find("empty"), nullptr, 0);  // 0 bytes need no buffer
}

TEST_F(Safetensors, ReadF32RejectsOtherDtypesAndUnknownNames) {
  SafetensorsFile file = SafetensorsFile::open(write_file(kValidHeader, valid_data()));
  try {
    file.read_f32("i32");
    FAIL() << "read_f32 accepted I32";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::type_mismatch, "tensor \"i32\" has dtype I32 (expected F32");
  }
  try {
    file.read_f32("nope");
    FAIL() << "read_f32 accepted an unknown name";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::invalid_argument, "no tensor named \"nope\"");
  }
}

TEST_F(Safetensors, ReadRawRejectsBadArguments) {
  SafetensorsFile file = SafetensorsFile::open(write_file(kValidHeader, valid_data()));
  int32_t one = 0;
  try {
    file.read_raw(*file.find("i32"), &one, sizeof one);
    FAIL() << "read_raw accepted a 4-byte buffer for 8 bytes";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::buffer_too_small,
                 "out_size = 4 bytes but tensor \"i32\" holds 8");
  }
  EXPECT_THROW(file.read_raw(*file.find("i32"), nullptr, 8), Error);
  TensorInfo forged = *file.find("i32");
  forged.begin = 0;
  forged.end = 8;
  try {
    file.read_raw(forged, &one, 8);
    FAIL() << "read_raw accepted a TensorInfo that is not this file's";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::invalid_argument, "does not describe a tensor of");
  }
}

TEST_F(Safetensors, OpensAFileWithNoTensors) {
  SafetensorsFile file = SafetensorsFile::open(write_file("{}", ""));
  EXPECT_TRUE(file.tensors().empty());
  EXPECT_TRUE(file.metadata().empty());
  SafetensorsFile only_metadata =
      SafetensorsFile::open(write_file(R"({"__metadata__":{}})", "", "metadata.safetensors"));
  EXPECT_TRUE(only_metadata.tensors().empty());
}

TEST_F(Safetensors, NullMetadataMeansNone) {
  // serde reads an Option as None from null, so the reference opens this file; so do we.
  SafetensorsFile file = SafetensorsFile::open(
      write_file("{\"__metadata__\":null," + f32_pair_entry("a", 0) + "}", kTwoFloats));
  EXPECT_TRUE(file.metadata().empty());
  EXPECT_EQ(file.read_f32("a"), (std::vector<float>{1.0f, 2.0f}));
}

// ---- one test per bad input ---------------------------------------------------------------------

TEST_F(Safetensors, RejectsATruncatedHeaderLength) {
  expect_error(open_error_at(write_bytes(std::string("\x02\x00\x00\x00\x00", 5))),
               ErrorCode::malformed, "is 5 bytes, too short for the 8-byte header length");
  expect_error(open_error_at(write_bytes("", "zero.safetensors")), ErrorCode::malformed,
               "is 0 bytes");
}

TEST_F(Safetensors, RejectsAHeaderLengthLargerThanTheFile) {
  const std::string header = "{}";
  expect_error(open_error_at(write_bytes(le_bytes({100}, 8) + header)), ErrorCode::malformed,
               "header length N = 100 but the file is only 10 bytes");
}

TEST_F(Safetensors, RejectsAHeaderLengthAboveTheLimit) {
  // 2^56: the top byte set, as in a file that is not safetensors at all.
  expect_error(open_error_at(write_bytes(le_bytes({uint64_t{1} << 56}, 8) + "{}")),
               ErrorCode::malformed, "exceeds the limit of 100000000 bytes");
  expect_error(open_error_at(write_bytes(le_bytes({100000001}, 8) + "{}", "limit.safetensors")),
               ErrorCode::malformed, "N = 100000001 exceeds the limit");
}

TEST_F(Safetensors, RejectsAZeroHeaderLength) {
  expect_error(open_error_at(write_bytes(le_bytes({0}, 8))), ErrorCode::malformed,
               "header length N = 0");
}

TEST_F(Safetensors, RejectsAHeaderThatIsNotJson) {
  expect_error(open_error("{\"a\": }", ""), ErrorCode::malformed,
               ": byte 6: expected a JSON value");
  expect_error(open_error("{} trailing", ""), ErrorCode::malformed,
               "byte 3: expected end of input after the JSON value");
}

TEST_F(Safetensors, RejectsAHeaderThatIsNotUtf8) {
  expect_error(open_error("{\"caf\xe9\":{}}", ""), ErrorCode::malformed, ": byte 5: invalid UTF-8");
}

TEST_F(Safetensors, RejectsAHeaderThatIsNotAnObject) {
  expect_error(open_error("[]", ""), ErrorCode::malformed,
               "top-level value at byte 0: expected an object, found an array");
}

TEST_F(Safetensors, RejectsAnUnknownDtype) {
  expect_error(open_error(R"({"w":{"dtype":"F13","shape":[2],"data_offsets":[0,8]}})", kTwoFloats),
               ErrorCode::malformed, "tensor \"w\": unknown dtype \"F13\"");
  // A real safetensors dtype nibble has no DType for is `unsupported`, not malformed.
  expect_error(
      open_error(R"({"w":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", kTwoFloats),
      ErrorCode::unsupported, "dtype \"F8_E4M3\" is not supported by nibble");
  expect_error(open_error(R"({"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", kTwoFloats),
               ErrorCode::malformed, "unknown dtype \"f32\"");  // names are case-sensitive
}

TEST_F(Safetensors, RejectsAShapeThatDoesNotMatchTheByteSize) {
  expect_error(open_error(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", kTwoFloats),
               ErrorCode::malformed,
               "data_offsets [0, 8] hold 8 bytes but dtype F32 with shape [3] (3 elements) "
               "needs 12");
}

TEST_F(Safetensors, RejectsOffsetsOutOfRange) {
  expect_error(open_error("{" + f32_pair_entry("w", 4) + "}", kTwoFloats), ErrorCode::malformed,
               "tensor \"w\": data_offsets [4, 12] extend past the data section of 8 bytes");
  expect_error(open_error(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", kTwoFloats),
               ErrorCode::malformed, "data_offsets [8, 4] end before they begin");
}

TEST_F(Safetensors, RejectsOverlappingTensors) {
  expect_error(open_error("{" + f32_pair_entry("a", 0) + "," + f32_pair_entry("b", 4) + "}",
                          kTwoFloats + kTwoFloats.substr(0, 4)),
               ErrorCode::malformed, "tensor \"b\" [4, 12) overlaps tensor \"a\" [0, 8)");
  // Two names for the same bytes is an overlap too.
  expect_error(
      open_error("{" + f32_pair_entry("a", 0) + "," + f32_pair_entry("b", 0) + "}", kTwoFloats),
      ErrorCode::malformed, "overlaps");
}

TEST_F(Safetensors, RejectsAGapBetweenTensors) {
  expect_error(open_error("{" + f32_pair_entry("a", 0) + "," + f32_pair_entry("b", 12) + "}",
                          kTwoFloats + "gap!" + kTwoFloats),
               ErrorCode::malformed,
               "bytes [8, 12) of the data section belong to no tensor (gap before tensor \"b\"");
  // A data section that does not start at the first tensor is a gap as well.
  expect_error(open_error("{" + f32_pair_entry("a", 4) + "}", "gap!" + kTwoFloats),
               ErrorCode::malformed, "bytes [0, 4) of the data section belong to no tensor");
}

TEST_F(Safetensors, RejectsTrailingBytesAfterTheLastTensor) {
  expect_error(open_error("{" + f32_pair_entry("a", 0) + "}", kTwoFloats + "extra"),
               ErrorCode::malformed,
               "the tensors cover 8 bytes of the data section but it holds 13");
}

TEST_F(Safetensors, RejectsDuplicateKeys) {
  // Even two identical entries, which the reference opens (its map keeps the last one).
  expect_error(
      open_error("{" + f32_pair_entry("a", 0) + "," + f32_pair_entry("a", 0) + "}", kTwoFloats),
      ErrorCode::malformed, "duplicate object key \"a\"");
  expect_error(open_error(R"({"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                          kTwoFloats),
               ErrorCode::malformed, "duplicate object key \"dtype\"");
}

TEST_F(Safetensors, RejectsAnOverflowingShape) {
  // 2^40 * 2^40 = 2^80 elements.
  expect_error(
      open_error(
          R"({"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}})",
          kTwoFloats),
      ErrorCode::overflow, "tensor \"w\" shape[1] overflows int64");
  // 2^62 elements fit int64 but their 4-byte size does not.
  expect_error(
      open_error(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})",
                 kTwoFloats),
      ErrorCode::overflow, "byte size overflows int64");
  // A dimension beyond int64 itself (the reference's own test uses 2^64 - 2).
  expect_error(
      open_error(R"({"w":{"dtype":"I32","shape":[2,18446744073709551614],"data_offsets":[0,8]}})",
                 kTwoFloats),
      ErrorCode::overflow, "shape[1] at byte");
}

TEST_F(Safetensors, RejectsBadShapeValues) {
  expect_error(open_error(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", kTwoFloats),
               ErrorCode::malformed, "shape[0] at byte 29 = -2 (expected >= 0)");
  expect_error(
      open_error(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", kTwoFloats),
      ErrorCode::malformed, "shape[0] at byte 29: expected an integer that fits int64");
  expect_error(open_error(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", kTwoFloats),
               ErrorCode::malformed, "shape at byte 28: expected an array, found an integer (2)");
}

TEST_F(Safetensors, RejectsBadDataOffsets) {
  expect_error(
      open_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", kTwoFloats),
      ErrorCode::malformed, "data_offsets has 3 elements (expected 2");
  expect_error(
      open_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})", kTwoFloats),
      ErrorCode::malformed, "data_offsets[1] at byte");
}

TEST_F(Safetensors, RejectsMissingAndUnknownKeys) {
  expect_error(open_error(R"({"w":{"dtype":"F32","shape":[2]}})", kTwoFloats), ErrorCode::malformed,
               "tensor \"w\" at byte 5: missing key \"data_offsets\"");
  expect_error(
      open_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"offsets":[0,8]}})",
                 kTwoFloats),
      ErrorCode::malformed, "unknown key \"offsets\" at byte 53 (expected only dtype, shape and");
  expect_error(open_error(R"({"w":[0,8]})", kTwoFloats), ErrorCode::malformed,
               "tensor \"w\" at byte 5: expected an object, found an array");
}

TEST_F(Safetensors, RejectsMetadataThatIsNotStringToString) {
  expect_error(open_error(R"({"__metadata__":{"epoch":3}})", ""), ErrorCode::malformed,
               "\"__metadata__\" value of \"epoch\" at byte 25: expected a string, found an "
               "integer (3)");
  expect_error(open_error(R"({"__metadata__":["a"]})", ""), ErrorCode::malformed,
               "\"__metadata__\" at byte 16: expected an object");
}

TEST_F(Safetensors, ReportsTruncatedDataOnRead) {
  const std::string path = write_file(kValidHeader, valid_data());
  SafetensorsFile file = SafetensorsFile::open(path);
  // Cut the file inside "f32" ([22, 38) of the data section) after open() validated it.
  fs::resize_file(path, static_cast<std::uintmax_t>(file.data_start() + 30));
  try {
    file.read_f32("f32");
    FAIL() << "read a truncated tensor";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::io, "is truncated: reading tensor \"f32\" (16 bytes at offset ");
    expect_error(error, ErrorCode::io, ") got only 8 bytes");
  }
  // Tensors before the cut still read, so the stream recovers from the short read.
  EXPECT_EQ(file.read_f32("f16")[0], 1.0f);
}

TEST_F(Safetensors, RejectsATruncatedFileAtOpen) {
  // The header promises 59 data bytes; only 30 remain.
  expect_error(open_error(kValidHeader, valid_data().substr(0, 30)), ErrorCode::malformed,
               "extend past the data section of 30 bytes (truncated file?)");
}

TEST_F(Safetensors, ReportsAMissingFile) {
  const std::string path = (directory_ / "does_not_exist.safetensors").string();
  expect_error(open_error_at(path), ErrorCode::io,
               "cannot open safetensors file \"" + path + "\": No such file or directory");
}

TEST_F(Safetensors, ReportsADirectory) {
  expect_error(open_error_at(directory_.string()), ErrorCode::io, "is a directory");
}

TEST_F(Safetensors, MappedBytesAreTheFileBytesInPlace) {
  const std::string path = write_file(kValidHeader, valid_data());
  SafetensorsFile file = SafetensorsFile::open(path);
  for (const TensorInfo& info : file.tensors()) {
    std::string copied(static_cast<std::size_t>(info.size_bytes()), '\0');
    file.read_raw(info, copied.data(), copied.size());
    const unsigned char* mapped = file.mapped_bytes(info);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(mapped), copied.size()), copied)
        << info.name;
  }
  // The same pointer each time: one mapping per file. Released pages read back from the file.
  EXPECT_EQ(file.mapped_bytes(file.tensors()[0]), file.mapped_bytes(file.tensors()[0]));
  for (const TensorInfo& info : file.tensors()) {
    std::string copied(static_cast<std::size_t>(info.size_bytes()), '\0');
    file.read_raw(info, copied.data(), copied.size());
    file.release_mapped(info);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(file.mapped_bytes(info)), copied.size()),
              copied)
        << info.name;
  }
  TensorInfo foreign = file.tensors()[0];
  foreign.end += 1;
  EXPECT_THROW(file.mapped_bytes(foreign), Error);
}

TEST_F(Safetensors, MappedBytesReportATruncatedFile) {
  const std::string path = write_file(kValidHeader, valid_data());
  SafetensorsFile file = SafetensorsFile::open(path);
  fs::resize_file(path, static_cast<std::uintmax_t>(file.data_start() + 30));  // inside "f32"
  try {
    file.mapped_bytes(*file.find("f32"));
    FAIL() << "mapped a truncated tensor";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::io, "is truncated: tensor \"f32\" ends at byte ");
  }
}

// ---- SafetensorsWriter
// ---------------------------------------------------------------------------

// The bytes of a file the writer produces: written to a string stream.
std::string written_bytes(SafetensorsWriter& writer,
                          const std::vector<std::pair<std::string, std::string>>& data) {
  std::ostringstream out(std::ios::binary);
  writer.begin(out);
  for (const auto& [name, bytes] : data)
    writer.write(name, bytes.data(), bytes.size());
  writer.finish();
  return out.str();
}

TEST_F(Safetensors, WriterProducesTheDocumentedBytes) {
  SafetensorsWriter writer;
  writer.declare("a", DType::f32, {2});
  writer.declare("b", DType::u8, {1, 3});
  // Derived by hand from the format: compact JSON, data offsets contiguous from 0 in declaration
  // order, then spaces until 8 + N is a multiple of 8.
  const std::string json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"U8","shape":[1,3],"data_offsets":[8,11]}})";
  ASSERT_EQ(json.size(), 109u);  // 8 + 109 = 117 -> 3 spaces to 120
  const std::string header = json + "   ";
  const std::string expected =
      le_bytes({header.size()}, 8) + header + kTwoFloats + std::string("\x01\x02\x03", 3);
  EXPECT_EQ(written_bytes(writer, {{"a", kTwoFloats}, {"b", std::string("\x01\x02\x03", 3)}}),
            expected);
  EXPECT_EQ(writer.file_bytes(), static_cast<int64_t>(expected.size()));
}

TEST_F(Safetensors, WriterOutputReadsBackWithEveryDtype) {
  SafetensorsWriter writer;
  writer.add_metadata("format", "pt");
  writer.add_metadata("quote\"and\\back\nslash", "caf\xc3\xa9");
  const std::vector<std::pair<std::string, std::string>> data = {
      {"f32", kTwoFloats},
      {"f16 \"quoted\"", le_bytes({0x3c00, 0xc000, 0x3555}, 2)},
      {"bf16\tcontrol", le_bytes({0x3f80, 0x4049}, 2)},
      {"empty", ""},
      {"scalar", le_bytes({0x0123456789abcdefu}, 8)},
      {"i32", le_bytes({0xfffffffbu, 7}, 4)},
      {"u8", std::string("\xfe\x02\x00", 3)},
  };
  writer.declare(data[0].first, DType::f32, {2});
  writer.declare(data[1].first, DType::f16, {3, 1});
  writer.declare(data[2].first, DType::bf16, {2});
  writer.declare(data[3].first, DType::f32, {0, 7});
  writer.declare(data[4].first, DType::i64, {});
  writer.declare(data[5].first, DType::i32, {1, 2});
  writer.declare(data[6].first, DType::u8, {3});
  const std::string path = write_bytes(written_bytes(writer, data));
  SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.data_start() % 8, 0);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("quote\"and\\back\nslash"), "caf\xc3\xa9");
  ASSERT_EQ(file.tensors().size(), data.size());
  for (std::size_t index = 0; index < data.size(); ++index) {
    const TensorInfo& info = file.tensors()[index];
    EXPECT_EQ(info.name, data[index].first);
    EXPECT_EQ(info.dtype, writer.tensors()[index].dtype);
    EXPECT_EQ(info.shape, writer.tensors()[index].shape);
    std::string bytes(static_cast<std::size_t>(info.size_bytes()), '\0');
    file.read_raw(info, bytes.data(), bytes.size());
    EXPECT_EQ(bytes, data[index].second) << info.name;
  }
}

TEST_F(Safetensors, WriterRejectsMisuse) {
  SafetensorsWriter writer;
  writer.declare("a", DType::f32, {2});
  writer.declare("b", DType::u8, {3});
  EXPECT_THROW(writer.declare("a", DType::f32, {1}), Error);
  EXPECT_THROW(writer.declare("__metadata__", DType::f32, {1}), Error);
  EXPECT_THROW(writer.declare("", DType::f32, {1}), Error);
  EXPECT_THROW(writer.declare("neg", DType::f32, {-1}), Error);
  EXPECT_THROW(writer.declare("bad\xff", DType::f32, {1}), Error);
  try {
    writer.declare("huge", DType::f32, {int64_t{1} << 40, int64_t{1} << 40});
    FAIL() << "an overflowing byte size was declared";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::overflow) << error.what();
  }
  writer.add_metadata("k", "v");
  EXPECT_THROW(writer.add_metadata("k", "w"), Error);
  std::ostringstream out;
  EXPECT_THROW(writer.write("a", kTwoFloats.data(), 8), Error);  // before begin
  writer.begin(out);
  EXPECT_THROW(writer.declare("c", DType::f32, {1}), Error);
  try {
    writer.write("b", "abc", 3);
    FAIL() << "wrote out of order";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::invalid_argument, "expected tensor \"a\" next");
  }
  try {
    writer.write("a", kTwoFloats.data(), 4);
    FAIL() << "wrote a short tensor";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::shape_mismatch, "4 bytes given, but F32 [2] is 8 bytes");
  }
  writer.write("a", kTwoFloats.data(), 8);
  try {
    writer.finish();
    FAIL() << "finished with a tensor missing";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::invalid_argument,
                 "1 of 2 declared tensors written (next: \"b\")");
  }
}

// ---- memory bounded by the header's content ------------------------------------------------------

// A 10 MB header holding one shape of 5 M ones took 1.5 GB to open (a document tree of 120-byte
// values); the rank limit refuses it at its 65th dimension, holding little beyond the header.
TEST_F(Safetensors, AHugeShapeIsRefusedWithoutAmplification) {
  std::string header = R"({"w":{"dtype":"U8","data_offsets":[0,1],"shape":[)";
  for (int index = 0; index < 5'000'000; ++index)
    header += index ? ",1" : "1";
  header += "]}}";
  const std::string path = write_file(header, "x");
  nibble::testing::AllocationPeak peak;
  try {
    SafetensorsFile::open(path);
    FAIL() << "opened a rank-5M tensor";
  } catch (const Error& error) {
    expect_error(error, ErrorCode::unsupported, "shape has more than 64 dimensions");
  }
  EXPECT_LE(peak.bytes(), static_cast<long long>(header.size()) * 3 / 2)
      << peak.bytes() << " bytes held for a " << header.size() << "-byte header";
}

// The worst valid header per byte: many tensors of the highest rank allowed, 1 byte each. The
// reader keeps each tensor's name and dims (and an index by name): a few times the header, as a
// dim is 8 bytes held for the 2 bytes of "1," (measured 4.8x with libstdc++ 12; the old document
// tree held 52x, and a 10 MB header of one 5 M-dim shape took 1.5 GB).
TEST_F(Safetensors, ManyHighRankTensorsCostAFewTimesTheHeader) {
  const int tensors = 20000;
  std::string header = "{";
  std::string ones = "1";
  for (std::size_t axis = 1; axis < nibble::io::kMaxSafetensorsRank; ++axis)
    ones += ",1";
  for (int index = 0; index < tensors; ++index) {
    header += (index ? ",\"" : "\"") + std::to_string(index) + R"(":{"dtype":"U8","shape":[)" +
              ones + R"(],"data_offsets":[)" + std::to_string(index) + "," +
              std::to_string(index + 1) + "]}";
  }
  header += "}";
  const std::string path = write_file(header, std::string(tensors, 'x'));
  nibble::testing::AllocationPeak peak;
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.tensors().size(), static_cast<std::size_t>(tensors));
  EXPECT_EQ(file.tensors().back().shape.size(), nibble::io::kMaxSafetensorsRank);
  const double ratio = static_cast<double>(peak.bytes()) / static_cast<double>(header.size());
  EXPECT_LE(ratio, 6.0) << peak.bytes() << " bytes held for a " << header.size() << "-byte header";
  std::printf("peak %.2f x the header (%zu bytes, %d tensors of rank %zu)\n", ratio,
              header.size(), tensors, nibble::io::kMaxSafetensorsRank);
}

TEST_F(Safetensors, RankUpToTheLimitIsRead) {
  std::string ones = "1";
  for (std::size_t axis = 1; axis < nibble::io::kMaxSafetensorsRank; ++axis)
    ones += ",1";
  const SafetensorsFile file = SafetensorsFile::open(write_file(
      R"({"w":{"dtype":"F32","shape":[)" + ones + R"(],"data_offsets":[0,4]}})",
      kTwoFloats.substr(0, 4)));
  EXPECT_EQ(file.tensors()[0].shape.size(), nibble::io::kMaxSafetensorsRank);
  expect_error(open_error(R"({"w":{"dtype":"F32","shape":[)" + ones +
                              R"(,1],"data_offsets":[0,4]}})",
                          kTwoFloats.substr(0, 4)),
               ErrorCode::unsupported, "tensor \"w\": shape has more than 64 dimensions");
}

// ---- random mutations --------------------------------------------------------------------------

// A valid file, mutated at random (seeded): byte flips, overwrites with interesting values,
// truncations and insertions, in the header and the data. Each mutant must either open and read
// every tensor or throw nibble::Error; a crash, hang or sanitizer report (CI runs this under
// ASan + UBSan) fails. Also counts both outcomes so the test cannot pass vacuously.
TEST_F(Safetensors, RandomMutationsOpenOrFailCleanly) {
  const std::string original = le_bytes({kValidHeader.size()}, 8) + kValidHeader + valid_data();
  std::mt19937 random(20261202u);
  const auto below = [&](std::size_t bound) {
    return std::uniform_int_distribution<std::size_t>(0, bound - 1)(random);
  };
  const char kInteresting[] = {'0', '9',  '-', '"',    '[',    ']',    '{',    '}', ',',
                               ':', '\\', 'e', '\x00', '\x7f', '\x80', '\xff', ' ', '1'};
  int opened = 0;
  int rejected = 0;
  const std::string path = (directory_ / "mutant.safetensors").string();
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = original;
    const std::size_t edits = 1 + below(4);
    for (std::size_t edit = 0; edit < edits && !bytes.empty(); ++edit) {
      const std::size_t at = below(bytes.size());
      switch (below(5)) {
        case 0:
          bytes[at] = static_cast<char>(bytes[at] ^ (1 << below(8)));
          break;
        case 1:
          bytes[at] = kInteresting[below(sizeof kInteresting)];
          break;
        case 2:
          bytes.resize(at);
          break;
        case 3:
          bytes.insert(at, 1, kInteresting[below(sizeof kInteresting)]);
          break;
        default:
          bytes.erase(at, 1);
          break;
      }
    }
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    try {
      SafetensorsFile file = SafetensorsFile::open(path);
      for (const TensorInfo& info : file.tensors()) {
        std::vector<char> buffer(static_cast<std::size_t>(info.size_bytes()));
        file.read_raw(info, buffer.data(), buffer.size());
        if (info.dtype == DType::f32 || info.dtype == DType::f16 || info.dtype == DType::bf16) {
          EXPECT_EQ(file.read_f32(info.name).size(), static_cast<std::size_t>(info.numel()));
        }
      }
      ++opened;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(opened, 0);
  EXPECT_GT(rejected, 0);
}

}  // namespace
