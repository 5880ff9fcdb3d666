// AVX-512 (F/BW/DQ/VL) GEMM kernels. Compiled only in translation units built with those flags
// (nibble::cpu_kernels); elsewhere this header is empty.
//
// Layout trick: the kernels never shuffle weights. A 16-byte load of packed codes, zero-extended
// to 16 int32 lanes (vpmovzxbd), holds in lane j byte j, i.e. the codes of elements
//   4-bit: 2j (low nibble) and 2j + 1 (high nibble)        -> 2 planes of 16 lanes, 32 elements
//   2-bit: 4j + p at bits 2p                               -> 4 planes of 16 lanes, 64 elements
//   8-bit: j                                               -> 1 plane of 16 lanes, 16 elements
// so instead X is permuted once per call ("prepared") into the same order: chunk c, plane p,
// lane j holds x[c * chunk + j * planes + p]. Elements past padded_k are 0 in prepared X, and
// the last chunk of a row is loaded with a byte mask, so no load reads past a row.
//
// Dequantization (fp32 path): per group a 16-entry table lut[c] = (c - z) * s, looked up with
// vpermps, which reads only the low 4 bits of each index: the low nibble needs no mask, the high
// one a shift; 2-bit tables repeat every 4 entries so the bits above a plane are ignored too. When
// a 32- or 64-element chunk straddles groups (G = 16, 48, ...), the per-lane tables come from two
// groups with vpermt2ps (4-bit) or the codes are converted and scaled per lane (2-bit). 8-bit
// codes are converted (vcvtdq2ps) and scaled with one FMA.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "nibble/core/float16.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"
#include "nibble/pack.hpp"

namespace nibble::detail::cpu::avx512 {

template <int Bits>
struct Chunk {
  static constexpr int kPlanes = 8 / Bits;            // codes per byte
  static constexpr int64_t kElements = 16 * kPlanes;  // elements per 16-byte load
};

// Rows of X in the decoders' order, zero past padded_k; each row rounded up to whole chunks.
template <int Bits>
int64_t prepared_row_length(int64_t padded_k) {
  return (padded_k + Chunk<Bits>::kElements - 1) / Chunk<Bits>::kElements * Chunk<Bits>::kElements;
}

template <int Bits>
std::size_t prepared_bytes_f32(const nibble_gemm_operands* op) {
  return static_cast<std::size_t>(op->m * prepared_row_length<Bits>(op->padded_k)) * sizeof(float);
}

template <int Bits>
void prepare_f32(const nibble_gemm_operands* op, void* prepared) {
  constexpr int kPlanes = Chunk<Bits>::kPlanes;
  constexpr int64_t kElements = Chunk<Bits>::kElements;
  const int64_t length = prepared_row_length<Bits>(op->padded_k);
  auto* out = static_cast<float*>(prepared);
  for (int64_t row = 0; row < op->m; ++row) {
    const float* x = op->x + row * op->padded_k;
    float* x_out = out + row * length;
    for (int64_t chunk = 0; chunk < length; chunk += kElements) {
      for (int plane = 0; plane < kPlanes; ++plane) {
        for (int lane = 0; lane < 16; ++lane) {
          const int64_t element = chunk + lane * kPlanes + plane;
          x_out[chunk + plane * 16 + lane] = element < op->padded_k ? x[element] : 0.0f;
        }
      }
    }
  }
}

// Scales of one row as float, 16 at a time where possible.
template <class ScaleT>
void row_scales(const ScaleT* scales, int64_t count, float* out) {
  int64_t i = 0;
  if constexpr (std::is_same_v<ScaleT, float>) {
    std::memcpy(out, scales, static_cast<std::size_t>(count) * sizeof(float));
    return;
  } else if constexpr (std::is_same_v<ScaleT, fp16>) {
    for (; i + 16 <= count; i += 16) {
      const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + i));
      _mm512_storeu_ps(out + i, _mm512_cvtph_ps(bits));
    }
  } else {
    for (; i + 16 <= count; i += 16) {
      const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + i));
      _mm512_storeu_ps(out + i,
                       _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
    }
  }
  for (; i < count; ++i)
    out[i] = to_float(scales[i]);
}

