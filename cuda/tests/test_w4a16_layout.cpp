// Host tests of the W4A16 tile layout (no GPU): the repack, then an emulation of what each lane
// of the kernel reads, gives back the canonical weights; the shared-memory swizzle feeds ldmatrix
// the A fragments the PTX ISA defines; the MoE row mapping and the launch plan stay in bounds.
//
// The fragment layouts used as truth here are written from the PTX ISA ("Matrix Fragments for
// mma.m16n8k16", "ldmatrix"), independently of w4a16_layout.hpp's index functions.
#include "nibble/cuda/w4a16_layout.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>
#include <vector>

#include "nibble/kernels/cpu/reference.hpp"
#include "support/quant_fixtures.hpp"

namespace nibble::cuda::w4a16 {
namespace {

using testing::expect_error;
using testing::random_tensor;

// PTX: the B fragment (16 x 8, k x n) of lane l: register r (0, 1), half h (0, 1) holds
// B[k = 2 (l % 4) + 8 r + h][n = l / 4].
int b_fragment_k(int lane, int reg, int half) {
  return 2 * (lane % 4) + 8 * reg + half;
}
int b_fragment_n(int lane) {
  return lane / 4;
}
// PTX: the A fragment (16 x 16, m x k) of lane l: register r (0..3), half h holds
// A[m = l / 4 + 8 (r % 2)][k = 2 (l % 4) + 8 (r / 2) + h].
int a_fragment_m(int lane, int reg) {
  return lane / 4 + 8 * (reg % 2);
}
int a_fragment_k(int lane, int reg, int half) {
  return 2 * (lane % 4) + 8 * (reg / 2) + half;
}

struct LayoutCase {
  int64_t experts;
  int64_t n;
  int64_t k;
  int64_t group_size;  // kPerChannel for one group per row
  bool symmetric;
};

std::vector<LayoutCase> layout_cases() {
  return {
      {1, 64, 128, 32, true},  {1, 64, 128, 32, false},           {1, 128, 256, 64, false},
      {1, 64, 384, 128, true}, {1, 192, 256, kPerChannel, false}, {1, 64, 256, 16, false},
      {1, 64, 512, 256, true}, {3, 64, 256, 128, false},          {2, 128, 128, kPerChannel, true},
  };
}

// Canonical [experts, N, K] (or [N, K]) weights with random codes, scales and zero points.
template <class ScaleT>
struct CanonicalWeights {
  QuantTensor<ScaleT> storage;
  QuantTensorView<ScaleT> view;
};

template <class ScaleT>
CanonicalWeights<ScaleT> canonical(const LayoutCase& c, uint32_t seed) {
  QuantTensor<ScaleT> storage = random_tensor<ScaleT>(
      c.experts * c.n, c.k, testing::int4_config(c.group_size, c.symmetric), seed);
  const QuantTensorView<ScaleT> view =
      testing::reshaped(storage, c.experts == 1 ? Shape{c.n, c.k} : Shape{c.experts, c.n, c.k});
  return {std::move(storage), view};
}

// Every lane of every warp slab, as the kernel reads it: the 16 bytes at slab * 512 + 16 lane,
// four words for four k16 tiles, each decoded with the device's magic-number steps. The value
// of register r, half h of the n8 tile `tile` is then, by the PTX B layout, the weight at
// n = n0 + 8 tile + lane / 4, k = k0 + 2 (lane % 4) + 8 r + h.
template <class T, class ScaleT>
void expect_tile_reads_give_canonical_codes(const LayoutCase& c) {
  SCOPED_TRACE(::testing::Message() << "experts " << c.experts << " N " << c.n << " K " << c.k
                                    << " G " << c.group_size << (c.symmetric ? " sym" : " asym"));
  const CanonicalWeights<ScaleT> w = canonical<ScaleT>(c, 7u + static_cast<uint32_t>(c.k));
  const PackedWeights<T> packed = repack<T>(w.view);
  ASSERT_EQ(packed.experts, c.experts);
  ASSERT_EQ(packed.words.size(), static_cast<std::size_t>(c.experts * c.n * c.k / 8));
  std::vector<int> seen(static_cast<std::size_t>(c.experts * c.n * c.k), 0);
  for (int64_t expert = 0; expert < c.experts; ++expert) {
    const uint32_t* words = packed.words.data() + expert * packed.words_per_expert();
    for (int64_t n_slab = 0; n_slab < c.n / 16; ++n_slab) {
      for (int64_t k_slab = 0; k_slab < c.k / 64; ++k_slab) {
        const auto* slab_bytes =
            reinterpret_cast<const unsigned char*>(words) + (n_slab * (c.k / 64) + k_slab) * 512;
        for (int lane = 0; lane < 32; ++lane) {
          uint32_t lane_words[4];
          std::memcpy(lane_words, slab_bytes + 16 * lane, 16);
          for (int tile_k = 0; tile_k < 4; ++tile_k) {
            int value[8];
            emulate_decode_word<T>(lane_words[tile_k], value);
            for (int pair = 0; pair < 4; ++pair) {
              for (int half = 0; half < 2; ++half) {
                const int64_t n = n_slab * 16 + 8 * (pair / 2) + b_fragment_n(lane);
                const int64_t k = k_slab * 64 + tile_k * 16 + b_fragment_k(lane, pair % 2, half);
                const int64_t row = expert * c.n + n;
                ASSERT_EQ(value[2 * pair + half], w.view.code(row, k))
                    << "expert " << expert << " n " << n << " k " << k << " lane " << lane;
                ++seen[static_cast<std::size_t>(row * c.k + k)];
              }
            }
          }
        }
      }
    }
  }
  for (int count : seen)
    ASSERT_EQ(count, 1);  // every weight read exactly once
  // Scales and zero points: [experts][K / G][N], converted to T once.
  const int64_t n_groups = w.view.layout().n_groups;
  ASSERT_EQ(packed.n_groups, n_groups);
  ASSERT_EQ(packed.symmetric(), c.symmetric);
  for (int64_t row = 0; row < c.experts * c.n; ++row) {
    for (int64_t group = 0; group < n_groups; ++group) {
      const auto at = static_cast<std::size_t>(((row / c.n) * n_groups + group) * c.n + row % c.n);
      EXPECT_EQ(packed.scales[at].bits, from_float<T>(w.view.scale(row, group)).bits);
      if (!c.symmetric) {
        EXPECT_EQ(to_float(packed.zeros[at]), static_cast<float>(w.view.zero_point(row, group)));
      }
    }
  }
}

TEST(W4A16Layout, TileReadsGiveCanonicalCodesFp16) {
  for (const LayoutCase& c : layout_cases())
    expect_tile_reads_give_canonical_codes<fp16, float>(c);
}
TEST(W4A16Layout, TileReadsGiveCanonicalCodesBf16) {
  for (const LayoutCase& c : layout_cases())
    expect_tile_reads_give_canonical_codes<bf16, float>(c);
}
TEST(W4A16Layout, TileReadsGiveCanonicalCodesFromFp16Scales) {
  for (const LayoutCase& c : layout_cases())
    expect_tile_reads_give_canonical_codes<fp16, fp16>(c);
}

// The magic-number decode on every possible word pattern of one nibble position at a time.
TEST(W4A16Layout, DecodeCoversEveryNibbleValue) {
  for (int nibble = 0; nibble < 8; ++nibble) {
    for (uint32_t v = 0; v < 16; ++v) {
      // Fill the other nibbles with 15 - v so that masking mistakes show.
      uint32_t word = 0;
      for (int other = 0; other < 8; ++other) {
        word |= (other == nibble ? v : 15u - v) << (4 * other);
      }
      int fp16_values[8];
      int bf16_values[8];
      emulate_decode_word<fp16>(word, fp16_values);
      emulate_decode_word<bf16>(word, bf16_values);
      // Register p's low half is nibble p, its high half nibble p + 4.
      const int slot = nibble < 4 ? 2 * nibble : 2 * (nibble - 4) + 1;
      for (int i = 0; i < 8; ++i) {
        const int expected = i == slot ? static_cast<int>(v) : 15 - static_cast<int>(v);
        EXPECT_EQ(fp16_values[i], expected) << "nibble " << nibble << " v " << v << " slot " << i;
        EXPECT_EQ(bf16_values[i], expected) << "nibble " << nibble << " v " << v << " slot " << i;
      }
    }
  }
}

// The weight the kernel multiplies by is the dequantized weight rounded to T. From fp16 scales:
// fp16 rounds once (half an ulp: relative 2^-11, or 2^-25 absolute among subnormals); bf16 rounds
// the scale to bf16 and then the product (2^-9 each, 2^-7 covers both).
template <class T>
void expect_kernel_weight_within_rounding(double relative, double absolute) {
  const LayoutCase c{2, 64, 256, 64, false};
  const CanonicalWeights<fp16> w = canonical<fp16>(c, 11u);
  const PackedWeights<T> packed = repack<T>(w.view);
  std::vector<float> dequantized(static_cast<std::size_t>(c.experts * c.n * c.k));
  dequantize_ref(w.view, TensorView<float>(dequantized.data(), Shape{c.experts * c.n, c.k}));
  for (int64_t row = 0; row < c.experts * c.n; ++row) {
    for (int64_t k = 0; k < c.k; ++k) {
      const double exact = dequantized[static_cast<std::size_t>(row * c.k + k)];
      const double kernel = kernel_weight(packed, row / c.n, row % c.n, k);
      ASSERT_LE(std::abs(kernel - exact), relative * std::abs(exact) + absolute)
          << "row " << row << " k " << k;
    }
  }
}
TEST(W4A16Layout, KernelWeightIsTheDequantizedWeightRoundedOnce) {
  expect_kernel_weight_within_rounding<fp16>(std::ldexp(1.0, -11), std::ldexp(1.0, -25));
  expect_kernel_weight_within_rounding<bf16>(std::ldexp(1.0, -7), 0.0);
}

// Shared memory X: rows written chunk by chunk where the kernel's cp.async puts them, read back
// by an emulated ldmatrix.x4 at the addresses the kernel gives it. PTX ldmatrix: lanes 8i..8i+7
// give the addresses of rows 0..7 of matrix i; lane l receives, in register i, elements
// (row l / 4, columns 2 (l % 4), + 1) of matrix i. The registers must be the PTX A fragment.
TEST(W4A16Layout, SwizzledXFeedsLdmatrixTheAFragment) {
  constexpr int kRows = 64;
  std::vector<uint16_t> x(static_cast<std::size_t>(kRows * kBlockK));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = static_cast<uint16_t>(i);  // unique values
  std::vector<unsigned char> shared(static_cast<std::size_t>(Stage::x_bytes(kMaxMTiles)), 0);
  std::set<int> written;
  for (int row = 0; row < kRows; ++row) {
    for (int chunk = 0; chunk < kXChunksPerRow; ++chunk) {
      const int offset = x_chunk_offset(row, chunk);
      ASSERT_TRUE(written.insert(offset).second) << "two chunks at one address";
      ASSERT_LE(offset + 16, static_cast<int>(shared.size()));
      std::memcpy(shared.data() + offset, x.data() + row * kBlockK + chunk * 8, 16);
    }
  }
  for (int m0 = 0; m0 < kRows; m0 += 16) {
    for (int k = 0; k < kBlockK; k += 16) {
      uint16_t matrix[4][8][8];
      for (int i = 0; i < 4; ++i) {
        std::set<int> bank_groups;
        for (int r = 0; r < 8; ++r) {
          const int offset = a_ldmatrix_offset(8 * i + r, m0, k);
          ASSERT_EQ(offset % 16, 0);
          std::memcpy(matrix[i][r], shared.data() + offset, 16);
          bank_groups.insert((offset / 16) % 8);  // 16 bytes = 4 of the 32 four-byte banks
        }
        EXPECT_EQ(bank_groups.size(), 8u) << "ldmatrix phase " << i << " has bank conflicts";
      }
      for (int lane = 0; lane < 32; ++lane) {
        for (int reg = 0; reg < 4; ++reg) {
          for (int half = 0; half < 2; ++half) {
            const uint16_t got = matrix[reg][lane / 4][2 * (lane % 4) + half];
            const int m = m0 + a_fragment_m(lane, reg);
            const int kk = k + a_fragment_k(lane, reg, half);
            ASSERT_EQ(got, x[static_cast<std::size_t>(m * kBlockK + kk)])
                << "m0 " << m0 << " k " << k << " lane " << lane << " reg " << reg;
          }
        }
      }
    }
  }
}

// PTX: C (16 x 8, fp32) of lane l: register r holds C[l / 4 + 8 (r / 2)][2 (l % 4) + r % 2].
TEST(W4A16Layout, OutputFragmentCoversTheTileOnce) {
  std::set<int> cells;
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < 4; ++reg) {
      EXPECT_EQ(c_fragment_row(lane, reg), lane / 4 + 8 * (reg / 2));
      EXPECT_EQ(c_fragment_col(lane, reg), 2 * (lane % 4) + reg % 2);
      cells.insert(c_fragment_row(lane, reg) * 8 + c_fragment_col(lane, reg));
    }
  }
  EXPECT_EQ(cells.size(), 128u);
}

