// GGUF files (llama.cpp / ggml, format version 3): GgufWriter streams one out, GgufFile reads one
// strictly and lazily. The blocks inside the tensors are formats/gguf.hpp's.
//
//   GgufWriter writer;
//   writer.add_metadata("general.architecture", "llama");
//   writer.add_metadata("general.alignment", uint32_t{32});          // optional; default 32
//   writer.declare("blk.0.attn_q.weight", GgmlType::q4_K, {4096, 4096});  // row-major [N, K]
//   writer.begin("model.gguf");                 // or begin(std::ostream&): the whole header
//   writer.write_f32("blk.0.attn_q.weight", w, n * k);  // quantized here; or write(name, bytes)
//   writer.finish();                            // every declared tensor written?
//
//   GgufFile file = GgufFile::open("model.gguf");
//   file.get<uint32_t>("general.alignment");  file.tensors();  file.read_f32("output.weight");
//   const GgufStringArray& tokens = file.get_array<std::string>("tokenizer.ggml.tokens");
//   std::string_view token = tokens[17];         // or: for (std::string_view token : tokens)
//
// File layout (ggml docs/gguf.md; every integer little-endian; no alignment unless stated):
//   "GGUF" (47 47 55 46)  u32 version = 3  u64 tensor_count  u64 metadata_kv_count
//   metadata_kv_count x { string key, u32 value_type, value }
//       string = u64 byte length + bytes (no NUL); value_type: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32,
//       5 i32, 6 f32, 7 bool (1 byte, 0 or 1), 8 string, 9 array, 10 u64, 11 i64, 12 f64;
//       array = u32 element type + u64 element count + the elements back to back
//   tensor_count x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml type id, u64 offset }
//       ne[0] is the fastest dimension (K, the row length): ne is the row-major shape reversed
//   zero padding to a multiple of ALIGNMENT (the u32 key "general.alignment", default 32)
//   the data section: tensor i at data start + offset_i, row_size(type, ne[0]) * rows bytes
//       (whole blocks per row, no padding inside a tensor), offsets multiples of ALIGNMENT
//
// The writer lays tensors out as ggml's gguf_write_to_file does: in declaration order from offset
// 0, each followed by zero padding to ALIGNMENT (the last one too), the header padded to
// ALIGNMENT even with no tensors. Tensor types: F32 (ggml id 0), F16 (1), BF16 (30) and the block
// types of gguf.hpp (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K); others are Error(unsupported), in the writer
// and the reader alike. Version 2 files (identical layout, little-endian) are read too.
//
// GgufFile::open rejects, with a message naming the field, its offset and what was expected: a
// bad magic; versions other than 2 and 3 (1 has 32-bit counts; a version whose low 16 bits are 0
// is a byte-swapped, i.e. big-endian, file); counts that cannot fit in the bytes left; any read
// past the end of the file (string lengths, array counts, dims); empty or over-long keys
// (> 65535 bytes) and duplicate keys; unknown value types and nested arrays (ggml rejects them
// too); bools other than 0 / 1; "general.alignment" not a u32 power of two; tensor names longer
// than 64 bytes, and duplicate names; n_dims outside 1..4; dims of 0 or above INT64_MAX; element
// and byte counts overflowing int64; unknown or unsupported type ids; ne[0] not a multiple of the
// type's block size; tensor offsets not multiples of ALIGNMENT, data past the end of the file,
// and overlapping tensors. Metadata strings are kept as bytes (not checked for UTF-8).
//
// Metadata in memory: string arrays are a GgufStringArray (the strings' bytes in one buffer plus
// one u64 end offset each: 8 + length bytes a string, as in the file, where a
// std::vector<std::string> of a tokenizer vocabulary takes about 4 times that). get_array<T> and
// GgufValue::as_array<T> return a const std::vector<T>& for every element type but strings, and a
// const GgufStringArray& for T = std::string, whose elements are std::string_view
// (to_vector() copies them out); GgufValue::as_string() is a std::string_view too, get<std::string>
// and as<std::string>() a copy. Values are still built from std::vector<std::string> for the
// writer (converted on construction). The header is read through a 1 MiB buffer: fixed-size array
// elements are decoded (little-endian, whatever the host) a buffer at a time, strings copied out
// of it, and the names of fields and array elements that messages give are only put together
// when an error is reported; so parsing runs at memory speed rather than one stream call per
// element.
// Tensor data is read on demand (seek + read of one tensor). A GgufFile owns one input stream:
// reads are not thread-safe.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <istream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/formats/gguf.hpp"

namespace nibble::io {

using gguf::GgmlType;

inline constexpr uint32_t kGgufVersion = 3;
inline constexpr uint32_t kGgufDefaultAlignment = 32;       // when "general.alignment" is absent
inline constexpr std::size_t kGgufMaxKeyBytes = 65535;      // the spec: keys at most 2^16 - 1 bytes
inline constexpr std::size_t kGgufMaxTensorNameBytes = 64;  // the spec's limit (the reader's)
// ggml keeps names in char[GGML_MAX_NAME = 64] with a NUL and refuses longer ones, so the writer
// allows 63 bytes: every file it writes loads in llama.cpp.
inline constexpr std::size_t kGgmlMaxTensorNameBytes = 63;
inline constexpr uint32_t kGgufMaxDims = 4;  // GGML_MAX_DIMS

// The unquantized ggml type ids a GGUF file also holds (gguf::GgmlType names only the block types
// nibble quantizes; an enum with a fixed underlying type holds any uint32_t value).
inline constexpr GgmlType kGgmlF32 = static_cast<GgmlType>(0);
inline constexpr GgmlType kGgmlF16 = static_cast<GgmlType>(1);
inline constexpr GgmlType kGgmlBF16 = static_cast<GgmlType>(30);

// ---- tensor types -------------------------------------------------------------------------------

struct GgmlTypeLayout {
  const char* name;    // ggml_type_name: "f32", "bf16", "q4_K", ...
  int64_t block_size;  // weights per block (1 for F32 / F16 / BF16)
  int64_t type_size;   // bytes per block
};

namespace gguf_detail {

// ggml's name of every type id of docs/gguf.md, for messages about types nibble does not read.
inline const char* ggml_type_id_name(uint32_t id) {
  static const char* const kNames[] = {
      "f32",     "f16",    "q4_0",    "q4_1",  nullptr,  nullptr, "q5_0",  "q5_1",
      "q8_0",    "q8_1",   "q2_K",    "q3_K",  "q4_K",   "q5_K",  "q6_K",  "q8_K",
      "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs",
      "i8",      "i16",    "i32",     "i64",   "f64",    "iq1_m", "bf16",  nullptr,
      nullptr,   nullptr,  "tq1_0",   "tq2_0", nullptr,  nullptr, nullptr, "mxfp4"};
  return id < sizeof(kNames) / sizeof(kNames[0]) ? kNames[id] : nullptr;
}

inline constexpr const char* kSupportedTypes =
    "0 = f32, 1 = f16, 30 = bf16, 2 = q4_0, 3 = q4_1, 8 = q8_0, 10 = q2_K, 12 = q4_K or 14 = q6_K";

// The layout of type id `id`, or null when nibble does not read or write it.
inline const GgmlTypeLayout* find_layout(uint32_t id) {
  static const GgmlTypeLayout kF32{"f32", 1, 4}, kF16{"f16", 1, 2}, kBF16{"bf16", 1, 2};
  if (id == static_cast<uint32_t>(kGgmlF32)) return &kF32;
  if (id == static_cast<uint32_t>(kGgmlF16)) return &kF16;
  if (id == static_cast<uint32_t>(kGgmlBF16)) return &kBF16;
  static const auto kBlockLayouts = [] {
    std::vector<std::pair<uint32_t, GgmlTypeLayout>> layouts;
    for (const gguf::TypeInfo& info : gguf::kTypes)
      layouts.push_back({static_cast<uint32_t>(info.type),
                         GgmlTypeLayout{info.name, info.block_size, info.type_size}});
    return layouts;
  }();
  for (const auto& [block_id, layout] : kBlockLayouts) {
    if (block_id == id) return &layout;
  }
  return nullptr;
}

}  // namespace gguf_detail

// The layout of `type`; Error(unsupported) for types nibble does not read or write, naming it.
inline const GgmlTypeLayout& ggml_type_layout(GgmlType type) {
  const auto id = static_cast<uint32_t>(type);
  const GgmlTypeLayout* layout = gguf_detail::find_layout(id);
  if (layout == nullptr) {
    const char* name = gguf_detail::ggml_type_id_name(id);
    nibble::detail::fail(ErrorCode::unsupported, "GGUF: ggml type id ", id,
                         name != nullptr ? std::string(" (") + name + ")" : std::string(),
                         " is not supported by nibble (expected ", gguf_detail::kSupportedTypes,
                         ")");
  }
  return *layout;
}
inline const char* ggml_type_name(GgmlType type) {
  return ggml_type_layout(type).name;
}

// Bytes of one row of k elements: ggml_row_size, for F32 / F16 / BF16 too. k must be a positive
// multiple of the block size (Error(shape_mismatch) otherwise).
inline int64_t ggml_row_bytes(GgmlType type, int64_t k) {
  const GgmlTypeLayout& layout = ggml_type_layout(type);
  if (k <= 0 || k % layout.block_size != 0) {
    nibble::detail::fail(ErrorCode::shape_mismatch, "GGUF: row length K = ", k,
                         " is not a positive multiple of the ", layout.name, " block size ",
                         layout.block_size, " (ggml rows hold whole blocks)");
  }
  return nibble::detail::checked_mul(k / layout.block_size, layout.type_size, "GGUF row bytes");
}

// ---- metadata values ----------------------------------------------------------------------------

// The value types of a metadata entry (gguf_metadata_value_type).
enum class GgufValueType : uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};

