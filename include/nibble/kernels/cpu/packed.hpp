// The kernel-native packed layout: W rearranged once, when a model is loaded, for the CPU kernels.
//
//   const nibble::PackedWeights<float> packed = nibble::pack_for_cpu(q.view());
//   // q may be dropped now: the packed tensor holds everything the kernels read.
//   nibble::gemm(packed, x, y, {.activations = nibble::ActivationPrecision::int8});
//
// The canonical layout (quant_tensor.hpp) stays the storage and interchange format; this one is
// made for one ISA's kernel table and is not meant to be stored. Output columns come in tiles of
// 8 (one int32 / float lane each), so a group's 8 scales are one vector load and multiply and no
// per-column horizontal sum remains; K comes in the int8 path's activation blocks, each in
// 32-byte chunks whose planes are exactly what vpmaddubsw (and vpdpbusd) multiply with 4
// broadcast activation bytes. Scales keep the tensor's scale type (converted in the kernel, one
// instruction per 8), zero points are int8 per column and group (none when symmetric). Byte by
// byte: docs/packed-layout.md; the arithmetic: detail/packed_kernels.hpp.
//
// Every bits (2, 4, 8), group size (any, per-channel included), symmetry and scale type packs;
// fp32, int8, bf16 and fp16 activation precision, X and Y float / fp16 / bf16, any M. The tensor
// remembers the ISA it was packed for; a call that would run another ISA's table (GemmOptions::isa,
// NIBBLE_ISA) is an error, never a silent mismatch. gemm_packed_ref runs the scalar reference
// kernel on any ISA.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/parallel.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/kernels/cpu/detail/activation_blocks.hpp"
#include "nibble/kernels/cpu/detail/packed_kernels.hpp"
#include "nibble/kernels/cpu/dispatch.hpp"
#include "nibble/kernels/cpu/gemm.hpp"
#include "nibble/kernels/cpu/isa.hpp"
#include "nibble/pack.hpp"
#include "nibble/quant_tensor.hpp"

namespace nibble {

struct PackOptions {
  Isa isa = Isa::automatic;  // the table whose kernels will run it (automatic: as gemm resolves)
  int num_threads = 0;       // OpenMP threads for packing; 0 = OpenMP's default
};

template <class ScaleT>
class PackedWeights;

// W rearranged for the CPU kernels of options.isa (resolved as gemm resolves GemmOptions::isa).
// Any rank: leading dimensions flatten into N. Defined below.
template <class ScaleT>
PackedWeights<ScaleT> pack_for_cpu(const QuantTensorView<ScaleT>& w,
                                   const PackOptions& options = {});

template <class ScaleT>
class PackedWeights {
 public:
  using scale_type = ScaleT;

  const Shape& shape() const { return shape_; }  // W's shape [..., N, K]
  const QuantConfig& config() const { return config_; }
  int bits() const { return config_.bits; }
  int64_t rows() const { return shape_.rows(); }  // N: leading dimensions flattened
  int64_t k() const { return shape_.last(); }
  Isa isa() const { return isa_; }  // the ISA it was packed for
  int64_t n_groups() const { return n_groups_; }
  int64_t group_size() const { return group_size_; }
  int64_t activation_block() const { return block_; }  // K elements per activation block
  int64_t blocks_per_group() const { return blocks_per_group_; }
  int64_t chunks_per_block() const { return chunks_per_block_; }
  int64_t block_stride() const { return block_stride_; }  // block padded to whole chunks
  int64_t tiles() const { return detail::ceil_div(rows(), detail::cpu::kPackedTileColumns); }
  const std::vector<uint8_t>& codes() const { return codes_; }   // [tiles][blocks][chunks][32]
  const std::vector<ScaleT>& scales() const { return scales_; }  // [tiles][groups][8]
  const std::vector<int8_t>& zeros() const { return zeros_; }    // [tiles][groups][8] or empty

  // Bytes the packed tensor holds (codes, scales and zero points).
  std::size_t bytes() const {
    return codes_.size() + scales_.size() * sizeof(ScaleT) + zeros_.size();
  }

 private:
  template <class S>
  friend PackedWeights<S> pack_for_cpu(const QuantTensorView<S>& w, const PackOptions& options);
  PackedWeights(Shape shape, QuantConfig config, Isa isa)
      : shape_(std::move(shape)), config_(config), isa_(isa) {}

