// nibble-quantize (tools/nibble_quantize.cpp), run as a process on small checkpoints written by
// SafetensorsWriter: each output format read back with nibble's readers and compared with what
// the library produces for the same weights (the CLI must be plumbing, not a second algorithm),
// plus every bad-input path: exit status, message, and no file left behind.
// The bytes against the real tools (onnxruntime, gguf-py, safetensors) are checked in
// python/tests/test_cli.py.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "nibble/formats/gptq.hpp"
#include "nibble/formats/ort.hpp"
#include "nibble/io/gguf_file.hpp"
#include "nibble/io/json.hpp"
#include "nibble/io/safetensors.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/quantizer.hpp"
#include "support/test_data.hpp"

#if !defined(_WIN32)
#include <sys/wait.h>
#endif

#ifndef NIBBLE_QUANTIZE_EXE
#error "NIBBLE_QUANTIZE_EXE must name the nibble-quantize executable"
#endif

namespace {

namespace fs = std::filesystem;
using nibble::DType;
using nibble::io::SafetensorsFile;
using nibble::io::SafetensorsWriter;

struct Result {
  int status = -1;
  std::string out;
  std::string err;
};

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct WeightSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint32_t seed;
};

class NibbleQuantize : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / (std::string("nibble_cli_") + test->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "model");
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // A small model directory: two linear weights (f32 and f16, K not a multiple of the group for
  // one), a norm, an embedding table, an integer buffer, config.json and a tokenizer file.
  void write_model(const std::vector<WeightSpec>& extra = {}) {
    specs_ = {{"model.layers.0.mlp.down_proj.weight", DType::f32, {48, 64}, 1},
              {"model.layers.0.mlp.up_proj.weight", DType::f16, {64, 48}, 2},
              {"model.norm.weight", DType::f32, {64}, 3},
              {"model.embed_tokens.weight", DType::f32, {100, 64}, 4},
              {"lm_head.weight", DType::f32, {100, 64}, 5}};
    specs_.insert(specs_.end(), extra.begin(), extra.end());
    SafetensorsWriter writer;
    std::vector<std::string> data;
    for (const WeightSpec& spec : specs_) {
      int64_t count = 1;
      for (int64_t dim : spec.shape)
        count *= dim;
      const std::vector<float> values = nibble::testing::gaussian(count, spec.seed, 0.05f);
      std::string bytes;
      if (spec.dtype == DType::f32) {
        bytes.assign(reinterpret_cast<const char*>(values.data()), values.size() * 4);
      } else {
        const auto halves = nibble::testing::converted<nibble::fp16>(values);
        bytes.assign(reinterpret_cast<const char*>(halves.data()), halves.size() * 2);
      }
      writer.declare(spec.name, spec.dtype, spec.shape);
      data.push_back(std::move(bytes));
    }
    writer.declare("model.position_ids", DType::i64, {1, 3});
    data.push_back(
        std::string("\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"
                    "\x02\x00\x00\x00\x00\x00\x00\x00",
                    24));
    std::ofstream out(dir_ / "model" / "model.safetensors", std::ios::binary);
    writer.begin(out);
    for (std::size_t index = 0; index < writer.tensors().size(); ++index)
      writer.write(writer.tensors()[index].name, data[index].data(), data[index].size());
    writer.finish();
    std::ofstream(dir_ / "model" / "config.json")
        << R"({"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 64})";
    std::ofstream(dir_ / "model" / "tokenizer.json") << R"({"version": "1.0"})";
  }

  Result run(const std::string& arguments) {
    const fs::path out = dir_ / "stdout.txt";
    const fs::path err = dir_ / "stderr.txt";
    const std::string command = std::string("\"") + NIBBLE_QUANTIZE_EXE + "\" " + arguments +
                                " > \"" + out.string() + "\" 2> \"" + err.string() + "\"";
    const int raw = std::system(command.c_str());
    Result result;
#if defined(_WIN32)
    result.status = raw;
#else
    result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
#endif
    result.out = slurp(out);
    result.err = slurp(err);
    return result;
  }

  std::string model() const {
    return "\"" + (dir_ / "model").string() + "\"";
  }
  std::string output() const {
    return "\"" + (dir_ / "out").string() + "\"";
  }

  // The original weights of `name` as float.
  std::vector<float> original(const std::string& name) {
    SafetensorsFile file = SafetensorsFile::open((dir_ / "model" / "model.safetensors").string());
    return file.read_f32(name);
  }

  // No file at all under out/ (a failed run leaves nothing, not even the directory it made).
  void expect_no_output() {
    EXPECT_FALSE(fs::exists(dir_ / "out")) << "a failed run left " << (dir_ / "out");
    for (const auto& entry : fs::directory_iterator(dir_ / "model")) {
      EXPECT_EQ(entry.path().string().find("nibble-tmp"), std::string::npos) << entry.path();
    }
  }

  fs::path dir_;
  std::vector<WeightSpec> specs_;
};