inline const char* gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::u8:
      return "u8";
    case GgufValueType::i8:
      return "i8";
    case GgufValueType::u16:
      return "u16";
    case GgufValueType::i16:
      return "i16";
    case GgufValueType::u32:
      return "u32";
    case GgufValueType::i32:
      return "i32";
    case GgufValueType::f32:
      return "f32";
    case GgufValueType::boolean:
      return "bool";
    case GgufValueType::string:
      return "string";
    case GgufValueType::array:
      return "array";
    case GgufValueType::u64:
      return "u64";
    case GgufValueType::i64:
      return "i64";
    case GgufValueType::f64:
      return "f64";
  }
  return "unknown";
}

namespace gguf_detail {
class HeaderCursor;
}

// A metadata string array (e.g. tokenizer.ggml.tokens: 32000 to 256000 short tokens) laid out as
// the file lays it out: every string's bytes back to back in one buffer, plus one u64 end offset
// per string, so 8 + length bytes a string (std::vector<std::string> takes 24 or 32 a string plus
// a heap block for each longer than its inline buffer). Elements are std::string_view into the
// array, valid until it is changed (push_back), moved from or destroyed. Strings are raw bytes:
// embedded NULs are kept, UTF-8 is not checked.
//   GgufStringArray tokens{"<unk>", "<s>"};  tokens.push_back("</s>");  tokens[1] == "<s>";
class GgufStringArray {
 public:
  // Random access over the elements, which it yields by value (std::string_view), like
  // std::vector<bool>'s iterator yields bools.
  class const_iterator {
   public:
    using iterator_category = std::random_access_iterator_tag;
    using value_type = std::string_view;
    using difference_type = std::ptrdiff_t;
    using pointer = void;
    using reference = std::string_view;

    const_iterator() = default;
    std::string_view operator*() const { return (*array_)[index_]; }
    std::string_view operator[](difference_type offset) const {
      return (*array_)[static_cast<std::size_t>(static_cast<difference_type>(index_) + offset)];
    }
    const_iterator& operator++() {
      ++index_;
      return *this;
    }
    const_iterator operator++(int) {
      const_iterator before = *this;
      ++index_;
      return before;
    }
    const_iterator& operator--() {
      --index_;
      return *this;
    }
    const_iterator operator--(int) {
      const_iterator before = *this;
      --index_;
      return before;
    }
    const_iterator& operator+=(difference_type offset) {
      index_ = static_cast<std::size_t>(static_cast<difference_type>(index_) + offset);
      return *this;
    }
    const_iterator& operator-=(difference_type offset) { return *this += -offset; }
    friend const_iterator operator+(const_iterator at, difference_type offset) {
      return at += offset;
    }
    friend const_iterator operator+(difference_type offset, const_iterator at) {
      return at += offset;
    }
    friend const_iterator operator-(const_iterator at, difference_type offset) {
      return at -= offset;
    }
    friend difference_type operator-(const const_iterator& a, const const_iterator& b) {
      return static_cast<difference_type>(a.index_) - static_cast<difference_type>(b.index_);
    }
    friend bool operator==(const const_iterator& a, const const_iterator& b) {
      return a.index_ == b.index_ && a.array_ == b.array_;
    }
    friend bool operator!=(const const_iterator& a, const const_iterator& b) { return !(a == b); }
    friend bool operator<(const const_iterator& a, const const_iterator& b) {
      return a.index_ < b.index_;
    }
    friend bool operator>(const const_iterator& a, const const_iterator& b) { return b < a; }
    friend bool operator<=(const const_iterator& a, const const_iterator& b) { return !(b < a); }
    friend bool operator>=(const const_iterator& a, const const_iterator& b) { return !(a < b); }

   private:
    friend class GgufStringArray;
    const_iterator(const GgufStringArray* array, std::size_t index)
        : array_(array), index_(index) {}
    const GgufStringArray* array_ = nullptr;
    std::size_t index_ = 0;
  };
  using iterator = const_iterator;
  using value_type = std::string_view;
  using reference = std::string_view;
  using const_reference = std::string_view;
  using size_type = std::size_t;
  using difference_type = std::ptrdiff_t;

  GgufStringArray() = default;
  GgufStringArray(std::initializer_list<std::string_view> strings) {
    for (const std::string_view text : strings)
      push_back(text);
  }
  explicit GgufStringArray(const std::vector<std::string>& strings) {
    std::size_t byte_count = 0;
    for (const std::string& text : strings)
      byte_count += text.size();
    bytes_.reserve(byte_count);
    ends_.reserve(strings.size());
    for (const std::string& text : strings)
      push_back(text);
  }

  std::size_t size() const { return ends_.size(); }
  bool empty() const { return ends_.empty(); }
  // String `index`, which must be < size() (unchecked, as std::vector's operator[]).
  std::string_view operator[](std::size_t index) const {
    const uint64_t begin = index == 0 ? 0 : ends_[index - 1];
    return std::string_view(bytes_.data() + begin, static_cast<std::size_t>(ends_[index] - begin));
  }
  // String `index`; Error(invalid_argument) when index >= size().
  std::string_view at(std::size_t index) const {
    if (index >= size()) {
      nibble::detail::fail(ErrorCode::invalid_argument, "GgufStringArray::at(", index,
                           "): the array holds ", size(), " strings");
    }
    return (*this)[index];
  }
  const_iterator begin() const { return const_iterator(this, 0); }
  const_iterator end() const { return const_iterator(this, size()); }
  // A copy as separate strings.
  std::vector<std::string> to_vector() const { return std::vector<std::string>(begin(), end()); }

  // Appends a copy of `text` (string_views of the elements may then dangle).
  void push_back(std::string_view text) {
    bytes_.insert(bytes_.end(), text.begin(), text.end());
    ends_.push_back(bytes_.size());
  }

  // The strings' lengths added up.
  uint64_t string_bytes() const { return bytes_.size(); }
  // The heap bytes the array holds (its two buffers' capacities); read from a file, exactly
  // string_bytes() + 8 * size(): the bytes the strings take in the file.
  std::size_t heap_bytes() const {
    return bytes_.capacity() * sizeof(char) + ends_.capacity() * sizeof(uint64_t);
  }

  friend bool operator==(const GgufStringArray& a, const GgufStringArray& b) {
    return a.ends_ == b.ends_ && a.bytes_ == b.bytes_;
  }
  friend bool operator!=(const GgufStringArray& a, const GgufStringArray& b) { return !(a == b); }

 private:
  friend class gguf_detail::HeaderCursor;  // the reader fills the buffers directly

  std::vector<char> bytes_;  // every string's bytes, back to back
  // ends_[i]: where string i ends in bytes_ (it starts at ends_[i - 1], or 0).
  std::vector<uint64_t> ends_;
};

namespace gguf_detail {

// C++ type <-> value type. `bytes` is the encoded size (strings: the minimum, the u64 length).
template <class T>
struct ValueTraits {
  static constexpr bool supported = false;
};
#define NIBBLE_GGUF_VALUE_TRAITS(T, TYPE, BYTES)               \
  template <>                                                  \
  struct ValueTraits<T> {                                      \
    static constexpr bool supported = true;                    \
    static constexpr GgufValueType type = GgufValueType::TYPE; \
    static constexpr uint64_t bytes = BYTES;                   \
  };
NIBBLE_GGUF_VALUE_TRAITS(uint8_t, u8, 1)
NIBBLE_GGUF_VALUE_TRAITS(int8_t, i8, 1)
NIBBLE_GGUF_VALUE_TRAITS(uint16_t, u16, 2)
NIBBLE_GGUF_VALUE_TRAITS(int16_t, i16, 2)
NIBBLE_GGUF_VALUE_TRAITS(uint32_t, u32, 4)
NIBBLE_GGUF_VALUE_TRAITS(int32_t, i32, 4)
NIBBLE_GGUF_VALUE_TRAITS(float, f32, 4)
NIBBLE_GGUF_VALUE_TRAITS(bool, boolean, 1)
NIBBLE_GGUF_VALUE_TRAITS(std::string, string, 8)
NIBBLE_GGUF_VALUE_TRAITS(uint64_t, u64, 8)
NIBBLE_GGUF_VALUE_TRAITS(int64_t, i64, 8)
NIBBLE_GGUF_VALUE_TRAITS(double, f64, 8)
#undef NIBBLE_GGUF_VALUE_TRAITS

// The elements of an array of T: a std::vector, but strings in one GgufStringArray.
template <class T>
using ArrayStorage =
    std::conditional_t<std::is_same_v<T, std::string>, GgufStringArray, std::vector<T>>;

// One array per element type (a scalar is an array of one); the alternative's index is the
// variant index below.
using ValueStorage = std::variant<std::vector<uint8_t>, std::vector<int8_t>, std::vector<uint16_t>,
                                  std::vector<int16_t>, std::vector<uint32_t>, std::vector<int32_t>,
                                  std::vector<float>, std::vector<bool>, GgufStringArray,
                                  std::vector<uint64_t>, std::vector<int64_t>, std::vector<double>>;

template <class T>
ArrayStorage<T> to_storage(std::vector<T>&& elements) {
  if constexpr (std::is_same_v<T, std::string>) {
    return GgufStringArray(elements);
  } else {
    return std::move(elements);
  }
}

inline constexpr GgufValueType kStorageTypes[] = {
    GgufValueType::u8,     GgufValueType::i8,  GgufValueType::u16, GgufValueType::i16,
    GgufValueType::u32,    GgufValueType::i32, GgufValueType::f32, GgufValueType::boolean,
    GgufValueType::string, GgufValueType::u64, GgufValueType::i64, GgufValueType::f64};

// The encoded size of one element of `type` (strings: the minimum, their length field); 0 for
// array and unknown types.
inline uint64_t element_min_bytes(uint32_t type) {
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::u8:
    case GgufValueType::i8:
    case GgufValueType::boolean:
      return 1;
    case GgufValueType::u16:
    case GgufValueType::i16:
      return 2;
    case GgufValueType::u32:
    case GgufValueType::i32:
    case GgufValueType::f32:
      return 4;
    case GgufValueType::string:
    case GgufValueType::u64:
    case GgufValueType::i64:
    case GgufValueType::f64:
      return 8;
    case GgufValueType::array:
      return 0;
  }
  return 0;
}

}  // namespace gguf_detail

