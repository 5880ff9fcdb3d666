// libFuzzer: io/gguf_file.hpp. Any bytes as a GGUF file (from memory): open() succeeds or throws
// nibble::Error. When it opens, every metadata value prints, every tensor reads and dequantizes,
// and the file written back by GgufWriter (same metadata, tensors and bytes) reopens equal.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "nibble/io/gguf_file.hpp"

namespace {

using nibble::io::GgufFile;

GgufFile open_bytes(std::string bytes) {
  return GgufFile::open(std::make_unique<std::istringstream>(std::move(bytes), std::ios::binary),
                        "fuzz.gguf");
}

// The harness holds a rewritten file three times in memory; beyond this size (only a huge
// "general.alignment" gets there: 2^30 is legal, and pads even a file without tensors to 1 GiB)
// the rewrite is not checked, so the RSS limit stays about the readers.
constexpr uint64_t kMaxRewriteBytes = 16u << 20;

// The file written back by GgufWriter: the same metadata in order, the same tensors and bytes;
// nullopt when it would exceed kMaxRewriteBytes.
std::optional<std::string> rewrite(GgufFile& file) {
  std::ostringstream out(std::ios::binary);
  nibble::io::GgufWriter writer;
  for (const auto& entry : file.metadata())
    writer.add_metadata(entry.key, entry.value);
  for (const auto& info : file.tensors())
    writer.declare(info.name, info.type, info.shape);
  if (writer.file_bytes() > kMaxRewriteBytes) return std::nullopt;
  writer.begin(out);
  for (const auto& info : file.tensors()) {
    const std::vector<uint8_t> bytes = file.read_bytes(info.name);
    writer.write(info.name, bytes.data(), bytes.size());
  }
  writer.finish();
  return out.str();
}

// One metadata value's encoding: the header of a file holding only it.
std::string encoding(const nibble::io::GgufMetadataEntry& entry) {
  nibble::io::GgufWriter writer;
  writer.add_metadata(entry.key, entry.value);
  return writer.header_bytes();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::optional<std::string> rewritten;
  try {
    GgufFile file = open_bytes(std::string(reinterpret_cast<const char*>(data), size));
    for (const auto& entry : file.metadata()) {
      (void)entry.value.to_string();
      if (file.find(entry.key) != &entry.value) nibble::fuzz::fail("find() misses " + entry.key);
    }
    for (const auto& info : file.tensors()) {
      if (file.read_f32(info.name).size() != static_cast<std::size_t>(info.numel())) {
        nibble::fuzz::fail("read_f32 size of " + info.name);
      }
    }
    rewritten = rewrite(file);
  } catch (const nibble::Error&) {
    return 0;  // refused by the reader, or by the stricter writer (keys, alignment, names)
  }
  if (!rewritten) return 0;
  const std::string& written = *rewritten;
  // What the writer wrote must read back and write again to the same bytes (values compared bit
  // for bit, NaN payloads included), with the same tensors.
  GgufFile again = open_bytes(written);  // must open: no catch
  if (rewrite(again) != written) nibble::fuzz::fail("a rewritten file does not rewrite to itself");
  GgufFile original = open_bytes(std::string(reinterpret_cast<const char*>(data), size));
  if (again.metadata().size() != original.metadata().size() ||
      again.tensors().size() != original.tensors().size()) {
    nibble::fuzz::fail("the rewritten file holds other entries");
  }
  for (std::size_t index = 0; index < original.metadata().size(); ++index) {
    if (again.metadata()[index].key != original.metadata()[index].key ||
        encoding(again.metadata()[index]) != encoding(original.metadata()[index])) {
      nibble::fuzz::fail("metadata " + original.metadata()[index].key + " differs after a rewrite");
    }
  }
  for (std::size_t index = 0; index < original.tensors().size(); ++index) {
    const auto& a = original.tensors()[index];
    const auto& b = again.tensors()[index];
    if (a.name != b.name || a.type != b.type || a.shape != b.shape ||
        again.read_bytes(a.name) != original.read_bytes(a.name)) {
      nibble::fuzz::fail("tensor " + a.name + " differs after a rewrite");
    }
  }
  return 0;
}
