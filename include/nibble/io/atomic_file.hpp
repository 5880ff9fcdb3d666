// AtomicOutputFile: write a file so that readers see either nothing or the whole of it.
//
//   AtomicOutputFile out("model.q4.safetensors");
//   out.stream() << ...;   // goes to "model.q4.safetensors.nibble-tmp-<pid>-<n>" beside it
//   out.commit();          // flush, close, check, rename over the destination
//
// The temporary lives in the destination's directory, so the final rename stays on one file
// system and is atomic (POSIX rename replaces the destination in one step). If commit() is never
// reached (an exception, an early return, a cancelled run) the destructor deletes the temporary:
// no partial output is ever left under the destination's name. A write error anywhere (disk
// full, a directory that is not writable) surfaces as ErrorCode::io naming the path, at the
// latest in commit().
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "nibble/core/error.hpp"

#if defined(_WIN32)
#include <process.h>
#else
#include <unistd.h>
#endif

namespace nibble::io {

class AtomicOutputFile {
 public:
  explicit AtomicOutputFile(std::string path) : path_(std::move(path)) {
    if (path_.empty()) nibble::detail::fail(ErrorCode::invalid_argument, "output path is empty");
    std::error_code status_error;
    if (std::filesystem::is_directory(path_, status_error)) {
      nibble::detail::fail(ErrorCode::io, "cannot write \"", path_, "\": it is a directory");
    }
    temp_path_ = path_ + ".nibble-tmp-" + std::to_string(process_id()) + "-" +
                 std::to_string(next_serial()++);
    errno = 0;
    stream_.open(temp_path_, std::ios::binary | std::ios::trunc);
    if (!stream_.is_open()) {
      const int open_errno = errno;
      nibble::detail::fail(ErrorCode::io, "cannot create \"", temp_path_, "\" (to write \"", path_,
                           "\"): ", open_errno != 0 ? std::strerror(open_errno) : "unknown error",
                           " (expected a writable directory)");
    }
  }
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  AtomicOutputFile& operator=(const AtomicOutputFile&) = delete;
  ~AtomicOutputFile() { discard(); }

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  std::ostream& stream() { return stream_; }

  // Throws ErrorCode::io if any write failed; afterwards the destination holds every byte.
  void commit() {
    if (committed_) return;
    stream_.flush();
    const bool written = stream_.good();
    stream_.close();
    if (!written || stream_.fail()) {
      discard();
      nibble::detail::fail(ErrorCode::io, "writing \"", path_,
                           "\" failed (disk full or file system error); nothing was written");
    }
    std::error_code rename_error;
    std::filesystem::rename(temp_path_, path_, rename_error);
    if (rename_error) {
      const std::string temp_path = temp_path_;
      discard();
      nibble::detail::fail(ErrorCode::io, "cannot rename \"", temp_path, "\" to \"", path_,
                           "\": ", rename_error.message());
    }
    committed_ = true;
  }

  // Deletes the temporary (idempotent; also what the destructor does when not committed).
  void discard() noexcept {
    if (committed_ || temp_path_.empty()) return;
    if (stream_.is_open()) stream_.close();
    std::error_code ignored;
    std::filesystem::remove(temp_path_, ignored);
    temp_path_.clear();
  }

 private:
  static long process_id() {
#if defined(_WIN32)
    return static_cast<long>(_getpid());
#else
    return static_cast<long>(getpid());
#endif
  }
  // Distinct temporaries for several AtomicOutputFiles on one path in one process.
  static std::atomic<unsigned long>& next_serial() {
    static std::atomic<unsigned long> serial{0};
    return serial;
  }

  std::string path_;
  std::string temp_path_;
  std::ofstream stream_;
  bool committed_ = false;
};

}  // namespace nibble::io
