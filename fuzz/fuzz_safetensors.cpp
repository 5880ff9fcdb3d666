// libFuzzer: io/safetensors.hpp. Any bytes as a .safetensors file: open() succeeds or throws
// nibble::Error. When it opens, every tensor reads the same bytes through read_raw and the
// memory map, read_f32 works for float tensors, find() finds each, and the file written back by
// SafetensorsWriter reopens to the same tensors, bytes and metadata.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.hpp"
#include "nibble/io/safetensors.hpp"

namespace {

using nibble::io::SafetensorsFile;
using nibble::io::TensorInfo;

// The tensors' raw bytes, checked two ways.
std::vector<std::string> read_all(SafetensorsFile& file) {
  std::vector<std::string> contents;
  for (const TensorInfo& info : file.tensors()) {
    if (file.find(info.name) != &info) nibble::fuzz::fail("find() misses " + info.name);
    std::string bytes(static_cast<std::size_t>(info.size_bytes()), '\0');
    file.read_raw(info, bytes.data(), bytes.size());
    const unsigned char* mapped = file.mapped_bytes(info);
    if (!bytes.empty() && std::memcmp(mapped, bytes.data(), bytes.size()) != 0) {
      nibble::fuzz::fail("read_raw and mapped_bytes differ for " + info.name);
    }
    file.release_mapped(info);
    if (info.dtype == nibble::DType::f32 || info.dtype == nibble::DType::f16 ||
        info.dtype == nibble::DType::bf16) {
      if (file.read_f32(info.name).size() != static_cast<std::size_t>(info.numel())) {
        nibble::fuzz::fail("read_f32 size");
      }
    }
    contents.push_back(std::move(bytes));
  }
  return contents;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = nibble::fuzz::write_scratch(
      "in.safetensors", std::string_view(reinterpret_cast<const char*>(data), size));
  std::vector<TensorInfo> tensors;
  std::vector<std::string> contents;
  std::map<std::string, std::string> metadata;
  try {
    SafetensorsFile file = SafetensorsFile::open(path);
    contents = read_all(file);
    tensors = file.tensors();
    metadata = file.metadata();
  } catch (const nibble::Error&) {
    return 0;
  }
  // Written back: declared in offset order, so the data section is the same bytes.
  std::ostringstream out(std::ios::binary);
  try {
    nibble::io::SafetensorsWriter writer;
    for (const auto& [key, value] : metadata)
      writer.add_metadata(key, value);
    for (const TensorInfo& info : tensors)
      writer.declare(info.name, info.dtype, info.shape);
    writer.begin(out);
    for (std::size_t index = 0; index < tensors.size(); ++index)
      writer.write(tensors[index].name, contents[index].data(), contents[index].size());
    writer.finish();
  } catch (const nibble::Error&) {
    return 0;  // a name the writer refuses (empty)
  }
  const std::string again = nibble::fuzz::write_scratch("again.safetensors", out.str());
  SafetensorsFile reopened = SafetensorsFile::open(again);  // must open: no catch
  if (reopened.tensors().size() != tensors.size() || reopened.metadata() != metadata) {
    nibble::fuzz::fail("the rewritten file holds other tensors or metadata");
  }
  const std::vector<std::string> reread = read_all(reopened);
  for (std::size_t index = 0; index < tensors.size(); ++index) {
    const TensorInfo& a = tensors[index];
    const TensorInfo& b = reopened.tensors()[index];
    if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape ||
        a.size_bytes() != b.size_bytes() || contents[index] != reread[index]) {
      nibble::fuzz::fail("tensor " + a.name + " differs after a rewrite");
    }
  }
  return 0;
}
