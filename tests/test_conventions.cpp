// Each quantization convention, bit-exact against independent numpy transcriptions of its tool.
//
// tests/reference/make_fixtures.py (run by the ctest fixture `reference_fixtures`) writes inputs
// and the tool's expected codes, scales and zero points to $NIBBLE_FIXTURE_DIR; this test
// quantizes each input with nibble and compares every real code, every scale's bit pattern,
// every zero point and, for Olive, the packed qweight / qzeros bytes. A missing fixture directory
// is a failure, never a silent pass.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "nibble/quantizer.hpp"
#include "support/npy.hpp"

namespace {

using nibble::bf16;
using nibble::fp16;
using nibble::testing::NpyArray;
using nibble::testing::read_npy;

// One line of cases.txt.
struct FixtureCase {
  std::string name;
  std::string convention;
  int bits = 0;
  bool symmetric = false;
  int64_t group_size = 0;  // -1: per-channel
  std::string dtype;       // float32 | float16 | bfloat16
  std::vector<int64_t> shape;
};

std::vector<int64_t> parse_dims(const std::string& text) {
  std::vector<int64_t> dims;
  std::stringstream stream(text);
  std::string dim;
  while (std::getline(stream, dim, ','))
    dims.push_back(std::stoll(dim));
  return dims;
}

std::vector<FixtureCase> read_cases(const std::string& fixture_dir) {
  const std::string path = fixture_dir + "/cases.txt";
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open " + path);
  std::vector<FixtureCase> cases;
  std::string line;
  while (std::getline(file, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    FixtureCase fixture;
    int symmetric = 0;
    std::string dims;
    if (!(fields >> fixture.name >> fixture.convention >> fixture.bits >> symmetric >>
          fixture.group_size >> fixture.dtype >> dims)) {
      throw std::runtime_error(path + ": malformed line: " + line);
    }
    fixture.symmetric = symmetric != 0;
    fixture.shape = parse_dims(dims);
    cases.push_back(fixture);
  }
  return cases;
}

// The .npy type string each element type is saved as (bfloat16 as its uint16 bit patterns).
template <class T>
const char* npy_descr() {
  if constexpr (std::is_same_v<T, float>) {
    return "<f4";
  } else if constexpr (std::is_same_v<T, fp16>) {
    return "<f2";
  } else {
    return "<u2";
  }
}

// A value's bit pattern (scales are compared bitwise: -0.0 and +0.0 differ).
template <class T>
uint32_t bits_of(T value) {
  if constexpr (std::is_same_v<T, float>) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
  } else {
    return value.bits;
  }
}

template <class T>
T from_bits(uint32_t bits) {
  if constexpr (std::is_same_v<T, float>) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  } else {
    return T::from_bits(static_cast<uint16_t>(bits));
  }
}

// Element i of a little-endian array of T.
template <class T>
T element(const NpyArray& array, int64_t i) {
  uint32_t bits = 0;
  for (std::size_t byte = 0; byte < sizeof(T); ++byte) {
    bits |= uint32_t{array.bytes[static_cast<std::size_t>(i) * sizeof(T) + byte]} << (8 * byte);
  }
  return from_bits<T>(bits);
}

std::string describe_scale(uint32_t bits, float value) {
  std::ostringstream text;
  text << std::setprecision(9) << value << " (0x" << std::hex << bits << ")";
  return text.str();
}

// Collects differences and reports the first few as one failure per compared array.
class Mismatches {
 public:
  explicit Mismatches(std::string what) : what_(std::move(what)) {}

  void add(const std::string& where, const std::string& expected, const std::string& actual,
           const std::string& note = "") {
    if (count_++ < kShown) {
      details_ << "\n  " << where << ": tool " << expected << ", nibble " << actual << note;
    }
  }

  ~Mismatches() {
    if (count_ > 0) {
      ADD_FAILURE() << count_ << " " << what_ << " differ from the tool's" << details_.str()
                    << (count_ > kShown ? "\n  ..." : "");
    }
  }

 private:
  static constexpr int kShown = 6;
  std::string what_;
  int count_ = 0;
  std::ostringstream details_;
};

std::string at(int64_t row, int64_t col) {
  return "[" + std::to_string(row) + ", " + std::to_string(col) + "]";
}

// Loads an expected array and checks its dtype and shape.
NpyArray load(const std::string& path, const std::string& descr, std::vector<int64_t> shape) {
  NpyArray array = read_npy(path);
  if (array.descr != descr || array.shape != shape) {
    std::ostringstream text;
    text << path << ": dtype " << array.descr << " shape " << ::testing::PrintToString(array.shape)
         << ", expected " << descr << " " << ::testing::PrintToString(shape);
    throw std::runtime_error(text.str());
  }
  return array;
}

void expect_same_bytes(const NpyArray& expected, const std::vector<uint8_t>& actual,
                       int64_t row_bytes, const char* what) {
  Mismatches mismatches(what);
  ASSERT_EQ(static_cast<std::size_t>(expected.numel()), actual.size()) << what;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    if (expected.bytes[i] != actual[i]) {
      const auto index = static_cast<int64_t>(i);
      mismatches.add("byte " + at(index / row_bytes, index % row_bytes),
                     std::to_string(expected.bytes[i]), std::to_string(actual[i]));
    }
  }
}

