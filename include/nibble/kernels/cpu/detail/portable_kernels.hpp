// The portable GEMM kernels: xsimd batches of any architecture, no ISA-specific code.
//
// They define what every faster kernel computes (and are the fallback where none applies):
//   fp32 activations:  y[m, n] = sum_k x[m, k] * w[n, k],  w = (q - z) * s dequantized per row
//   int8 activations:  y[m, n] = sum over activation blocks b of
//                      s_w * s_x[m, b] * (sum_k q_w * q_x - z * sum_k q_x)   (exact int32 sums)
// over padded rows (the dispatcher zero-pads X to whole groups, so no kernel needs a K tail).
#pragma once

#include <xsimd/xsimd.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "nibble/core/float16.hpp"
#include "nibble/kernels/cpu/detail/activation_blocks.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"
#include "nibble/pack.hpp"

namespace nibble::detail::cpu {

// Group `group` of a row: its scale as float and its zero point.
template <int Bits, class ScaleT>
struct GroupParameters {
  float scale;
  int zero;

  GroupParameters(const void* scales, const uint8_t* zeros, int64_t zero_row_bytes,
                  int64_t n_groups, int64_t row, int64_t group)
      : scale(to_float(static_cast<const ScaleT*>(scales)[row * n_groups + group])),
        zero(zeros == nullptr
                 ? 1 << (Bits - 1)
                 : int{BitPacking<Bits>::code_at(zeros + row * zero_row_bytes, group)}) {}
};

// int8 activations quantized per row (quantize_activation_row), in element order.
struct PortablePreparedI8 {
  int64_t blocks;
  int8_t* codes;       // [m, padded_k]
  float* scales;       // [m, blocks]
  int32_t* code_sums;  // [m, blocks]

  static std::size_t bytes(const nibble_gemm_operands& op) {
    const int64_t blocks = op.padded_k / op.x_block;
    const auto codes = static_cast<std::size_t>((op.m * op.padded_k + 63) / 64 * 64);
    return codes + static_cast<std::size_t>(op.m * blocks) * (sizeof(float) + sizeof(int32_t));
  }
  static PortablePreparedI8 view(const nibble_gemm_operands& op, const void* prepared) {
    PortablePreparedI8 p{};
    p.blocks = op.padded_k / op.x_block;
    auto* base = static_cast<unsigned char*>(const_cast<void*>(prepared));
    p.codes = reinterpret_cast<int8_t*>(base);
    base += (op.m * op.padded_k + 63) / 64 * 64;
    p.scales = reinterpret_cast<float*>(base);
    p.code_sums = reinterpret_cast<int32_t*>(base + op.m * p.blocks * sizeof(float));
    return p;
  }
};

template <class Arch, int Bits, class ScaleT>
struct PortableKernels {
  using Batch = xsimd::batch<float, Arch>;
  static constexpr int64_t kLanes = static_cast<int64_t>(Batch::size);

  // a . b over `count` floats.
  static float dot(const float* a, const float* b, int64_t count) {
    Batch sum(0.0f);
    int64_t i = 0;
    for (; i + kLanes <= count; i += kLanes) {
      sum = xsimd::fma(Batch::load_unaligned(a + i), Batch::load_unaligned(b + i), sum);
    }
    float total = xsimd::hadd(sum);
    for (; i < count; ++i)
      total += a[i] * b[i];
    return total;
  }

  // Row `row` of W dequantized into w[0, count) (count <= padded_k).
  static void dequantize_row(const uint8_t* qweight, int64_t packed_row_bytes, const void* scales,
                             const uint8_t* zeros, int64_t zero_row_bytes, int64_t group_size,
                             int64_t n_groups, int64_t row, int64_t count, float* w) {
    const uint8_t* codes = qweight + row * packed_row_bytes;
    for (int64_t group = 0; group * group_size < count; ++group) {
      const GroupParameters<Bits, ScaleT> params(scales, zeros, zero_row_bytes, n_groups, row,
                                                 group);
      const int64_t begin = group * group_size;
      const int64_t end = begin + group_size < count ? begin + group_size : count;
      for (int64_t i = begin; i < end; ++i) {
        w[i] = static_cast<float>(int{BitPacking<Bits>::code_at(codes, i)} - params.zero) *
               params.scale;
      }
    }
  }

