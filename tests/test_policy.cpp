#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

#include "nibble/core/convention.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/solvers/policy.hpp"

namespace {

using nibble::ConventionId;
using nibble::Error;
using nibble::ErrorCode;
using nibble::Policy;
using nibble::QuantConfig;
using nibble::Solver;
using nibble::TensorDecision;

// ---- a Llama-style model's tensor names, in both forms ------------------------------------------

// safetensors: "model.layers.3.self_attn.q_proj.weight"; ONNX (GenAI builder node names):
// "/model/layers.3/attn/q_proj/MatMul".
enum class NameForm { safetensors, onnx };

struct Module {
  const char* hf_block;    // the block in the safetensors name
  const char* onnx_block;  // the block in the GenAI ONNX node name
  const char* projection;
};

// Every per-layer MatMul, with the fused qkv_proj of Phi-3-style checkpoints and GenAI's default
// packed graph alongside the unfused q/k/v (a real model has one or the other; the policy only
// looks at names, so both are checked at once).
const Module kModules[] = {
    {"self_attn", "attn", "q_proj"},   {"self_attn", "attn", "k_proj"},
    {"self_attn", "attn", "v_proj"},   {"self_attn", "attn", "o_proj"},
    {"self_attn", "attn", "qkv_proj"}, {"mlp", "mlp", "gate_proj"},
    {"mlp", "mlp", "up_proj"},         {"mlp", "mlp", "down_proj"},
};

// The modules k_quant_mixed bumps on a selected layer (genai: qkv_proj, v_proj, down_proj; Olive:
// q/k/v_proj, down_proj).
const std::set<std::string> kBumpedProjections = {"q_proj", "k_proj", "v_proj", "qkv_proj",
                                                  "down_proj"};

std::string layer_tensor_name(NameForm form, int layer, const Module& module) {
  const std::string index = std::to_string(layer);
  if (form == NameForm::safetensors) {
    return "model.layers." + index + "." + module.hf_block + "." + module.projection + ".weight";
  }
  return "/model/layers." + index + "/" + module.onnx_block + "/" + module.projection + "/MatMul";
}

std::string lm_head_name(NameForm form) {
  return form == NameForm::safetensors ? "lm_head.weight" : "/lm_head/MatMul";
}

std::string embed_tokens_name(NameForm form) {
  return form == NameForm::safetensors ? "model.embed_tokens.weight" : "/model/embed_tokens/Gather";
}

std::vector<std::string> model_tensor_names(NameForm form, int num_layers) {
  std::vector<std::string> names = {embed_tokens_name(form)};
  for (int layer = 0; layer < num_layers; ++layer) {
    for (const Module& module : kModules)
      names.push_back(layer_tensor_name(form, layer, module));
  }
  names.push_back(lm_head_name(form));
  return names;
}

const char* form_name(NameForm form) {
  return form == NameForm::safetensors ? "safetensors" : "onnx";
}

QuantConfig base_config() {
  QuantConfig config;
  config.bits = 4;
  config.group_size = 32;
  config.symmetric = false;
  config.convention = ConventionId::ort_weight_only;
  return config;
}

// Checks that `policy` puts exactly `expected_layers` at 8 bits for every bumped projection, and
// leaves o_proj / gate_proj / up_proj, embed_tokens and nothing else changed from the base; lm_head
// at 8 bits (every k_quant_mixed variant).
void expect_mixed_layers(int num_layers, const std::set<int>& expected_layers) {
  const QuantConfig base = base_config();
  const Policy policy = Policy::for_model("k_quant_mixed", num_layers, base);
  QuantConfig bumped = base;
  bumped.bits = 8;
  for (NameForm form : {NameForm::safetensors, NameForm::onnx}) {
    SCOPED_TRACE(form_name(form));
    for (const Module& module : kModules) {
      const bool is_bumped = kBumpedProjections.count(module.projection) > 0;
      std::set<int> eight_bit_layers;
      for (int layer = 0; layer < num_layers; ++layer) {
        const std::string name = layer_tensor_name(form, layer, module);
        const TensorDecision decision = policy.decide(name);
        EXPECT_TRUE(decision.convert) << name;
        EXPECT_EQ(decision.solver, Solver::k_quant) << name;
        if (decision.config.bits == 8) {
          eight_bit_layers.insert(layer);
          EXPECT_EQ(decision.config, bumped) << name << ": a bump changes bits only";
        } else {
          EXPECT_EQ(decision.config, base) << name;
          EXPECT_EQ(decision.reason, "base") << name;
        }
      }
      EXPECT_EQ(eight_bit_layers, is_bumped ? expected_layers : std::set<int>{})
          << module.projection;
    }
    const TensorDecision lm_head = policy.decide(lm_head_name(form));
    EXPECT_EQ(lm_head.config, bumped);
    EXPECT_EQ(lm_head.reason, "k_quant_mixed: lm_head at 8 bits");
    EXPECT_EQ(policy.decide(embed_tokens_name(form)).config, base);
  }
}

// The rule as llama.cpp writes it (src/llama-quant.cpp use_more_bits): C integer division. i - n/8
// is negative only for i < n/8, which the first clause already selects, so C's % is harmless.
bool llama_cpp_use_more_bits(int layer, int num_layers) {
  return layer < num_layers / 8 || layer >= 7 * num_layers / 8 || (layer - num_layers / 8) % 3 == 2;
}

std::set<int> selected_layers(int num_layers) {
  std::set<int> layers;
  for (int layer = 0; layer < num_layers; ++layer) {
    if (nibble::k_quant_mixed_layer(layer, num_layers)) layers.insert(layer);
  }
  return layers;
}

// Runs `body`, expecting an Error with `code` whose message contains every one of `parts`.
void expect_error(const std::function<void()>& body, ErrorCode code,
                  std::initializer_list<std::string> parts) {
  try {
    body();
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), code) << error.what();
    for (const std::string& part : parts) {
      EXPECT_NE(std::string(error.what()).find(part), std::string::npos)
          << "message \"" << error.what() << "\" lacks \"" << part << "\"";
    }
    return;
  }
  ADD_FAILURE() << "no nibble::Error thrown";
}

