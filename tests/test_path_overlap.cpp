// check_outputs_spare_inputs: every way an output can be an input (same path, other spellings,
// symbolic and hard links, the input's directory) is refused with both paths named; outputs
// beside the inputs' directory, or not yet existing, pass.
#include "nibble/io/path_overlap.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using nibble::Error;
using nibble::ErrorCode;
using nibble::io::check_outputs_spare_inputs;

class PathOverlap : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() / (std::string("nibble_test_path_overlap_") + test->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "model");
    fs::create_directories(root_ / "out");
    std::ofstream(root_ / "model" / "model.safetensors") << "weights";
    std::ofstream(root_ / "model" / "config.json") << "{}";
    inputs_ = {root_ / "model" / "model.safetensors", root_ / "model" / "config.json"};
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

  // The message of the refusal of (output directory, outputs), or "" when it passes.
  std::string refusal(const fs::path& directory, const std::vector<fs::path>& outputs) const {
    try {
      check_outputs_spare_inputs(inputs_, directory, outputs);
    } catch (const Error& error) {
      EXPECT_EQ(error.code(), ErrorCode::invalid_argument);
      return error.what();
    }
    return "";
  }

  fs::path root_;
  std::vector<fs::path> inputs_;
};

bool contains(const std::string& text, const std::string& fragment) {
  return text.find(fragment) != std::string::npos;
}

TEST_F(PathOverlap, SeparateDirectoriesPass) {
  EXPECT_EQ(refusal(root_ / "out", {root_ / "out" / "model.safetensors",
                                    root_ / "out" / "config.json", root_ / "summary.json"}),
            "");
  EXPECT_EQ(refusal(root_ / "not_yet", {root_ / "not_yet" / "model.safetensors"}), "");
  EXPECT_EQ(refusal(root_ / "model" / "quantized", {root_ / "model" / "quantized" / "x"}), "")
      << "a directory inside the model directory is another directory";
}

TEST_F(PathOverlap, TheInputsDirectoryIsRefusedHoweverSpelled) {
  fs::create_directory_symlink(root_ / "model", root_ / "alias");
  for (const fs::path& directory : {root_ / "model", root_ / "model" / ".",
                                    root_ / "out" / ".." / "model", root_ / "alias"}) {
    const std::string message = refusal(directory, {directory / "model.safetensors"});
    EXPECT_TRUE(contains(message, "is the directory of the input")) << directory << ": " << message;
  }
}

TEST_F(PathOverlap, AnOutputThatIsAnInputIsRefusedWithHowTheyMeet) {
  fs::create_hard_link(root_ / "model" / "model.safetensors", root_ / "out" / "hard");
  fs::create_symlink(root_ / "model" / "config.json", root_ / "out" / "soft");
  EXPECT_TRUE(contains(refusal(root_ / "out", {root_ / "out" / "hard"}), "(a hard link to it)"));
  EXPECT_TRUE(contains(refusal(root_ / "out", {root_ / "out" / "soft"}), "(a symbolic link to it)"));
  const std::string same = refusal(root_ / "out", {root_ / "model" / "config.json"});
  EXPECT_TRUE(contains(same, "is the input")) << same;
  EXPECT_TRUE(contains(same, "(the same path)")) << same;
}

TEST_F(PathOverlap, TwoOutputsThatAreOneFileAreRefused) {
  EXPECT_TRUE(contains(refusal(root_ / "out", {root_ / "out" / "a", root_ / "out" / "." / "a"}),
                       "two outputs are one file"));
  std::ofstream(root_ / "out" / "b") << "x";
  fs::create_hard_link(root_ / "out" / "b", root_ / "out" / "c");
  EXPECT_TRUE(contains(refusal(root_ / "out", {root_ / "out" / "b", root_ / "out" / "c"}),
                       "two outputs are one file"));
}

}  // namespace
