// SafetensorsFile: a strict, lazy reader for the safetensors format (huggingface/safetensors).
//
//   SafetensorsFile file = SafetensorsFile::open("model.safetensors");
//   for (const auto& tensor : file.tensors()) ...;            // in file (offset) order
//   std::vector<float> weight = file.read_f32("encoder.layer.0.attention.self.query.weight");
//
// File layout (all integers little-endian):
//   bytes [0, 8)          N, a u64: the header's length in bytes
//   bytes [8, 8 + N)      the header: a UTF-8 JSON object
//                           {"NAME": {"dtype": "F32", "shape": [d0, ...], "data_offsets": [b, e]},
//                            ..., "__metadata__": {"key": "value", ...}}   (metadata optional)
//   bytes [8 + N, end)    the data section; tensor NAME is bytes [b, e) of it, row-major, LE
//
// open() checks everything the reference implementation (Rust read_metadata and
// Metadata::validate) checks:
//   - 0 < N <= kMaxSafetensorsHeaderBytes and 8 + N <= file size; the header is valid UTF-8 JSON
//     whose top level is an object;
//   - dtype is a known name; dims are integers >= 0 (0 is legal: 0 bytes; [] is a scalar);
//     data_offsets is [begin, end] with begin <= end;
//   - element count * dtype size == end - begin, computed with overflow checks;
//   - sorted by offset, the tensors cover the data section exactly: the first starts at 0, each
//     starts where the previous ended (no gap, no overlap), the last ends at the end of the file;
//   - "__metadata__", if present and not null, maps strings to strings.
// and rejects three kinds of file the reference opens, each of which would otherwise be read
// as a guess:
//   - any duplicate key (json.hpp). The reference rejects duplicate fields inside an entry, and
//     duplicate tensor names whose entries differ (through the offset check), but silently keeps
//     the last of two identical entries;
//   - a key other than dtype, shape and data_offsets in a tensor entry (the reference ignores
//     it): it means a format extension this reader does not know;
//   - safetensors dtypes nibble has no DType for (U16, F8_E4M3, ...): ErrorCode::unsupported.
// Tensor data is read on demand, so opening a large model costs only its header: read_raw /
// read_f32 seek and copy one tensor; mapped_bytes gives it in place through a memory map of the
// file. A SafetensorsFile owns one input stream and one mapping: calls are not thread-safe.
//
// SafetensorsWriter (below) writes the format, streaming one tensor at a time.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/dtype.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/io/json.hpp"
#include "nibble/io/mapped_file.hpp"

namespace nibble::io {

// The reference implementation's MAX_HEADER_SIZE (100,000,000 bytes, decimal): a larger N is
// rejected before anything is allocated for it.
inline constexpr int64_t kMaxSafetensorsHeaderBytes = 100'000'000;
// Tensors of higher rank are refused (ErrorCode::unsupported) as the header is read, so a header
// cannot make the reader hold more than 64 dims per tensor (numpy 2's NPY_MAXDIMS is 64 too):
// the reader's memory stays a small multiple of the header's size.
inline constexpr std::size_t kMaxSafetensorsRank = 64;

// One tensor's entry in the header. `shape` is a plain vector, not nibble::Shape: safetensors
// allows 0-sized dimensions (and rank 0, a scalar), which Shape rejects.
struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;  // row-major extents; empty for a scalar
  int64_t begin = 0;           // byte offsets into the data section (which starts at 8 + N):
  int64_t end = 0;             // the tensor is bytes [begin, end); end - begin = numel * size

  // Checked although open() already validated it: a TensorInfo can also be built by hand.
  int64_t numel() const {
    int64_t count = 1;
    for (int64_t dim : shape)
      count = nibble::detail::checked_mul(count, dim, "TensorInfo element count");
    return count;
  }
  int64_t size_bytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  // Opens and validates `path` (see the header comment); reads only the 8 + N header bytes.
  // Throws ErrorCode::io when the file cannot be opened or read, ErrorCode::malformed when its
  // contents violate the format, ErrorCode::overflow when a shape's byte size overflows int64,
  // ErrorCode::unsupported for a safetensors dtype nibble has no DType for (F8_E4M3, U16, ...).
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // Every tensor, sorted by data offset (the order of the data section).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The tensor named `name`, or null.
  const TensorInfo* find(std::string_view name) const;
  // The "__metadata__" map (empty when the header has none or it is null).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Bytes before the data section: 8 + N.
  int64_t data_start() const { return data_start_; }

