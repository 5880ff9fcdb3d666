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
//   fp32:  y[i] = sum_g s_g * sum_{k in g} x_ik (q_k - z_g)   (q - z exact; one fold per group),
//          or sum_k x_ik ((q_k - z) s) with the AVX-512 table decoders, which look up the product
//   int8:  y[i] = sum_b s_g(b) s_x(i, b) sum_{k in b} q_k c_ik  -  sum_g s_g z_g sum_{b in g} s_x c
//          with exact int32 dot products over each activation block b (c: int8 activation codes)
// Split units (group_size not a multiple of the unit) fold lane by lane with per-lane parameters.
#pragma once

#include "nibble/kernels/cpu/detail/x86_decode.hpp"

#if defined(NIBBLE_X86_AVX2_COMPILED)

#include <algorithm>
#include <array>
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

// Accumulator chains per row of X for the per-row totals: two hide the FMA latency for one to
// three rows; from four rows on the rows themselves are enough chains (and 32 registers are not
// enough for 2 x 8 totals besides the sums).
template <int MB>
inline constexpr int kTotalChains = MB >= 4 ? 1 : 2;

template <class T, int Chains>
float horizontal_sum(const typename T::F (&v)[Chains]) {
  if constexpr (Chains == 1) {
    return T::reduce(v[0]);
  } else {
    return T::reduce(T::add(v[0], v[1]));
  }
}

// Walks rows [n_begin, n_end) of W, one after another, for a kernel K (StreamF32 / StreamI8
// below), which provides
//   K::Totals<MB>                 per-row accumulators,
//   K::start_row<MB>(...)         loads the row's parameters into scratch,
//   K::accumulate<MB>(...)        adds units [u_begin, u_end) of the row to its totals,
//   K::finish<MB>(...)            writes the row's MB outputs.
// (Walking K in blocks that keep X in L1, with tiles of rows waiting in between, was measured
// slower on Zen 4 at M = 8 than letting X stream from L2: 1.6 vs 1.0 ms int8, 6 vs 2.7 ms fp32.)
template <class Kernel, int MB>
struct StreamDriver {
  using Totals = typename Kernel::template Totals<MB>;

  template <class Prepared>
  static void rows(const nibble_gemm_operands& op, const Prepared& x, int64_t n_begin,
                   int64_t n_end, void* scratch) {
    for (int64_t row = n_begin; row < n_end; ++row) {
      Kernel::template start_row<MB>(op, x, row, scratch);
      Totals total;
      Kernel::accumulate(op, x, row, scratch, 0, x.units, total);
      Kernel::finish(op, x, row, scratch, total);
    }
  }
};

// ---- fp32 activations ------------------------------------------------------------------------

template <class T, int Bits, class ScaleT>
struct StreamF32 {
  using F = typename T::F;
  using I = typename T::I;
  using D = F32Decoder<T, Bits>;
  using U = typename D::U;
  static constexpr int kPlanes = D::kPlanes;
  // Table decoders (AVX-512, 4 and 2 bits) look up (q - z) * s directly: the chains run through
  // the whole row. Converting decoders produce (q - z) and fold s once per group.
  static constexpr bool kScaled = D::kTable;

  template <int MB>
  struct Totals {
    F v[MB][kTotalChains<MB>];
    Totals() {
      for (auto& row : v) {
        for (F& chain : row)
          chain = T::zero();
      }
    }
  };