// Emulates a whole warp's work on one n16 x k16 weight tile and a 16-row A tile through the
// layout functions (decode for B, swizzle + ldmatrix for A, the C mapping for the result) and
// the PTX mma semantics, and compares with X * W^T computed directly.
TEST(W4A16Layout, EmulatedWarpTileEqualsDirectProduct) {
  const LayoutCase c{1, 64, 128, 32, false};
  const CanonicalWeights<float> w = canonical<float>(c, 5u);
  const PackedWeights<fp16> packed = repack<fp16>(w.view);
  std::vector<uint16_t> x(static_cast<std::size_t>(16 * kBlockK));
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = from_float<fp16>(static_cast<float>(static_cast<int>(i % 13) - 6) / 8.0f).bits;
  }
  std::vector<unsigned char> shared(static_cast<std::size_t>(Stage::x_bytes(1)));
  for (int row = 0; row < 16; ++row) {
    for (int chunk = 0; chunk < kXChunksPerRow; ++chunk) {
      std::memcpy(shared.data() + x_chunk_offset(row, chunk), x.data() + row * kBlockK + chunk * 8,
                  16);
    }
  }
  const auto x_value = [&](int m, int k) {
    return static_cast<double>(
        to_float(fp16::from_bits(x[static_cast<std::size_t>(m * kBlockK + k)])));
  };
  for (int n_slab = 0; n_slab < c.n / 16; ++n_slab) {
    for (int k_tile = 0; k_tile < c.k / 16; ++k_tile) {
      double c_tile[2][16][8] = {};  // [n8 tile][m][n]
      // mma: C[m][n] = sum_k A[m][k] B[k][n], with A and B assembled from the lanes' registers.
      double a_matrix[16][16] = {};
      double b_matrix[2][16][8] = {};
      for (int lane = 0; lane < 32; ++lane) {
        for (int reg = 0; reg < 4; ++reg) {
          const int source_lane = 8 * reg + lane / 4;
          const int offset = a_ldmatrix_offset(source_lane, 0, k_tile * 16);
          for (int half = 0; half < 2; ++half) {
            uint16_t bits;
            std::memcpy(&bits, shared.data() + offset + 2 * (2 * (lane % 4) + half), 2);
            a_matrix[a_fragment_m(lane, reg)][a_fragment_k(lane, reg, half)] =
                to_float(fp16::from_bits(bits));
          }
        }
        const NibbleAddress first = nibble_address(n_slab * 16, k_tile * 16, c.k);
        const int64_t word_index = first.word + lane * kTilesPerSlab;
        int codes[8];
        emulate_decode_word<fp16>(packed.words[static_cast<std::size_t>(word_index)], codes);
        for (int pair = 0; pair < 4; ++pair) {
          const int tile = pair / 2;
          const int64_t n = n_slab * 16 + 8 * tile + b_fragment_n(lane);
          for (int half = 0; half < 2; ++half) {
            const int k = b_fragment_k(lane, pair % 2, half);
            const int64_t group = (k_tile * 16 + k) / c.group_size;
            const auto at = static_cast<std::size_t>(group * c.n + n);
            const double weight = to_float(from_float<fp16>(
                (static_cast<float>(codes[2 * pair + half]) - to_float(packed.zeros[at])) *
                to_float(packed.scales[at])));
            b_matrix[tile][k][b_fragment_n(lane)] = weight;
          }
        }
      }
      for (int tile = 0; tile < 2; ++tile) {
        for (int m = 0; m < 16; ++m) {
          for (int n = 0; n < 8; ++n) {
            for (int k = 0; k < 16; ++k)
              c_tile[tile][m][n] += a_matrix[m][k] * b_matrix[tile][k][n];
          }
        }
      }
      // The C registers of each lane name (row, column) through the layout's mapping.
      for (int lane = 0; lane < 32; ++lane) {
        for (int reg = 0; reg < 4; ++reg) {
          for (int tile = 0; tile < 2; ++tile) {
            const int m = c_fragment_row(lane, reg);
            const int64_t n = n_slab * 16 + 8 * tile + c_fragment_col(lane, reg);
            double direct = 0.0;
            for (int k = 0; k < 16; ++k) {
              direct += x_value(m, k_tile * 16 + k) * kernel_weight(packed, 0, n, k_tile * 16 + k);
            }
            ASSERT_NEAR(c_tile[tile][m][c_fragment_col(lane, reg)], direct, 1e-9)
                << "n_slab " << n_slab << " k_tile " << k_tile << " lane " << lane;
          }
        }
      }
    }
  }
}

