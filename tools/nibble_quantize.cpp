// nibble-quantize: a checkpoint (safetensors file or Hugging Face model directory) -> a quantized
// checkpoint in one of the formats nibble writes exactly. `nibble-quantize --help` for usage.
//
// Pipeline, one tensor at a time (peak memory O(largest tensor), not O(model)):
//   1. open every safetensors shard (headers only) and config.json; list the tensors;
//   2. decide each tensor with a nibble::Policy (preset + overrides + --skip); a rule that
//      matches no tensor is an error before any work is done;
//   3. for each tensor in file order: read it, quantize it (RTN / k-quant / GPTQ, OpenMP over
//      rows), convert it to the format's tensors, append their bytes to a spool file beside the
//      output, measure its relative error; report progress;
//   4. write the output file through an AtomicOutputFile: header (now that every shape is
//      known), then the spooled data; rename into place. Side files (config.json with its
//      quantization_config, tokenizer files) are written the same way.
// An error or Ctrl-C at any point leaves no output file behind (temporaries are removed).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#if defined(_WIN32)
#include <io.h>
#define NIBBLE_ISATTY _isatty
#define NIBBLE_FILENO _fileno
#else
#include <unistd.h>
#define NIBBLE_ISATTY isatty
#define NIBBLE_FILENO fileno
#endif

#include "nibble/formats/awq.hpp"
#include "nibble/formats/gguf.hpp"
#include "nibble/formats/gptq.hpp"
#include "nibble/formats/ort.hpp"
#include "nibble/io/atomic_file.hpp"
#include "nibble/io/checkpoint.hpp"
#include "nibble/io/gguf_file.hpp"
#include "nibble/io/json.hpp"
#include "nibble/io/path_overlap.hpp"
#include "nibble/io/safetensors.hpp"
#include "nibble/io/scratch_file.hpp"
#include "nibble/kernels/cpu/dequantize.hpp"
#include "nibble/quantizer.hpp"
#include "nibble/solvers/gptq.hpp"
#include "nibble/solvers/kquant.hpp"
#include "nibble/solvers/policy.hpp"
#include "nibble/version.hpp"

namespace fs = std::filesystem;
using nibble::DType;
using nibble::Error;
using nibble::ErrorCode;
using nibble::io::JsonMember;
using nibble::io::JsonValue;
using nibble::io::SafetensorsFile;
using nibble::io::TensorInfo;

namespace {

// ---- interrupt ---------------------------------------------------------------------------------

volatile std::sig_atomic_t g_interrupted = 0;
// The output directory when this run created it: removed again if the run fails while it is
// still empty (so a failed run leaves nothing at all).
std::optional<fs::path> g_created_output_dir;
// The signal that interrupted the run (SIGINT, SIGTERM), or 0.
extern "C" void on_interrupt(int signal_number) {
  g_interrupted = signal_number;
}
volatile std::sig_atomic_t g_resumed = 0;  // the test pause's SIGUSR1
extern "C" void on_resume(int) {
  g_resumed = 1;
}

struct Interrupted {};  // thrown between steps once Ctrl-C was pressed

// A commit that failed after some output files were renamed into place: what was written.
struct PartialCommit {
  std::string message;
  std::vector<std::string> written;
};

void check_interrupt() {
  if (g_interrupted != 0) throw Interrupted{};
}

// ---- command line ------------------------------------------------------------------------------

struct UsageError {
  std::string message;
};

enum class Format { ort, olive, gptq, awq, gguf };

const char* format_name(Format format) {
  switch (format) {
    case Format::ort:
      return "ort";
    case Format::olive:
      return "olive";
    case Format::gptq:
      return "gptq";
    case Format::awq:
      return "awq";
    case Format::gguf:
      return "gguf";
  }
  return "?";
}

// Case-insensitive equality of ASCII names ("Q4_K" names ggml's "q4_K").
bool same_letters(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t index = 0; index < a.size(); ++index) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
    if (lower(a[index]) != lower(b[index])) return false;
  }
  return true;
}

struct Options {
  std::string input;
  std::string output;
  Format format = Format::ort;
  int bits = 4;
  int64_t group_size = 32;             // the ORT GenAI builder's int4_block_size default
  std::optional<bool> symmetric;       // default: true (builder), false for k_quant
  std::optional<nibble::Solver> algo;  // default rtn, or the policy's
  std::optional<std::string> policy;   // a preset of solvers/policy.hpp
  std::optional<nibble::ConventionId> convention;  // default per format
  std::vector<std::string> overrides;              // 'regex=bits:8[,group:64][,sym|asym]'
  std::vector<std::string> skips;                  // regexes: kept in float
  std::optional<std::string> gguf_type;            // Q4_0, Q4_1, Q8_0, Q4_K, Q6_K
  std::optional<std::string> calibration;  // GPTQ: safetensors of per-layer input activations
  bool quantize_embeddings = false;
  bool strict = false;  // a tensor the format cannot express is an error, not kept in float
  int threads = 0;
  std::optional<std::string> json;  // path, or "-" for stdout
  bool quiet = false;
  bool table_all = false;  // --table all: also the tensors that were never candidates
  bool progress_forced_plain = false;
};

const char* kUsage = R"(usage: nibble-quantize MODEL_DIR_OR_FILE -o OUT_DIR [options]

Quantizes the linear-layer weights of a safetensors checkpoint (a .safetensors file, or a model
directory with model.safetensors / sharded *.safetensors and config.json) and writes
OUT_DIR/model.safetensors (or OUT_DIR/model.gguf) plus the side files. Defaults match the ONNX
Runtime GenAI model builder: 4 bits, block size 32, symmetric, RTN, MatMulNBits layout.

