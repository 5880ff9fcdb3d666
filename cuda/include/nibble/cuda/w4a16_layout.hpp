// W4A16's tile layout: where every int4 weight, scale and zero point sits for the CUDA kernel
// (w4a16.cuh), the repack from nibble's canonical layout into it, and the launch plan.
//
// Plain C++ (host and device): everything here is unit-tested on a machine without a GPU, and the
// kernel calls the same index functions, so a host test that emulates the kernel's reads through
// them checks the layout the GPU will see.
//
// The GEMM is Y[M, N] = X[M, K] * dequant(W)[N, K]^T with the tensor-core instruction
// mma.sync.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"): A = X (16 x 16, row-major),
// B = W^T (16 x 8, k x n), C = fp32 16 x 8. In a warp, lane l has group g = l / 4 and thread
// t = l % 4; its B fragment is two 32-bit registers of two 16-bit values each:
//   b0 = (W[n0 + g][k0 + 2t], W[n0 + g][k0 + 2t + 1]),  b1 = the same at k0 + 2t + 8, + 9.
// One 32-bit word of eight nibbles carries a lane's B fragments of two n8 tiles (n0 and n0 + 8),
// i.e. a warp's 32 words are an n16 x k16 weight tile, and each lane dequantizes its own word
// without any shuffle. The nibbles are ordered so that one mask pulls out a register pair:
//
//   nibble:   0        1        2        3        4         5         6         7
//   weight:  (g, 2t)  (g, 2t+8) (g+8, 2t) (g+8, 2t+8) (g, 2t+1) (g, 2t+9) (g+8, 2t+1) (g+8, 2t+9)
//            (n offset from n0, k offset from k0)
//
// so nibbles p and p + 4 (bit 4p and bit 16 + 4p) are the low and high half of register p:
// p = 0, 1 -> b0, b1 of the n8 tile n0;  p = 2, 3 -> b0, b1 of the tile n0 + 8. (Marlin orders
// its nibbles the same way, for the same reason.)
//
// Words are stored so that a lane's single 16-byte load brings four k16 tiles (a k64 slab):
//   word index = ((n / 16) * (K / 64) + k / 64) * 128 + lane * 4 + (k % 64) / 16
// A warp's slab is 512 contiguous bytes; lane l reads bytes [16 l, 16 l + 16).
//
// Scales and zero points: [experts][K / G][N], in the activation type (fp16 or bf16), so a
// pipeline stage copies whole rows; zero points are the integer z in 0..15 stored exactly.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/quant_tensor.hpp"

#if defined(__CUDACC__)
#define NIBBLE_HOST_DEVICE __host__ __device__
#else
#define NIBBLE_HOST_DEVICE
#endif