// MoE rows: every row of every expert computed exactly once by a block of that expert; idle
// blocks past the end; the launch's row-block bound is enough.
TEST(W4A16Layout, MoeBlocksCoverEachExpertsRowsOnce) {
  const std::vector<std::vector<int32_t>> cases = {
      {0, 3, 3, 40, 41}, {0, 0, 0, 0}, {0, 16, 32, 48, 64, 80}, {0, 1}, {0, 100, 100, 257}};
  for (const auto& offsets : cases) {
    const int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
    const int64_t rows = offsets.back();
    for (int64_t block_rows : {16, 32, 64}) {
      const int64_t bound = rows / block_rows + 1 + experts;  // plan_launch's row blocks
      std::vector<int64_t> owner(static_cast<std::size_t>(rows), -1);
      bool idle_seen = false;
      for (int64_t block = 0; block < bound; ++block) {
        RowRange range;
        if (!block_rows_of(offsets.data(), experts, rows, block_rows, block, range)) {
          idle_seen = true;
          continue;
        }
        ASSERT_FALSE(idle_seen) << "active block after an idle one";
        ASSERT_LT(range.begin, range.end);
        ASSERT_LE(range.end - range.begin, block_rows);
        ASSERT_GE(range.begin, offsets[static_cast<std::size_t>(range.expert)]);
        ASSERT_LE(range.end, offsets[static_cast<std::size_t>(range.expert) + 1]);
        for (int64_t row = range.begin; row < range.end; ++row) {
          ASSERT_EQ(owner[static_cast<std::size_t>(row)], -1) << "row " << row << " twice";
          owner[static_cast<std::size_t>(row)] = range.expert;
        }
      }
      for (int64_t row = 0; row < rows; ++row) {
        ASSERT_GE(owner[static_cast<std::size_t>(row)], 0) << "row " << row << " never computed";
      }
    }
  }
}

