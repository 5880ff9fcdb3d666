// AtomicOutputFile: write a file so that readers, and a machine that loses power, see either the
// old state or the whole new file, never a part of it.
//
//   AtomicOutputFile out("model.q4.safetensors");
//   out.stream() << ...;   // goes to "model.q4.safetensors.nibble-tmp-<pid>-<n>" beside it
//   out.commit();          // flush, fsync, close, rename over the destination, fsync the directory
//
// The protocol is the one SQLite and careful writers follow on POSIX:
//   1. the temporary is created beside the destination (same file system, so the rename is
//      atomic) with O_EXCL, never reusing a name, and an exclusive flock() is held on it while
//      this object lives: a later run can tell a temporary left by a killed process (unlocked)
//      from one a running process is writing (locked) — see remove_stale_temporaries();
//   2. commit() writes out the buffer, fsync()s the file (its bytes are on the disk), closes it
//      (NFS reports write errors at close), renames it over the destination (readers see the old
//      or the new file), and fsync()s the directory (the rename itself survives a power cut).
// If commit() is never reached (an exception, an early return, a cancelled run) the destructor
// deletes the temporary. A write error anywhere (disk full, a read-only file system) surfaces as
// ErrorCode::io naming the path and the system's reason, at the latest in commit(), and then
// nothing is left under either name. Without POSIX (no fsync or flock) the same steps run without
// the two fsyncs and the lock.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <ostream>
#include <streambuf>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "nibble/core/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#define NIBBLE_HAVE_POSIX_FILES 1
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#else
#define NIBBLE_HAVE_POSIX_FILES 0
#if defined(_WIN32)
#include <process.h>
#endif
#endif

namespace nibble::io {

// Every temporary's name is the destination's plus this marker, the writer's process id and a
// serial number: "<destination>.nibble-tmp-<pid>-<n>".
inline constexpr std::string_view kTemporaryMarker = ".nibble-tmp-";

namespace detail {

inline long process_id() {
#if NIBBLE_HAVE_POSIX_FILES
  return static_cast<long>(::getpid());
#elif defined(_WIN32)
  return static_cast<long>(_getpid());
#else
  return 0;
#endif
}

inline std::string system_message(int error_number) {
  return error_number != 0 ? std::strerror(error_number) : "unknown error";
}

#if NIBBLE_HAVE_POSIX_FILES
// A std::streambuf over a POSIX file descriptor: 1 MiB buffer, large writes passed straight
// through, EINTR and short writes retried. The first failing write's errno is kept for the
// message; the stream then reports badbit.
class FileDescriptorBuffer : public std::streambuf {
 public:
  explicit FileDescriptorBuffer(int descriptor) : descriptor_(descriptor), buffer_(1u << 20) {
    setp(buffer_.data(), buffer_.data() + buffer_.size());
  }
  int error_number() const { return error_number_; }
  // Writes out what is buffered; false (error_number() says why) if that failed.
  bool drain() { return sync() == 0; }

 protected:
  int_type overflow(int_type character) override {
    if (!drain()) return traits_type::eof();
    if (!traits_type::eq_int_type(character, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(character);
      pbump(1);
    }
    return traits_type::not_eof(character);
  }
  std::streamsize xsputn(const char* bytes, std::streamsize count) override {
    if (count >= static_cast<std::streamsize>(buffer_.size())) {
      if (!drain() || !write_all(bytes, static_cast<std::size_t>(count))) return 0;
      return count;
    }
    if (count > epptr() - pptr() && !drain()) return 0;
    std::memcpy(pptr(), bytes, static_cast<std::size_t>(count));
    pbump(static_cast<int>(count));
    return count;
  }
  int sync() override {
    const auto pending = static_cast<std::size_t>(pptr() - pbase());
    if (pending > 0 && !write_all(pbase(), pending)) return -1;
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    return 0;
  }
  // tellp(): the bytes written so far (this buffer only appends).
  pos_type seekoff(off_type offset, std::ios_base::seekdir direction,
                   std::ios_base::openmode which) override {
    if (offset != 0 || direction != std::ios_base::cur || (which & std::ios_base::out) == 0) {
      return pos_type(off_type(-1));
    }
    return pos_type(static_cast<off_type>(written_ + (pptr() - pbase())));
  }

 private:
  bool write_all(const char* bytes, std::size_t count) {
    if (error_number_ != 0) return false;
    while (count > 0) {
      const ::ssize_t done = ::write(descriptor_, bytes, std::min<std::size_t>(count, 1u << 30));
      if (done < 0) {
        if (errno == EINTR) continue;
        error_number_ = errno;
        return false;
      }
      if (done == 0) {
        error_number_ = EIO;
        return false;
      }
      bytes += done;
      count -= static_cast<std::size_t>(done);
      written_ += done;
    }
    return true;
  }

  int descriptor_;
  std::vector<char> buffer_;
  int64_t written_ = 0;
  int error_number_ = 0;
};

// fsync() of the directory holding `path`, so that a rename or creation in it is durable. File
// systems that cannot sync a directory (EINVAL, ENOTSUP) have nothing to sync; other errors are
// returned.
inline int sync_directory_of(const std::string& path) {
  std::filesystem::path directory = std::filesystem::path(path).parent_path();
  if (directory.empty()) directory = ".";
  const int descriptor = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (descriptor < 0) return errno;
  int result = 0;
  if (::fsync(descriptor) != 0 && errno != EINVAL && errno != ENOTSUP) result = errno;
  ::close(descriptor);
  return result;
}
#endif

}  // namespace detail

class AtomicOutputFile {
 public:
  explicit AtomicOutputFile(std::string path) : path_(std::move(path)), stream_(nullptr) {
    if (path_.empty()) nibble::detail::fail(ErrorCode::invalid_argument, "output path is empty");
    std::error_code status_error;
    if (std::filesystem::is_directory(path_, status_error)) {
      nibble::detail::fail(ErrorCode::io, "cannot write \"", path_, "\": it is a directory");
    }
    open_temporary();
  }
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  AtomicOutputFile& operator=(const AtomicOutputFile&) = delete;
  ~AtomicOutputFile() { discard(); }

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  std::ostream& stream() { return stream_; }
  bool committed() const { return committed_; }

