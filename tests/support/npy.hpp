// Reads .npy files (numpy's array format) for tests: little-endian or byte-typed, C order.
//
//   NpyArray a = read_npy("codes.npy");   // a.descr "|u1", a.shape {rows, K}, a.bytes raw data
//
// Format (numpy.lib.format): "\x93NUMPY", major, minor, header length (2 bytes little-endian in
// version 1.0, 4 bytes in 2.0/3.0), then a Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } padded with spaces, then the data.
// Anything else (big-endian, Fortran order, object arrays, a short file) throws runtime_error.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace nibble::testing {

struct NpyArray {
  std::string descr;           // numpy type string: "<f4", "<f2", "<u2", "|u1", "<i4", ...
  std::vector<int64_t> shape;  // empty for a 0-d array
  std::vector<uint8_t> bytes;  // the data, C order

  int64_t numel() const {
    int64_t count = 1;
    for (int64_t dim : shape)
      count *= dim;
    return count;
  }
};

namespace detail {

[[noreturn]] inline void npy_fail(const std::string& path, const std::string& why) {
  throw std::runtime_error("read_npy(" + path + "): " + why);
}

// The text after "'key':" in the header dict, with leading spaces skipped.
inline std::string npy_value_after(const std::string& header, const std::string& key,
                                   const std::string& path) {
  const std::size_t at = header.find("'" + key + "':");
  if (at == std::string::npos) npy_fail(path, "header has no '" + key + "': " + header);
  std::size_t start = at + key.size() + 3;
  while (start < header.size() && header[start] == ' ')
    ++start;
  return header.substr(start);
}

// Bytes per element of a supported descr: byte-order mark ('<' or '|'), kind, size in bytes.
inline int64_t npy_item_size(const std::string& descr, const std::string& path) {
  const bool known_kind = descr.size() == 3 && (descr[1] == 'f' || descr[1] == 'u' ||
                                                descr[1] == 'i' || descr[1] == 'b');
  const bool little_or_bytes = !descr.empty() && (descr[0] == '<' || descr[0] == '|');
  if (!known_kind || !little_or_bytes || descr[2] < '1' || descr[2] > '8') {
    npy_fail(path, "unsupported dtype '" + descr + "' (expected little-endian numbers like '<f4')");
  }
  return descr[2] - '0';
}

}  // namespace detail

inline NpyArray read_npy(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) detail::npy_fail(path, "cannot open the file");
  const std::vector<char> content((std::istreambuf_iterator<char>(file)),
                                  std::istreambuf_iterator<char>());
  const std::size_t size = content.size();
  if (size < 10 || std::memcmp(content.data(), "\x93NUMPY", 6) != 0) {
    detail::npy_fail(path, "not a .npy file (no \\x93NUMPY magic)");
  }
  const auto byte = [&](std::size_t i) { return static_cast<std::size_t>(uint8_t(content[i])); };
  const std::size_t major = byte(6);
  std::size_t header_begin = 0;
  std::size_t header_length = 0;
  if (major == 1) {
    header_begin = 10;
    header_length = byte(8) | (byte(9) << 8);
  } else if (major == 2 || major == 3) {
    if (size < 12) detail::npy_fail(path, "truncated header");
    header_begin = 12;
    header_length = byte(8) | (byte(9) << 8) | (byte(10) << 16) | (byte(11) << 24);
  } else {
    detail::npy_fail(path, "unsupported format version " + std::to_string(major));
  }
  if (header_begin + header_length > size) detail::npy_fail(path, "truncated header");
  const std::string header(content.data() + header_begin, header_length);

  NpyArray array;
  const std::string descr_text = detail::npy_value_after(header, "descr", path);
  const std::size_t descr_end = descr_text.find('\'', 1);
  if (descr_text.empty() || descr_text[0] != '\'' || descr_end == std::string::npos) {
    detail::npy_fail(path, "descr is not a simple type string: " + header);
  }
  array.descr = descr_text.substr(1, descr_end - 1);
  if (detail::npy_value_after(header, "fortran_order", path).rfind("False", 0) != 0) {
    detail::npy_fail(path, "Fortran-order arrays are not supported");
  }
  const std::string shape_text = detail::npy_value_after(header, "shape", path);
  const std::size_t shape_end = shape_text.find(')');
  if (shape_text.empty() || shape_text[0] != '(' || shape_end == std::string::npos) {
    detail::npy_fail(path, "shape is not a tuple: " + header);
  }
  std::size_t pos = 1;
  while (pos < shape_end) {
    while (pos < shape_end && (shape_text[pos] == ' ' || shape_text[pos] == ','))
      ++pos;
    if (pos == shape_end) break;
    std::size_t digits = 0;
    array.shape.push_back(std::stoll(shape_text.substr(pos, shape_end - pos), &digits));
    pos += digits;
  }

  const int64_t item_size = detail::npy_item_size(array.descr, path);
  const std::size_t data_begin = header_begin + header_length;
  const auto data_bytes = static_cast<std::size_t>(array.numel() * item_size);
  if (size - data_begin != data_bytes) {
    detail::npy_fail(path, "holds " + std::to_string(size - data_begin) + " data bytes, shape " +
                               "and dtype need " + std::to_string(data_bytes));
  }
  array.bytes.assign(content.begin() + static_cast<std::ptrdiff_t>(data_begin), content.end());
  return array;
}

}  // namespace nibble::testing
