// Small-batch kernels (decoding: M <= T's stream limit): every row of W is read once per call,
// straight through memory, and decoded once for all M rows of X.
//
// Why rows one after another: W is bigger than any cache and each call reads it once, so the
// kernel runs at memory speed only if the hardware keeps a long sequential stream in flight. The
// rows of W are contiguous, so taking them in order makes each thread's share one stream (a few
// MB); interleaving several rows at once makes short streams the prefetchers barely learn (on a
// Zen 4 VM: 0.44 ms instead of 0.25 ms for a cold 4096 x 4096 4-bit W on 2 threads). A software
// prefetch kPrefetchBytes ahead keeps the next rows' lines coming across row ends.
//
//   fp32:  y[i] = sum_g s_g * sum_{k in g} x_ik (q_k - z_g)   (q - z exact; one fold per group)
//   int8:  y[i] = sum_b s_g(b) s_x(i, b) sum_{k in b} q_k c_ik  -  sum_g s_g z_g sum_{b in g} s_x c
//          with exact int32 dot products over each activation block b (c: int8 activation codes)
// Split units (group_size not a multiple of the unit) fold lane by lane with per-lane parameters.
#pragma once

#include "nibble/kernels/cpu/detail/x86_decode.hpp"

#if defined(NIBBLE_X86_AVX2_COMPILED)

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "nibble/kernels/cpu/kernel_abi.hpp"

namespace nibble::detail::cpu {

// Bytes of W ahead of the current position to prefetch (a few rows at 4096 x 4-bit; measured on
// Zen 4: 1-4 KB are equally good, none is 10% slower).
inline constexpr int64_t kPrefetchBytes = 2048;

inline void prefetch(const uint8_t* address) {
  _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T0);
}

// Calls f(std::integral_constant<int, count>) for 1 <= count <= Max.
template <int Max, class F>
void with_rows(int64_t count, F&& f) {
  if constexpr (Max >= 1) {
    if (count == Max) {
      f(std::integral_constant<int, Max>{});
    } else {
      with_rows<Max - 1>(count, std::forward<F>(f));
    }
  }
}

template <class T>
float horizontal_sum(const typename T::F (&v)[2]) {
  return T::reduce(T::add(v[0], v[1]));
}

// ---- fp32 activations
// ----------------------------------------------------------------------------

