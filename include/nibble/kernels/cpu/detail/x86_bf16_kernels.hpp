// bf16 activations against 4-bit weights with AVX512_BF16's vdpbf16ps (the avx512bf16 table):
// the streaming kernel (M <= kStreamMaxM) for groups of whole 32-element halves of a unit. Other
// shapes, bit widths and batch sizes take the fp32 kernels on the same (exact) values.
//
// Why it is exact like the fp32 path: a bf16 activation times (q - z), an integer of at most 4
// bits, is exact in fp32, and vdpbf16ps accumulates in fp32 (bf16 subnormals, below 1.2e-38, read
// as zero). It does 32 multiplies per instruction, twice an fp32 FMA.
//
// Unit: 32 bytes of codes, 64 elements. vpmovzxbw puts byte j in 16-bit lane j, whose low nibble
// is element 2j and high nibble element 2j + 1. vpermw looks the low nibble up directly in a
// 32-entry table of bf16 (c - z) (it reads 5 index bits and the table repeats every 16 entries, so
// the high nibble's lowest bit, bit 4, does not matter); a 16-bit shift by 4 brings the high nibble
// down for a second lookup. So plane 0 holds the even elements and plane 1 the odd ones, each in
// order, and X is prepared in the same two planes. A group boundary can only fall at the unit's
// middle (groups are multiples of 32): units then look up with vpermt2w in two tables, the upper
// 16 lanes selecting the second (index bit 5), and fold with per-lane scales.
#pragma once

#include "nibble/kernels/cpu/detail/x86_stream_kernels.hpp"

#if defined(NIBBLE_X86_AVX512_COMPILED)

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "nibble/kernels/cpu/kernel_abi.hpp"

namespace nibble::detail::cpu {

inline constexpr int64_t kBf16UnitElements = 64;
inline constexpr int64_t kBf16UnitBytes = 32;

// Whether a call runs the bf16 kernel: bf16 rows given, a streaming batch, groups of 32k.
template <class T>
bool uses_bf16_kernel(const nibble_gemm_operands& op) {
  return T::kBf16 && op.x_bf16 != nullptr && op.m <= T::kStreamMaxM && op.group_size % 32 == 0;
}

// X as [unit][row][plane][32 bf16] (plane 0: the unit's even elements, plane 1: the odd ones).
struct PreparedBf16 {
  int64_t units;
  const uint16_t* x;

  static int64_t unit_count(const nibble_gemm_operands& op) {
    return (op.padded_k + kBf16UnitElements - 1) / kBf16UnitElements;
  }
  static std::size_t bytes(const nibble_gemm_operands& op) {
    return static_cast<std::size_t>(op.m * unit_count(op) * kBf16UnitElements) * sizeof(uint16_t);
  }
  static PreparedBf16 view(const nibble_gemm_operands& op) {
    return {unit_count(op), static_cast<const uint16_t*>(op.prepared)};
  }
};

inline void prepare_rows_bf16(const nibble_gemm_operands* op, void* prepared, int64_t row_begin,
                              int64_t row_end) {
  auto* out = static_cast<uint16_t*>(prepared);
  const int64_t units = PreparedBf16::unit_count(*op);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const uint16_t* x = op->x_bf16 + row * op->padded_k;
    for (int64_t u = 0; u < units; ++u) {
      uint16_t* unit = out + (u * op->m + row) * kBf16UnitElements;
      for (int64_t position = 0; position < kBf16UnitElements; ++position) {
        // position = plane * 32 + j  ->  element 2j + plane of the unit (0 past padded_k)
        const int64_t element = u * kBf16UnitElements + 2 * (position % 32) + position / 32;
        unit[position] = element < op->padded_k ? x[element] : uint16_t{0};
      }
    }
  }
}