options:
  -o, --output DIR        output directory (created if missing)
  --format F              ort | olive | gptq | awq | gguf                     [ort]
                            ort    MatMulNBits inputs: X.qweight u8 [N, blocks, blob],
                                   X.scales [N, blocks], X.qzeros u8 (asymmetric only)
                            olive  Olive's quantized Hugging Face layout (AutoGPTQ int32
                                   packing, quant_method "olive"), Olive's RTN
                            gptq   AutoGPTQ v1: qweight, qzeros, scales, g_idx; quantize_config.json
                            awq    AutoAWQ GEMM (4-bit)
                            gguf   GGUF v3 blocks (Q4_0/Q4_1/Q8_0/Q4_K/Q6_K), other tensors F32/F16
  --bits B                2 | 4 | 8                                           [4]
  --group-size G          group (block) size along K, or -1 per channel       [32]
  --symmetric, --asymmetric                                    [symmetric; k_quant: asymmetric]
  --algo A                rtn | k_quant | gptq                                [rtn]
  --policy P              rtn | rtn_last | k_quant | k_quant_last | k_quant_mixed
                          (the GenAI builder's int4_algo_config presets; *_last and
                          k_quant_mixed put lm_head (and k_quant_mixed's layers) at 8 bits)
  --convention C          olive | ort | ort_gather | ort_weight_only  [ort; olive/gptq/awq: olive]
  --override 'RE=SPEC'    tensors whose name matches RE get SPEC = bits:N[,group:G][,sym|asym]
                          (repeatable; later ones win)
  --skip RE               tensors matching RE stay in float (repeatable)
  --gguf-type T           Q4_0 | Q4_1 | Q8_0 | Q2_K | Q4_K | Q6_K
                          [4-bit: Q4_0 sym / Q4_1 asym; 8: Q8_0; 2: Q2_K]
  --calibration FILE      GPTQ: a safetensors file holding, for each weight W [N, K] to quantize,
                          a float tensor named like W with shape [tokens, K]: the layer's inputs
  --quantize-embeddings   also quantize embedding tables (by default they stay in float)
  --strict                a tensor the format cannot express is an error (default: kept in float
                          and listed)
  --threads N             OpenMP threads (0: OpenMP's default)                [0]
  --json PATH             write a JSON summary to PATH ("-": stdout)
  --table all|quantized   the per-layer table: every tensor, or (default) the candidates, with
                          biases / norms / buffers counted in one line per reason
  --quiet                 no progress and no table
  -h, --help, --version
)";

nibble::ConventionId convention_named(const std::string& name) {
  try {
    return nibble::convention_from_name(name);
  } catch (const Error& error) {
    throw UsageError{std::string("--convention: ") + error.what()};
  }
}

nibble::Solver solver_named(const std::string& name) {
  if (name == "rtn") return nibble::Solver::rtn;
  if (name == "k_quant") return nibble::Solver::k_quant;
  if (name == "gptq") return nibble::Solver::gptq;
  throw UsageError{"--algo \"" + name + "\" is unknown (expected rtn, k_quant or gptq)"};
}

int64_t parse_integer(const std::string& text, const std::string& option) {
  std::size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty()) {
    throw UsageError{option + " \"" + text + "\" is not an integer"};
  }
  return static_cast<int64_t>(value);
}

Options parse_options(int argc, char** argv) {
  Options options;
  std::vector<std::string> positional;
  for (int index = 1; index < argc; ++index) {
    const std::string arg = argv[index];
    const auto value = [&]() -> std::string {
      if (index + 1 >= argc) throw UsageError{arg + " needs a value"};
      return argv[++index];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--version") {
      std::cout << "nibble-quantize " << nibble::kVersionString << "\n";
      std::exit(0);
    } else if (arg == "-o" || arg == "--output") {
      options.output = value();
    } else if (arg == "--format") {
      const std::string name = value();
      if (name == "ort") {
        options.format = Format::ort;
      } else if (name == "olive") {
        options.format = Format::olive;
      } else if (name == "gptq") {
        options.format = Format::gptq;
      } else if (name == "awq") {
        options.format = Format::awq;
      } else if (name == "gguf") {
        options.format = Format::gguf;
      } else {
        throw UsageError{"--format \"" + name +
                         "\" is unknown (expected ort, olive, gptq, awq or gguf)"};
      }
    } else if (arg == "--bits") {
      options.bits = static_cast<int>(parse_integer(value(), arg));
    } else if (arg == "--group-size") {
      options.group_size = parse_integer(value(), arg);
    } else if (arg == "--symmetric") {
      options.symmetric = true;
    } else if (arg == "--asymmetric") {
      options.symmetric = false;
    } else if (arg == "--algo") {
      options.algo = solver_named(value());
    } else if (arg == "--policy") {
      options.policy = value();
    } else if (arg == "--convention") {
      options.convention = convention_named(value());
    } else if (arg == "--override") {
      options.overrides.push_back(value());
    } else if (arg == "--skip") {
      options.skips.push_back(value());
    } else if (arg == "--gguf-type") {
      options.gguf_type = value();
    } else if (arg == "--calibration") {
      options.calibration = value();
    } else if (arg == "--quantize-embeddings") {
      options.quantize_embeddings = true;
    } else if (arg == "--strict") {
      options.strict = true;
    } else if (arg == "--threads") {
      options.threads = static_cast<int>(parse_integer(value(), arg));
      if (options.threads < 0) throw UsageError{"--threads must be >= 0"};
    } else if (arg == "--json") {
      options.json = value();
    } else if (arg == "--table") {
      const std::string which = value();
      if (which != "all" && which != "quantized") {
        throw UsageError{"--table \"" + which + "\" is unknown (expected all or quantized)"};
      }
      options.table_all = which == "all";
    } else if (arg == "--quiet") {
      options.quiet = true;
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError{"unknown option " + arg};
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 1) {
    throw UsageError{positional.empty() ? "MODEL_DIR_OR_FILE is missing"
                                        : "expected one MODEL_DIR_OR_FILE, got " +
                                              std::to_string(positional.size())};
  }
  options.input = positional[0];
  if (options.output.empty()) throw UsageError{"-o OUT_DIR is missing"};
  return options;
}

// 'regex=bits:8[,group:64][,sym|asym]' -> a Policy override.
void add_override(nibble::Policy& policy, const std::string& text) {
  const std::size_t equals = text.rfind('=');
  if (equals == std::string::npos || equals == 0 || equals + 1 == text.size()) {
    throw UsageError{"--override \"" + text + "\": expected REGEX=bits:N[,group:G][,sym|asym]"};
  }
  const std::string pattern = text.substr(0, equals);
  std::optional<int> bits;
  std::optional<int64_t> group_size;
  std::optional<bool> symmetric;
  std::stringstream fields(text.substr(equals + 1));
  std::string field;
  while (std::getline(fields, field, ',')) {
    if (field.rfind("bits:", 0) == 0) {
      bits = static_cast<int>(parse_integer(field.substr(5), "--override bits"));
    } else if (field.rfind("group:", 0) == 0) {
      group_size = parse_integer(field.substr(6), "--override group");
    } else if (field == "sym") {
      symmetric = true;
    } else if (field == "asym") {
      symmetric = false;
    } else {
      throw UsageError{"--override \"" + text + "\": unknown field \"" + field +
                       "\" (expected bits:N, group:G, sym or asym)"};
    }
  }
  if (!bits) throw UsageError{"--override \"" + text + "\": bits:N is required"};
  policy.add_override(pattern, *bits, group_size, symmetric);
}

// ---- small JSON writer (the summary, config.json)
// ------------------------------------------------

void append_json_string(std::string& out, std::string_view text) {
  out += '"';
  for (const char character : text) {
    const auto byte = static_cast<unsigned char>(character);
    if (character == '"' || character == '\\') {
      out += '\\';
      out += character;
    } else if (character == '\n') {
      out += "\\n";
    } else if (byte < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", byte);
      out += escaped;
    } else {
      out += character;
    }
  }
  out += '"';
}

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

void append_json(std::string& out, const JsonValue& value, int indent, int depth) {
  const std::string pad(static_cast<std::size_t>(indent * (depth + 1)), ' ');
  const std::string close_pad(static_cast<std::size_t>(indent * depth), ' ');
  const char* newline = indent > 0 ? "\n" : "";
  switch (value.kind()) {
    case JsonValue::Kind::null:
      out += "null";
      return;
    case JsonValue::Kind::boolean:
      out += value.as_bool("value") ? "true" : "false";
      return;
    case JsonValue::Kind::integer:
      out += std::to_string(value.as_int("value"));
      return;
    case JsonValue::Kind::real:
      out += json_number(value.as_double("value"));
      return;
    case JsonValue::Kind::string:
      append_json_string(out, value.as_string("value"));
      return;
    case JsonValue::Kind::array: {
      const auto& elements = value.as_array("value");
      if (elements.empty()) {
        out += "[]";
        return;
      }
      out += "[";
      out += newline;
      for (std::size_t index = 0; index < elements.size(); ++index) {
        out += pad;
        append_json(out, elements[index], indent, depth + 1);
        out += index + 1 < elements.size() ? "," : "";
        out += newline;
      }
      out += close_pad + "]";
      return;
    }
    case JsonValue::Kind::object: {
      const auto& members = value.as_object("value");
      if (members.empty()) {
        out += "{}";
        return;
      }
      out += "{";
      out += newline;
      for (std::size_t index = 0; index < members.size(); ++index) {
        out += pad;
        append_json_string(out, members[index].key);
        out += indent > 0 ? ": " : ":";
        append_json(out, members[index].value, indent, depth + 1);
        out += index + 1 < members.size() ? "," : "";
        out += newline;
      }
      out += close_pad + "}";
      return;
    }
  }
}

std::string json_text(const JsonValue& value, int indent = 2) {
  std::string out;
  append_json(out, value, indent, 0);
  return out + (indent > 0 ? "\n" : "");
}

JsonValue json_string(std::string text) {
  return JsonValue::make_string(std::move(text));
}
JsonValue json_int(int64_t value) {
  return JsonValue::make_integer(value);
}
JsonValue json_real(double value) {
  return std::isfinite(value) ? JsonValue::make_real(value) : JsonValue::make_null();
}
JsonValue json_bool(bool value) {
  return JsonValue::make_bool(value);
}
JsonValue json_shape(const std::vector<int64_t>& shape) {
  JsonValue::Array dims;
  for (int64_t dim : shape)
    dims.push_back(json_int(dim));
  return JsonValue::make_array(std::move(dims));
}

// An object built in code: members in insertion order, a later set() replaces.
struct JsonObject {
  JsonValue::Object members;
  JsonObject& set(std::string key, JsonValue value) {
    for (JsonMember& member : members) {
      if (member.key == key) {
        member.value = std::move(value);
        return *this;
      }
    }
    JsonMember member;
    member.key = std::move(key);
    member.value = std::move(value);
    members.push_back(std::move(member));
    return *this;
  }
  JsonValue value() const { return JsonValue::make_object(members); }
};

// Every output file is written to a temporary first and renamed only once all of them are
// complete, so an error or Ctrl-C before the commit leaves none of them behind. The commit
// renames the side files first and the model file last: a model file in place means its side
// files are too. If a rename fails part way, the error says exactly which files were written.
class StagedOutputs {
 public:
  nibble::io::AtomicOutputFile& add(const fs::path& path) {
    files_.push_back(std::make_unique<nibble::io::AtomicOutputFile>(path.string()));
    return *files_.back();
  }
  void add_text(const fs::path& path, const std::string& text) {
    nibble::io::AtomicOutputFile& out = add(path);
    out.stream().write(text.data(), static_cast<std::streamsize>(text.size()));
  }
  // Commits every file, `last` (the model) after all the others.
  void commit_all(const fs::path& last) {
    std::stable_partition(files_.begin(), files_.end(),
                          [&](const auto& file) { return fs::path(file->path()) != last; });
    for (auto& file : files_) {  // no interrupt check: once the first rename is done, finish
      try {
        file->commit();
      } catch (const Error& failure) {
        throw PartialCommit{failure.what(), committed_paths()};
      }
    }
  }
  std::vector<std::string> committed_paths() const {
    std::vector<std::string> paths;
    for (const auto& file : files_) {
      if (file->committed()) paths.push_back(file->path());
    }
    return paths;
  }

 private:
  std::vector<std::unique_ptr<nibble::io::AtomicOutputFile>> files_;
};

// ---- the input model ---------------------------------------------------------------------------

using InputTensor = nibble::io::CheckpointTensor;
using Model = nibble::io::Checkpoint;

bool is_float_dtype(DType dtype) {
  return dtype == DType::f32 || dtype == DType::f16 || dtype == DType::bf16;
}

bool is_embedding_name(std::string_view name) {
  for (std::string_view marker : {"embed", "wte", "wpe", "word_embeddings", "position_embeddings",
                                  "token_type_embeddings", "tok_embeddings"}) {
    if (name.find(marker) != std::string_view::npos) return true;
  }
  return false;
}

// Whether `tensor` is a linear-layer weight the policy should see at all: float, rank 2 (a
// linear layer [N, K]) or 3 (fused MoE experts [E, N, K]), named *.weight or a bare expert
// tensor, and not an embedding table unless asked. Returns the reason when it is not.
std::optional<std::string> not_a_candidate(const TensorInfo& info, const Options& options) {
  if (!is_float_dtype(info.dtype)) return std::string("not a float tensor");
  if (info.shape.size() != 2 && info.shape.size() != 3)
    return std::string("rank ") + std::to_string(info.shape.size());
  for (int64_t dim : info.shape) {
    if (dim == 0) return std::string("empty");
  }
  const std::string& name = info.name;
  const bool weight_like = name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0;
  const bool experts = info.shape.size() == 3 && name.find("experts") != std::string::npos;
  if (!weight_like && !experts) return std::string("not a weight");
  if (!options.quantize_embeddings && is_embedding_name(name))
    return std::string("embedding (--quantize-embeddings to convert)");
  return std::nullopt;
}

// ---- spool: tensor bytes in output order, before the header exists ------------------------------

// An anonymous scratch file in the output directory (io/scratch_file.hpp): it has no name, so no
// crash, SIGKILL or power cut can leave it behind, and its bytes count against the output's file
// system, where a full disk is then reported.
class Spool {
 public:
  explicit Spool(const fs::path& directory)
      : file_(nibble::io::ScratchFile::create(directory.string())) {}

  int64_t append(const void* bytes, int64_t byte_count) { return file_.append(bytes, byte_count); }
  int64_t size() const { return file_.size(); }

  // Streams [offset, offset + byte_count) to `out` in 8 MiB pieces.
  void copy_to(std::ostream& out, int64_t offset, int64_t byte_count) {
    std::vector<char> buffer(static_cast<std::size_t>(std::min<int64_t>(byte_count, 8 << 20)));
    while (byte_count > 0) {
      check_interrupt();
      const int64_t piece = std::min<int64_t>(byte_count, static_cast<int64_t>(buffer.size()));
      file_.read_at(offset, buffer.data(), piece);
      out.write(buffer.data(), static_cast<std::streamsize>(piece));
      if (!out.good()) {
        nibble::detail::fail(ErrorCode::io, "writing the output failed (disk full?)");
      }
      offset += piece;
      byte_count -= piece;
    }
  }

 private:
  nibble::io::ScratchFile file_;
};

// ---- one tensor --------------------------------------------------------------------------------

struct OutputTensor {
  std::string name;
  DType dtype = DType::u8;
  std::vector<int64_t> shape;
  nibble::gguf::GgmlType gguf_type = nibble::io::kGgmlF32;  // --format gguf only
  int64_t offset = 0;                                       // in the spool
  int64_t bytes = 0;
};

struct Row {  // one line of the per-layer table
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
  bool converted = false;
  bool dropped = false;  // not in the output at all (GGUF: integer buffers)
  int bits = 0;
  int64_t group_size = 0;
  bool symmetric = false;
  std::string algo;
  std::string type;  // gguf type, or the layout
  double rel_error = 0.0;
  int64_t bytes_before = 0;
  int64_t bytes_after = 0;
  std::string reason;
  double seconds = 0.0;
};

// A tensor's raw bytes: in place in the memory-mapped input when their offset is aligned for the
// dtype (the usual case: writers align the data section), else a copy; typed views over them.
// Destroying it drops the tensor's mapped pages, so resident memory stays O(one tensor) while
// the run streams through the model.
struct TensorData {
  TensorData() = default;
  TensorData(const TensorData&) = delete;
  TensorData& operator=(const TensorData&) = delete;
  TensorData(TensorData&& other) noexcept
      : data(other.data),
        size(other.size),
        copy(std::move(other.copy)),
        dtype(other.dtype),
        shape(std::move(other.shape)),
        file(std::exchange(other.file, nullptr)),
        info(other.info) {}
  ~TensorData() {
    if (file != nullptr) file->release_mapped(*info);
  }

  const unsigned char* data = nullptr;
  std::size_t size = 0;
  std::vector<unsigned char> copy;  // only when the mapped bytes are misaligned
  DType dtype = DType::f32;
  std::vector<int64_t> shape;  // the file's (0-sized and rank-0 tensors are copied, not viewed)
  SafetensorsFile* file = nullptr;  // whose mapped pages to release
  const TensorInfo* info = nullptr;
  template <class W>
  nibble::TensorView<const W> view() const {
    return nibble::TensorView<const W>(reinterpret_cast<const W*>(data), nibble::Shape(shape),
                                       "weights");
  }
};

// Calls f(W{}) with W the C++ type of `dtype` (float, fp16, bf16).
template <class F>
decltype(auto) with_weight_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f16:
      return f(nibble::fp16{});
    case DType::bf16:
      return f(nibble::bf16{});
    default:
      return f(float{});
  }
}

