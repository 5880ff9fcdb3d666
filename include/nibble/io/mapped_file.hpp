// MappedFile: a whole file mapped read-only into memory (POSIX mmap), move-only, unmapped on
// destruction.
//
//   MappedFile file = MappedFile::open("model.safetensors");
//   const unsigned char* bytes = file.data();   // file.size() bytes, the file's contents
//
// Pages are read on first touch and shared with the page cache, so mapping a large checkpoint
// costs address space, not memory, and a tensor read through the mapping is not copied. A
// caveat every mmap user has: if another process truncates the file while it is mapped, touching
// the lost pages raises SIGBUS; readers that must survive that use the stream reads instead
// (SafetensorsFile::read_raw, which report a truncation as ErrorCode::io). On systems without
// mmap, open() reads the file into memory instead (same interface).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "nibble/core/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#define NIBBLE_HAVE_MMAP 1
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#else
#define NIBBLE_HAVE_MMAP 0
#endif

namespace nibble::io {

class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept { *this = std::move(other); }
  MappedFile& operator=(MappedFile&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      mapped_ = std::exchange(other.mapped_, false);
      copy_ = std::move(other.copy_);
      path_ = std::move(other.path_);
    }
    return *this;
  }
  ~MappedFile() { release(); }

  // Throws ErrorCode::io naming the path and the system's reason when it cannot be mapped.
  static MappedFile open(const std::string& path) {
    MappedFile file;
    file.path_ = path;
#if NIBBLE_HAVE_MMAP
    const int descriptor = ::open(path.c_str(), O_RDONLY);
    if (descriptor < 0) {
      nibble::detail::fail(ErrorCode::io, "cannot open \"", path,
                           "\" to map it: ", std::strerror(errno));
    }
    struct stat status {};
    if (::fstat(descriptor, &status) != 0) {
      const int stat_errno = errno;
      ::close(descriptor);
      nibble::detail::fail(ErrorCode::io, "cannot stat \"", path,
                           "\": ", std::strerror(stat_errno));
    }
    file.size_ = static_cast<std::size_t>(status.st_size);
    if (file.size_ > 0) {  // mmap of 0 bytes is an error; an empty file maps to no bytes
      void* address = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, descriptor, 0);
      const int map_errno = errno;
      ::close(descriptor);  // the mapping keeps its own reference to the file
      if (address == MAP_FAILED) {
        nibble::detail::fail(ErrorCode::io, "cannot map \"", path, "\" (", file.size_,
                             " bytes): ", std::strerror(map_errno));
      }
      file.data_ = static_cast<const unsigned char*>(address);
      file.mapped_ = true;
    } else {
      ::close(descriptor);
    }
#else
    std::ifstream in(path, std::ios::binary);
    if (!in) nibble::detail::fail(ErrorCode::io, "cannot open \"", path, "\"");
    file.copy_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    file.data_ = reinterpret_cast<const unsigned char*>(file.copy_.data());
    file.size_ = file.copy_.size();
#endif
    return file;
  }

  // Tells the system that bytes [offset, offset + size) will not be needed soon: their pages are
  // dropped from this process (re-read from the file if touched again), so a reader streaming
  // through a large file keeps O(one tensor) resident instead of O(file). Only whole pages inside
  // the range are released. A no-op without mmap.
  void release(std::size_t offset, std::size_t size) const noexcept {
#if NIBBLE_HAVE_MMAP
    if (!mapped_ || size == 0 || offset >= size_) return;
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t end = std::min(offset + size, size_);
    const std::size_t first = (offset + page - 1) / page * page;  // round the start up
    const std::size_t last = end / page * page;                   // and the end down
    if (last > first) {
      ::madvise(const_cast<unsigned char*>(data_) + first, last - first, MADV_DONTNEED);
    }
#else
    (void)offset;
    (void)size;
#endif
  }

  const unsigned char* data() const {
    return data_;
  }
  std::size_t size() const {
    return size_;
  }
  const std::string& path() const {
    return path_;
  }

 private:
  void release() noexcept {
#if NIBBLE_HAVE_MMAP
    if (mapped_) ::munmap(const_cast<unsigned char*>(data_), size_);
#endif
    data_ = nullptr;
    size_ = 0;
    mapped_ = false;
    copy_.clear();
  }

  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
  std::vector<char> copy_;  // the no-mmap fallback's bytes
  std::string path_;
};

}  // namespace nibble::io