  // Scratch: the row's scale[] and zero[] (parameter_stride floats each).
  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    return static_cast<std::size_t>(2 * parameter_stride<T>(op->n_groups)) * sizeof(float);
  }
  static float* scales(void* scratch) { return static_cast<float*>(scratch); }
  static float* zeros(const nibble_gemm_operands& op, void* scratch) {
    return scales(scratch) + parameter_stride<T>(op.n_groups);
  }

  template <int MB>
  static void start_row(const nibble_gemm_operands& op, const PreparedF32<T, Bits>&, int64_t row,
                        void* scratch) {
    load_row_parameters<T, Bits, ScaleT>(op, row, scales(scratch), zeros(op, scratch));
  }

  template <int MB>
  static void accumulate(const nibble_gemm_operands& op, const PreparedF32<T, Bits>& x, int64_t row,
                         void* scratch, int64_t u_begin, int64_t u_end, Totals<MB>& totals) {
    const float* scale = scales(scratch);
    const float* zero = zeros(op, scratch);
    constexpr int kTotals = kTotalChains<MB>;
    // Accumulator chains per X row to hide the FMA latency: four for one row, two for two;
    // from three rows on the rows are chains enough (and 32 registers are not more).
    constexpr int kChains = MB == 1 ? 4 : MB <= 2 ? 2 : 1;
    // The totals in locals (registers) for the loop; written back at the end.
    F total[MB][kTotals];
    for (int i = 0; i < MB; ++i) {
      for (int c = 0; c < kTotals; ++c)
        total[i][c] = totals.v[i][c];
    }
    const uint8_t* codes = op.qweight + row * op.packed_row_bytes;
    if (!x.split) {
      const int64_t units_per_group = op.group_size / U::kElements;
      F acc[MB][kChains];
      const auto clear = [&] {
        for (int i = 0; i < MB; ++i) {
          for (int c = 0; c < kChains; ++c)
            acc[i][c] = T::zero();
        }
      };
      clear();
      // The group is counted, not divided out of u per group: a 64-bit division costs as much as
      // the rest of a group's work when a group is one to four units (AVX2, 1 thread, M = 1,
      // 4096 x 4096: 4-bit group 32 3.5 -> 2.0 ms, 8-bit group 32 3.5 -> 2.2 ms).
      int64_t g = u_begin / units_per_group;
      for (int64_t u = u_begin; u < u_end; ++g) {
        const int64_t group_end = std::min(u_end, (g + 1) * units_per_group);
        const typename D::Group params = D::template group<kScaled>(zero[g], scale[g]);
        // Units in pairs, so that every accumulator index is a compile-time constant (a run-time
        // index would put the accumulators in memory).
        const auto unit = [&](auto parity, int64_t v) {
          prefetch(codes + v * U::kBytes + kPrefetchBytes);
          F w[kPlanes];
          D::template decode<kScaled>(T::load_bytes_as_i32(codes + v * U::kBytes), params, w);
          const float* xv = x.x + v * (MB * U::kElements);  // interleaved rows
          for (int i = 0; i < MB; ++i) {
            for (int p = 0; p < kPlanes; ++p) {
              F& a = acc[i][(decltype(parity)::value * kPlanes + p) % kChains];
              a = T::fma(w[p], T::load(xv + i * U::kElements + p * T::kLanes), a);
            }
          }
        };
        for (; u + 2 <= group_end; u += 2) {
          unit(std::integral_constant<int, 0>{}, u);
          unit(std::integral_constant<int, 1>{}, u + 1);
        }
        if (u < group_end) unit(std::integral_constant<int, 0>{}, u++);
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
            total[i][c % kTotals] = T::add(total[i][c % kTotals], acc[i][c]);
        }
      }
    } else {
      const auto unit = [&](auto parity, int64_t u) {
        prefetch(codes + u * U::kBytes + kPrefetchBytes);
        F w[kPlanes];
        D::template decode_lanes<false>(D::load_unit(codes, u, op.packed_row_bytes),
                                        D::lane_values(x.lanes, u, zero), T::zero(), w);
        const F lane_scale = D::lane_values(x.lanes, u, scale);
        const float* xu = x.x + u * (MB * U::kElements);  // interleaved rows
        for (int i = 0; i < MB; ++i) {
          F sum = T::mul(w[0], T::load(xu + i * U::kElements));
          for (int p = 1; p < kPlanes; ++p)
            sum = T::fma(w[p], T::load(xu + i * U::kElements + p * T::kLanes), sum);
          F& t = total[i][decltype(parity)::value % kTotals];
          t = T::fma(sum, lane_scale, t);
        }
      };
      int64_t u = u_begin;
      for (; u + 2 <= u_end; u += 2) {
        unit(std::integral_constant<int, 0>{}, u);
        unit(std::integral_constant<int, 1>{}, u + 1);
      }
      if (u < u_end) unit(std::integral_constant<int, 0>{}, u);
    }
    for (int i = 0; i < MB; ++i) {
      for (int c = 0; c < kTotals; ++c)
        totals.v[i][c] = total[i][c];
    }
  }

  template <int MB>
  static void finish(const nibble_gemm_operands& op, const PreparedF32<T, Bits>&, int64_t row,
                     void*, const Totals<MB>& totals) {
    const float bias = op.bias != nullptr ? op.bias[row] : 0.0f;
    for (int i = 0; i < MB; ++i)
      op.y[i * op.n + row] = horizontal_sum<T, kTotalChains<MB>>(totals.v[i]) + bias;
  }

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    const PreparedF32<T, Bits> x = PreparedF32<T, Bits>::view(*op);
    start_parameters<T, Bits>(*op, zeros(*op, scratch));
    with_rows<T::kStreamMaxM>(op->m, [&](auto mb) {
      StreamDriver<StreamF32, decltype(mb)::value>::rows(*op, x, n_begin, n_end, scratch);
    });
  }
};

// ---- int8 activations ------------------------------------------------------------------------

template <class T, int Bits, class ScaleT>
struct StreamI8 {
  using F = typename T::F;
  using I = typename T::I;
  using D = I8Decoder<T, Bits>;
  using U = typename D::U;
  static constexpr int kPlanes = D::kPlanes;

