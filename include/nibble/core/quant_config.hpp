// QuantConfig (what to quantize to) and RowLayout (the byte sizes it implies for one row).
#pragma once

#include <cstdint>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/convention.hpp"
#include "nibble/core/error.hpp"

namespace nibble {

// group_size value meaning "one group per row" (G = K).
inline constexpr int64_t kPerChannel = -1;

struct QuantConfig {
  int bits = 4;              // 2, 4 or 8
  int64_t group_size = 128;  // > 0, or kPerChannel
  bool symmetric = false;    // symmetric tensors store no zero points (implied 2^(bits-1))
  ConventionId convention = ConventionId::olive;

  bool per_channel() const { return group_size == kPerChannel; }

  // Throws Error naming the bad field, its value, and what is allowed.
  void validate() const {
    if (bits != 2 && bits != 4 && bits != 8) {
      detail::fail(ErrorCode::invalid_argument, "QuantConfig.bits = ", bits,
                   " is not supported (expected 2, 4 or 8)");
    }
    if (group_size <= 0 && group_size != kPerChannel) {
      detail::fail(ErrorCode::invalid_argument, "QuantConfig.group_size = ", group_size,
                   " is invalid (expected a group size > 0, or nibble::kPerChannel (-1) for one "
                   "group per row)");
    }
    convention_of();  // throws for an out-of-range ConventionId
  }

  const Convention& convention_of() const { return nibble::convention(convention); }

  friend bool operator==(const QuantConfig& a, const QuantConfig& b) {
    return a.bits == b.bits && a.group_size == b.group_size && a.symmetric == b.symmetric &&
           a.convention == b.convention;
  }
  friend bool operator!=(const QuantConfig& a, const QuantConfig& b) { return !(a == b); }
};

// The sizes a validated QuantConfig implies for rows of K elements (the canonical layout):
//   n_groups = ceil(K / G); padded_k = n_groups * G  (rows are padded to whole groups)
//   qweight row: ceil(padded_k * bits / 8) bytes;  zeros row: ceil(n_groups * bits / 8) bytes
struct RowLayout {
  int64_t k = 0;                 // logical elements per row
  int64_t group_size = 0;        // G (K when per-channel)
  int64_t n_groups = 0;          // ceil(K / G)
  int64_t padded_k = 0;          // n_groups * G
  int64_t packed_row_bytes = 0;  // qweight bytes per row
  int64_t zero_row_bytes = 0;    // packed zero-point bytes per row (also when symmetric: the
                                 // size zero points would take; the buffer itself is absent)

  static RowLayout make(const QuantConfig& config, int64_t k) {
    config.validate();
    if (k < 1) detail::fail(ErrorCode::shape_mismatch, "RowLayout: K = ", k, " (expected >= 1)");
    RowLayout layout;
    layout.k = k;
    layout.group_size = config.per_channel() ? k : config.group_size;
    layout.n_groups = detail::ceil_div(k, layout.group_size);
    layout.padded_k = detail::checked_mul(layout.n_groups, layout.group_size, "padded K");
    const int64_t row_bits = detail::checked_mul(layout.padded_k, config.bits, "qweight row bits");
    layout.packed_row_bytes = detail::ceil_div(row_bits, 8);
    layout.zero_row_bytes = detail::ceil_div(layout.n_groups * config.bits, 8);
    return layout;
  }
};

}  // namespace nibble