// ---- k_quant_mixed: the layer sets --------------------------------------------------------------

// L = 32 (Llama-2/3-8B). Python: 32 / 8 = 4.0, round(4.0) = 4, 7 * 32 / 8 = 28.0.
//   i < 4.0            -> 0, 1, 2, 3
//   i >= 28.0          -> 28, 29, 30, 31
//   (i - 4) % 3 == 2   -> i % 3 == 0 (i - 4 = 3k + 2 <=> i = 3k + 6) -> 0, 3, 6, 9, ..., 27, 30
// Union: 0-3, 6, 9, 12, 15, 18, 21, 24, 27, 28-31 (16 layers); the design notes list the same.
TEST(KQuantMixed, Llama32Layers) {
  expect_mixed_layers(32, {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31});
}

// L = 28 (Qwen2-7B). Python: 28 / 8 = 3.5, round(3.5) = 4 (half to even: 4 is even), 7 * 28 / 8
// = 24.5.
//   i < 3.5            -> 0, 1, 2, 3
//   i >= 24.5          -> 25, 26, 27
//   (i - 4) % 3 == 2   -> i % 3 == 0 -> 0, 3, 6, ..., 24, 27
// Union: 0-3, 6, 9, 12, 15, 18, 21, 24, 25-27 (14 layers), the GenAI set in the design notes.
TEST(KQuantMixed, Qwen28Layers) {
  expect_mixed_layers(28, {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 25, 26, 27});
}

// L = 8: Olive's tests expect [0, 3, 6, 7]. Python: 8 / 8 = 1.0, round = 1, 7 * 8 / 8 = 7.0.
//   i < 1 -> 0;  i >= 7 -> 7;  (i - 1) % 3 == 2 -> i % 3 == 0 -> 0, 3, 6.
TEST(KQuantMixed, Olive8Layers) {
  expect_mixed_layers(8, {0, 3, 6, 7});
}