  template <int MB>
  struct Totals {
    F v[MB][kTotalChains<MB>];
    Totals() {
      for (auto& row : v) {
        for (F& chain : row)
          chain = T::zero();
      }
    }
  };

  // Scratch: the row's scale[] and zero[] (parameter_stride floats each), then per activation
  // block and X row the product s_w * s_x, [block][row] (block mode).
  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    const int64_t blocks = op->padded_k / op->x_block;
    const int64_t table =
        std::max(round_up(blocks, T::kLanes) * T::kStreamMaxM, round_up(op->n_groups, T::kLanes));
    return static_cast<std::size_t>(2 * parameter_stride<T>(op->n_groups) + table +
                                    round_up(blocks, T::kLanes) + 2 * T::kLanes) *
           sizeof(float);
  }
  static float* scales(void* scratch) { return static_cast<float*>(scratch); }
  static float* zeros(const nibble_gemm_operands& op, void* scratch) {
    return scales(scratch) + parameter_stride<T>(op.n_groups);
  }
  static float* products(const nibble_gemm_operands& op, void* scratch) {
    return zeros(op, scratch) + parameter_stride<T>(op.n_groups);
  }

  template <int MB>
  static void start_row(const nibble_gemm_operands& op, const PreparedI8<T, Bits>& x, int64_t row,
                        void* scratch) {
    float* scale = scales(scratch);
    load_row_parameters<T, Bits, ScaleT>(op, row, scale, zeros(op, scratch));
    if (x.split) return;
    // products[b][i] = s_w(b) * s_x(i, b); activation scales come [block][row], padded.
    float* product = products(op, scratch);
    const float* w_scale = scale;  // per activation block
    const int64_t blocks_per_group = op.group_size / op.x_block;
    if (blocks_per_group > 1) {
      float* block_scale = product + round_up(x.blocks, T::kLanes) * T::kStreamMaxM;
      for (int64_t b = 0, g = 0, next_group = blocks_per_group; b < x.blocks; ++b) {
        if (b == next_group) {
          ++g;
          next_group += blocks_per_group;
        }
        block_scale[b] = scale[g];
      }
      pad_parameters<T>(block_scale, x.blocks);
      w_scale = block_scale;
    }
    if constexpr (MB == 1) {
      for (int64_t b = 0; b < x.blocks; b += T::kLanes)
        T::store(product + b, T::mul(T::load(w_scale + b), T::load(x.scales + b)));
    } else {
      // Entry j of the [block][row] table is block j / MB: a vector of entries starting at
      // row r of block `first` takes its weight scales from w_scale[first + (r + lane) / MB].
      static constexpr auto kLaneBlocks = lane_blocks<MB>();
      for (int64_t j = 0, first = 0, r = 0; j < x.blocks * MB; j += T::kLanes) {
        const F s = T::permute(T::load_i(kLaneBlocks[static_cast<std::size_t>(r)].data()),
                               T::load(w_scale + first));
        T::store(product + j, T::mul(s, T::load(x.scales + j)));
        first += (r + T::kLanes) / MB;
        r = (r + T::kLanes) % MB;
      }
    }
  }

  // kLaneBlocks[r][lane] = (r + lane) / MB.
  template <int MB>
  static constexpr std::array<std::array<int32_t, T::kLanes>, MB> lane_blocks() {
    std::array<std::array<int32_t, T::kLanes>, MB> table{};
    for (int r = 0; r < MB; ++r) {
      for (int lane = 0; lane < T::kLanes; ++lane)
        table[static_cast<std::size_t>(r)][static_cast<std::size_t>(lane)] = (r + lane) / MB;
    }
    return table;
  }

  // sum[i] += the P plane dot products of one unit with X row i (rows interleaved at xu).
  template <int MB, int Plane = 0>
  static void dot_unit(I bytes, const int8_t* xu, I (&sum)[MB]) {
    if constexpr (Plane < kPlanes) {
      const I w = D::template plane<Plane>(bytes);
      for (int i = 0; i < MB; ++i) {
        sum[i] =
            T::template dot4<Bits>(sum[i], w, T::load_i(xu + i * U::kElements + Plane * U::kBytes));
      }
      dot_unit<MB, Plane + 1>(bytes, xu, sum);
    }
  }

  template <int MB>
  static void accumulate(const nibble_gemm_operands& op, const PreparedI8<T, Bits>& x, int64_t row,
                         void* scratch, int64_t u_begin, int64_t u_end, Totals<MB>& totals) {
    const float* scale = scales(scratch);
    constexpr int kTotals = kTotalChains<MB>;
    // The totals in locals (registers) for the loop; written back at the end.
    F total[MB][kTotals];
    for (int i = 0; i < MB; ++i) {
      for (int c = 0; c < kTotals; ++c)
        total[i][c] = totals.v[i][c];
    }
    const uint8_t* codes = op.qweight + row * op.packed_row_bytes;
    if (!x.split) {
      // Whole units per activation block: exact int32 sums over the block, scaled once by
      // s_w * s_x (activation scales come [block][row]).
      const int64_t units_per_block = op.x_block / U::kElements;
      const float* product = products(op, scratch);
      // Blocks in pairs (compile-time accumulator indices, two FMA chains).
      const auto block = [&](auto parity, int64_t b) {
        I sum[MB];
        for (int i = 0; i < MB; ++i)
          sum[i] = T::zero_i();
        int64_t u = b * units_per_block;
        do {
          prefetch(codes + u * U::kBytes + kPrefetchBytes);
          dot_unit<MB>(T::load_i(codes + u * U::kBytes), x.codes + u * (MB * U::kElements), sum);
        } while (++u < (b + 1) * units_per_block);
        for (int i = 0; i < MB; ++i) {
          F& t = total[i][decltype(parity)::value % kTotals];
          t = T::fma(T::to_float(sum[i]), T::set1(product[b * MB + i]), t);
        }
      };
      int64_t b = u_begin / units_per_block;
      const int64_t b_end = u_end / units_per_block;
      for (; b + 2 <= b_end; b += 2) {
        block(std::integral_constant<int, 0>{}, b);
        block(std::integral_constant<int, 1>{}, b + 1);
      }
      if (b < b_end) block(std::integral_constant<int, 0>{}, b);
    } else {
      // Blocks shorter than a unit (or not dividing it): each lane scaled by its own
      // weight scale * activation scale.
      const auto unit = [&](auto parity, int64_t u) {
        prefetch(codes + u * U::kBytes + kPrefetchBytes);
        I sum[MB];
        for (int i = 0; i < MB; ++i)
          sum[i] = T::zero_i();
        dot_unit<MB>(D::load_unit(codes, u, op.packed_row_bytes), x.codes + u * (MB * U::kElements),
                     sum);
        const F w_scale = F32Decoder<T, Bits>::lane_values(x.lanes, u, scale);
        for (int i = 0; i < MB; ++i) {
          const F lane_scale = T::mul(w_scale, T::load(x.lane_scales + (u * MB + i) * T::kLanes));
          F& t = total[i][decltype(parity)::value % kTotals];
          t = T::fma(T::to_float(sum[i]), lane_scale, t);
        }
      };
      int64_t u = u_begin;
      for (; u + 2 <= u_end; u += 2) {
        unit(std::integral_constant<int, 0>{}, u);
        unit(std::integral_constant<int, 1>{}, u + 1);
      }
      if (u < u_end) unit(std::integral_constant<int, 0>{}, u);
    }
    for (int i = 0; i < MB; ++i) {
      for (int c = 0; c < kTotals; ++c)
        totals.v[i][c] = total[i][c];
    }
  }

  // Zero-point term: sum over groups of s * z * (sum over the group of s_x * c).
  template <int MB>
  static void finish(const nibble_gemm_operands& op, const PreparedI8<T, Bits>& x, int64_t row,
                     void* scratch, const Totals<MB>& totals) {
    const float* scale = scales(scratch);
    float* zero = zeros(op, scratch);
    // s * z per group, once for all rows of X (into the product table, no longer needed).
    float* scaled_zero = products(op, scratch);
    for (int64_t g = 0; g < x.group_stride; g += T::kLanes)
      T::store(scaled_zero + g, T::mul(T::load(scale + g), T::load(zero + g)));
    const float bias = op.bias != nullptr ? op.bias[row] : 0.0f;
    for (int i = 0; i < MB; ++i) {
      const float* group_sums = x.group_sums + i * x.group_stride;
      F correction = T::zero();
      for (int64_t g = 0; g < x.group_stride; g += T::kLanes)
        correction = T::fma(T::load(scaled_zero + g), T::load(group_sums + g), correction);
      F sum = totals.v[i][0];
      for (int c = 1; c < kTotalChains<MB>; ++c)
        sum = T::add(sum, totals.v[i][c]);
      op.y[i * op.n + row] = T::reduce(T::sub(sum, correction)) + bias;
    }
  }

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    const PreparedI8<T, Bits> x = PreparedI8<T, Bits>::view(*op);
    start_parameters<T, Bits>(*op, zeros(*op, scratch));
    with_rows<T::kStreamMaxM>(op->m, [&](auto mb) {
      StreamDriver<StreamI8, decltype(mb)::value>::rows(*op, x, n_begin, n_end, scratch);
    });
  }
};

}  // namespace nibble::detail::cpu

#endif  // AVX2
