// Checkpoint: a model's safetensors weights as a converter reads them — one .safetensors file, or
// a Hugging Face model directory — with its config.json and small side files (tokenizer, ...),
// headers only (tensor data is read on demand through each SafetensorsFile).
//
//   Checkpoint model = Checkpoint::open("path/to/model");   // or ".../model.safetensors"
//   for (const CheckpointTensor& tensor : model.tensors()) ...   // shard order, then offset order
//
// A directory's weights are, in this order of preference:
//   1. the shards that model.safetensors.index.json names ({"weight_map": {tensor: shard}}),
//      checked against the shards both ways: every tensor the index lists is in the shard it
//      names, and every tensor of those shards is listed, under that shard. A shard name must be
//      a plain file name in the directory ("../x.safetensors", "/abs", "a/b" are refused).
//      Other *.safetensors files in the directory are not read and are listed in
//      ignored_files() (a consolidated copy beside the shards, as some repositories ship), so a
//      front end can say so;
//   2. otherwise every *.safetensors file in the directory, in name order.
// A tensor name found in two shards is an error. config.json, when present, must be a JSON
// object (it is what a quantized checkpoint's config is written from). The index and config.json
// are read whole and must be at most kMaxCheckpointJsonBytes. Side files are the directory's
// other regular files below kMaxSideFileBytes, except weights in other formats, hidden files,
// config.json and the index. Errors are nibble::Error: io for files that cannot be read,
// malformed for contents that contradict each other or the format.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "nibble/core/error.hpp"
#include "nibble/io/json.hpp"
#include "nibble/io/safetensors.hpp"

namespace nibble::io {

inline constexpr std::uintmax_t kMaxCheckpointJsonBytes = std::uintmax_t{64} << 20;
inline constexpr std::uintmax_t kMaxSideFileBytes = std::uintmax_t{64} << 20;
inline constexpr std::string_view kShardIndexName = "model.safetensors.index.json";

struct CheckpointTensor {
  TensorInfo info;
  SafetensorsFile* file = nullptr;  // owned by the Checkpoint
};

// The whole of a small text file (at most `max_bytes`); `what` names it in errors.
inline std::string read_small_file(const std::filesystem::path& path, std::uintmax_t max_bytes,
                                   std::string_view what) {
  std::error_code error;
  const std::uintmax_t size = std::filesystem::file_size(path, error);
  if (error) {
    nibble::detail::fail(ErrorCode::io, "cannot read ", what, " \"", path.string(),
                         "\": ", error.message());
  }
  if (size > max_bytes) {
    nibble::detail::fail(ErrorCode::malformed, what, " \"", path.string(), "\" is ", size,
                         " bytes (expected at most ", max_bytes, ")");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) nibble::detail::fail(ErrorCode::io, "cannot read ", what, " \"", path.string(), "\"");
  std::string text(static_cast<std::size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size) {
    nibble::detail::fail(ErrorCode::io, "reading ", what, " \"", path.string(), "\" got ",
                         in.gcount(), " of ", size, " bytes (it changed while read?)");
  }
  return text;
}

class Checkpoint {
 public:
  static Checkpoint open(const std::string& path);

  // Where the side files live: the directory, or a single file's own directory.
  const std::filesystem::path& directory() const { return directory_; }
  const std::vector<CheckpointTensor>& tensors() const { return tensors_; }
  // config.json (an object), when present.
  const std::optional<JsonValue>& config() const { return config_; }
  const std::vector<std::filesystem::path>& side_files() const { return side_files_; }
  // *.safetensors files of the directory that the shard index does not name (not read).
  const std::vector<std::filesystem::path>& ignored_files() const { return ignored_files_; }
  // Every file this checkpoint reads: shards, the index, config.json, side files.
  const std::vector<std::filesystem::path>& files_read() const { return files_read_; }

  // An integer of config.json (or of its text_config, as multimodal configs nest it).
  std::optional<int64_t> config_integer(std::string_view key) const {
    if (!config_) return std::nullopt;
    const JsonValue* value = config_->find(key);
    if (value == nullptr) {
      const JsonValue* text = config_->find("text_config");
      if (text != nullptr && text->is_object()) value = text->find(key);
    }
    if (value == nullptr || !value->is_integer()) return std::nullopt;
    return value->as_int(key);
  }