// L = 20 pins round half to EVEN: 20 / 8 = 2.5, round(2.5) = 2 (half away from zero would give 3
// and select i % 3 == 2 instead). 7 * 20 / 8 = 17.5.
//   i < 2.5 -> 0, 1, 2;  i >= 17.5 -> 18, 19;  (i - 2) % 3 == 2 -> i % 3 == 1 -> 1, 4, ..., 16, 19.
TEST(KQuantMixed, RoundsHalfToEven20Layers) {
  expect_mixed_layers(20, {0, 1, 2, 4, 7, 10, 13, 16, 18, 19});
}

// GenAI's float rule equals llama.cpp's integer rule when L % 8 == 0, and not otherwise.
TEST(KQuantMixed, AgreesWithLlamaCppWhenLayersAreAMultipleOf8) {
  for (int num_layers = 8; num_layers <= 128; num_layers += 8) {
    for (int layer = 0; layer < num_layers; ++layer) {
      EXPECT_EQ(nibble::k_quant_mixed_layer(layer, num_layers),
                llama_cpp_use_more_bits(layer, num_layers))
          << "layer " << layer << " of " << num_layers;
    }
  }
  // L = 28 in llama.cpp: 28/8 = 3, 7*28/8 = 24: 0-2, 24-27, (i - 3) % 3 == 2 -> 2, 5, ..., 23.
  std::set<int> llama_cpp_28;
  for (int layer = 0; layer < 28; ++layer) {
    if (llama_cpp_use_more_bits(layer, 28)) llama_cpp_28.insert(layer);
  }
  EXPECT_EQ(llama_cpp_28, (std::set<int>{0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27}));
  EXPECT_NE(selected_layers(28), llama_cpp_28);
}

TEST(KQuantMixed, RejectsALayerOutsideTheModel) {
  expect_error([] { nibble::k_quant_mixed_layer(32, 32); }, ErrorCode::invalid_argument,
               {"layer = 32", "num_layers = 32"});
  expect_error([] { nibble::k_quant_mixed_layer(0, 0); }, ErrorCode::invalid_argument,
               {"num_layers = 0"});
  // A bumped module whose index says num_layers is wrong is an error, not a silent base decision.
  const Policy policy = Policy::for_model("k_quant_mixed", 32);
  expect_error([&] { policy.decide("model.layers.40.mlp.down_proj.weight"); },
               ErrorCode::invalid_argument,
               {"model.layers.40.mlp.down_proj.weight", "layer index 40", "num_layers = 32"});
  // ... unless the caller excludes those tensors.
  Policy excluding = Policy::for_model("k_quant_mixed", 32);
  excluding.add_not_convert("^vision_tower\\.");
  EXPECT_FALSE(excluding.decide("vision_tower.layers.40.mlp.down_proj.weight").convert);
  // Indices past num_layers in other modules (GenAI names its final norm /model/layers.{L}/...)
  // are not the rule's business.
  EXPECT_EQ(policy.decide("/model/layers.32/final_norm_layernorm/SkipLayerNorm").config.bits, 4);
}

// ---- the other presets --------------------------------------------------------------------------

// Only lm_head at 8 bits; every other tensor (both forms, 32 layers) at the base.
void expect_only_lm_head_at_8_bits(const char* preset, Solver solver) {
  SCOPED_TRACE(preset);
  const QuantConfig base = base_config();
  const Policy policy = Policy::from_name(preset, base);
  EXPECT_EQ(policy.solver(), solver);
  for (NameForm form : {NameForm::safetensors, NameForm::onnx}) {
    for (const std::string& name : model_tensor_names(form, 32)) {
      const TensorDecision decision = policy.decide(name);
      EXPECT_TRUE(decision.convert) << name;
      EXPECT_EQ(decision.solver, solver) << name;
      EXPECT_EQ(decision.config.bits, name == lm_head_name(form) ? 8 : 4) << name;
      EXPECT_EQ(decision.config.group_size, base.group_size) << name;
    }
  }
  EXPECT_EQ(policy.decide("lm_head.weight").reason, std::string(preset) + ": lm_head at 8 bits");
}

