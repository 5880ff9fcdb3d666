// Mixed-precision quantization policies as data: which tensors to quantize, to what, with which
// solver. The presets are the ONNX Runtime GenAI model builder's `int4_algo_config` values.
//
// A Policy maps a tensor (module) name to a TensorDecision. Precedence, highest first:
//   1. modules_to_not_convert  any entry matching the name keeps the tensor in float
//   2. explicit overrides      applied in order on top of 3/4; a later override wins each field
//                              it sets (bits always; group_size / symmetric when given)
//   3. the preset's rule       lm_head at 8 bits (*_last, k_quant_mixed); k_quant_mixed's layers
//   4. the base                QuantConfig and Solver the policy was made with
// A preset bump changes bits only: group size, symmetry and convention stay the base's, as the
// builder's customized_weight_config entries are {"bits": 8}.
//
// Names. Patterns (overrides, modules_to_not_convert) are ECMAScript regexes applied with
// std::regex_search, so a plain name matches as a substring, like Hugging Face's
// `modules_to_not_convert` (`key in name`); anchor with ^...$ for an exact ORT-style
// `nodes_to_exclude` entry. The preset rules understand both the safetensors form
// `model.layers.3.mlp.down_proj.weight` and the ONNX node form
// `/model/layers.3/mlp/down_proj/MatMul`.
//
// Which tensors are candidates at all (2-D weights, MatMul vs Gather, tied embeddings) is the
// caller's business; a Policy only answers "what would this name get".
//
// Sources:
//   onnxruntime-genai src/python/py/models/builder.py (later builders/base.py)
//     make_int4_algo_config: the presets and the k_quant_mixed layer rule;
//   onnxruntime-genai builders/quant_config.py _LEGACY_INT4_ALGO_ALIASES: rtn_last, k_quant_last,
//     k_quant_mixed as (base method, {last_matmul: int8, mixed_layers: int8});
//   Olive olive/passes/pytorch/selective_mixed_precision.py (K_QUANT_MIXED, K_QUANT_LAST): the same
//     presets on Hugging Face module names, bumping q/k/v_proj and down_proj (its modulo uses
//     L // 8, not round(L / 8): see k_quant_mixed_layer);
//   llama.cpp src/llama-quant.cpp use_more_bits: the layer rule both derive from.
#pragma once

#include <cstdint>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nibble/core/error.hpp"
#include "nibble/core/quant_config.hpp"

namespace nibble {

// Which algorithm produces a tensor's scales, zero points and codes.
enum class Solver : uint8_t {
  rtn,      // round to nearest (solvers/rtn.hpp), under the QuantConfig's convention
  k_quant,  // ORT's k-quant search (a port of llama.cpp make_qkx2_quants); asymmetric only
  gptq,     // GPTQ (needs calibration data)
};

inline const char* to_string(Solver solver) {
  switch (solver) {
    case Solver::rtn:
      return "rtn";
    case Solver::k_quant:
      return "k_quant";
    case Solver::gptq:
      return "gptq";
  }
  return "unknown";
}

// What a policy decides for one tensor. When convert is false, config and solver are the base's
// and carry no meaning: the tensor stays in float.
struct TensorDecision {
  bool convert = true;
  QuantConfig config;
  Solver solver = Solver::rtn;
  std::string reason;  // the rule that decided, for the CLI's per-layer table
};

// One explicit override: tensors whose name matches `pattern` get `bits`, and group_size /
// symmetric when given (otherwise what the preset or the base gave them).
struct PolicyOverride {
  std::string pattern;
  int bits = 8;
  std::optional<int64_t> group_size;
  std::optional<bool> symmetric;
};

// A named preset: the base solver plus the preset rules it switches on.
struct PolicyPreset {
  const char* name;
  Solver solver;
  bool lm_head_8_bits;  // genai "last_matmul: int8": the last MatMul is the lm_head
  bool mixed_layers;    // genai "mixed_layers: int8": the llama.cpp layer rule, needs num_layers
};

// The table (onnxruntime-genai make_int4_algo_config / quant_config.py). Plain `k_quant` leaves
// lm_head at the base bits: builders/base.py at commit 004a30a4 also writes {"/lm_head/MatMul":
// {"bits": 8}} for plain k_quant, but its own int8_lm_head flag (which sizes the tied-embedding
// Gather) says 4 bits for it, its tests expect a 4-bit lm_head, and quant_config.py maps k_quant
// to no presets. Use `k_quant_last` for an 8-bit lm_head.
inline constexpr PolicyPreset kPolicyPresets[] = {
    {"rtn", Solver::rtn, false, false},
    {"rtn_last", Solver::rtn, true, false},
    {"k_quant", Solver::k_quant, false, false},
    {"k_quant_last", Solver::k_quant, true, false},
    {"k_quant_mixed", Solver::k_quant, true, true},
};

namespace detail {

// Splits a tensor name into its path components at '.' and '/', so that
// "model.layers.3.mlp.down_proj.weight" and "/model/layers.3/mlp/down_proj/MatMul" both yield
// ..., "layers", "3", "mlp", "down_proj", ...
inline std::vector<std::string_view> name_components(std::string_view name) {
  std::vector<std::string_view> components;
  size_t start = 0;
  for (size_t index = 0; index <= name.size(); ++index) {
    if (index == name.size() || name[index] == '.' || name[index] == '/') {
      if (index > start) components.push_back(name.substr(start, index - start));
      start = index + 1;
    }
  }
  return components;
}

// Python's round() for n / 8: half to even (round(3.5) = 4, round(2.5) = 2), exact in integers.
inline int64_t round_half_even_div8(int64_t n) {
  const int64_t quotient = n / 8;  // n >= 1: truncation is floor
  const int64_t remainder = n % 8;
  if (remainder > 4 || (remainder == 4 && quotient % 2 == 1)) return quotient + 1;
  return quotient;
}

// Python's a % b for b > 0: the result has the sign of b.
inline int64_t python_mod(int64_t a, int64_t b) {
  const int64_t mod = a % b;
  return mod < 0 ? mod + b : mod;
}

inline std::regex compile_pattern(const std::string& pattern, const char* what) {
  if (pattern.empty()) {
    fail(ErrorCode::invalid_argument, what,
         " pattern is empty (it would match every tensor; use \".*\" to mean that)");
  }
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& error) {
    fail(ErrorCode::invalid_argument, what, " pattern \"", pattern,
         "\" is not a valid regular expression (", error.what(), ")");
  }
}

}  // namespace detail