  Shape shape_;
  QuantConfig config_;
  Isa isa_ = Isa::generic;
  int64_t group_size_ = 0;
  int64_t n_groups_ = 0;
  int64_t block_ = 0;
  int64_t blocks_per_group_ = 0;
  int64_t chunks_per_block_ = 0;
  int64_t block_stride_ = 0;
  std::vector<uint8_t> codes_;
  std::vector<ScaleT> scales_;
  std::vector<int8_t> zeros_;
};

namespace detail {

// Rearranges tiles [tile_begin, tile_end) of w into `packed` (sized by the caller).
//
// Each tile's 8 rows are first unpacked into `stored`: per column, padded_k stored codes (the
// code, or at 8 bits q - 128 as a byte) with 0 past K (X is 0 there, so any value would do; 0
// keeps the bytes deterministic). A chunk byte is then sum_p stored[e_p] << (p * Bits) over its
// planes' elements e_p (one code at 8 bits). Blocks that fill whole chunks (block_stride ==
// activation_block: every group size that is a multiple of the chunk K) read their elements
// straight from `stored`; the others zero the pad elements past the block, element by element.
template <int Bits, class ScaleT>
void pack_tiles(const QuantTensorView<ScaleT>& w, PackedWeights<ScaleT>& packed, uint8_t* codes,
                ScaleT* scales, int8_t* zeros, int64_t tile_begin, int64_t tile_end) {
  using G = cpu::PackedGeometry<Bits>;
  constexpr int kTile = cpu::kPackedTileColumns;
  const int64_t n = w.rows();
  const int64_t k = w.k();
  const int64_t n_groups = packed.n_groups();
  const int64_t blocks = n_groups * packed.blocks_per_group();
  const int64_t chunks = packed.chunks_per_block();
  const int64_t block = packed.activation_block();
  const bool whole_chunks = packed.block_stride() == block;
  const int64_t tile_bytes = blocks * chunks * cpu::kPackedChunkBytes;
  const int64_t padded_k = w.layout().padded_k;
  std::vector<uint8_t> stored(static_cast<std::size_t>(kTile * padded_k), 0);
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    std::fill(stored.begin(), stored.end(), uint8_t{0});
    for (int c = 0; c < kTile; ++c) {
      const int64_t row = tile * kTile + c;
      if (row >= n) continue;  // a column past N: never written, codes 0
      uint8_t* column = stored.data() + c * padded_k;
      BitPacking<Bits>::unpack_row(w.qweight_row(row), k, column);
      if constexpr (Bits == 8) {
        for (int64_t i = 0; i < k; ++i)
          column[i] = static_cast<uint8_t>(column[i] - 128u);  // q - 128, as int8 bits
      }
    }
    uint8_t* out = codes + tile * tile_bytes;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t first = (b / packed.blocks_per_group()) * packed.group_size() +
                            (b % packed.blocks_per_group()) * block;
      for (int64_t chunk = 0; chunk < chunks; ++chunk, out += cpu::kPackedChunkBytes) {
        const int64_t chunk_first = chunk * G::kChunkK;  // the chunk's first element in the block
        // Elements of this chunk inside the block (a pad past it stays 0).
        const int64_t inside = std::min<int64_t>(G::kChunkK, block - chunk_first);
        const auto write = [&](auto whole) {
          for (int column = 0; column < kTile; ++column) {
            const uint8_t* source = stored.data() + column * padded_k + first + chunk_first;
            for (int t = 0; t < 4; ++t) {  // byte t of the column's 4: element p * 4 + t per plane
              unsigned byte = 0;
              for (int p = 0; p < G::kPlanes; ++p) {
                if (decltype(whole)::value || p * 4 + t < inside)
                  byte |= unsigned{source[p * 4 + t]} << (p * Bits);
              }
              out[column * 4 + t] = static_cast<uint8_t>(byte);
            }
          }
        };
        if (whole_chunks) {
          write(std::true_type{});
        } else {
          write(std::false_type{});
        }
      }
    }
    for (int64_t g = 0; g < n_groups; ++g) {
      for (int c = 0; c < kTile; ++c) {
        const int64_t row = tile * kTile + c;
        const auto at = static_cast<std::size_t>((tile * n_groups + g) * kTile + c);
        scales[at] = row < n ? w.scale_row(row)[g] : from_float<ScaleT>(0.0f);
        if (zeros != nullptr) {
          const int zero = row < n ? w.zero_point(row, g) - (Bits == 8 ? 128 : 0) : 0;
          zeros[at] = static_cast<int8_t>(zero);
        }
      }
    }
  }
}