TEST(PolicyPresets, RtnLastPutsOnlyLmHeadAt8Bits) {
  expect_only_lm_head_at_8_bits("rtn_last", Solver::rtn);
}

TEST(PolicyPresets, KQuantLastPutsOnlyLmHeadAt8Bits) {
  expect_only_lm_head_at_8_bits("k_quant_last", Solver::k_quant);
}

// Plain rtn and k_quant keep lm_head at the base bits. (One GenAI commit also writes an 8-bit
// lm_head for plain k_quant while its int8_lm_head flag says otherwise; nibble follows the flag,
// GenAI's tests and quant_config.py: k_quant_last is the preset for an 8-bit lm_head.)
TEST(PolicyPresets, RtnAndKQuantKeepEverythingAtTheBase) {
  for (const char* preset : {"rtn", "k_quant"}) {
    SCOPED_TRACE(preset);
    const Policy policy = Policy::from_name(preset, base_config());
    for (NameForm form : {NameForm::safetensors, NameForm::onnx}) {
      for (const std::string& name : model_tensor_names(form, 32)) {
        const TensorDecision decision = policy.decide(name);
        EXPECT_TRUE(decision.convert) << name;
        EXPECT_EQ(decision.config, base_config()) << name;
        EXPECT_EQ(decision.reason, "base") << name;
      }
    }
  }
  EXPECT_EQ(Policy::from_name("rtn").solver(), Solver::rtn);
  EXPECT_EQ(Policy::from_name("k_quant").solver(), Solver::k_quant);
}

TEST(PolicyPresets, NamesAndNumLayers) {
  EXPECT_EQ(Policy::preset_names(), (std::vector<std::string>{"rtn", "rtn_last", "k_quant",
                                                              "k_quant_last", "k_quant_mixed"}));
  const Policy policy = Policy::for_model("k_quant_mixed", 28, base_config());
  EXPECT_EQ(policy.preset(), "k_quant_mixed");
  EXPECT_EQ(policy.num_layers(), 28);
  EXPECT_EQ(policy.base(), base_config());
  // Presets that do not need the layer count accept it and ignore it.
  EXPECT_EQ(
      Policy::for_model("rtn_last", 32).decide("model.layers.0.mlp.down_proj.weight").config.bits,
      4);
  EXPECT_FALSE(Policy::from_name("rtn").num_layers().has_value());
}

TEST(PolicyPresets, CustomPolicyHasNoPresetRule) {
  const Policy policy(base_config(), Solver::gptq);
  EXPECT_EQ(policy.preset(), "custom");
  const TensorDecision decision = policy.decide("lm_head.weight");
  EXPECT_EQ(decision.solver, Solver::gptq);
  EXPECT_EQ(decision.config, base_config());
  EXPECT_STREQ(nibble::to_string(Solver::gptq), "gptq");
}

// ---- names --------------------------------------------------------------------------------------

TEST(PolicyNames, LayerIndexInBothForms) {
  EXPECT_EQ(nibble::layer_index_of("model.layers.3.mlp.down_proj.weight"), 3);
  EXPECT_EQ(nibble::layer_index_of("/model/layers.3/mlp/down_proj/MatMul"), 3);
  EXPECT_EQ(nibble::layer_index_of("model.layers.27.self_attn.qkv_proj.weight"), 27);
  EXPECT_FALSE(nibble::layer_index_of("lm_head.weight").has_value());
  EXPECT_FALSE(nibble::layer_index_of("/model/embed_tokens/Gather").has_value());
  EXPECT_FALSE(nibble::layer_index_of("model.sublayers.3.mlp.down_proj.weight").has_value());
  EXPECT_FALSE(nibble::layer_index_of("model.layers.x3.mlp").has_value());
  EXPECT_TRUE(nibble::is_lm_head("/lm_head/MatMul"));
  EXPECT_TRUE(nibble::is_lm_head("lm_head.weight"));
  EXPECT_FALSE(nibble::is_lm_head("model.embed_tokens.weight"));
  // Whole components only: o_proj is not v_proj, down_proj_bias is not down_proj.
  EXPECT_FALSE(nibble::is_mixed_layer_module("model.layers.0.self_attn.o_proj.weight"));
  EXPECT_FALSE(nibble::is_mixed_layer_module("model.layers.0.mlp.down_proj_bias"));
  EXPECT_TRUE(nibble::is_mixed_layer_module("/model/layers.0/attn/qkv_proj/MatMul"));
}