// ||original - approx|| / ||original|| in double, summed in fixed chunks on `threads` OpenMP
// threads (the same sum whatever the thread count).
double relative_error(const std::vector<float>& original, const std::vector<float>& approx,
                      int threads) {
  constexpr int64_t kChunk = int64_t{1} << 16;
  const auto count = static_cast<int64_t>(original.size());
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  std::vector<double> error(static_cast<std::size_t>(chunks)), norm(error.size());
  nibble::detail::parallel_for_ranges(threads, count, kChunk, [&](int64_t begin, int64_t end) {
    double chunk_error = 0.0, chunk_norm = 0.0;
    for (int64_t index = begin; index < end; ++index) {
      const double value = original[static_cast<std::size_t>(index)];
      const double difference = value - approx[static_cast<std::size_t>(index)];
      chunk_error += difference * difference;
      chunk_norm += value * value;
    }
    error[static_cast<std::size_t>(begin / kChunk)] = chunk_error;
    norm[static_cast<std::size_t>(begin / kChunk)] = chunk_norm;
  });
  double total_error = 0.0, total_norm = 0.0;
  for (std::size_t chunk = 0; chunk < error.size(); ++chunk) {
    total_error += error[chunk];
    total_norm += norm[chunk];
  }
  return total_norm > 0.0 ? std::sqrt(total_error / total_norm) : std::sqrt(total_error);
}