  // Tensor `name` converted to float, numel() values in row-major order. F32 is copied bit for
  // bit, F16 and BF16 widen exactly. Throws ErrorCode::invalid_argument for an unknown name,
  // ErrorCode::type_mismatch for any other dtype, ErrorCode::io if the file is now shorter.
  std::vector<float> read_f32(std::string_view name);

  // Copies the raw little-endian bytes of `info` (a TensorInfo of this file) into `out`, which
  // holds `out_size` >= info.size_bytes() bytes. Throws ErrorCode::buffer_too_small,
  // ErrorCode::null_pointer, ErrorCode::invalid_argument (info not from this file), or
  // ErrorCode::io when the file has been truncated since open().
  void read_raw(const TensorInfo& info, void* out, std::size_t out_size);

  // The bytes of `info` (a TensorInfo of this file) in place, through a read-only memory map of
  // the file made on first use (io/mapped_file.hpp): no copy, pages read on first touch, valid
  // while this SafetensorsFile lives. Throws ErrorCode::io when mapping fails or the file is now
  // shorter than the header says. The pointer has the alignment of its file offset only: check
  // it before viewing the bytes as wider elements.
  const unsigned char* mapped_bytes(const TensorInfo& info);
  // Drops the mapped pages of `info` from memory (MappedFile::release): call it when done with
  // a tensor read through mapped_bytes to keep resident memory O(one tensor).
  void release_mapped(const TensorInfo& info) const {
    if (mapping_) {
      mapping_->release(static_cast<std::size_t>(data_start_ + info.begin),
                        static_cast<std::size_t>(info.size_bytes()));
    }
  }

 private:
  SafetensorsFile() = default;

  void parse_header(const std::string& header, int64_t data_bytes);
  void read_at(int64_t file_offset, char* out, int64_t byte_count, const std::string& what);

  std::string path_;
  std::ifstream stream_;
  std::unique_ptr<MappedFile> mapping_;  // made by the first mapped_bytes()
  int64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, std::size_t, std::less<>> position_of_;  // name -> index in tensors_
};

// ---- implementation ----------------------------------------------------------------------------

namespace detail {

// Little-endian bytes -> value, independent of the host's byte order.
inline uint64_t load_le(const unsigned char* bytes, int byte_count) {
  uint64_t value = 0;
  for (int index = byte_count - 1; index >= 0; --index)
    value = (value << 8) | bytes[index];
  return value;
}

// The header must be UTF-8, as the reference checks before parsing (RFC 3629: no overlong
// forms, no surrogates, nothing above U+10FFFF). Returns the offset of the first bad byte, or
// text.size() when all of it is valid.
inline std::size_t first_invalid_utf8(std::string_view text) {
  std::size_t at = 0;
  while (at < text.size()) {
    const auto lead = static_cast<unsigned char>(text[at]);
    if (lead < 0x80) {
      ++at;
      continue;
    }
    std::size_t length = 0;
    uint32_t min_code_point = 0;
    if (lead >= 0xc2 && lead <= 0xdf) {
      length = 2;
      min_code_point = 0x80;
    } else if (lead >= 0xe0 && lead <= 0xef) {
      length = 3;
      min_code_point = 0x800;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      length = 4;
      min_code_point = 0x10000;
    } else {
      return at;  // a continuation byte, an overlong 2-byte lead (c0, c1) or f5..ff
    }
    if (text.size() - at < length) return at;
    uint32_t code_point = lead & (0x7fu >> length);
    for (std::size_t index = 1; index < length; ++index) {
      const auto continuation = static_cast<unsigned char>(text[at + index]);
      if ((continuation & 0xc0) != 0x80) return at;
      code_point = (code_point << 6) | (continuation & 0x3fu);
    }
    if (code_point < min_code_point || code_point > 0x10ffff ||
        (code_point >= 0xd800 && code_point <= 0xdfff)) {
      return at;
    }
    at += length;
  }
  return at;
}

inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (std::size_t axis = 0; axis < shape.size(); ++axis)
    text += (axis ? ", " : "") + std::to_string(shape[axis]);
  return text + "]";
}