// The decoder-layer index in a tensor name: the component after the first component "layers"
// ("model.layers.3.mlp..." and "/model/layers.3/mlp/..." -> 3), or nullopt when there is none.
inline std::optional<int64_t> layer_index_of(std::string_view name) {
  const auto components = detail::name_components(name);
  for (size_t index = 0; index + 1 < components.size(); ++index) {
    if (components[index] != "layers") continue;
    const std::string_view digits = components[index + 1];
    if (digits.size() > 15) return std::nullopt;  // not a layer count any model has
    int64_t value = 0;
    for (char digit : digits) {
      if (digit < '0' || digit > '9') return std::nullopt;
      value = value * 10 + (digit - '0');
    }
    return value;
  }
  return std::nullopt;
}

// True for the output projection: "lm_head.weight", "/lm_head/MatMul" (both builders name it so).
inline bool is_lm_head(std::string_view name) {
  return name.find("lm_head") != std::string_view::npos;
}

// True when a name's module is one k_quant_mixed bumps on a selected layer: a component equal to
// qkv_proj, v_proj, down_proj (genai's "/model/layers.{i}/attn/qkv_proj|v_proj/MatMul",
// "/mlp/down_proj/MatMul") or q_proj, k_proj (Olive bumps every attention input, q/k/v_proj). With
// q_proj and k_proj in the set, an unfused model gets the same 8-bit Q and K that genai's default
// fused qkv_proj gets, whichever form its names take (genai on an unfused ONNX graph bumps only
// v_proj; llama.cpp only attn_v).
inline bool is_mixed_layer_module(std::string_view name) {
  for (std::string_view component : detail::name_components(name)) {
    if (component == "qkv_proj" || component == "q_proj" || component == "k_proj" ||
        component == "v_proj" || component == "down_proj") {
      return true;
    }
  }
  return false;
}

// The k_quant_mixed layer rule, exactly as onnxruntime-genai writes it in Python:
//   i < L / 8  or  i >= 7 * L / 8  or  (i - round(L / 8)) % 3 == 2
// with float division, round half to even and a non-negative %. llama.cpp's use_more_bits, which
// genai cites, uses integer n/8 and 7*n/8 instead: the sets agree when L % 8 == 0 and differ
// otherwise (L = 28: genai {0-3, 6, 9, ..., 24, 25-27}; llama.cpp {0-2, 5, 8, ..., 23, 24-27}).
// Olive's pass uses L // 8 inside the modulo, which differs again when round() rounds up
// (L = 28: Olive bumps 5, 8, ..., 23 instead of 6, 9, ..., 24). Requires 0 <= layer < num_layers.
inline bool k_quant_mixed_layer(int64_t layer, int64_t num_layers) {
  if (num_layers < 1 || layer < 0 || layer >= num_layers) {
    detail::fail(ErrorCode::invalid_argument, "k_quant_mixed_layer: layer = ", layer,
                 ", num_layers = ", num_layers, " (expected num_layers >= 1 and 0 <= layer < ",
                 "num_layers)");
  }
  // L / 8 and 7 * L / 8 are exact in double (a dyadic rational well inside 2^53), so these
  // comparisons are Python's.
  const double layers = static_cast<double>(num_layers);
  const double index = static_cast<double>(layer);
  return index < layers / 8.0 || index >= 7.0 * layers / 8.0 ||
         detail::python_mod(layer - detail::round_half_even_div8(num_layers), 3) == 2;
}

