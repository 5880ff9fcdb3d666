// Batch kernels (prefill: M above T's stream limit): register-blocked GEMM over panels of decoded
// weights, BLIS style. For each tile of NR = 2 vectors' worth of W rows and each block of K:
//   1. decode the tile's codes once into a panel in [position][NR] order (the transpose of W, in
//      the prepared decode order of x86_layout.hpp), with a register transpose of lanes x lanes;
//   2. for every MR rows of X: an MR x NR block of Y accumulates in registers while one position
//      at a time broadcasts MR activations against the NR panel values (MR * 2 FMAs or dot
//      products per position, 2 + MR loads).
// fp32: the panel holds the dequantized weights (q - z) * s, exactly as the reference computes
//       them; Y accumulates in float.
// int8: the panel holds u8 codes, 4 consecutive positions per int32 lane (vpdpbusd's shape); X
//       broadcasts 4 int8 codes. Sums are exact int32 over each run of positions that share an
//       activation block, then scaled per lane (each lane is a W row with its own scale); the
//       zero-point term is subtracted per row at the end.
// Rows of X are processed in blocks of kRowBlock so the tile's partial Y fits a small buffer.
#pragma once

#include "nibble/kernels/cpu/detail/x86_stream_kernels.hpp"

#if defined(NIBBLE_X86_AVX2_COMPILED)

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "nibble/kernels/cpu/kernel_abi.hpp"

namespace nibble::detail::cpu {

inline constexpr int64_t kRowBlock = 192;  // rows of X per pass over a tile's panels

// ---- fp32 activations ------------------------------------------------------------------------

template <class T, int Bits, class ScaleT>
struct PanelF32 {
  using F = typename T::F;
  using D = F32Decoder<T, Bits>;
  using U = typename D::U;
  static constexpr int L = T::kLanes;
  static constexpr int NR = 2 * L;
  static constexpr int MR = T::kPanelRowsF32;
  static constexpr int kPlanes = D::kPlanes;
  // Positions per K block: the panel (KC x NR floats) stays in L1 / L2.
  static constexpr int64_t KC = 256;
  static_assert(KC % U::kElements == 0, "K blocks hold whole units");

  // Scratch: per tile row its parameters; the panel; the tile's Y for kRowBlock rows.
  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    const int64_t stride = parameter_stride<T>(op->n_groups);
    return static_cast<std::size_t>(NR * 2 * stride + KC * NR + kRowBlock * NR) * sizeof(float);
  }

  // Panel [KC][NR] for positions [k0, k0 + kc) of tile rows [n0, n0 + rows).
  static void build_panel(const nibble_gemm_operands& op, const PreparedF32<T, Bits>& x,
                          const float* params, int64_t n0, int64_t rows, int64_t k0, int64_t kc,
                          float* panel) {
    const int64_t stride = parameter_stride<T>(op.n_groups);
    const int64_t units_per_group = x.split ? 0 : op.group_size / U::kElements;
    for (int64_t u = k0 / U::kElements; u < (k0 + kc) / U::kElements; ++u) {
      for (int half = 0; half < 2; ++half) {
        F w[kPlanes][L];
        for (int r = 0; r < L; ++r) {
          const int64_t tile_row = half * L + r;
          F decoded[kPlanes];
          if (tile_row >= rows) {
            for (int p = 0; p < kPlanes; ++p)
              decoded[p] = T::zero();
          } else {
            const float* scale = params + tile_row * 2 * stride;
            const float* zero = scale + stride;
            const uint8_t* codes = op.qweight + (n0 + tile_row) * op.packed_row_bytes;
            if (!x.split) {
              const int64_t g = u / units_per_group;
              D::template decode<true>(T::load_bytes_as_i32(codes + u * U::kBytes),
                                       D::template group<true>(zero[g], scale[g]), decoded);
            } else {
              D::template decode_lanes<true>(D::load_unit(codes, u, op.packed_row_bytes),
                                             D::lane_values(x.lanes, u, zero),
                                             D::lane_values(x.lanes, u, scale), decoded);
            }
          }
          for (int p = 0; p < kPlanes; ++p)
            w[p][r] = decoded[p];
        }
        for (int p = 0; p < kPlanes; ++p) {
          T::transpose(w[p]);  // w[p][j] = position u*UE + p*L + j of the L rows
          const int64_t position = u * U::kElements + p * L - k0;
          for (int j = 0; j < L; ++j)
            T::store(panel + (position + j) * NR + half * L, w[p][j]);
        }
      }
    }
  }

