// libFuzzer: the checkpoint importers (formats/gptq.hpp, awq.hpp, trtllm.hpp) fed as a converter
// feeds them: a safetensors file whose __metadata__ says which importer and its configuration
// ("importer": gptq | gptq_permuted | awq | modelopt, "bits", "group_size", "zero_format": v1 |
// v2) and whose tensors are the checkpoint's (qweight, qzeros, scales, g_idx; or ModelOpt's
// weight, weights_scaling_factor), the layout taken from their shapes. Each import succeeds or
// throws nibble::Error; what imports dequantizes, and exports back to the same int32 words.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.hpp"
#include "nibble/formats/awq.hpp"
#include "nibble/formats/gptq.hpp"
#include "nibble/formats/trtllm.hpp"
#include "nibble/io/safetensors.hpp"
#include "nibble/kernels/cpu/reference.hpp"

namespace {

using nibble::DType;
using nibble::io::SafetensorsFile;

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
  DType dtype = DType::u8;
  template <class T>
  std::vector<T> as() const {
    std::vector<T> values(bytes.size() / sizeof(T));
    if (!values.empty()) std::memcpy(values.data(), bytes.data(), values.size() * sizeof(T));
    return values;
  }
};

int64_t integer(const std::map<std::string, std::string>& metadata, const char* key,
                int64_t fallback) {
  const auto found = metadata.find(key);
  if (found == metadata.end()) return fallback;
  try {
    return std::stoll(found->second);
  } catch (const std::exception&) {
    return fallback;  // a converter would refuse it; here it tells nothing new
  }
}

// The importer named in the metadata, over the tensors.
void import(const std::map<std::string, std::string>& metadata,
            const std::map<std::string, Tensor>& tensors) {
  const auto get = [&](const char* name) -> const Tensor& {
    const auto found = tensors.find(name);
    if (found == tensors.end()) {
      nibble::detail::fail(nibble::ErrorCode::invalid_argument, "no tensor ", name);
    }
    return found->second;
  };
  const auto importer = metadata.count("importer") ? metadata.at("importer") : "gptq";
  const int64_t group_size = integer(metadata, "group_size", 128);
  if (importer == "modelopt") {
    const Tensor& weight = get("weight");
    const Tensor& scales = get("weights_scaling_factor");
    if (weight.shape.size() < 2 || scales.dtype != DType::f32) return;
    nibble::trtllm::Int4Layout layout;
    layout.batch.assign(weight.shape.begin(), weight.shape.end() - 2);
    layout.out_features = nibble::detail::checked_mul(weight.shape[weight.shape.size() - 2],
                                                      int64_t{2}, "N");
    layout.in_features = weight.shape.back();
    layout.block_size = group_size;
    const std::vector<float> factors = scales.as<float>();
    nibble::trtllm::Int4CheckpointView view{layout, weight.bytes.data(),
                                            static_cast<int64_t>(weight.bytes.size()),
                                            factors.data(), static_cast<int64_t>(factors.size())};
    const auto tensor = nibble::trtllm::from_modelopt<float>(view);
    (void)nibble::dequantize_ref(tensor.view());
    const auto back = nibble::trtllm::to_modelopt(tensor.view());
    if (back.weight != std::vector<uint8_t>(weight.bytes.begin(), weight.bytes.end())) {
      nibble::fuzz::fail("ModelOpt weight bytes change in a round trip");
    }
    return;
  }
  const Tensor& qweight = get("qweight");
  const Tensor& qzeros = get("qzeros");
  const Tensor& scales = get("scales");
  if (qweight.shape.size() != 2 || qweight.dtype != DType::i32 || qzeros.dtype != DType::i32 ||
      scales.dtype != DType::f16) {
    return;  // not the shape of such a checkpoint: a converter would not call the importer
  }
  const std::vector<int32_t> words = qweight.as<int32_t>();
  const std::vector<int32_t> zero_words = qzeros.as<int32_t>();
  std::vector<nibble::fp16> scale_values(scales.bytes.size() / 2);
  for (std::size_t index = 0; index < scale_values.size(); ++index) {
    scale_values[index] = nibble::fp16::from_bits(static_cast<uint16_t>(
        scales.bytes[2 * index] | (scales.bytes[2 * index + 1] << 8)));
  }
  if (importer == "awq") {
    nibble::awq::Layout layout{qweight.shape[0],
                               nibble::detail::checked_mul(qweight.shape[1], int64_t{8}, "N"),
                               group_size};
    nibble::awq::CheckpointView<nibble::fp16> view{
        layout,
        words.data(),
        static_cast<int64_t>(words.size()),
        zero_words.data(),
        static_cast<int64_t>(zero_words.size()),
        scale_values.data(),
        static_cast<int64_t>(scale_values.size())};
    const auto tensor = nibble::awq::from_awq(view);
    (void)nibble::dequantize_ref(tensor.view());
    const auto back = nibble::awq::to_awq(tensor.view());
    if (back.qweight != words) nibble::fuzz::fail("AWQ qweight changes in a round trip");
    return;
  }
  const int bits = static_cast<int>(integer(metadata, "bits", 4));
  if (bits != 2 && bits != 4 && bits != 8 && bits != 3) return;  // Layout::validate refuses 3
  nibble::gptq::Layout layout;
  layout.bits = bits;
  layout.in_features = nibble::detail::checked_mul(qweight.shape[0], int64_t{32 / bits}, "K");
  layout.out_features = qweight.shape[1];
  layout.group_size = group_size;
  const auto zero_format = metadata.count("zero_format") ? metadata.at("zero_format") : "v1";
  layout.zero_format =
      zero_format == "v2" ? nibble::gptq::ZeroFormat::v2 : nibble::gptq::ZeroFormat::v1;
  std::vector<int32_t> g_idx;
  if (tensors.count("g_idx") != 0 && get("g_idx").dtype == DType::i32) {
    g_idx = get("g_idx").as<int32_t>();
  }
  nibble::gptq::CheckpointView<nibble::fp16> view{layout,
                                                  words.data(),
                                                  static_cast<int64_t>(words.size()),
                                                  zero_words.data(),
                                                  static_cast<int64_t>(zero_words.size()),
                                                  scale_values.data(),
                                                  static_cast<int64_t>(scale_values.size()),
                                                  g_idx.empty() ? nullptr : g_idx.data(),
                                                  static_cast<int64_t>(g_idx.size())};
  if (importer == "gptq_permuted") {
    const auto result = nibble::gptq::from_gptq_permuted(view);
    (void)nibble::dequantize_ref(result.tensor.view());
    return;
  }
  const auto tensor = nibble::gptq::from_gptq(view);
  (void)nibble::dequantize_ref(tensor.view());
  const auto back = nibble::gptq::to_gptq(tensor.view(), layout.zero_format);
  if (back.qweight != words) nibble::fuzz::fail("GPTQ qweight changes in a round trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = nibble::fuzz::write_scratch(
      "importer.safetensors", std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    SafetensorsFile file = SafetensorsFile::open(path);
    std::map<std::string, Tensor> tensors;
    for (const auto& info : file.tensors()) {
      Tensor& tensor = tensors[info.name];
      tensor.shape = info.shape;
      tensor.dtype = info.dtype;
      tensor.bytes.resize(static_cast<std::size_t>(info.size_bytes()));
      file.read_raw(info, tensor.bytes.data(), tensor.bytes.size());
    }
    import(file.metadata(), tensors);
  } catch (const nibble::Error&) {
  }
  return 0;
}