// A metadata value: a scalar or a (non-nested) array of one element type. Scalars convert
// implicitly from exactly typed C++ values (uint32_t{32} is a u32, 32 an i32, 32.0f an f32, "x"
// a string) and arrays from std::vector of them, string arrays also from a GgufStringArray (a
// std::vector<std::string> is converted into one):
//   writer.add_metadata("tokenizer.ggml.tokens", std::vector<std::string>{"<s>", "</s>"});
class GgufValue {
 public:
  template <class T, std::enable_if_t<gguf_detail::ValueTraits<T>::supported, int> = 0>
  GgufValue(T scalar)
      : is_array_(false), storage_(gguf_detail::ArrayStorage<T>{std::move(scalar)}) {}
  GgufValue(const char* text) : GgufValue(std::string_view(text)) {}
  GgufValue(std::string_view text) : is_array_(false), storage_(GgufStringArray{text}) {}
  template <class T, std::enable_if_t<gguf_detail::ValueTraits<T>::supported, int> = 0>
  GgufValue(std::vector<T> elements)
      : is_array_(true), storage_(gguf_detail::to_storage(std::move(elements))) {}
  GgufValue(GgufStringArray strings) : is_array_(true), storage_(std::move(strings)) {}

  bool is_array() const { return is_array_; }
  // array for arrays, else the scalar's type.
  GgufValueType type() const { return is_array_ ? GgufValueType::array : element_type(); }
  // The scalar's type, or the array's element type.
  GgufValueType element_type() const { return gguf_detail::kStorageTypes[storage_.index()]; }
  // Elements of an array; 1 for a scalar.
  std::size_t size() const {
    return std::visit([](const auto& elements) { return elements.size(); }, storage_);
  }

  // The scalar, which must be exactly of type T (Error(type_mismatch) otherwise: no conversions).
  // T = std::string gives a copy.
  template <class T>
  T as() const {
    check<T>(false);
    if constexpr (std::is_same_v<T, std::string>) {
      return std::string(std::get<GgufStringArray>(storage_)[0]);
    } else {
      return std::get<std::vector<T>>(storage_).front();
    }
  }
  // The string scalar, viewed (valid while this value lives).
  std::string_view as_string() const {
    check<std::string>(false);
    return std::get<GgufStringArray>(storage_)[0];
  }
  // The array, whose elements must be exactly of type T: a std::vector<T>, or for
  // T = std::string a GgufStringArray.
  template <class T>
  const gguf_detail::ArrayStorage<T>& as_array() const {
    check<T>(true);
    return std::get<gguf_detail::ArrayStorage<T>>(storage_);
  }
  // Any integer scalar (u8 .. i64, bool) as int64; Error(type_mismatch) for others and
  // Error(overflow) for a u64 above INT64_MAX. For keys whose writers disagree on the width.
  int64_t as_int64() const;

  // "u32 32", "string \"llama\"", "array[string] of 32000: [\"<unk>\", \"<s>\", ...]": for
  // printing, strings escaped, at most `max_elements` array elements shown.
  std::string to_string(std::size_t max_elements = 8) const;

  friend bool operator==(const GgufValue& a, const GgufValue& b) {
    return a.is_array_ == b.is_array_ && a.storage_ == b.storage_;
  }
  friend bool operator!=(const GgufValue& a, const GgufValue& b) { return !(a == b); }

  // The encoded value (without its type id): what follows the type in a metadata entry.
  void append_encoded(std::string& out) const;

 private:
  friend class GgufFile;
  GgufValue(bool is_array, gguf_detail::ValueStorage storage)
      : is_array_(is_array), storage_(std::move(storage)) {}

  template <class T>
  void check(bool want_array) const {
    static_assert(gguf_detail::ValueTraits<T>::supported,
                  "GgufValue: T must be uint8_t .. int64_t, float, double, bool or std::string");
    const GgufValueType wanted = gguf_detail::ValueTraits<T>::type;
    if (is_array_ != want_array || element_type() != wanted) {
      nibble::detail::fail(ErrorCode::type_mismatch, "GGUF metadata value is ", type_text(),
                           ", not ", want_array ? "array[" : "", gguf_value_type_name(wanted),
                           want_array ? "]" : "");
    }
  }
  std::string type_text() const {
    const std::string element = gguf_value_type_name(element_type());
    return is_array_ ? "array[" + element + "]" : element;
  }

  bool is_array_;
  gguf_detail::ValueStorage storage_;
};

struct GgufMetadataEntry {
  std::string key;
  GgufValue value;
};

// One tensor's info. `shape` is row-major (numpy order: [..., rows, K]); the file stores it
// reversed as ggml's ne (ne[0] = K).
struct GgufTensorInfo {
  std::string name;
  GgmlType type = kGgmlF32;
  std::vector<int64_t> shape;  // 1 to 4 extents, each >= 1; shape.back() % block size == 0
  uint64_t offset = 0;         // from the start of the data section; a multiple of ALIGNMENT
  int64_t size_bytes = 0;      // row_bytes() * rows(): the tensor's bytes, without padding

  int64_t row_length() const { return shape.back(); }  // K = ne[0]
  int64_t rows() const {                               // product of every extent but K
    int64_t count = 1;
    for (std::size_t axis = 0; axis + 1 < shape.size(); ++axis)
      count = nibble::detail::checked_mul(count, shape[axis], "GGUF tensor row count");
    return count;
  }
  int64_t numel() const {
    return nibble::detail::checked_mul(rows(), row_length(), "GGUF tensor element count");
  }
  int64_t row_bytes() const { return ggml_row_bytes(type, row_length()); }
  std::vector<int64_t> ggml_ne() const { return {shape.rbegin(), shape.rend()}; }
};

// ---- writer -------------------------------------------------------------------------------------
//
// Declare every metadata entry and tensor first (that fixes the header), then begin() writes the
// header and write() / write_f32() each tensor's data in declaration order, so a caller holds
// one tensor at a time (peak memory O(header + largest tensor)). Every check happens before
// anything is written for that call: a rejected write() leaves the output as it was. An I/O
// error is Error(io); the output is then incomplete and the writer refuses further writes.
class GgufWriter {
 public:
  GgufWriter() = default;
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Appends a metadata entry (written in call order). Keys: 1 to 65535 bytes of printable ASCII,
  // each once. "general.alignment", if given, must be a u32 power of two >= 8 (the spec: a
  // multiple of 8; ggml: a power of two); tensor offsets then use it.
  void add_metadata(std::string key, GgufValue value);

  // Appends a tensor: `shape` row-major [..., rows, K], 1 to 4 extents >= 1, K a multiple of
  // the type's block size (32 for Q4_0 / Q4_1 / Q8_0, 256 for Q4_K / Q6_K, 1 for F32 / F16 /
  // BF16); name 1 to 63 bytes (ggml's limit), unique.
  void declare(std::string name, GgmlType type, std::vector<int64_t> shape);

  const std::vector<GgufMetadataEntry>& metadata() const { return metadata_; }
  // Declared tensors, with the offsets they get in the file.
  std::vector<GgufTensorInfo> tensors() const;
  uint32_t alignment() const;
  // The header as begin() writes it: everything before the data section, padding included.
  std::string header_bytes() const;
  // The size of the finished file.
  uint64_t file_bytes() const;

  // Writes the header to `out` (kept by reference until finish()), or to a file created (or
  // truncated) at `path`, which finish() closes.
  void begin(std::ostream& out);
  void begin(const std::string& path);

  // The next declared tensor's data: `name` must be that tensor, `byte_count` exactly its
  // size_bytes (row_bytes * rows), the bytes ggml's layout (little-endian blocks, rows
  // back to back). Padding to the alignment follows.
  void write(std::string_view name, const void* bytes, std::size_t byte_count);
  // The same from `count` = numel floats, row-major: stored as F32, rounded to nearest even for
  // F16 / BF16, quantized with gguf::quantize_row (llama.cpp's reference quantizers) for the
  // block types; Error(non_finite) from the quantizers leaves the output untouched.
  void write_f32(std::string_view name, const float* values, std::size_t count);

  // Checks that every declared tensor was written, flushes (and closes a file from
  // begin(path)); Error(io) when that fails.
  void finish();

 private:
  void check_not_begun(const char* function) const;
  const GgufTensorInfo& check_next(const char* function, std::string_view name);
  // The header up to (not including) the padding before the data section.
  std::string header_without_padding() const;
  void put(const char* bytes, std::size_t byte_count, const std::string& what);
  // `count` zero bytes, written a fixed-size buffer at a time: the padding to an alignment of
  // up to 2^31 bytes (legal, as in ggml) never becomes one allocation.
  void put_zeros(uint64_t count, const std::string& what);

  std::vector<GgufMetadataEntry> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::ofstream file_;
  std::string path_;
  std::ostream* out_ = nullptr;
  std::size_t next_ = 0;
  bool failed_ = false;
  bool finished_ = false;
};

// ---- reader -------------------------------------------------------------------------------------

class GgufFile {
 public:
  // Opens and validates `path` (see the header comment), reading the header only. Throws
  // ErrorCode::io when the file cannot be opened or read, ErrorCode::malformed when its contents
  // violate the format, ErrorCode::unsupported for versions other than 2 / 3, nested arrays and
  // tensor types nibble does not read, ErrorCode::overflow for sizes beyond int64.
  static GgufFile open(const std::string& path);
  // The same from a seekable stream (e.g. an std::istringstream of a file's bytes); `source`
  // names it in messages.
  static GgufFile open(std::unique_ptr<std::istream> stream, std::string source);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  int64_t file_size() const { return file_size_; }
  // Absolute file offset of the data section (the end of the header, aligned).
  int64_t data_offset() const { return data_offset_; }