template <class T, int Bits, class ScaleT>
struct StreamF32 {
  using F = typename T::F;
  using I = typename T::I;
  using D = F32Decoder<T, Bits>;
  using U = typename D::U;
  static constexpr int kPlanes = D::kPlanes;

  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    return static_cast<std::size_t>(2 * parameter_stride<T>(op->n_groups)) * sizeof(float);
  }

  // Rows [n_begin, n_end) of W against all MB rows of X.
  template <int MB>
  static void rows(const nibble_gemm_operands& op, const PreparedF32<T, Bits>& x, int64_t n_begin,
                   int64_t n_end, void* scratch) {
    // Two accumulator chains per X row hide the FMA latency; a single row gets four.
    constexpr int kChains = MB == 1 ? 4 : 2;
    float* scale = static_cast<float*>(scratch);
    float* zero = scale + parameter_stride<T>(op.n_groups);
    for (int64_t row = n_begin; row < n_end; ++row) {
      load_row_parameters<T, Bits, ScaleT>(op, row, scale, zero);
      const uint8_t* codes = op.qweight + row * op.packed_row_bytes;
      F total[MB][2];
      for (int i = 0; i < MB; ++i)
        total[i][0] = total[i][1] = T::zero();
      if (!x.split) {
        // Table decoders (AVX-512, 4 and 2 bits) look up (q - z) * s directly: the chains run
        // through the whole row. Converting decoders produce (q - z) and fold s once per group.
        constexpr bool kScaled = D::kTable;
        const int64_t units_per_group = op.group_size / U::kElements;
        F acc[MB][kChains];
        const auto clear = [&] {
          for (int i = 0; i < MB; ++i) {
            for (int c = 0; c < kChains; ++c)
              acc[i][c] = T::zero();
          }
        };
        clear();
        for (int64_t g = 0; g < op.n_groups; ++g) {
          const typename D::Group params = D::template group<kScaled>(zero[g], scale[g]);
          // Units in pairs, so that every accumulator index is a compile-time constant (a
          // run-time index would put the accumulators in memory).
          const auto unit = [&](auto parity, int64_t u) {
            prefetch(codes + u * U::kBytes + kPrefetchBytes);
            F w[kPlanes];
            D::template decode<kScaled>(T::load_bytes_as_i32(codes + u * U::kBytes), params, w);
            const float* xu = x.x + u * U::kElements;
            for (int i = 0; i < MB; ++i) {
              for (int p = 0; p < kPlanes; ++p) {
                F& a = acc[i][(decltype(parity)::value * kPlanes + p) % kChains];
                a = T::fma(w[p], T::load(xu + i * x.row_length + p * T::kLanes), a);
              }
            }
          };
          const int64_t group_end = (g + 1) * units_per_group;
          int64_t u = g * units_per_group;
          for (; u + 2 <= group_end; u += 2) {
            unit(std::integral_constant<int, 0>{}, u);
            unit(std::integral_constant<int, 1>{}, u + 1);
          }
          if (u < group_end) unit(std::integral_constant<int, 0>{}, u);
          if constexpr (!kScaled) {
            for (int i = 0; i < MB; ++i) {
              F sum = acc[i][0];
              for (int c = 1; c < kChains; ++c)
                sum = T::add(sum, acc[i][c]);
              total[i][0] = T::fma(sum, params.scale, total[i][0]);
            }
            clear();
          }
        }
        if constexpr (kScaled) {
          for (int i = 0; i < MB; ++i) {
            for (int c = 0; c < kChains; ++c)
              total[i][c % 2] = T::add(total[i][c % 2], acc[i][c]);
          }
        }
      } else {
        const auto unit = [&](auto parity, int64_t u) {
          prefetch(codes + u * U::kBytes + kPrefetchBytes);
          F w[kPlanes];
          D::template decode_lanes<false>(D::load_unit(codes, u, op.packed_row_bytes),
                                          D::lane_values(x.lanes, u, zero), T::zero(), w);
          const F lane_scale = D::lane_values(x.lanes, u, scale);
          const float* xu = x.x + u * U::kElements;
          for (int i = 0; i < MB; ++i) {
            F sum = T::mul(w[0], T::load(xu + i * x.row_length));
            for (int p = 1; p < kPlanes; ++p)
              sum = T::fma(w[p], T::load(xu + i * x.row_length + p * T::kLanes), sum);
            F& t = total[i][decltype(parity)::value];
            t = T::fma(sum, lane_scale, t);
          }
        };
        int64_t u = 0;
        for (; u + 2 <= x.units; u += 2) {
          unit(std::integral_constant<int, 0>{}, u);
          unit(std::integral_constant<int, 1>{}, u + 1);
        }
        if (u < x.units) unit(std::integral_constant<int, 0>{}, u);
      }
      const float bias = op.bias != nullptr ? op.bias[row] : 0.0f;
      for (int i = 0; i < MB; ++i)
        op.y[i * op.n + row] = horizontal_sum<T>(total[i]) + bias;
    }
  }

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    const PreparedF32<T, Bits> x = PreparedF32<T, Bits>::view(*op);
    with_rows<T::kStreamMaxM>(
        op->m, [&](auto mb) { rows<decltype(mb)::value>(*op, x, n_begin, n_end, scratch); });
  }
};

// ---- int8 activations
// ----------------------------------------------------------------------------

