// check_outputs_spare_inputs: refuse, before anything is written, a plan whose outputs would
// replace or alter a file it reads.
//
//   check_outputs_spare_inputs(files_read, output_directory, files_to_write);
//
// A converter that writes where it reads destroys its input when the output replaces it: the
// same file under another spelling ("d/./model.safetensors"), through a symbolic link, or as a
// hard link (two names, one file). So this refuses, with ErrorCode::invalid_argument naming both
// paths and how they meet:
//   - an output directory that is the directory holding an input (the same directory however
//     spelled, or a link to it): every output written there sits beside the files read;
//   - an output that exists and is the same file as an input (equivalent: same device and inode,
//     which covers other spellings, symbolic links and hard links);
//   - two outputs that are one file (one would overwrite the other).
// Only files that exist can be the same file: outputs still to be created are compared by their
// directory (the rule above) and by name against each other.
#pragma once

#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "nibble/core/error.hpp"

namespace nibble::io {

namespace detail {

// `path` absolute and lexically normal, without a trailing separator: one spelling per path.
inline std::filesystem::path normal_path(const std::filesystem::path& path) {
  std::error_code error;
  std::filesystem::path normal = std::filesystem::absolute(path, error).lexically_normal();
  if (!normal.has_filename() && normal.has_parent_path() && normal != normal.root_path()) {
    normal = normal.parent_path();
  }
  return normal;
}

// How `output` and `input` (the same file) meet, for the message.
inline std::string link_kind(const std::filesystem::path& output,
                             const std::filesystem::path& input) {
  std::error_code error;
  if (std::filesystem::is_symlink(output, error) || std::filesystem::is_symlink(input, error)) {
    return "a symbolic link to it";
  }
  if (normal_path(output) == normal_path(input)) return "the same path";
  const auto links = std::filesystem::hard_link_count(output, error);
  if (!error && links > 1) return "a hard link to it";
  return "the same file under another name";
}

inline bool same_file(const std::filesystem::path& a, const std::filesystem::path& b) {
  std::error_code error;
  const bool equal = std::filesystem::equivalent(a, b, error);
  return !error && equal;
}

inline std::filesystem::path directory_of(const std::filesystem::path& file) {
  const std::filesystem::path parent = file.parent_path();
  return parent.empty() ? std::filesystem::path(".") : parent;
}

}  // namespace detail

inline void check_outputs_spare_inputs(const std::vector<std::filesystem::path>& inputs,
                                       const std::filesystem::path& output_directory,
                                       const std::vector<std::filesystem::path>& outputs) {
  for (const auto& input : inputs) {
    const std::filesystem::path input_directory = detail::directory_of(input);
    if (detail::same_file(output_directory, input_directory)) {
      nibble::detail::fail(ErrorCode::invalid_argument, "the output directory \"",
                           output_directory.string(), "\" is the directory of the input \"",
                           input.string(),
                           "\": writing there could replace what is read (expected another "
                           "directory)");
    }
  }
  for (const auto& output : outputs) {
    for (const auto& input : inputs) {
      if (detail::same_file(output, input)) {
        nibble::detail::fail(ErrorCode::invalid_argument, "the output \"", output.string(),
                             "\" is the input \"", input.string(), "\" (",
                             detail::link_kind(output, input),
                             "): writing it would destroy the input (expected another path)");
      }
    }
  }
  for (std::size_t first = 0; first < outputs.size(); ++first) {
    for (std::size_t second = first + 1; second < outputs.size(); ++second) {
      const bool same_name = detail::normal_path(outputs[first]) ==
                             detail::normal_path(outputs[second]);
      if (same_name || detail::same_file(outputs[first], outputs[second])) {
        nibble::detail::fail(ErrorCode::invalid_argument, "two outputs are one file: \"",
                             outputs[first].string(), "\" and \"", outputs[second].string(),
                             "\" (expected distinct paths)");
      }
    }
  }
}

}  // namespace nibble::io
