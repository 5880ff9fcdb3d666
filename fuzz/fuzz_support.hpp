// Shared by the libFuzzer harnesses: a per-process scratch directory (in /dev/shm when there is
// one, so a file per input costs no disk), writing an input to a file there, and the contract
// every harness checks: a reader either succeeds or throws nibble::Error. Any other exception
// escapes LLVMFuzzerTestOneInput and libFuzzer reports it as a crash; a broken invariant calls
// fail(), which aborts with a message.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <unistd.h>

namespace nibble::fuzz {

inline const std::filesystem::path& scratch_directory() {
  static const std::filesystem::path directory = [] {
    std::error_code error;
    const std::filesystem::path base =
        std::filesystem::is_directory("/dev/shm", error) ? std::filesystem::path("/dev/shm")
                                                         : std::filesystem::temp_directory_path();
    std::filesystem::path made = base / ("nibble-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(made);
    return made;
  }();
  return directory;
}

// Writes `bytes` to `name` in the scratch directory (replacing it); returns its path.
inline std::string write_scratch(const std::string& name, std::string_view bytes) {
  const std::string path = (scratch_directory() / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write the scratch file %s\n", path.c_str());
    std::abort();
  }
  return path;
}

// A broken invariant (not an input error): report and abort, which libFuzzer records.
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz invariant broken: %s\n", what.c_str());
  std::abort();
}

}  // namespace nibble::fuzz