  // Metadata in file order.
  const std::vector<GgufMetadataEntry>& metadata() const { return metadata_; }
  // The value of `key`, or null.
  const GgufValue* find(std::string_view key) const;
  // The value of `key`: Error(invalid_argument) if absent, Error(type_mismatch) (naming the key)
  // unless it is a scalar of exactly type T, or an array of T for get_array. get_array gives a
  // const std::vector<T>&, or for T = std::string a const GgufStringArray& (std::string_view
  // elements; see the header comment).
  template <class T>
  T get(std::string_view key) const;
  template <class T>
  const gguf_detail::ArrayStorage<T>& get_array(std::string_view key) const;

  // Tensor infos in file (header) order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;

  // Copies tensor `info` (a GgufTensorInfo of this file) into `out`, which holds `out_size` >=
  // info.size_bytes bytes. Error(invalid_argument) for an info not from this file,
  // buffer_too_small, null_pointer, or io when the file is now shorter.
  void read_raw(const GgufTensorInfo& info, void* out, std::size_t out_size);
  // The tensor's bytes (size_bytes of them).
  std::vector<uint8_t> read_bytes(std::string_view name);
  // The tensor as numel floats, row-major: F32 copied, F16 / BF16 widened exactly, block types
  // dequantized by gguf::dequantize_row. Error(invalid_argument) for an unknown name.
  std::vector<float> read_f32(std::string_view name);

 private:
  GgufFile() = default;
  void parse();
  const GgufTensorInfo& tensor_or_fail(const char* function, std::string_view name) const;
  const GgufValue& value_or_fail(std::string_view key) const;
  void read_at(int64_t file_offset, char* out, int64_t byte_count, const std::string& what);

  std::string path_;
  std::unique_ptr<std::istream> stream_;
  int64_t file_size_ = 0;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  int64_t data_offset_ = 0;
  std::vector<GgufMetadataEntry> metadata_;
  std::map<std::string, std::size_t, std::less<>> key_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> tensor_index_;
};

// ---- implementation -----------------------------------------------------------------------------

namespace gguf_detail {

inline void put_le(std::string& out, uint64_t value, int byte_count) {
  for (int index = 0; index < byte_count; ++index)
    out.push_back(static_cast<char>(static_cast<unsigned char>(value >> (8 * index))));
}
inline void put_string(std::string& out, std::string_view text) {
  put_le(out, text.size(), 8);
  out += text;
}

template <class T>
void put_element(std::string& out, const T& value) {
  if constexpr (std::is_same_v<T, std::string_view>) {
    put_string(out, value);
  } else if constexpr (std::is_same_v<T, bool>) {
    out.push_back(value ? '\1' : '\0');
  } else if constexpr (std::is_same_v<T, float>) {
    put_le(out, nibble::detail::float_bits(value), 4);
  } else if constexpr (std::is_same_v<T, double>) {
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof bits);
    put_le(out, bits, 8);
  } else {
    // Two's complement for the signed types: the conversion to uint64_t is modular.
    put_le(out, static_cast<uint64_t>(value), static_cast<int>(sizeof(T)));
  }
}

inline uint64_t align_up(uint64_t offset, uint64_t alignment) {
  return offset + (alignment - offset % alignment) % alignment;
}

inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (std::size_t axis = 0; axis < shape.size(); ++axis)
    text += (axis ? ", " : "") + std::to_string(shape[axis]);
  return text + "]";
}

// A string for messages: printable ASCII as is, quotes and backslashes escaped, other bytes \xNN.
inline std::string quoted(std::string_view text, std::size_t max_bytes = 200) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (std::size_t index = 0; index < text.size() && index < max_bytes; ++index) {
    const auto byte = static_cast<unsigned char>(text[index]);
    if (byte == '"' || byte == '\\') {
      out += '\\';
      out += static_cast<char>(byte);
    } else if (byte >= 0x20 && byte < 0x7f) {
      out += static_cast<char>(byte);
    } else {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 15];
    }
  }
  if (text.size() > max_bytes) out += "...";
  return out + "\"";
}

inline bool is_power_of_two(uint64_t value) {
  return value != 0 && (value & (value - 1)) == 0;
}

}  // namespace gguf_detail

inline int64_t GgufValue::as_int64() const {
  if (!is_array_) {
    return std::visit(
        [this](const auto& elements) -> int64_t {
          using T = typename std::decay_t<decltype(elements)>::value_type;
          if constexpr (std::is_same_v<T, bool>) {
            return elements.front() ? 1 : 0;
          } else if constexpr (std::is_integral_v<T>) {
            if constexpr (std::is_same_v<T, uint64_t>) {
              if (elements.front() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                nibble::detail::fail(ErrorCode::overflow, "GGUF metadata value u64 ",
                                     elements.front(), " does not fit int64");
            }
            return static_cast<int64_t>(elements.front());
          } else {
            nibble::detail::fail(ErrorCode::type_mismatch, "GGUF metadata value is ", type_text(),
                                 ", not an integer");
          }
        },
        storage_);
  }
  nibble::detail::fail(ErrorCode::type_mismatch, "GGUF metadata value is ", type_text(),
                       ", not an integer");
}

inline std::string GgufValue::to_string(std::size_t max_elements) const {
  std::string text = type_text();
  if (is_array_) text += " of " + std::to_string(size()) + ": [";
  text += ' ';
  if (is_array_) text.pop_back();
  std::visit(
      [&](const auto& elements) {
        using T = typename std::decay_t<decltype(elements)>::value_type;
        for (std::size_t index = 0; index < elements.size() && index < max_elements; ++index) {
          if (index > 0) text += ", ";
          if constexpr (std::is_same_v<T, std::string_view>) {
            text += gguf_detail::quoted(elements[index]);
          } else if constexpr (std::is_same_v<T, bool>) {
            text += elements[index] ? "true" : "false";
          } else if constexpr (std::is_floating_point_v<T>) {
            std::ostringstream number;
            number.precision(std::is_same_v<T, float> ? 9 : 17);
            number << elements[index];
            text += number.str();
          } else {
            text += std::to_string(elements[index]);
          }
        }
        if (elements.size() > max_elements) text += ", ...";
      },
      storage_);
  if (is_array_) text += "]";
  return text;
}

inline void GgufValue::append_encoded(std::string& out) const {
  if (is_array_) {
    gguf_detail::put_le(out, static_cast<uint32_t>(element_type()), 4);
    gguf_detail::put_le(out, size(), 8);
  }
  std::visit(
      [&](const auto& elements) {
        using T = typename std::decay_t<decltype(elements)>::value_type;
        if constexpr (std::is_same_v<T, std::string_view>) {
          out.reserve(out.size() + 8 * elements.size() + elements.string_bytes());
        }
        for (const auto& element : elements)
          gguf_detail::put_element<T>(out, element);
      },
      storage_);
}

// ---- writer ----

inline void GgufWriter::check_not_begun(const char* function) const {
  if (out_ != nullptr || failed_) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GgufWriter::", function,
                         " after begin(): the header is already written");
  }
}

inline void GgufWriter::add_metadata(std::string key, GgufValue value) {
  check_not_begun("add_metadata");
  if (key.empty() || key.size() > kGgufMaxKeyBytes) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GGUF metadata key of ", key.size(),
                         " bytes (expected 1 to ", kGgufMaxKeyBytes, ")");
  }
  for (const char character : key) {
    if (character < 0x20 || character > 0x7e) {
      nibble::detail::fail(ErrorCode::invalid_argument, "GGUF metadata key ",
                           gguf_detail::quoted(key),
                           " is not printable ASCII (the spec requires ASCII keys)");
    }
  }
  for (const GgufMetadataEntry& entry : metadata_) {
    if (entry.key == key) {
      nibble::detail::fail(ErrorCode::invalid_argument, "GGUF metadata key ",
                           gguf_detail::quoted(key), " given twice");
    }
  }
  if (key == "general.alignment") {
    if (value.type() != GgufValueType::u32) {
      nibble::detail::fail(ErrorCode::type_mismatch, "GGUF general.alignment is ",
                           value.to_string(), " (expected a u32, e.g. uint32_t{32})");
    }
    const uint32_t alignment = value.as<uint32_t>();
    if (!gguf_detail::is_power_of_two(alignment) || alignment < 8) {
      nibble::detail::fail(ErrorCode::invalid_argument, "GGUF general.alignment = ", alignment,
                           " (expected a power of two >= 8: a multiple of 8 per the spec, a "
                           "power of two for ggml)");
    }
  }
  metadata_.push_back({std::move(key), std::move(value)});
}

inline void GgufWriter::declare(std::string name, GgmlType type, std::vector<int64_t> shape) {
  check_not_begun("declare");
  if (name.empty() || name.size() > kGgmlMaxTensorNameBytes) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GGUF tensor name ",
                         gguf_detail::quoted(name), " is ", name.size(), " bytes (expected 1 to ",
                         kGgmlMaxTensorNameBytes, ": ggml's GGML_MAX_NAME = 64 includes the NUL)");
  }
  for (const GgufTensorInfo& info : tensors_) {
    if (info.name == name) {
      nibble::detail::fail(ErrorCode::invalid_argument, "GGUF tensor ", gguf_detail::quoted(name),
                           " declared twice");
    }
  }
  const GgmlTypeLayout& layout = ggml_type_layout(type);  // Error(unsupported) first
  const std::string what = "GGUF tensor " + gguf_detail::quoted(name);
  if (shape.empty() || shape.size() > kGgufMaxDims) {
    nibble::detail::fail(ErrorCode::shape_mismatch, what, ": shape ",
                         gguf_detail::shape_text(shape), " has ", shape.size(),
                         " dimensions (expected 1 to ", kGgufMaxDims, ", GGML_MAX_DIMS)");
  }
  for (int64_t extent : shape) {
    if (extent < 1) {
      nibble::detail::fail(ErrorCode::shape_mismatch, what, ": shape ",
                           gguf_detail::shape_text(shape), " has an extent < 1");
    }
  }
  if (shape.back() % layout.block_size != 0) {
    nibble::detail::fail(ErrorCode::shape_mismatch, what, ": shape ",
                         gguf_detail::shape_text(shape), " has K = ", shape.back(),
                         " (the last extent), not a multiple of the ", layout.name, " block size ",
                         layout.block_size, " (ggml rows hold whole blocks)");
  }
  GgufTensorInfo info;
  info.name = std::move(name);
  info.type = type;
  info.shape = std::move(shape);
  info.size_bytes =
      nibble::detail::checked_mul(info.rows(), info.row_bytes(), (what + " byte size").c_str());
  // Padded sizes must add up in uint64 and stay addressable: checked_bytes limits to ptrdiff_t.
  nibble::detail::checked_bytes(info.size_bytes, 1, (what + " byte size").c_str());
  tensors_.push_back(std::move(info));
}

