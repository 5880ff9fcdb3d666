// Weight decoding for the x86 kernels: packed codes -> float (q - z) [* s], or -> u8 code planes.
// Orders are those of x86_layout.hpp. Every float produced is exact: (q - z) is a small integer,
// and when scaled, (q - z) * s is rounded once, exactly as the reference dequantizes.
#pragma once

#include "nibble/kernels/cpu/detail/x86_layout.hpp"

#if defined(NIBBLE_X86_AVX2_COMPILED)

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "nibble/core/float16.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"
#include "nibble/pack.hpp"

namespace nibble::detail::cpu {

// Per-row group parameters as float, in group order: scale[g] and zero[g], with the arrays padded
// (zeros) to `stride` = round_up(n_groups, lanes) + 2 lanes so that vector loads from any group
// on, and lane permutes starting at a unit's first group, stay inside.
template <class T>
int64_t parameter_stride(int64_t n_groups) {
  return round_up(n_groups, T::kLanes) + 2 * T::kLanes;
}

// Pads [n_groups, n_groups + 2 lanes) of a parameter array with zeros (inside the stride).
template <class T>
void pad_parameters(float* values, int64_t n_groups) {
  T::store(values + n_groups, T::zero());
  T::store(values + n_groups + T::kLanes, T::zero());
}

// The implied zero point of symmetric tensors in every group: constant over a call, so the
// kernels fill it once per thread and chunk, not per row.
template <class T, int Bits>
void fill_symmetric_zeros(int64_t n_groups, float* zero) {
  const auto mid = T::set1(static_cast<float>(1 << (Bits - 1)));
  for (int64_t g = 0; g < n_groups; g += T::kLanes)
    T::store(zero + g, mid);
  pad_parameters<T>(zero, n_groups);
}

// A row's scales, and its zero points when asymmetric (symmetric: fill_symmetric_zeros once).
template <class T, int Bits, class ScaleT>
void load_row_parameters(const nibble_gemm_operands& op, int64_t row, float* scale, float* zero) {
  T::convert_scales(static_cast<const ScaleT*>(op.scales) + row * op.n_groups, op.n_groups, scale);
  pad_parameters<T>(scale, op.n_groups);
  if (op.zeros == nullptr) return;
  const uint8_t* packed = op.zeros + row * op.zero_row_bytes;
  int64_t g = 0;
  if constexpr (Bits == 8) {
    for (; g + T::kLanes <= op.n_groups; g += T::kLanes)
      T::store(zero + g, T::to_float(T::load_bytes_as_i32(packed + g)));
  } else if constexpr (Bits == 4) {
    // kLanes bytes hold groups 2j (low nibble) and 2j + 1 (high nibble) of byte j: convert both
    // planes, then interleave them back into group order.
    for (; g + 2 * T::kLanes <= op.n_groups; g += 2 * T::kLanes) {
      const auto bytes = T::load_bytes_as_i32(packed + g / 2);
      T::interleave(T::to_float(T::and_i(bytes, T::set1_i32(0xF))),
                    T::to_float(T::template srli_i32<4>(bytes)), zero + g);
    }
  }
  for (; g < op.n_groups; ++g)
    zero[g] = static_cast<float>(BitPacking<Bits>::code_at(packed, g));
  pad_parameters<T>(zero, op.n_groups);
}

// Once per call of a kernel on a thread: what load_row_parameters leaves to it.
template <class T, int Bits>
void start_parameters(const nibble_gemm_operands& op, float* zero) {
  if (op.zeros == nullptr) fill_symmetric_zeros<T, Bits>(op.n_groups, zero);
}

// ---- fp32 decoding ---------------------------------------------------------------------------

template <class T, int Bits>
struct F32Decoder {
  using F = typename T::F;
  using I = typename T::I;
  using U = F32Unit<T, Bits>;
  static constexpr int kPlanes = U::kPlanes;
  // 4- and 2-bit codes on AVX-512 are looked up in a 16-entry table of (c - z) [* s] with vpermps,
  // which reads only the low 4 index bits: the low plane needs no mask, and a 2-bit table repeats
  // every 4 entries so the next plane's bits above it do not matter either.
  static constexpr bool kTable = T::kTable16 && Bits != 8;