// safetensors dtypes that nibble has no DType for; naming them gives a clearer error than
// "unknown dtype" for a file that is valid, just not readable here.
inline bool is_other_safetensors_dtype(std::string_view name) {
  for (std::string_view other : {"U16", "U32", "U64", "C64", "F4", "F6_E2M3", "F6_E3M2", "F8_E5M2",
                                 "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}) {
    if (name == other) return true;
  }
  return false;
}

}  // namespace detail

inline SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  std::error_code status_error;
  if (std::filesystem::is_directory(path, status_error)) {
    // A directory opens as a stream on POSIX; only reading it fails, with a confusing message.
    nibble::detail::fail(ErrorCode::io, "cannot open safetensors file \"", path,
                         "\": is a directory");
  }
  errno = 0;
  file.stream_.open(path, std::ios::binary);
  if (!file.stream_.is_open()) {
    const int open_errno = errno;
    nibble::detail::fail(ErrorCode::io, "cannot open safetensors file \"", path,
                         "\": ", open_errno != 0 ? std::strerror(open_errno) : "unknown error");
  }
  file.stream_.seekg(0, std::ios::end);
  const std::streamoff file_size = file.stream_.tellg();
  if (!file.stream_ || file_size < 0) {
    const int seek_errno = errno;
    nibble::detail::fail(ErrorCode::io, "cannot read safetensors file \"", path, "\": ",
                         seek_errno != 0 ? std::strerror(seek_errno) : "cannot determine its size");
  }
  if (file_size < 8) {
    nibble::detail::fail(ErrorCode::malformed, "safetensors file \"", path, "\" is ", file_size,
                         " bytes, too short for the 8-byte header length (truncated?)");
  }

  unsigned char length_bytes[8];
  file.read_at(0, reinterpret_cast<char*>(length_bytes), 8, "the header length");
  const uint64_t header_bytes = detail::load_le(length_bytes, 8);
  if (header_bytes == 0) {
    nibble::detail::fail(ErrorCode::malformed, "safetensors file \"", path,
                         "\": header length N = 0 (expected a JSON object of at least 2 bytes)");
  }
  if (header_bytes > static_cast<uint64_t>(kMaxSafetensorsHeaderBytes)) {
    nibble::detail::fail(ErrorCode::malformed, "safetensors file \"", path,
                         "\": header length N = ", header_bytes, " exceeds the limit of ",
                         kMaxSafetensorsHeaderBytes, " bytes (not a safetensors file?)");
  }
  const auto header_length = static_cast<int64_t>(header_bytes);
  if (8 + header_length > file_size) {
    nibble::detail::fail(ErrorCode::malformed, "safetensors file \"", path,
                         "\": header length N = ", header_length, " but the file is only ",
                         file_size, " bytes (expected 8 + N <= file size; truncated?)");
  }
  std::string header(static_cast<std::size_t>(header_length), '\0');
  file.read_at(8, header.data(), header_length, "the header");
  file.data_start_ = 8 + header_length;
  file.parse_header(header, file_size - file.data_start_);
  return file;
}

