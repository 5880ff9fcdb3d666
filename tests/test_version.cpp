#include <gtest/gtest.h>

#include <string>

#include "nibble/version.hpp"

TEST(Version, HeaderAgreesWithTheCMakeProjectVersion) {
  // NIBBLE_CMAKE_PROJECT_VERSION is set by tests/CMakeLists.txt from project(VERSION), which is
  // parsed out of version.hpp: this proves the parse and the string agree.
  EXPECT_EQ(std::string(nibble::kVersionString), NIBBLE_CMAKE_PROJECT_VERSION);
  EXPECT_EQ(std::to_string(nibble::kVersionMajor) + "." + std::to_string(nibble::kVersionMinor) +
                "." + std::to_string(nibble::kVersionPatch),
            nibble::kVersionString);
}
