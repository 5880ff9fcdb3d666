// Kernels over the packed layout (kernels/cpu/packed.hpp; byte by byte in docs/packed-layout.md).
//
// The layout in one paragraph: output columns in tiles of 8, one 32-bit lane each; K in the
// activation blocks of the int8 path (activation_block(group_size), padded to whole chunks); a
// 32-byte chunk holds, for each of the 8 columns, 4 consecutive bytes, and each byte holds one
// code per plane: byte t of column c, plane p is element (chunk * planes + p) * 4 + t of the
// block. So a plane of a chunk is 8 columns x 4 consecutive k: exactly what vpmaddubsw +
// vpmaddwd (and vpdpbusd) reduce into one int32 per column, against 4 activation bytes
// broadcast to every lane. No horizontal sum, no per-column scale broadcast: one 8-lane scale
// vector per group serves the tile.
//
//   bits  planes per byte  k per chunk  stored code
//   2     4 (bits 2p..)    16           q (0..3)
//   4     2 (bits 4p..)    8            q (0..15)
//   8     1                4            q - 128 as int8 (so that |code| <= 128 fits vpmaddubsw)
//
// Y[i, col] = sum_g s_g * sum_{k in g} (c_k - z_g) x_ik, with c the stored code and z the zero
// point on the stored codes (8-bit: z - 128). int8 activations: per activation block b,
// s_g s_x(b) sum_b c q_x  -  s_g z_g s_x(b) sum_b q_x, exact int32 dot products scaled once.
//
// packed_gemm_scalar is the reference (the `_ref` twin of the x86 kernels, and the portable
// table's kernel); PackedX86 below is the AVX2 kernel (also in the AVX-512 tables: same 8-column
// layout, EVEX-encoded by the compiler there).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "nibble/core/float16.hpp"
#include "nibble/kernels/cpu/detail/x86_simd.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"

namespace nibble::detail::cpu {

inline constexpr int kPackedTileColumns = 8;  // output columns per tile (int32 lanes of a ymm)
inline constexpr int kPackedChunkBytes = 32;  // bytes per chunk: 8 columns x 4 bytes

template <int Bits>
struct PackedGeometry {
  static_assert(Bits == 2 || Bits == 4 || Bits == 8, "packed layout: 2, 4 or 8 bits");
  static constexpr int kPlanes = 8 / Bits;     // codes per byte
  static constexpr int kChunkK = 4 * kPlanes;  // elements of K per chunk
  static constexpr unsigned kMask = (1u << Bits) - 1u;
  // The zero point on the stored codes of a symmetric tensor (2^(bits-1), minus 128 at 8 bits).
  static constexpr int kSymmetricZero = Bits == 8 ? 0 : 1 << (Bits - 1);

  // The stored code of element `kk` (0 <= kk < kChunkK) of `column` in a chunk.
  static int code(const uint8_t* chunk, int column, int kk) {
    const uint8_t byte = chunk[column * 4 + kk % 4];
    if constexpr (Bits == 8) {
      return static_cast<int8_t>(byte);
    } else {
      return static_cast<int>((unsigned{byte} >> ((kk / 4) * Bits)) & kMask);
    }
  }
};

// Y for tiles [tile_begin, tile_end), one output at a time in scalar code.
template <int Bits, class ScaleT, bool Int8>
void packed_gemm_scalar(const nibble_packed_operands* operands, int64_t tile_begin,
                        int64_t tile_end) {
  using G = PackedGeometry<Bits>;
  const nibble_packed_operands& op = *operands;
  const int64_t blocks = op.n_groups * op.blocks_per_group;
  const int64_t x_row = blocks * op.block_stride;
  const int64_t tile_bytes = blocks * op.chunks_per_block * kPackedChunkBytes;
  const auto* scales = static_cast<const ScaleT*>(op.scales);
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    for (int column = 0; column < kPackedTileColumns; ++column) {
      const int64_t col = tile * kPackedTileColumns + column;
      if (col >= op.n) break;
      for (int64_t row = 0; row < op.m; ++row) {
        float total = 0.0f;
        for (int64_t g = 0; g < op.n_groups; ++g) {
          const int64_t param = (tile * op.n_groups + g) * kPackedTileColumns + column;
          const float scale = to_float(scales[param]);
          const int zero = op.zeros != nullptr ? int{op.zeros[param]} : op.symmetric_zero;
          float group_sum = 0.0f;  // fp32: sum of (c - z) x over the group
          for (int64_t bb = 0; bb < op.blocks_per_group; ++bb) {
            const int64_t b = g * op.blocks_per_group + bb;
            int32_t dot = 0;  // int8: sum of c * q_x over the block
            for (int64_t c = 0; c < op.chunks_per_block; ++c) {
              const uint8_t* chunk =
                  op.codes + tile * tile_bytes + (b * op.chunks_per_block + c) * kPackedChunkBytes;
              const int64_t x_at = row * x_row + b * op.block_stride + c * G::kChunkK;
              for (int kk = 0; kk < G::kChunkK; ++kk) {
                const int code = G::code(chunk, column, kk);
                if constexpr (Int8) {
                  dot += code * int{op.x_codes[x_at + kk]};
                } else {
                  group_sum += static_cast<float>(code - zero) * op.x[x_at + kk];
                }
              }
            }
            if constexpr (Int8) {
              const float x_scale = op.x_scales[row * blocks + b];
              total += static_cast<float>(dot) * (scale * x_scale);
              total -= scale * static_cast<float>(zero) * op.x_scaled_sums[row * blocks + b];
            }
          }
          if constexpr (!Int8) total += group_sum * scale;
        }
        op.y[row * op.n + col] = total + (op.bias != nullptr ? op.bias[col] : 0.0f);
      }
    }
  }
}

