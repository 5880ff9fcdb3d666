// nibble's version: the single source of truth (CMakeLists.txt reads the three macros from here).
#pragma once

#define NIBBLE_VERSION_MAJOR 0
#define NIBBLE_VERSION_MINOR 1
#define NIBBLE_VERSION_PATCH 0

#define NIBBLE_DETAIL_STRINGIFY_(x) #x
#define NIBBLE_DETAIL_STRINGIFY(x) NIBBLE_DETAIL_STRINGIFY_(x)

namespace nibble {
inline constexpr int kVersionMajor = NIBBLE_VERSION_MAJOR;
inline constexpr int kVersionMinor = NIBBLE_VERSION_MINOR;
inline constexpr int kVersionPatch = NIBBLE_VERSION_PATCH;
// "MAJOR.MINOR.PATCH"
inline constexpr const char* kVersionString =
    NIBBLE_DETAIL_STRINGIFY(NIBBLE_VERSION_MAJOR) "." NIBBLE_DETAIL_STRINGIFY(
        NIBBLE_VERSION_MINOR) "." NIBBLE_DETAIL_STRINGIFY(NIBBLE_VERSION_PATCH);
}  // namespace nibble