std::vector<float> to_floats(const TensorData& data, int threads) {
  return with_weight_type(data.dtype, [&](auto weight) {
    using W = decltype(weight);
    const auto* values = reinterpret_cast<const W*>(data.data);
    const auto count = static_cast<int64_t>(data.size / sizeof(W));
    std::vector<float> out(static_cast<std::size_t>(count));
    nibble::detail::parallel_for_ranges(threads, count, int64_t{1} << 16,
                                        [&](int64_t begin, int64_t end) {
                                          for (int64_t index = begin; index < end; ++index)
                                            out[static_cast<std::size_t>(index)] =
                                                nibble::to_float(values[index]);
                                        });
    return out;
  });
}

class Converter {
 public:
  Converter(const Options& options, Spool& spool, std::optional<SafetensorsFile>& calibration)
      : options_(options), spool_(spool), calibration_(calibration) {}

  std::vector<OutputTensor>& outputs() { return outputs_; }

  // Copies a tensor unchanged (safetensors formats), or as F32/F16/BF16 (gguf).
  void keep(const InputTensor& tensor, Row& row) {
    if (options_.format == Format::gguf && !is_float_dtype(tensor.info.dtype)) {
      // GGUF model files carry float and block-quantized tensors; integer buffers such as
      // position_ids are rebuilt by the runtime (llama.cpp's converters drop them too).
      row.dropped = true;
      row.reason += "; dropped: GGUF output holds float tensors only";
      row.bytes_after = 0;
      return;
    }
    TensorData data = read(tensor);
    if (options_.format == Format::gguf) {
      keep_gguf(tensor.info, data);
    } else {
      add_output(tensor.info.name, tensor.info.dtype, tensor.info.shape, data.data,
                 static_cast<int64_t>(data.size));
    }
    row.bytes_after = static_cast<int64_t>(data.size);
  }

  // Quantizes per `decision`. Throws Error when the format cannot express the result.
  void convert(const InputTensor& tensor, const nibble::TensorDecision& decision, Row& row) {
    TensorData data = read(tensor);
    const std::vector<float> original = to_floats(data, options_.threads);
    std::vector<float> restored;
    const int64_t before = static_cast<int64_t>(outputs_.size());
    try {
      if (options_.format == Format::gguf) {
        restored = convert_gguf(tensor.info, original, decision, row);
      } else {
        restored = with_weight_type(data.dtype, [&](auto weight) {
          using W = decltype(weight);
          // Scales in the checkpoint's own float type (what Olive, AutoGPTQ and the GenAI
          // builder store); fp32 weights get fp32 scales.
          return convert_with<W, W>(tensor.info, data, decision, row);
        });
      }
    } catch (...) {
      outputs_.resize(static_cast<std::size_t>(before));  // the spool tail is dead bytes
      throw;
    }
    row.rel_error = relative_error(original, restored, options_.threads);
    row.bytes_after = 0;
    for (std::size_t index = static_cast<std::size_t>(before); index < outputs_.size(); ++index)
      row.bytes_after += outputs_[index].bytes;
  }

 private:
  TensorData read(const InputTensor& tensor) {
    TensorData data;
    data.dtype = tensor.info.dtype;
    data.shape = tensor.info.shape;
    data.size = static_cast<std::size_t>(tensor.info.size_bytes());
    const unsigned char* mapped = tensor.file->mapped_bytes(tensor.info);
    data.file = tensor.file;
    data.info = &tensor.info;
    if (reinterpret_cast<std::uintptr_t>(mapped) % nibble::size_of(tensor.info.dtype) == 0) {
      data.data = mapped;
    } else {
      data.copy.assign(mapped, mapped + data.size);
      data.data = data.copy.data();
    }
    return data;
  }

  void add_output(std::string name, DType dtype, std::vector<int64_t> shape, const void* bytes,
                  int64_t byte_count, nibble::gguf::GgmlType gguf_type = nibble::io::kGgmlF32) {
    check_interrupt();
    OutputTensor out;
    out.name = std::move(name);
    out.dtype = dtype;
    out.shape = std::move(shape);
    out.gguf_type = gguf_type;
    out.offset = spool_.append(bytes, byte_count);
    out.bytes = byte_count;
    outputs_.push_back(std::move(out));
  }

