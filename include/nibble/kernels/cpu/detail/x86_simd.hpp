// The x86 vector vocabulary the fast CPU kernels are written in: one traits struct per ISA, the
// same names in each, so a kernel template is written once and instantiated per ISA.
//
//   Avx2Traits            ymm: 8 float / int32 lanes, 32 bytes; AVX2 + FMA + F16C
//   Avx512Traits<Vnni, Bf16>  zmm: 16 lanes, 64 bytes; AVX-512 F/BW/DQ/VL (+ VNNI's vpdpbusd,
//                             + AVX512_BF16's vdpbf16ps)
//
// Each traits struct exists only in translation units compiled for its ISA (nibble::cpu_kernels,
// src/cpu_kernels_*.cpp); elsewhere this header defines nothing. xsimd gives the portable
// kernels; these need what xsimd does not expose (vpdpbusd, vpmaddubsw, 16-entry vpermps tables,
// byte-masked loads), so they are intrinsics behind one small interface.
#pragma once

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define NIBBLE_X86_AVX2_COMPILED 1
#endif
#if defined(NIBBLE_X86_AVX2_COMPILED) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512DQ__) && defined(__AVX512VL__)
#define NIBBLE_X86_AVX512_COMPILED 1
#endif

#if defined(NIBBLE_X86_AVX2_COMPILED)

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "nibble/core/float16.hpp"

namespace nibble::detail::cpu {

// Scales of one row as float: `count` values from `scales`. F16C / AVX-512 conversions where a
// whole vector fits, the scalar conversion (exactly the same rounding: both are exact) for the
// tail.
template <class ScaleT>
inline void convert_scales_avx2(const ScaleT* scales, int64_t count, float* out) {
  int64_t i = 0;
  if constexpr (std::is_same_v<ScaleT, float>) {
    std::memcpy(out, scales, static_cast<std::size_t>(count) * sizeof(float));
    return;
  } else if constexpr (std::is_same_v<ScaleT, fp16>) {
    for (; i + 8 <= count; i += 8) {
      const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + i));
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(bits));
    }
  } else {
    // bf16 is the top half of an fp32: widen and shift into place.
    for (; i + 8 <= count; i += 8) {
      const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + i));
      _mm256_storeu_ps(out + i,
                       _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16)));
    }
  }
  for (; i < count; ++i)
    out[i] = to_float(scales[i]);
}