  // Throws ErrorCode::io if any write failed (then the temporary is removed and the destination
  // is as it was); afterwards the destination holds every byte, durably.
  void commit() {
    if (committed_) return;
    if (temp_path_.empty()) {
      nibble::detail::fail(ErrorCode::invalid_argument, "AtomicOutputFile::commit(\"", path_,
                           "\") after discard()");
    }
    stream_.flush();
#if NIBBLE_HAVE_POSIX_FILES
    int error_number = buffer_->drain() && stream_.good() ? 0 : buffer_->error_number();
    const char* step = "writing";
    if (error_number == 0 && !stream_.good()) error_number = EIO;
    if (error_number == 0 && ::fsync(descriptor_) != 0) {
      error_number = errno;
      step = "syncing (fsync)";
    }
    const int descriptor = std::exchange(descriptor_, -1);
    if (::close(descriptor) != 0 && error_number == 0) {  // also releases the lock
      error_number = errno;
      step = "closing";
    }
    if (error_number != 0) {
      discard();
      nibble::detail::fail(ErrorCode::io, step, " \"", path_, "\" failed: ",
                           detail::system_message(error_number), "; nothing was written");
    }
#else
    const bool written = stream_.good();
    file_buffer_.close();
    if (!written) {
      discard();
      nibble::detail::fail(ErrorCode::io, "writing \"", path_,
                           "\" failed (disk full or file system error); nothing was written");
    }
#endif
    std::error_code rename_error;
    std::filesystem::rename(temp_path_, path_, rename_error);
    if (rename_error) {
      const std::string temp_path = temp_path_;
      discard();
      nibble::detail::fail(ErrorCode::io, "cannot rename \"", temp_path, "\" to \"", path_,
                           "\": ", rename_error.message(), "; nothing was written");
    }
    committed_ = true;
#if NIBBLE_HAVE_POSIX_FILES
    if (const int sync_error = detail::sync_directory_of(path_)) {
      nibble::detail::fail(ErrorCode::io, "\"", path_,
                           "\" is written, but syncing its directory failed: ",
                           detail::system_message(sync_error),
                           " (the file may not survive a power cut)");
    }
#endif
  }

  // Deletes the temporary (idempotent; also what the destructor does when not committed).
  void discard() noexcept {
    if (committed_ || temp_path_.empty()) return;
#if NIBBLE_HAVE_POSIX_FILES
    std::error_code ignored;
    std::filesystem::remove(temp_path_, ignored);  // unlink while still locked, then close
    if (descriptor_ >= 0) ::close(std::exchange(descriptor_, -1));
#else
    if (file_buffer_.is_open()) file_buffer_.close();
    std::error_code ignored;
    std::filesystem::remove(temp_path_, ignored);
#endif
    temp_path_.clear();
  }

 private:
  // Distinct temporaries for several AtomicOutputFiles on one path in one process.
  static std::atomic<unsigned long>& next_serial() {
    static std::atomic<unsigned long> serial{0};
    return serial;
  }