 private:
  Checkpoint() = default;
  std::vector<std::filesystem::path> shards_from_index(const std::filesystem::path& index_path,
                                                       std::map<std::string, std::string>& map);
  void check_against_index(const std::filesystem::path& index_path,
                           const std::map<std::string, std::string>& map) const;

  std::filesystem::path directory_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<CheckpointTensor> tensors_;
  std::optional<JsonValue> config_;
  std::vector<std::filesystem::path> side_files_;
  std::vector<std::filesystem::path> ignored_files_;
  std::vector<std::filesystem::path> files_read_;
};

// ---- implementation ----------------------------------------------------------------------------

namespace detail {

inline bool is_side_file(const std::filesystem::path& path) {
  const std::string name = path.filename().string();
  const std::string extension = path.extension().string();
  if (name.empty() || name[0] == '.') return false;  // .gitattributes, editor files
  if (name == "config.json" || name == kShardIndexName) return false;
  if (name.find(".nibble-tmp-") != std::string::npos) return false;  // a writer's temporary
  for (const char* weights : {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".gguf", ".h5",
                              ".msgpack", ".ot"}) {
    if (extension == weights) return false;  // other weight formats: not ours to copy
  }
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  return !error && size < kMaxSideFileBytes;
}

// A shard name from the index: a plain file name of the model directory.
inline bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of(std::string_view("/\\\0", 3)) == std::string::npos &&
         std::filesystem::path(name).filename().string() == name;
}

// "a, b, c and 7 more": the first few of `items`, for messages.
inline std::string first_items(const std::vector<std::string>& items) {
  std::string text;
  const std::size_t shown = std::min<std::size_t>(items.size(), 3);
  for (std::size_t index = 0; index < shown; ++index)
    text += (index ? ", " : "") + items[index];
  if (items.size() > shown) text += " and " + std::to_string(items.size() - shown) + " more";
  return text;
}

}  // namespace detail

