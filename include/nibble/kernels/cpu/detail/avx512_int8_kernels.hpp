// AVX-512 GEMM kernels for int8 activations (ActivationPrecision::int8). Compiled only where the
// AVX-512 F/BW/DQ/VL flags are on; the VNNI variant additionally needs AVX512_VNNI.
//
// The integer dot product of 64 weight codes (u8) with 64 activation codes (s8) per instruction:
//   VNNI:     vpdpbusd, exact u8 x s8 sums of 4 into each int32 lane;
//   otherwise vpmaddubsw (u8 x s8 pairs into int16: 2 * 15 * 127 fits, so 2- and 4-bit codes
//             never saturate) + vpmaddwd by 1 into int32; 8-bit codes (2 * 255 * 127 would
//             saturate int16) widen to int16 and use vpmaddwd directly.
// Weights decode to 64 codes per register without shuffling them into element order:
//   4-bit: 32 bytes broadcast to both halves, high half shifted right by 4, masked with 0x0F:
//          byte p < 32 holds element 2p, byte 32 + p element 2p + 1;
//   2-bit: 16 bytes broadcast to 4 lanes of 128 bits, lane l shifted by 2l, masked with 3:
//          byte 16l + p holds element 4p + l;
//   8-bit: 64 bytes as they are.
// so X's codes are permuted once per call into the same order ("prepared").
//
// Scaling: y = sum over activation blocks b of s_w(g(b)) * s_x(b) * (sum q_w q_x)
//              - sum over groups g of s_w(g) * z(g) * (sum over the group of s_x q_x),
// the second term a per-row dot product over groups of precomputed activation sums. When the
// activation block holds whole 64-element chunks, int32 sums run over the block and are scaled
// once; otherwise (group sizes 16 and 32) every chunk is scaled lane by lane.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "nibble/kernels/cpu/detail/avx512_kernels.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"
#include "nibble/pack.hpp"

namespace nibble::detail::cpu::avx512 {

// Bytes of packed codes per 64-element chunk.
template <int Bits>
inline constexpr int64_t kInt8ChunkBytes = 64 * Bits / 8;

// Prepared int8 activations: per row, the codes of whole 64-element chunks in decode order, then
// (only when blocks are shorter than a chunk) per chunk 16 lane scales; and per row and group
// the sum over the group of s_x * q_x.
struct Int8Prepared {
  int64_t chunks;           // 64-element chunks per row (padded_k rounded up)
  bool lane_scales;         // x_block % 64 != 0
  const int8_t* codes;      // [m, chunks * 64]
  const float* scales;      // [m, chunks, 16] when lane_scales
  const float* group_sums;  // [m, n_groups]

  // The layout over `prepared` (the buffer prepare_i8 fills, later op.prepared).
  static Int8Prepared view(const nibble_gemm_operands& op, const void* prepared) {
    Int8Prepared p{};
    p.chunks = (op.padded_k + 63) / 64;
    p.lane_scales = op.x_block % 64 != 0;
    auto* bytes = static_cast<const unsigned char*>(prepared);
    p.codes = reinterpret_cast<const int8_t*>(bytes);
    bytes += static_cast<std::size_t>(op.m * p.chunks * 64);
    p.scales = reinterpret_cast<const float*>(bytes);
    if (p.lane_scales) bytes += static_cast<std::size_t>(op.m * p.chunks * 16) * sizeof(float);
    p.group_sums = reinterpret_cast<const float*>(bytes);
    return p;
  }