template <class ScaleT>
nibble_packed_operands packed_operands(const PackedWeights<ScaleT>& w) {
  nibble_packed_operands op{};
  op.n = w.rows();
  op.n_groups = w.n_groups();
  op.blocks_per_group = w.blocks_per_group();
  op.chunks_per_block = w.chunks_per_block();
  op.block_stride = w.block_stride();
  op.codes = w.codes().data();
  op.scales = w.scales().data();
  op.zeros = w.zeros().empty() ? nullptr : w.zeros().data();
  op.symmetric_zero = w.bits() == 8 ? 0 : 1 << (w.bits() - 1);
  return op;
}

// X rows [begin, end) as the packed kernels read them: float rows of the canonical padded length
// (`row_values`, scratch), then per activation block either int8 codes with their scale and
// scaled code sum, or the floats, each block at block_stride (pads 0).
template <class ScaleT, class ActT>
void prepare_packed_rows(const PackedWeights<ScaleT>& w, const TensorView<const ActT>& x,
                         ActivationPrecision precision, int64_t begin, int64_t end, int8_t* x_codes,
                         float* x_scales, float* x_scaled_sums, float* x_float) {
  const bool int8 = precision == ActivationPrecision::int8;
  const int64_t block = w.activation_block();
  const int64_t stride = w.block_stride();
  const int64_t blocks = w.n_groups() * w.blocks_per_group();
  const int64_t padded_k = w.n_groups() * w.group_size();
  const int64_t row_length = blocks * stride;
  std::vector<float> values(static_cast<std::size_t>(padded_k));
  std::vector<int8_t> codes(int8 ? static_cast<std::size_t>(padded_k) : 0);
  std::vector<int32_t> sums(int8 ? static_cast<std::size_t>(blocks) : 0);
  for (int64_t row = begin; row < end; ++row) {
    convert_activation_rows(x, &row, 0, 1, padded_k, values.data(), precision);
    if (int8) {
      float* scales = x_scales + row * blocks;
      quantize_activation_row(values.data(), padded_k, block, codes.data(), scales, sums.data());
      int8_t* out = x_codes + row * row_length;
      for (int64_t b = 0; b < blocks; ++b) {
        std::copy(codes.data() + b * block, codes.data() + (b + 1) * block, out + b * stride);
        std::fill(out + b * stride + block, out + (b + 1) * stride, int8_t{0});
        x_scaled_sums[row * blocks + b] =
            scales[b] * static_cast<float>(sums[static_cast<std::size_t>(b)]);
      }
    } else {
      float* out = x_float + row * row_length;
      for (int64_t b = 0; b < blocks; ++b) {
        std::copy(values.data() + b * block, values.data() + (b + 1) * block, out + b * stride);
        std::fill(out + b * stride + block, out + (b + 1) * stride, 0.0f);
      }
    }
  }
}

template <class ScaleT, class ActT>
void check_packed_operands(const char* function, const PackedWeights<ScaleT>& w,
                           const TensorView<const ActT>& x, const TensorView<ActT>& y,
                           const ActT* bias, const TensorView<const ActT>* bias_view) {
  static_assert(is_float_type_v<ActT>, "gemm: activations are float, fp16 or bf16");
  if (x.cols() != w.k()) {
    fail(ErrorCode::shape_mismatch, function, ": x has shape ", x.shape(), " (K = ", x.cols(),
         ") but the packed weights ", w.shape(), " have K = ", w.k());
  }
  const Shape expected_y = x.shape().with_last(w.rows());
  if (y.shape() != expected_y) {
    fail(ErrorCode::shape_mismatch, function, ": y has shape ", y.shape(), " (expected ",
         expected_y, " for x ", x.shape(), " and N = ", w.rows(), ")");
  }
  if (bias != nullptr && bias_view->shape() != Shape{w.rows()}) {
    fail(ErrorCode::shape_mismatch, function, ": bias has shape ", bias_view->shape(),
         " (expected [N] = [", w.rows(), "])");
  }
}

