// Checkpoint::open: a file or a model directory, with or without a shard index, its config.json
// and side files; every way the index and the shards can disagree is an error naming the tensor
// and the shard, and a shard name leaving the directory is refused before anything is opened.
#include "nibble/io/checkpoint.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "nibble/io/atomic_file.hpp"

namespace {

namespace fs = std::filesystem;
using nibble::DType;
using nibble::Error;
using nibble::ErrorCode;
using nibble::io::Checkpoint;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() / (std::string("nibble_test_checkpoint_") + test->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

  // A shard holding one 2-float tensor per name.
  void shard(const std::string& file, const std::vector<std::string>& tensors) const {
    nibble::io::SafetensorsWriter writer;
    for (const std::string& name : tensors)
      writer.declare(name, DType::f32, {2});
    nibble::io::AtomicOutputFile out((root_ / file).string());
    writer.begin(out.stream());
    const float values[2] = {1.0f, 2.0f};
    for (const std::string& name : tensors)
      writer.write(name, values, sizeof values);
    writer.finish();
    out.commit();
  }
  void text(const std::string& file, const std::string& contents) const {
    std::ofstream(root_ / file) << contents;
  }
  std::string open_error() const {
    try {
      (void)Checkpoint::open(root_.string());
    } catch (const Error& error) {
      return std::string(to_string(error.code())) + ": " + error.what();
    }
    return "opened";
  }

  fs::path root_;
};

std::vector<std::string> tensor_names(const Checkpoint& checkpoint) {
  std::vector<std::string> names;
  for (const auto& tensor : checkpoint.tensors())
    names.push_back(tensor.info.name);
  return names;
}

std::vector<std::string> file_names(const std::vector<fs::path>& paths) {
  std::vector<std::string> names;
  for (const fs::path& path : paths)
    names.push_back(path.filename().string());
  return names;
}

bool contains(const std::string& text, const std::string& fragment) {
  return text.find(fragment) != std::string::npos;
}

TEST_F(CheckpointTest, ADirectoryWithoutAnIndexReadsEveryShardInNameOrder) {
  shard("b.safetensors", {"y", "z"});
  shard("a.safetensors", {"x"});
  text("config.json", R"({"model_type": "llama", "text_config": {"num_hidden_layers": 4}})");
  text("tokenizer.json", "{}");
  text(".hidden", "x");
  text("pytorch_model.bin", "x");
  text("model.safetensors.nibble-tmp-1-0", "a writer's temporary");
  const Checkpoint checkpoint = Checkpoint::open(root_.string());
  EXPECT_EQ(tensor_names(checkpoint), (std::vector<std::string>{"x", "y", "z"}));
  EXPECT_EQ(file_names(checkpoint.side_files()), std::vector<std::string>{"tokenizer.json"});
  EXPECT_TRUE(checkpoint.ignored_files().empty());
  EXPECT_EQ(file_names(checkpoint.files_read()),
            (std::vector<std::string>{"config.json", "a.safetensors", "b.safetensors",
                                      "tokenizer.json"}));
  EXPECT_EQ(checkpoint.config_integer("num_hidden_layers"), 4) << "nested under text_config";
  EXPECT_EQ(checkpoint.config_integer("model_type"), std::nullopt) << "not an integer";
}

TEST_F(CheckpointTest, AFileReadsItsDirectorysConfigButNoSideFiles) {
  shard("m.safetensors", {"w"});
  text("config.json", "{}");
  text("tokenizer.json", "{}");
  const Checkpoint checkpoint = Checkpoint::open((root_ / "m.safetensors").string());
  EXPECT_EQ(checkpoint.directory(), root_);
  EXPECT_TRUE(checkpoint.config().has_value());
  EXPECT_TRUE(checkpoint.side_files().empty());
}

TEST_F(CheckpointTest, TheIndexNamesTheShardsAndOthersAreIgnored) {
  shard("model-00001-of-00002.safetensors", {"a", "b"});
  shard("model-00002-of-00002.safetensors", {"c"});
  shard("consolidated.safetensors", {"a", "b", "c"});
  text("model.safetensors.index.json",
       R"({"metadata": {"total_size": 24}, "weight_map": {"a": "model-00001-of-00002.safetensors",
          "c": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}})");
  const Checkpoint checkpoint = Checkpoint::open(root_.string());
  EXPECT_EQ(tensor_names(checkpoint), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(file_names(checkpoint.ignored_files()),
            std::vector<std::string>{"consolidated.safetensors"});
  EXPECT_EQ(file_names(checkpoint.files_read()),
            (std::vector<std::string>{"model.safetensors.index.json",
                                      "model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors"}));
}