// Offsets the host never checks (device data): whatever they hold, blocks stay inside [0, rows)
// and never overlap.
TEST(W4A16Layout, MoeBlocksStayInBoundsForAnyOffsets) {
  std::mt19937 random(3);
  std::uniform_int_distribution<int32_t> value(-50, 150);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<int32_t> offsets(6);
    for (int32_t& offset : offsets)
      offset = value(random);
    const int64_t rows = 100;
    std::vector<int> hits(static_cast<std::size_t>(rows), 0);
    for (int64_t block = 0; block < rows / 16 + 1 + 5; ++block) {
      RowRange range;
      if (!block_rows_of(offsets.data(), 5, rows, 16, block, range)) continue;
      ASSERT_GE(range.begin, 0);
      ASSERT_LE(range.end, rows);
      for (int64_t row = range.begin; row < range.end; ++row) {
        ASSERT_EQ(++hits[static_cast<std::size_t>(row)], 1);
      }
    }
  }
}

TEST(W4A16Layout, DenseBlocksCoverRowsOnce) {
  for (int64_t rows : {1, 15, 16, 17, 31, 64, 129, 1024}) {
    for (int64_t block_rows : {16, 32, 64}) {
      int64_t covered = 0;
      const int64_t blocks = (rows + block_rows - 1) / block_rows;
      for (int64_t block = 0; block < blocks; ++block) {
        RowRange range;
        ASSERT_TRUE(block_rows_of(nullptr, 1, rows, block_rows, block, range));
        ASSERT_EQ(range.begin, covered);
        covered = range.end;
      }
      EXPECT_EQ(covered, rows);
      RowRange past;
      EXPECT_FALSE(block_rows_of(nullptr, 1, rows, block_rows, blocks, past));
    }
  }
}