  static std::size_t bytes(const nibble_gemm_operands& op) {
    const int64_t chunks = (op.padded_k + 63) / 64;
    std::size_t total = static_cast<std::size_t>(op.m * chunks * 64);  // a multiple of 64
    if (op.x_block % 64 != 0) total += static_cast<std::size_t>(op.m * chunks * 16) * sizeof(float);
    return total + static_cast<std::size_t>(op.m * op.n_groups) * sizeof(float);
  }
};

// Element of chunk position `byte` (0..63) in the decode order of Bits.
template <int Bits>
constexpr int64_t int8_element_of(int64_t byte) {
  if constexpr (Bits == 4) {
    return byte < 32 ? 2 * byte : 2 * (byte - 32) + 1;
  } else if constexpr (Bits == 2) {
    return 4 * (byte % 16) + byte / 16;
  } else {
    return byte;
  }
}

template <int Bits>
std::size_t prepared_bytes_i8(const nibble_gemm_operands* op) {
  return Int8Prepared::bytes(*op);
}

template <int Bits>
void prepare_i8(const nibble_gemm_operands* op, void* prepared) {
  const int64_t chunks = (op->padded_k + 63) / 64;
  const int64_t x_blocks = op->padded_k / op->x_block;
  auto* codes = static_cast<int8_t*>(prepared);
  const Int8Prepared view = Int8Prepared::view(*op, prepared);
  auto* lane_scales = const_cast<float*>(view.scales);
  auto* group_sums = const_cast<float*>(view.group_sums);
  const int64_t blocks_per_group = op->group_size / op->x_block;
  for (int64_t row = 0; row < op->m; ++row) {
    const int8_t* x = op->x_codes + row * op->padded_k;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      for (int64_t byte = 0; byte < 64; ++byte) {
        const int64_t element = chunk * 64 + int8_element_of<Bits>(byte);
        codes[(row * chunks + chunk) * 64 + byte] = element < op->padded_k ? x[element] : int8_t{0};
      }
      if (view.lane_scales) {
        for (int64_t lane = 0; lane < 16; ++lane) {
          // The 4 bytes of a lane are 4 consecutive decode positions: the same activation block
          // (blocks are multiples of 16 elements and the positions map into one 16-slice).
          const int64_t element = chunk * 64 + int8_element_of<Bits>(4 * lane);
          const int64_t block = std::min(element / op->x_block, x_blocks - 1);
          lane_scales[(row * chunks + chunk) * 16 + lane] = op->x_scales[row * x_blocks + block];
        }
      }
    }
    for (int64_t group = 0; group < op->n_groups; ++group) {
      float sum = 0.0f;
      for (int64_t b = group * blocks_per_group; b < (group + 1) * blocks_per_group; ++b) {
        sum += op->x_scales[row * x_blocks + b] *
               static_cast<float>(op->x_code_sums[row * x_blocks + b]);
      }
      group_sums[row * op->n_groups + group] = sum;
    }
  }
}

// 64 weight codes of chunk `chunk` of a row, as u8 in decode order (masked past the row's end).
template <int Bits>
inline __m512i load_int8_codes(const uint8_t* row, int64_t chunk, int64_t row_bytes) {
  constexpr int64_t kBytes = kInt8ChunkBytes<Bits>;
  const int64_t byte = chunk * kBytes;
  const int64_t left = row_bytes - byte;
  if constexpr (Bits == 8) {
    if (left >= 64) return _mm512_loadu_si512(row + byte);
    return _mm512_maskz_loadu_epi8((__mmask64{1} << left) - 1, row + byte);
  } else if constexpr (Bits == 4) {
    const __m256i packed = left >= 32
                               ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + byte))
                               : _mm256_maskz_loadu_epi8((__mmask32{1} << left) - 1, row + byte);
    const __m512i both = _mm512_broadcast_i64x4(packed);
    // 16-bit lanes of the high half shift by 4: its bytes' high nibbles land in the low nibbles.
    const __m512i shifts = _mm512_setr_epi64(0, 0, 0, 0, 0x0004000400040004, 0x0004000400040004,
                                             0x0004000400040004, 0x0004000400040004);
    return _mm512_and_si512(_mm512_srlv_epi16(both, shifts), _mm512_set1_epi8(0x0F));
  } else {
    const __m128i packed =
        left >= 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + byte))
                   : _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << left) - 1u), row + byte);
    const __m512i all = _mm512_broadcast_i32x4(packed);
    const __m512i shifts =
        _mm512_setr_epi64(0, 0, 0x0002000200020002, 0x0002000200020002, 0x0004000400040004,
                          0x0004000400040004, 0x0006000600060006, 0x0006000600060006);
    return _mm512_and_si512(_mm512_srlv_epi16(all, shifts), _mm512_set1_epi8(0x03));
  }
}

// sum over each int32 lane's 4 bytes of w (u8) * x (s8), added to `acc`.
template <int Bits, bool Vnni>
inline __m512i dot_add(__m512i acc, __m512i w, __m512i x) {
  if constexpr (Vnni) {
#if defined(__AVX512VNNI__)
    return _mm512_dpbusd_epi32(acc, w, x);
#else
    static_assert(!Vnni, "the VNNI kernels need a translation unit built with -mavx512vnni");
    return acc;
#endif
  } else if constexpr (Bits == 8) {
    // u8 x s8 pairs could overflow int16: widen both to int16 and multiply-add in int32. The
    // 16-bit lanes of the even / odd bytes pair up so that lane j sums bytes 4j .. 4j + 3.
    const __m512i w_even = _mm512_and_si512(w, _mm512_set1_epi16(0x00FF));
    const __m512i w_odd = _mm512_srli_epi16(w, 8);
    const __m512i x_even = _mm512_srai_epi16(_mm512_slli_epi16(x, 8), 8);
    const __m512i x_odd = _mm512_srai_epi16(x, 8);
    const __m512i sum =
        _mm512_add_epi32(_mm512_madd_epi16(w_even, x_even), _mm512_madd_epi16(w_odd, x_odd));
    return _mm512_add_epi32(acc, sum);
  } else {
    const __m512i pairs = _mm512_maddubs_epi16(w, x);  // <= 2 * 15 * 127: no saturation
    return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
  }
}