  // The module name: "model.layers.0.mlp.down_proj" for "...down_proj.weight".
  static std::string module_of(const std::string& name) {
    const std::string suffix = ".weight";
    if (name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return name.substr(0, name.size() - suffix.size());
    return name;
  }

  template <class ScaleT, class W>
  nibble::QuantTensor<ScaleT> solve(const TensorInfo& info, const TensorData& data,
                                    const nibble::TensorDecision& decision,
                                    std::vector<int32_t>& g_idx) {
    const nibble::TensorView<const W> view = data.view<W>();
    switch (decision.solver) {
      case nibble::Solver::rtn: {
        nibble::QuantizeOptions quantize_options;
        quantize_options.num_threads = options_.threads;
        return nibble::quantize<ScaleT>(view, decision.config, quantize_options);
      }
      case nibble::Solver::k_quant: {
        nibble::KQuantOptions kquant_options;
        kquant_options.num_threads = options_.threads;
        return nibble::kquant_quantize<ScaleT>(view, decision.config, kquant_options);
      }
      case nibble::Solver::gptq: {
        if (!calibration_) {
          nibble::detail::fail(ErrorCode::invalid_argument,
                               "GPTQ needs calibration inputs: pass --calibration FILE (a "
                               "safetensors file with a [tokens, K] float tensor per weight)");
        }
        const TensorInfo* inputs = calibration_->find(info.name);
        if (inputs == nullptr) {
          nibble::detail::fail(ErrorCode::invalid_argument, "--calibration \"",
                               calibration_->path(), "\" has no tensor \"", info.name,
                               "\" (the inputs of this layer, [tokens, ", view.cols(), "])");
        }
        const std::vector<float> x = calibration_->read_f32(inputs->name);
        if (inputs->shape.size() != 2 || inputs->shape[1] != view.cols()) {
          nibble::detail::fail(ErrorCode::shape_mismatch, "--calibration tensor \"", inputs->name,
                               "\" has shape ", nibble::io::detail::shape_text(inputs->shape),
                               " (expected [tokens, ", view.cols(), "])");
        }
        std::vector<nibble::GptqHessian> hessians;
        hessians.emplace_back(view.cols());
        hessians.back().add_batch(
            nibble::TensorView<const float>(x.data(), nibble::Shape(inputs->shape), "calibration"));
        nibble::GptqOptions gptq_options;
        gptq_options.num_threads = options_.threads;
        nibble::GptqResult<ScaleT> result =
            nibble::gptq_quantize<ScaleT>(view, decision.config, hessians, gptq_options);
        g_idx = std::move(result.g_idx);
        return std::move(result.tensor);
      }
    }
    nibble::detail::fail(ErrorCode::invalid_argument, "unknown solver");
  }

  template <class ScaleT, class W>
  std::vector<float> convert_with(const TensorInfo& info, const TensorData& data,
                                  const nibble::TensorDecision& decision, Row& row) {
    std::vector<int32_t> g_idx;
    nibble::QuantTensor<ScaleT> q = solve<ScaleT, W>(info, data, decision, g_idx);
    const nibble::QuantTensorView<ScaleT> view = q.view();
    const std::string module = module_of(info.name);
    const DType scales_dtype = nibble::dtype_of<ScaleT>();
    const auto bytes_of = [](const auto& vector) {
      return static_cast<int64_t>(vector.size() * sizeof(vector[0]));
    };
    switch (options_.format) {
      case Format::ort: {
        // MatMulNBits inputs; for [E, N, K] experts the same per expert, with a leading E.
        if (info.shape.size() == 2)
          (void)nibble::ort::as_matmul_nbits(view);  // block-size check
        else
          (void)nibble::ort::as_matmul_nbits(view.slice(0));
        const nibble::RowLayout& layout = view.layout();
        std::vector<int64_t> lead(info.shape.begin(), info.shape.end() - 1);  // [..., N]
        auto with = [&](std::vector<int64_t> tail) {
          std::vector<int64_t> shape = lead;
          shape.insert(shape.end(), tail.begin(), tail.end());
          return shape;
        };
        add_output(module + ".qweight", DType::u8,
                   with({layout.n_groups, layout.group_size * view.bits() / 8}), view.qweight(),
                   view.qweight_bytes());
        add_output(module + ".scales", scales_dtype, with({layout.n_groups}), view.scales(),
                   view.scale_count() * static_cast<int64_t>(sizeof(ScaleT)));
        if (!decision.config.symmetric) {
          add_output(module + ".qzeros", DType::u8, with({layout.zero_row_bytes}), view.zeros(),
                     view.zero_bytes());
        }
        row.type = "MatMulNBits";
        break;
      }
      case Format::olive:
      case Format::gptq: {
        if (info.shape.size() != 2) {
          nibble::detail::fail(ErrorCode::unsupported, "rank-3 experts have no ",
                               format_name(options_.format),
                               " layout (one Linear per expert); use --format ort or gguf");
        }
        const auto checkpoint = nibble::gptq::to_gptq(view, nibble::gptq::ZeroFormat::v1, g_idx);
        const int64_t k = view.k();
        const int64_t n = view.rows();
        const int64_t pack = 32 / view.bits();
        const int64_t n_groups = view.layout().n_groups;
        add_output(module + ".qweight", DType::i32, {k / pack, n}, checkpoint.qweight.data(),
                   bytes_of(checkpoint.qweight));
        add_output(module + ".qzeros", DType::i32, {n_groups, n / pack}, checkpoint.qzeros.data(),
                   bytes_of(checkpoint.qzeros));
        add_output(module + ".scales", scales_dtype, {n_groups, n}, checkpoint.scales.data(),
                   bytes_of(checkpoint.scales));
        if (options_.format == Format::gptq) {
          add_output(module + ".g_idx", DType::i32, {k}, checkpoint.g_idx.data(),
                     bytes_of(checkpoint.g_idx));
          desc_act_ = desc_act_ || checkpoint.desc_act;
        }
        row.type = options_.format == Format::gptq ? "GPTQ v1" : "Olive QuantLinear";
        break;
      }
      case Format::awq: {
        if (info.shape.size() != 2) {
          nibble::detail::fail(ErrorCode::unsupported,
                               "rank-3 experts have no AWQ layout (one Linear per expert)");
        }
        const auto checkpoint = nibble::awq::to_awq(view);
        const int64_t n_groups = view.layout().n_groups;
        add_output(module + ".qweight", DType::i32, {view.k(), view.rows() / 8},
                   checkpoint.qweight.data(), bytes_of(checkpoint.qweight));
        add_output(module + ".qzeros", DType::i32, {n_groups, view.rows() / 8},
                   checkpoint.qzeros.data(), bytes_of(checkpoint.qzeros));
        add_output(module + ".scales", scales_dtype, {n_groups, view.rows()},
                   checkpoint.scales.data(), bytes_of(checkpoint.scales));
        row.type = "AWQ GEMM";
        break;
      }
      case Format::gguf:
        break;  // convert_gguf
    }
    // The fast dequantizer (values exactly dequantize_ref's, threaded over rows).
    std::vector<float> restored(static_cast<std::size_t>(q.shape().numel()));
    nibble::DequantizeOptions dequantize_options;
    dequantize_options.num_threads = options_.threads;
    nibble::dequantize(view, nibble::TensorView<float>(restored.data(), q.shape()),
                       dequantize_options);
    return restored;
  }

  // GGUF: the block type for this decision.
  nibble::gguf::GgmlType gguf_type_for(const nibble::TensorDecision& decision) const {
    using nibble::gguf::GgmlType;
    const bool explicit_type = options_.gguf_type.has_value();
    // An explicit --gguf-type applies to the base bit width; overrides (e.g. lm_head at 8 bits)
    // choose by their own bits.
    if (explicit_type && decision.config.bits == options_.bits) {
      for (GgmlType type : {GgmlType::q4_0, GgmlType::q4_1, GgmlType::q8_0, GgmlType::q2_K,
                            GgmlType::q4_K, GgmlType::q6_K}) {
        if (same_letters(*options_.gguf_type, nibble::gguf::type_name(type))) return type;
      }
      nibble::detail::fail(ErrorCode::invalid_argument, "--gguf-type \"", *options_.gguf_type,
                           "\" is unknown (expected Q4_0, Q4_1, Q8_0, Q2_K, Q4_K or Q6_K)");
    }
    if (decision.config.bits == 8) return GgmlType::q8_0;
    if (decision.config.bits == 4)
      return decision.config.symmetric ? GgmlType::q4_0 : GgmlType::q4_1;
    return GgmlType::q2_K;  // 2 bits (QuantConfig allows only 2, 4 and 8)
  }

  std::vector<float> convert_gguf(const TensorInfo& info, const std::vector<float>& original,
                                  const nibble::TensorDecision& decision, Row& row) {
    using nibble::gguf::GgmlType;
    const GgmlType type = gguf_type_for(decision);
    const int64_t block = nibble::gguf::block_size(type);
    const int64_t k = info.shape.back();
    if (k % block != 0) {
      nibble::detail::fail(ErrorCode::unsupported, "GGUF ", nibble::gguf::type_name(type),
                           " needs K % ", block, " == 0, but K = ", k);
    }
    // The group size must be the type's: GGUF blocks are fixed. K-quant super-blocks hold
    // sub-blocks of 16 (Q6_K) or 32 (Q4_K) with their own scales; accept 32 / 256 for them.
    const int64_t group = decision.config.group_size;
    const bool k_type = type == GgmlType::q2_K || type == GgmlType::q4_K || type == GgmlType::q6_K;
    if (!k_type && group != block) {
      nibble::detail::fail(ErrorCode::unsupported, "GGUF ", nibble::gguf::type_name(type),
                           " has blocks of ", block, "; group size ", group,
                           " cannot be expressed (use --group-size ", block, ")");
    }
    if (type == GgmlType::q4_0 && !decision.config.symmetric) {
      nibble::detail::fail(ErrorCode::unsupported,
                           "GGUF Q4_0 is symmetric; asymmetric 4-bit is Q4_1 (--gguf-type Q4_1)");
    }
    const int64_t rows = static_cast<int64_t>(original.size()) / k;
    const int64_t row_bytes = nibble::gguf::row_size(type, k);
    std::vector<unsigned char> blocks(static_cast<std::size_t>(rows * row_bytes));
    std::vector<float> restored(original.size());
    // A row that cannot be quantized (a NaN or Inf weight) throws; the lowest such row's error
    // comes out of the parallel region (core/parallel.hpp).
    nibble::detail::parallel_for(options_.threads, rows, [&](int64_t r) {
      nibble::gguf::quantize_row(type, original.data() + r * k, k, blocks.data() + r * row_bytes);
      nibble::gguf::dequantize_row(type, blocks.data() + r * row_bytes, k, restored.data() + r * k);
    });
    add_output(info.name, DType::u8, info.shape, blocks.data(), static_cast<int64_t>(blocks.size()),
               type);
    row.type = nibble::gguf::type_name(type);
    return restored;
  }

  void keep_gguf(const TensorInfo& info, const TensorData& data) {
    // F16 stays F16, BF16 stays BF16, F32 stays F32 (keep() drops the non-float tensors).
    const nibble::gguf::GgmlType type = info.dtype == DType::f32   ? nibble::io::kGgmlF32
                                        : info.dtype == DType::f16 ? nibble::io::kGgmlF16
                                                                   : nibble::io::kGgmlBF16;
    std::vector<int64_t> shape = info.shape;
    if (shape.empty()) shape = {1};  // GGUF has no rank-0 tensors
    add_output(info.name, info.dtype, shape, data.data, static_cast<int64_t>(data.size), type);
  }

 public:
  bool desc_act() const { return desc_act_; }

 private:
  const Options& options_;
  Spool& spool_;
  std::optional<SafetensorsFile>& calibration_;
  std::vector<OutputTensor> outputs_;
  bool desc_act_ = false;
};

// ---- progress ----------------------------------------------------------------------------------

class Progress {
 public:
  Progress(int64_t total, int64_t total_bytes, bool quiet)
      : total_(total),
        total_bytes_(total_bytes),
        quiet_(quiet),
        tty_(NIBBLE_ISATTY(NIBBLE_FILENO(stderr)) != 0),
        start_(std::chrono::steady_clock::now()) {}