template <class T, int Bits, class ScaleT>
struct StreamI8 {
  using F = typename T::F;
  using I = typename T::I;
  using D = I8Decoder<T, Bits>;
  using U = typename D::U;
  static constexpr int kPlanes = D::kPlanes;

  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    return static_cast<std::size_t>(2 * parameter_stride<T>(op->n_groups)) * sizeof(float);
  }

  // sum[i] += the P plane dot products of one unit with X row i.
  template <int MB, int Plane = 0>
  static void dot_unit(I bytes, const int8_t* xu, int64_t row_length, I (&sum)[MB]) {
    if constexpr (Plane < kPlanes) {
      const I w = D::template plane<Plane>(bytes);
      for (int i = 0; i < MB; ++i) {
        sum[i] =
            T::template dot4<Bits>(sum[i], w, T::load_i(xu + i * row_length + Plane * U::kBytes));
      }
      dot_unit<MB, Plane + 1>(bytes, xu, row_length, sum);
    }
  }

  template <int MB>
  static void rows(const nibble_gemm_operands& op, const PreparedI8<T, Bits>& x, int64_t n_begin,
                   int64_t n_end, void* scratch) {
    float* scale = static_cast<float*>(scratch);
    float* zero = scale + parameter_stride<T>(op.n_groups);
    const int64_t blocks_per_group = op.group_size / op.x_block;
    for (int64_t row = n_begin; row < n_end; ++row) {
      load_row_parameters<T, Bits, ScaleT>(op, row, scale, zero);
      const uint8_t* codes = op.qweight + row * op.packed_row_bytes;
      F total[MB][2];
      for (int i = 0; i < MB; ++i)
        total[i][0] = total[i][1] = T::zero();
      if (!x.split) {
        // Whole units per activation block: exact int32 sums over the block, scaled once.
        const int64_t units_per_block = op.x_block / U::kElements;
        // Blocks in pairs (compile-time accumulator indices, two FMA chains).
        const auto block = [&](auto parity, int64_t b) {
          // Groups of at most 256 elements are their own activation block: no division then.
          const float w_scale = blocks_per_group == 1 ? scale[b] : scale[b / blocks_per_group];
          I sum[MB];
          for (int i = 0; i < MB; ++i)
            sum[i] = T::zero_i();
          int64_t u = b * units_per_block;
          do {
            prefetch(codes + u * U::kBytes + kPrefetchBytes);
            dot_unit<MB>(T::load_i(codes + u * U::kBytes), x.codes + u * U::kElements, x.row_length,
                         sum);
          } while (++u < (b + 1) * units_per_block);
          for (int i = 0; i < MB; ++i) {
            F& t = total[i][decltype(parity)::value];
            t = T::fma(T::to_float(sum[i]), T::set1(w_scale * x.scales[i * x.blocks + b]), t);
          }
        };
        int64_t b = 0;
        for (; b + 2 <= x.blocks; b += 2) {
          block(std::integral_constant<int, 0>{}, b);
          block(std::integral_constant<int, 1>{}, b + 1);
        }
        if (b < x.blocks) block(std::integral_constant<int, 0>{}, b);
      } else {
        // Blocks shorter than a unit (or not dividing it): each lane scaled by its own
        // weight scale * activation scale.
        const auto unit = [&](auto parity, int64_t u) {
          prefetch(codes + u * U::kBytes + kPrefetchBytes);
          I sum[MB];
          for (int i = 0; i < MB; ++i)
            sum[i] = T::zero_i();
          dot_unit<MB>(D::load_unit(codes, u, op.packed_row_bytes), x.codes + u * U::kElements,
                       x.row_length, sum);
          const F w_scale = F32Decoder<T, Bits>::lane_values(x.lanes, u, scale);
          for (int i = 0; i < MB; ++i) {
            const F lane_scale =
                T::mul(w_scale, T::load(x.lane_scales + (i * x.units + u) * T::kLanes));
            F& t = total[i][decltype(parity)::value];
            t = T::fma(T::to_float(sum[i]), lane_scale, t);
          }
        };
        int64_t u = 0;
        for (; u + 2 <= x.units; u += 2) {
          unit(std::integral_constant<int, 0>{}, u);
          unit(std::integral_constant<int, 1>{}, u + 1);
        }
        if (u < x.units) unit(std::integral_constant<int, 0>{}, u);
      }
      // Zero-point term: sum over groups of s * z * (sum over the group of s_x * c).
      const float bias = op.bias != nullptr ? op.bias[row] : 0.0f;
      for (int i = 0; i < MB; ++i) {
        const float* group_sums = x.group_sums + i * x.group_stride;
        F correction = T::zero();
        for (int64_t g = 0; g < x.group_stride; g += T::kLanes) {
          correction = T::fma(T::mul(T::load(scale + g), T::load(zero + g)),
                              T::load(group_sums + g), correction);
        }
        op.y[i * op.n + row] = horizontal_sum<T>(total[i]) - T::reduce(correction) + bias;
      }
    }
  }

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    const PreparedI8<T, Bits> x = PreparedI8<T, Bits>::view(*op);
    with_rows<T::kStreamMaxM>(
        op->m, [&](auto mb) { rows<decltype(mb)::value>(*op, x, n_begin, n_end, scratch); });
  }
};

}  // namespace nibble::detail::cpu

#endif  // AVX2