#if defined(NIBBLE_X86_AVX2_COMPILED)

// The AVX2 kernel: one tile at a time, up to kRows rows of X per pass over the tile (the tile's
// codes, 8 x K / (8 / bits) bytes, stay in L1 / L2 for the next pass).
template <int Bits, class ScaleT, bool Int8>
struct PackedX86 {
  using G = PackedGeometry<Bits>;
  static constexpr int kRows =
      4;  // rows per pass: 4 x (sum + int32 + int16) accumulators fit 16 ymm
  // vpmaddubsw results summed in int16 before widening: each adds at most 2 * mask * 127 to a
  // lane (4 bits: 3810; 2 bits: 762), so 8 (4 bits) or 32 (2 bits) stay below 32767. 8 bits:
  // |code| <= 128 gives 2 * 128 * 127 = 32512 for one, so every one is widened at once.
  static constexpr int kPlanesPerWiden = Bits == 4 ? 8 : Bits == 2 ? 32 : 1;
  static constexpr int kChunksPerWiden = kPlanesPerWiden / G::kPlanes;

  static __m256 load_scales(const ScaleT* scales) {
    if constexpr (std::is_same_v<ScaleT, float>) {
      return _mm256_loadu_ps(scales);
    } else if constexpr (std::is_same_v<ScaleT, fp16>) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    } else {
      // bf16 is the top half of an fp32.
      const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
    }
  }

  // 8 zero points (int8) as int32 lanes, or the symmetric one.
  static __m256i load_zeros(const nibble_packed_operands& op, int64_t param) {
    if (op.zeros == nullptr) return _mm256_set1_epi32(op.symmetric_zero);
    return _mm256_cvtepi8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(op.zeros + param)));
  }

  // 4 activation bytes as one int32, broadcast to every lane.
  static __m256i broadcast4(const int8_t* x) {
    int32_t word;
    std::memcpy(&word, x, sizeof word);
    return _mm256_set1_epi32(word);
  }

  // Plane p of a chunk: each byte's p-th code, as unsigned bytes (2 and 4 bits).
  template <int P>
  static __m256i plane(__m256i raw) {
    const __m256i mask = _mm256_set1_epi8(static_cast<char>(G::kMask));
    if constexpr (P == 0) {
      return _mm256_and_si256(raw, mask);
    } else {
      // A 16-bit shift moves bits across the byte boundary; the mask drops them.
      return _mm256_and_si256(_mm256_srli_epi16(raw, P * Bits), mask);
    }
  }

  // Writes R rows of 8 outputs (fewer at the last tile), adding the bias.
  template <int R>
  static void store(const nibble_packed_operands& op, int64_t tile, int64_t row0,
                    const __m256 (&total)[R]) {
    const int64_t col = tile * kPackedTileColumns;
    const int64_t valid = std::min<int64_t>(kPackedTileColumns, op.n - col);
    for (int r = 0; r < R; ++r) {
      float out[kPackedTileColumns];
      _mm256_storeu_ps(out, total[r]);
      float* y = op.y + (row0 + r) * op.n + col;
      for (int64_t c = 0; c < valid; ++c)
        y[c] = out[c] + (op.bias != nullptr ? op.bias[col + c] : 0.0f);
    }
  }

  // dot[r] += Count chunks (from `chunk`, at element `x` of the block) against row r: summed in
  // int16 (Count <= kChunksPerWiden), widened once. Count is a compile-time constant, so the
  // chunks unroll.
  template <int Count, int R>
  static void chunks_int8(const uint8_t* chunk, const int8_t* x, int64_t x_row, __m256i (&dot)[R]) {
    chunks_int8(chunk, x, x_row, dot, Count);
  }
  // The same for a run-time count: 3-4 rows keep the loop rolled, where unrolling it spills
  // (AVX2, 1 thread, 4096 x 4096 4-bit g32, M = 8: 2.4 ms rolled, 2.9 ms unrolled).
  template <int R>
  static void chunks_int8(const uint8_t* chunk, const int8_t* x, int64_t x_row, __m256i (&dot)[R],
                          int count) {
    const __m256i ones = _mm256_set1_epi16(1);
    if constexpr (Bits == 8) {
      // Signed codes: vpmaddubsw wants its first operand unsigned, so it gets |code| and the
      // activation takes the code's sign (vpsignb: negated, kept or zeroed).
      for (int c = 0; c < count; ++c) {
        const __m256i raw =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + c * kPackedChunkBytes));
        const __m256i magnitude = _mm256_abs_epi8(raw);
        for (int r = 0; r < R; ++r) {
          const __m256i xv = _mm256_sign_epi8(broadcast4(x + r * x_row + c * 4), raw);
          dot[r] = _mm256_add_epi32(dot[r],
                                    _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, xv), ones));
        }
      }
    } else {
      __m256i part[R];
      for (int r = 0; r < R; ++r)
        part[r] = _mm256_setzero_si256();
      for (int c = 0; c < count; ++c) {
        const __m256i raw =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + c * kPackedChunkBytes));
        accumulate_planes(raw, x + c * G::kChunkK, x_row, part,
                          std::make_integer_sequence<int, G::kPlanes>{});
      }
      for (int r = 0; r < R; ++r)
        dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(part[r], ones));
    }
  }

  template <int R>
  static void tile_int8(const nibble_packed_operands& op, int64_t tile, int64_t row0) {
    const int64_t blocks = op.n_groups * op.blocks_per_group;
    const int64_t x_row = blocks * op.block_stride;
    const int64_t chunks = op.chunks_per_block;
    const uint8_t* chunk = op.codes + tile * blocks * chunks * kPackedChunkBytes;
    const auto* scales = static_cast<const ScaleT*>(op.scales);
    // One or two rows: the scaled block sums and the zero-point terms in two chains, so that
    // neither waits on the other's latency (3-4 rows are chains enough, and 16 registers are
    // not enough for a second set).
    constexpr bool kSplit = R <= 2;
    __m256 total[R];
    __m256 correction[R];
    for (int r = 0; r < R; ++r) {
      total[r] = _mm256_setzero_ps();
      correction[r] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g < op.n_groups; ++g) {
      const int64_t param = (tile * op.n_groups + g) * kPackedTileColumns;
      const __m256 scale = load_scales(scales + param);
      const __m256 scaled_zero = _mm256_mul_ps(scale, _mm256_cvtepi32_ps(load_zeros(op, param)));
      for (int64_t bb = 0; bb < op.blocks_per_group; ++bb) {
        const int64_t b = g * op.blocks_per_group + bb;
        const int8_t* x = op.x_codes + row0 * x_row + b * op.block_stride;
        __m256i dot[R];
        for (int r = 0; r < R; ++r)
          dot[r] = _mm256_setzero_si256();
        int64_t c = 0;
        if constexpr (R == 1) {
          for (; c + kChunksPerWiden <= chunks;
               c += kChunksPerWiden, chunk += kChunksPerWiden * kPackedChunkBytes) {
            chunks_int8<kChunksPerWiden>(chunk, x + c * G::kChunkK, x_row, dot);
          }
        }
        while (c < chunks) {
          const auto count = static_cast<int>(std::min<int64_t>(kChunksPerWiden, chunks - c));
          chunks_int8(chunk, x + c * G::kChunkK, x_row, dot, count);
          c += count;
          chunk += count * kPackedChunkBytes;
        }
        for (int r = 0; r < R; ++r) {
          const float* x_scales = op.x_scales + (row0 + r) * blocks;
          const float* x_sums = op.x_scaled_sums + (row0 + r) * blocks;
          total[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]),
                                     _mm256_mul_ps(scale, _mm256_set1_ps(x_scales[b])), total[r]);
          if constexpr (kSplit) {
            correction[r] = _mm256_fmadd_ps(scaled_zero, _mm256_set1_ps(x_sums[b]), correction[r]);
          } else {
            total[r] = _mm256_fnmadd_ps(scaled_zero, _mm256_set1_ps(x_sums[b]), total[r]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r)
      total[r] = _mm256_sub_ps(total[r], correction[r]);
    store<R>(op, tile, row0, total);
  }

  // part[r] += the plane dot products of one chunk with row r's 4-byte activation groups.
  template <int R, int... P>
  static void accumulate_planes(__m256i raw, const int8_t* x, int64_t x_row, __m256i (&part)[R],
                                std::integer_sequence<int, P...>) {
    (
        [&] {
          const __m256i w = plane<P>(raw);
          for (int r = 0; r < R; ++r) {
            part[r] = _mm256_add_epi16(part[r],
                                       _mm256_maddubs_epi16(w, broadcast4(x + r * x_row + P * 4)));
          }
        }(),
        ...);
  }

  template <int R>
  static void tile_fp32(const nibble_packed_operands& op, int64_t tile, int64_t row0) {
    // Accumulator chains per row to hide the FMA latency: four for one row, two for two.
    constexpr int kChains = R == 1 ? 4 : R == 2 ? 2 : 1;
    const int64_t blocks = op.n_groups * op.blocks_per_group;
    const int64_t x_row = blocks * op.block_stride;
    const uint8_t* chunk = op.codes + tile * blocks * op.chunks_per_block * kPackedChunkBytes;
    const auto* scales = static_cast<const ScaleT*>(op.scales);
    const __m256i mask = _mm256_set1_epi32(static_cast<int>(G::kMask));
    __m256 total[R];
    for (int r = 0; r < R; ++r)
      total[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < op.n_groups; ++g) {
      const int64_t param = (tile * op.n_groups + g) * kPackedTileColumns;
      const __m256i zero = load_zeros(op, param);
      __m256 sum[R][kChains];
      for (int r = 0; r < R; ++r) {
        for (int c = 0; c < kChains; ++c)
          sum[r][c] = _mm256_setzero_ps();
      }
      for (int64_t bb = 0; bb < op.blocks_per_group; ++bb) {
        const float* x = op.x + row0 * x_row + (g * op.blocks_per_group + bb) * op.block_stride;
        for (int64_t c = 0; c < op.chunks_per_block; ++c, chunk += kPackedChunkBytes) {
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk));
          for (int p = 0; p < G::kPlanes; ++p) {
            for (int t = 0; t < 4; ++t) {
              // Element (c * planes + p) * 4 + t of each column: byte t, bits p * Bits.
              __m256i code;
              if constexpr (Bits == 8) {
                code = _mm256_srai_epi32(_mm256_slli_epi32(raw, 24 - 8 * t), 24);  // signed byte
              } else {
                code = _mm256_and_si256(_mm256_srli_epi32(raw, 8 * t + p * Bits), mask);
              }
              // c - z exactly, in float.
              const __m256 w = _mm256_cvtepi32_ps(_mm256_sub_epi32(code, zero));
              const int64_t k = (c * G::kPlanes + p) * 4 + t;
              for (int r = 0; r < R; ++r) {
                __m256& s = sum[r][t % kChains];
                s = _mm256_fmadd_ps(w, _mm256_set1_ps(x[r * x_row + k]), s);
              }
            }
          }
        }
      }
      const __m256 scale = load_scales(scales + param);
      for (int r = 0; r < R; ++r) {
        __m256 group_sum = sum[r][0];
        for (int c = 1; c < kChains; ++c)
          group_sum = _mm256_add_ps(group_sum, sum[r][c]);
        total[r] = _mm256_fmadd_ps(group_sum, scale, total[r]);
      }
    }
    store<R>(op, tile, row0, total);
  }

  static void run(const nibble_packed_operands* operands, int64_t tile_begin, int64_t tile_end) {
    const nibble_packed_operands& op = *operands;
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      for (int64_t row0 = 0; row0 < op.m; row0 += kRows) {
        const int64_t rows = std::min<int64_t>(kRows, op.m - row0);
        const auto pass = [&](auto r) {
          if constexpr (Int8) {
            tile_int8<decltype(r)::value>(op, tile, row0);
          } else {
            tile_fp32<decltype(r)::value>(op, tile, row0);
          }
        };
        if (rows == 4) {
          pass(std::integral_constant<int, 4>{});
        } else if (rows == 3) {
          pass(std::integral_constant<int, 3>{});
        } else if (rows == 2) {
          pass(std::integral_constant<int, 2>{});
        } else {
          pass(std::integral_constant<int, 1>{});
        }
      }
    }
  }
};

#endif  // AVX2

}  // namespace nibble::detail::cpu