// Y = X * W^T with `kernel` over tiles, in parallel when threads != 1.
template <class ScaleT, class ActT>
void run_packed(const PackedWeights<ScaleT>& w, const TensorView<const ActT>& x,
                const TensorView<ActT>& y, const ActT* bias, ActivationPrecision precision,
                int num_threads, nibble_packed_gemm_fn kernel) {
  check_activation_precision("gemm", precision);
  const bool int8 = precision == ActivationPrecision::int8;
  const int64_t m = x.rows();
  if (m == 0) return;
  nibble_packed_operands op = packed_operands(w);
  op.m = m;
  const int64_t blocks = w.n_groups() * w.blocks_per_group();
  const int64_t row_length = checked_mul(blocks, w.block_stride(), "packed activations");
  const std::size_t x_elements =
      static_cast<std::size_t>(checked_mul(m, row_length, "packed activations"));
  std::vector<int8_t> x_codes(int8 ? x_elements : 0);
  std::vector<float> x_scales(int8 ? static_cast<std::size_t>(m * blocks) : 0);
  std::vector<float> x_scaled_sums(x_scales.size());
  std::vector<float> x_float(int8 ? 0 : x_elements);
  op.x_codes = x_codes.data();
  op.x_scales = x_scales.data();
  op.x_scaled_sums = x_scaled_sums.data();
  op.x = x_float.data();
  parallel_for_ranges(num_threads, m, 16, [&](int64_t begin, int64_t end) {
    prepare_packed_rows(w, x, precision, begin, end, x_codes.data(), x_scales.data(),
                        x_scaled_sums.data(), x_float.data());
  });
  std::vector<float> bias_float;
  if (bias != nullptr) {
    if constexpr (std::is_same_v<ActT, float>) {
      op.bias = bias;
    } else {
      for (int64_t col = 0; col < w.rows(); ++col)
        bias_float.push_back(to_float(bias[col]));
      op.bias = bias_float.data();
    }
  }
  std::vector<float> y_float;
  if constexpr (std::is_same_v<ActT, float>) {
    op.y = y.data();
  } else {
    y_float.assign(static_cast<std::size_t>(checked_mul(m, w.rows(), "outputs")), 0.0f);
    op.y = y_float.data();
  }
  // One contiguous range of tiles per thread: each thread's share of W is one sequential stream.
  const int64_t tiles = w.tiles();
  const int threads =
      std::max(1, std::min<int>(thread_count(num_threads), static_cast<int>(tiles)));
  parallel_for_ranges(threads, tiles, ceil_div(tiles, threads),
                      [&](int64_t begin, int64_t end) { kernel(&op, begin, end); });
  if constexpr (!std::is_same_v<ActT, float>) convert_outputs(y_float, y.data(), num_threads);
}

template <class ScaleT, class ActT>
void run_packed_gemm(const PackedWeights<ScaleT>& w, const TensorView<const ActT>& x,
                     const TensorView<ActT>& y, const ActT* bias, const GemmOptions& options) {
  check_threads("gemm", options.num_threads);
  const Isa isa = resolve_isa(options.isa);
  if (isa != w.isa()) {
    fail(ErrorCode::invalid_argument, "gemm: the weights were packed for ", to_string(w.isa()),
         " but this call runs ", to_string(isa),
         " (GemmOptions::isa or NIBBLE_ISA); pack them again for ", to_string(isa),
         " or call with GemmOptions::isa = ", to_string(w.isa()));
  }
  const bool int8 = options.activations == ActivationPrecision::int8;  // run_packed checks it
  const nibble_packed_gemm_fn kernel =
      compiled_kernels(isa)->packed_gemm[bits_index(w.bits())][scale_index<ScaleT>()][int8 ? 1 : 0];
  if (kernel == nullptr) {
    fail(ErrorCode::unsupported, "gemm: no packed kernel for ", w.bits(), "-bit weights on ",
         to_string(isa));
  }
  run_packed(w, x, y, bias, options.activations, options.num_threads, kernel);
}

template <int Bits, class ScaleT, bool Int8>
void packed_gemm_scalar_entry(const nibble_packed_operands* op, int64_t begin, int64_t end) {
  cpu::packed_gemm_scalar<Bits, ScaleT, Int8>(op, begin, end);
}

}  // namespace detail