inline uint32_t GgufWriter::alignment() const {
  for (const GgufMetadataEntry& entry : metadata_) {
    if (entry.key == "general.alignment") return entry.value.as<uint32_t>();
  }
  return kGgufDefaultAlignment;
}

inline std::vector<GgufTensorInfo> GgufWriter::tensors() const {
  std::vector<GgufTensorInfo> infos = tensors_;
  const uint32_t align = alignment();
  int64_t offset = 0;
  for (GgufTensorInfo& info : infos) {
    info.offset = static_cast<uint64_t>(offset);
    const auto padded =
        static_cast<int64_t>(gguf_detail::align_up(static_cast<uint64_t>(info.size_bytes), align));
    offset = nibble::detail::checked_add(offset, padded, "GGUF data section size");
  }
  return infos;
}

inline std::string GgufWriter::header_without_padding() const {
  std::string out = "GGUF";
  gguf_detail::put_le(out, kGgufVersion, 4);
  gguf_detail::put_le(out, tensors_.size(), 8);
  gguf_detail::put_le(out, metadata_.size(), 8);
  for (const GgufMetadataEntry& entry : metadata_) {
    gguf_detail::put_string(out, entry.key);
    gguf_detail::put_le(out, static_cast<uint32_t>(entry.value.type()), 4);
    entry.value.append_encoded(out);
  }
  for (const GgufTensorInfo& info : tensors()) {
    gguf_detail::put_string(out, info.name);
    gguf_detail::put_le(out, info.shape.size(), 4);
    for (auto extent = info.shape.rbegin(); extent != info.shape.rend(); ++extent)
      gguf_detail::put_le(out, static_cast<uint64_t>(*extent), 8);  // ne[0] = K first
    gguf_detail::put_le(out, static_cast<uint32_t>(info.type), 4);
    gguf_detail::put_le(out, info.offset, 8);
  }
  return out;
}

inline std::string GgufWriter::header_bytes() const {
  std::string out = header_without_padding();
  out.append(gguf_detail::align_up(out.size(), alignment()) - out.size(), '\0');
  return out;
}

inline uint64_t GgufWriter::file_bytes() const {
  uint64_t total = gguf_detail::align_up(header_without_padding().size(), alignment());
  for (const GgufTensorInfo& info : tensors_)
    total += gguf_detail::align_up(static_cast<uint64_t>(info.size_bytes), alignment());
  return total;
}

inline void GgufWriter::put(const char* bytes, std::size_t byte_count, const std::string& what) {
  out_->write(bytes, static_cast<std::streamsize>(byte_count));
  if (!out_->good()) {
    failed_ = true;
    nibble::detail::fail(ErrorCode::io, "GGUF: writing ", what, " (", byte_count, " bytes",
                         path_.empty() ? std::string() : " to \"" + path_ + "\"",
                         ") failed (disk full?)");
  }
}

inline void GgufWriter::put_zeros(uint64_t count, const std::string& what) {
  static constexpr std::size_t kChunkBytes = 64 * 1024;
  static const std::vector<char> zeros(kChunkBytes, '\0');
  while (count > 0) {
    const auto chunk = static_cast<std::size_t>(std::min<uint64_t>(count, kChunkBytes));
    put(zeros.data(), chunk, what);
    count -= chunk;
  }
}

inline void GgufWriter::begin(std::ostream& out) {
  check_not_begun("begin");
  const std::string header = header_without_padding();
  out_ = &out;
  put(header.data(), header.size(), "the header");
  put_zeros(gguf_detail::align_up(header.size(), alignment()) - header.size(),
            "the padding after the header");
}

inline void GgufWriter::begin(const std::string& path) {
  check_not_begun("begin");
  std::error_code status_error;
  if (std::filesystem::is_directory(path, status_error)) {
    nibble::detail::fail(ErrorCode::io, "cannot write GGUF file \"", path, "\": is a directory");
  }
  errno = 0;
  file_.open(path, std::ios::binary | std::ios::trunc);
  if (!file_.is_open()) {
    const int open_errno = errno;
    nibble::detail::fail(ErrorCode::io, "cannot create GGUF file \"", path,
                         "\": ", open_errno != 0 ? std::strerror(open_errno) : "unknown error");
  }
  path_ = path;
  begin(static_cast<std::ostream&>(file_));
}

inline const GgufTensorInfo& GgufWriter::check_next(const char* function, std::string_view name) {
  if (failed_) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GgufWriter::", function,
                         ": an earlier write failed; the output is incomplete");
  }
  if (out_ == nullptr || finished_) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GgufWriter::", function, "(\"", name,
                         finished_ ? "\") after finish()" : "\") before begin()");
  }
  if (next_ >= tensors_.size()) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GgufWriter::", function, "(\"", name,
                         "\"): all ", tensors_.size(), " declared tensors are already written");
  }
  const GgufTensorInfo& info = tensors_[next_];
  if (name != info.name) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GgufWriter::", function, "(\"", name,
                         "\"): expected tensor \"", info.name,
                         "\" next (tensors are written in declaration order)");
  }
  return info;
}

inline void GgufWriter::write(std::string_view name, const void* bytes, std::size_t byte_count) {
  const GgufTensorInfo& info = check_next("write", name);
  if (byte_count != static_cast<uint64_t>(info.size_bytes)) {
    nibble::detail::fail(ErrorCode::shape_mismatch, "GgufWriter::write(\"", name,
                         "\"): ", byte_count, " bytes given, but ", ggml_type_name(info.type), " ",
                         gguf_detail::shape_text(info.shape), " is ", info.size_bytes, " bytes (",
                         info.rows(), " rows of ", info.row_bytes(), ")");
  }
  if (bytes == nullptr) {
    nibble::detail::fail(ErrorCode::null_pointer, "GgufWriter::write(\"", name,
                         "\"): bytes is null");
  }
  const std::string what = "tensor \"" + info.name + "\"";
  put(static_cast<const char*>(bytes), byte_count, what);
  const uint64_t padding =
      gguf_detail::align_up(static_cast<uint64_t>(byte_count), alignment()) - byte_count;
  put_zeros(padding, "the padding after " + what);
  ++next_;
}

inline void GgufWriter::write_f32(std::string_view name, const float* values, std::size_t count) {
  const GgufTensorInfo& info = check_next("write_f32", name);
  if (count != static_cast<uint64_t>(info.numel())) {
    nibble::detail::fail(ErrorCode::shape_mismatch, "GgufWriter::write_f32(\"", name,
                         "\"): ", count, " values given, but shape ",
                         gguf_detail::shape_text(info.shape), " holds ", info.numel());
  }
  if (values == nullptr) {
    nibble::detail::fail(ErrorCode::null_pointer, "GgufWriter::write_f32(\"", name,
                         "\"): values is null");
  }
  // The whole tensor is encoded before anything is written, so that a quantizer's Error leaves
  // the output as it was.
  std::vector<unsigned char> bytes(static_cast<std::size_t>(info.size_bytes));
  const auto rows = static_cast<std::size_t>(info.rows());
  const auto k = static_cast<std::size_t>(info.row_length());
  const auto row_bytes = static_cast<std::size_t>(info.row_bytes());
  for (std::size_t row = 0; row < rows; ++row) {
    const float* x = values + row * k;
    unsigned char* out = bytes.data() + row * row_bytes;
    if (info.type == kGgmlF32) {
      std::memcpy(out, x, k * sizeof(float));  // little-endian host, as gguf.hpp assumes
    } else if (info.type == kGgmlF16 || info.type == kGgmlBF16) {
      for (std::size_t index = 0; index < k; ++index) {
        const uint16_t bits = info.type == kGgmlF16 ? from_float<fp16>(x[index]).bits
                                                    : from_float<bf16>(x[index]).bits;
        out[2 * index] = static_cast<unsigned char>(bits & 0xff);
        out[2 * index + 1] = static_cast<unsigned char>(bits >> 8);
      }
    } else {
      gguf::quantize_row(info.type, x, info.row_length(), out);
    }
  }
  write(name, bytes.data(), bytes.size());
}

inline void GgufWriter::finish() {
  if (failed_) {
    nibble::detail::fail(ErrorCode::io,
                         "GgufWriter::finish: an earlier write failed; the output is incomplete");
  }
  if (out_ == nullptr || finished_ || next_ != tensors_.size()) {
    nibble::detail::fail(
        ErrorCode::invalid_argument, "GgufWriter::finish: ",
        out_ == nullptr ? std::string("begin() was not called")
        : finished_     ? std::string("called twice")
                        : std::to_string(next_) + " of " + std::to_string(tensors_.size()) +
                          " declared tensors written (next: \"" + tensors_[next_].name + "\")");
  }
  finished_ = true;
  out_->flush();
  if (!out_->good()) {
    failed_ = true;
    nibble::detail::fail(ErrorCode::io, "GGUF: flushing the output",
                         path_.empty() ? std::string() : " \"" + path_ + "\"", " failed");
  }
  if (file_.is_open()) {
    file_.close();
    if (file_.fail()) {
      failed_ = true;
      nibble::detail::fail(ErrorCode::io, "GGUF: closing \"", path_, "\" failed");
    }
  }
}

// ---- reader ----