// Zero points of one row as float, in group order: 16 (8-bit) or 32 (4-bit) groups per step,
// scalar for the tail and for 2-bit.
template <int Bits>
void row_zeros(const uint8_t* zeros, int64_t count, float* out) {
  int64_t group = 0;
  if constexpr (Bits == 8) {
    for (; group + 16 <= count; group += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(zeros + group));
      _mm512_storeu_ps(out + group, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)));
    }
  } else if constexpr (Bits == 4) {
    // 16 bytes hold groups 2j (low nibble) and 2j + 1 (high nibble) of byte j: split, convert,
    // and interleave back into group order.
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second =
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (; group + 32 <= count; group += 32) {
      const __m512i bytes = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(zeros + group / 2)));
      const __m512 low = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(0xF)));
      const __m512 high = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4));
      _mm512_storeu_ps(out + group, _mm512_permutex2var_ps(low, first, high));
      _mm512_storeu_ps(out + group + 16, _mm512_permutex2var_ps(low, second, high));
    }
  }
  for (; group < count; ++group)
    out[group] = static_cast<float>(BitPacking<Bits>::code_at(zeros, group));
}

// For one row: scale[g] and offset[g] = -zero[g] * scale[g], so that w = code * scale + offset.
template <int Bits, class ScaleT>
void row_parameters(const nibble_gemm_operands& op, int64_t row, float* scale, float* offset) {
  row_scales(static_cast<const ScaleT*>(op.scales) + row * op.n_groups, op.n_groups, scale);
  if (op.zeros == nullptr) {
    const float mid = static_cast<float>(1 << (Bits - 1));
    for (int64_t group = 0; group < op.n_groups; ++group)
      offset[group] = -mid * scale[group];
    return;
  }
  row_zeros<Bits>(op.zeros + row * op.zero_row_bytes, op.n_groups, offset);
  for (int64_t group = 0; group < op.n_groups; ++group)
    offset[group] *= -scale[group];
}

// 16 bytes of row codes starting at `byte`; a masked load for a row's last, partial chunk.
inline __m512i load_codes(const uint8_t* row, int64_t byte, int64_t row_bytes) {
  const int64_t left = row_bytes - byte;
  if (left >= 16) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + byte)));
  }
  const auto mask = static_cast<__mmask16>((1u << left) - 1u);
  return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, row + byte));
}

// lut[i] = (i - z) * s = i * s + offset for 4-bit; for 2-bit entry i holds code i & 3 (the index
// bits above a plane belong to the next plane and must not matter).
template <int Bits>
inline __m512 code_table(float scale, float offset) {
  const __m512 codes = Bits == 4
                           ? _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                           : _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
  return _mm512_fmadd_ps(codes, _mm512_set1_ps(scale), _mm512_set1_ps(offset));
}

// Dequantized weights of one chunk whose elements all belong to one group: `table` is that
// group's code_table (4/2-bit); 8-bit uses the group's scale and offset directly.
template <int Bits>
inline void decode_in_group(__m512i codes, __m512 table, __m512 scale, __m512 offset, __m512* w) {
  if constexpr (Bits == 8) {
    w[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(codes), scale, offset);
  } else if constexpr (Bits == 4) {
    w[0] = _mm512_permutexvar_ps(codes, table);  // vpermps reads index bits 0-3: the low nibble
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table);
  } else {
    w[0] = _mm512_permutexvar_ps(codes, table);
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 2), table);
    w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table);
    w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 6), table);
  }
}