TEST_F(NibbleQuantize, OrtFormatHoldsMatMulNBitsInputsEqualToTheLibrary) {
  write_model();
  const Result result =
      run(model() + " -o " + output() + " --format ort --bits 4 --group-size 32" +
          " --asymmetric --json " + "\"" + (dir_ / "summary.json").string() + "\"");
  ASSERT_EQ(result.status, 0) << result.err;
  SafetensorsFile file = SafetensorsFile::open((dir_ / "out" / "model.safetensors").string());
  EXPECT_EQ(file.metadata().at("nibble.format"), "ort");
  EXPECT_EQ(file.metadata().at("nibble.convention"), "ort");
  // down_proj: f32 [48, 64] -> B [48, 2, 16], scales f32 [48, 2], zero points [48, 1].
  const std::string down = "model.layers.0.mlp.down_proj";
  const auto* qweight = file.find(down + ".qweight");
  const auto* scales = file.find(down + ".scales");
  const auto* zeros = file.find(down + ".qzeros");
  ASSERT_TRUE(qweight && scales && zeros);
  EXPECT_EQ(qweight->shape, (std::vector<int64_t>{48, 2, 16}));
  EXPECT_EQ(scales->dtype, DType::f32);
  EXPECT_EQ(scales->shape, (std::vector<int64_t>{48, 2}));
  EXPECT_EQ(zeros->shape, (std::vector<int64_t>{48, 1}));

  const std::vector<float> weights = original(down + ".weight");
  const nibble::QuantConfig config{4, 32, false, nibble::ConventionId::ort};
  const auto expected =
      nibble::quantize<float>(nibble::TensorView<const float>(weights.data(), {48, 64}), config);
  std::vector<uint8_t> b(static_cast<std::size_t>(qweight->size_bytes()));
  file.read_raw(*qweight, b.data(), b.size());
  EXPECT_EQ(b, expected.qweight());
  std::vector<float> s(static_cast<std::size_t>(scales->numel()));
  file.read_raw(*scales, s.data(), s.size() * 4);
  EXPECT_EQ(s, expected.scales());
  std::vector<uint8_t> z(static_cast<std::size_t>(zeros->size_bytes()));
  file.read_raw(*zeros, z.data(), z.size());
  EXPECT_EQ(z, expected.zeros());

  // up_proj is fp16 with K = 48 (one and a half groups): fp16 scales, B [64, 2, 16].
  const auto* up_scales = file.find("model.layers.0.mlp.up_proj.scales");
  ASSERT_NE(up_scales, nullptr);
  EXPECT_EQ(up_scales->dtype, DType::f16);
  EXPECT_EQ(file.find("model.layers.0.mlp.up_proj.qweight")->shape,
            (std::vector<int64_t>{64, 2, 16}));
  // Kept as they were: the norm, the embedding table, the integer buffer; lm_head is quantized.
  for (const char* kept : {"model.norm.weight", "model.embed_tokens.weight", "model.position_ids"})
    EXPECT_NE(file.find(kept), nullptr) << kept;
  EXPECT_NE(file.find("lm_head.qweight"), nullptr);
  EXPECT_EQ(file.read_f32("model.embed_tokens.weight"), original("model.embed_tokens.weight"));

  // Side files and the summary.
  EXPECT_TRUE(fs::exists(dir_ / "out" / "config.json"));
  EXPECT_EQ(slurp(dir_ / "out" / "tokenizer.json"), R"({"version": "1.0"})");
  const auto summary = nibble::io::parse_json(slurp(dir_ / "summary.json"), "summary.json");
  EXPECT_EQ(summary.find("converted")->as_int("converted"), 3);
  EXPECT_EQ(summary.find("format")->as_string("format"), "ort");
  bool found = false;
  for (const auto& layer : summary.find("layers")->as_array("layers")) {
    if (layer.find("name")->as_string("name") != down + ".weight") continue;
    found = true;
    const double rel_error = layer.find("rel_error")->as_double("rel_error");
    const std::vector<float> restored = nibble::dequantize(expected);
    double error = 0, norm = 0;
    for (std::size_t i = 0; i < weights.size(); ++i) {
      error += (weights[i] - restored[i]) * double(weights[i] - restored[i]);
      norm += weights[i] * double(weights[i]);
    }
    EXPECT_NEAR(rel_error, std::sqrt(error / norm), 1e-12);
    EXPECT_LT(rel_error, 0.15);  // 4-bit g32 on Gaussian weights: ~0.1
  }
  EXPECT_TRUE(found);
  // The table and the totals go to stdout, progress to stderr.
  EXPECT_NE(result.out.find("bits per quantized weight"), std::string::npos) << result.out;
  EXPECT_NE(result.err.find("[6/6]"), std::string::npos) << result.err;
}

