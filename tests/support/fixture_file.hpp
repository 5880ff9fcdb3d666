// Binary fixtures committed under tests/reference/ (written by the Python scripts there from the
// real tools): the path next to the test sources, and a reader of their little-endian fields.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace nibble::testing {

// tests/reference/<name>, found from this header's own path (tests/support/...).
inline std::string reference_path(const std::string& name) {
  const std::string source = __FILE__;
  const std::size_t slash = source.find_last_of("/\\");
  const std::string support = slash == std::string::npos ? "." : source.substr(0, slash);
  return support + "/../reference/" + name;
}

// Reads a whole fixture and hands out its fields in order; every read past the end, a wrong
// magic, or bytes left over throw std::runtime_error naming the file and its writer.
class FixtureFile {
 public:
  FixtureFile(const std::string& path, const std::string& writer, const std::string& magic)
      : path_(path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error("cannot open " + path + " (written by " + writer + ")");
    data_.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
    std::string found(magic.size(), '\0');
    take(found.data(), found.size());
    if (found != magic) throw std::runtime_error(path + ": bad magic (expected " + magic + ")");
  }

  void take(void* out, std::size_t n) {
    if (at_ + n > data_.size()) throw std::runtime_error(path_ + " is truncated");
    std::memcpy(out, data_.data() + at_, n);
    at_ += n;
  }
  uint32_t u32() {
    uint32_t value = 0;
    take(&value, 4);
    return value;
  }
  std::string text() {  // u32 length, then the bytes
    std::string value(u32(), '\0');
    take(value.data(), value.size());
    return value;
  }
  template <class T>
  std::vector<T> values(std::size_t count) {
    std::vector<T> out(count);
    take(out.data(), count * sizeof(T));
    return out;
  }
  void expect_end() const {
    if (at_ != data_.size()) throw std::runtime_error(path_ + ": trailing bytes");
  }

 private:
  std::string path_;
  std::vector<char> data_;
  std::size_t at_ = 0;
};

}  // namespace nibble::testing