inline void SafetensorsFile::parse_header(const std::string& header, int64_t data_bytes) {
  const std::string source = "safetensors header of \"" + path_ + "\"";
  const std::size_t bad_utf8 = detail::first_invalid_utf8(header);
  if (bad_utf8 != header.size()) {
    nibble::detail::fail(ErrorCode::malformed, source, ": byte ", bad_utf8,
                         ": invalid UTF-8 (expected the header to be UTF-8 JSON)");
  }
  // Read with the pull parser straight into TensorInfo: memory is what the tensors need (names,
  // shapes of at most kMaxSafetensorsRank dims), not a document tree of the header.
  JsonReader reader(header, source);
  if (reader.peek_kind() != JsonValue::Kind::object) {
    reader.fail_kind(source + ": top-level value", "an object");
  }
  // A non-negative integer; a number too large for int64 is an overflow, anything else is
  // malformed.
  const auto non_negative = [&](const std::string& label) {
    const std::size_t at = reader.offset();
    const JsonValue::Kind kind = reader.peek_kind();
    if (kind != JsonValue::Kind::integer && kind != JsonValue::Kind::real) {
      reader.fail_kind(label, "an integer that fits int64");
    }
    const JsonReader::Number number = reader.read_number();
    if (!number.integral) {
      if (number.real >= 9.2233720368547758e18) {
        nibble::detail::fail(ErrorCode::overflow, label, " at byte ", at, " = ", number.real,
                             " does not fit int64");
      }
      nibble::detail::fail(ErrorCode::malformed, label, " at byte ", at,
                           ": expected an integer that fits int64, found ",
                           JsonValue::make_real(number.real).describe());
    }
    if (number.integer < 0) {
      nibble::detail::fail(ErrorCode::malformed, label, " at byte ", at, " = ", number.integer,
                           " (expected >= 0)");
    }
    return number.integer;
  };

  reader.read_object([&](std::string key, std::size_t) {
    if (key == "__metadata__") {
      const std::string what = source + ": \"__metadata__\"";
      const JsonValue::Kind kind = reader.peek_kind();
      if (kind == JsonValue::Kind::null) {  // the reference reads null as "no metadata"
        reader.read_null();
        return;
      }
      if (kind != JsonValue::Kind::object) reader.fail_kind(what, "an object");
      reader.read_object([&](std::string item, std::size_t) {
        if (reader.peek_kind() != JsonValue::Kind::string) {
          reader.fail_kind(what + " value of \"" + item + "\"", "a string");
        }
        metadata_[std::move(item)] = reader.read_string();
      });
      return;
    }
    const std::string what = source + ": tensor \"" + key + "\"";
    const std::size_t entry_at = reader.offset();
    if (reader.peek_kind() != JsonValue::Kind::object) reader.fail_kind(what, "an object");
    TensorInfo info;
    info.name = std::move(key);
    bool have_dtype = false, have_shape = false, have_offsets = false;
    std::string dtype_name;
    std::size_t dtype_at = 0;
    std::size_t offsets_count = 0;
    reader.read_object([&](std::string field, std::size_t field_at) {
      if (field == "dtype") {
        dtype_at = reader.offset();
        if (reader.peek_kind() != JsonValue::Kind::string) reader.fail_kind(what + " dtype", "a string");
        dtype_name = reader.read_string();
        have_dtype = true;
      } else if (field == "shape") {
        if (reader.peek_kind() != JsonValue::Kind::array) reader.fail_kind(what + " shape", "an array");
        info.shape.clear();
        reader.read_array([&](std::size_t axis) {
          const std::string label = what + " shape[" + std::to_string(axis) + "]";
          if (axis >= kMaxSafetensorsRank) {
            nibble::detail::fail(ErrorCode::unsupported, what, ": shape has more than ",
                                 kMaxSafetensorsRank, " dimensions (at byte ", reader.offset(),
                                 "; expected at most ", kMaxSafetensorsRank, ")");
          }
          info.shape.push_back(non_negative(label));
        });
        have_shape = true;
      } else if (field == "data_offsets") {
        if (reader.peek_kind() != JsonValue::Kind::array) {
          reader.fail_kind(what + " data_offsets", "an array");
        }
        offsets_count = 0;
        reader.read_array([&](std::size_t index) {
          if (index == 0) {
            info.begin = non_negative(what + " data_offsets[0]");
          } else if (index == 1) {
            info.end = non_negative(what + " data_offsets[1]");
          } else {
            reader.skip_value();  // counted for the message below
          }
          ++offsets_count;
        });
        have_offsets = true;
      } else {
        nibble::detail::fail(ErrorCode::malformed, what, ": unknown key \"", field, "\" at byte ",
                             field_at, " (expected only dtype, shape and data_offsets)");
      }
    });
    for (const auto& [present, name] : {std::pair<bool, const char*>{have_dtype, "dtype"},
                                        {have_shape, "shape"},
                                        {have_offsets, "data_offsets"}}) {
      if (!present) {
        nibble::detail::fail(ErrorCode::malformed, what, " at byte ", entry_at,
                             ": missing key \"", name, "\"");
      }
    }
    if (detail::is_other_safetensors_dtype(dtype_name)) {
      nibble::detail::fail(
          ErrorCode::unsupported, what, ": dtype \"", dtype_name,
          "\" is not supported by nibble (expected F64, F32, F16, BF16, I64, I32, I16, "
          "I8, U8 or BOOL)");
    }
    try {
      info.dtype = dtype_from_name(dtype_name);
    } catch (const Error&) {
      nibble::detail::fail(ErrorCode::malformed, what, ": unknown dtype \"", dtype_name,
                           "\" at byte ", dtype_at,
                           " (expected F64, F32, F16, BF16, I64, I32, I16, I8, U8 or BOOL)");
    }
    // Folded in order like the reference (so [2^40, 2^40, 0] overflows there and here).
    int64_t numel = 1;
    for (std::size_t axis = 0; axis < info.shape.size(); ++axis) {
      const std::string label = what + " shape[" + std::to_string(axis) + "]";
      numel = nibble::detail::checked_mul(numel, info.shape[axis], label.c_str());
    }
    const int64_t expected_bytes = nibble::detail::checked_mul(
        numel, static_cast<int64_t>(size_of(info.dtype)), (what + " byte size").c_str());
    if (offsets_count != 2) {
      nibble::detail::fail(ErrorCode::malformed, what, ": data_offsets has ", offsets_count,
                           " elements (expected 2: [begin, end])");
    }
    if (info.end < info.begin) {
      nibble::detail::fail(ErrorCode::malformed, what, ": data_offsets [", info.begin, ", ",
                           info.end, "] end before they begin");
    }
    if (info.end > data_bytes) {
      nibble::detail::fail(ErrorCode::malformed, what, ": data_offsets [", info.begin, ", ",
                           info.end, "] extend past the data section of ", data_bytes,
                           " bytes (truncated file?)");
    }
    if (info.end - info.begin != expected_bytes) {
      nibble::detail::fail(ErrorCode::malformed, what, ": data_offsets [", info.begin, ", ",
                           info.end, "] hold ", info.end - info.begin, " bytes but dtype ",
                           dtype_name, " with shape ", detail::shape_text(info.shape), " (", numel,
                           " elements) needs ", expected_bytes);
    }
    tensors_.push_back(std::move(info));
  });
  reader.finish();
  tensors_.shrink_to_fit();

  // The data section must be the tensors back to back. Sorting by (begin, end) puts 0-byte
  // tensors before a tensor starting at the same offset; the name breaks the remaining ties so
  // the order does not depend on the header's order.
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  int64_t covered = 0;  // the data section is covered up to here
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& info : tensors_) {
    if (info.begin > covered) {
      nibble::detail::fail(ErrorCode::malformed, source, ": bytes [", covered, ", ", info.begin,
                           ") of the data section belong to no tensor (gap before tensor \"",
                           info.name, "\"; expected tensors back to back)");
    }
    if (info.begin < covered) {
      nibble::detail::fail(ErrorCode::malformed, source, ": tensor \"", info.name, "\" [",
                           info.begin, ", ", info.end, ") overlaps tensor \"", previous->name,
                           "\" [", previous->begin, ", ", previous->end, ")");
    }
    covered = info.end;
    previous = &info;
  }
  if (covered != data_bytes) {
    nibble::detail::fail(ErrorCode::malformed, source, ": the tensors cover ", covered,
                         " bytes of the data section but it holds ", data_bytes,
                         " (expected no trailing bytes after the last tensor)");
  }
  for (std::size_t index = 0; index < tensors_.size(); ++index)
    position_of_.emplace(tensors_[index].name, index);
}