TEST(W4A16Layout, LaunchPlanSplitsKWithoutEmptySplits) {
  for (int64_t m : {1, 2, 4, 8, 16, 17, 32, 33, 64, 128, 256, 1024, 4096}) {
    for (int64_t k : {128, 256, 4096, 14336, 28672}) {
      for (int64_t n : {64, 4096, 14336, 28672}) {
        const LaunchPlan plan = plan_launch(m, n, k, 1, m, 132);
        ASSERT_GE(plan.splits, 1);
        ASSERT_LE(plan.splits, kMaxSplits);
        EXPECT_EQ(plan.stages, k / 128);
        EXPECT_GE(plan.splits * plan.stages_per_split, plan.stages);
        EXPECT_LT((plan.splits - 1) * plan.stages_per_split, plan.stages) << "an empty split";
        EXPECT_EQ(plan.m_tiles, m <= 16 ? 1 : m <= 32 ? 2 : 4);
        EXPECT_GE(plan.row_blocks * 16 * plan.m_tiles, m);
        EXPECT_EQ(plan.workspace_bytes, plan.splits == 1 ? 0 : plan.splits * m * n * 4);
      }
    }
  }
  // Decode on a 4096 x 4096 layer: 64 column blocks would leave most of 132 SMs idle.
  EXPECT_GT(plan_launch(1, 4096, 4096, 1, 1, 132).splits, 1);
  // Enough blocks already: no split.
  EXPECT_EQ(plan_launch(4096, 4096, 4096, 1, 4096, 132).splits, 1);
}