  void open_temporary() {
    const std::string prefix =
        path_ + std::string(kTemporaryMarker) + std::to_string(detail::process_id()) + "-";
#if NIBBLE_HAVE_POSIX_FILES
    for (int attempt = 0;; ++attempt) {
      temp_path_ = prefix + std::to_string(next_serial()++);
      descriptor_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (descriptor_ >= 0) break;
      const int open_errno = errno;
      if (open_errno == EEXIST && attempt < 1000) continue;  // a name left by a reused pid
      temp_path_.clear();
      nibble::detail::fail(ErrorCode::io, "cannot create a temporary beside \"", path_,
                           "\": ", detail::system_message(open_errno),
                           " (expected a writable directory)");
    }
    // Held until close: marks the temporary as in use (remove_stale_temporaries).
    (void)::flock(descriptor_, LOCK_EX | LOCK_NB);
    buffer_ = std::make_unique<detail::FileDescriptorBuffer>(descriptor_);
    stream_.rdbuf(buffer_.get());
#else
    temp_path_ = prefix + std::to_string(next_serial()++);
    errno = 0;
    file_buffer_.open(temp_path_, std::ios::out | std::ios::binary | std::ios::trunc);
    if (!file_buffer_.is_open()) {
      const int open_errno = errno;
      temp_path_.clear();
      nibble::detail::fail(ErrorCode::io, "cannot create a temporary beside \"", path_,
                           "\": ", detail::system_message(open_errno),
                           " (expected a writable directory)");
    }
    stream_.rdbuf(&file_buffer_);
#endif
  }

  std::string path_;
  std::string temp_path_;
#if NIBBLE_HAVE_POSIX_FILES
  int descriptor_ = -1;
  std::unique_ptr<detail::FileDescriptorBuffer> buffer_;
#else
  std::filebuf file_buffer_;
#endif
  std::ostream stream_;
  bool committed_ = false;
};

// Removes the temporaries that AtomicOutputFiles of processes which no longer run (killed, or a
// power cut) left in `directory`: files named "*<kTemporaryMarker><pid>-<n>" whose lock nobody
// holds. A temporary whose lock is free but whose writer process still exists and touched it in
// the last `grace` is kept (it may be an instant old, not yet locked). Symbolic links and other
// non-regular files are never touched. With `only_for`, only the temporaries of the destination
// of that file name are considered. Returns the paths removed; never throws (a directory that
// cannot be listed has nothing removed).
inline std::vector<std::string> remove_stale_temporaries(
    const std::string& directory, std::chrono::seconds grace = std::chrono::seconds(10),
    std::string_view only_for = {}) {
  std::vector<std::string> removed;
#if NIBBLE_HAVE_POSIX_FILES
  std::error_code error;
  std::filesystem::directory_iterator entries(directory, error);
  if (error) return removed;
  for (const auto& entry : entries) {
    const std::string name = entry.path().filename().string();
    const std::size_t marker = name.rfind(kTemporaryMarker);
    if (marker == std::string::npos || marker == 0) continue;
    if (!only_for.empty() && std::string_view(name).substr(0, marker) != only_for) continue;
    // "<pid>-<serial>", digits only.
    const std::string tail = name.substr(marker + kTemporaryMarker.size());
    const std::size_t dash = tail.find('-');
    const auto digits = [](std::string_view text) {
      return !text.empty() && text.size() <= 19 &&
             std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    if (dash == std::string::npos || !digits(std::string_view(tail).substr(0, dash)) ||
        !digits(std::string_view(tail).substr(dash + 1))) {
      continue;
    }
    const long owner = std::strtol(tail.substr(0, dash).c_str(), nullptr, 10);
    const std::string path = entry.path().string();
    const int descriptor = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (descriptor < 0) continue;  // a symbolic link (ELOOP), gone, or unreadable
    struct stat status {};
    const bool regular = ::fstat(descriptor, &status) == 0 && S_ISREG(status.st_mode);
    const bool unlocked = regular && ::flock(descriptor, LOCK_EX | LOCK_NB) == 0;
    if (unlocked) {
      const bool owner_runs = owner == detail::process_id() ||
                              (owner > 0 && (::kill(static_cast<pid_t>(owner), 0) == 0 ||
                                             errno == EPERM));
      const auto age = std::chrono::system_clock::now() -
                       std::chrono::system_clock::from_time_t(status.st_mtime);
      if (!(owner_runs && age < grace)) {
        std::error_code remove_error;
        if (std::filesystem::remove(entry.path(), remove_error)) removed.push_back(path);
      }
    }
    ::close(descriptor);
  }
#else
  (void)directory;
  (void)grace;
#endif
  return removed;
}

}  // namespace nibble::io
