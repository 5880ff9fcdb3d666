// GGUF files (io/gguf_file.hpp): GgufWriter and GgufFile.
//
// Independent truths:
//   - the bytes of a tiny file derived by hand from the GGUF spec (ggml docs/gguf.md, v3), offset
//     by offset in the comments of TinyFileBytesMatchTheSpec;
//   - fp16 / fp32 bit patterns from their IEEE definitions (noted beside each);
//   - gguf-py: the ExportForGgufPy test writes a file with every metadata and tensor type plus
//     nibble's dequantization of each tensor, which tests/reference/check_gguf_file.py opens with
//     gguf-py's GGUFReader and dequantizes with gguf.quants (run when NIBBLE_GGUF_EXPORT_DIR is
//     set; see that script).
// Round trips cover every value type and every tensor type with odd row counts, string arrays
// (empty, empty strings, NULs, strings longer than the reader's 1 MiB buffer, a 1M-token
// vocabulary) and arrays of every element size across that buffer; each reader check has a file
// broken in exactly that way; seeded random mutations must give Error or a readable file, never a
// crash (the suite also runs under ASan + UBSan). A string array's memory is checked against the
// file's bytes by the array's own account of its heap (deterministic; no test asserts a time).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <istream>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nibble/io/gguf_file.hpp"
#include "support/allocation_counter.hpp"

NIBBLE_DEFINE_COUNTING_OPERATOR_NEW