  // C[i][0 .. NR) (+)= sum over kc positions of X[i] * panel, for MB rows of X.
  template <int MB>
  static void micro(const float* a, int64_t a_stride, const float* panel, int64_t kc, float* c,
                    bool first) {
    F acc[MB][2];
    for (int i = 0; i < MB; ++i)
      acc[i][0] = acc[i][1] = T::zero();
    for (int64_t t = 0; t < kc; ++t) {
      const F b0 = T::load(panel + t * NR);
      const F b1 = T::load(panel + t * NR + L);
      for (int i = 0; i < MB; ++i) {
        const F x = T::set1(a[i * a_stride + t]);
        acc[i][0] = T::fma(x, b0, acc[i][0]);
        acc[i][1] = T::fma(x, b1, acc[i][1]);
      }
    }
    for (int i = 0; i < MB; ++i) {
      if (first) {
        T::store(c + i * NR, acc[i][0]);
        T::store(c + i * NR + L, acc[i][1]);
      } else {
        T::store(c + i * NR, T::add(T::load(c + i * NR), acc[i][0]));
        T::store(c + i * NR + L, T::add(T::load(c + i * NR + L), acc[i][1]));
      }
    }
  }

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    const PreparedF32<T, Bits> x = PreparedF32<T, Bits>::view(*op);
    const int64_t stride = parameter_stride<T>(op->n_groups);
    float* params = static_cast<float*>(scratch);
    float* panel = params + NR * 2 * stride;
    float* tile_y = panel + KC * NR;
    for (int64_t r = 0; r < NR; ++r)
      start_parameters<T, Bits>(*op, params + r * 2 * stride + stride);
    for (int64_t n0 = n_begin; n0 < n_end; n0 += NR) {
      const int64_t rows = std::min<int64_t>(NR, n_end - n0);
      for (int64_t r = 0; r < rows; ++r) {
        float* scale = params + r * 2 * stride;
        load_row_parameters<T, Bits, ScaleT>(*op, n0 + r, scale, scale + stride);
      }
      for (int64_t m0 = 0; m0 < op->m; m0 += kRowBlock) {
        const int64_t m_rows = std::min(kRowBlock, op->m - m0);
        for (int64_t k0 = 0; k0 < x.row_length; k0 += KC) {
          const int64_t kc = std::min(KC, x.row_length - k0);
          build_panel(*op, x, params, n0, rows, k0, kc, panel);
          for (int64_t i = 0; i < m_rows; i += MR) {
            const float* a = x.x + (m0 + i) * x.row_length + k0;
            with_rows<MR>(std::min<int64_t>(MR, m_rows - i), [&](auto mb) {
              micro<decltype(mb)::value>(a, x.row_length, panel, kc, tile_y + i * NR, k0 == 0);
            });
          }
        }
        for (int64_t i = 0; i < m_rows; ++i) {
          for (int64_t r = 0; r < rows; ++r) {
            const float bias = op->bias != nullptr ? op->bias[n0 + r] : 0.0f;
            op->y[(m0 + i) * op->n + n0 + r] = tile_y[i * NR + r] + bias;
          }
        }
      }
    }
  }
};

// ---- int8 activations ------------------------------------------------------------------------

// Runs of quads (4 consecutive decode positions) that share one activation block, in position
// order, never crossing a unit; and K blocks of whole runs. Shared by all rows of W.
struct QuadRuns {
  std::vector<int32_t> begin;  // first quad of run r; runs are contiguous: run r ends at begin[r+1]
  std::vector<int32_t> block;  // activation block of run r
  std::vector<int32_t> k_block_runs;  // first run of each K block, then the number of runs
};

template <class T, int Bits>
QuadRuns make_quad_runs(const nibble_gemm_operands& op, int64_t units, int64_t max_quads) {
  using U = I8Unit<T, Bits>;
  constexpr int64_t kQuadsPerUnit = U::kElements / 4;
  QuadRuns runs;
  const int64_t blocks = op.padded_k / op.x_block;
  for (int64_t u = 0; u < units; ++u) {
    for (int64_t q = 0; q < kQuadsPerUnit; ++q) {
      const int64_t element = u * U::kElements + U::element_of(4 * q);
      const auto block = static_cast<int32_t>(std::min(element / op.x_block, blocks - 1));
      if (q == 0 || runs.block.back() != block) {
        runs.begin.push_back(static_cast<int32_t>(u * kQuadsPerUnit + q));
        runs.block.push_back(block);
      }
    }
  }
  runs.begin.push_back(static_cast<int32_t>(units * kQuadsPerUnit));
  // K blocks: whole units, whole runs, about max_quads quads each.
  const auto run_count = static_cast<int32_t>(runs.block.size());
  int32_t first = 0;
  runs.k_block_runs.push_back(0);
  for (int32_t r = 0; r < run_count; ++r) {
    const int32_t end = runs.begin[static_cast<std::size_t>(r) + 1];
    const bool unit_end = end % kQuadsPerUnit == 0;
    if (unit_end &&
        (end - runs.begin[static_cast<std::size_t>(first)] >= max_quads || r + 1 == run_count)) {
      runs.k_block_runs.push_back(r + 1);
      first = r + 1;
    }
  }
  return runs;
}