inline const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto found = position_of_.find(name);
  return found == position_of_.end() ? nullptr : &tensors_[found->second];
}

inline void SafetensorsFile::read_at(int64_t file_offset, char* out, int64_t byte_count,
                                     const std::string& what) {
  stream_.clear();  // a previous short read leaves eof/fail set
  stream_.seekg(file_offset, std::ios::beg);
  stream_.read(out, static_cast<std::streamsize>(byte_count));
  const std::streamsize got = stream_.gcount();
  if (got != byte_count) {
    nibble::detail::fail(ErrorCode::io, "safetensors file \"", path_, "\" is truncated: reading ",
                         what, " (", byte_count, " bytes at offset ", file_offset, ") got only ",
                         got, " bytes");
  }
}

inline void SafetensorsFile::read_raw(const TensorInfo& info, void* out, std::size_t out_size) {
  const TensorInfo* own = find(info.name);
  if (own == nullptr || own->begin != info.begin || own->end != info.end ||
      own->dtype != info.dtype || own->shape != info.shape) {
    nibble::detail::fail(ErrorCode::invalid_argument, "read_raw: info for tensor \"", info.name,
                         "\" does not describe a tensor of \"", path_, "\"");
  }
  const int64_t byte_count = own->size_bytes();
  if (out_size < static_cast<uint64_t>(byte_count)) {
    nibble::detail::fail(ErrorCode::buffer_too_small, "read_raw: out_size = ", out_size,
                         " bytes but tensor \"", own->name, "\" holds ", byte_count, " bytes");
  }
  if (byte_count == 0) return;
  if (out == nullptr) {
    nibble::detail::fail(ErrorCode::null_pointer, "read_raw: out is null (tensor \"", own->name,
                         "\", ", byte_count, " bytes)");
  }
  read_at(data_start_ + own->begin, static_cast<char*>(out), byte_count,
          "tensor \"" + own->name + "\"");
}