// Dequantized weights of one chunk that straddles groups (group_size % chunk elements != 0).
// Every 16-element slice lies in one group (group_size % 16 == 0): slice q covers lanes
// 8q .. 8q + 7 (4-bit, 2 slices) or 4q .. 4q + 3 (2-bit, 4 slices).
template <int Bits>
inline void decode_split(__m512i codes, const float* scale, const float* offset,
                         const int64_t* group, __m512* w) {
  if constexpr (Bits == 4) {
    const __m512 table_a = code_table<4>(scale[group[0]], offset[group[0]]);
    const __m512 table_b = code_table<4>(scale[group[1]], offset[group[1]]);
    // vpermt2ps picks the second table by index bit 4: set it in lanes 8-15.
    const __m512i second =
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 16, 16, 16, 16, 16, 16, 16, 16);
    const __m512i low = _mm512_or_si512(_mm512_and_si512(codes, _mm512_set1_epi32(0xF)), second);
    const __m512i high = _mm512_or_si512(_mm512_srli_epi32(codes, 4), second);
    w[0] = _mm512_permutex2var_ps(table_a, low, table_b);
    w[1] = _mm512_permutex2var_ps(table_a, high, table_b);
  } else {
    static_assert(Bits == 2, "8-bit chunks never straddle groups");
    __m512 s = _mm512_setzero_ps();
    __m512 c = _mm512_setzero_ps();
    for (int slice = 0; slice < 4; ++slice) {
      const auto lanes = static_cast<__mmask16>(0xFu << (4 * slice));
      s = _mm512_mask_mov_ps(s, lanes, _mm512_set1_ps(scale[group[slice]]));
      c = _mm512_mask_mov_ps(c, lanes, _mm512_set1_ps(offset[group[slice]]));
    }
    const __m512i mask = _mm512_set1_epi32(3);
    for (int plane = 0; plane < 4; ++plane) {
      const __m512i plane_codes = _mm512_and_si512(_mm512_srli_epi32(codes, 2 * plane), mask);
      w[plane] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(plane_codes), s, c);
    }
  }
}

// The fp32 kernel. Loop nest: tiles of kTileRows rows of W (their scales and offsets converted
// once per tile) x blocks of MB <= 8 rows of X x blocks of K that keep those X rows in L1 x NB
// rows of W at a time. Each decoded weight vector feeds MB FMAs; two accumulators per (W row,
// X row) pair, and NB rows in flight, hide the FMA latency.
template <int Bits, class ScaleT>
struct Fp32Kernel {
  static constexpr int kPlanes = Chunk<Bits>::kPlanes;
  static constexpr int64_t kElements = Chunk<Bits>::kElements;
  static constexpr int64_t kTileRows = 64;
  static constexpr int64_t kBlockBytes = 24 * 1024;  // prepared X of one K block, all MB rows

  static std::size_t scratch_bytes(const nibble_gemm_operands* op, int64_t /*columns*/) {
    return static_cast<std::size_t>(kTileRows * 2 * op->n_groups) * sizeof(float);
  }

  struct Tile {
    const nibble_gemm_operands* op;
    const float* params;  // per tile row: scale[n_groups] then offset[n_groups]
    int64_t first_row;
    const float* scale(int64_t row) const { return params + (row - first_row) * 2 * op->n_groups; }
    const float* offset(int64_t row) const { return scale(row) + op->n_groups; }
  };