template <class T, int Bits, class ScaleT>
struct PanelI8 {
  using F = typename T::F;
  using I = typename T::I;
  using D = I8Decoder<T, Bits>;
  using U = typename D::U;
  static constexpr int L = T::kLanes;
  static constexpr int NR = 2 * L;
  static constexpr int MR = T::kPanelRowsI8;
  static constexpr int kPlanes = D::kPlanes;
  static constexpr int64_t kQuadsPerUnit = U::kElements / 4;
  // Quads per K block, about: the panel (KQ x NR int32) stays in L1.
  static constexpr int64_t KQ = 128;

  // Scratch: tile parameters as [group][NR] panels (scale, scale * zero); tile rows' parameter
  // arrays; the code panel (one K block, rounded up to whole units); the tile's Y.
  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    const int64_t stride = parameter_stride<T>(op->n_groups);
    const int64_t quads = round_up(KQ, kQuadsPerUnit) + kQuadsPerUnit;
    return static_cast<std::size_t>(2 * op->n_groups * NR + 2 * stride + quads * NR +
                                    kRowBlock * NR) *
           sizeof(float);
  }

  // Codes of tile rows [n0, n0 + rows) for units [u_begin, u_end) as [quad][NR] int32.
  static void build_panel(const nibble_gemm_operands& op, int64_t n0, int64_t rows, int64_t u_begin,
                          int64_t u_end, int32_t* panel) {
    for (int64_t u = u_begin; u < u_end; ++u) {
      for (int half = 0; half < 2; ++half) {
        F planes[kPlanes][L];
        for (int r = 0; r < L; ++r) {
          const int64_t tile_row = half * L + r;
          if (tile_row >= rows) {
            for (int p = 0; p < kPlanes; ++p)
              planes[p][r] = T::zero();
            continue;
          }
          const I bytes = D::load_unit(op.qweight + (n0 + tile_row) * op.packed_row_bytes, u,
                                       op.packed_row_bytes);
          unpack_planes(bytes, planes, r);
        }
        for (int p = 0; p < kPlanes; ++p) {
          T::transpose(planes[p]);  // planes[p][j] = quad p*L + j of unit u, lanes = rows
          const int64_t quad = (u - u_begin) * kQuadsPerUnit + p * L;
          for (int j = 0; j < L; ++j)
            T::store_i(panel + (quad + j) * NR + half * L, T::cast_i(planes[p][j]));
        }
      }
    }
  }

  template <int Plane = 0>
  static void unpack_planes(I bytes, F (&planes)[kPlanes][L], int r) {
    if constexpr (Plane < kPlanes) {
      planes[Plane][r] = T::cast_f(D::template plane<Plane>(bytes));
      unpack_planes<Plane + 1>(bytes, planes, r);
    }
  }

  // C[i][0 .. NR) (+)= the runs [run_begin, run_end) of X row block a against the panel.
  template <int MB>
  static void micro(const PreparedI8<T, Bits>& x, const QuadRuns& runs, int64_t run_begin,
                    int64_t run_end, int64_t m0, const int32_t* panel, int64_t panel_quad0,
                    const float* group_scales, int64_t blocks_per_group, float* c, bool first) {
    F acc[MB][2];
    for (int i = 0; i < MB; ++i)
      acc[i][0] = acc[i][1] = T::zero();
    for (int64_t r = run_begin; r < run_end; ++r) {
      const int64_t q_begin = runs.begin[static_cast<std::size_t>(r)];
      const int64_t q_end = runs.begin[static_cast<std::size_t>(r) + 1];
      const int64_t block = runs.block[static_cast<std::size_t>(r)];
      I sum[MB][2];
      for (int i = 0; i < MB; ++i)
        sum[i][0] = sum[i][1] = T::zero_i();
      for (int64_t q = q_begin; q < q_end; ++q) {
        const int32_t* b = panel + (q - panel_quad0) * NR;
        const I b0 = T::load_i(b);
        const I b1 = T::load_i(b + L);
        for (int i = 0; i < MB; ++i) {
          const I xq = T::broadcast_i32(x.codes + (m0 + i) * x.row_length + 4 * q);
          sum[i][0] = T::template dot4<Bits>(sum[i][0], b0, xq);
          sum[i][1] = T::template dot4<Bits>(sum[i][1], b1, xq);
        }
      }
      const float* w_scale = group_scales + (block / blocks_per_group) * NR;
      const F s0 = T::load(w_scale);
      const F s1 = T::load(w_scale + L);
      for (int i = 0; i < MB; ++i) {
        const F x_scale = T::set1(x.scales[(m0 + i) * x.block_stride + block]);
        acc[i][0] = T::fma(T::to_float(sum[i][0]), T::mul(s0, x_scale), acc[i][0]);
        acc[i][1] = T::fma(T::to_float(sum[i][1]), T::mul(s1, x_scale), acc[i][1]);
      }
    }
    for (int i = 0; i < MB; ++i) {
      if (first) {
        T::store(c + i * NR, acc[i][0]);
        T::store(c + i * NR + L, acc[i][1]);
      } else {
        T::store(c + i * NR, T::add(T::load(c + i * NR), acc[i][0]));
        T::store(c + i * NR + L, T::add(T::load(c + i * NR + L), acc[i][1]));
      }
    }
  }

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    const PreparedI8<T, Bits> x = PreparedI8<T, Bits>::view(*op);
    // The run list depends only on the layout; building it per call and thread is cheap next to
    // a batch GEMM (one entry per run of a row).
    const QuadRuns runs = make_quad_runs<T, Bits>(*op, x.units, KQ);
    const int64_t stride = parameter_stride<T>(op->n_groups);
    const int64_t blocks_per_group = op->group_size / op->x_block;
    float* group_scales = static_cast<float*>(scratch);     // [n_groups][NR]
    float* group_zeros = group_scales + op->n_groups * NR;  // [n_groups][NR]: scale * zero
    float* row_scale = group_zeros + op->n_groups * NR;
    float* row_zero = row_scale + stride;
    auto* panel = reinterpret_cast<int32_t*>(row_zero + stride);
    const int64_t panel_quads = round_up(KQ, kQuadsPerUnit) + kQuadsPerUnit;
    float* tile_y = reinterpret_cast<float*>(panel + panel_quads * NR);
    const std::size_t k_blocks = runs.k_block_runs.size() - 1;
    start_parameters<T, Bits>(*op, row_zero);
    for (int64_t n0 = n_begin; n0 < n_end; n0 += NR) {
      const int64_t rows = std::min<int64_t>(NR, n_end - n0);
      for (int64_t r = 0; r < NR; ++r) {
        if (r < rows) load_row_parameters<T, Bits, ScaleT>(*op, n0 + r, row_scale, row_zero);
        for (int64_t g = 0; g < op->n_groups; ++g) {
          group_scales[g * NR + r] = r < rows ? row_scale[g] : 0.0f;
          group_zeros[g * NR + r] = r < rows ? row_scale[g] * row_zero[g] : 0.0f;
        }
      }
      for (int64_t m0 = 0; m0 < op->m; m0 += kRowBlock) {
        const int64_t m_rows = std::min(kRowBlock, op->m - m0);
        for (std::size_t kb = 0; kb < k_blocks; ++kb) {
          const int64_t run_begin = runs.k_block_runs[kb];
          const int64_t run_end = runs.k_block_runs[kb + 1];
          const int64_t quad0 = runs.begin[static_cast<std::size_t>(run_begin)];
          const int64_t quad_end = runs.begin[static_cast<std::size_t>(run_end)];
          build_panel(*op, n0, rows, quad0 / kQuadsPerUnit, quad_end / kQuadsPerUnit, panel);
          for (int64_t i = 0; i < m_rows; i += MR) {
            with_rows<MR>(std::min<int64_t>(MR, m_rows - i), [&](auto mb) {
              micro<decltype(mb)::value>(x, runs, run_begin, run_end, m0 + i, panel, quad0,
                                         group_scales, blocks_per_group, tile_y + i * NR, kb == 0);
            });
          }
        }
        // Zero-point term and bias, then the valid columns to Y.
        for (int64_t i = 0; i < m_rows; ++i) {
          const float* group_sums = x.group_sums + (m0 + i) * x.group_stride;
          F c0 = T::load(tile_y + i * NR);
          F c1 = T::load(tile_y + i * NR + L);
          for (int64_t g = 0; g < op->n_groups; ++g) {
            const F sums = T::set1(-group_sums[g]);
            c0 = T::fma(T::load(group_zeros + g * NR), sums, c0);
            c1 = T::fma(T::load(group_zeros + g * NR + L), sums, c1);
          }
          T::store(tile_y + i * NR, c0);
          T::store(tile_y + i * NR + L, c1);
          for (int64_t r = 0; r < rows; ++r) {
            const float bias = op->bias != nullptr ? op->bias[n0 + r] : 0.0f;
            op->y[(m0 + i) * op->n + n0 + r] = tile_y[i * NR + r] + bias;
          }
        }
      }
    }
  }
};

}  // namespace nibble::detail::cpu

#endif  // AVX2