inline std::vector<std::filesystem::path> Checkpoint::shards_from_index(
    const std::filesystem::path& index_path, std::map<std::string, std::string>& map) {
  const std::string what = index_path.string();
  const JsonValue root =
      parse_json(read_small_file(index_path, kMaxCheckpointJsonBytes, "shard index"), what);
  const JsonValue* weight_map = root.is_object() ? root.find("weight_map") : nullptr;
  if (weight_map == nullptr) {
    nibble::detail::fail(ErrorCode::malformed, what,
                         ": no \"weight_map\" (expected {\"weight_map\": {tensor: shard, ...}})");
  }
  std::vector<std::string> names;
  for (const JsonMember& member : weight_map->as_object(what + " weight_map")) {
    const std::string& shard = member.value.as_string(what + " weight_map[\"" + member.key + "\"]");
    if (!detail::is_plain_file_name(shard)) {
      nibble::detail::fail(ErrorCode::malformed, what, ": weight_map[\"", member.key, "\"] = \"",
                           shard,
                           "\" is not a file of the model directory (expected a plain file "
                           "name such as model-00001-of-00002.safetensors)");
    }
    map.emplace(member.key, shard);
    names.push_back(shard);
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  if (names.empty()) {
    nibble::detail::fail(ErrorCode::malformed, what, ": weight_map is empty (expected the shards)");
  }
  std::vector<std::filesystem::path> shards;
  for (const std::string& name : names)
    shards.push_back(directory_ / name);
  return shards;
}

inline void Checkpoint::check_against_index(const std::filesystem::path& index_path,
                                            const std::map<std::string, std::string>& map) const {
  std::vector<std::string> unlisted, misplaced, missing;
  std::map<std::string, std::string, std::less<>> found;  // tensor -> shard file name
  for (const CheckpointTensor& tensor : tensors_) {
    const std::string shard = std::filesystem::path(tensor.file->path()).filename().string();
    found.emplace(tensor.info.name, shard);
    const auto listed = map.find(tensor.info.name);
    const std::string quoted = "\"" + tensor.info.name + "\"";
    if (listed == map.end()) {
      unlisted.push_back(quoted + " (in " + shard + ")");
    } else if (listed->second != shard) {
      misplaced.push_back(quoted + " (in " + shard + ", listed in " + listed->second + ")");
    }
  }
  for (const auto& [name, shard] : map) {
    if (found.find(name) == found.end()) {
      missing.push_back("\"" + name + "\" (listed in " + shard + ")");
    }
  }
  std::string problems;
  const auto add = [&](const std::vector<std::string>& items, const char* what) {
    if (items.empty()) return;
    problems += (problems.empty() ? "" : "; ") + std::to_string(items.size()) + " " + what +
                ": " + detail::first_items(items);
  };
  add(missing, "tensor(s) listed but held by no shard");
  add(unlisted, "tensor(s) of a shard the index does not list");
  add(misplaced, "tensor(s) in another shard than the index says");
  if (!problems.empty()) {
    nibble::detail::fail(ErrorCode::malformed, index_path.string(),
                         " does not match the shards: ", problems);
  }
}

inline Checkpoint Checkpoint::open(const std::string& path) {
  namespace fs = std::filesystem;
  Checkpoint checkpoint;
  std::error_code error;
  if (!fs::exists(path, error)) {
    nibble::detail::fail(ErrorCode::io, "input \"", path, "\" does not exist");
  }
  std::vector<fs::path> shards;
  std::map<std::string, std::string> index_map;
  const bool is_directory = fs::is_directory(path, error);
  fs::path index_path;
  if (is_directory) {
    checkpoint.directory_ = path;
    index_path = checkpoint.directory_ / std::string(kShardIndexName);
    std::vector<fs::path> all_safetensors;
    for (const auto& entry : fs::directory_iterator(checkpoint.directory_)) {
      if (entry.path().extension() == ".safetensors" && entry.is_regular_file(error)) {
        all_safetensors.push_back(entry.path());
      }
    }
    std::sort(all_safetensors.begin(), all_safetensors.end());
    if (fs::exists(index_path, error)) {
      shards = checkpoint.shards_from_index(index_path, index_map);
      checkpoint.files_read_.push_back(index_path);
      for (const fs::path& file : all_safetensors) {
        if (std::find(shards.begin(), shards.end(), file) == shards.end())
          checkpoint.ignored_files_.push_back(file);
      }
    } else {
      index_path.clear();
      shards = all_safetensors;
    }
    if (shards.empty()) {
      nibble::detail::fail(ErrorCode::io, "model directory \"", path,
                           "\" holds no .safetensors file");
    }
    for (const auto& entry : fs::directory_iterator(checkpoint.directory_)) {
      if (entry.is_regular_file(error) && detail::is_side_file(entry.path()))
        checkpoint.side_files_.push_back(entry.path());
    }
    std::sort(checkpoint.side_files_.begin(), checkpoint.side_files_.end());
  } else {
    shards.push_back(path);
    checkpoint.directory_ = fs::path(path).parent_path();
    if (checkpoint.directory_.empty()) checkpoint.directory_ = ".";
  }

  const fs::path config = checkpoint.directory_ / "config.json";
  if (fs::exists(config, error)) {
    JsonValue value = parse_json(read_small_file(config, kMaxCheckpointJsonBytes, "config.json"),
                                 config.string());
    if (!value.is_object()) {
      nibble::detail::fail(ErrorCode::malformed, config.string(), " is ", value.describe(),
                           " (expected a JSON object, the model's configuration)");
    }
    checkpoint.config_ = std::move(value);
    checkpoint.files_read_.push_back(config);
  }
  for (const fs::path& shard : shards) {
    if (!fs::exists(shard, error)) {
      nibble::detail::fail(ErrorCode::io, "shard \"", shard.string(), "\"",
                           index_path.empty() ? std::string()
                                              : " (named by " + index_path.string() + ")",
                           " does not exist");
    }
    checkpoint.files_.push_back(
        std::make_unique<SafetensorsFile>(SafetensorsFile::open(shard.string())));
    checkpoint.files_read_.push_back(shard);
    for (const TensorInfo& info : checkpoint.files_.back()->tensors())
      checkpoint.tensors_.push_back({info, checkpoint.files_.back().get()});
  }
  std::map<std::string, const SafetensorsFile*, std::less<>> seen;
  for (const CheckpointTensor& tensor : checkpoint.tensors_) {
    const auto [previous, inserted] = seen.emplace(tensor.info.name, tensor.file);
    if (!inserted) {
      nibble::detail::fail(ErrorCode::malformed, "tensor \"", tensor.info.name, "\" is in \"",
                           previous->second->path(), "\" and in \"", tensor.file->path(),
                           "\" (expected each tensor in one shard)");
    }
  }
  if (!index_path.empty()) checkpoint.check_against_index(index_path, index_map);
  for (const fs::path& side : checkpoint.side_files_)
    checkpoint.files_read_.push_back(side);
  return checkpoint;
}

}  // namespace nibble::io