inline const unsigned char* SafetensorsFile::mapped_bytes(const TensorInfo& info) {
  const TensorInfo* own = find(info.name);
  if (own == nullptr || own->begin != info.begin || own->end != info.end) {
    nibble::detail::fail(ErrorCode::invalid_argument, "mapped_bytes: info for tensor \"", info.name,
                         "\" does not describe a tensor of \"", path_, "\"");
  }
  if (!mapping_) mapping_ = std::make_unique<MappedFile>(MappedFile::open(path_));
  const auto end = static_cast<uint64_t>(data_start_ + own->end);
  if (end > mapping_->size()) {
    nibble::detail::fail(ErrorCode::io, "safetensors file \"", path_, "\" is truncated: tensor \"",
                         own->name, "\" ends at byte ", end, " but the mapping holds ",
                         mapping_->size());
  }
  return mapping_->data() + data_start_ + own->begin;
}

inline std::vector<float> SafetensorsFile::read_f32(std::string_view name) {
  const TensorInfo* info = find(name);
  if (info == nullptr) {
    nibble::detail::fail(ErrorCode::invalid_argument, "read_f32: no tensor named \"", name,
                         "\" in \"", path_, "\"");
  }
  if (info->dtype != DType::f32 && info->dtype != DType::f16 && info->dtype != DType::bf16) {
    nibble::detail::fail(ErrorCode::type_mismatch, "read_f32: tensor \"", info->name,
                         "\" has dtype ", to_string(info->dtype), " (expected F32, F16 or BF16)");
  }
  const auto count = static_cast<std::size_t>(info->numel());
  std::vector<unsigned char> bytes(static_cast<std::size_t>(info->size_bytes()));
  read_raw(*info, bytes.data(), bytes.size());

  std::vector<float> values(count);
  // One loop per dtype, so the per-element work is a load and a widening, no dtype switch.
  const auto decode = [&](int element_bytes, auto widen) {
    for (std::size_t index = 0; index < count; ++index) {
      const unsigned char* element = bytes.data() + index * static_cast<std::size_t>(element_bytes);
      values[index] = widen(detail::load_le(element, element_bytes));
    }
  };
  switch (info->dtype) {
    case DType::f32:
      decode(4, [](uint64_t bits) {
        return nibble::detail::float_from_bits(static_cast<uint32_t>(bits));
      });
      break;
    case DType::f16:
      decode(2,
             [](uint64_t bits) { return to_float(fp16::from_bits(static_cast<uint16_t>(bits))); });
      break;
    default:  // bf16, the only other dtype let through above
      decode(2,
             [](uint64_t bits) { return to_float(bf16::from_bits(static_cast<uint16_t>(bits))); });
      break;
  }
  return values;
}

// ---- writing ----------------------------------------------------------------------------------
//
// SafetensorsWriter streams a file: every tensor is declared first (name, dtype, shape), which
// fixes the header, and then each tensor's bytes are written in declaration order, so a caller
// holds one tensor at a time (peak memory O(largest tensor), not O(model)).
//
//   SafetensorsWriter writer;
//   writer.add_metadata("format", "pt");
//   writer.declare("w.qweight", DType::u8, {4096, 32, 64});   // ... every tensor
//   AtomicOutputFile out(path);                              // io/atomic_file.hpp
//   writer.begin(out.stream());                              // the 8-byte N and the header
//   writer.write("w.qweight", bytes, byte_count);            // ... each tensor, in order
//   writer.finish();                                         // all declared tensors written?
//   out.commit();
//
// The header is what the reference writer (safetensors' Rust `serialize`) produces up to key
// order: a compact JSON object, "__metadata__" first when there is any, tensors in declaration
// order with contiguous data_offsets from 0, and spaces appended so that 8 + N is a multiple of
// 8 (the data section starts 8-byte aligned). Names and metadata must be valid UTF-8 and are
// JSON-escaped. SafetensorsFile::open accepts everything this writes (tested both ways, and the
// Python tests open it with the `safetensors` package).
class SafetensorsWriter {
 public:
  void add_metadata(std::string key, std::string value) {
    check_not_begun("add_metadata");
    check_utf8("metadata key", key);
    check_utf8("metadata value", value);
    if (metadata_.count(key) != 0) {
      nibble::detail::fail(ErrorCode::invalid_argument, "safetensors metadata key \"", key,
                           "\" given twice");
    }
    metadata_.emplace(std::move(key), std::move(value));
  }