template <class T>
void check_case(const std::string& case_dir, const FixtureCase& fixture) {
  const NpyArray weights = load(case_dir + "weights.npy", npy_descr<T>(), fixture.shape);
  std::vector<T> values(static_cast<std::size_t>(weights.numel()));
  std::memcpy(values.data(), weights.bytes.data(), weights.bytes.size());

  const nibble::QuantConfig config{
      fixture.bits, fixture.group_size == -1 ? nibble::kPerChannel : fixture.group_size,
      fixture.symmetric, nibble::convention_from_name(fixture.convention)};
  const nibble::QuantTensor<T> quantized = nibble::quantize<T>(
      nibble::TensorView<const T>(values.data(), nibble::Shape(fixture.shape)), config);
  const nibble::QuantTensorView<T> view = quantized.view();
  const int64_t rows = view.rows();
  const int64_t k = view.k();
  const nibble::RowLayout& layout = view.layout();

  const NpyArray codes = load(case_dir + "codes.npy", "|u1", {rows, k});
  {
    Mismatches mismatches("codes");
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t col = 0; col < k; ++col) {
        const int expected = codes.bytes[static_cast<std::size_t>(row * k + col)];
        const int actual = view.code(row, col);
        if (expected != actual) {
          std::ostringstream input;
          input << std::setprecision(9) << " (input x = "
                << nibble::to_float(values[static_cast<std::size_t>(row * k + col)]) << ", group "
                << col / layout.group_size << ", nibble scale "
                << view.scale(row, col / layout.group_size) << ")";
          mismatches.add("code " + at(row, col), std::to_string(expected), std::to_string(actual),
                         input.str());
        }
      }
    }
  }

  const NpyArray scales = load(case_dir + "scales.npy", npy_descr<T>(), {rows, layout.n_groups});
  {
    Mismatches mismatches("scales (bit patterns)");
    for (int64_t i = 0; i < rows * layout.n_groups; ++i) {
      const T expected = element<T>(scales, i);
      const T actual = quantized.scales()[static_cast<std::size_t>(i)];
      if (bits_of(expected) != bits_of(actual)) {
        mismatches.add("scale " + at(i / layout.n_groups, i % layout.n_groups),
                       describe_scale(bits_of(expected), nibble::to_float(expected)),
                       describe_scale(bits_of(actual), nibble::to_float(actual)));
      }
    }
  }

  if (!fixture.symmetric) {
    const NpyArray zeros = load(case_dir + "zeros.npy", "|u1", {rows, layout.n_groups});
    Mismatches mismatches("zero points");
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t group = 0; group < layout.n_groups; ++group) {
        const int expected = zeros.bytes[static_cast<std::size_t>(row * layout.n_groups + group)];
        const int actual = view.zero_point(row, group);
        if (expected != actual) {
          mismatches.add("zero point " + at(row, group), std::to_string(expected),
                         std::to_string(actual));
        }
      }
    }
  }

  // Olive's packed layout is nibble's canonical one, so the bytes themselves must be equal.
  if (fixture.convention == "olive") {
    expect_same_bytes(load(case_dir + "qweight.npy", "|u1", {rows, layout.packed_row_bytes}),
                      quantized.qweight(), layout.packed_row_bytes, "qweight bytes");
    if (!fixture.symmetric) {
      expect_same_bytes(load(case_dir + "qzeros.npy", "|u1", {rows, layout.zero_row_bytes}),
                        quantized.zeros(), layout.zero_row_bytes, "qzeros bytes");
    }
  }
}

void check_case(const std::string& fixture_dir, const FixtureCase& fixture) {
  const std::string case_dir = fixture_dir + "/" + fixture.name + "/";
  if (fixture.dtype == "float32") {
    check_case<float>(case_dir, fixture);
  } else if (fixture.dtype == "float16") {
    check_case<fp16>(case_dir, fixture);
  } else if (fixture.dtype == "bfloat16") {
    check_case<bf16>(case_dir, fixture);
  } else {
    FAIL() << "unknown dtype " << fixture.dtype;
  }
}

class Convention : public ::testing::TestWithParam<std::string> {};

TEST_P(Convention, MatchesNumpyReference) {
  const char* fixture_dir = std::getenv("NIBBLE_FIXTURE_DIR");
  ASSERT_NE(fixture_dir, nullptr)
      << "NIBBLE_FIXTURE_DIR is not set: run through ctest (the reference_fixtures test writes "
         "it), or run tests/reference/make_fixtures.py --out DIR and set NIBBLE_FIXTURE_DIR=DIR";
  std::vector<FixtureCase> cases;
  ASSERT_NO_THROW(cases = read_cases(fixture_dir));

  int checked = 0;
  for (const FixtureCase& fixture : cases) {
    if (fixture.convention != GetParam()) continue;
    SCOPED_TRACE("case " + fixture.name);
    try {
      check_case(fixture_dir, fixture);
    } catch (const std::exception& error) {
      ADD_FAILURE() << "threw: " << error.what();
    }
    ++checked;
  }
  EXPECT_GT(checked, 0) << "no fixture cases for convention " << GetParam() << " in " << fixture_dir
                        << "/cases.txt";
}

INSTANTIATE_TEST_SUITE_P(Tool, Convention,
                         ::testing::Values("olive", "ort", "ort_gather", "ort_weight_only"),
                         [](const ::testing::TestParamInfo<std::string>& param_info) {
                           return param_info.param;  // the test name shows the convention
                         });

}  // namespace
