#include <gtest/gtest.h>

#include <string>

#include "nibble/core/convention.hpp"
#include "nibble/core/quant_config.hpp"

namespace {

using nibble::ConventionId;
using nibble::Error;
using nibble::ErrorCode;
using nibble::QuantConfig;
using nibble::RowLayout;

std::string validation_message(const QuantConfig& config) {
  try {
    config.validate();
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::invalid_argument);
    return error.what();
  }
  return "";
}

TEST(QuantConfig, AcceptsTheSupportedConfigurations) {
  for (int bits : {2, 4, 8}) {
    for (int64_t group_size :
         {int64_t{1}, int64_t{16}, int64_t{128}, int64_t{1000}, nibble::kPerChannel}) {
      for (bool symmetric : {false, true}) {
        EXPECT_NO_THROW((QuantConfig{bits, group_size, symmetric, ConventionId::ort}.validate()));
      }
    }
  }
}

TEST(QuantConfig, NamesTheBadValueAndWhatIsAllowed) {
  for (int bits : {-4, 0, 1, 3, 5, 6, 7, 16}) {
    const std::string message = validation_message(QuantConfig{bits, 32, false});
    EXPECT_NE(message.find("bits = " + std::to_string(bits)), std::string::npos) << message;
    EXPECT_NE(message.find("expected 2, 4 or 8"), std::string::npos) << message;
  }
  for (int64_t group_size : {int64_t{0}, int64_t{-2}, int64_t{-128}}) {
    const std::string message = validation_message(QuantConfig{4, group_size, false});
    EXPECT_NE(message.find("group_size = " + std::to_string(group_size)), std::string::npos)
        << message;
    EXPECT_NE(message.find("kPerChannel"), std::string::npos) << message;
  }
  QuantConfig bad_convention;
  bad_convention.convention = static_cast<ConventionId>(42);
  EXPECT_NE(validation_message(bad_convention).find("convention id 42"), std::string::npos);
}

TEST(RowLayout, PadsRowsToWholeGroupsAndBytes) {
  // K = 5, G = 4, 4-bit (the worked example in docs/formats.md): 2 groups, 8 codes, 4 bytes.
  const RowLayout example = RowLayout::make(QuantConfig{4, 4, false}, 5);
  EXPECT_EQ(example.n_groups, 2);
  EXPECT_EQ(example.padded_k, 8);
  EXPECT_EQ(example.packed_row_bytes, 4);
  EXPECT_EQ(example.zero_row_bytes, 1);
  // K = 401, G = 128, 2-bit: 4 groups, 512 codes = 128 bytes, zero points 4 * 2 bits = 1 byte.
  const RowLayout two_bit = RowLayout::make(QuantConfig{2, 128, false}, 401);
  EXPECT_EQ(two_bit.n_groups, 4);
  EXPECT_EQ(two_bit.packed_row_bytes, 128);
  EXPECT_EQ(two_bit.zero_row_bytes, 1);
  // Per-channel: one group of K; odd K with 4 bits leaves half a byte of padding.
  const RowLayout per_channel = RowLayout::make(QuantConfig{4, nibble::kPerChannel, true}, 33);
  EXPECT_EQ(per_channel.group_size, 33);
  EXPECT_EQ(per_channel.n_groups, 1);
  EXPECT_EQ(per_channel.padded_k, 33);
  EXPECT_EQ(per_channel.packed_row_bytes, 17);
  // A group larger than K still makes one whole (padded) group.
  const RowLayout wide_group = RowLayout::make(QuantConfig{8, 64, false}, 3);
  EXPECT_EQ(wide_group.padded_k, 64);
  EXPECT_EQ(wide_group.packed_row_bytes, 64);
}

TEST(RowLayout, RejectsOverflowAndBadK) {
  EXPECT_THROW(RowLayout::make(QuantConfig{4, 32, false}, 0), Error);
  try {
    RowLayout::make(QuantConfig{8, int64_t{1} << 62, false}, int64_t{1} << 62);
    FAIL() << "expected an overflow";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::overflow);
  }
}

TEST(Convention, EveryRowHasAUniqueNameThatLooksItselfUp) {
  for (int index = 0; index < nibble::kConventionCount; ++index) {
    const auto id = static_cast<ConventionId>(index);
    EXPECT_EQ(nibble::convention_from_name(nibble::to_string(id)), id);
  }
  try {
    nibble::convention_from_name("gptq-ish");
    FAIL() << "expected an error";
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("\"gptq-ish\""), std::string::npos) << message;
    EXPECT_NE(message.find("olive, ort, ort_gather, ort_weight_only"), std::string::npos)
        << message;
  }
}

}  // namespace