  // One group's parameters, broadcast.
  struct Group {
    F table;  // kTable: entry c holds (c - z) [* s]
    F zero;
    F scale;
  };

  template <bool Scaled>
  static Group group(float zero, float scale) {
    Group g;
    g.zero = T::set1(zero);
    g.scale = T::set1(scale);
    if constexpr (kTable) {
      alignas(64) static constexpr float kCodes[16] = {0,
                                                       1,
                                                       2,
                                                       3,
                                                       Bits == 4 ? 4 : 0,
                                                       Bits == 4 ? 5 : 1,
                                                       Bits == 4 ? 6 : 2,
                                                       Bits == 4 ? 7 : 3,
                                                       Bits == 4 ? 8 : 0,
                                                       Bits == 4 ? 9 : 1,
                                                       Bits == 4 ? 10 : 2,
                                                       Bits == 4 ? 11 : 3,
                                                       Bits == 4 ? 12 : 0,
                                                       Bits == 4 ? 13 : 1,
                                                       Bits == 4 ? 14 : 2,
                                                       Bits == 4 ? 15 : 3};
      g.table = T::sub(T::load(kCodes), g.zero);  // exact: small integers
      if constexpr (Scaled) g.table = T::mul(g.table, g.scale);
    } else {
      g.table = g.zero;
    }
    return g;
  }

  // Plane p of `codes` (int32 lanes, one packed byte each) as integers.
  template <int Plane>
  static I plane_codes(I codes) {
    const I shifted = T::template srli_i32<Plane * Bits>(codes);
    // The top plane's shift leaves nothing above it (lanes hold one byte).
    if constexpr (Plane == kPlanes - 1) return shifted;
    return T::and_i(shifted, T::set1_i32((1 << Bits) - 1));
  }

  template <bool Scaled, int Plane = 0>
  static void decode(I codes, const Group& g, F (&w)[kPlanes]) {
    if constexpr (Plane < kPlanes) {
      if constexpr (kTable) {
        w[Plane] = T::lookup16(T::template srli_i32<Plane * Bits>(codes), g.table);
      } else {
        w[Plane] = T::sub(T::to_float(plane_codes<Plane>(codes)), g.zero);
        if constexpr (Scaled) w[Plane] = T::mul(w[Plane], g.scale);
      }
      decode<Scaled, Plane + 1>(codes, g, w);
    }
  }

  // A split unit: per-lane zero points and scales.
  template <bool Scaled, int Plane = 0>
  static void decode_lanes(I codes, F zero, F scale, F (&w)[kPlanes]) {
    if constexpr (Plane < kPlanes) {
      w[Plane] = T::sub(T::to_float(plane_codes<Plane>(codes)), zero);
      if constexpr (Scaled) w[Plane] = T::mul(w[Plane], scale);
      decode_lanes<Scaled, Plane + 1>(codes, zero, scale, w);
    }
  }

  // Unit `u` of a row's packed codes (a masked load when the row ends inside it).
  static I load_unit(const uint8_t* row, int64_t u, int64_t row_bytes) {
    const int64_t byte = u * U::kBytes;
    const int64_t left = row_bytes - byte;
    return left >= U::kBytes ? T::load_bytes_as_i32(row + byte)
                             : T::load_bytes_as_i32(row + byte, left);
  }

  // Per-lane parameters of split unit `u` from a row's parameter array.
  static F lane_values(const LaneGroups& lanes, int64_t u, const float* values) {
    return T::permute(T::load_i(lanes.relative + u * T::kLanes), T::load(values + lanes.first[u]));
  }
};

// ---- int8 decoding ---------------------------------------------------------------------------

template <class T, int Bits>
struct I8Decoder {
  using I = typename T::I;
  using U = I8Unit<T, Bits>;
  static constexpr int kPlanes = U::kPlanes;

