// Decode orders and prepared activations of the x86 kernels (AVX2 and AVX-512 alike).
//
// The kernels never shuffle weights into element order. They load a "unit" of packed codes and
// split it into planes by shifting and masking, which leaves the codes in a fixed permutation of
// element order; the activations are permuted once per call into the same order ("prepared").
//
//   fp32 unit: T::kLanes bytes, zero-extended into int32 lanes (vpmovzxbd): lane j holds byte j,
//              whose P = 8 / Bits codes are elements j*P + p (p = 0 in the low bits). Plane p,
//              lane j is element  j*P + p  of the unit; units hold kLanes * P elements.
//   int8 unit: T::kBytes bytes kept as bytes: plane p, byte j is element  j*P + p; units hold
//              kBytes * P elements. Each int32 lane (4 bytes) covers 4P consecutive elements
//              of one 16-element slice, so with group_size % 16 == 0 a lane never straddles groups.
//
// A prepared row is its padded_k activations (zero past them) in that order, rounded up to whole
// units. Small batches (M <= T::kStreamMaxM, the streaming kernels) interleave the rows unit by
// unit, [unit][row][position], so that a kernel reaches every row of a unit at a constant offset
// from one pointer; larger batches (the panel kernels) keep rows whole, [row][unit][position].
// Units whose lanes may belong to different groups ("split" units, when group_size is not a
// multiple of the unit) carry, per unit, the first group and each lane's group relative to it.
#pragma once

#include "nibble/kernels/cpu/detail/x86_simd.hpp"

#if defined(NIBBLE_X86_AVX2_COMPILED)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <vector>

#include "nibble/kernels/cpu/detail/activation_blocks.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"

namespace nibble::detail::cpu {

inline int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Shape of one decode unit; Bytes = packed bytes per unit.
template <int Bits, int Bytes>
struct Unit {
  static constexpr int kPlanes = 8 / Bits;               // codes per byte
  static constexpr int kBytes = Bytes;                   // packed bytes
  static constexpr int64_t kElements = Bytes * kPlanes;  // elements
  // Element (within the unit) at decode position `position` = plane * Bytes + byte.
  static constexpr int64_t element_of(int64_t position) {
    return (position % Bytes) * kPlanes + position / Bytes;
  }
};

template <class T, int Bits>
using F32Unit = Unit<Bits, T::kLanes>;
template <class T, int Bits>
using I8Unit = Unit<Bits, T::kBytes>;

// Per-unit lane groups for split units: lane l of unit u belongs to group first[u] + rel[u][l].
// `lane_span` = elements per lane and position step between lanes (fp32: P elements per lane,
// lane j at element j*P; int8: 4P elements per int32 lane, lane l at element 4lP).
struct LaneGroups {
  const int32_t* first;     // [units]
  const int32_t* relative;  // [units][lanes]
};

inline void build_lane_groups(int64_t units, int lanes, int64_t unit_elements, int64_t lane_step,
                              int64_t group_size, int64_t n_groups, int32_t* first,
                              int32_t* relative) {
  for (int64_t u = 0; u < units; ++u) {
    const int64_t first_group = std::min((u * unit_elements) / group_size, n_groups - 1);
    first[u] = static_cast<int32_t>(first_group);
    for (int lane = 0; lane < lanes; ++lane) {
      // Lanes past padded_k (the last unit's tail) meet zero activations: clamp to a real group.
      const int64_t group =
          std::min((u * unit_elements + lane * lane_step) / group_size, n_groups - 1);
      relative[u * lanes + lane] = static_cast<int32_t>(group - first_group);
    }
  }
}

// Bump allocator over a prepared buffer; every piece 64-byte aligned.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<unsigned char*>(base)) {}
  template <class T>
  T* take(int64_t count) {
    T* out = reinterpret_cast<T*>(base_ + used_);
    used_ += round_up(count * static_cast<int64_t>(sizeof(T)), 64);
    return out;
  }
  std::size_t used() const { return static_cast<std::size_t>(used_); }

 private:
  unsigned char* base_;
  int64_t used_ = 0;
};

// ---- fp32 activations ------------------------------------------------------------------------

template <class T, int Bits>
struct PreparedF32 {
  using U = F32Unit<T, Bits>;
  int64_t row_length = 0;  // floats per prepared row: padded_k rounded up to whole units
  int64_t units = 0;
  bool split = false;        // group_size % unit elements != 0
  bool interleaved = false;  // [unit][row][position] (M <= kStreamMaxM), else [row][...]
  int64_t rows = 0;
  float* x = nullptr;  // m * row_length floats
  LaneGroups lanes{};  // split units only