namespace {

namespace fs = std::filesystem;
namespace gguf = nibble::gguf;
using gguf::GgmlType;
using nibble::Error;
using nibble::ErrorCode;
using nibble::io::GgufFile;
using nibble::io::GgufStringArray;
using nibble::io::GgufTensorInfo;
using nibble::io::GgufValue;
using nibble::io::GgufValueType;
using nibble::io::GgufWriter;
using nibble::io::kGgmlBF16;
using nibble::io::kGgmlF16;
using nibble::io::kGgmlF32;

// ---- helpers ------------------------------------------------------------------------------------

std::string le(uint64_t value, int byte_count) {
  std::string bytes;
  for (int index = 0; index < byte_count; ++index)
    bytes.push_back(static_cast<char>((value >> (8 * index)) & 0xff));
  return bytes;
}
std::string u32(uint64_t value) {
  return le(value, 4);
}
std::string u64(uint64_t value) {
  return le(value, 8);
}
std::string gguf_string(const std::string& text) {
  return u64(text.size()) + text;
}
void patch(std::string& bytes, std::size_t offset, const std::string& with) {
  ASSERT_LE(offset + with.size(), bytes.size());
  bytes.replace(offset, with.size(), with);
}

// A fresh directory per test, removed afterwards.
class GgufFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / (std::string("nibble_test_gguf_file_") + test->name() + "_" +
                                        std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string write_file(const std::string& name, const std::string& bytes) const {
    const std::string file = path(name);
    std::ofstream out(file, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return file;
  }
  static std::string read_file(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  fs::path dir_;
};

GgufFile open_bytes(const std::string& bytes) {
  return GgufFile::open(std::make_unique<std::istringstream>(bytes), "memory");
}

// The error `call` throws (code and message); fails the test if it throws nothing.
template <class F>
Error error_of(F&& call) {
  try {
    call();
  } catch (const Error& error) {
    return error;
  }
  ADD_FAILURE() << "expected nibble::Error";
  return Error(ErrorCode::invalid_argument, "(none thrown)");
}

#define EXPECT_GGUF_ERROR(call, expected_code, message_part)                    \
  do {                                                                          \
    const Error error_ = error_of([&] { call; });                               \
    EXPECT_EQ(error_.code(), expected_code) << error_.what();                   \
    EXPECT_NE(std::string(error_.what()).find(message_part), std::string::npos) \
        << "message: " << error_.what();                                        \
  } while (0)

std::vector<float> gaussian(std::size_t count, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(count);
  for (float& value : values)
    value = normal(rng);
  return values;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t extent : shape)
    count *= extent;
  return count;
}

// ---- the tiny file, derived by hand from the spec --------------------------------------------

// Metadata: general.architecture = "llama" (string), general.file_type = u32 2,
// x.arr = array[i16] {-2, 3}. Tensors: "w" F32 row-major [1, 2] = {1, -2};
// "b" F16 [3] = {1, -2, 0.5}. Default alignment 32.
void declare_tiny(GgufWriter& writer) {
  writer.add_metadata("general.architecture", "llama");
  writer.add_metadata("general.file_type", uint32_t{2});
  writer.add_metadata("x.arr", std::vector<int16_t>{-2, 3});
  writer.declare("w", kGgmlF32, {1, 2});
  writer.declare("b", kGgmlF16, {3});
}
const float kTinyW[] = {1.0f, -2.0f};
const float kTinyB[] = {1.0f, -2.0f, 0.5f};

std::string tiny_expected_bytes() {
  std::string b;
  b += "GGUF";                               // 0: magic 47 47 55 46
  b += u32(3);                               // 4: version 3
  b += u64(2);                               // 8: tensor_count
  b += u64(3);                               // 16: metadata_kv_count
  b += gguf_string("general.architecture");  // 24: u64 20, 32: 20 bytes -> 52
  b += u32(8);                               // 52: GGUF_METADATA_VALUE_TYPE_STRING
  b += gguf_string("llama");                 // 56: u64 5, 64: "llama" -> 69
  b += gguf_string("general.file_type");     // 69: u64 17, 77: 17 bytes -> 94
  b += u32(4);                               // 94: UINT32
  b += u32(2);                               // 98: 2 -> 102
  b += gguf_string("x.arr");                 // 102: u64 5, 110: "x.arr" -> 115
  b += u32(9);                               // 115: ARRAY
  b += u32(3);                               // 119: element type INT16
  b += u64(2);                               // 123: 2 elements
  b += std::string("\xfe\xff\x03\x00", 4);   // 131: -2 = 0xfffe, 3 (LE) -> 135
  b += gguf_string("w");                     // 135: u64 1, 143: "w" -> 144
  b += u32(2);                               // 144: n_dimensions 2
  b += u64(2) + u64(1);                      // 148: ne[0] = K = 2, 156: ne[1] = 1 row
  b += u32(0);                               // 164: GGML_TYPE_F32
  b += u64(0);                               // 168: offset 0 -> 176
  b += gguf_string("b");                     // 176: u64 1, 184: "b" -> 185
  b += u32(1);                               // 185: n_dimensions 1
  b += u64(3);                               // 189: ne[0] = 3
  b += u32(1);                               // 197: GGML_TYPE_F16
  b += u64(32);                              // 201: offset = align_offset(8 bytes of w) -> 209
  b += std::string(224 - 209, '\0');         // 209: padding to the next multiple of 32
  b += u32(0x3f800000) + u32(0xc0000000);    // 224: 1.0f, -2.0f -> 232
  b += std::string(256 - 232, '\0');         // padding of w to 32 bytes
  b += std::string("\x00\x3c\x00\xc0\x00\x38", 6);  // 256: fp16 1.0 = 3c00, -2 = c000, 0.5 = 3800
  b += std::string(288 - 262, '\0');                // 262: padding of b (ggml pads the last too)
  return b;                                         // 288 bytes
}

TEST_F(GgufFileTest, TinyFileBytesMatchTheSpec) {
  const std::string expected = tiny_expected_bytes();
  ASSERT_EQ(expected.size(), 288u);

  GgufWriter writer;
  declare_tiny(writer);
  EXPECT_EQ(writer.header_bytes(), expected.substr(0, 224));
  EXPECT_EQ(writer.file_bytes(), 288u);
  std::ostringstream out;
  writer.begin(out);
  writer.write_f32("w", kTinyW, 2);
  const unsigned char b_bytes[] = {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38};
  writer.write("b", b_bytes, sizeof b_bytes);
  writer.finish();
  EXPECT_EQ(out.str(), expected);

  GgufFile file = open_bytes(expected);
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.alignment(), 32u);
  EXPECT_EQ(file.data_offset(), 224);
  EXPECT_EQ(file.get<std::string>("general.architecture"), "llama");
  EXPECT_EQ(file.get<uint32_t>("general.file_type"), 2u);
  EXPECT_EQ(file.get_array<int16_t>("x.arr"), (std::vector<int16_t>{-2, 3}));
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(file.tensors()[0].ggml_ne(), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(file.tensors()[1].offset, 32u);
  EXPECT_EQ(file.read_f32("w"), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(file.read_f32("b"), std::vector<float>(std::begin(kTinyB), std::end(kTinyB)));
}

// ---- round trip ---------------------------------------------------------------------------------

struct TensorCase {
  std::string name;
  GgmlType type;
  std::vector<int64_t> shape;
};

// Every tensor type, odd row counts, 1-D to 4-D.
const std::vector<TensorCase>& tensor_cases() {
  static const std::vector<TensorCase> cases = {
      {"token_embd.weight", GgmlType::q4_K, {3, 512}},
      {"f32.odd", kGgmlF32, {3, 5}},
      {"f16.odd", kGgmlF16, {7, 3}},
      {"bf16.vector", kGgmlBF16, {9}},
      {"q4_0.odd", GgmlType::q4_0, {5, 64}},
      {"q4_1", GgmlType::q4_1, {1, 32}},
      {"q8_0.3d", GgmlType::q8_0, {3, 1, 96}},
      {"q4_K.one_row", GgmlType::q4_K, {1, 256}},
      {"q6_K.4d", GgmlType::q6_K, {1, 3, 1, 256}},
  };
  return cases;
}

std::vector<std::pair<std::string, GgufValue>> metadata_cases() {
  return {
      {"general.architecture", "llama"},
      {"general.name", std::string("nibble \"test\" model")},
      {"general.file_type", uint32_t{15}},
      {"v.u8", uint8_t{250}},
      {"v.i8", int8_t{-128}},
      {"v.u16", uint16_t{65535}},
      {"v.i16", int16_t{-32768}},
      {"v.u32", uint32_t{4000000000u}},
      {"v.i32", int32_t{-2000000000}},
      {"v.u64", uint64_t{18446744073709551615ull}},
      {"v.i64", int64_t{std::numeric_limits<int64_t>::min()}},
      {"v.f32", 0.1f},
      {"v.f64", -1e300},
      {"v.true", true},
      {"v.false", false},
      {"v.empty_string", ""},
      {"tokenizer.ggml.tokens", std::vector<std::string>{"<unk>", "<s>", "", "\xe2\x96\x81the"}},
      {"tokenizer.ggml.scores", std::vector<float>{0.0f, -1.5f, -2.25f, 3.0f}},
      {"tokenizer.ggml.token_type", std::vector<int32_t>{2, 3, 3, 1}},
      {"a.u8", std::vector<uint8_t>{0, 255}},
      {"a.i8", std::vector<int8_t>{-1, 127}},
      {"a.u16", std::vector<uint16_t>{1, 65535}},
      {"a.i16", std::vector<int16_t>{-32768, 7}},
      {"a.u32", std::vector<uint32_t>{0, 0xffffffffu}},
      {"a.u64", std::vector<uint64_t>{1, 0xffffffffffffffffull}},
      {"a.i64", std::vector<int64_t>{-1, 1}},
      {"a.f64", std::vector<double>{0.5, -0.25}},
      {"a.bool", std::vector<bool>{true, false, true}},
      {"a.empty", std::vector<uint32_t>{}},
  };
}

// Declares metadata_cases() (plus general.alignment unless 32) and tensor_cases().
void write_full(GgufWriter& writer, uint32_t alignment) {
  for (auto& [key, value] : metadata_cases())
    writer.add_metadata(key, value);
  if (alignment != 32) writer.add_metadata("general.alignment", alignment);
  for (const TensorCase& tensor : tensor_cases())
    writer.declare(tensor.name, tensor.type, tensor.shape);
}

TEST_F(GgufFileTest, RoundTripEveryValueAndTensorType) {
  for (const uint32_t alignment : {32u, 64u, 8u}) {
    SCOPED_TRACE("alignment " + std::to_string(alignment));
    GgufWriter writer;
    write_full(writer, alignment);
    const std::string file_path = path("full_" + std::to_string(alignment) + ".gguf");
    writer.begin(file_path);
    std::vector<std::vector<float>> inputs;
    std::vector<std::vector<uint8_t>> written;
    uint32_t seed = 1;
    for (const TensorCase& tensor : tensor_cases()) {
      std::vector<float> x = gaussian(static_cast<std::size_t>(numel(tensor.shape)), seed++);
      // Half the tensors through write_f32, half quantized here and written as bytes.
      const int64_t k = tensor.shape.back();
      const int64_t rows = numel(tensor.shape) / k;
      std::vector<uint8_t> bytes(
          static_cast<std::size_t>(nibble::io::ggml_row_bytes(tensor.type, k) * rows));
      const auto row_bytes = static_cast<std::size_t>(nibble::io::ggml_row_bytes(tensor.type, k));
      for (int64_t row = 0; row < rows; ++row) {
        const float* in = x.data() + row * k;
        uint8_t* out = bytes.data() + static_cast<std::size_t>(row) * row_bytes;
        if (tensor.type == kGgmlF32) {
          std::memcpy(out, in, static_cast<std::size_t>(k) * 4);
        } else if (tensor.type == kGgmlF16 || tensor.type == kGgmlBF16) {
          for (int64_t index = 0; index < k; ++index) {
            const uint16_t bits = tensor.type == kGgmlF16
                                      ? nibble::from_float<nibble::fp16>(in[index]).bits
                                      : nibble::from_float<nibble::bf16>(in[index]).bits;
            std::memcpy(out + 2 * index, &bits, 2);
          }
        } else {
          gguf::quantize_row(tensor.type, in, k, out);
        }
      }
      if (seed % 2 == 0) {
        writer.write_f32(tensor.name, x.data(), x.size());
      } else {
        writer.write(tensor.name, bytes.data(), bytes.size());
      }
      inputs.push_back(std::move(x));
      written.push_back(std::move(bytes));
    }
    writer.finish();
    EXPECT_EQ(fs::file_size(file_path), writer.file_bytes());

    GgufFile file = GgufFile::open(file_path);
    EXPECT_EQ(file.version(), 3u);
    EXPECT_EQ(file.alignment(), alignment);
    EXPECT_EQ(file.data_offset() % alignment, 0);
    // Metadata: every entry, in order, equal in type and value.
    const auto expected_metadata = metadata_cases();
    ASSERT_EQ(file.metadata().size(), expected_metadata.size() + (alignment != 32 ? 1 : 0));
    for (std::size_t index = 0; index < expected_metadata.size(); ++index) {
      EXPECT_EQ(file.metadata()[index].key, expected_metadata[index].first);
      EXPECT_EQ(file.metadata()[index].value, expected_metadata[index].second)
          << file.metadata()[index].value.to_string();
    }
    EXPECT_EQ(file.get<uint64_t>("v.u64"), 18446744073709551615ull);
    EXPECT_EQ(file.get<int8_t>("v.i8"), -128);
    EXPECT_EQ(file.get<float>("v.f32"), 0.1f);
    EXPECT_EQ(file.get<double>("v.f64"), -1e300);
    EXPECT_TRUE(file.get<bool>("v.true"));
    EXPECT_EQ(file.get_array<std::string>("tokenizer.ggml.tokens")[3], "\xe2\x96\x81the");
    EXPECT_EQ(file.get_array<bool>("a.bool"), (std::vector<bool>{true, false, true}));
    EXPECT_TRUE(file.get_array<uint32_t>("a.empty").empty());
    EXPECT_EQ(file.find("general.file_type")->as_int64(), 15);
    EXPECT_EQ(file.find("nope"), nullptr);

    // Tensors: infos, bytes and values.
    const std::vector<GgufTensorInfo> declared = writer.tensors();
    ASSERT_EQ(file.tensors().size(), tensor_cases().size());
    for (std::size_t index = 0; index < tensor_cases().size(); ++index) {
      const TensorCase& tensor = tensor_cases()[index];
      const GgufTensorInfo& info = file.tensors()[index];
      SCOPED_TRACE(tensor.name);
      EXPECT_EQ(info.name, tensor.name);
      EXPECT_EQ(info.type, tensor.type);
      EXPECT_EQ(info.shape, tensor.shape);
      EXPECT_EQ(info.offset, declared[index].offset);
      EXPECT_EQ(info.offset % alignment, 0u);
      EXPECT_EQ(info.size_bytes, static_cast<int64_t>(written[index].size()));
      EXPECT_EQ(file.read_bytes(tensor.name), written[index]);
      // Values: nibble's dequantization of the written bytes, row by row.
      const std::vector<float> values = file.read_f32(tensor.name);
      ASSERT_EQ(values.size(), inputs[index].size());
      const int64_t k = tensor.shape.back();
      if (tensor.type == kGgmlF32) {
        EXPECT_EQ(values, inputs[index]);
      } else if (tensor.type == kGgmlF16 || tensor.type == kGgmlBF16) {
        for (std::size_t element = 0; element < values.size(); ++element) {
          const float rounded =
              tensor.type == kGgmlF16
                  ? nibble::to_float(nibble::from_float<nibble::fp16>(inputs[index][element]))
                  : nibble::to_float(nibble::from_float<nibble::bf16>(inputs[index][element]));
          ASSERT_EQ(values[element], rounded) << element;
        }
      } else {
        std::vector<float> row(static_cast<std::size_t>(k));
        const auto row_bytes = static_cast<std::size_t>(info.row_bytes());
        for (int64_t r = 0; r < info.rows(); ++r) {
          gguf::dequantize_row(tensor.type,
                               written[index].data() + static_cast<std::size_t>(r) * row_bytes, k,
                               row.data());
          for (int64_t element = 0; element < k; ++element)
            ASSERT_EQ(values[static_cast<std::size_t>(r * k + element)],
                      row[static_cast<std::size_t>(element)]);
        }
      }
    }
  }
}

TEST_F(GgufFileTest, NoTensorsAndNoMetadata) {
  GgufWriter writer;
  std::ostringstream out;
  writer.begin(out);
  writer.finish();
  // 24 bytes of header, padded to 32.
  EXPECT_EQ(out.str(), std::string("GGUF") + u32(3) + u64(0) + u64(0) + std::string(8, '\0'));
  GgufFile file = open_bytes(out.str());
  EXPECT_TRUE(file.tensors().empty());
  EXPECT_TRUE(file.metadata().empty());
  // A file that stops right after the header (no padding) is fine without tensors.
  EXPECT_TRUE(open_bytes(out.str().substr(0, 24)).tensors().empty());
}

TEST_F(GgufFileTest, ValueAccessors) {
  const GgufValue text = "abc";
  EXPECT_EQ(text.type(), GgufValueType::string);
  EXPECT_EQ(text.as_string(), "abc");
  const GgufValue number = 7;  // int is int32_t: an i32
  EXPECT_EQ(number.type(), GgufValueType::i32);
  EXPECT_EQ(number.as_int64(), 7);
  EXPECT_EQ(error_of([&] { number.as<uint32_t>(); }).code(), ErrorCode::type_mismatch);
  EXPECT_EQ(error_of([&] { number.as_array<int32_t>(); }).code(), ErrorCode::type_mismatch);
  EXPECT_EQ(error_of([&] { GgufValue(1.5f).as_int64(); }).code(), ErrorCode::type_mismatch);
  EXPECT_EQ(error_of([&] { GgufValue(~uint64_t{0}).as_int64(); }).code(), ErrorCode::overflow);
  const GgufValue tokens = std::vector<std::string>{"a", "b\n", "c"};
  EXPECT_EQ(tokens.type(), GgufValueType::array);
  EXPECT_EQ(tokens.element_type(), GgufValueType::string);
  EXPECT_EQ(tokens.size(), 3u);
  EXPECT_EQ(tokens.to_string(2), "array[string] of 3: [\"a\", \"b\\x0a\", ...]");
  EXPECT_EQ(GgufValue(uint32_t{32}).to_string(), "u32 32");
}

TEST_F(GgufFileTest, StringArrayAccessors) {
  const std::string_view with_nul("a\0b", 3);
  GgufStringArray tokens{"<unk>", "", with_nul};
  tokens.push_back("\xe2\x96\x81the");
  ASSERT_EQ(tokens.size(), 4u);
  EXPECT_FALSE(tokens.empty());
  EXPECT_TRUE(GgufStringArray{}.empty());
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "");
  EXPECT_EQ(tokens[2], with_nul);
  EXPECT_EQ(tokens.at(3), "\xe2\x96\x81the");
  EXPECT_GGUF_ERROR(tokens.at(4), ErrorCode::invalid_argument, "at(4): the array holds 4 strings");
  EXPECT_EQ(tokens.string_bytes(), 5u + 0u + 3u + 6u);
  const std::vector<std::string> copy = tokens.to_vector();
  EXPECT_EQ(copy,
            (std::vector<std::string>{"<unk>", "", std::string(with_nul), "\xe2\x96\x81the"}));
  EXPECT_EQ(GgufStringArray(copy), tokens);
  std::vector<std::string> visited;
  for (const std::string_view token : tokens)
    visited.emplace_back(token);
  EXPECT_EQ(visited, copy);
  EXPECT_EQ(std::distance(tokens.begin(), tokens.end()), 4);
  EXPECT_EQ(std::find(tokens.begin(), tokens.end(), "") - tokens.begin(), 1);
  EXPECT_EQ(tokens.end()[-1], "\xe2\x96\x81the");
  EXPECT_EQ(*(tokens.begin() + 2), with_nul);
  EXPECT_NE(tokens, (GgufStringArray{"<unk>", "", "ab", "\xe2\x96\x81the"}));
  EXPECT_NE((GgufStringArray{"ab", "c"}), (GgufStringArray{"a", "bc"}));  // same bytes, split apart

  // Values: from a std::vector<std::string> (converted) or a GgufStringArray, the same.
  const GgufValue from_vector = copy;
  const GgufValue from_array = tokens;
  EXPECT_EQ(from_vector, from_array);
  EXPECT_EQ(from_vector.as_array<std::string>(), tokens);
  EXPECT_EQ(from_vector.to_string(),
            "array[string] of 4: [\"<unk>\", \"\", \"a\\x00b\", \"\\xe2\\x96\\x81the\"]");
  std::string encoded;
  from_array.append_encoded(encoded);
  EXPECT_EQ(encoded, u32(8) + u64(4) + gguf_string("<unk>") + gguf_string("") +
                         gguf_string(std::string(with_nul)) + gguf_string("\xe2\x96\x81the"));
  const GgufValue scalar = std::string(with_nul);
  EXPECT_EQ(scalar.as_string(), with_nul);
  EXPECT_EQ(scalar.as<std::string>(), std::string(with_nul));
  EXPECT_NE(scalar, GgufValue(GgufStringArray{with_nul}));  // a string is not an array of one
  EXPECT_EQ(error_of([&] { scalar.as_array<std::string>(); }).code(), ErrorCode::type_mismatch);
  EXPECT_EQ(error_of([&] { from_array.as_string(); }).code(), ErrorCode::type_mismatch);
}

// ---- large arrays and string arrays -------------------------------------------------------------

// A vocabulary like a BPE tokenizer's: mostly 1 to 12 bytes, some to 24, a few to 64; any byte.
std::vector<std::string> vocabulary(std::size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> tokens(count);
  for (std::string& token : tokens) {
    const auto pick = static_cast<uint32_t>(rng() % 100);
    token.resize(pick < 90 ? 1 + rng() % 12 : pick < 99 ? 13 + rng() % 12 : 25 + rng() % 40);
    uint32_t bits = 0;
    for (std::size_t index = 0; index < token.size(); ++index, bits >>= 8) {
      if (index % 4 == 0) bits = static_cast<uint32_t>(rng());
      token[index] = static_cast<char>(bits & 0xff);
    }
  }
  return tokens;
}

// The header of a file with the one metadata entry key = value and no tensors; its elements
// start at 24 + 8 + key.size() + 4 + 4 + 8 = 48 + key.size().
std::string one_entry_file(const std::string& key, GgufValue value) {
  GgufWriter writer;
  writer.add_metadata(key, std::move(value));
  return writer.header_bytes();
}

// A stream of `bytes` that says it holds `claimed_size` bytes: a file that shrank after its size
// was taken (GgufFile::open asks for the size by seeking to the end).
class ShrunkStream : public std::istream {
 public:
  ShrunkStream(const std::string& bytes, std::streamoff claimed_size)
      : std::istream(nullptr), buffer_(bytes, claimed_size) {
    rdbuf(&buffer_);
  }

 private:
  class Buffer : public std::stringbuf {
   public:
    Buffer(const std::string& bytes, std::streamoff claimed_size)
        : std::stringbuf(bytes, std::ios::in), claimed_size_(claimed_size) {}

   protected:
    pos_type seekoff(off_type offset, std::ios_base::seekdir direction,
                     std::ios_base::openmode which) override {
      if (direction == std::ios_base::end) {
        at_claimed_end_ = true;
        return pos_type(claimed_size_ + offset);
      }
      if (direction == std::ios_base::cur && offset == 0 && at_claimed_end_)
        return pos_type(claimed_size_);
      at_claimed_end_ = false;
      return std::stringbuf::seekoff(offset, direction, which);
    }

   private:
    std::streamoff claimed_size_;
    bool at_claimed_end_ = false;
  };
  Buffer buffer_;
};

GgufFile open_shrunk(const std::string& bytes, std::size_t real_size) {
  return GgufFile::open(std::make_unique<ShrunkStream>(bytes.substr(0, real_size),
                                                       static_cast<std::streamoff>(bytes.size())),
                        "memory");
}

TEST_F(GgufFileTest, StringArraysRoundTrip) {
  // Strings longer than the reader's 1 MiB buffer, one just under it, embedded NULs, empty ones,
  // an empty array, and a 1M-token vocabulary (16 MB: many buffer refills, strings split across
  // them).
  std::string long_text(3 * (1 << 20) + 5, '\0');
  std::mt19937 rng(3);
  for (char& byte : long_text)
    byte = static_cast<char>(rng() & 0xff);
  const std::string under_buffer = long_text.substr(11, (1 << 20) - 3);
  const std::vector<std::string> vocab = vocabulary(1 << 20, 5);
  const std::vector<std::pair<std::string, std::vector<std::string>>> arrays = {
      {"empty", {}},
      {"empty_strings", std::vector<std::string>(5, "")},
      {"nuls", {std::string(1, '\0'), std::string("a\0\0b", 4), std::string(300, '\0'), ""}},
      {"long", {"x", long_text, under_buffer, "", "y", long_text.substr(7)}},
      {"tokenizer.ggml.tokens", vocab},
  };
  GgufWriter writer;
  for (const auto& [key, strings] : arrays)
    writer.add_metadata(key, strings);
  writer.add_metadata("scalar.long", long_text);
  writer.add_metadata("after", uint32_t{7});  // parsing goes on in step after the arrays
  writer.declare("w", kGgmlF32, {2});
  std::ostringstream out;
  writer.begin(out);
  const float w[] = {0.5f, -3.0f};
  writer.write_f32("w", w, 2);
  writer.finish();
  const std::string bytes = out.str();
  const std::string file_path = write_file("strings.gguf", bytes);
  const std::string header = writer.header_bytes();

  for (const bool from_file : {true, false}) {
    SCOPED_TRACE(from_file ? "file" : "memory");
    GgufFile file = from_file ? GgufFile::open(file_path) : open_bytes(bytes);
    for (const auto& [key, strings] : arrays) {
      SCOPED_TRACE(key);
      const GgufStringArray& read = file.get_array<std::string>(key);
      ASSERT_EQ(read.size(), strings.size());
      EXPECT_TRUE(std::equal(read.begin(), read.end(), strings.begin(), strings.end()));
      EXPECT_EQ(file.find(key)->as_array<std::string>(), read);
    }
    EXPECT_EQ(file.get_array<std::string>("nuls")[2], std::string(300, '\0'));
    EXPECT_EQ(file.get<std::string>("scalar.long"), long_text);
    EXPECT_EQ(file.find("scalar.long")->as_string(), long_text);
    EXPECT_EQ(file.get<uint32_t>("after"), 7u);
    EXPECT_EQ(file.read_f32("w"), (std::vector<float>{0.5f, -3.0f}));
    // Written again from what was read: the same header, byte for byte.
    GgufWriter again;
    for (const auto& entry : file.metadata())
      again.add_metadata(entry.key, entry.value);
    again.declare("w", kGgmlF32, {2});
    EXPECT_EQ(again.header_bytes(), header);
  }
}

TEST_F(GgufFileTest, LargeArraysOfEveryElementSizeCrossTheReadBuffer) {
  // Each array spans the reader's 1 MiB buffer at least once; the odd key lengths put elements
  // across the buffer's end.
  std::mt19937_64 rng(17);
  std::vector<int8_t> i8_values(1100003);
  std::vector<uint16_t> u16_values(700001);
  std::vector<int32_t> i32_values(300007);
  std::vector<float> f32_values(300011);
  std::vector<uint64_t> u64_values(150001);
  std::vector<double> f64_values(150003);
  std::vector<bool> bool_values(1500007);
  for (auto& value : i8_values)
    value = static_cast<int8_t>(rng());
  for (auto& value : u16_values)
    value = static_cast<uint16_t>(rng());
  for (auto& value : i32_values)
    value = static_cast<int32_t>(rng());
  for (auto& value : f32_values)
    value = std::ldexp(static_cast<float>(static_cast<int32_t>(rng())), -20);
  for (auto& value : u64_values)
    value = rng();
  for (auto& value : f64_values)
    value = std::ldexp(static_cast<double>(static_cast<int64_t>(rng())), -40);
  for (std::size_t index = 0; index < bool_values.size(); ++index)
    bool_values[index] = (rng() & 1) != 0;
  GgufWriter writer;
  writer.add_metadata("i8", i8_values);
  writer.add_metadata("u16.", u16_values);
  writer.add_metadata("i32..", i32_values);
  writer.add_metadata("f32", f32_values);
  writer.add_metadata("u64.", u64_values);
  writer.add_metadata("f64..", f64_values);
  writer.add_metadata("bool", bool_values);
  GgufFile file = open_bytes(writer.header_bytes());
  EXPECT_EQ(file.get_array<int8_t>("i8"), i8_values);
  EXPECT_EQ(file.get_array<uint16_t>("u16."), u16_values);
  EXPECT_EQ(file.get_array<int32_t>("i32.."), i32_values);
  EXPECT_EQ(file.get_array<float>("f32"), f32_values);
  EXPECT_EQ(file.get_array<uint64_t>("u64."), u64_values);
  EXPECT_EQ(file.get_array<double>("f64.."), f64_values);
  EXPECT_EQ(file.get_array<bool>("bool"), bool_values);
}

TEST_F(GgufFileTest, StringArrayTruncationsAndCountsAreRejected) {
  const std::string bytes = one_entry_file("t", std::vector<std::string>{"ab", "cde", "fghij"});
  // 24: u64 1, 32: "t", 33: u32 9 (ARRAY), 37: u32 8 (STRING), 41: u64 3, 49: u64 2 "ab",
  // 59: u64 3 "cde", 70: u64 5, 78: "fghij" -> 83, zeros to 96.
  ASSERT_EQ(bytes.size(), 96u);
  ASSERT_EQ(bytes.substr(33, 16), u32(9) + u32(8) + u64(3));
  ASSERT_EQ(bytes.substr(70, 13), u64(5) + "fghij");
  const auto broken = [&](std::size_t offset, const std::string& with) {
    std::string copy = bytes;
    patch(copy, offset, with);
    return copy;
  };
  // The file ends inside element 2's bytes, or inside its length.
  EXPECT_GGUF_ERROR(open_bytes(bytes.substr(0, 80)), ErrorCode::malformed,
                    "\"memory\": metadata entry 0 (\"t\") element 2 (length 5) at offset 78 needs "
                    "5 bytes but the file ends after 2 more (file size 80; truncated?)");
  EXPECT_GGUF_ERROR(open_bytes(bytes.substr(0, 74)), ErrorCode::malformed,
                    "metadata entry 0 (\"t\") element 2 length at offset 70 needs 8 bytes but the "
                    "file ends after 4 more (file size 74");
  // A length past the end of the file: refused before anything is allocated for it.
  EXPECT_GGUF_ERROR(open_bytes(broken(59, u64(uint64_t{1} << 62))), ErrorCode::malformed,
                    "element 1 (length 4611686018427387904) at offset 67 needs "
                    "4611686018427387904 bytes but the file ends after 29 more");
  EXPECT_GGUF_ERROR(open_bytes(broken(49, u64(~uint64_t{0}))), ErrorCode::malformed,
                    "element 0 (length 18446744073709551615) at offset 57 needs");
  // Counts: 5 lengths fit in the 47 bytes after the count (the padding reads as empty strings
  // until element 4's length runs out), 6 do not.
  EXPECT_GGUF_ERROR(open_bytes(broken(41, u64(5))), ErrorCode::malformed,
                    "element 4 length at offset 91 needs 8 bytes but the file ends after 5 more");
  EXPECT_GGUF_ERROR(open_bytes(broken(41, u64(6))), ErrorCode::malformed,
                    "metadata entry 0 (\"t\") at offset 41: array length 6 of string cannot fit "
                    "in the 47 bytes left in the file (truncated?)");
  EXPECT_GGUF_ERROR(open_bytes(broken(41, u64(~uint64_t{0}))), ErrorCode::malformed,
                    "array length 18446744073709551615 of string cannot fit");
  // A vocabulary cut anywhere is refused, naming the element where the file ends.
  const std::vector<std::string> vocab = vocabulary(150000, 9);
  const std::string vocab_file = one_entry_file("tokenizer.ggml.tokens", vocab);
  uint64_t element_start = 48 + std::string("tokenizer.ggml.tokens").size();
  for (std::size_t index = 0; index < 100000; ++index)
    element_start += 8 + vocab[index].size();
  EXPECT_GGUF_ERROR(open_bytes(vocab_file.substr(0, element_start + 8 + vocab[100000].size() - 1)),
                    ErrorCode::malformed,
                    "(\"tokenizer.ggml.tokens\") element 100000 (length " +
                        std::to_string(vocab[100000].size()) + ") at offset " +
                        std::to_string(element_start + 8) + " needs");
}

TEST_F(GgufFileTest, ArrayElementErrorsNameTheElementAndOffset) {
  // A bad bool deep inside an array (past the first 1 MiB buffer).
  std::string flags = one_entry_file("b", std::vector<bool>(1500000, true));
  flags[49 + 1234567] = 2;
  EXPECT_GGUF_ERROR(open_bytes(flags), ErrorCode::malformed,
                    "metadata entry 0 (\"b\") element 1234567 at offset 1234616 is a bool of value "
                    "2 (expected 0 or 1)");
  // A file that shrinks while the header is read: the element the bytes stopped in.
  const std::string numbers = one_entry_file("a", std::vector<uint32_t>(1000, 7));
  EXPECT_GGUF_ERROR(open_shrunk(numbers, 49 + 4 * 500 + 2), ErrorCode::io,
                    "\"memory\": reading metadata entry 0 (\"a\") element 500 at offset 2049 (4 "
                    "bytes) got only 2 (the file shrank?)");
  const std::string strings =
      one_entry_file("t", std::vector<std::string>{"ab", std::string(3000, 'x')});
  EXPECT_GGUF_ERROR(open_shrunk(strings, 67 + 1000), ErrorCode::io,
                    "reading metadata entry 0 (\"t\") element 1 at offset 67 (3000 bytes) got only "
                    "1000 (the file shrank?)");
  // A string longer than the buffer is read straight into the array: the same report.
  const std::string long_strings =
      one_entry_file("t", std::vector<std::string>{"ab", std::string(2 << 20, 'x')});
  EXPECT_GGUF_ERROR(open_shrunk(long_strings, 67 + 1572864), ErrorCode::io,
                    "element 1 at offset 67 (2097152 bytes) got only 1572864 (the file shrank?)");
  // The same files whole are fine.
  EXPECT_EQ(open_bytes(numbers).get_array<uint32_t>("a"), std::vector<uint32_t>(1000, 7));
  EXPECT_EQ(open_bytes(long_strings).get_array<std::string>("t")[1], std::string(2 << 20, 'x'));
}

TEST_F(GgufFileTest, StringArrayMemoryIsTheFilesBytes) {
  // Deterministic: the array's own account of its heap (both buffers' capacities), not timing.
  const std::vector<std::string> tokens = vocabulary(150000, 11);
  uint64_t string_bytes = 0;
  for (const std::string& token : tokens)
    string_bytes += token.size();
  const uint64_t file_bytes = 8 * tokens.size() + string_bytes;  // u64 length + bytes each
  GgufFile file = open_bytes(one_entry_file("tokenizer.ggml.tokens", tokens));
  const GgufStringArray& read = file.get_array<std::string>("tokenizer.ggml.tokens");
  EXPECT_EQ(read.string_bytes(), string_bytes);
  EXPECT_EQ(read.heap_bytes(), file_bytes);
  // Less than the std::string objects alone of a std::vector<std::string> (24 or 32 bytes each,
  // before the heap blocks of the longer tokens).
  EXPECT_LT(read.heap_bytes(), tokens.size() * sizeof(std::string));
  // A value built for the writer holds the same.
  const GgufValue value = tokens;
  EXPECT_EQ(value.as_array<std::string>().heap_bytes(), file_bytes);
}

// An alignment of 2^30 is legal (ggml: any power of two) and pads even a file without tensors to
// 1 GiB; the writer streams that padding instead of holding it (found by fuzz_gguf: a 124-byte
// file rewritten took 3 GB). The bytes go to a stream that only counts them.
TEST_F(GgufFileTest, HugeAlignmentPaddingIsStreamedNotHeld) {
  struct CountingBuffer : std::streambuf {
    uint64_t bytes = 0;
    uint64_t nonzero_bytes = 0;
    std::streamsize xsputn(const char* data, std::streamsize count) override {
      nonzero_bytes += static_cast<uint64_t>(
          std::count_if(data, data + count, [](char byte) { return byte != 0; }));
      bytes += static_cast<uint64_t>(count);
      return count;
    }
  };
  constexpr uint32_t kAlignment = 1u << 28;  // 256 MiB: held whole before, by file_bytes() too
  GgufWriter writer;
  writer.add_metadata("general.alignment", kAlignment);
  writer.declare("w", kGgmlF32, {1, 3});
  nibble::testing::AllocationPeak peak;
  EXPECT_EQ(writer.file_bytes(), 2ull * kAlignment);  // the header, then 12 bytes, each padded
  CountingBuffer counter;
  std::ostream out(&counter);
  writer.begin(out);
  const float values[3] = {1, 2, 3};
  writer.write("w", values, sizeof values);
  writer.finish();
  EXPECT_EQ(counter.bytes, 2ull * kAlignment);
  // Everything but the unpadded header and the 12 data bytes is padding: zeros.
  EXPECT_LE(counter.nonzero_bytes, 128u + 12u);  // the unpadded header is under 128 bytes
  EXPECT_LT(peak.bytes(), 1 << 20);
}

// ---- writer errors ------------------------------------------------------------------------------

TEST_F(GgufFileTest, WriterRejectsBadDeclarations) {
  GgufWriter writer;
  EXPECT_GGUF_ERROR(writer.declare("w", GgmlType::q4_K, {4, 128}), ErrorCode::shape_mismatch,
                    "not a multiple of the q4_K block size 256");
  EXPECT_GGUF_ERROR(writer.declare("w", GgmlType::q4_0, {4, 33}), ErrorCode::shape_mismatch,
                    "K = 33");
  EXPECT_GGUF_ERROR(writer.declare("w", static_cast<GgmlType>(13), {4, 256}),
                    ErrorCode::unsupported, "13 (q5_K) is not supported");
  EXPECT_GGUF_ERROR(writer.declare("w", static_cast<GgmlType>(999), {4, 256}),
                    ErrorCode::unsupported, "999 is not supported");
  EXPECT_GGUF_ERROR(writer.declare("w", kGgmlF32, {1, 2, 3, 4, 5}), ErrorCode::shape_mismatch,
                    "expected 1 to 4");
  EXPECT_GGUF_ERROR(writer.declare("w", kGgmlF32, {}), ErrorCode::shape_mismatch,
                    "expected 1 to 4");
  EXPECT_GGUF_ERROR(writer.declare("w", kGgmlF32, {0, 4}), ErrorCode::shape_mismatch, "extent < 1");
  EXPECT_GGUF_ERROR(writer.declare("w", kGgmlF32, {int64_t{1} << 62, 4}), ErrorCode::overflow,
                    "overflows");
  EXPECT_GGUF_ERROR(writer.declare(std::string(64, 'n'), kGgmlF32, {4}),
                    ErrorCode::invalid_argument, "expected 1 to 63");
  EXPECT_GGUF_ERROR(writer.declare("", kGgmlF32, {4}), ErrorCode::invalid_argument,
                    "expected 1 to 63");
  writer.declare(std::string(63, 'n'), kGgmlF32, {4});
  writer.declare("w", kGgmlF32, {4});
  EXPECT_GGUF_ERROR(writer.declare("w", kGgmlF16, {8}), ErrorCode::invalid_argument,
                    "declared twice");

  writer.add_metadata("general.name", "x");
  EXPECT_GGUF_ERROR(writer.add_metadata("general.name", "y"), ErrorCode::invalid_argument,
                    "given twice");
  EXPECT_GGUF_ERROR(writer.add_metadata("", 1), ErrorCode::invalid_argument, "expected 1 to");
  EXPECT_GGUF_ERROR(writer.add_metadata(std::string(65536, 'k'), 1), ErrorCode::invalid_argument,
                    "expected 1 to 65535");
  EXPECT_GGUF_ERROR(writer.add_metadata("caf\xc3\xa9", 1), ErrorCode::invalid_argument, "ASCII");
  EXPECT_GGUF_ERROR(writer.add_metadata("general.alignment", 32), ErrorCode::type_mismatch,
                    "expected a u32");
  EXPECT_GGUF_ERROR(writer.add_metadata("general.alignment", uint32_t{48}),
                    ErrorCode::invalid_argument, "power of two");
  EXPECT_GGUF_ERROR(writer.add_metadata("general.alignment", uint32_t{4}),
                    ErrorCode::invalid_argument, ">= 8");
  EXPECT_EQ(writer.alignment(), 32u);
}

TEST_F(GgufFileTest, WriterChecksEachWrite) {
  GgufWriter writer;
  writer.declare("a", GgmlType::q4_0, {3, 64});  // 3 rows of 2 blocks of 18 bytes = 108
  writer.declare("b", kGgmlF32, {2});
  const std::vector<uint8_t> bytes(108, 0);
  EXPECT_GGUF_ERROR(writer.write("a", bytes.data(), 108), ErrorCode::invalid_argument,
                    "before begin()");
  EXPECT_GGUF_ERROR(writer.finish(), ErrorCode::invalid_argument, "begin() was not called");
  std::ostringstream out;
  writer.begin(out);
  const std::size_t header_size = out.str().size();
  EXPECT_GGUF_ERROR(writer.declare("c", kGgmlF32, {2}), ErrorCode::invalid_argument,
                    "after begin()");
  EXPECT_GGUF_ERROR(writer.add_metadata("k", 1), ErrorCode::invalid_argument, "after begin()");
  EXPECT_GGUF_ERROR(writer.begin(out), ErrorCode::invalid_argument, "after begin()");
  EXPECT_GGUF_ERROR(writer.write("b", bytes.data(), 8), ErrorCode::invalid_argument,
                    "expected tensor \"a\" next");
  EXPECT_GGUF_ERROR(writer.write("a", bytes.data(), 107), ErrorCode::shape_mismatch,
                    "107 bytes given, but q4_0 [3, 64] is 108 bytes (3 rows of 36)");
  EXPECT_GGUF_ERROR(writer.write("a", nullptr, 108), ErrorCode::null_pointer, "null");
  const std::vector<float> nan_row(192, std::nanf(""));
  EXPECT_GGUF_ERROR(writer.write_f32("a", nan_row.data(), nan_row.size()), ErrorCode::non_finite,
                    "NaN");
  EXPECT_GGUF_ERROR(writer.write_f32("a", nan_row.data(), 191), ErrorCode::shape_mismatch,
                    "191 values given");
  EXPECT_EQ(out.str().size(), header_size);  // rejected writes wrote nothing
  EXPECT_GGUF_ERROR(writer.finish(), ErrorCode::invalid_argument,
                    "0 of 2 declared tensors written (next: \"a\")");
  writer.write("a", bytes.data(), bytes.size());
  EXPECT_EQ(out.str().size(), header_size + 128);  // 108 + 20 bytes of padding
  const float b_values[] = {1.0f, 2.0f};
  writer.write_f32("b", b_values, 2);
  EXPECT_GGUF_ERROR(writer.write_f32("b", b_values, 2), ErrorCode::invalid_argument,
                    "already written");
  writer.finish();
  EXPECT_GGUF_ERROR(writer.finish(), ErrorCode::invalid_argument, "called twice");
  EXPECT_EQ(out.str().size(), writer.file_bytes());
}

TEST_F(GgufFileTest, WriterIoErrors) {
  GgufWriter writer;
  EXPECT_GGUF_ERROR(writer.begin(dir_.string()), ErrorCode::io, "is a directory");
  EXPECT_GGUF_ERROR(writer.begin(path("missing/dir/x.gguf")), ErrorCode::io, "cannot create");
  // A stream that fails: the write is Error(io) and the writer refuses to go on.
  GgufWriter failing;
  failing.declare("w", kGgmlF32, {2});
  std::ostringstream out;
  out.setstate(std::ios::badbit);
  EXPECT_GGUF_ERROR(failing.begin(out), ErrorCode::io, "writing the header");
  const float values[] = {1.0f, 2.0f};
  EXPECT_GGUF_ERROR(failing.write_f32("w", values, 2), ErrorCode::invalid_argument,
                    "earlier write failed");
  EXPECT_GGUF_ERROR(failing.finish(), ErrorCode::io, "earlier write failed");
}

// ---- reader errors: one broken field each (offsets from tiny_expected_bytes) ------------------

TEST_F(GgufFileTest, ReaderRejectsEachMalformedField) {
  const std::string good = tiny_expected_bytes();
  ASSERT_NO_THROW(open_bytes(good));
  const auto broken = [&](std::size_t offset, const std::string& with) {
    std::string bytes = good;
    patch(bytes, offset, with);
    return bytes;
  };

  EXPECT_GGUF_ERROR(open_bytes(broken(0, "GGML")), ErrorCode::malformed, "bad magic \"GGML\"");
  EXPECT_GGUF_ERROR(open_bytes(good.substr(0, 3)), ErrorCode::malformed, "the magic");
  EXPECT_GGUF_ERROR(open_bytes(""), ErrorCode::malformed, "truncated");
  EXPECT_GGUF_ERROR(open_bytes(broken(4, u32(1))), ErrorCode::unsupported, "32-bit counts");
  EXPECT_GGUF_ERROR(open_bytes(broken(4, u32(4))), ErrorCode::unsupported,
                    "version 4 is not supported (expected 3");
  EXPECT_GGUF_ERROR(open_bytes(broken(4, u32(0x03000000))), ErrorCode::unsupported, "big-endian");
  {  // version 2 has the same layout and is read
    GgufFile v2 = open_bytes(broken(4, u32(2)));
    EXPECT_EQ(v2.version(), 2u);
    EXPECT_EQ(v2.read_f32("b"), (std::vector<float>{1.0f, -2.0f, 0.5f}));
  }
  EXPECT_GGUF_ERROR(open_bytes(broken(8, u64(uint64_t{1} << 40))), ErrorCode::malformed,
                    "tensor count 1099511627776 cannot fit");
  EXPECT_GGUF_ERROR(open_bytes(broken(16, u64(~uint64_t{0}))), ErrorCode::malformed,
                    "key-value count 18446744073709551615 cannot fit");
  // String lengths beyond the file.
  EXPECT_GGUF_ERROR(open_bytes(broken(24, u64(1000))), ErrorCode::malformed,
                    "metadata entry 0 key (length 1000) at offset 32 needs 1000 bytes");
  EXPECT_GGUF_ERROR(open_bytes(broken(24, u64(70000))), ErrorCode::malformed,
                    "has length 70000 (expected at most 65535)");
  EXPECT_GGUF_ERROR(open_bytes(broken(56, u64(~uint64_t{0} - 3))), ErrorCode::malformed,
                    "needs 18446744073709551612 bytes");
  EXPECT_GGUF_ERROR(open_bytes(broken(24, u64(0))), ErrorCode::malformed, "empty key");
  // Value types.
  EXPECT_GGUF_ERROR(open_bytes(broken(52, u32(13))), ErrorCode::malformed, "value type 13");
  EXPECT_GGUF_ERROR(open_bytes(broken(119, u32(9))), ErrorCode::unsupported, "nested arrays");
  EXPECT_GGUF_ERROR(open_bytes(broken(119, u32(77))), ErrorCode::malformed,
                    "array element type 77");
  EXPECT_GGUF_ERROR(open_bytes(broken(123, u64(uint64_t{1} << 62))), ErrorCode::malformed,
                    "array length 4611686018427387904 of i16 cannot fit");
  {  // a duplicate key: the writer refuses one, so rename the second of two keys
    GgufWriter writer;
    writer.add_metadata("a.bcd", 1);
    writer.add_metadata("a.bce", 2);
    std::string dup = writer.header_bytes();
    const std::size_t second = dup.find("a.bce");
    dup[second + 4] = 'd';
    EXPECT_GGUF_ERROR(open_bytes(dup), ErrorCode::malformed, "duplicate key \"a.bcd\"");
  }
  // Tensor infos ("w": n_dims at 144, ne at 148 / 156, type at 164, offset at 168; "b": name at
  // 184, n_dims 185, ne[0] 189, type 197, offset 201).
  EXPECT_GGUF_ERROR(open_bytes(broken(144, u32(5))), ErrorCode::malformed,
                    "n_dims = 5 (expected 1 to 4");
  EXPECT_GGUF_ERROR(open_bytes(broken(144, u32(0))), ErrorCode::malformed, "n_dims = 0");
  EXPECT_GGUF_ERROR(open_bytes(broken(148, u64(0))), ErrorCode::malformed, "ne[0] = 0");
  EXPECT_GGUF_ERROR(open_bytes(broken(148, u64(~uint64_t{0}))), ErrorCode::malformed,
                    "expected 1 to INT64_MAX");
  EXPECT_GGUF_ERROR(open_bytes(broken(156, u64(uint64_t{1} << 62))), ErrorCode::overflow,
                    "tensor info 0 (\"w\") shape [4611686018427387904, 2] element count");
  EXPECT_GGUF_ERROR(open_bytes(broken(156, u64(uint64_t{1} << 40))), ErrorCode::malformed,
                    "extends past the end of the data section");
  EXPECT_GGUF_ERROR(open_bytes(broken(164, u32(4))), ErrorCode::malformed,
                    "ggml type id 4, which is not a ggml type");
  EXPECT_GGUF_ERROR(open_bytes(broken(164, u32(13))), ErrorCode::unsupported,
                    "ggml type id 13 (q5_K), which nibble does not read");
  EXPECT_GGUF_ERROR(open_bytes(broken(164, u32(2))), ErrorCode::malformed,
                    "ne[0] = 2, not a multiple of the q4_0 block size 32");
  EXPECT_GGUF_ERROR(open_bytes(broken(168, u64(16))), ErrorCode::malformed,
                    "offset 16, not a multiple of the alignment 32");
  EXPECT_GGUF_ERROR(open_bytes(broken(201, u64(64))), ErrorCode::malformed,
                    "6 bytes at data offset 64) extends past the end of the data section (64 "
                    "bytes");
  EXPECT_GGUF_ERROR(open_bytes(broken(201, u64(0))), ErrorCode::malformed,
                    "tensor \"b\" [0, 6) overlaps tensor \"w\" [0, 8)");
  EXPECT_GGUF_ERROR(open_bytes(broken(184, "w")), ErrorCode::malformed,
                    "duplicate tensor name \"w\"");
  EXPECT_GGUF_ERROR(open_bytes(broken(176, u64(65))), ErrorCode::malformed,
                    "name at offset 176 has length 65 (expected at most 64)");
  // Truncated anywhere: the header, or the data of the last tensor.
  EXPECT_GGUF_ERROR(open_bytes(good.substr(0, 200)), ErrorCode::malformed, "tensor info 1");
  EXPECT_GGUF_ERROR(open_bytes(good.substr(0, 261)), ErrorCode::malformed, "truncated?");
  EXPECT_NO_THROW(open_bytes(good.substr(0, 262)));  // the last tensor's padding may be missing
}

TEST_F(GgufFileTest, ReaderChecksBoolsAndAlignment) {
  GgufWriter writer;
  writer.add_metadata("k", true);
  std::string bytes = writer.header_bytes();
  // 24: u64 1, 32: "k", 33: u32 7 (BOOL), 37: the value byte.
  ASSERT_EQ(bytes.substr(33, 5), u32(7) + "\x01");
  bytes[37] = 2;
  EXPECT_GGUF_ERROR(open_bytes(bytes), ErrorCode::malformed,
                    "is a bool of value 2 (expected 0 or 1)");

  GgufWriter aligned;
  aligned.add_metadata("general.alignment", uint32_t{64});
  aligned.declare("w", kGgmlF32, {2});
  std::string aligned_bytes = aligned.header_bytes() + std::string(64, '\0');
  EXPECT_EQ(open_bytes(aligned_bytes).alignment(), 64u);
  // 24: u64 17, 32: "general.alignment", 49: u32 4 (UINT32), 53: the value.
  ASSERT_EQ(aligned_bytes.substr(49, 8), u32(4) + u32(64));
  patch(aligned_bytes, 53, u32(48));
  EXPECT_GGUF_ERROR(open_bytes(aligned_bytes), ErrorCode::malformed,
                    "general.alignment = 48 (expected a power of two");
  patch(aligned_bytes, 53, u32(0));
  EXPECT_GGUF_ERROR(open_bytes(aligned_bytes), ErrorCode::malformed, "general.alignment = 0");
  patch(aligned_bytes, 49, u32(5));  // i32 64: ggml requires the u32 type
  patch(aligned_bytes, 53, u32(64));
  EXPECT_GGUF_ERROR(open_bytes(aligned_bytes), ErrorCode::malformed,
                    "general.alignment is i32 64 (expected a u32)");
}

TEST_F(GgufFileTest, ReaderAccessorsAndIoErrors) {
  GgufFile file = GgufFile::open(write_file("tiny.gguf", tiny_expected_bytes()));
  EXPECT_GGUF_ERROR(file.get<std::string>("missing"), ErrorCode::invalid_argument,
                    "no metadata key \"missing\"");
  EXPECT_GGUF_ERROR(file.get<int32_t>("general.file_type"), ErrorCode::type_mismatch,
                    "\"general.file_type\" is u32 2 (expected i32)");
  EXPECT_GGUF_ERROR(file.get_array<int32_t>("x.arr"), ErrorCode::type_mismatch,
                    "(expected array[i32])");
  EXPECT_GGUF_ERROR(file.read_f32("missing"), ErrorCode::invalid_argument, "no tensor named");
  GgufTensorInfo forged = file.tensors()[0];
  forged.offset = 32;
  std::vector<uint8_t> out(64);
  EXPECT_GGUF_ERROR(file.read_raw(forged, out.data(), out.size()), ErrorCode::invalid_argument,
                    "does not describe");
  EXPECT_GGUF_ERROR(file.read_raw(file.tensors()[0], out.data(), 7), ErrorCode::buffer_too_small,
                    "holds 8 bytes");
  EXPECT_GGUF_ERROR(file.read_raw(file.tensors()[0], nullptr, 8), ErrorCode::null_pointer, "null");
  EXPECT_NE(file.find_tensor("w"), nullptr);
  EXPECT_EQ(file.find_tensor("x"), nullptr);

  EXPECT_GGUF_ERROR(GgufFile::open(path("missing.gguf")), ErrorCode::io, "cannot open");
  EXPECT_GGUF_ERROR(GgufFile::open(dir_.string()), ErrorCode::io, "is a directory");
  // Truncated after open(): the lazy read reports it.
  const std::string truncating = write_file("shrinks.gguf", tiny_expected_bytes());
  GgufFile shrinking = GgufFile::open(truncating);
  fs::resize_file(truncating, 250);
  EXPECT_GGUF_ERROR(shrinking.read_f32("b"), ErrorCode::io, "is truncated");
  EXPECT_EQ(shrinking.read_f32("w"), (std::vector<float>{1.0f, -2.0f}));
}

// ---- random mutations ---------------------------------------------------------------------------

// A small valid file with strings, a string array, and block tensors.
std::string mutation_seed_file() {
  GgufWriter writer;
  writer.add_metadata("general.architecture", "llama");
  writer.add_metadata("general.alignment", uint32_t{32});
  writer.add_metadata("tokenizer.ggml.tokens", std::vector<std::string>{"a", "bc", "def"});
  writer.add_metadata("tokenizer.ggml.scores", std::vector<float>{0.5f, 1.0f, -1.0f});
  writer.add_metadata("b", true);
  writer.declare("q", GgmlType::q4_0, {2, 32});
  writer.declare("k", GgmlType::q4_K, {1, 256});
  writer.declare("h", kGgmlF16, {3});
  writer.declare("s", GgmlType::q6_K, {1, 256});
  std::ostringstream out;
  writer.begin(out);
  for (const GgufTensorInfo& info : writer.tensors()) {
    const std::vector<float> x = gaussian(static_cast<std::size_t>(info.numel()), 7);
    writer.write_f32(info.name, x.data(), x.size());
  }
  writer.finish();
  return out.str();
}

TEST_F(GgufFileTest, RandomMutationsThrowErrorOrRead) {
  const std::string good = mutation_seed_file();
  const std::size_t header_size = static_cast<std::size_t>(open_bytes(good).data_offset());
  std::mt19937 rng(20240607);
  const auto below = [&](std::size_t bound) {
    return std::uniform_int_distribution<std::size_t>(0, bound - 1)(rng);
  };
  const uint64_t interesting[] = {0,          1,          2,          4,          5,
                                  31,         32,         33,         64,         255,
                                  256,        65535,      65536,      0x7fffffff, 0xffffffff,
                                  1ull << 32, 1ull << 62, ~0ull >> 1, ~0ull,      1ull << 63};
  int opened = 0;
  int rejected = 0;
  constexpr int kMutations = 4000;
  for (int trial = 0; trial < kMutations; ++trial) {
    std::string bytes = good;
    const int edits = 1 + static_cast<int>(below(3));
    for (int edit = 0; edit < edits; ++edit) {
      // Mostly inside the header, where the structure is; sometimes anywhere.
      const std::size_t span = below(4) == 0 ? bytes.size() : std::min(header_size, bytes.size());
      if (span == 0) break;
      const std::size_t at = below(span);
      switch (below(5)) {
        case 0:  // flip a bit
          bytes[at] = static_cast<char>(bytes[at] ^ (1 << below(8)));
          break;
        case 1:  // a random byte
          bytes[at] = static_cast<char>(below(256));
          break;
        case 2: {  // an interesting 1, 2, 4 or 8-byte value
          const int width = 1 << below(4);
          const std::string value = le(interesting[below(std::size(interesting))], width);
          bytes.replace(at, std::min(value.size(), bytes.size() - at), value, 0,
                        std::min(value.size(), bytes.size() - at));
          break;
        }
        case 3:  // truncate
          bytes.resize(at);
          break;
        default:  // delete or insert a byte
          if (below(2) == 0) {
            bytes.erase(at, 1);
          } else {
            bytes.insert(at, 1, static_cast<char>(below(256)));
          }
          break;
      }
    }
    try {
      // Every 16th through a real file, the rest from memory.
      GgufFile file =
          trial % 16 == 0 ? GgufFile::open(write_file("mutant.gguf", bytes)) : open_bytes(bytes);
      for (const GgufTensorInfo& info : file.tensors()) {
        file.read_bytes(info.name);
        file.read_f32(info.name);
      }
      for (const auto& entry : file.metadata())
        (void)entry.value.to_string();
      ++opened;
    } catch (const Error& error) {
      ++rejected;
#ifdef NIBBLE_GGUF_MUTATION_LOG
      std::printf("%s\n", error.what());
#else
      (void)error;
#endif
    } catch (const std::exception& other) {
      FAIL() << "trial " << trial << ": not a nibble::Error: " << other.what();
    }
  }
  RecordProperty("opened", opened);
  RecordProperty("rejected", rejected);
  EXPECT_EQ(opened + rejected, kMutations);
  EXPECT_GT(opened, 100);     // flips in data and padding stay readable
  EXPECT_GT(rejected, 1000);  // header damage is caught
}

// ---- export for the gguf-py check ---------------------------------------------------------------

std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (const char character : text) {
    const auto byte = static_cast<unsigned char>(character);
    if (character == '"' || character == '\\') {
      out += '\\';
      out += character;
    } else if (byte < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", byte);
      out += escaped;
    } else {
      out += character;  // UTF-8 passes through
    }
  }
  return out + "\"";
}

std::string json_number(double value) {
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

template <class T>
void add_ints(const GgufValue& value, std::vector<std::string>& items) {
  if (!value.is_array()) {
    items.push_back(std::to_string(value.as<T>()));
    return;
  }
  for (const T number : value.as_array<T>())
    items.push_back(std::to_string(number));
}

// The JSON form of a value for check_gguf_file.py: {"type": "UINT32", "value": 32} or
// {"type": "ARRAY", "element_type": "STRING", "value": [...]} with gguf-py's type names.
std::string json_value(const GgufValue& value) {
  static const char* const kNames[] = {"UINT8",  "INT8",    "UINT16", "INT16",  "UINT32",
                                       "INT32",  "FLOAT32", "BOOL",   "STRING", "ARRAY",
                                       "UINT64", "INT64",   "FLOAT64"};
  const auto name = [&](GgufValueType type) { return kNames[static_cast<uint32_t>(type)]; };
  std::string out = "{\"type\": \"" + std::string(name(value.type())) + "\"";
  if (value.is_array())
    out += ", \"element_type\": \"" + std::string(name(value.element_type())) + "\"";
  out += ", \"value\": ";
  std::vector<std::string> items;
  const auto add_all = [&](const auto& elements, auto format) {
    for (const auto& element : elements)
      items.push_back(format(element));
  };
  switch (value.element_type()) {
    case GgufValueType::string:
      if (value.is_array()) {
        add_all(value.as_array<std::string>(), json_string);  // std::string_view elements
      } else {
        items.push_back(json_string(value.as_string()));
      }
      break;
    case GgufValueType::boolean:
      add_all(value.is_array() ? value.as_array<bool>() : std::vector<bool>{value.as<bool>()},
              [](bool flag) { return std::string(flag ? "true" : "false"); });
      break;
    case GgufValueType::f32:
      add_all(value.is_array() ? value.as_array<float>() : std::vector<float>{value.as<float>()},
              [](float number) { return json_number(number); });
      break;
    case GgufValueType::f64:
      add_all(value.is_array() ? value.as_array<double>() : std::vector<double>{value.as<double>()},
              json_number);
      break;
    case GgufValueType::u64:
      add_all(value.is_array() ? value.as_array<uint64_t>()
                               : std::vector<uint64_t>{value.as<uint64_t>()},
              [](uint64_t number) { return std::to_string(number); });
      break;
    case GgufValueType::u8:
      add_ints<uint8_t>(value, items);
      break;
    case GgufValueType::i8:
      add_ints<int8_t>(value, items);
      break;
    case GgufValueType::u16:
      add_ints<uint16_t>(value, items);
      break;
    case GgufValueType::i16:
      add_ints<int16_t>(value, items);
      break;
    case GgufValueType::u32:
      add_ints<uint32_t>(value, items);
      break;
    case GgufValueType::i32:
      add_ints<int32_t>(value, items);
      break;
    default:
      add_ints<int64_t>(value, items);
      break;
  }
  if (value.is_array()) {
    out += "[";
    for (std::size_t index = 0; index < items.size(); ++index)
      out += (index ? ", " : "") + items[index];
    out += "]";
  } else {
    out += items.front();
  }
  return out + "}";
}

// With NIBBLE_GGUF_EXPORT_DIR set: writes sample.gguf (every metadata and tensor type),
// expect.json and one <index>.f32 file per tensor (nibble's dequantization, little-endian
// float32) for tests/reference/check_gguf_file.py.
TEST_F(GgufFileTest, ExportForGgufPy) {
  const char* export_dir = std::getenv("NIBBLE_GGUF_EXPORT_DIR");
  if (export_dir == nullptr || *export_dir == '\0') {
    GTEST_SKIP() << "NIBBLE_GGUF_EXPORT_DIR not set (the gguf-py check writes its inputs there)";
  }
  const fs::path out_dir(export_dir);
  fs::create_directories(out_dir);
  GgufWriter writer;
  write_full(writer, 64);
  const std::string gguf_path = (out_dir / "sample.gguf").string();
  writer.begin(gguf_path);
  uint32_t seed = 100;
  for (const TensorCase& tensor : tensor_cases()) {
    const std::vector<float> x = gaussian(static_cast<std::size_t>(numel(tensor.shape)), seed++);
    writer.write_f32(tensor.name, x.data(), x.size());
  }
  writer.finish();

  GgufFile file = GgufFile::open(gguf_path);
  std::string json =
      "{\n  \"alignment\": " + std::to_string(file.alignment()) + ",\n  \"metadata\": {";
  for (std::size_t index = 0; index < file.metadata().size(); ++index) {
    json += (index ? ",\n    " : "\n    ") + json_string(file.metadata()[index].key) + ": " +
            json_value(file.metadata()[index].value);
  }
  json += "\n  },\n  \"tensors\": [";
  for (std::size_t index = 0; index < file.tensors().size(); ++index) {
    const GgufTensorInfo& info = file.tensors()[index];
    std::string type_name = nibble::io::ggml_type_name(info.type);
    for (char& character : type_name)
      character = static_cast<char>(std::toupper(static_cast<unsigned char>(character)));
    std::string ne;
    for (int64_t extent : info.ggml_ne())
      ne += (ne.empty() ? "" : ", ") + std::to_string(extent);
    const std::string values_file = std::to_string(index) + ".f32";
    const std::vector<float> values = file.read_f32(info.name);
    std::ofstream values_out(out_dir / values_file, std::ios::binary);
    values_out.write(reinterpret_cast<const char*>(values.data()),
                     static_cast<std::streamsize>(values.size() * sizeof(float)));
    json += std::string(index ? ",\n    " : "\n    ") + "{\"name\": " + json_string(info.name) +
            ", \"type\": \"" + type_name + "\", \"shape\": [" + ne + "], \"offset\": " +
            std::to_string(file.data_offset() + static_cast<int64_t>(info.offset)) +
            ", \"n_bytes\": " + std::to_string(info.size_bytes) + ", \"dequantized\": \"" +
            values_file + "\"}";
  }
  json += "\n  ]\n}\n";
  std::ofstream(out_dir / "expect.json") << json;
  SUCCEED() << "wrote " << gguf_path;
}

}  // namespace