namespace gguf_detail {

// A field's name for messages, put together only when one is reported (so that reading a
// million-element array formats no names): base, then an index part (" element 17", " ne[2"),
// then up to two suffixes (" key", " length"). It views `base` and the suffixes: a temporary
// std::string passed to a call lives as long as that call, which is all a FieldName needs (none
// is stored).
class FieldName {
 public:
  FieldName(const std::string& base) : base_(base) {}
  FieldName(const char* base) : base_(base) {}
  FieldName(std::string_view base, const char* suffix) : base_(base), suffixes_{suffix, ""} {}

  FieldName indexed(const char* prefix, uint64_t index) const {
    FieldName name = *this;
    name.index_prefix_ = prefix;
    name.index_ = index;
    return name;
  }
  // This name followed by `suffix` (at most two suffixes).
  FieldName suffixed(const char* suffix) const {
    FieldName name = *this;
    name.suffixes_[*suffixes_[0] == '\0' ? 0 : 1] = suffix;
    return name;
  }
  std::string text() const {
    std::string text(base_);
    if (index_prefix_ != nullptr) text.append(index_prefix_).append(std::to_string(index_));
    return text.append(suffixes_[0]).append(suffixes_[1]);
  }
  friend std::ostream& operator<<(std::ostream& out, const FieldName& name) {
    return out << name.text();
  }

 private:
  std::string_view base_;
  const char* index_prefix_ = nullptr;
  uint64_t index_ = 0;
  const char* suffixes_[2] = {"", ""};
};

// `sizeof(T)` little-endian bytes as T (an integer, float or double), whatever the host's byte
// order. Compilers turn the shifts into one load on little-endian hosts.
template <class T>
T load_le(const unsigned char* bytes) {
  using Bits = std::conditional_t<
      sizeof(T) == 1, uint8_t,
      std::conditional_t<sizeof(T) == 2, uint16_t,
                         std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>>;
  static_assert(sizeof(Bits) == sizeof(T), "load_le: T must be 1, 2, 4 or 8 bytes");
  Bits bits = 0;
  for (std::size_t index = sizeof(T); index-- > 0;)
    bits = static_cast<Bits>(static_cast<uint64_t>(bits) << 8 | bytes[index]);
  // Two's complement (signed) and IEEE (float, double) bits: the same object representation.
  T value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Sequential reads of the header through a buffer of up to 1 MiB, with every length checked
// against the bytes left in the file before anything is allocated for it. Arrays are read a
// buffer at a time; the stream is asked for the buffer's size (never past the file's end), or,
// for a string longer than the buffer, for the string straight into its destination.
class HeaderCursor {
 public:
  static constexpr std::size_t kBufferBytes = std::size_t{1} << 20;

  HeaderCursor(std::istream& in, int64_t file_size, const std::string& source)
      : in_(in),
        file_size_(file_size),
        source_(source),
        capacity_(static_cast<std::size_t>(
            std::min<uint64_t>(kBufferBytes, static_cast<uint64_t>(file_size)))),
        buffer_(new char[capacity_ + 1]) {}  // default-initialized: nothing written twice

  int64_t position() const { return position_; }
  uint64_t remaining() const { return static_cast<uint64_t>(file_size_ - position_); }

  // Fails unless `byte_count` bytes remain; `what` names the field.
  void need(uint64_t byte_count, const FieldName& what) const {
    if (byte_count > remaining()) fail_past_end(byte_count, what.text());
  }

  void read(char* out, uint64_t byte_count, const FieldName& what) {
    need(byte_count, what);
    const int64_t at = position_;
    uint64_t done = 0;
    while (done < byte_count) {
      if (buffered() == 0) {
        const uint64_t left = byte_count - done;
        if (left >= capacity_) {  // no copy through the buffer
          in_.read(out + done, static_cast<std::streamsize>(left));
          const auto got = static_cast<uint64_t>(in_.gcount());
          if (got != left) fail_shrank(what, at, byte_count, done + got);
          position_ += static_cast<int64_t>(left);
          return;
        }
        fill();
        if (buffered() == 0) fail_shrank(what, at, byte_count, done);
      }
      const auto take = static_cast<std::size_t>(std::min<uint64_t>(buffered(), byte_count - done));
      std::memcpy(out + done, buffer_.get() + begin_, take);
      consume(take);
      done += take;
    }
  }

  uint64_t le(int byte_count, const FieldName& what) {
    const auto size = static_cast<std::size_t>(byte_count);
    const unsigned char* bytes = peek(size, what);
    uint64_t value = 0;
    for (std::size_t index = size; index-- > 0;)
      value = (value << 8) | bytes[index];
    consume(size);
    return value;
  }
  uint32_t u32(const FieldName& what) { return static_cast<uint32_t>(le(4, what)); }
  uint64_t u64(const FieldName& what) { return le(8, what); }

  // A gguf string of at most max_bytes bytes.
  std::string string(const FieldName& what, uint64_t max_bytes) {
    const int64_t at = position_;
    const uint64_t length = u64(what.suffixed(" length"));
    if (length > max_bytes) {
      nibble::detail::fail(ErrorCode::malformed, source_, ": ", what, " at offset ", at,
                           " has length ", length, " (expected at most ", max_bytes, ")");
    }
    if (length > remaining()) fail_past_end(length, length_text(what, length));
    std::string text(static_cast<std::size_t>(length), '\0');
    read(text.data(), length, what);
    return text;
  }

  // `count` values of T (not std::string) back to back, decoded a buffer at a time; `what` names
  // the entry, and each element (" element i") when `is_array`.
  template <class T>
  std::vector<T> fixed_elements(uint64_t count, const FieldName& what, bool is_array) {
    // The caller checked an array's count against the bytes left, so this allocation is bounded
    // by the file (a scalar is one element).
    std::vector<T> elements(static_cast<std::size_t>(count));
    constexpr std::size_t kSize = sizeof(T);
    std::size_t index = 0;
    while (index < elements.size()) {
      const FieldName element = is_array ? what.indexed(" element ", index) : what;
      const unsigned char* bytes = peek(kSize, element);
      const std::size_t run = std::min(elements.size() - index, buffered() / kSize);
      if constexpr (std::is_same_v<T, bool>) {
        for (std::size_t offset = 0; offset < run; ++offset) {
          if (bytes[offset] > 1) {
            nibble::detail::fail(ErrorCode::malformed, source_, ": ",
                                 is_array ? what.indexed(" element ", index + offset) : what,
                                 " at offset ", position_ + static_cast<int64_t>(offset),
                                 " is a bool of value ", static_cast<int>(bytes[offset]),
                                 " (expected 0 or 1)");
          }
          elements[index + offset] = bytes[offset] == 1;
        }
      } else {
        T* out = elements.data() + index;
        for (std::size_t offset = 0; offset < run; ++offset)
          out[offset] = load_le<T>(bytes + offset * kSize);
      }
      consume(run * kSize);
      index += run;
    }
    return elements;
  }

  // `count` strings (u64 length + bytes each) into one GgufStringArray, as fixed_elements.
  GgufStringArray strings(uint64_t count, const FieldName& what, bool is_array) {
    GgufStringArray array;
    array.ends_.reserve(static_cast<std::size_t>(count));  // count * 8 bytes are in the file
    std::vector<char>& bytes = array.bytes_;
    for (uint64_t index = 0; index < count; ++index) {
      const FieldName element = is_array ? what.indexed(" element ", index) : what;
      const uint64_t length = le(8, element.suffixed(" length"));
      if (length > remaining()) fail_past_end(length, length_text(element, length));
      if (length <= buffered()) {  // the usual case: one copy out of the buffer
        const char* text = buffer_.get() + begin_;
        bytes.insert(bytes.end(), text, text + length);
        consume(static_cast<std::size_t>(length));
      } else {
        const std::size_t old_size = bytes.size();
        bytes.resize(old_size + static_cast<std::size_t>(length));
        read(bytes.data() + old_size, length, element);
      }
      array.ends_.push_back(bytes.size());
    }
    // Growth leaves up to half the buffer unused; the array keeps exactly the file's bytes.
    if (bytes.capacity() != bytes.size()) bytes.shrink_to_fit();
    return array;
  }

 private:
  std::size_t buffered() const { return end_ - begin_; }
  void consume(std::size_t byte_count) {
    begin_ += byte_count;
    position_ += static_cast<int64_t>(byte_count);
  }

  // Moves the unread bytes to the front and fills the rest of the buffer from the stream, never
  // reading past file_size_ (the stream then stands at position_ + buffered()).
  void fill() {
    const std::size_t kept = buffered();
    std::memmove(buffer_.get(), buffer_.get() + begin_, kept);
    begin_ = 0;
    end_ = kept;
    const uint64_t unread = remaining() - kept;
    const auto want = static_cast<std::size_t>(std::min<uint64_t>(capacity_ - kept, unread));
    if (want > 0) {
      in_.read(buffer_.get() + kept, static_cast<std::streamsize>(want));
      end_ += static_cast<std::size_t>(in_.gcount());
    }
  }

  // `byte_count` (<= 8, or what is left in the file) bytes at position_, contiguous; checks
  // that they are in the file, and that the stream gives them.
  const unsigned char* peek(std::size_t byte_count, const FieldName& what) {
    if (buffered() < byte_count) {
      need(byte_count, what);
      fill();
      if (buffered() < byte_count) fail_shrank(what, position_, byte_count, buffered());
    }
    return reinterpret_cast<const unsigned char*>(buffer_.get() + begin_);
  }

  static std::string length_text(const FieldName& what, uint64_t length) {
    return what.text() + " (length " + std::to_string(length) + ")";
  }

  [[noreturn]] void fail_past_end(uint64_t byte_count, const std::string& what) const {
    nibble::detail::fail(ErrorCode::malformed, source_, ": ", what, " at offset ", position_,
                         " needs ", byte_count, " bytes but the file ends after ", remaining(),
                         " more (file size ", file_size_, "; truncated?)");
  }
  [[noreturn]] void fail_shrank(const FieldName& what, int64_t at, uint64_t byte_count,
                                uint64_t got) const {
    nibble::detail::fail(ErrorCode::io, source_, ": reading ", what, " at offset ", at, " (",
                         byte_count, " bytes) got only ", got, " (the file shrank?)");
  }

  std::istream& in_;
  int64_t file_size_;
  const std::string& source_;
  std::size_t capacity_;            // min(kBufferBytes, file size)
  std::unique_ptr<char[]> buffer_;  // unread bytes in [begin_, end_), from file offset position_
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  int64_t position_ = 0;
};

template <class T>
ValueStorage read_elements(HeaderCursor& cursor, uint64_t count, const FieldName& what,
                           bool is_array) {
  if constexpr (std::is_same_v<T, std::string>) {
    return cursor.strings(count, what, is_array);
  } else {
    return cursor.fixed_elements<T>(count, what, is_array);
  }
}

inline ValueStorage read_value(HeaderCursor& cursor, uint32_t type, uint64_t count,
                               const FieldName& what, bool is_array) {
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::u8:
      return read_elements<uint8_t>(cursor, count, what, is_array);
    case GgufValueType::i8:
      return read_elements<int8_t>(cursor, count, what, is_array);
    case GgufValueType::u16:
      return read_elements<uint16_t>(cursor, count, what, is_array);
    case GgufValueType::i16:
      return read_elements<int16_t>(cursor, count, what, is_array);
    case GgufValueType::u32:
      return read_elements<uint32_t>(cursor, count, what, is_array);
    case GgufValueType::i32:
      return read_elements<int32_t>(cursor, count, what, is_array);
    case GgufValueType::f32:
      return read_elements<float>(cursor, count, what, is_array);
    case GgufValueType::boolean:
      return read_elements<bool>(cursor, count, what, is_array);
    case GgufValueType::string:
      return read_elements<std::string>(cursor, count, what, is_array);
    case GgufValueType::u64:
      return read_elements<uint64_t>(cursor, count, what, is_array);
    case GgufValueType::i64:
      return read_elements<int64_t>(cursor, count, what, is_array);
    case GgufValueType::f64:
      return read_elements<double>(cursor, count, what, is_array);
    case GgufValueType::array:
      break;
  }
  return {};  // unreachable: the caller checked the type
}

}  // namespace gguf_detail