  static void gemm_f32(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end,
                       void* scratch) {
    float* w = static_cast<float*>(scratch);
    for (int64_t col = n_begin; col < n_end; ++col) {
      dequantize_row(op->qweight, op->packed_row_bytes, op->scales, op->zeros, op->zero_row_bytes,
                     op->group_size, op->n_groups, col, op->padded_k, w);
      const float bias = op->bias != nullptr ? op->bias[col] : 0.0f;
      for (int64_t row = 0; row < op->m; ++row) {
        op->y[row * op->n + col] = dot(op->x + row * op->padded_k, w, op->padded_k) + bias;
      }
    }
  }

  static void gemm_i8(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end,
                      void* scratch) {
    const PortablePreparedI8 x = PortablePreparedI8::view(*op, op->prepared);
    int32_t* codes = static_cast<int32_t*>(scratch);  // one group of weight codes
    const int64_t blocks_per_group = op->group_size / op->x_block;
    for (int64_t col = n_begin; col < n_end; ++col) {
      const uint8_t* packed = op->qweight + col * op->packed_row_bytes;
      const float bias = op->bias != nullptr ? op->bias[col] : 0.0f;
      for (int64_t row = 0; row < op->m; ++row)
        op->y[row * op->n + col] = bias;
      for (int64_t group = 0; group < op->n_groups; ++group) {
        const GroupParameters<Bits, ScaleT> params(op->scales, op->zeros, op->zero_row_bytes,
                                                   op->n_groups, col, group);
        const int64_t begin = group * op->group_size;
        for (int64_t i = 0; i < op->group_size; ++i) {
          codes[i] = int32_t{BitPacking<Bits>::code_at(packed, begin + i)};
        }
        for (int64_t row = 0; row < op->m; ++row) {
          const int8_t* x_codes = x.codes + row * op->padded_k + begin;
          float sum = 0.0f;
          for (int64_t block = 0; block < blocks_per_group; ++block) {
            int32_t dot = 0;
            for (int64_t i = block * op->x_block; i < (block + 1) * op->x_block; ++i) {
              dot += codes[i] * int32_t{x_codes[i]};
            }
            const int64_t x_index = row * x.blocks + group * blocks_per_group + block;
            sum += x.scales[x_index] * static_cast<float>(dot - params.zero * x.code_sums[x_index]);
          }
          op->y[row * op->n + col] += params.scale * sum;
        }
      }
    }
  }

  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    // A dequantized row (fp32) or one group of codes (int32): both fit in padded_k * 4 bytes.
    return static_cast<std::size_t>(op->padded_k) * sizeof(float);
  }

  static void dequantize_rows(const nibble_dequantize_operands* op, int64_t row_begin,
                              int64_t row_end) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      dequantize_row(op->qweight, op->packed_row_bytes, op->scales, op->zeros, op->zero_row_bytes,
                     op->group_size, op->n_groups, op->rows != nullptr ? op->rows[r] : r, op->k,
                     op->out + r * op->out_stride);
    }
  }
};

inline std::size_t portable_prepared_bytes_f32(const nibble_gemm_operands*) {
  return 0;
}
inline std::size_t portable_prepared_bytes_i8(const nibble_gemm_operands* op) {
  return PortablePreparedI8::bytes(*op);
}
inline void portable_prepare_shared(const nibble_gemm_operands*, void*) {}
inline void portable_prepare_rows_f32(const nibble_gemm_operands*, void*, int64_t, int64_t) {}
inline void portable_prepare_rows_i8(const nibble_gemm_operands* op, void* prepared,
                                     int64_t row_begin, int64_t row_end) {
  const PortablePreparedI8 x = PortablePreparedI8::view(*op, prepared);
  for (int64_t row = row_begin; row < row_end; ++row) {
    quantize_activation_row(op->x + row * op->padded_k, op->padded_k, op->x_block,
                            x.codes + row * op->padded_k, x.scales + row * x.blocks,
                            x.code_sums + row * x.blocks);
  }
}

}  // namespace nibble::detail::cpu