  void step(int64_t done, int64_t done_bytes, const std::string& name) {
    if (quiet_) return;
    const double elapsed = seconds();
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
    // The ETA scales by bytes, not tensor count: tensors differ in size by orders of magnitude.
    const double fraction =
        total_bytes_ > 0 ? static_cast<double>(done_bytes) / static_cast<double>(total_bytes_)
                         : 1.0;
    const double eta = fraction > 0 ? elapsed * (1.0 - fraction) / fraction : 0.0;
    if (tty_) {
      const int width = 30;
      const int filled = static_cast<int>(fraction * width);
      std::string bar(static_cast<std::size_t>(filled), '=');
      if (filled < width) bar += '>';
      bar.resize(static_cast<std::size_t>(width), ' ');
      std::string shown = name.size() > 40 ? "..." + name.substr(name.size() - 37) : name;
      std::fprintf(stderr, "\r[%s] %lld/%lld tensors  %.1f tensors/s  ETA %s  %-40s", bar.c_str(),
                   static_cast<long long>(done), static_cast<long long>(total_), rate,
                   clock_text(eta).c_str(), shown.c_str());
      if (done == total_) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    } else {
      std::fprintf(stderr, "[%lld/%lld] %s (%.1f tensors/s, ETA %s)\n",
                   static_cast<long long>(done), static_cast<long long>(total_), name.c_str(), rate,
                   clock_text(eta).c_str());
    }
  }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  static std::string clock_text(double seconds) {
    const auto total = static_cast<long long>(seconds + 0.5);
    char text[32];
    std::snprintf(text, sizeof text, "%lld:%02lld", total / 60, total % 60);
    return text;
  }
  int64_t total_;
  int64_t total_bytes_;
  bool quiet_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text;
  for (std::size_t axis = 0; axis < shape.size(); ++axis)
    text += (axis ? "x" : "") + std::to_string(shape[axis]);
  return text.empty() ? "scalar" : text;
}

std::string size_text(int64_t bytes) {
  char text[32];
  const double value = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30))
    std::snprintf(text, sizeof text, "%.2f GiB", value / (1 << 30));
  else if (bytes >= (int64_t{1} << 20))
    std::snprintf(text, sizeof text, "%.2f MiB", value / (1 << 20));
  else if (bytes >= 1024)
    std::snprintf(text, sizeof text, "%.1f KiB", value / 1024);
  else
    std::snprintf(text, sizeof text, "%lld B", static_cast<long long>(bytes));
  return text;
}

// Tensors that were never candidates (biases, norms, integer buffers) are counted in one line per
// reason unless `all`; every tensor is in the --json summary either way.
bool never_a_candidate(const Row& row) {
  return !row.converted && !row.dropped &&
         (row.reason.rfind("rank ", 0) == 0 || row.reason == "not a float tensor" ||
          row.reason == "not a weight" || row.reason == "empty");
}

void print_table(const std::vector<Row>& all_rows, bool all) {
  std::vector<const Row*> rows;
  std::map<std::string, int64_t> folded;
  for (const Row& row : all_rows) {
    if (!all && never_a_candidate(row)) {
      ++folded[row.reason];
    } else {
      rows.push_back(&row);
    }
  }
  std::size_t name_width = 4;
  for (const Row* row : rows)
    name_width = std::max(name_width, row->name.size());
  name_width = std::min<std::size_t>(name_width, 60);
  std::printf("%-*s  %-14s %-4s %5s %6s %-4s %-8s %-17s %10s  %s\n", static_cast<int>(name_width),
              "name", "shape", "in", "bits", "group", "sym", "algo", "layout", "rel.error", "note");
  for (const Row* row_pointer : rows) {
    const Row& row = *row_pointer;
    const std::string name = row.name.size() > name_width
                                 ? "..." + row.name.substr(row.name.size() - name_width + 3)
                                 : row.name;
    if (row.dropped) {
      std::printf("%-*s  %-14s %-4s %5s %6s %-4s %-8s %-17s %10s  %s\n",
                  static_cast<int>(name_width), name.c_str(), shape_text(row.shape).c_str(),
                  row.dtype.c_str(), "-", "-", "-", "-", "none", "-", row.reason.c_str());
    } else if (row.converted) {
      std::printf("%-*s  %-14s %-4s %5d %6lld %-4s %-8s %-17s %10.3e  %s\n",
                  static_cast<int>(name_width), name.c_str(), shape_text(row.shape).c_str(),
                  row.dtype.c_str(), row.bits, static_cast<long long>(row.group_size),
                  row.symmetric ? "yes" : "no", row.algo.c_str(), row.type.c_str(), row.rel_error,
                  row.reason.c_str());
    } else {
      std::printf("%-*s  %-14s %-4s %5s %6s %-4s %-8s %-17s %10s  kept: %s\n",
                  static_cast<int>(name_width), name.c_str(), shape_text(row.shape).c_str(),
                  row.dtype.c_str(), "-", "-", "-", "-", "float", "-", row.reason.c_str());
    }
  }
  for (const auto& [reason, count] : folded) {
    std::printf("(%lld more tensors kept in float: %s; --table all lists them)\n",
                static_cast<long long>(count), reason.c_str());
  }
}

// ---- the run -----------------------------------------------------------------------------------

struct Totals {
  int64_t bytes_before = 0, bytes_after = 0;
  int64_t quantized_weights = 0, quantized_bytes_after = 0;
  int64_t converted = 0, kept = 0, dropped = 0;
  double seconds = 0;
  // Bits per quantized weight, scales and zero points included.
  double bits_per_weight() const {
    return quantized_weights > 0 ? 8.0 * static_cast<double>(quantized_bytes_after) /
                                       static_cast<double>(quantized_weights)
                                 : 0.0;
  }
};

JsonValue summary_json(const Options& options, const std::vector<Row>& rows, const Totals& totals,
                       const fs::path& output_file) {
  JsonValue::Array layers;
  for (const Row& row : rows) {
    JsonObject layer;
    layer.set("name", json_string(row.name)).set("shape", json_shape(row.shape));
    layer.set("dtype", json_string(row.dtype)).set("converted", json_bool(row.converted));
    layer.set("dropped", json_bool(row.dropped));
    if (row.converted) {
      layer.set("bits", json_int(row.bits)).set("group_size", json_int(row.group_size));
      layer.set("symmetric", json_bool(row.symmetric)).set("algo", json_string(row.algo));
      layer.set("layout", json_string(row.type)).set("rel_error", json_real(row.rel_error));
    }
    layer.set("bytes_before", json_int(row.bytes_before))
        .set("bytes_after", json_int(row.bytes_after));
    layer.set("reason", json_string(row.reason)).set("seconds", json_real(row.seconds));
    layers.push_back(layer.value());
  }
  JsonObject summary;
  summary.set("nibble_version", json_string(nibble::kVersionString));
  summary.set("input", json_string(options.input)).set("output", json_string(output_file.string()));
  summary.set("format", json_string(format_name(options.format)));
  summary.set("tensors", json_int(static_cast<int64_t>(rows.size())));
  summary.set("converted", json_int(totals.converted)).set("kept", json_int(totals.kept));
  summary.set("dropped", json_int(totals.dropped));
  summary.set("bytes_before", json_int(totals.bytes_before))
      .set("bytes_after", json_int(totals.bytes_after));
  summary.set("bits_per_weight", json_real(totals.bits_per_weight()));
  summary.set("seconds", json_real(totals.seconds));
  summary.set("layers", JsonValue::make_array(std::move(layers)));
  return summary.value();
}

// config.json with its quantization_config, for the Hugging Face formats.
std::optional<JsonValue> quantization_config(const Options& options,
                                             const nibble::QuantConfig& base, bool desc_act) {
  JsonObject config;
  switch (options.format) {
    case Format::gptq:
      config.set("quant_method", json_string("gptq")).set("bits", json_int(base.bits));
      config.set("group_size", json_int(base.group_size)).set("desc_act", json_bool(desc_act));
      config.set("sym", json_bool(base.symmetric)).set("checkpoint_format", json_string("gptq"));
      config.set("true_sequential", json_bool(true)).set("damp_percent", json_real(0.01));
      return config.value();
    case Format::awq:
      config.set("quant_method", json_string("awq")).set("bits", json_int(base.bits));
      config.set("group_size", json_int(base.group_size))
          .set("zero_point", json_bool(!base.symmetric));
      config.set("version", json_string("gemm"));
      return config.value();
    case Format::olive:
      config.set("quant_method", json_string("olive")).set("bits", json_int(base.bits));
      config.set("symmetric", json_bool(base.symmetric))
          .set("group_size", json_int(base.group_size));
      return config.value();
    default:
      return std::nullopt;
  }
}