  void declare(std::string name, DType dtype, std::vector<int64_t> shape) {
    check_not_begun("declare");
    if (name.empty() || name == "__metadata__") {
      nibble::detail::fail(ErrorCode::invalid_argument, "safetensors tensor name \"", name,
                           "\" is reserved or empty");
    }
    check_utf8("tensor name", name);
    for (const TensorInfo& info : tensors_) {
      if (info.name == name) {
        nibble::detail::fail(ErrorCode::invalid_argument, "safetensors tensor \"", name,
                             "\" declared twice");
      }
    }
    TensorInfo info;
    info.name = std::move(name);
    info.dtype = dtype;
    for (int64_t dim : shape) {
      if (dim < 0) {
        nibble::detail::fail(ErrorCode::invalid_argument, "safetensors tensor \"", info.name,
                             "\": shape ", detail::shape_text(shape), " has a negative extent");
      }
    }
    info.shape = std::move(shape);
    const int64_t bytes = nibble::detail::checked_mul(
        info.numel(), static_cast<int64_t>(size_of(dtype)), "safetensors tensor byte size");
    info.begin = data_bytes_;
    info.end = nibble::detail::checked_add(data_bytes_, bytes, "safetensors data section size");
    data_bytes_ = info.end;
    tensors_.push_back(std::move(info));
  }

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The file's size once finished: 8 + N + data.
  int64_t file_bytes() const {
    return 8 + static_cast<int64_t>(header_text().size()) + data_bytes_;
  }