// ---- overrides, not-convert, precedence ---------------------------------------------------------

TEST(PolicyOverrides, LaterOverridesWinEachFieldTheySet) {
  Policy policy = Policy::from_name("rtn", base_config());
  policy.add_override("mlp", 8, 128, true);
  policy.add_override("down_proj", 2);  // bits only: group_size / symmetric from "mlp"
  const TensorDecision down = policy.decide("model.layers.5.mlp.down_proj.weight");
  EXPECT_EQ(down.config.bits, 2);
  EXPECT_EQ(down.config.group_size, 128);
  EXPECT_TRUE(down.config.symmetric);
  EXPECT_EQ(down.config.convention, ConventionId::ort_weight_only);
  EXPECT_EQ(down.reason, "override \"mlp\", override \"down_proj\"");
  const TensorDecision up = policy.decide("/model/layers.5/mlp/up_proj/MatMul");
  EXPECT_EQ(up.config.bits, 8);
  EXPECT_EQ(up.reason, "override \"mlp\"");
  EXPECT_EQ(policy.decide("model.layers.5.self_attn.q_proj.weight").config, base_config());
  ASSERT_EQ(policy.overrides().size(), 2u);
  EXPECT_EQ(policy.overrides()[1].pattern, "down_proj");
  EXPECT_FALSE(policy.overrides()[1].group_size.has_value());
}

TEST(PolicyOverrides, OverridesBeatThePresetRule) {
  Policy policy = Policy::for_model("k_quant_mixed", 32, base_config());
  policy.add_override("lm_head", 4);                       // like genai's "last_matmul:int4"
  policy.add_override("^model\\.layers\\.0\\.mlp\\.", 4);  // layer 0 is a mixed layer
  EXPECT_EQ(policy.decide("lm_head.weight").config.bits, 4);
  EXPECT_EQ(policy.decide("model.layers.0.mlp.down_proj.weight").config.bits, 4);
  EXPECT_EQ(policy.decide("model.layers.0.self_attn.v_proj.weight").config.bits, 8);
  // The ONNX name of the same tensor does not match the anchored safetensors pattern.
  EXPECT_EQ(policy.decide("/model/layers.0/mlp/down_proj/MatMul").config.bits, 8);
  EXPECT_EQ(policy.decide("/model/layers.0/mlp/down_proj/MatMul").reason,
            "k_quant_mixed: layer 0 of 32 at 8 bits");
}

TEST(PolicyOverrides, NotConvertBeatsEverything) {
  Policy policy = Policy::for_model("k_quant_mixed", 32, base_config());
  policy.add_override("lm_head", 2);
  policy.add_override("layers\\.1[./]", 8);
  policy.add_not_convert("lm_head");  // a plain name matches as a substring, in both forms
  policy.add_not_convert("^model\\.layers\\.1\\.mlp\\.down_proj\\.weight$");
  for (const char* name : {"lm_head.weight", "/lm_head/MatMul"}) {
    const TensorDecision decision = policy.decide(name);
    EXPECT_FALSE(decision.convert) << name;
    EXPECT_EQ(decision.reason, "modules_to_not_convert \"lm_head\"") << name;
  }
  EXPECT_FALSE(policy.decide("model.layers.1.mlp.down_proj.weight").convert);
  // The anchored entry is exact: layer 1's other modules and layer 11 are converted.
  const TensorDecision up = policy.decide("model.layers.1.mlp.up_proj.weight");
  EXPECT_TRUE(up.convert);
  EXPECT_EQ(up.config.bits, 8);
  EXPECT_EQ(up.reason, "override \"layers\\.1[./]\"");
  EXPECT_TRUE(policy.decide("model.layers.11.mlp.down_proj.weight").convert);
  EXPECT_EQ(policy.modules_to_not_convert().size(), 2u);
}

