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

#include "nibble/core/float16.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"
#include "nibble/pack.hpp"

namespace nibble::detail::cpu {

// Group `group` of row `row`: its scale as float and its zero point.
template <int Bits, class ScaleT>
struct GroupParameters {
  float scale;
  int zero;

  GroupParameters(const nibble_gemm_operands& op, int64_t row, int64_t group)
      : scale(to_float(static_cast<const ScaleT*>(op.scales)[row * op.n_groups + group])),
        zero(op.zeros == nullptr
                 ? 1 << (Bits - 1)
                 : int{BitPacking<Bits>::code_at(op.zeros + row * op.zero_row_bytes, group)}) {}
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

  // Row `row` of W dequantized into w[0, padded_k).
  static void dequantize_row(const nibble_gemm_operands& op, int64_t row, float* w) {
    const uint8_t* codes = op.qweight + row * op.packed_row_bytes;
    for (int64_t group = 0; group < op.n_groups; ++group) {
      const GroupParameters<Bits, ScaleT> params(op, row, group);
      const int64_t begin = group * op.group_size;
      for (int64_t i = begin; i < begin + op.group_size; ++i) {
        w[i] = static_cast<float>(int{BitPacking<Bits>::code_at(codes, i)} - params.zero) *
               params.scale;
      }
    }
  }

  static void gemm_f32(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end,
                       void* scratch) {
    float* w = static_cast<float*>(scratch);
    for (int64_t col = n_begin; col < n_end; ++col) {
      dequantize_row(*op, col, w);
      const float bias = op->bias != nullptr ? op->bias[col] : 0.0f;
      for (int64_t row = 0; row < op->m; ++row) {
        op->y[row * op->n + col] = dot(op->x + row * op->padded_k, w, op->padded_k) + bias;
      }
    }
  }

  static void gemm_i8(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end,
                      void* scratch) {
    int32_t* codes = static_cast<int32_t*>(scratch);  // one group of weight codes
    const int64_t blocks_per_group = op->group_size / op->x_block;
    const int64_t x_blocks = op->padded_k / op->x_block;
    for (int64_t col = n_begin; col < n_end; ++col) {
      const uint8_t* packed = op->qweight + col * op->packed_row_bytes;
      const float bias = op->bias != nullptr ? op->bias[col] : 0.0f;
      for (int64_t row = 0; row < op->m; ++row)
        op->y[row * op->n + col] = bias;
      for (int64_t group = 0; group < op->n_groups; ++group) {
        const GroupParameters<Bits, ScaleT> params(*op, col, group);
        const int64_t begin = group * op->group_size;
        for (int64_t i = 0; i < op->group_size; ++i) {
          codes[i] = int32_t{BitPacking<Bits>::code_at(packed, begin + i)};
        }
        for (int64_t row = 0; row < op->m; ++row) {
          const int8_t* x_codes = op->x_codes + row * op->padded_k + begin;
          float sum = 0.0f;
          for (int64_t block = 0; block < blocks_per_group; ++block) {
            int32_t dot = 0;
            for (int64_t i = block * op->x_block; i < (block + 1) * op->x_block; ++i) {
              dot += codes[i] * int32_t{x_codes[i]};
            }
            const int64_t x_index = row * x_blocks + group * blocks_per_group + block;
            sum += op->x_scales[x_index] *
                   static_cast<float>(dot - params.zero * op->x_code_sums[x_index]);
          }
          op->y[row * op->n + col] += params.scale * sum;
        }
      }
    }
  }

  static std::size_t scratch_bytes(const nibble_gemm_operands* op, int64_t /*columns*/) {
    // A dequantized row (fp32) or one group of codes (int32): both fit in padded_k * 4 bytes.
    return static_cast<std::size_t>(op->padded_k) * sizeof(float);
  }
};

}  // namespace nibble::detail::cpu