struct Avx2Traits {
  using F = __m256;
  using I = __m256i;
  static constexpr int kLanes = 8;   // float / int32 lanes
  static constexpr int kBytes = 32;  // bytes per vector
  static constexpr bool kVnni = false;
  static constexpr bool kBf16 = false;
  // vpermps with a 16-entry table (one register) is AVX-512 only.
  static constexpr bool kTable16 = false;
  // M up to which the streaming kernels run (above: panels), and the panels' rows of X per
  // register block (fp32: 6 x 2 ymm accumulators; int8: 3 x 2 int32 sums + 3 x 2 float sums).
  static constexpr int kStreamMaxM = 4;
  static constexpr int kPanelRowsF32 = 6;
  static constexpr int kPanelRowsI8 = 3;

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float value) { return _mm256_set1_ps(value); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F to_float(I v) { return _mm256_cvtepi32_ps(v); }
  static float reduce(F v) {
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
  }

  static I zero_i() { return _mm256_setzero_si256(); }
  static I set1_i32(int32_t value) { return _mm256_set1_epi32(value); }
  static I set1_i8(int8_t value) { return _mm256_set1_epi8(value); }
  static I load_i(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static void store_i(void* p, I v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
  static I broadcast_i32(const void* p) {
    int32_t value;
    std::memcpy(&value, p, sizeof value);
    return _mm256_set1_epi32(value);
  }
  static I and_i(I a, I b) { return _mm256_and_si256(a, b); }
  template <int Shift>
  static I srli_i32(I v) {
    return Shift == 0 ? v : _mm256_srli_epi32(v, Shift);
  }
  template <int Shift>
  static I srli_i16(I v) {
    return Shift == 0 ? v : _mm256_srli_epi16(v, Shift);
  }
  // kLanes bytes, each zero-extended into an int32 lane (vpmovzxbd); `count` < kLanes reads only
  // that many bytes (the rest are 0).
  static I load_bytes_as_i32(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static I load_bytes_as_i32(const uint8_t* p, int64_t count) {
    alignas(16) uint8_t bytes[16] = {};
    std::memcpy(bytes, p, static_cast<std::size_t>(count));
    return load_bytes_as_i32(bytes);
  }
  // kBytes bytes; `count` < kBytes reads only that many (the rest are 0).
  static I load_bytes(const uint8_t* p, int64_t count) {
    alignas(32) uint8_t bytes[32] = {};
    std::memcpy(bytes, p, static_cast<std::size_t>(count));
    return load_i(bytes);
  }
  // Lanes of `v` picked by `index` (int32 lane indices, each < kLanes).
  static F permute(I index, F v) { return _mm256_permutevar8x32_ps(v, index); }

  // acc[lane] += sum of the 4 byte products w (u8) * x (s8) in that int32 lane. Codes of at most
  // 4 bits: vpmaddubsw's int16 pair sums (<= 2 * 15 * 127) cannot saturate; 8-bit codes could
  // (2 * 255 * 127), so they widen to int16 first and use vpmaddwd alone.
  template <int Bits>
  static I dot4(I acc, I w, I x) {
    if constexpr (Bits == 8) {
      const I w_even = _mm256_and_si256(w, _mm256_set1_epi16(0x00FF));
      const I w_odd = _mm256_srli_epi16(w, 8);
      const I x_even = _mm256_srai_epi16(_mm256_slli_epi16(x, 8), 8);
      const I x_odd = _mm256_srai_epi16(x, 8);
      return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(w_even, x_even),
                                                    _mm256_madd_epi16(w_odd, x_odd)));
    } else {
      const I pairs = _mm256_maddubs_epi16(w, x);
      return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }
  }

  template <class ScaleT>
  static void convert_scales(const ScaleT* scales, int64_t count, float* out) {
    convert_scales_avx2(scales, count, out);
  }

  // out[2j] = a[j], out[2j + 1] = b[j] (2 * kLanes floats).
  static void interleave(F a, F b, float* out) {
    const __m256 low = _mm256_unpacklo_ps(a, b);   // a0 b0 a1 b1 | a4 b4 a5 b5
    const __m256 high = _mm256_unpackhi_ps(a, b);  // a2 b2 a3 b3 | a6 b6 a7 b7
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(low, high, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(low, high, 0x31));
  }

  // In-place transpose of the kLanes x kLanes block of 32-bit values whose rows are v[0..kLanes).
  static void transpose(F (&v)[8]) {
    const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]);
    const __m256 t1 = _mm256_unpackhi_ps(v[0], v[1]);
    const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]);
    const __m256 t3 = _mm256_unpackhi_ps(v[2], v[3]);
    const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]);
    const __m256 t5 = _mm256_unpackhi_ps(v[4], v[5]);
    const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]);
    const __m256 t7 = _mm256_unpackhi_ps(v[6], v[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44);
    const __m256 u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44);
    const __m256 u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44);
    const __m256 u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44);
    const __m256 u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    v[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    v[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    v[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    v[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    v[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    v[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    v[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    v[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
  }
  static F cast_f(I v) { return _mm256_castsi256_ps(v); }
  static I cast_i(F v) { return _mm256_castps_si256(v); }
};

}  // namespace nibble::detail::cpu

#endif  // AVX2

#if defined(NIBBLE_X86_AVX512_COMPILED)

namespace nibble::detail::cpu {

template <bool Vnni, bool Bf16 = false>
struct Avx512Traits {
  using F = __m512;
  using I = __m512i;
  static constexpr int kLanes = 16;
  static constexpr int kBytes = 64;
  static constexpr bool kVnni = Vnni;
  static constexpr bool kBf16 = Bf16;
  static constexpr bool kTable16 = true;
  // As Avx2Traits, with 32 registers: 12 x 2 zmm fp32 accumulators; 6 x 2 (int32 + float).
  static constexpr int kStreamMaxM = 8;
  static constexpr int kPanelRowsF32 = 12;
  static constexpr int kPanelRowsI8 = 6;

  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float value) { return _mm512_set1_ps(value); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F to_float(I v) { return _mm512_cvtepi32_ps(v); }
  static float reduce(F v) { return _mm512_reduce_add_ps(v); }
  // v[lane] = table[index[lane] & 15] (vpermps reads index bits 0-3 and ignores the rest).
  static F lookup16(I index, F table) { return _mm512_permutexvar_ps(index, table); }

  static I zero_i() { return _mm512_setzero_si512(); }
  static I set1_i32(int32_t value) { return _mm512_set1_epi32(value); }
  static I set1_i8(int8_t value) { return _mm512_set1_epi8(value); }
  static I load_i(const void* p) { return _mm512_loadu_si512(p); }
  static void store_i(void* p, I v) { _mm512_storeu_si512(p, v); }
  static I broadcast_i32(const void* p) {
    int32_t value;
    std::memcpy(&value, p, sizeof value);
    return _mm512_set1_epi32(value);
  }
  static I and_i(I a, I b) { return _mm512_and_si512(a, b); }
  template <int Shift>
  static I srli_i32(I v) {
    return Shift == 0 ? v : _mm512_srli_epi32(v, Shift);
  }
  template <int Shift>
  static I srli_i16(I v) {
    return Shift == 0 ? v : _mm512_srli_epi16(v, Shift);
  }
  static I load_bytes_as_i32(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static I load_bytes_as_i32(const uint8_t* p, int64_t count) {
    const auto mask = static_cast<__mmask16>((1u << count) - 1u);
    return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, p));  // masked: reads only `count`
  }
  static I load_bytes(const uint8_t* p, int64_t count) {
    return _mm512_maskz_loadu_epi8((__mmask64{1} << count) - 1, p);
  }
  static F permute(I index, F v) { return _mm512_permutexvar_ps(index, v); }

  // acc[lane] += sum of the 4 byte products w (u8) * x (s8) in that int32 lane: vpdpbusd with
  // VNNI (exact, no saturation), else as Avx2Traits::dot4.
  template <int Bits>
  static I dot4(I acc, I w, I x) {
    if constexpr (Vnni) {
#if defined(__AVX512VNNI__)
      return _mm512_dpbusd_epi32(acc, w, x);
#else
      static_assert(!Vnni, "the VNNI kernels need a translation unit built with -mavx512vnni");
      return acc;
#endif
    } else if constexpr (Bits == 8) {
      const I w_even = _mm512_and_si512(w, _mm512_set1_epi16(0x00FF));
      const I w_odd = _mm512_srli_epi16(w, 8);
      const I x_even = _mm512_srai_epi16(_mm512_slli_epi16(x, 8), 8);
      const I x_odd = _mm512_srai_epi16(x, 8);
      return _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_madd_epi16(w_even, x_even),
                                                    _mm512_madd_epi16(w_odd, x_odd)));
    } else {
      const I pairs = _mm512_maddubs_epi16(w, x);  // <= 2 * 15 * 127: no saturation
      return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
    }
  }

  template <class ScaleT>
  static void convert_scales(const ScaleT* scales, int64_t count, float* out) {
    int64_t i = 0;
    if constexpr (std::is_same_v<ScaleT, fp16>) {
      for (; i + 16 <= count; i += 16) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + i));
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(bits));
      }
    } else if constexpr (std::is_same_v<ScaleT, bf16>) {
      for (; i + 16 <= count; i += 16) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + i));
        _mm512_storeu_ps(out + i,
                         _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
      }
    }
    convert_scales_avx2(scales + i, count - i, out + i);
  }

  // out[2j] = a[j], out[2j + 1] = b[j] (2 * kLanes floats).
  static void interleave(F a, F b, float* out) {
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second =
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(out, _mm512_permutex2var_ps(a, first, b));
    _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(a, second, b));
  }

  // In-place transpose of the 16 x 16 block of 32-bit values whose rows are v[0..16): 4 stages,
  // each pairing rows at distance 1, 2 (within 128-bit lanes), then 128-bit lanes at distance 4, 8.
  static void transpose(F (&v)[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      for (int j = 0; j < 2; ++j) {
        const __m512d a = _mm512_castps_pd(t[i + j]);
        const __m512d b = _mm512_castps_pd(t[i + j + 2]);
        v[i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        v[i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
      }
    }
    // Now v[4q + r] holds, in its 128-bit lane c, rows 4q..4q+3 of column 4c + r; column
    // 4c + r of the result gathers lane c of v[r], v[4 + r], v[8 + r], v[12 + r].
    for (int i = 0; i < 16; ++i)
      t[i] = v[i];
    for (int r = 0; r < 4; ++r) {
      // 0x88 picks 128-bit lanes (0, 2) of each source, 0xDD lanes (1, 3).
      const __m512 a0 = _mm512_shuffle_f32x4(t[r], t[4 + r], 0x88);       // q0.c0 q0.c2 q1.c0 q1.c2
      const __m512 a1 = _mm512_shuffle_f32x4(t[r], t[4 + r], 0xDD);       // q0.c1 q0.c3 q1.c1 q1.c3
      const __m512 b0 = _mm512_shuffle_f32x4(t[8 + r], t[12 + r], 0x88);  // q2.c0 q2.c2 q3.c0 q3.c2
      const __m512 b1 = _mm512_shuffle_f32x4(t[8 + r], t[12 + r], 0xDD);
      v[r] = _mm512_shuffle_f32x4(a0, b0, 0x88);       // column r:      q0 q1 q2 q3
      v[8 + r] = _mm512_shuffle_f32x4(a0, b0, 0xDD);   // column 8 + r
      v[4 + r] = _mm512_shuffle_f32x4(a1, b1, 0x88);   // column 4 + r
      v[12 + r] = _mm512_shuffle_f32x4(a1, b1, 0xDD);  // column 12 + r
    }
  }
  static F cast_f(I v) {
    return _mm512_castsi512_ps(v);
  }
  static I cast_i(F v) {
    return _mm512_castps_si512(v);
  }

  // ---- AVX512_BF16 ----
  // acc[lane] += w.bf16[2 lane] * x.bf16[2 lane] + w.bf16[2 lane + 1] * x.bf16[2 lane + 1]:
  // vdpbf16ps (each product exact in fp32, accumulated with rounding; bf16 subnormals read as 0).
  static F dot_bf16(F acc, I w, I x) {
#if defined(__AVX512BF16__)
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(w), reinterpret_cast<__m512bh>(x));
#else
    static_assert(!Bf16, "the BF16 kernels need a translation unit built with -mavx512bf16");
    (void)w;
    (void)x;
    return acc;
#endif
  }
  // 32 bf16 lanes holding values[i & 15]: 16 floats, each exactly a bf16 (small integers), as a
  // vpermw table whose 5-bit indices repeat every 16.
  static I bf16_table(F values) {
    // The bf16 of an exactly representable float is its top 16 bits.
    const __m256i top = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(values), 16));
    return _mm512_inserti64x4(_mm512_castsi256_si512(top), top, 1);
  }
  // v.u16[j] = table.u16[index.u16[j] & 31] (vpermw).
  static I lookup_u16(I index, I table) {
    return _mm512_permutexvar_epi16(index, table);
  }
  // v.u16[j] = (index bit 5 ? b : a).u16[index.u16[j] & 31] (vpermt2w).
  static I lookup2_u16(I index, I a, I b) {
    return _mm512_permutex2var_epi16(a, index, b);
  }
  // 32 bytes, each zero-extended into a 16-bit lane; `count` < 32 reads only that many.
  static I load_bytes_as_u16(const uint8_t* p) {
    return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static I load_bytes_as_u16(const uint8_t* p, int64_t count) {
    return _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8((__mmask32{1} << count) - 1, p));
  }
  static I set1_i16(int16_t value) {
    return _mm512_set1_epi16(value);
  }
  // Lanes 0..7 = a, lanes 8..15 = b.
  static F halves(float a, float b) {
    return _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1);
  }
  // 16-bit lanes 16..31 set to `value`, the others 0.
  static I upper_half_i16(int16_t value) {
    return _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(value), 1);
  }
  static I or_i(I a, I b) {
    return _mm512_or_si512(a, b);
  }
};

}  // namespace nibble::detail::cpu

#endif  // AVX-512