  // Offset of (row, unit) in x.
  int64_t offset(int64_t row, int64_t unit) const {
    return interleaved ? (unit * rows + row) * U::kElements
                       : row * row_length + unit * U::kElements;
  }

  // The layout over `base` (null: only sizes); returns the bytes it takes.
  static std::size_t carve(const nibble_gemm_operands& op, void* base, PreparedF32* out) {
    static unsigned char dummy[64];
    Carver carver(base != nullptr ? base : dummy);
    PreparedF32 p;
    p.row_length = round_up(op.padded_k, U::kElements);
    p.units = p.row_length / U::kElements;
    p.split = op.group_size % U::kElements != 0;
    p.interleaved = op.m <= T::kStreamMaxM;
    p.rows = op.m;
    p.x = carver.take<float>(op.m * p.row_length);
    if (p.split) {
      p.lanes.first = carver.take<int32_t>(p.units);
      p.lanes.relative = carver.take<int32_t>(p.units * T::kLanes);
    }
    if (out != nullptr) *out = p;
    return carver.used();
  }

  static PreparedF32 view(const nibble_gemm_operands& op) {
    PreparedF32 p;
    carve(op, const_cast<void*>(op.prepared), &p);
    return p;
  }
};

template <class T, int Bits>
std::size_t prepared_bytes_f32(const nibble_gemm_operands* op) {
  return PreparedF32<T, Bits>::carve(*op, nullptr, nullptr);
}

// Once per call, before any rows.
template <class T, int Bits>
void prepare_shared_f32(const nibble_gemm_operands* op, void* prepared) {
  PreparedF32<T, Bits> p;
  PreparedF32<T, Bits>::carve(*op, prepared, &p);
  if (p.split) {
    using U = F32Unit<T, Bits>;
    build_lane_groups(p.units, T::kLanes, U::kElements, U::kPlanes, op->group_size, op->n_groups,
                      const_cast<int32_t*>(p.lanes.first), const_cast<int32_t*>(p.lanes.relative));
  }
}

// Rows [row_begin, row_end) of X, permuted into decode order.
template <class T, int Bits>
void prepare_rows_f32(const nibble_gemm_operands* op, void* prepared, int64_t row_begin,
                      int64_t row_end) {
  using U = F32Unit<T, Bits>;
  PreparedF32<T, Bits> p;
  PreparedF32<T, Bits>::carve(*op, prepared, &p);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const float* x = op->x + row * op->padded_k;
    for (int64_t u = 0; u < p.units; ++u) {
      const int64_t base = u * U::kElements;
      float* out = p.x + p.offset(row, u);
      for (int64_t position = 0; position < U::kElements; ++position) {
        const int64_t element = base + U::element_of(position);
        out[position] = element < op->padded_k ? x[element] : 0.0f;
      }
    }
  }
}

// ---- int8 activations ------------------------------------------------------------------------
//
// Each row of X is quantized in blocks of op.x_block elements exactly as quantize_activations
// does (scale max|x| / 127, codes nearbyint(x * 127 / max|x|)), then stored in int8-unit order.
// Per row also: the block scales, per split unit the scale of each lane's block ("lane scales"),
// and per weight group the sum over the group of scale * code (for the zero-point term).

template <class T, int Bits>
struct PreparedI8 {
  using U = I8Unit<T, Bits>;
  int64_t row_length = 0;  // codes per prepared row
  int64_t units = 0;
  int64_t blocks = 0;        // activation blocks per row: padded_k / x_block
  bool split = false;        // x_block % unit elements != 0: scales applied lane by lane
  bool interleaved = false;  // as PreparedF32
  int64_t rows = 0;
  int8_t* codes = nullptr;       // m * row_length codes
  int64_t block_stride = 0;      // blocks rounded up to whole vectors (pads hold 0)
  float* scales = nullptr;       // m * block_stride, at scale_offset
  float* lane_scales = nullptr;  // kLanes per (row, unit) at lane_offset (split only)
  int64_t group_stride = 0;      // n_groups rounded up to whole vectors (pads hold 0)
  float* group_sums = nullptr;   // [m][group_stride]
  LaneGroups lanes{};            // split only: weight group of each int32 lane

  // Offsets of (row, unit) in codes and in lane_scales.
  int64_t offset(int64_t row, int64_t unit) const {
    return interleaved ? (unit * rows + row) * U::kElements
                       : row * row_length + unit * U::kElements;
  }
  int64_t lane_offset(int64_t row, int64_t unit) const {
    return (interleaved ? unit * rows + row : row * units + unit) * T::kLanes;
  }
  // Offset of block b of a row in scales: [block][row] when interleaved, else [row][block].
  int64_t scale_offset(int64_t row, int64_t block) const {
    return interleaved ? block * rows + row : row * block_stride + block;
  }