  // Plane p as u8 codes: shift within 16-bit lanes, then mask each byte (the shift brings the
  // neighbouring byte's low bits into the top of this one).
  template <int Plane>
  static I plane(I bytes) {
    if constexpr (Bits == 8) {
      return bytes;
    } else {
      return T::and_i(T::template srli_i16<Plane * Bits>(bytes),
                      T::set1_i8(static_cast<int8_t>((1 << Bits) - 1)));
    }
  }

  static I load_unit(const uint8_t* row, int64_t u, int64_t row_bytes) {
    const int64_t byte = u * U::kBytes;
    const int64_t left = row_bytes - byte;
    return left >= U::kBytes ? T::load_i(row + byte) : T::load_bytes(row + byte, left);
  }
};

// ---- dequantization to memory ----------------------------------------------------------------

// out[r, 0 .. k) = dequant(W[row_of(r)]) in element order: units decoded (scaled) as the GEMM
// kernels do, then written back in element order (planes interleaved).
template <class T, int Bits, class ScaleT>
struct DequantizeRows {
  using F = typename T::F;
  using D = F32Decoder<T, Bits>;
  using U = typename D::U;
  static constexpr int kPlanes = D::kPlanes;

  static void run(const nibble_dequantize_operands* op, int64_t row_begin, int64_t row_end) {
    nibble_gemm_operands params_op{};
    params_op.scales = op->scales;
    params_op.zeros = op->zeros;
    params_op.zero_row_bytes = op->zero_row_bytes;
    params_op.n_groups = op->n_groups;
    const int64_t stride = parameter_stride<T>(op->n_groups);
    std::vector<float> params(static_cast<std::size_t>(2 * stride));
    float* scale = params.data();
    float* zero = scale + stride;
    const int64_t padded_k = op->n_groups * op->group_size;
    const int64_t units = (padded_k + U::kElements - 1) / U::kElements;
    const bool split = op->group_size % U::kElements != 0;
    std::vector<int32_t> first(static_cast<std::size_t>(split ? units : 0));
    std::vector<int32_t> relative(static_cast<std::size_t>(split ? units * T::kLanes : 0));
    if (split) {
      build_lane_groups(units, T::kLanes, U::kElements, U::kPlanes, op->group_size, op->n_groups,
                        first.data(), relative.data());
    }
    const LaneGroups lanes{first.data(), relative.data()};
    start_parameters<T, Bits>(params_op, zero);
    alignas(64) float decoded[kPlanes][T::kLanes];
    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t source = op->rows != nullptr ? op->rows[r] : r;
      load_row_parameters<T, Bits, ScaleT>(params_op, source, scale, zero);
      const uint8_t* codes = op->qweight + source * op->packed_row_bytes;
      float* out = op->out + r * op->out_stride;
      for (int64_t u = 0; u < units; ++u) {
        F w[kPlanes];
        if (!split) {
          const int64_t g = u * U::kElements / op->group_size;
          D::template decode<true>(T::load_bytes_as_i32(codes + u * U::kBytes),
                                   D::template group<true>(zero[g], scale[g]), w);
        } else {
          D::template decode_lanes<true>(D::load_unit(codes, u, op->packed_row_bytes),
                                         D::lane_values(lanes, u, zero),
                                         D::lane_values(lanes, u, scale), w);
        }
        const int64_t base = u * U::kElements;
        if constexpr (kPlanes == 1) {
          if (base + T::kLanes <= op->k) {
            T::store(out + base, w[0]);
            continue;
          }
        }
        for (int p = 0; p < kPlanes; ++p)
          T::store(decoded[p], w[p]);
        const int64_t count = std::min<int64_t>(U::kElements, op->k - base);
        for (int64_t e = 0; e < count; ++e)
          out[base + e] = decoded[e % kPlanes][e / kPlanes];
        if (count < U::kElements) break;
      }
    }
  }
};

}  // namespace nibble::detail::cpu

#endif  // AVX2