inline GgufFile GgufFile::open(const std::string& path) {
  std::error_code status_error;
  if (std::filesystem::is_directory(path, status_error)) {
    nibble::detail::fail(ErrorCode::io, "cannot open GGUF file \"", path, "\": is a directory");
  }
  errno = 0;
  auto stream = std::make_unique<std::ifstream>(path, std::ios::binary);
  if (!stream->is_open()) {
    const int open_errno = errno;
    nibble::detail::fail(ErrorCode::io, "cannot open GGUF file \"", path,
                         "\": ", open_errno != 0 ? std::strerror(open_errno) : "unknown error");
  }
  return open(std::move(stream), path);
}

inline GgufFile GgufFile::open(std::unique_ptr<std::istream> stream, std::string source) {
  if (stream == nullptr) {
    nibble::detail::fail(ErrorCode::null_pointer, "GgufFile::open: stream is null (", source, ")");
  }
  GgufFile file;
  file.path_ = std::move(source);
  file.stream_ = std::move(stream);
  std::istream& in = *file.stream_;
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (!in || size < 0) {
    nibble::detail::fail(ErrorCode::io, "cannot read GGUF file \"", file.path_,
                         "\": cannot determine its size");
  }
  in.seekg(0, std::ios::beg);
  file.file_size_ = static_cast<int64_t>(size);
  file.parse();
  return file;
}

inline void GgufFile::parse() {
  const std::string source = "GGUF file \"" + path_ + "\"";
  gguf_detail::HeaderCursor cursor(*stream_, file_size_, source);

  char magic[4];
  cursor.read(magic, 4, "the magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    nibble::detail::fail(ErrorCode::malformed, source, ": bad magic ",
                         gguf_detail::quoted(std::string_view(magic, 4)),
                         " at offset 0 (expected \"GGUF\", bytes 47 47 55 46: not a GGUF file)");
  }
  version_ = cursor.u32("the version");
  if (version_ != 2 && version_ != 3) {
    nibble::detail::fail(ErrorCode::unsupported, source, ": GGUF version ", version_,
                         version_ == 1 ? " (32-bit counts) is not supported"
                         : version_ != 0 && (version_ & 0xffffu) == 0
                             ? " is not supported: a byte-swapped version, i.e. a big-endian file"
                             : " is not supported",
                         " (expected 3, or 2 which has the same layout)");
  }
  const uint64_t tensor_count = cursor.u64("the tensor count");
  const uint64_t kv_count = cursor.u64("the metadata key-value count");
  // Each entry takes at least 13 bytes (u64 key length, u32 type, a 1-byte value) and each
  // tensor info 32 (u64 name length, u32 n_dims, one u64 dim, u32 type, u64 offset).
  if (kv_count > cursor.remaining() / 13) {
    nibble::detail::fail(ErrorCode::malformed, source, ": metadata key-value count ", kv_count,
                         " cannot fit in the ", cursor.remaining(),
                         " bytes after the header (each entry takes >= 13 bytes)");
  }
  if (tensor_count > (cursor.remaining() - kv_count * 13) / 32) {
    nibble::detail::fail(ErrorCode::malformed, source, ": tensor count ", tensor_count,
                         " cannot fit in the ", cursor.remaining(), " bytes after the header ",
                         "(each tensor info takes >= 32 bytes)");
  }

  for (uint64_t entry = 0; entry < kv_count; ++entry) {
    const std::string entry_what = "metadata entry " + std::to_string(entry);
    const int64_t key_at = cursor.position();
    std::string key = cursor.string({entry_what, " key"}, kGgufMaxKeyBytes);
    if (key.empty()) {
      nibble::detail::fail(ErrorCode::malformed, source, ": ", entry_what, " at offset ", key_at,
                           " has an empty key (expected 1 to ", kGgufMaxKeyBytes, " bytes)");
    }
    if (key_index_.count(key) != 0) {
      nibble::detail::fail(ErrorCode::malformed, source, ": ", entry_what, " at offset ", key_at,
                           ": duplicate key ", gguf_detail::quoted(key), " (also entry ",
                           key_index_.find(key)->second, ")");
    }
    const std::string what = entry_what + " (" + gguf_detail::quoted(key) + ")";
    const int64_t type_at = cursor.position();
    uint32_t type = cursor.u32({what, " value type"});
    uint64_t count = 1;
    const bool is_array = type == static_cast<uint32_t>(GgufValueType::array);
    if (is_array) {
      type = cursor.u32({what, " array element type"});
      if (type == static_cast<uint32_t>(GgufValueType::array)) {
        nibble::detail::fail(ErrorCode::unsupported, source, ": ", what, " at offset ", type_at,
                             " is an array of arrays (nested arrays are not supported, as in "
                             "ggml)");
      }
    }
    const uint64_t element_bytes = gguf_detail::element_min_bytes(type);
    if (element_bytes == 0) {
      nibble::detail::fail(ErrorCode::malformed, source, ": ", what, " at offset ", type_at,
                           " has ", is_array ? "array element" : "value", " type ", type,
                           " (expected 0 to 12: u8, i8, u16, i16, u32, i32, f32, bool, string, "
                           "array, u64, i64, f64)");
    }
    if (is_array) {
      const int64_t count_at = cursor.position();
      count = cursor.u64({what, " array length"});
      if (count > cursor.remaining() / element_bytes) {
        nibble::detail::fail(
            ErrorCode::malformed, source, ": ", what, " at offset ", count_at, ": array length ",
            count, " of ", gguf_value_type_name(static_cast<GgufValueType>(type)),
            " cannot fit in the ", cursor.remaining(), " bytes left in the file (truncated?)");
      }
    }
    GgufValue value(is_array, gguf_detail::read_value(cursor, type, count, what, is_array));
    key_index_.emplace(key, metadata_.size());
    metadata_.push_back({std::move(key), std::move(value)});
  }

  if (const GgufValue* alignment = find("general.alignment")) {
    if (alignment->type() != GgufValueType::u32) {
      nibble::detail::fail(ErrorCode::malformed, source, ": general.alignment is ",
                           alignment->to_string(), " (expected a u32)");
    }
    alignment_ = alignment->as<uint32_t>();
    if (!gguf_detail::is_power_of_two(alignment_)) {
      nibble::detail::fail(ErrorCode::malformed, source, ": general.alignment = ", alignment_,
                           " (expected a power of two, as ggml requires)");
    }
  }

  for (uint64_t index = 0; index < tensor_count; ++index) {
    const std::string index_what = "tensor info " + std::to_string(index);
    const int64_t info_at = cursor.position();
    GgufTensorInfo info;
    info.name = cursor.string({index_what, " name"}, kGgufMaxTensorNameBytes);
    if (tensor_index_.count(info.name) != 0) {
      nibble::detail::fail(ErrorCode::malformed, source, ": ", index_what, " at offset ", info_at,
                           ": duplicate tensor name ", gguf_detail::quoted(info.name),
                           " (also tensor info ", tensor_index_.find(info.name)->second, ")");
    }
    const std::string what = index_what + " (" + gguf_detail::quoted(info.name) + ")";
    const int64_t dims_at = cursor.position();
    const uint32_t n_dims = cursor.u32({what, " n_dims"});
    if (n_dims < 1 || n_dims > kGgufMaxDims) {
      nibble::detail::fail(ErrorCode::malformed, source, ": ", what, " at offset ", dims_at,
                           " has n_dims = ", n_dims, " (expected 1 to ", kGgufMaxDims,
                           ", GGML_MAX_DIMS)");
    }
    info.shape.assign(n_dims, 0);
    for (uint32_t axis = 0; axis < n_dims; ++axis) {
      const int64_t dim_at = cursor.position();
      const uint64_t extent =
          cursor.u64(gguf_detail::FieldName(what).indexed(" ne[", axis).suffixed("]"));
      if (extent == 0 || extent > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        nibble::detail::fail(ErrorCode::malformed, source, ": ", what, " at offset ", dim_at,
                             " has ne[", axis, "] = ", extent,
                             " (expected 1 to INT64_MAX; nibble reads no empty tensors)");
      }
      info.shape[n_dims - 1 - axis] = static_cast<int64_t>(extent);  // ne reversed: row-major
    }
    const int64_t type_at = cursor.position();
    const uint32_t type_id = cursor.u32({what, " type"});
    const GgmlTypeLayout* layout = gguf_detail::find_layout(type_id);
    if (layout == nullptr) {
      const char* name = gguf_detail::ggml_type_id_name(type_id);
      nibble::detail::fail(name != nullptr ? ErrorCode::unsupported : ErrorCode::malformed, source,
                           ": ", what, " at offset ", type_at, " has ggml type id ", type_id,
                           name != nullptr
                               ? std::string(" (") + name + "), which nibble does not read"
                               : std::string(", which is not a ggml type"),
                           " (expected ", gguf_detail::kSupportedTypes, ")");
    }
    info.type = static_cast<GgmlType>(type_id);
    if (info.row_length() % layout->block_size != 0) {
      nibble::detail::fail(ErrorCode::malformed, source, ": ", what,
                           " has ne[0] = ", info.row_length(), ", not a multiple of the ",
                           layout->name, " block size ", layout->block_size);
    }
    // rows, numel and bytes, each overflow an Error naming this tensor
    const std::string size_what =
        source + ": " + what + " shape " + gguf_detail::shape_text(info.shape) + " element count";
    int64_t rows = 1;
    for (std::size_t axis = 0; axis + 1 < info.shape.size(); ++axis)
      rows = nibble::detail::checked_mul(rows, info.shape[axis], size_what.c_str());
    nibble::detail::checked_mul(rows, info.row_length(), size_what.c_str());
    info.size_bytes = nibble::detail::checked_mul(rows, info.row_bytes(), size_what.c_str());
    info.offset = cursor.u64({what, " offset"});
    tensor_index_.emplace(info.name, tensors_.size());
    tensors_.push_back(std::move(info));
  }

  const auto header_end = static_cast<uint64_t>(cursor.position());
  data_offset_ = static_cast<int64_t>(gguf_detail::align_up(header_end, alignment_));
  // The padding after the header: the data section starts there even when it lies past the end
  // of a file without tensors (ggml writes it, but a file may stop at the header).
  const uint64_t data_bytes =
      static_cast<uint64_t>(file_size_) > static_cast<uint64_t>(data_offset_)
          ? static_cast<uint64_t>(file_size_ - data_offset_)
          : 0;
  std::vector<std::size_t> by_offset(tensors_.size());
  for (std::size_t index = 0; index < tensors_.size(); ++index) {
    const GgufTensorInfo& info = tensors_[index];
    by_offset[index] = index;
    const std::string what = "tensor " + gguf_detail::quoted(info.name);
    if (info.offset % alignment_ != 0) {
      nibble::detail::fail(ErrorCode::malformed, source, ": ", what, " has offset ", info.offset,
                           ", not a multiple of the alignment ", alignment_);
    }
    const auto size = static_cast<uint64_t>(info.size_bytes);
    if (info.offset > data_bytes || size > data_bytes - info.offset) {
      nibble::detail::fail(ErrorCode::malformed, source, ": ", what, " (",
                           ggml_type_name(info.type), " ", gguf_detail::shape_text(info.shape),
                           ", ", size, " bytes at data offset ", info.offset,
                           ") extends past the end of the data section (", data_bytes,
                           " bytes from file offset ", data_offset_, "; truncated?)");
    }
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [&](std::size_t a, std::size_t b) { return tensors_[a].offset < tensors_[b].offset; });
  for (std::size_t position = 1; position < by_offset.size(); ++position) {
    const GgufTensorInfo& previous = tensors_[by_offset[position - 1]];
    const GgufTensorInfo& info = tensors_[by_offset[position]];
    if (info.offset < previous.offset + static_cast<uint64_t>(previous.size_bytes)) {
      nibble::detail::fail(
          ErrorCode::malformed, source, ": tensor ", gguf_detail::quoted(info.name), " [",
          info.offset, ", ", info.offset + static_cast<uint64_t>(info.size_bytes),
          ") overlaps tensor ", gguf_detail::quoted(previous.name), " [", previous.offset, ", ",
          previous.offset + static_cast<uint64_t>(previous.size_bytes), ") (data offsets)");
    }
  }
}

