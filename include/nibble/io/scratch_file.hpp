// ScratchFile: an anonymous temporary file in a given directory, for data that is written once
// and read back (a spool), and that must never outlive the process, however it ends.
//
//   ScratchFile spool = ScratchFile::create("out_dir");   // on out_dir's file system
//   const int64_t at = spool.append(bytes, count);         // appended at offset `at`
//   spool.read_at(at, buffer, count);                       // read back
//
// The file has no name from the moment it exists: on Linux it is made with O_TMPFILE; elsewhere
// (or where the file system refuses O_TMPFILE) it is created under a unique name and unlinked
// at once. So a SIGKILL, a crash or a power cut leaves no debris to clean, and its space is
// returned by the system when the descriptor closes. The bytes count against the directory's
// file system, which is where a disk-full error then shows up (ErrorCode::io, with the reason).
// Without POSIX, a named file removed by the destructor stands in (debris possible on a crash).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include "nibble/core/error.hpp"
#include "nibble/io/atomic_file.hpp"

#if NIBBLE_HAVE_POSIX_FILES
#include <fcntl.h>
#include <unistd.h>
#endif

namespace nibble::io {

class ScratchFile {
 public:
  ScratchFile(ScratchFile&& other) noexcept
      : directory_(std::move(other.directory_)),
        size_(std::exchange(other.size_, 0))
#if NIBBLE_HAVE_POSIX_FILES
        ,
        descriptor_(std::exchange(other.descriptor_, -1))
#else
        ,
        path_(std::exchange(other.path_, std::string())),
        file_(std::move(other.file_))
#endif
  {
  }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  ScratchFile& operator=(ScratchFile&&) = delete;
  ~ScratchFile() {
#if NIBBLE_HAVE_POSIX_FILES
    if (descriptor_ >= 0) ::close(descriptor_);
#else
    if (!path_.empty()) {
      file_.close();
      std::error_code ignored;
      std::filesystem::remove(path_, ignored);
    }
#endif
  }

  // Throws ErrorCode::io naming the directory and the reason when no file can be made there.
  static ScratchFile create(const std::string& directory) {
    ScratchFile file(directory);
#if NIBBLE_HAVE_POSIX_FILES
#if defined(O_TMPFILE)
    file.descriptor_ = ::open(directory.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
    if (file.descriptor_ < 0) {
      // No O_TMPFILE here: a unique name, unlinked as soon as it is open.
      for (unsigned serial = 0; serial < 1000 && file.descriptor_ < 0; ++serial) {
        const std::string path = (std::filesystem::path(directory) /
                                  (".nibble-scratch-" + std::to_string(detail::process_id()) +
                                   "-" + std::to_string(serial)))
                                     .string();
        file.descriptor_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (file.descriptor_ >= 0) {
          ::unlink(path.c_str());
        } else if (errno != EEXIST) {
          break;
        }
      }
    }
    if (file.descriptor_ < 0) {
      nibble::detail::fail(ErrorCode::io, "cannot create a scratch file in \"", directory,
                           "\": ", detail::system_message(errno),
                           " (expected a writable directory)");
    }
#else
    file.path_ = (std::filesystem::path(directory) /
                  (".nibble-scratch-" + std::to_string(detail::process_id())))
                     .string();
    file.file_.open(file.path_, std::ios::in | std::ios::out | std::ios::binary | std::ios::trunc);
    if (!file.file_.is_open()) {
      file.path_.clear();
      nibble::detail::fail(ErrorCode::io, "cannot create a scratch file in \"", directory, "\"");
    }
#endif
    return file;
  }

  // Appends `count` bytes; returns the offset they start at.
  int64_t append(const void* bytes, int64_t count) {
    const int64_t offset = size_;
#if NIBBLE_HAVE_POSIX_FILES
    const char* next = static_cast<const char*>(bytes);
    int64_t left = count;
    while (left > 0) {
      const ::ssize_t done = ::pwrite(descriptor_, next, static_cast<std::size_t>(std::min<int64_t>(
                                                             left, int64_t{1} << 30)),
                                      static_cast<off_t>(size_));
      if (done < 0 && errno == EINTR) continue;
      if (done <= 0) {
        nibble::detail::fail(ErrorCode::io, "writing ", count, " bytes to a scratch file in \"",
                             directory_, "\" failed: ",
                             detail::system_message(done < 0 ? errno : EIO));
      }
      next += done;
      left -= done;
      size_ += done;
    }
#else
    file_.seekp(size_);
    file_.write(static_cast<const char*>(bytes), static_cast<std::streamsize>(count));
    if (!file_.good()) {
      nibble::detail::fail(ErrorCode::io, "writing ", count, " bytes to a scratch file in \"",
                           directory_, "\" failed (disk full?)");
    }
    size_ += count;
#endif
    return offset;
  }

  // Reads bytes [offset, offset + count), which append() wrote.
  void read_at(int64_t offset, void* out, int64_t count) {
    if (offset < 0 || count < 0 || offset > size_ || count > size_ - offset) {
      nibble::detail::fail(ErrorCode::invalid_argument, "ScratchFile::read_at: bytes [", offset,
                           ", ", offset + count, ") are outside the ", size_, " bytes written");
    }
#if NIBBLE_HAVE_POSIX_FILES
    char* next = static_cast<char*>(out);
    while (count > 0) {
      const ::ssize_t done = ::pread(descriptor_, next, static_cast<std::size_t>(std::min<int64_t>(
                                                            count, int64_t{1} << 30)),
                                     static_cast<off_t>(offset));
      if (done < 0 && errno == EINTR) continue;
      if (done <= 0) {
        nibble::detail::fail(ErrorCode::io, "reading a scratch file in \"", directory_,
                             "\" failed: ", detail::system_message(done < 0 ? errno : EIO));
      }
      next += done;
      offset += done;
      count -= done;
    }
#else
    file_.seekg(offset);
    file_.read(static_cast<char*>(out), static_cast<std::streamsize>(count));
    if (file_.gcount() != count) {
      nibble::detail::fail(ErrorCode::io, "reading a scratch file in \"", directory_, "\" failed");
    }
#endif
  }

  int64_t size() const { return size_; }

 private:
  explicit ScratchFile(std::string directory) : directory_(std::move(directory)) {}

  std::string directory_;
  int64_t size_ = 0;
#if NIBBLE_HAVE_POSIX_FILES
  int descriptor_ = -1;
#else
  std::string path_;
  std::fstream file_;
#endif
};

}  // namespace nibble::io