TEST_F(CheckpointTest, TheIndexIsCheckedAgainstTheShardsBothWays) {
  shard("s1.safetensors", {"a", "b"});
  shard("s2.safetensors", {"c"});
  const std::pair<const char*, const char*> cases[] = {
      {R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors",
           "d": "s2.safetensors"}})",
       "1 tensor(s) listed but held by no shard: \"d\" (listed in s2.safetensors)"},
      {R"({"weight_map": {"a": "s1.safetensors", "c": "s2.safetensors"}})",
       "1 tensor(s) of a shard the index does not list: \"b\" (in s1.safetensors)"},
      {R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s1.safetensors",
           "x": "s2.safetensors"}})",
       "1 tensor(s) listed but held by no shard: \"x\" (listed in s2.safetensors); 1 tensor(s) "
       "in another shard than the index says: \"c\" (in s2.safetensors, listed in "
       "s1.safetensors)"},
      {R"({"weight_map": {"a": "../s1.safetensors"}})",
       "weight_map[\"a\"] = \"../s1.safetensors\" is not a file of the model directory"},
      {R"({"weight_map": {"a": "/tmp/s1.safetensors"}})", "is not a file of the model directory"},
      {R"({"weight_map": {"a": "."}})", "is not a file of the model directory"},
      {R"({"weight_map": {"a": "s3.safetensors"}})", "s3.safetensors\" (named by"},
      {R"({"weight_map": {}})", "weight_map is empty"},
      {R"({"weights": {}})", "no \"weight_map\""},
      {R"({"weight_map": {"a": 1}})", "expected a string"},
      {R"([1])", "no \"weight_map\""},
  };
  for (const auto& [index, fragment] : cases) {
    text("model.safetensors.index.json", index);
    const std::string message = open_error();
    EXPECT_TRUE(contains(message, fragment)) << index << "\n  -> " << message;
  }
}

TEST_F(CheckpointTest, MisplacedTensorsAreNamedWithBothShards) {
  shard("s1.safetensors", {"a"});
  shard("s2.safetensors", {"b"});
  text("model.safetensors.index.json",
       R"({"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors"}})");
  const std::string message = open_error();
  EXPECT_TRUE(contains(message, "malformed")) << message;
  EXPECT_TRUE(contains(message,
                       "2 tensor(s) in another shard than the index says: \"a\" (in "
                       "s1.safetensors, listed in s2.safetensors), \"b\" (in s2.safetensors, "
                       "listed in s1.safetensors)"))
      << message;
}

TEST_F(CheckpointTest, ATensorInTwoShardsIsAnError) {
  shard("a.safetensors", {"w"});
  shard("b.safetensors", {"w"});
  EXPECT_TRUE(contains(open_error(), "tensor \"w\" is in \"")) << open_error();
}

TEST_F(CheckpointTest, AConfigThatIsNotAnObjectIsAnError) {
  shard("a.safetensors", {"w"});
  for (const char* config : {"[]", "\"llama\"", "12", "null"}) {
    text("config.json", config);
    const std::string message = open_error();
    EXPECT_TRUE(contains(message, "(expected a JSON object, the model's configuration)"))
        << config << " -> " << message;
  }
  text("config.json", "{\"a\": 1, \"a\": 2}");
  EXPECT_TRUE(contains(open_error(), "duplicate object key")) << open_error();
}

TEST_F(CheckpointTest, AnEmptyOrMissingInputIsAnError) {
  EXPECT_TRUE(contains(open_error(), "holds no .safetensors file")) << open_error();
  try {
    (void)Checkpoint::open((root_ / "nope").string());
    FAIL();
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::io);
    EXPECT_TRUE(contains(error.what(), "does not exist"));
  }
}

}  // namespace