TEST_F(NibbleQuantize, GptqFormatImportsBackToTheLibrarysTensor) {
  write_model();
  const Result result = run(model() + " -o " + output() + " --format gptq --group-size 16 --quiet");
  ASSERT_EQ(result.status, 0) << result.err;
  SafetensorsFile file = SafetensorsFile::open((dir_ / "out" / "model.safetensors").string());
  const std::string down = "model.layers.0.mlp.down_proj";
  const auto read_i32 = [&](const std::string& name) {
    const auto* info = file.find(name);
    EXPECT_NE(info, nullptr) << name;
    std::vector<int32_t> values(static_cast<std::size_t>(info->numel()));
    file.read_raw(*info, values.data(), values.size() * 4);
    return values;
  };
  const std::vector<int32_t> qweight = read_i32(down + ".qweight");
  const std::vector<int32_t> qzeros = read_i32(down + ".qzeros");
  const std::vector<int32_t> g_idx = read_i32(down + ".g_idx");
  const std::vector<float> scales = file.read_f32(down + ".scales");
  // GPTQ's [in, out] layout: K = 64, N = 48.
  nibble::gptq::CheckpointView<float> view;
  view.layout = nibble::gptq::Layout{64, 48, 4, 16, nibble::gptq::ZeroFormat::v1};
  view.qweight = qweight.data();
  view.qweight_count = static_cast<int64_t>(qweight.size());
  view.qzeros = qzeros.data();
  view.qzeros_count = static_cast<int64_t>(qzeros.size());
  view.scales = scales.data();
  view.scale_count = static_cast<int64_t>(scales.size());
  view.g_idx = g_idx.data();
  view.g_idx_count = static_cast<int64_t>(g_idx.size());
  const auto imported = nibble::gptq::from_gptq(view);
  const std::vector<float> weights = original(down + ".weight");
  const auto expected =
      nibble::quantize<float>(nibble::TensorView<const float>(weights.data(), {48, 64}),
                              nibble::QuantConfig{4, 16, true, nibble::ConventionId::olive});
  EXPECT_EQ(nibble::dequantize(imported), nibble::dequantize(expected));
  const auto config = nibble::io::parse_json(slurp(dir_ / "out" / "quantize_config.json"), "q");
  EXPECT_EQ(config.find("bits")->as_int("bits"), 4);
  EXPECT_EQ(config.find("group_size")->as_int("group_size"), 16);
  EXPECT_TRUE(config.find("sym")->as_bool("sym"));
  const auto hf = nibble::io::parse_json(slurp(dir_ / "out" / "config.json"), "config");
  EXPECT_EQ(hf.find("quantization_config")->find("quant_method")->as_string("m"), "gptq");
  EXPECT_EQ(hf.find("model_type")->as_string("model_type"), "llama");  // the rest kept
}