namespace nibble::cuda::w4a16 {

// ---- geometry -----------------------------------------------------------------------------------
inline constexpr int kWarpSize = 32;
inline constexpr int kTileN = 16;  // a warp's word tile: n16 x k16
inline constexpr int kTileK = 16;  // one mma.m16n8k16 step along K
inline constexpr int kSlabK = 64;  // a lane's 16-byte load: four k16 tiles
inline constexpr int kTilesPerSlab = kSlabK / kTileK;
inline constexpr int kWarpsN = 4;  // warps of a block along N (one n16 tile each)
inline constexpr int kWarpsK = 2;  // warps of a block along K (one k64 slab each)
inline constexpr int kThreads = kWarpSize * kWarpsN * kWarpsK;
inline constexpr int kBlockN = kTileN * kWarpsN;  // 64 output columns per block
inline constexpr int kBlockK = kSlabK * kWarpsK;  // 128: the K width of one pipeline stage
inline constexpr int kStages = 4;                 // cp.async pipeline depth
inline constexpr int kMTile = 16;                 // rows of one mma A tile
inline constexpr int kMaxMTiles = 4;              // a block covers up to 64 rows of X
inline constexpr int kMaxSplits = 16;

// X in shared memory: a stage holds rows x 128 values of X, in 16-byte chunks (W4A16: 16 chunks
// of fp16 / bf16 per row; W4A8: 8 chunks of fp8). Chunk c of row r is stored at chunk c ^ (r % 8):
// the eight rows one ldmatrix phase reads (consecutive r, same c) then land in eight different
// 16-byte bank groups, so ldmatrix runs without bank conflicts.
inline constexpr int kXRowBytes = kBlockK * 2;
inline constexpr int kXChunksPerRow = kXRowBytes / 16;
template <int kRowBytes = kXRowBytes>
NIBBLE_HOST_DEVICE constexpr int x_chunk_offset(int row, int chunk) {
  return row * kRowBytes + ((chunk ^ (row & 7)) * 16);
}

// The shared-memory byte offset lane `lane` hands to ldmatrix.x4 for the A fragment of the 16-row
// tile starting at row m0, at K offset k (in elements of kElementBytes) inside the stage.
// ldmatrix.x4 loads four 8x8 matrices of 16-bit values (8 rows of 16 bytes); lanes 8i..8i+7 give
// the row addresses of matrix i, and matrix i arrives in register i. The A fragment of
// mma.m16n8k16 (16-bit) and of mma.m16n8k32 (8-bit) alike wants register 0 = rows 0-7 / bytes
// 0-15 of the tile's K, 1 = rows 8-15 / bytes 0-15, 2 = rows 0-7 / bytes 16-31, 3 = rows 8-15 /
// bytes 16-31; hence row = m0 + lane % 8 + 8 * bit 3 of the lane, chunk = first chunk + bit 4.
template <int kRowBytes = kXRowBytes, int kElementBytes = 2>
NIBBLE_HOST_DEVICE constexpr int a_ldmatrix_offset(int lane, int m0, int k) {
  return x_chunk_offset<kRowBytes>(m0 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                   k * kElementBytes / 16 + (lane >> 4));
}

// Where W[n][k] of one expert ([N, K], K a multiple of 64) is: word index and nibble (0..7).
struct NibbleAddress {
  int64_t word;
  int nibble;
};
NIBBLE_HOST_DEVICE constexpr NibbleAddress nibble_address(int64_t n, int64_t k, int64_t K) {
  const int n_in_tile = static_cast<int>(n % kTileN);
  const int k_in_tile = static_cast<int>(k % kTileK);
  const int lane = (n_in_tile % 8) * 4 + (k_in_tile % 8) / 2;  // g = n % 8, t = (k % 8) / 2
  const int pair = (n_in_tile / 8) * 2 + k_in_tile / 8;        // register: n8 tile, then b0/b1
  const int nibble = pair + 4 * (k_in_tile % 2);               // odd k: the high half
  const int64_t slab = (n / kTileN) * (K / kSlabK) + k / kSlabK;
  const int64_t word = (slab * kWarpSize + lane) * kTilesPerSlab + (k % kSlabK) / kTileK;
  return NibbleAddress{word, nibble};
}

// Register layout of C (fp32, 16 x 8): c[r] of lane l is row g + 8 (r / 2), column 2t + r % 2.
NIBBLE_HOST_DEVICE constexpr int c_fragment_row(int lane, int reg) {
  return lane / 4 + 8 * (reg / 2);
}
NIBBLE_HOST_DEVICE constexpr int c_fragment_col(int lane, int reg) {
  return 2 * (lane % 4) + reg % 2;
}

// ---- int4 -> fp16 / bf16 by magic numbers
// -------------------------------------------------------- fp16 0x6400 is 1024.0 with a unit-spaced
// mantissa (exponent 10, 10 mantissa bits), so OR-ing an integer v < 1024 into the low mantissa
// bits gives exactly 1024 + v. With the mask 0x000F000F a word's nibbles 0 and 4 become a half2
// (1024 + v0, 1024 + v4) in one lop3; with 0x00F000F0 nibbles 1 and 5 become 1024 + 16 v, which a
// multiply by 1/16 and subtract of 64 brings to v (all exact). Shifting the word right by 8 gives
// nibbles 2, 6 and 3, 7 the same way. bf16 has 7 mantissa bits: 0x4300 is 128.0 with unit spacing,
// so 0x4300 | v = 128 + v for v < 128; 16 v would not fit, so bf16 shifts the word by 4, 8 and 12
// and always uses the mask 0x000F000F.
inline constexpr uint32_t kLowNibblePairMask = 0x000F000Fu;
inline constexpr uint32_t kHighNibblePairMask = 0x00F000F0u;
inline constexpr uint32_t kFp16Magic = 0x64006400u;  // half2 (1024, 1024)
inline constexpr float kFp16MagicValue = 1024.0f;
inline constexpr uint32_t kBf16Magic = 0x43004300u;  // bf162 (128, 128)
inline constexpr float kBf16MagicValue = 128.0f;

// The integer codes a lane's word yields, in register order: value[2p] and value[2p + 1] are the
// low and high half of register p. Host emulation of the device decode (same masks and magic, the
// 16-bit results read as fp16 / bf16 and the same exact arithmetic applied), for tests.
template <class T>
void emulate_decode_word(uint32_t word, int (&value)[8]) {
  static_assert(std::is_same_v<T, fp16> || std::is_same_v<T, bf16>, "fp16 or bf16");
  const auto halves = [](uint32_t bits, float(&out)[2]) {
    const auto lo = static_cast<uint16_t>(bits & 0xFFFFu);
    const auto hi = static_cast<uint16_t>(bits >> 16);
    if constexpr (std::is_same_v<T, fp16>) {
      out[0] = detail::fp16_bits_to_fp32(lo);
      out[1] = detail::fp16_bits_to_fp32(hi);
    } else {
      out[0] = detail::bf16_bits_to_fp32(lo);
      out[1] = detail::bf16_bits_to_fp32(hi);
    }
  };
  for (int pair = 0; pair < 4; ++pair) {
    float h[2];
    if constexpr (std::is_same_v<T, fp16>) {
      const uint32_t source = pair < 2 ? word : word >> 8;
      if (pair % 2 == 0) {
        halves((source & kLowNibblePairMask) | kFp16Magic, h);
        h[0] -= kFp16MagicValue;
        h[1] -= kFp16MagicValue;
      } else {
        halves((source & kHighNibblePairMask) | kFp16Magic, h);
        h[0] = h[0] * (1.0f / 16.0f) - kFp16MagicValue / 16.0f;
        h[1] = h[1] * (1.0f / 16.0f) - kFp16MagicValue / 16.0f;
      }
    } else {
      halves(((word >> (4 * pair)) & kLowNibblePairMask) | kBf16Magic, h);
      h[0] -= kBf16MagicValue;
      h[1] -= kBf16MagicValue;
    }
    value[2 * pair] = static_cast<int>(h[0]);
    value[2 * pair + 1] = static_cast<int>(h[1]);
  }
}

// ---- shape rules
// --------------------------------------------------------------------------------- N % 64 (a
// block's columns), K % 128 (a pipeline stage), and a group size the stage can hold whole: 16, 32,
// 64 (several groups per stage), a multiple of 128, or one group per row.
inline void check_shape(const char* function, int64_t n, int64_t k, int64_t group_size) {
  if (n % kBlockN != 0) {
    detail::fail(ErrorCode::unsupported, function, ": N = ", n, " is not a multiple of ", kBlockN,
                 " (the W4A16 kernel's block width)");
  }
  if (k % kBlockK != 0) {
    detail::fail(ErrorCode::unsupported, function, ": K = ", k, " is not a multiple of ", kBlockK,
                 " (the W4A16 kernel's pipeline stage)");
  }
  const bool divides_stage = group_size >= kTileK && kBlockK % group_size == 0;
  const bool whole_stages = group_size % kBlockK == 0 && k % group_size == 0;
  if (!divides_stage && !whole_stages) {
    detail::fail(ErrorCode::unsupported, function, ": group size ", group_size, " with K = ", k,
                 " (expected 16, 32, 64, a multiple of 128 dividing K, or per-channel)");
  }
}

// Where a K offset inside a stage finds its group's row among the stage's scale rows:
// (offset >> group_shift); the stage holds groups_per_stage rows (1 when a group spans stages).
inline int group_shift(int64_t group_size) {
  const int64_t in_stage = std::min<int64_t>(group_size, kBlockK);  // a power of two (check_shape)
  int shift = 0;
  while ((int64_t{1} << (shift + 1)) <= in_stage)
    ++shift;
  return shift;
}
inline int groups_per_stage(int64_t group_size) {
  return static_cast<int>(std::max<int64_t>(1, kBlockK / group_size));
}

// ---- repacked weights (host)
// --------------------------------------------------------------------- S is the scale type (W4A16:
// the activation type, fp16 or bf16; W4A8: fp16): scales and zero points are converted to it once,
// at repack time.
template <class S>
struct PackedWeights {
  int64_t experts = 0;
  int64_t n = 0;  // output features per expert
  int64_t k = 0;
  int64_t group_size = 0;  // K when per-channel
  int64_t n_groups = 0;
  std::vector<uint32_t> words;  // [experts][N * K / 8], the kernel's tile layout
  std::vector<S> scales;        // [experts][n_groups][N]
  std::vector<S> zeros;         // [experts][n_groups][N], empty when symmetric (zero point 8)
  bool symmetric() const { return zeros.empty(); }
  int64_t words_per_expert() const { return n * k / 8; }
};

// Canonical [..., N, K] 4-bit weights (rank >= 2; the leading dimensions are experts) into a
// kernel layout: `address(n, k, K)` says where each weight goes, `check(who, N, K, G)` the shapes
// the kernel takes. `scales`: null to take the tensor's own (rounded to S, nearest even), or
// `scale_count` = experts x K / G x N values in the [experts][K / G][N] layout to use instead.
template <class S, class ScaleT, class Address, class Check>
PackedWeights<S> repack_with(const char* who, const QuantTensorView<ScaleT>& w, Address address,
                             Check check, const S* scales = nullptr, int64_t scale_count = 0) {
  static_assert(std::is_same_v<S, fp16> || std::is_same_v<S, bf16>, "scales are fp16 or bf16");
  if (w.bits() != 4) {
    detail::fail(ErrorCode::unsupported, who, ": ", w.bits(),
                 "-bit weights (the kernel takes 4-bit weights)");
  }
  if (w.shape().rank() < 2) {
    detail::fail(ErrorCode::shape_mismatch, who, ": weights of shape ", w.shape(),
                 " (expected [..., N, K], rank >= 2)");
  }
  const RowLayout& layout = w.layout();
  PackedWeights<S> packed;
  packed.n = w.shape()[w.shape().rank() - 2];
  packed.k = w.k();
  packed.experts = w.rows() / packed.n;
  packed.group_size = layout.group_size;
  packed.n_groups = layout.n_groups;
  check(who, packed.n, packed.k, packed.group_size);
  const int64_t words_per_expert = packed.words_per_expert();
  packed.words.assign(static_cast<std::size_t>(
                          detail::checked_mul(packed.experts, words_per_expert, "packed words")),
                      0u);
  const int64_t count =
      detail::checked_mul(packed.experts * packed.n_groups, packed.n, "scale count");
  if (scales != nullptr && scale_count != count) {
    detail::fail(ErrorCode::shape_mismatch, who, ": ", scale_count,
                 " scales given (expected experts x K / G x N = ", count, ")");
  }
  packed.scales.resize(static_cast<std::size_t>(count));
  if (!w.config().symmetric) packed.zeros.resize(static_cast<std::size_t>(count));
  for (int64_t expert = 0; expert < packed.experts; ++expert) {
    uint32_t* words = packed.words.data() + expert * words_per_expert;
    for (int64_t n = 0; n < packed.n; ++n) {
      const int64_t row = expert * packed.n + n;
      const uint8_t* codes = w.qweight_row(row);
      // 4-bit canonical packing: element 2j in the low nibble of byte j, 2j + 1 in the high one.
      for (int64_t k = 0; k < packed.k; ++k) {
        const uint32_t code = (codes[k / 2] >> (4 * (k % 2))) & 0xFu;
        const NibbleAddress at = address(n, k, packed.k);
        words[at.word] |= code << (4 * at.nibble);
      }
      for (int64_t group = 0; group < packed.n_groups; ++group) {
        const auto at = static_cast<std::size_t>((expert * packed.n_groups + group) * packed.n + n);
        packed.scales[at] = scales != nullptr ? scales[at] : from_float<S>(w.scale(row, group));
        if (!std::isfinite(to_float(packed.scales[at]))) {
          detail::fail(ErrorCode::non_finite, who, ": the scale of row ", row, ", group ", group,
                       " is ", to_float(packed.scales[at]), " as the kernel's ",
                       std::is_same_v<S, fp16> ? "fp16" : "bf16", " (from ", w.scale(row, group),
                       "; expected a finite value: fp16 holds at most 65504)");
        }
        if (!packed.zeros.empty()) {
          packed.zeros[at] = from_float<S>(static_cast<float>(w.zero_point(row, group)));
        }
      }
    }
  }
  return packed;
}

// W4A16: T is the activation type (fp16 or bf16); scales are rounded to T, as the kernel
// multiplies in T.
template <class T, class ScaleT>
PackedWeights<T> repack(const QuantTensorView<ScaleT>& w) {
  return repack_with<T>("w4a16::repack", w, nibble_address, check_shape);
}

// The weight the kernel multiplies by: (q - z) * s rounded to T, as a float. (q - z) is exact in T
// and the product of a 4-bit integer and a T scale is exact in fp32, so rounding it to T once is
// exactly the device's T multiply.
template <class T>
float kernel_weight(const PackedWeights<T>& packed, int64_t expert, int64_t n, int64_t k) {
  const NibbleAddress at = nibble_address(n, k, packed.k);
  const uint32_t word =
      packed.words[static_cast<std::size_t>(expert * packed.words_per_expert() + at.word)];
  const int code = static_cast<int>((word >> (4 * at.nibble)) & 0xFu);
  const auto group_at =
      static_cast<std::size_t>((expert * packed.n_groups + k / packed.group_size) * packed.n + n);
  const float zero = packed.symmetric() ? 8.0f : to_float(packed.zeros[group_at]);
  const float product = (static_cast<float>(code) - zero) * to_float(packed.scales[group_at]);
  return to_float(from_float<T>(product));
}

// ---- which rows a block computes (host and device)
// ----------------------------------------------- Block z of a launch covers rows [begin, end) of X
// and Y, all of one expert. Dense (offsets null): z * block_rows onwards. MoE: tokens are sorted by
// expert and expert e owns rows [offsets[e], offsets[e + 1]); the blocks of expert 0 come first,
// then those of expert 1, ..., each expert ceil(count / block_rows) of them, and blocks past the
// last are idle. The offsets are device data the host never sees, so they are made safe here rather
// than trusted: each range is clamped into [previous end, rows], so whatever the array holds,
// blocks read and write only rows inside [0, rows) and no row twice. Rows outside [offsets[0],
// offsets[E]) are not written.
struct RowRange {
  int64_t expert = 0;
  int64_t begin = 0;
  int64_t end = 0;
};
NIBBLE_HOST_DEVICE inline bool block_rows_of(const int32_t* offsets, int64_t experts, int64_t rows,
                                             int64_t block_rows, int64_t block, RowRange& range) {
  const auto clamp_to = [](int64_t value, int64_t low, int64_t high) {
    return value < low ? low : value > high ? high : value;
  };
  if (offsets == nullptr) {
    range.expert = 0;
    range.begin = block * block_rows;
    range.end = clamp_to(range.begin + block_rows, 0, rows);
    return range.begin < rows;
  }
  int64_t previous_end = clamp_to(offsets[0], 0, rows);
  for (int64_t expert = 0; expert < experts; ++expert) {
    const int64_t begin = previous_end;
    const int64_t end = clamp_to(offsets[expert + 1], begin, rows);
    const int64_t blocks = (end - begin + block_rows - 1) / block_rows;
    if (block < blocks) {
      range.expert = expert;
      range.begin = begin + block * block_rows;
      range.end = clamp_to(range.begin + block_rows, 0, end);
      return true;
    }
    block -= blocks;
    previous_end = end;
  }
  return false;
}

// ---- launch plan (host)
// -------------------------------------------------------------------------- How one GEMM is cut
// into blocks: grid = (N / 64, splits, row blocks). Each block computes up to 16 * m_tiles rows of
// Y over stages_per_split pipeline stages of K; with splits > 1 the blocks write fp32 partial sums
// to a workspace and a second kernel adds them in split order (the result does not depend on
// timing). Splitting K is what keeps every SM busy when M is small: at M = 1, N = 4096 there are
// only 64 column blocks for 132 SMs.
struct LaunchPlan {
  int64_t rows = 0;  // the problem it was made for
  int64_t experts = 0;
  int m_tiles = 1;
  int splits = 1;
  int64_t stages = 0;            // K / 128
  int64_t stages_per_split = 0;  // the last split may have fewer
  int64_t column_blocks = 0;
  int64_t row_blocks = 0;       // an upper bound for MoE (see moe_row_blocks)
  int64_t workspace_bytes = 0;  // splits * rows * N * 4 when splits > 1, else 0
};

// rows: M (dense) or T, the number of token rows (MoE); experts: 1 for a dense GEMM.
// rows_per_expert_hint: the rows one block row-tile is sized for (M, or T * top_k / E for MoE).
inline LaunchPlan plan_launch(int64_t rows, int64_t n, int64_t k, int64_t experts,
                              int64_t rows_per_expert_hint, int sm_count) {
  if (rows < 1 || experts < 1 || sm_count < 1) {
    detail::fail(ErrorCode::invalid_argument, "w4a16::plan_launch: rows = ", rows,
                 ", experts = ", experts, ", sm_count = ", sm_count, " (expected >= 1 each)");
  }
  if (n % kBlockN != 0 || k % kBlockK != 0) {
    detail::fail(ErrorCode::unsupported, "w4a16::plan_launch: N = ", n, ", K = ", k,
                 " (expected N % ", kBlockN, " == 0 and K % ", kBlockK, " == 0)");
  }
  LaunchPlan plan;
  plan.rows = rows;
  plan.experts = experts;
  const int64_t hint = std::max<int64_t>(1, rows_per_expert_hint);
  plan.m_tiles = hint <= 16 ? 1 : hint <= 32 ? 2 : 4;
  const int64_t block_rows = int64_t{kMTile} * plan.m_tiles;
  // Dense: ceil(M / rows). MoE: sum over experts of ceil(count_e / rows) <= T / rows + E.
  plan.row_blocks = experts == 1 ? detail::ceil_div(rows, block_rows)
                                 : detail::ceil_div(rows, block_rows) + experts;
  if (plan.row_blocks > 65535) {
    detail::fail(ErrorCode::unsupported, "w4a16::plan_launch: ", rows, " rows need ",
                 plan.row_blocks, " row blocks (the grid's z dimension holds at most 65535)");
  }
  plan.column_blocks = n / kBlockN;
  plan.stages = k / kBlockK;
  // Aim for about two resident blocks per SM; never split below two stages per block.
  const int64_t blocks =
      plan.column_blocks * (experts == 1 ? plan.row_blocks : detail::ceil_div(rows, block_rows));
  const int64_t wanted = detail::ceil_div(int64_t{2} * sm_count, blocks);
  const int64_t most = std::max<int64_t>(1, plan.stages / 2);
  const int64_t splits = std::clamp<int64_t>(wanted, 1, std::min<int64_t>(kMaxSplits, most));
  plan.stages_per_split = detail::ceil_div(plan.stages, splits);
  plan.splits =
      static_cast<int>(detail::ceil_div(plan.stages, plan.stages_per_split));  // none empty
  plan.workspace_bytes =
      plan.splits == 1 ? 0
                       : detail::checked_mul(detail::checked_mul(plan.splits, rows, "workspace"),
                                             n * 4, "workspace bytes");
  return plan;
}

// Shared memory of one pipeline stage: the block's X rows (128 values each, kXElementBytes per
// value), its 64 x 128 int4 weights, then scale rows and zero-point rows (2 bytes per value) of
// the up to kMaxGroups groups a stage touches. A block holds kStages stages.
template <int kXElementBytes, int kMaxGroups>
struct StageLayout {
  static constexpr int kXRowBytes = kBlockK * kXElementBytes;
  static constexpr int kXChunksPerRow = kXRowBytes / 16;
  static constexpr int kWeightBytes = kBlockN * kBlockK / 2;
  static constexpr int kGroupBytes = kMaxGroups * kBlockN * 2;
  NIBBLE_HOST_DEVICE static constexpr int x_bytes(int m_tiles) {
    return kMTile * m_tiles * kXRowBytes;
  }
  NIBBLE_HOST_DEVICE static constexpr int weights_offset(int m_tiles) { return x_bytes(m_tiles); }
  NIBBLE_HOST_DEVICE static constexpr int scales_offset(int m_tiles) {
    return x_bytes(m_tiles) + kWeightBytes;
  }
  NIBBLE_HOST_DEVICE static constexpr int zeros_offset(int m_tiles) {
    return scales_offset(m_tiles) + kGroupBytes;
  }
  NIBBLE_HOST_DEVICE static constexpr int stage_bytes(int m_tiles) {
    return zeros_offset(m_tiles) + kGroupBytes;
  }
  NIBBLE_HOST_DEVICE static constexpr int shared_bytes(int m_tiles) {
    return kStages * stage_bytes(m_tiles);
  }
  static_assert(shared_bytes(kMaxMTiles) <= 99 * 1024, "must fit sm_89's 99 KiB per block");
  static_assert(kWarpsN * kWarpSize * kMaxMTiles * 8 * 4 <= shared_bytes(kMaxMTiles),
                "the k-warp reduction reuses the pipeline's shared memory");
};
// W4A16: fp16 / bf16 X; groups down to 16 (8 per stage).
using Stage = StageLayout<2, kBlockK / kTileK>;

// The compiled W4A16 configurations: activation type x zero points x rows per block (the
// launch picks rows per block from M). W4A8 compiles the same set with fp8 X (w4a8_layout.hpp).
struct Config {
  const char* activation;
  bool zero_points;
  int m_tiles;
};
inline constexpr Config kConfigs[] = {
    {"fp16", false, 1}, {"fp16", false, 2}, {"fp16", false, 4}, {"fp16", true, 1},
    {"fp16", true, 2},  {"fp16", true, 4},  {"bf16", false, 1}, {"bf16", false, 2},
    {"bf16", false, 4}, {"bf16", true, 1},  {"bf16", true, 2},  {"bf16", true, 4},
};

// One line per configuration; shared_bytes(m_tiles) gives the shared memory of a block.
template <class Configs, class SharedBytes>
std::string format_config_table(const char* title, const Configs& configs,
                                SharedBytes shared_bytes) {
  std::string table = std::string(title) +
                      ": activation, zero points, rows/block, threads, stages, block N x K, "
                      "shared bytes\n";
  for (const Config& config : configs) {
    table += std::string("  ") + config.activation +
             (config.zero_points ? "  zeros  " : "  sym    ") +
             std::to_string(kMTile * config.m_tiles) + "  " + std::to_string(kThreads) + "  " +
             std::to_string(kStages) + "  " + std::to_string(kBlockN) + " x " +
             std::to_string(kBlockK) + "  " + std::to_string(shared_bytes(config.m_tiles)) + "\n";
  }
  return table;
}

inline std::string config_table() {
  return format_config_table("W4A16", kConfigs, [](int m) { return Stage::shared_bytes(m); });
}

}  // namespace nibble::cuda::w4a16