// Packing reads each canonical row once and writes each packed byte once, in parallel over tiles.
template <class ScaleT>
PackedWeights<ScaleT> pack_for_cpu(const QuantTensorView<ScaleT>& w, const PackOptions& options) {
  detail::check_threads("pack_for_cpu", options.num_threads);
  PackedWeights<ScaleT> packed(w.shape(), w.config(), detail::resolve_isa(options.isa));
  const RowLayout& layout = w.layout();
  packed.group_size_ = layout.group_size;
  packed.n_groups_ = layout.n_groups;
  packed.block_ = detail::activation_block(layout.group_size);
  packed.blocks_per_group_ = layout.group_size / packed.block_;
  const int bits = w.bits();
  const int64_t chunk_k = 4 * (8 / bits);
  packed.chunks_per_block_ = detail::ceil_div(packed.block_, chunk_k);
  packed.block_stride_ = packed.chunks_per_block_ * chunk_k;
  const int64_t tiles = packed.tiles();
  const int64_t blocks = detail::checked_mul(layout.n_groups, packed.blocks_per_group_, "blocks");
  const int64_t tile_bytes =
      detail::checked_mul(detail::checked_mul(blocks, packed.chunks_per_block_, "packed tile"),
                          detail::cpu::kPackedChunkBytes, "packed tile");
  packed.codes_.resize(detail::checked_bytes(detail::checked_mul(tiles, tile_bytes, "packed codes"),
                                             1, "packed codes"));
  const int64_t params =
      detail::checked_mul(detail::checked_mul(tiles, layout.n_groups, "packed scales"),
                          detail::cpu::kPackedTileColumns, "packed scales");
  packed.scales_.resize(static_cast<std::size_t>(params));
  if (!w.config().symmetric) packed.zeros_.resize(static_cast<std::size_t>(params));
  uint8_t* codes = packed.codes_.data();
  ScaleT* scales = packed.scales_.data();
  int8_t* zeros = packed.zeros_.empty() ? nullptr : packed.zeros_.data();
  with_bit_packing(bits, [&](auto packing) {
    constexpr int kBits = 8 / decltype(packing)::kCodesPerByte;
    detail::parallel_for_ranges(options.num_threads, tiles, 64, [&](int64_t begin, int64_t end) {
      detail::pack_tiles<kBits>(w, packed, codes, scales, zeros, begin, end);
    });
  });
  return packed;
}

// Y = X * W^T for packed W. X [..., K], Y [..., N], float / fp16 / bf16; as gemm(QuantTensorView).
template <class ScaleT, class ActT>
void gemm(const PackedWeights<ScaleT>& w, TensorView<const ActT> x, TensorView<ActT> y,
          const GemmOptions& options = {}) {
  detail::check_packed_operands<ScaleT, ActT>("gemm", w, x, y, nullptr, nullptr);
  detail::run_packed_gemm(w, x, y, static_cast<const ActT*>(nullptr), options);
}

// Y = X * W^T + bias, bias [N] of the activation type.
template <class ScaleT, class ActT>
void gemm(const PackedWeights<ScaleT>& w, TensorView<const ActT> x, TensorView<ActT> y,
          TensorView<const ActT> bias, const GemmOptions& options = {}) {
  detail::check_packed_operands("gemm", w, x, y, bias.data(), &bias);
  detail::run_packed_gemm(w, x, y, bias.data(), options);
}

// The scalar reference over the packed layout (the x86 kernels' `_ref` twin), on one thread, on
// any ISA: X [..., K] float, Y [..., N] float; any ActivationPrecision.
template <class ScaleT>
void gemm_packed_ref(const PackedWeights<ScaleT>& w, TensorView<const float> x, TensorView<float> y,
                     ActivationPrecision activations = ActivationPrecision::fp32) {
  detail::check_packed_operands<ScaleT, float>("gemm_packed_ref", w, x, y, nullptr, nullptr);
  const bool int8 = activations == ActivationPrecision::int8;
  with_bit_packing(w.bits(), [&](auto packing) {
    constexpr int kBits = 8 / decltype(packing)::kCodesPerByte;
    const nibble_packed_gemm_fn kernel =
        int8 ? &detail::packed_gemm_scalar_entry<kBits, ScaleT, true>
             : &detail::packed_gemm_scalar_entry<kBits, ScaleT, false>;
    detail::run_packed(w, x, y, static_cast<const float*>(nullptr), activations, 1, kernel);
  });
}

}  // namespace nibble