TEST(W4A16Layout, ClearErrors) {
  using testing::random_tensor;
  QuantConfig config;
  config.bits = 4;
  config.group_size = 32;
  expect_error([] { check_shape("f", 100, 128, 32); }, ErrorCode::unsupported,
               {"N = 100", "multiple of 64"});
  expect_error([] { check_shape("f", 64, 200, 32); }, ErrorCode::unsupported,
               {"K = 200", "multiple of 128"});
  expect_error([] { check_shape("f", 64, 256, 48); }, ErrorCode::unsupported, {"group size 48"});
  expect_error([] { check_shape("f", 64, 384, 256); }, ErrorCode::unsupported, {"group size 256"});
  const auto eight_bit = random_tensor<float>(64, 128, QuantConfig{8, 32, true}, 1);
  expect_error([&] { repack<fp16>(eight_bit.view()); }, ErrorCode::unsupported, {"8-bit"});
  auto huge = random_tensor<float>(64, 128, config, 1);
  huge.scales()[5] = 1e6f;  // finite in float, infinite in fp16
  expect_error([&] { repack<fp16>(huge.view()); }, ErrorCode::non_finite,
               {"row 1, group 1", "65504"});
  EXPECT_NO_THROW(repack<bf16>(huge.view()));  // bf16 has float's range
  const auto odd_n = random_tensor<float>(48, 128, config, 1);
  expect_error([&] { repack<bf16>(odd_n.view()); }, ErrorCode::unsupported, {"N = 48"});
  expect_error([] { plan_launch(0, 64, 128, 1, 1, 132); }, ErrorCode::invalid_argument,
               {"rows = 0"});
  expect_error([] { plan_launch(int64_t{1} << 30, 64, 128, 1, 1 << 30, 132); },
               ErrorCode::unsupported, {"65535"});
}

TEST(W4A16Layout, ConfigTableListsEveryCompiledConfiguration) {
  const std::string table = config_table();
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 1 + 12);
  EXPECT_NE(table.find("bf16"), std::string::npos);
  for (const Config& config : kConfigs)
    EXPECT_LE(Stage::shared_bytes(config.m_tiles), 99 * 1024);
}

}  // namespace
}  // namespace nibble::cuda::w4a16