inline const GgufValue* GgufFile::find(std::string_view key) const {
  const auto found = key_index_.find(key);
  return found == key_index_.end() ? nullptr : &metadata_[found->second].value;
}

inline const GgufValue& GgufFile::value_or_fail(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GGUF file \"", path_,
                         "\" has no metadata key ", gguf_detail::quoted(key));
  }
  return *value;
}

template <class T>
T GgufFile::get(std::string_view key) const {
  const GgufValue& value = value_or_fail(key);
  if (value.is_array() || value.element_type() != gguf_detail::ValueTraits<T>::type) {
    nibble::detail::fail(ErrorCode::type_mismatch, "GGUF file \"", path_, "\": metadata ",
                         gguf_detail::quoted(key), " is ", value.to_string(2), " (expected ",
                         gguf_value_type_name(gguf_detail::ValueTraits<T>::type), ")");
  }
  return value.as<T>();
}

template <class T>
const gguf_detail::ArrayStorage<T>& GgufFile::get_array(std::string_view key) const {
  const GgufValue& value = value_or_fail(key);
  if (!value.is_array() || value.element_type() != gguf_detail::ValueTraits<T>::type) {
    nibble::detail::fail(ErrorCode::type_mismatch, "GGUF file \"", path_, "\": metadata ",
                         gguf_detail::quoted(key), " is ", value.to_string(2), " (expected array[",
                         gguf_value_type_name(gguf_detail::ValueTraits<T>::type), "])");
  }
  return value.as_array<T>();
}

inline const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  const auto found = tensor_index_.find(name);
  return found == tensor_index_.end() ? nullptr : &tensors_[found->second];
}

inline const GgufTensorInfo& GgufFile::tensor_or_fail(const char* function,
                                                      std::string_view name) const {
  const GgufTensorInfo* info = find_tensor(name);
  if (info == nullptr) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GgufFile::", function, ": no tensor named ",
                         gguf_detail::quoted(name), " in \"", path_, "\"");
  }
  return *info;
}

inline void GgufFile::read_at(int64_t file_offset, char* out, int64_t byte_count,
                              const std::string& what) {
  stream_->clear();  // a previous short read leaves eof/fail set
  stream_->seekg(file_offset, std::ios::beg);
  stream_->read(out, static_cast<std::streamsize>(byte_count));
  const std::streamsize got = stream_->gcount();
  if (got != byte_count) {
    nibble::detail::fail(ErrorCode::io, "GGUF file \"", path_, "\" is truncated: reading ", what,
                         " (", byte_count, " bytes at offset ", file_offset, ") got only ", got,
                         " bytes");
  }
}

inline void GgufFile::read_raw(const GgufTensorInfo& info, void* out, std::size_t out_size) {
  const GgufTensorInfo* own = find_tensor(info.name);
  if (own == nullptr || own->offset != info.offset || own->type != info.type ||
      own->shape != info.shape || own->size_bytes != info.size_bytes) {
    nibble::detail::fail(ErrorCode::invalid_argument, "GgufFile::read_raw: info for tensor ",
                         gguf_detail::quoted(info.name), " does not describe a tensor of \"", path_,
                         "\"");
  }
  if (out_size < static_cast<uint64_t>(own->size_bytes)) {
    nibble::detail::fail(ErrorCode::buffer_too_small, "GgufFile::read_raw: out_size = ", out_size,
                         " bytes but tensor ", gguf_detail::quoted(own->name), " holds ",
                         own->size_bytes, " bytes");
  }
  if (out == nullptr) {
    nibble::detail::fail(ErrorCode::null_pointer, "GgufFile::read_raw: out is null (tensor ",
                         gguf_detail::quoted(own->name), ")");
  }
  read_at(data_offset_ + static_cast<int64_t>(own->offset), static_cast<char*>(out),
          own->size_bytes, "tensor " + gguf_detail::quoted(own->name));
}

inline std::vector<uint8_t> GgufFile::read_bytes(std::string_view name) {
  const GgufTensorInfo& info = tensor_or_fail("read_bytes", name);
  std::vector<uint8_t> bytes(static_cast<std::size_t>(info.size_bytes));
  read_raw(info, bytes.data(), bytes.size());
  return bytes;
}

inline std::vector<float> GgufFile::read_f32(std::string_view name) {
  const GgufTensorInfo& info = tensor_or_fail("read_f32", name);
  const std::vector<uint8_t> bytes = read_bytes(name);
  const auto rows = static_cast<std::size_t>(info.rows());
  const auto k = static_cast<std::size_t>(info.row_length());
  const auto row_bytes = static_cast<std::size_t>(info.row_bytes());
  std::vector<float> values(nibble::detail::checked_bytes(info.numel(), 1, "GGUF tensor"));
  for (std::size_t row = 0; row < rows; ++row) {
    const uint8_t* in = bytes.data() + row * row_bytes;
    float* y = values.data() + row * k;
    if (info.type == kGgmlF32) {
      std::memcpy(y, in, k * sizeof(float));  // little-endian host, as gguf.hpp assumes
    } else if (info.type == kGgmlF16 || info.type == kGgmlBF16) {
      for (std::size_t index = 0; index < k; ++index) {
        const auto bits = static_cast<uint16_t>(in[2 * index] | in[2 * index + 1] << 8);
        y[index] = info.type == kGgmlF16 ? to_float(fp16::from_bits(bits))
                                         : to_float(bf16::from_bits(bits));
      }
    } else {
      gguf::dequantize_row(info.type, in, info.row_length(), y);
    }
  }
  return values;
}

}  // namespace nibble::io