template <class T, class ScaleT>
struct StreamBf16 {
  using F = typename T::F;
  using I = typename T::I;

  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    return static_cast<std::size_t>(2 * parameter_stride<T>(op->n_groups)) * sizeof(float);
  }

  // The bf16 (c - z) table of a zero point.
  static I table(float zero) {
    alignas(64) static constexpr float kCodes[16] = {0, 1, 2,  3,  4,  5,  6,  7,
                                                     8, 9, 10, 11, 12, 13, 14, 15};
    return T::bf16_table(T::sub(T::load(kCodes), T::set1(zero)));  // small integers: exact
  }

  template <int MB, class Lookup>
  static void unit(const uint8_t* codes, int64_t u, int64_t row_bytes, const uint16_t* xu,
                   Lookup&& lookup, F (&acc)[MB]) {
    const int64_t left = row_bytes - u * kBf16UnitBytes;
    const I bytes = left >= kBf16UnitBytes ? T::load_bytes_as_u16(codes + u * kBf16UnitBytes)
                                           : T::load_bytes_as_u16(codes + u * kBf16UnitBytes, left);
    const I low = lookup(bytes);
    const I high = lookup(T::template srli_i16<4>(bytes));
    for (int i = 0; i < MB; ++i) {
      const uint16_t* x = xu + i * kBf16UnitElements;
      acc[i] = T::dot_bf16(T::dot_bf16(acc[i], low, T::load_i(x)), high, T::load_i(x + 32));
    }
  }

  template <int MB>
  static void rows(const nibble_gemm_operands& op, const PreparedBf16& x, int64_t n_begin,
                   int64_t n_end, float* scale, float* zero) {
    const bool whole = op.group_size % kBf16UnitElements == 0;
    const int64_t units_per_group = op.group_size / kBf16UnitElements;
    const I upper = T::upper_half_i16(0x20);  // vpermt2w: lanes 16..31 read the second table
    const I index_mask = T::set1_i16(0x1F);
    for (int64_t row = n_begin; row < n_end; ++row) {
      load_row_parameters<T, 4, ScaleT>(op, row, scale, zero);
      const uint8_t* codes = op.qweight + row * op.packed_row_bytes;
      F total[MB];  // one fold per group (or unit) and row: a single chain per row
      for (int i = 0; i < MB; ++i)
        total[i] = T::zero();
      if (whole) {
        for (int64_t g = 0; g < op.n_groups; ++g) {
          const I group_table = table(zero[g]);
          const auto lookup = [&](I index) { return T::lookup_u16(index, group_table); };
          F acc[MB];
          for (int i = 0; i < MB; ++i)
            acc[i] = T::zero();
          for (int64_t u = g * units_per_group; u < (g + 1) * units_per_group; ++u) {
            prefetch(codes + u * kBf16UnitBytes + kPrefetchBytes);
            unit<MB>(codes, u, op.packed_row_bytes, x.x + u * (MB * kBf16UnitElements), lookup,
                     acc);
          }
          const F s = T::set1(scale[g]);
          for (int i = 0; i < MB; ++i)
            total[i] = T::fma(acc[i], s, total[i]);
        }
      } else {
        // Each half of a unit in its own group: two tables, per-lane scales (fp32 lanes 0-7
        // come from bf16 lanes 0-15, the first half).
        for (int64_t u = 0; u < x.units; ++u) {
          prefetch(codes + u * kBf16UnitBytes + kPrefetchBytes);
          const int64_t g0 = std::min(u * 2 * 32 / op.group_size, op.n_groups - 1);
          const int64_t g1 = std::min((u * 2 + 1) * 32 / op.group_size, op.n_groups - 1);
          const I first = table(zero[g0]);
          const I second = table(zero[g1]);
          const auto lookup = [&](I index) {
            return T::lookup2_u16(T::or_i(T::and_i(index, index_mask), upper), first, second);
          };
          F acc[MB];
          for (int i = 0; i < MB; ++i)
            acc[i] = T::zero();
          unit<MB>(codes, u, op.packed_row_bytes, x.x + u * (MB * kBf16UnitElements), lookup, acc);
          const F s = T::halves(scale[g0], scale[g1]);
          for (int i = 0; i < MB; ++i)
            total[i] = T::fma(acc[i], s, total[i]);
        }
      }
      const float bias = op.bias != nullptr ? op.bias[row] : 0.0f;
      for (int i = 0; i < MB; ++i)
        op.y[i * op.n + row] = T::reduce(total[i]) + bias;
    }
  }

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    const PreparedBf16 x = PreparedBf16::view(*op);
    float* scale = static_cast<float*>(scratch);
    float* zero = scale + parameter_stride<T>(op->n_groups);
    start_parameters<T, 4>(*op, zero);
    with_rows<T::kStreamMaxM>(
        op->m, [&](auto mb) { rows<decltype(mb)::value>(*op, x, n_begin, n_end, scale, zero); });
  }
};

}  // namespace nibble::detail::cpu

#endif  // AVX-512