  static std::size_t carve(const nibble_gemm_operands& op, void* base, PreparedI8* out) {
    static unsigned char dummy[64];
    Carver carver(base != nullptr ? base : dummy);
    PreparedI8 p;
    p.interleaved = op.m <= T::kStreamMaxM;
    p.rows = op.m;
    p.row_length = round_up(op.padded_k, U::kElements);
    p.units = p.row_length / U::kElements;
    p.blocks = op.padded_k / op.x_block;
    p.split = op.x_block % U::kElements != 0;
    p.codes = carver.take<int8_t>(op.m * p.row_length);
    p.block_stride = round_up(p.blocks, T::kLanes);
    p.scales = carver.take<float>(op.m * p.block_stride);
    if (p.split) p.lane_scales = carver.take<float>(op.m * p.units * T::kLanes);
    p.group_stride = round_up(op.n_groups, T::kLanes);
    p.group_sums = carver.take<float>(op.m * p.group_stride);
    if (p.split) {
      p.lanes.first = carver.take<int32_t>(p.units);
      p.lanes.relative = carver.take<int32_t>(p.units * T::kLanes);
    }
    if (out != nullptr) *out = p;
    return carver.used();
  }

  static PreparedI8 view(const nibble_gemm_operands& op) {
    PreparedI8 p;
    carve(op, const_cast<void*>(op.prepared), &p);
    return p;
  }
};

template <class T, int Bits>
std::size_t prepared_bytes_i8(const nibble_gemm_operands* op) {
  return PreparedI8<T, Bits>::carve(*op, nullptr, nullptr);
}

template <class T, int Bits>
void prepare_shared_i8(const nibble_gemm_operands* op, void* prepared) {
  PreparedI8<T, Bits> p;
  PreparedI8<T, Bits>::carve(*op, prepared, &p);
  if (p.split) {
    using U = I8Unit<T, Bits>;
    build_lane_groups(p.units, T::kLanes, U::kElements, 4 * U::kPlanes, op->group_size,
                      op->n_groups, const_cast<int32_t*>(p.lanes.first),
                      const_cast<int32_t*>(p.lanes.relative));
  }
}

template <class T, int Bits>
void prepare_rows_i8(const nibble_gemm_operands* op, void* prepared, int64_t row_begin,
                     int64_t row_end) {
  using U = I8Unit<T, Bits>;
  PreparedI8<T, Bits> p;
  PreparedI8<T, Bits>::carve(*op, prepared, &p);
  const int64_t blocks_per_group = op->group_size / op->x_block;
  std::vector<int8_t> natural(static_cast<std::size_t>(p.row_length), 0);
  std::vector<int32_t> code_sums(static_cast<std::size_t>(p.blocks));
  std::vector<float> block_scales(static_cast<std::size_t>(p.blocks));
  for (int64_t row = row_begin; row < row_end; ++row) {
    float* scales = block_scales.data();
    quantize_activation_row(op->x + row * op->padded_k, op->padded_k, op->x_block, natural.data(),
                            scales, code_sums.data());
    for (int64_t b = 0; b < p.block_stride; ++b)
      p.scales[p.scale_offset(row, b)] = b < p.blocks ? scales[b] : 0.0f;
    // Element order -> decode order (positions past padded_k get the zeros natural holds there).
    for (int64_t u = 0; u < p.units; ++u) {
      const int8_t* in = natural.data() + u * U::kElements;
      int8_t* out = p.codes + p.offset(row, u);
      for (int64_t position = 0; position < U::kElements; ++position)
        out[position] = in[U::element_of(position)];
    }
    float* group_sums = p.group_sums + row * p.group_stride;
    for (int64_t g = 0; g < p.group_stride; ++g)
      group_sums[g] = 0.0f;
    for (int64_t b = 0; b < p.blocks; ++b)
      group_sums[b / blocks_per_group] +=
          scales[b] * static_cast<float>(code_sums[static_cast<std::size_t>(b)]);
    if (p.split) {
      for (int64_t u = 0; u < p.units; ++u) {
        float* lane_scales = p.lane_scales + p.lane_offset(row, u);
        for (int lane = 0; lane < T::kLanes; ++lane) {
          const int64_t element = u * U::kElements + lane * 4 * U::kPlanes;
          lane_scales[lane] = scales[std::min(element / op->x_block, p.blocks - 1)];
        }
      }
    }
  }
}

}  // namespace nibble::detail::cpu

#endif  // AVX2
