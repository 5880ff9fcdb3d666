// libFuzzer: io/checkpoint.hpp, the model-directory importer. An input is up to three parts,
// each a u32 little-endian length and its bytes: model.safetensors.index.json, config.json and
// one shard (model-00001-of-00001.safetensors); they are written to a scratch model directory
// (a part absent from the input is absent there) and opened. Checkpoint::open succeeds or throws
// nibble::Error; when it opens, every tensor it lists is in a shard it read, config.json is an
// object, and no file outside the directory is among those read.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "fuzz_support.hpp"
#include "nibble/io/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const fs::path directory = nibble::fuzz::scratch_directory() / "model";
  std::error_code error;
  fs::remove_all(directory, error);
  fs::create_directories(directory);
  static const char* const kNames[] = {"model.safetensors.index.json", "config.json",
                                       "model-00001-of-00001.safetensors"};
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  for (const char* name : kNames) {
    if (rest.size() < 4) break;
    const uint32_t length = static_cast<uint32_t>(static_cast<unsigned char>(rest[0])) |
                            static_cast<uint32_t>(static_cast<unsigned char>(rest[1])) << 8 |
                            static_cast<uint32_t>(static_cast<unsigned char>(rest[2])) << 16 |
                            static_cast<uint32_t>(static_cast<unsigned char>(rest[3])) << 24;
    rest.remove_prefix(4);
    const std::string_view part = rest.substr(0, length);
    rest.remove_prefix(part.size());
    nibble::fuzz::write_scratch(std::string("model/") + name, part);
  }
  try {
    const nibble::io::Checkpoint checkpoint = nibble::io::Checkpoint::open(directory.string());
    if (checkpoint.config() && !checkpoint.config()->is_object()) {
      nibble::fuzz::fail("config.json opened but is not an object");
    }
    for (const fs::path& read : checkpoint.files_read()) {
      if (fs::weakly_canonical(read).parent_path() != fs::weakly_canonical(directory)) {
        nibble::fuzz::fail("read a file outside the model directory: " + read.string());
      }
    }
    for (const auto& tensor : checkpoint.tensors()) {
      if (tensor.file == nullptr || tensor.file->find(tensor.info.name) == nullptr) {
        nibble::fuzz::fail("a tensor without its shard: " + tensor.info.name);
      }
    }
  } catch (const nibble::Error&) {
  }
  return 0;
}