  // Writes N and the header; afterwards only write() and finish() are allowed.
  void begin(std::ostream& out) {
    check_not_begun("begin");
    const std::string header = header_text();
    unsigned char length[8];
    for (int index = 0; index < 8; ++index)
      length[index] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >>
                                                 (8 * index));  // little-endian u64
    out_ = &out;
    put(reinterpret_cast<const char*>(length), 8, "the header length");
    put(header.data(), static_cast<int64_t>(header.size()), "the header");
  }

  // The next declared tensor's bytes (little-endian, row-major): `name` must be that tensor and
  // `byte_count` its exact size.
  void write(std::string_view name, const void* bytes, std::size_t byte_count) {
    if (byte_count > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      nibble::detail::fail(ErrorCode::overflow, "SafetensorsWriter::write: byte_count ", byte_count,
                           " does not fit int64");
    }
    const TensorInfo& info = expect_next("write", name, static_cast<int64_t>(byte_count));
    if (byte_count > 0 && bytes == nullptr) {
      nibble::detail::fail(ErrorCode::null_pointer, "SafetensorsWriter::write(\"", name,
                           "\"): bytes is null");
    }
    put(static_cast<const char*>(bytes), info.size_bytes(), "tensor \"" + info.name + "\"");
    ++next_;
  }

  // The next declared tensor's bytes, produced by `produce(stream)` writing exactly byte_count
  // bytes to the stream (for tensors streamed in pieces, e.g. from a spool file).
  template <class Produce>
  void write_from(std::string_view name, int64_t byte_count, Produce&& produce) {
    const TensorInfo& info = expect_next("write_from", name, byte_count);
    const std::streampos start = out_->tellp();
    produce(*out_);
    if (!out_->good()) {
      nibble::detail::fail(ErrorCode::io, "safetensors: writing tensor \"", info.name,
                           "\" failed (disk full?)");
    }
    const std::streampos end = out_->tellp();
    if (start != std::streampos(-1) && end != std::streampos(-1) &&
        static_cast<int64_t>(end - start) != byte_count) {
      nibble::detail::fail(ErrorCode::shape_mismatch, "SafetensorsWriter::write_from(\"", name,
                           "\"): ", static_cast<int64_t>(end - start), " bytes produced, expected ",
                           byte_count);
    }
    ++next_;
  }

  // Checks that every declared tensor was written.
  void finish() {
    if (out_ == nullptr || next_ != tensors_.size()) {
      nibble::detail::fail(
          ErrorCode::invalid_argument, "SafetensorsWriter::finish: ", next_, " of ",
          tensors_.size(), " declared tensors written",
          next_ < tensors_.size() ? " (next: \"" + tensors_[next_].name + "\")" : std::string());
    }
    out_->flush();
    if (!out_->good())
      nibble::detail::fail(ErrorCode::io, "safetensors: flushing the output failed");
  }

  // The header as written: compact JSON padded with spaces so that 8 + N % 8 == 0.
  std::string header_text() const {
    std::string text = "{";
    bool first = true;
    if (!metadata_.empty()) {
      text += "\"__metadata__\":{";
      for (const auto& [key, value] : metadata_) {
        if (!first) text += ',';
        first = false;
        append_json_string(text, key);
        text += ':';
        append_json_string(text, value);
      }
      text += '}';
      first = false;
    }
    for (const TensorInfo& info : tensors_) {
      if (!first) text += ',';
      first = false;
      append_json_string(text, info.name);
      text += ":{\"dtype\":\"";
      text += to_string(info.dtype);
      text += "\",\"shape\":[";
      for (std::size_t axis = 0; axis < info.shape.size(); ++axis)
        text += (axis ? "," : "") + std::to_string(info.shape[axis]);
      text += "],\"data_offsets\":[" + std::to_string(info.begin) + "," + std::to_string(info.end) +
              "]}";
    }
    text += '}';
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
  }

 private:
  void check_not_begun(const char* what) const {
    if (out_ != nullptr) {
      nibble::detail::fail(ErrorCode::invalid_argument, "SafetensorsWriter::", what,
                           " after begin(): the header is already written");
    }
  }
  // The next declared tensor, checked against `name` and `byte_count`.
  const TensorInfo& expect_next(const char* who, std::string_view name, int64_t byte_count) const {
    if (out_ == nullptr) {
      nibble::detail::fail(ErrorCode::invalid_argument, "SafetensorsWriter::", who,
                           " before begin()");
    }
    if (next_ >= tensors_.size()) {
      nibble::detail::fail(ErrorCode::invalid_argument, "SafetensorsWriter::", who, "(\"", name,
                           "\"): all ", tensors_.size(), " declared tensors are already written");
    }
    const TensorInfo& info = tensors_[next_];
    if (name != info.name) {
      nibble::detail::fail(ErrorCode::invalid_argument, "SafetensorsWriter::", who, "(\"", name,
                           "\"): expected tensor \"", info.name,
                           "\" next (tensors are written in declaration order)");
    }
    if (byte_count != info.size_bytes()) {
      nibble::detail::fail(ErrorCode::shape_mismatch, "SafetensorsWriter::", who, "(\"", name,
                           "\"): ", byte_count, " bytes given, but ", to_string(info.dtype), " ",
                           detail::shape_text(info.shape), " is ", info.size_bytes(), " bytes");
    }
    return info;
  }
  static void check_utf8(const char* what, const std::string& text) {
    const std::size_t bad = detail::first_invalid_utf8(text);
    if (bad != text.size()) {
      nibble::detail::fail(ErrorCode::invalid_argument, "safetensors ", what,
                           ": invalid UTF-8 at byte ", bad);
    }
  }
  // JSON string literal: quote, backslash and control characters escaped (RFC 8259 section 7);
  // other bytes (UTF-8 already checked) pass through.
  static void append_json_string(std::string& text, const std::string& value) {
    text += '"';
    for (const char character : value) {
      const auto byte = static_cast<unsigned char>(character);
      if (character == '"' || character == '\\') {
        text += '\\';
        text += character;
      } else if (byte < 0x20) {
        static const char kHex[] = "0123456789abcdef";
        text += "\\u00";
        text += kHex[byte >> 4];
        text += kHex[byte & 0xf];
      } else {
        text += character;
      }
    }
    text += '"';
  }
  void put(const char* bytes, int64_t byte_count, const std::string& what) {
    out_->write(bytes, static_cast<std::streamsize>(byte_count));
    if (!out_->good()) {
      nibble::detail::fail(ErrorCode::io, "safetensors: writing ", what, " (", byte_count,
                           " bytes) failed (disk full?)");
    }
  }

  std::map<std::string, std::string> metadata_;
  std::vector<TensorInfo> tensors_;
  int64_t data_bytes_ = 0;
  std::ostream* out_ = nullptr;
  std::size_t next_ = 0;
};

}  // namespace nibble::io