// What a run writes: the model file, copies of the side files, config.json, and, by format and
// option, quantize_config.json and the --json summary.
struct OutputPlan {
  fs::path directory;
  fs::path model_file;
  std::vector<std::pair<fs::path, fs::path>> side_copies;  // source -> destination
  std::optional<fs::path> config;
  std::optional<fs::path> quantize_config;
  std::optional<fs::path> summary;
  std::vector<fs::path> files() const {
    std::vector<fs::path> all{model_file};
    for (const auto& copy : side_copies)
      all.push_back(copy.second);
    for (const auto* path : {&config, &quantize_config, &summary}) {
      if (*path) all.push_back(**path);
    }
    return all;
  }
};

OutputPlan plan_outputs(const Options& options, const Model& model) {
  OutputPlan plan;
  plan.directory = options.output;
  plan.model_file =
      plan.directory / (options.format == Format::gguf ? "model.gguf" : "model.safetensors");
  if (model.config()) plan.config = plan.directory / "config.json";
  if (options.format == Format::gptq) plan.quantize_config = plan.directory / "quantize_config.json";
  if (options.json && *options.json != "-") {
    plan.summary = fs::path(*options.json);
    const fs::path parent = nibble::io::detail::directory_of(*plan.summary);
    std::error_code error;
    const bool in_output = nibble::io::detail::normal_path(parent) ==
                           nibble::io::detail::normal_path(plan.directory);
    if (!in_output && !fs::is_directory(parent, error)) {
      throw UsageError{"--json \"" + *options.json + "\": directory \"" + parent.string() +
                       "\" does not exist"};
    }
  }
  for (const fs::path& side : model.side_files()) {
    const fs::path destination = plan.directory / side.filename();
    // A side file named like a file this run generates is replaced by the generated one.
    if (destination == plan.model_file || destination == plan.quantize_config) continue;
    plan.side_copies.emplace_back(side, destination);
  }
  return plan;
}

// Test hook: NIBBLE_QUANTIZE_TEST_PAUSE=POINT ("tensor:N" before tensor N, or "commit" when every
// output is staged and none is renamed) stops the run there for up to a minute, after saying so
// on stderr, so the fault tests can act at a known point (kill it, or change the output
// directory). SIGUSR1 resumes the run; SIGINT / SIGTERM end the pause and interrupt it.
void test_pause(const std::string& point) {
  const char* wanted = std::getenv("NIBBLE_QUANTIZE_TEST_PAUSE");
  if (wanted == nullptr || point != wanted) return;
  std::signal(SIGUSR1, on_resume);
  std::fprintf(stderr, "nibble-quantize: test pause at %s\n", point.c_str());
  std::fflush(stderr);
  for (int tick = 0; tick < 600 && g_interrupted == 0 && g_resumed == 0; ++tick)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
}

// The message of a nibble::Error without its "nibble: " prefix (for "tensor X: ...").
std::string message_of(const Error& error) {
  const std::string text = error.what();
  return text.rfind("nibble: ", 0) == 0 ? text.substr(8) : text;
}