// ---- unmatched rules ----------------------------------------------------------------------------

TEST(PolicyUnmatchedRules, ListsEveryRuleThatMatchesNoName) {
  Policy policy = Policy::for_model("k_quant_mixed", 32);
  policy.add_override("down_proj", 8);
  policy.add_override("down_porj", 8);  // a typo
  policy.add_not_convert("lm_head");
  policy.add_not_convert("^model\\.layers\\.32\\.");  // one past the last layer
  for (NameForm form : {NameForm::safetensors, NameForm::onnx}) {
    SCOPED_TRACE(form_name(form));
    EXPECT_EQ(policy.unmatched_rules(model_tensor_names(form, 32)),
              (std::vector<std::string>{"override \"down_porj\"",
                                        "modules_to_not_convert \"^model\\.layers\\.32\\.\""}));
  }
  EXPECT_TRUE(Policy::for_model("k_quant_mixed", 32)
                  .unmatched_rules(model_tensor_names(NameForm::onnx, 32))
                  .empty());
  EXPECT_EQ(policy.unmatched_rules({}).size(), 4u);
}

// ---- errors -------------------------------------------------------------------------------------

TEST(PolicyErrors, UnknownPresetListsTheValidOnes) {
  expect_error([] { Policy::from_name("k_quant_mix"); }, ErrorCode::invalid_argument,
               {"\"k_quant_mix\"", "rtn, rtn_last, k_quant, k_quant_last, k_quant_mixed"});
  expect_error([] { Policy::for_model("default", 32); }, ErrorCode::invalid_argument,
               {"\"default\""});
}

TEST(PolicyErrors, MixedPresetNeedsNumLayers) {
  expect_error([] { Policy::from_name("k_quant_mixed"); }, ErrorCode::invalid_argument,
               {"\"k_quant_mixed\"", "needs num_layers"});
  expect_error([] { Policy::for_model("k_quant_mixed", 0); }, ErrorCode::invalid_argument,
               {"num_layers = 0"});
  expect_error([] { Policy::for_model("rtn", -3); }, ErrorCode::invalid_argument,
               {"num_layers = -3"});
}

TEST(PolicyErrors, BadPatternsAreNamed) {
  Policy policy = Policy::from_name("rtn");
  expect_error([&] { policy.add_override("layers.(", 8); }, ErrorCode::invalid_argument,
               {"override pattern \"layers.(\"", "not a valid regular expression"});
  expect_error([&] { policy.add_not_convert("[lm_head"); }, ErrorCode::invalid_argument,
               {"modules_to_not_convert pattern \"[lm_head\""});
  expect_error([&] { policy.add_override("", 8); }, ErrorCode::invalid_argument,
               {"override pattern is empty"});
  EXPECT_TRUE(policy.overrides().empty());
  EXPECT_TRUE(policy.modules_to_not_convert().empty());
}

TEST(PolicyErrors, BadOverrideValuesAreNamed) {
  Policy policy = Policy::from_name("rtn");
  expect_error([&] { policy.add_override("down_proj", 3); }, ErrorCode::invalid_argument,
               {"override \"down_proj\"", "bits = 3", "expected 2, 4 or 8"});
  expect_error([&] { policy.add_override("down_proj", 8, 0); }, ErrorCode::invalid_argument,
               {"override \"down_proj\"", "group_size = 0"});
  // Error::what() carries the "nibble: " prefix once.
  try {
    policy.add_override("down_proj", 3);
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()).find("nibble: ", 1), std::string::npos) << error.what();
  }
  EXPECT_TRUE(policy.overrides().empty());
}

TEST(PolicyErrors, InvalidBaseIsRejected) {
  QuantConfig base = base_config();
  base.bits = 5;
  expect_error([&] { Policy::from_name("rtn", base); }, ErrorCode::invalid_argument, {"bits = 5"});
  expect_error([&] { Policy(base, Solver::gptq); }, ErrorCode::invalid_argument, {"bits = 5"});
}

}  // namespace