  template <int NB, int MB>
  static void store(const nibble_gemm_operands& op, int64_t n0, int64_t m0,
                    __m512 (&acc)[NB][MB][2], bool first_block) {
    for (int r = 0; r < NB; ++r) {
      const int64_t col = n0 + r;
      const float bias = op.bias != nullptr ? op.bias[col] : 0.0f;
      for (int i = 0; i < MB; ++i) {
        float& y = op.y[(m0 + i) * op.n + col];
        const float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][i][0], acc[r][i][1]));
        y = first_block ? sum + bias : y + sum;
      }
    }
  }

  // Y[m0 .. m0+MB, n0 .. n0+NB] (+)= X * W^T over groups [g_begin, g_end) (whole-group chunks).
  template <int NB, int MB>
  static void rows_in_groups(const Tile& tile, int64_t n0, int64_t m0, int64_t g_begin,
                             int64_t g_end, bool first_block) {
    const nibble_gemm_operands& op = *tile.op;
    const int64_t length = prepared_row_length<Bits>(op.padded_k);
    const float* x = static_cast<const float*>(op.prepared) + m0 * length;
    const int64_t chunks_per_group = op.group_size / kElements;
    const uint8_t* row[NB];
    const float* scale[NB];
    const float* offset[NB];
    for (int r = 0; r < NB; ++r) {
      row[r] = op.qweight + (n0 + r) * op.packed_row_bytes;
      scale[r] = tile.scale(n0 + r);
      offset[r] = tile.offset(n0 + r);
    }
    __m512 acc[NB][MB][2];
    for (int r = 0; r < NB; ++r) {
      for (int i = 0; i < MB; ++i)
        acc[r][i][0] = acc[r][i][1] = _mm512_setzero_ps();
    }
    for (int64_t group = g_begin; group < g_end; ++group) {
      __m512 table[NB];
      __m512 s[NB];
      __m512 c[NB];
      for (int r = 0; r < NB; ++r) {
        s[r] = _mm512_set1_ps(scale[r][group]);
        c[r] = _mm512_set1_ps(offset[r][group]);
        table[r] = Bits == 8 ? s[r] : code_table<Bits>(scale[r][group], offset[r][group]);
      }
      const int64_t chunk_end = (group + 1) * chunks_per_group;
      for (int64_t chunk = group * chunks_per_group; chunk < chunk_end; ++chunk) {
        const float* xc = x + chunk * kElements;
        for (int r = 0; r < NB; ++r) {
          // Each row is a short stream (K * bits / 8 bytes) that hardware prefetchers barely
          // learn before it ends, and the next NB rows start cold. Fetch the same place NB rows
          // further on: exactly the next block's data, one block (a few KB) ahead.
          _mm_prefetch(
              reinterpret_cast<const char*>(row[r] + NB * op.packed_row_bytes + chunk * 16),
              _MM_HINT_T0);
          const __m512i codes = _mm512_cvtepu8_epi32(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + chunk * 16)));
          __m512 w[kPlanes];
          decode_in_group<Bits>(codes, table[r], s[r], c[r], w);
          for (int i = 0; i < MB; ++i) {
            for (int p = 0; p < kPlanes; ++p) {
              acc[r][i][p & 1] = _mm512_fmadd_ps(w[p], _mm512_loadu_ps(xc + i * length + 16 * p),
                                                 acc[r][i][p & 1]);
            }
          }
        }
      }
    }
    store<NB, MB>(op, n0, m0, acc, first_block);
  }

  // The same over chunks [chunk_begin, chunk_end) whose 16-element slices may change group.
  template <int NB, int MB>
  static void rows_split(const Tile& tile, int64_t n0, int64_t m0, int64_t chunk_begin,
                         int64_t chunk_end, bool first_block) {
    const nibble_gemm_operands& op = *tile.op;
    const int64_t length = prepared_row_length<Bits>(op.padded_k);
    const float* x = static_cast<const float*>(op.prepared) + m0 * length;
    const int64_t slices_per_group = op.group_size / 16;
    __m512 acc[NB][MB][2];
    for (int r = 0; r < NB; ++r) {
      for (int i = 0; i < MB; ++i)
        acc[r][i][0] = acc[r][i][1] = _mm512_setzero_ps();
    }
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      int64_t group[kPlanes];
      for (int slice = 0; slice < kPlanes; ++slice) {
        // Slices past padded_k (the last chunk's tail) meet zeros in X: any group will do.
        group[slice] = std::min((chunk * kPlanes + slice) / slices_per_group, op.n_groups - 1);
      }
      const float* xc = x + chunk * kElements;
      for (int r = 0; r < NB; ++r) {
        const uint8_t* row = op.qweight + (n0 + r) * op.packed_row_bytes;
        __m512 w[kPlanes];
        decode_split<Bits>(load_codes(row, chunk * 16, op.packed_row_bytes), tile.scale(n0 + r),
                           tile.offset(n0 + r), group, w);
        for (int i = 0; i < MB; ++i) {
          for (int p = 0; p < kPlanes; ++p) {
            acc[r][i][p & 1] =
                _mm512_fmadd_ps(w[p], _mm512_loadu_ps(xc + i * length + 16 * p), acc[r][i][p & 1]);
          }
        }
      }
    }
    store<NB, MB>(op, n0, m0, acc, first_block);
  }

  // All rows of a tile against X rows [m0, m0 + MB), K block by K block.
  template <int MB>
  static void m_block(const Tile& tile, int64_t n_end, int64_t m0) {
    constexpr int kRowsAtOnce = MB <= 2 ? 4 : MB <= 4 ? 2 : 1;
    const nibble_gemm_operands& op = *tile.op;
    const int64_t block_elements =
        std::max<int64_t>(kElements, kBlockBytes / static_cast<int64_t>(MB * sizeof(float)));
    const auto each_row_group = [&](auto&& body) {
      int64_t col = tile.first_row;
      for (; col + kRowsAtOnce <= n_end; col += kRowsAtOnce) {
        body(std::integral_constant<int, kRowsAtOnce>{}, col);
      }
      for (; col < n_end; ++col)
        body(std::integral_constant<int, 1>{}, col);
    };
    if (Bits == 8 || op.group_size % kElements == 0) {
      const int64_t block_groups = std::max<int64_t>(1, block_elements / op.group_size);
      for (int64_t g = 0; g < op.n_groups; g += block_groups) {
        const int64_t g_end = std::min(op.n_groups, g + block_groups);
        each_row_group([&](auto rows, int64_t col) {
          rows_in_groups<decltype(rows)::value, MB>(tile, col, m0, g, g_end, g == 0);
        });
      }
    } else if constexpr (Bits != 8) {  // 8-bit chunks (16 elements) never straddle groups
      const int64_t chunks = prepared_row_length<Bits>(op.padded_k) / kElements;
      const int64_t block_chunks = std::max<int64_t>(1, block_elements / kElements);
      for (int64_t chunk = 0; chunk < chunks; chunk += block_chunks) {
        const int64_t chunk_end = std::min(chunks, chunk + block_chunks);
        each_row_group([&](auto rows, int64_t col) {
          rows_split<decltype(rows)::value, MB>(tile, col, m0, chunk, chunk_end, chunk == 0);
        });
      }
    }
  }

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    auto* params = static_cast<float*>(scratch);
    for (int64_t first = n_begin; first < n_end; first += kTileRows) {
      const int64_t tile_end = std::min(n_end, first + kTileRows);
      for (int64_t row = first; row < tile_end; ++row) {
        float* scale = params + (row - first) * 2 * op->n_groups;
        row_parameters<Bits, ScaleT>(*op, row, scale, scale + op->n_groups);
      }
      const Tile tile{op, params, first};
      int64_t m0 = 0;
      for (; m0 + 8 <= op->m; m0 += 8)
        m_block<8>(tile, tile_end, m0);
      switch (op->m - m0) {
        case 7:
          m_block<7>(tile, tile_end, m0);
          break;
        case 6:
          m_block<6>(tile, tile_end, m0);
          break;
        case 5:
          m_block<5>(tile, tile_end, m0);
          break;
        case 4:
          m_block<4>(tile, tile_end, m0);
          break;
        case 3:
          m_block<3>(tile, tile_end, m0);
          break;
        case 2:
          m_block<2>(tile, tile_end, m0);
          break;
        case 1:
          m_block<1>(tile, tile_end, m0);
          break;
        default:
          break;
      }
    }
  }
};

}  // namespace nibble::detail::cpu::avx512

#endif  // AVX-512