int run(const Options& options) {
  const auto start = std::chrono::steady_clock::now();
  const fs::path output_dir = options.output;
  std::error_code error;
  if (fs::exists(output_dir, error) && !fs::is_directory(output_dir, error)) {
    nibble::detail::fail(ErrorCode::io, "output \"", options.output,
                         "\" exists and is not a directory (expected an output directory)");
  }

  // Everything read and everything to be written is known from the headers: an output that
  // would replace an input (same file, same directory, a link to it) is refused before any work.
  const Model model = Model::open(options.input);
  std::optional<SafetensorsFile> calibration;
  if (options.calibration) calibration.emplace(SafetensorsFile::open(*options.calibration));
  const OutputPlan plan = plan_outputs(options, model);
  std::vector<fs::path> files_read = model.files_read();
  if (options.calibration) files_read.push_back(*options.calibration);
  nibble::io::check_outputs_spare_inputs(files_read, output_dir, plan.files());
  if (!options.quiet) {
    for (const fs::path& ignored : model.ignored_files()) {
      std::fprintf(stderr,
                   "nibble-quantize: note: \"%s\" is not read (%s does not name it)\n",
                   ignored.string().c_str(), std::string(nibble::io::kShardIndexName).c_str());
    }
  }

  // The base configuration and the policy.
  nibble::QuantConfig base;
  base.bits = options.bits;
  base.group_size = options.group_size;
  nibble::Solver solver = options.algo.value_or(nibble::Solver::rtn);
  if (options.policy) {
    const nibble::Policy probe = nibble::Policy::from_name(*options.policy, base, 1);
    if (options.algo && *options.algo != probe.solver()) {
      throw UsageError{"--policy " + *options.policy + " runs " +
                       nibble::to_string(probe.solver()) + ", but --algo " +
                       nibble::to_string(*options.algo) + " was given"};
    }
    solver = probe.solver();
  }
  // k_quant writes zero points (onnxruntime ignores is_symmetric for it): asymmetric default.
  base.symmetric = options.symmetric.value_or(solver != nibble::Solver::k_quant);
  base.convention =
      options.convention.value_or(options.format == Format::ort || options.format == Format::gguf
                                      ? nibble::ConventionId::ort
                                      : nibble::ConventionId::olive);
  base.validate();
  std::optional<nibble::Policy> policy_holder;
  if (options.policy) {
    const bool needs_layers = *options.policy == "k_quant_mixed";
    const std::optional<int64_t> layers = model.config_integer("num_hidden_layers");
    if (needs_layers && !layers) {
      throw UsageError{
          "--policy k_quant_mixed needs the layer count: config.json with "
          "num_hidden_layers beside the weights"};
    }
    policy_holder.emplace(nibble::Policy::from_name(*options.policy, base, layers));
  } else {
    policy_holder.emplace(base, solver);
  }
  nibble::Policy& policy = *policy_holder;
  for (const std::string& text : options.overrides)
    add_override(policy, text);
  for (const std::string& pattern : options.skips)
    policy.add_not_convert(pattern);

  std::vector<std::string> names;
  for (const InputTensor& tensor : model.tensors())
    names.push_back(tensor.info.name);
  const std::vector<std::string> unmatched = policy.unmatched_rules(names);
  if (!unmatched.empty()) {
    std::string list;
    for (const std::string& rule : unmatched)
      list += (list.empty() ? "" : ", ") + rule;
    nibble::detail::fail(ErrorCode::invalid_argument, "these rules match no tensor of \"",
                         options.input, "\": ", list, " (check the names: ", names.size(),
                         " tensors, e.g. \"", names.empty() ? std::string() : names.front(), "\")");
  }

  const bool gguf = options.format == Format::gguf;
  const fs::path& output_file = plan.model_file;

  // The output directory, made only now that the run is known to be well-formed (removed again
  // if the run fails while it is still empty). Temporaries that a killed earlier run left there
  // are removed (their lock is free: io/atomic_file.hpp); a running one's are kept.
  if (!fs::exists(output_dir, error)) {
    g_created_output_dir = output_dir;
    fs::create_directories(output_dir, error);
    if (error) {
      g_created_output_dir.reset();
      nibble::detail::fail(ErrorCode::io, "cannot create output directory \"", options.output,
                           "\": ", error.message());
    }
  }
  std::vector<std::string> stale = nibble::io::remove_stale_temporaries(output_dir.string());
  if (plan.summary) {
    for (std::string& path : nibble::io::remove_stale_temporaries(
             nibble::io::detail::directory_of(*plan.summary).string(), std::chrono::seconds(10),
             plan.summary->filename().string())) {
      stale.push_back(std::move(path));
    }
  }
  if (!options.quiet) {
    for (const std::string& path : stale) {
      std::fprintf(stderr,
                   "nibble-quantize: removed \"%s\", left by an earlier run that did not "
                   "finish\n",
                   path.c_str());
    }
  }
  Spool spool(output_dir);
  Converter converter(options, spool, calibration);
  std::vector<Row> rows;
  Totals totals;
  int64_t total_bytes = 0;
  for (const InputTensor& tensor : model.tensors())
    total_bytes += tensor.info.size_bytes();
  Progress progress(static_cast<int64_t>(model.tensors().size()), total_bytes, options.quiet);
  int64_t done_bytes = 0;
  // Test hook: NIBBLE_QUANTIZE_INTERRUPT_AFTER=N raises SIGINT after N tensors, so the tests can
  // drive the real Ctrl-C path (handler, cleanup, exit status) deterministically.
  const char* interrupt_after = std::getenv("NIBBLE_QUANTIZE_INTERRUPT_AFTER");
  const int64_t interrupt_at = interrupt_after != nullptr ? std::atoll(interrupt_after) : -1;
  for (const InputTensor& tensor : model.tensors()) {
    if (static_cast<int64_t>(rows.size()) == interrupt_at) std::raise(SIGINT);
    test_pause("tensor:" + std::to_string(rows.size()));
    check_interrupt();
    const auto tensor_start = std::chrono::steady_clock::now();
    Row row;
    row.name = tensor.info.name;
    row.shape = tensor.info.shape;
    row.dtype = nibble::to_string(tensor.info.dtype);
    row.bytes_before = tensor.info.size_bytes();
    const std::optional<std::string> skip = not_a_candidate(tensor.info, options);
    nibble::TensorDecision decision;
    if (skip) {
      decision.convert = false;
      decision.reason = *skip;
    } else {
      decision = policy.decide(tensor.info.name);
    }
    bool converted = false;
    if (decision.convert) {
      try {
        converter.convert(tensor, decision, row);
        converted = true;
        row.reason = decision.reason;
      } catch (const Error& failure) {
        const bool expressible = failure.code() == ErrorCode::unsupported;
        if (options.strict || !expressible) {
          nibble::detail::fail(failure.code(), "tensor \"", tensor.info.name,
                               "\": ", message_of(failure));
        }
        decision.reason = "not expressible: " + message_of(failure);
      }
    }
    if (converted) {
      row.converted = true;
      row.bits = decision.config.bits;
      row.group_size = decision.config.group_size;
      row.symmetric = decision.config.symmetric;
      row.algo = gguf ? "gguf" : nibble::to_string(decision.solver);
      ++totals.converted;
      totals.quantized_weights += tensor.info.numel();
      totals.quantized_bytes_after += row.bytes_after;
    } else {
      row.reason = decision.reason;
      converter.keep(tensor, row);
      ++(row.dropped ? totals.dropped : totals.kept);
    }
    totals.bytes_before += row.bytes_before;
    totals.bytes_after += row.bytes_after;
    row.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - tensor_start).count();
    rows.push_back(std::move(row));
    done_bytes += tensor.info.size_bytes();
    progress.step(static_cast<int64_t>(rows.size()), done_bytes, tensor.info.name);
  }
  if (totals.converted == 0) {
    nibble::detail::fail(ErrorCode::invalid_argument, "no tensor of \"", options.input,
                         "\" was quantized (", rows.size(),
                         " tensors; see --quantize-embeddings, "
                         "--skip, and the kept reasons with --json)");
  }

  // The output file: header, then the spooled data.
  StagedOutputs staged;
  {
    nibble::io::AtomicOutputFile& out = staged.add(output_file);
    if (gguf) {
      nibble::io::GgufWriter writer;
      const JsonValue* model_type = model.config() ? model.config()->find("model_type") : nullptr;
      writer.add_metadata("general.architecture", model_type != nullptr && model_type->is_string()
                                                      ? model_type->as_string("model_type")
                                                      : std::string("unknown"));
      writer.add_metadata("general.name", fs::path(options.input).filename().string());
      writer.add_metadata("general.quantized_by",
                          std::string("nibble-quantize ") + nibble::kVersionString);
      writer.add_metadata("general.alignment", uint32_t{32});
      for (const OutputTensor& tensor : converter.outputs())
        writer.declare(tensor.name, tensor.gguf_type, tensor.shape);
      writer.begin(out.stream());
      for (const OutputTensor& tensor : converter.outputs()) {
        // One tensor in memory at a time (the writer adds the alignment padding).
        std::ostringstream piece(std::ios::binary);
        spool.copy_to(piece, tensor.offset, tensor.bytes);
        const std::string bytes = piece.str();
        writer.write(tensor.name, bytes.data(), bytes.size());
      }
      writer.finish();
    } else {
      nibble::io::SafetensorsWriter writer;
      writer.add_metadata("format", "pt");
      writer.add_metadata("nibble.format", format_name(options.format));
      writer.add_metadata("nibble.version", nibble::kVersionString);
      writer.add_metadata("nibble.convention", nibble::convention(base.convention).name);
      for (const OutputTensor& tensor : converter.outputs())
        writer.declare(tensor.name, tensor.dtype, tensor.shape);
      writer.begin(out.stream());
      for (const OutputTensor& tensor : converter.outputs()) {
        // write() checks order and size; the bytes come from the spool in pieces, so declare
        // the tensor's bytes through a streaming write.
        writer.write_from(tensor.name, tensor.bytes, [&](std::ostream& stream) {
          spool.copy_to(stream, tensor.offset, tensor.bytes);
        });
      }
      writer.finish();
    }
  }

  // Side files, and config.json with its quantization_config.
  for (const auto& [source, destination] : plan.side_copies) {
    check_interrupt();
    staged.add_text(destination,
                    nibble::io::read_small_file(source, nibble::io::kMaxSideFileBytes, "side file"));
  }
  if (plan.config) {
    JsonObject edited;
    edited.members = model.config()->as_object("config.json");  // an object (Checkpoint::open)
    if (const auto quant = quantization_config(options, base, converter.desc_act())) {
      edited.set("quantization_config", *quant);
    }
    staged.add_text(*plan.config, json_text(edited.value()));
  }
  if (plan.quantize_config) {
    staged.add_text(*plan.quantize_config,
                    json_text(*quantization_config(options, base, converter.desc_act())));
  }
  // The summary is staged with the outputs: it is written if and only if they are.
  totals.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string summary = options.json ? json_text(summary_json(options, rows, totals,
                                                                    output_file))
                                           : std::string();
  if (plan.summary) staged.add_text(*plan.summary, summary);
  test_pause("commit");
  check_interrupt();
  staged.commit_all(output_file);  // renames (and fsyncs) only: nothing is visible before this

  if (!options.quiet) {
    print_table(rows, options.table_all);
    std::printf(
        "\n%lld tensors: %lld quantized, %lld kept in float, %lld dropped; %s -> %s (%.2fx); "
        "%.3f bits per quantized weight (scales and zero points included); %.2f s\nwrote %s\n",
        static_cast<long long>(rows.size()), static_cast<long long>(totals.converted),
        static_cast<long long>(totals.kept), static_cast<long long>(totals.dropped),
        size_text(totals.bytes_before).c_str(), size_text(totals.bytes_after).c_str(),
        static_cast<double>(totals.bytes_before) / static_cast<double>(totals.bytes_after),
        totals.bits_per_weight(), totals.seconds, output_file.string().c_str());
  }
  if (options.json && *options.json == "-") std::cout << summary;
  return 0;
}

}  // namespace

void remove_created_output_dir() {
  if (!g_created_output_dir) return;
  std::error_code error;
  if (fs::is_empty(*g_created_output_dir, error) && !error)
    fs::remove(*g_created_output_dir, error);
}

int main(int argc, char** argv) {
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  int status = 1;
  try {
    const Options options = parse_options(argc, argv);
    return run(options);
  } catch (const UsageError& usage) {
    std::fprintf(stderr, "nibble-quantize: %s\n(run nibble-quantize --help for usage)\n",
                 usage.message.c_str());
    status = 2;
  } catch (const Interrupted&) {
    std::fprintf(stderr, "\nnibble-quantize: interrupted (%s); no output was written\n",
                 g_interrupted == SIGTERM ? "SIGTERM" : "SIGINT");
    status = 128 + static_cast<int>(g_interrupted);  // the shell's convention: 130, 143
  } catch (const PartialCommit& partial) {
    if (partial.written.empty()) {
      std::fprintf(stderr, "\nnibble-quantize: error: %s\nno output was written\n",
                   partial.message.c_str());
      remove_created_output_dir();
      return 1;
    }
    // Some outputs are in place: say exactly which, and leave them (and the directory).
    std::string written;
    for (const std::string& path : partial.written)
      written += "\n  " + path;
    std::fprintf(stderr,
                 "\nnibble-quantize: error: %s\nwritten before the failure:%s\nthe other outputs "
                 "were not written (files there before are unchanged)\n",
                 partial.message.c_str(), written.c_str());
    return 1;
  } catch (const Error& failure) {
    std::fprintf(stderr, "\nnibble-quantize: error: %s\nno output was written\n", failure.what());
  } catch (const std::exception& failure) {
    std::fprintf(stderr, "\nnibble-quantize: error: %s\nno output was written\n", failure.what());
  }
  // The temporaries are gone (their destructors ran while unwinding); so is a directory this
  // run created.
  remove_created_output_dir();
  return status;
}