class Policy {
 public:
  // A policy with no preset rule ("custom"): every tensor gets `base` and `solver` unless an
  // override or modules_to_not_convert says otherwise. Throws Error for an invalid base.
  Policy(const QuantConfig& base, Solver solver)
      : Policy(PolicyPreset{"custom", solver, false, false}, base, std::nullopt) {}

  // The preset named `preset` (one of kPolicyPresets) over `base`. num_layers is the model's
  // decoder-layer count (config.json num_hidden_layers); k_quant_mixed requires it, since
  // guessing it from tensor names would silently pick the wrong layers for a truncated or
  // multimodal checkpoint. Throws Error (invalid_argument) for an unknown preset (listing the
  // valid ones), a missing or non-positive num_layers, or an invalid base.
  static Policy from_name(std::string_view preset, const QuantConfig& base = QuantConfig{},
                          std::optional<int64_t> num_layers = std::nullopt) {
    for (const PolicyPreset& row : kPolicyPresets) {
      if (preset == row.name) return Policy(row, base, num_layers);
    }
    std::ostringstream known;
    for (const PolicyPreset& row : kPolicyPresets) {
      known << (&row == kPolicyPresets ? "" : ", ") << row.name;
    }
    detail::fail(ErrorCode::invalid_argument, "policy preset \"", preset,
                 "\" is unknown (expected one of ", known.str(), ")");
  }

  // from_name with the layer count given: the form to use when it is known.
  static Policy for_model(std::string_view preset, int64_t num_layers,
                          const QuantConfig& base = QuantConfig{}) {
    return from_name(preset, base, num_layers);
  }

  static std::vector<std::string> preset_names() {
    std::vector<std::string> names;
    for (const PolicyPreset& row : kPolicyPresets)
      names.emplace_back(row.name);
    return names;
  }

  // Appends an override (later ones win). Throws Error naming the pattern when it is empty or
  // does not compile, or when bits / group_size are not valid QuantConfig values.
  Policy& add_override(const std::string& pattern, int bits,
                       std::optional<int64_t> group_size = std::nullopt,
                       std::optional<bool> symmetric = std::nullopt) {
    std::regex compiled = detail::compile_pattern(pattern, "override");
    QuantConfig check = base_;
    check.bits = bits;
    if (group_size) check.group_size = *group_size;
    try {
      check.validate();
    } catch (const Error& error) {
      detail::fail(error.code(), "override \"", pattern, "\": ", strip_prefix(error.what()));
    }
    overrides_.push_back(PolicyOverride{pattern, bits, group_size, symmetric});
    override_regexes_.push_back(std::move(compiled));
    return *this;
  }

  // Appends a modules_to_not_convert entry: matching tensors stay in float.
  Policy& add_not_convert(const std::string& pattern) {
    std::regex compiled = detail::compile_pattern(pattern, "modules_to_not_convert");
    not_convert_.push_back(pattern);
    not_convert_regexes_.push_back(std::move(compiled));
    return *this;
  }

  // The decision for one tensor name, by the precedence at the top of this header. Throws Error
  // when k_quant_mixed meets a bumped module whose layer index is >= num_layers (the count given
  // does not describe these names; exclude other towers with modules_to_not_convert).
  TensorDecision decide(std::string_view name) const {
    TensorDecision decision;
    decision.config = base_;
    decision.solver = preset_.solver;
    for (size_t index = 0; index < not_convert_.size(); ++index) {
      if (std::regex_search(name.begin(), name.end(), not_convert_regexes_[index])) {
        decision.convert = false;
        decision.reason = "modules_to_not_convert \"" + not_convert_[index] + "\"";
        return decision;
      }
    }
    decision.reason = "base";
    apply_preset_rule(name, decision);
    std::string override_reason;
    for (size_t index = 0; index < overrides_.size(); ++index) {
      if (!std::regex_search(name.begin(), name.end(), override_regexes_[index])) continue;
      const PolicyOverride& rule = overrides_[index];
      decision.config.bits = rule.bits;
      if (rule.group_size) decision.config.group_size = *rule.group_size;
      if (rule.symmetric) decision.config.symmetric = *rule.symmetric;
      override_reason += (override_reason.empty() ? "override \"" : ", override \"");
      override_reason += rule.pattern + "\"";
    }
    if (!override_reason.empty()) decision.reason = override_reason;
    return decision;
  }