TEST_F(NibbleQuantize, GgufFormatWritesBlocksEqualToTheReferenceQuantizer) {
  write_model();
  // K = 48 is not a multiple of Q8_0's 32: up_proj stays F16 and is listed as not expressible.
  const Result result =
      run(model() + " -o " + output() + " --format gguf --bits 8 --group-size 32");
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_NE(result.out.find("not expressible"), std::string::npos) << result.out;
  auto file = nibble::io::GgufFile::open((dir_ / "out" / "model.gguf").string());
  const std::string down = "model.layers.0.mlp.down_proj.weight";
  const auto* info = file.find_tensor(down);
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->type, nibble::gguf::GgmlType::q8_0);
  const std::vector<float> weights = original(down);
  std::vector<uint8_t> blocks(
      static_cast<std::size_t>(nibble::gguf::row_size(nibble::gguf::GgmlType::q8_0, 64)) * 48);
  for (int64_t row = 0; row < 48; ++row)
    nibble::gguf::quantize_row(nibble::gguf::GgmlType::q8_0, weights.data() + row * 64, 64,
                               blocks.data() + row * (static_cast<int64_t>(blocks.size()) / 48));
  EXPECT_EQ(file.read_bytes(down), blocks);
  EXPECT_EQ(file.find_tensor("model.layers.0.mlp.up_proj.weight")->type, nibble::io::kGgmlF16);
  EXPECT_EQ(file.find_tensor("model.position_ids"),
            nullptr);  // integer buffer: dropped, and said so
  EXPECT_NE(result.out.find("dropped: GGUF output holds float tensors only"), std::string::npos);
}

TEST_F(NibbleQuantize, PolicyAndOverridesDecideBitsPerTensor) {
  write_model();
  const Result result =
      run(model() + " -o " + output() +
          " --policy rtn_last --override 'down_proj=bits:2,group:16'" + " --skip up_proj --json -");
  ASSERT_EQ(result.status, 0) << result.err;
  const std::string json = result.out.substr(result.out.find("{\n"));
  const auto summary = nibble::io::parse_json(json, "summary");
  for (const auto& layer : summary.find("layers")->as_array("layers")) {
    const std::string& name = layer.find("name")->as_string("name");
    if (name == "lm_head.weight") {
      EXPECT_EQ(layer.find("bits")->as_int("bits"), 8);
    }
    if (name.find("down_proj") != std::string::npos) {
      EXPECT_EQ(layer.find("bits")->as_int("bits"), 2);
      EXPECT_EQ(layer.find("group_size")->as_int("group_size"), 16);
    }
    if (name.find("up_proj") != std::string::npos) {
      EXPECT_FALSE(layer.find("converted")->as_bool("converted"));
    }
  }
}