template <int Bits, class ScaleT, bool Vnni>
struct Int8Kernel {
  static constexpr int64_t kTileRows = 64;

  static std::size_t scratch_bytes(const nibble_gemm_operands* op, int64_t /*columns*/) {
    // per tile row: scale[n_groups], then scale * zero[n_groups]; 16 floats of padding for the
    // 16-wide scale loads of the last row
    return static_cast<std::size_t>(kTileRows * 2 * op->n_groups + 16) * sizeof(float);
  }

  struct Tile {
    const nibble_gemm_operands* op;
    const float* params;
    int64_t first_row;
    const float* scale(int64_t row) const { return params + (row - first_row) * 2 * op->n_groups; }
    const float* scaled_zero(int64_t row) const { return scale(row) + op->n_groups; }
  };

  // Y[m0 .. m0+MB, n0 .. n0+NB] for the whole K.
  template <int NB, int MB>
  static void rows(const Tile& tile, const Int8Prepared& x, int64_t n0, int64_t m0) {
    const nibble_gemm_operands& op = *tile.op;
    const uint8_t* row[NB];
    const float* scale[NB];
    for (int r = 0; r < NB; ++r) {
      row[r] = op.qweight + (n0 + r) * op.packed_row_bytes;
      scale[r] = tile.scale(n0 + r);
    }
    __m512 acc[NB][MB];
    for (int r = 0; r < NB; ++r) {
      for (int i = 0; i < MB; ++i)
        acc[r][i] = _mm512_setzero_ps();
    }
    const int64_t x_blocks = op.padded_k / op.x_block;
    if (!x.lane_scales) {
      // Whole chunks per activation block: int32 sums over the block, scaled once.
      const int64_t chunks_per_block = op.x_block / 64;
      const int64_t blocks_per_group = op.group_size / op.x_block;
      for (int64_t block = 0; block < x_blocks; ++block) {
        const int64_t group = block / blocks_per_group;
        __m512i sums[NB][MB];
        for (int r = 0; r < NB; ++r) {
          for (int i = 0; i < MB; ++i)
            sums[r][i] = _mm512_setzero_si512();
        }
        for (int64_t chunk = block * chunks_per_block; chunk < (block + 1) * chunks_per_block;
             ++chunk) {
          for (int r = 0; r < NB; ++r) {
            // The same place NB rows on: the next block of rows (see Fp32Kernel).
            _mm_prefetch(reinterpret_cast<const char*>(row[r] + NB * op.packed_row_bytes +
                                                       chunk * kInt8ChunkBytes<Bits>),
                         _MM_HINT_T0);
            const __m512i w = load_int8_codes<Bits>(row[r], chunk, op.packed_row_bytes);
            for (int i = 0; i < MB; ++i) {
              const __m512i xi = _mm512_loadu_si512(x.codes + ((m0 + i) * x.chunks + chunk) * 64);
              sums[r][i] = dot_add<Bits, Vnni>(sums[r][i], w, xi);
            }
          }
        }
        for (int i = 0; i < MB; ++i) {
          const float x_scale = op.x_scales[(m0 + i) * x_blocks + block];
          for (int r = 0; r < NB; ++r) {
            acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r][i]),
                                        _mm512_set1_ps(scale[r][group] * x_scale), acc[r][i]);
          }
        }
      }
    } else {
      // Blocks shorter than a chunk (groups of 16, 32, 48): scale every chunk lane by lane. Lane
      // l holds 4 decode positions of one 16-element slice; its group is slice / (G / 16),
      // computed in float ((slice + 0.5) / (G / 16) never lands on an integer) and looked up
      // relative to the chunk's first group, at most 4 groups on.
      alignas(64) int32_t lane_elements[16];
      for (int lane = 0; lane < 16; ++lane) {
        lane_elements[lane] = static_cast<int32_t>(int8_element_of<Bits>(4 * lane));
      }
      const __m512i element_of_lane = _mm512_load_si512(lane_elements);
      const __m512 inverse = _mm512_set1_ps(1.0f / static_cast<float>(op.group_size / 16));
      for (int64_t chunk = 0; chunk < x.chunks; ++chunk) {
        const int64_t first_group = std::min(chunk * 64 / op.group_size, op.n_groups - 1);
        const __m512i slice = _mm512_srli_epi32(
            _mm512_add_epi32(element_of_lane, _mm512_set1_epi32(static_cast<int32_t>(chunk * 64))),
            4);
        const __m512 group = _mm512_floor_ps(
            _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(slice), _mm512_set1_ps(0.5f)), inverse));
        // Lanes past padded_k (the last chunk) clamp to the last group: their codes are 0.
        const __m512i relative = _mm512_min_epi32(
            _mm512_sub_epi32(_mm512_cvtps_epi32(group),
                             _mm512_set1_epi32(static_cast<int32_t>(first_group))),
            _mm512_set1_epi32(static_cast<int32_t>(op.n_groups - 1 - first_group)));
        for (int r = 0; r < NB; ++r) {
          // Reads up to 16 scales from first_group on: the tile's parameter block is padded.
          const __m512 w_scale =
              _mm512_permutexvar_ps(relative, _mm512_loadu_ps(scale[r] + first_group));
          const __m512i w = load_int8_codes<Bits>(row[r], chunk, op.packed_row_bytes);
          for (int i = 0; i < MB; ++i) {
            const __m512i xi = _mm512_loadu_si512(x.codes + ((m0 + i) * x.chunks + chunk) * 64);
            const __m512i sum = dot_add<Bits, Vnni>(_mm512_setzero_si512(), w, xi);
            const __m512 x_scale = _mm512_loadu_ps(x.scales + ((m0 + i) * x.chunks + chunk) * 16);
            acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(w_scale, x_scale),
                                        acc[r][i]);
          }
        }
      }
    }
    for (int r = 0; r < NB; ++r) {
      const int64_t col = n0 + r;
      const float* scaled_zero = tile.scaled_zero(col);
      const float bias = op.bias != nullptr ? op.bias[col] : 0.0f;
      for (int i = 0; i < MB; ++i) {
        // Zero-point term: sum over groups of s_w * z * (sum of s_x * q_x over the group).
        const float* group_sums = x.group_sums + (m0 + i) * op.n_groups;
        __m512 correction = _mm512_setzero_ps();
        int64_t g = 0;
        for (; g + 16 <= op.n_groups; g += 16) {
          correction = _mm512_fmadd_ps(_mm512_loadu_ps(scaled_zero + g),
                                       _mm512_loadu_ps(group_sums + g), correction);
        }
        float total = _mm512_reduce_add_ps(acc[r][i]) - _mm512_reduce_add_ps(correction);
        for (; g < op.n_groups; ++g)
          total -= scaled_zero[g] * group_sums[g];
        op.y[(m0 + i) * op.n + col] = total + bias;
      }
    }
  }

  template <int MB>
  static void m_block(const Tile& tile, const Int8Prepared& x, int64_t n_end, int64_t m0) {
    constexpr int kRowsAtOnce = MB == 1 ? 4 : MB == 2 ? 2 : 1;
    int64_t col = tile.first_row;
    for (; col + kRowsAtOnce <= n_end; col += kRowsAtOnce)
      rows<kRowsAtOnce, MB>(tile, x, col, m0);
    for (; col < n_end; ++col)
      rows<1, MB>(tile, x, col, m0);
  }

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    auto* params = static_cast<float*>(scratch);
    const Int8Prepared x = Int8Prepared::view(*op, op->prepared);
    for (int64_t first = n_begin; first < n_end; first += kTileRows) {
      const int64_t tile_end = std::min(n_end, first + kTileRows);
      for (int64_t row = first; row < tile_end; ++row) {
        float* scale = params + (row - first) * 2 * op->n_groups;
        float* offset = scale + op->n_groups;
        row_parameters<Bits, ScaleT>(*op, row, scale, offset);  // offset = -z * s
        for (int64_t g = 0; g < op->n_groups; ++g)
          offset[g] = -offset[g];  // s * z
      }
      const Tile tile{op, params, first};
      int64_t m0 = 0;
      for (; m0 + 8 <= op->m; m0 += 8) m_block<8>(tile, x, tile_end, m0);
      switch (op->m - m0) {
        case 7:
          m_block<7>(tile, x, tile_end, m0);
          break;
        case 6:
          m_block<6>(tile, x, tile_end, m0);
          break;
        case 5:
          m_block<5>(tile, x, tile_end, m0);
          break;
        case 4:
          m_block<4>(tile, x, tile_end, m0);
          break;
        case 3:
          m_block<3>(tile, x, tile_end, m0);
          break;
        case 2:
          m_block<2>(tile, x, tile_end, m0);
          break;
        case 1:
          m_block<1>(tile, x, tile_end, m0);
          break;
        default:
          break;
      }
    }
  }
};

}  // namespace nibble::detail::cpu::avx512

#endif  // AVX-512