  // The explicit rules that match none of `names` (all of a model's tensor names), as
  // `override "<pattern>"` / `modules_to_not_convert "<pattern>"`, in the order they were added.
  // A rule that matches nothing is almost always a typo, which the CLI must report as an error.
  // Preset rules are not listed: genai's fixed names also silently match nothing (e.g. a tied
  // checkpoint without lm_head.weight).
  std::vector<std::string> unmatched_rules(const std::vector<std::string>& names) const {
    std::vector<std::string> unmatched;
    const auto matches_any = [&names](const std::regex& pattern) {
      for (const std::string& name : names) {
        if (std::regex_search(name, pattern)) return true;
      }
      return false;
    };
    for (size_t index = 0; index < overrides_.size(); ++index) {
      if (!matches_any(override_regexes_[index])) {
        unmatched.push_back("override \"" + overrides_[index].pattern + "\"");
      }
    }
    for (size_t index = 0; index < not_convert_.size(); ++index) {
      if (!matches_any(not_convert_regexes_[index])) {
        unmatched.push_back("modules_to_not_convert \"" + not_convert_[index] + "\"");
      }
    }
    return unmatched;
  }

  const std::string& preset() const { return preset_name_; }
  const QuantConfig& base() const { return base_; }
  Solver solver() const { return preset_.solver; }
  std::optional<int64_t> num_layers() const { return num_layers_; }
  const std::vector<PolicyOverride>& overrides() const { return overrides_; }
  const std::vector<std::string>& modules_to_not_convert() const { return not_convert_; }

 private:
  Policy(const PolicyPreset& preset, const QuantConfig& base, std::optional<int64_t> num_layers)
      : preset_(preset), preset_name_(preset.name), base_(base), num_layers_(num_layers) {
    base_.validate();
    if (num_layers_ && *num_layers_ < 1) {
      detail::fail(ErrorCode::invalid_argument, "policy \"", preset_name_,
                   "\": num_layers = ", *num_layers_, " is invalid (expected >= 1)");
    }
    if (preset_.mixed_layers && !num_layers_) {
      detail::fail(ErrorCode::invalid_argument, "policy \"", preset_name_,
                   "\" needs num_layers (the model's decoder-layer count, config.json "
                   "num_hidden_layers); it is not guessed from tensor names");
    }
  }

  // Rule 3: lm_head first (a name is never both), then k_quant_mixed's layers.
  void apply_preset_rule(std::string_view name, TensorDecision& decision) const {
    if (preset_.lm_head_8_bits && is_lm_head(name)) {
      decision.config.bits = 8;
      decision.reason = preset_name_ + ": lm_head at 8 bits";
      return;
    }
    if (!preset_.mixed_layers || !is_mixed_layer_module(name)) return;
    const std::optional<int64_t> layer = layer_index_of(name);
    if (!layer) return;  // a q/k/v/down projection outside the decoder stack: base
    if (*layer >= *num_layers_) {
      detail::fail(ErrorCode::invalid_argument, "policy \"", preset_name_, "\": tensor \"", name,
                   "\" has layer index ", *layer, ", outside num_layers = ", *num_layers_,
                   " (wrong num_layers, or a tensor to list in modules_to_not_convert)");
    }
    if (!k_quant_mixed_layer(*layer, *num_layers_)) return;
    decision.config.bits = 8;
    decision.reason = preset_name_ + ": layer " + std::to_string(*layer) + " of " +
                      std::to_string(*num_layers_) + " at 8 bits";
  }

  // Error::what() starts with "nibble: "; a rethrown message must not repeat it.
  static std::string strip_prefix(const char* message) {
    const std::string_view text(message);
    const std::string_view prefix = "nibble: ";
    return std::string(text.substr(0, prefix.size()) == prefix ? text.substr(prefix.size()) : text);
  }

  PolicyPreset preset_;
  std::string preset_name_;
  QuantConfig base_;
  std::optional<int64_t> num_layers_;
  std::vector<PolicyOverride> overrides_;
  std::vector<std::regex> override_regexes_;  // overrides_[i] compiled
  std::vector<std::string> not_convert_;
  std::vector<std::regex> not_convert_regexes_;  // not_convert_[i] compiled
};

}  // namespace nibble