TEST_F(NibbleQuantize, AnOverrideMatchingNoTensorIsAnError) {
  write_model();
  const Result result = run(model() + " -o " + output() + " --override 'q_porj=bits:8'");
  EXPECT_EQ(result.status, 1);
  EXPECT_NE(result.err.find("these rules match no tensor"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("override \"q_porj\""), std::string::npos) << result.err;
  expect_no_output();
}

TEST_F(NibbleQuantize, AnUnwritableOutputIsAnError) {
  write_model();
  std::ofstream(dir_ / "a_file") << "x";
  const Result result = run(model() + " -o \"" + (dir_ / "a_file").string() + "\"");
  EXPECT_EQ(result.status, 1);
  EXPECT_NE(result.err.find("exists and is not a directory"), std::string::npos) << result.err;
  const Result nested = run(model() + " -o \"" + (dir_ / "a_file" / "sub").string() + "\"");
  EXPECT_EQ(nested.status, 1);
  EXPECT_NE(nested.err.find("cannot create output directory"), std::string::npos) << nested.err;
}

TEST_F(NibbleQuantize, AnUnknownTensorDtypeIsAnError) {
  // An F8_E4M3 tensor: valid safetensors, but no dtype nibble reads.
  const std::string header = R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})";
  std::string bytes;
  for (int i = 0; i < 8; ++i)
    bytes += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  bytes += header + std::string("\x38\x40", 2);
  std::ofstream(dir_ / "model" / "model.safetensors", std::ios::binary) << bytes;
  const Result result = run(model() + " -o " + output());
  EXPECT_EQ(result.status, 1);
  EXPECT_NE(result.err.find("F8_E4M3"), std::string::npos) << result.err;
  expect_no_output();
}

TEST_F(NibbleQuantize, AnInterruptLeavesNoPartialOutput) {
  write_model();
  // The real SIGINT handler, raised by the tool itself after two tensors (a test hook).
  const Result result = run("--format gptq " + model() + " -o " + output() +
                            " --group-size 16");  // warm-up: the run works
  ASSERT_EQ(result.status, 0) << result.err;
  fs::remove_all(dir_ / "out");
#if defined(_WIN32)
  GTEST_SKIP() << "setenv";
#else
  setenv("NIBBLE_QUANTIZE_INTERRUPT_AFTER", "2", 1);
  const Result interrupted = run(model() + " -o " + output());
  unsetenv("NIBBLE_QUANTIZE_INTERRUPT_AFTER");
  EXPECT_EQ(interrupted.status, 130);
  EXPECT_NE(interrupted.err.find("interrupted (SIGINT); no output was written"), std::string::npos)
      << interrupted.err;
  expect_no_output();
  // Into an existing directory: it stays, holding nothing new.
  fs::create_directories(dir_ / "out");
  setenv("NIBBLE_QUANTIZE_INTERRUPT_AFTER", "4", 1);
  const Result again = run(model() + " -o " + output());
  unsetenv("NIBBLE_QUANTIZE_INTERRUPT_AFTER");
  EXPECT_EQ(again.status, 130);
  EXPECT_TRUE(fs::is_empty(dir_ / "out"));
#endif
}

TEST_F(NibbleQuantize, UsageErrorsSayWhatWasExpected) {
  write_model();
  const Result no_output = run(model());
  EXPECT_EQ(no_output.status, 2);
  EXPECT_NE(no_output.err.find("-o OUT_DIR is missing"), std::string::npos) << no_output.err;
  const Result bad_format = run(model() + " -o " + output() + " --format onnx");
  EXPECT_EQ(bad_format.status, 2);
  EXPECT_NE(bad_format.err.find("expected ort, olive, gptq, awq or gguf"), std::string::npos);
  const Result bad_bits = run(model() + " -o " + output() + " --bits 3");
  EXPECT_EQ(bad_bits.status, 1);
  EXPECT_NE(bad_bits.err.find("expected 2, 4 or 8"), std::string::npos) << bad_bits.err;
  const Result gptq = run(model() + " -o " + output() + " --algo gptq");
  EXPECT_EQ(gptq.status, 1);
  EXPECT_NE(gptq.err.find("--calibration"), std::string::npos) << gptq.err;
  const Result missing = run("\"" + (dir_ / "nope").string() + "\" -o " + output());
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find("does not exist"), std::string::npos) << missing.err;
  expect_no_output();
  const Result help = run("--help");
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.out.find("usage: nibble-quantize"), std::string::npos);
}

}  // namespace
