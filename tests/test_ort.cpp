// ONNX Runtime views. The op's own indexing (contrib op spec) is the independent truth here:
//   MatMulNBits: B[n][kb][j] holds elements kb * block + j * 8/bits + i at bit offset i * bits;
//                zero point of block kb of row n at byte n * zp_row + kb / (8/bits), offset
//                (kb % (8/bits)) * bits; missing zero points mean 2^(bits-1).
//   GatherBlockQuantized INT4/UINT4: element i of the flat C-order tensor in byte i / 2, low
//                nibble when i is even; zero points likewise over the scales' shape.
//   GatherBlockQuantized uint8: element (r, c) of data [rows, row_bytes] in byte r * row_bytes +
//                c / (8/bits) at bit offset (c % (8/bits)) * bits; zero points per row likewise.
//   Tied embeddings: ORT GenAI's builder feeds Reshape(B, [vocab, hidden * bits / 8]) and lm_head's
//                scales / zero points to the Gather, so both ops must read one table.
// Bit-exactness against onnxruntime itself is tested from Python.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "nibble/formats/ort.hpp"
#include "nibble/quantizer.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::ConventionId;
using nibble::Error;
using nibble::ErrorCode;
using nibble::fp16;
using nibble::QuantConfig;
using nibble::QuantTensor;
using nibble::Shape;
using nibble::TensorView;

template <class ScaleT = float>
QuantTensor<ScaleT> quantize(const Shape& shape, const QuantConfig& config, uint32_t seed = 3) {
  const std::vector<float> weights = nibble::testing::gaussian(shape.numel(), seed);
  return nibble::quantize<ScaleT>(TensorView<const float>(weights.data(), shape), config);
}

// Element (n, k) of MatMulNBits inputs by the op's indexing.
int matmul_nbits_code(const nibble::ort::MatMulNBitsInputs<float>& in, int64_t n, int64_t k) {
  const int64_t per_byte = 8 / in.bits;
  const int64_t block = k / in.block_size;
  const int64_t within = k % in.block_size;
  const uint8_t byte = in.B[(n * in.B_shape[1] + block) * in.B_shape[2] + within / per_byte];
  return (byte >> ((within % per_byte) * in.bits)) & ((1 << in.bits) - 1);
}

int matmul_nbits_zero_point(const nibble::ort::MatMulNBitsInputs<float>& in, int64_t n,
                            int64_t block) {
  if (in.zero_points == nullptr) return 1 << (in.bits - 1);
  const int64_t per_byte = 8 / in.bits;
  const uint8_t byte = in.zero_points[n * in.zero_points_shape[1] + block / per_byte];
  return (byte >> ((block % per_byte) * in.bits)) & ((1 << in.bits) - 1);
}

TEST(MatMulNBits, IsAZeroCopyReshapeOfTheCanonicalLayout) {
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (int64_t k : {16, 100, 128, 257}) {
        const auto q = quantize(Shape{7, k}, QuantConfig{bits, 32, symmetric, ConventionId::ort});
        const auto in = nibble::ort::as_matmul_nbits(q.view());
        SCOPED_TRACE("bits " + std::to_string(bits) + " K " + std::to_string(k));
        EXPECT_EQ(in.K, k);
        EXPECT_EQ(in.N, 7);
        EXPECT_EQ(in.bits, bits);
        EXPECT_EQ(in.block_size, 32);
        EXPECT_EQ(in.B, q.qweight().data());
        EXPECT_EQ(in.scales, q.scales().data());
        const int64_t n_blocks = (k + 31) / 32;
        EXPECT_EQ(in.B_shape, (std::array<int64_t, 3>{7, n_blocks, 32 * bits / 8}));
        EXPECT_EQ(in.scales_shape, (std::array<int64_t, 2>{7, n_blocks}));
        EXPECT_EQ(in.zero_points == nullptr, symmetric);
        EXPECT_EQ(in.zero_points_shape[1], (n_blocks * bits + 7) / 8);
        for (int64_t n = 0; n < 7; ++n) {
          for (int64_t col = 0; col < k; ++col) {
            ASSERT_EQ(matmul_nbits_code(in, n, col), q.view().code(n, col)) << n << "," << col;
          }
          for (int64_t block = 0; block < n_blocks; ++block) {
            ASSERT_EQ(matmul_nbits_zero_point(in, n, block), q.view().zero_point(n, block));
          }
        }
        // And back: the initializers view as the same tensor.
        const auto back = nibble::ort::view_matmul_nbits<float>(
            in.K, in.N, bits, in.block_size, in.B, in.B_shape[0] * in.B_shape[1] * in.B_shape[2],
            in.scales, in.N * n_blocks, in.zero_points,
            symmetric ? 0 : in.N * in.zero_points_shape[1]);
        EXPECT_EQ(nibble::dequantize_ref(back), nibble::dequantize_ref(q.view()));
      }
    }
  }
}

TEST(MatMulNBits, RejectsWhatTheOpCannotExpress) {
  const auto code_and_message = [](auto&& call) {
    try {
      call();
    } catch (const Error& error) {
      return std::make_pair(error.code(), std::string(error.what()));
    }
    return std::make_pair(ErrorCode::io, std::string());
  };
  // Per-channel with K = 100: block_size 100 is not a power of two; suggest 128.
  const auto per_channel = quantize(Shape{3, 100}, QuantConfig{4, nibble::kPerChannel, false});
  const auto [code, message] =
      code_and_message([&] { nibble::ort::as_matmul_nbits(per_channel.view()); });
  EXPECT_EQ(code, ErrorCode::unsupported);
  EXPECT_NE(message.find("group_size = 128"), std::string::npos) << message;
  // Group 48 is not a power of two; group 8 is below 16.
  EXPECT_THROW(
      nibble::ort::as_matmul_nbits(quantize(Shape{3, 96}, QuantConfig{4, 48, true}).view()), Error);
  EXPECT_THROW(nibble::ort::as_matmul_nbits(quantize(Shape{3, 96}, QuantConfig{4, 8, true}).view()),
               Error);
  // Rank 3: slice an expert first.
  const auto experts = quantize(Shape{2, 3, 64}, QuantConfig{4, 32, false});
  EXPECT_THROW(nibble::ort::as_matmul_nbits(experts.view()), Error);
  EXPECT_NO_THROW(nibble::ort::as_matmul_nbits(experts.view().slice(1)));
}

TEST(MatMulNBits, PerChannelPow2KIsOneBlock) {
  const auto q = quantize<fp16>(Shape{5, 64}, QuantConfig{8, nibble::kPerChannel, true});
  const auto in = nibble::ort::as_matmul_nbits(q.view());
  EXPECT_EQ(in.block_size, 64);
  EXPECT_EQ(in.B_shape, (std::array<int64_t, 3>{5, 1, 64}));
}

TEST(GatherBlockQuantized, Uint8DataIsZeroCopyWhenKIsWholeBlocks) {
  const auto q = quantize(Shape{11, 96}, QuantConfig{4, 32, false, ConventionId::ort_gather});
  const auto in = nibble::ort::as_gather_block_quantized(q.view());
  EXPECT_EQ(in.gather_axis, 0);
  EXPECT_EQ(in.quantize_axis, 1);
  EXPECT_EQ(in.block_size, 32);
  EXPECT_EQ(in.bits, 4);
  EXPECT_EQ(in.data, q.qweight().data());
  EXPECT_EQ(in.data_shape, (std::vector<int64_t>{11, 48}));
  EXPECT_EQ(in.scales_shape, (std::vector<int64_t>{11, 3}));
  EXPECT_EQ(in.zero_points_shape, (std::vector<int64_t>{11, 2}));
  EXPECT_EQ(in.zero_points, q.zeros().data());
  // K = 100 is not whole blocks of 32: the uint8 layout cannot hold the row padding.
  EXPECT_THROW(nibble::ort::as_gather_block_quantized(
                   quantize(Shape{4, 100}, QuantConfig{4, 32, false}).view()),
               Error);
}

TEST(GatherBlockQuantized, Int4DataIsFlatPackedAndSignedWhenSymmetric) {
  for (bool symmetric : {false, true}) {
    // K = 45 with blocks of 16: elements flat-pack across row boundaries (odd row length).
    const auto q = quantize(Shape{3, 45}, QuantConfig{4, 16, symmetric, ConventionId::ort_gather});
    const auto out = nibble::ort::to_gather_block_quantized_int4(q.view());
    EXPECT_EQ(out.signed_data, symmetric);
    EXPECT_EQ(out.shape, (std::vector<int64_t>{3, 45}));
    ASSERT_EQ(out.data.size(), 68u);  // ceil(135 / 2)
    for (int64_t flat = 0; flat < 135; ++flat) {
      const int stored = (out.data[static_cast<std::size_t>(flat / 2)] >> ((flat % 2) * 4)) & 0xf;
      const int code = q.view().code(flat / 45, flat % 45);
      // Signed storage: the value code - 8 as a two's-complement nibble.
      const int expected = symmetric ? ((code - 8) & 0xf) : code;
      ASSERT_EQ(stored, expected) << flat;
    }
    EXPECT_EQ(out.data.back() >> 4, 0);  // the odd element count leaves a 0 pad nibble
    if (symmetric) {
      EXPECT_TRUE(out.zero_points.empty());
    } else {
      ASSERT_EQ(out.zero_points.size(), 5u);  // 3 rows * 3 blocks = 9 nibbles
      for (int64_t flat = 0; flat < 9; ++flat) {
        const int stored =
            (out.zero_points[static_cast<std::size_t>(flat / 2)] >> ((flat % 2) * 4)) & 0xf;
        ASSERT_EQ(stored, q.view().zero_point(flat / 3, flat % 3)) << flat;
      }
    }
  }
  EXPECT_THROW(nibble::ort::to_gather_block_quantized_int4(
                   quantize(Shape{3, 64}, QuantConfig{8, 16, true}).view()),
               Error);
}

// Element (r, c) of uint8 GatherBlockQuantized data by the op's indexing, and a zero point.
int gather_uint8_code(const nibble::ort::GatherBlockQuantizedInputs<float>& in, int64_t r,
                      int64_t c) {
  const int64_t per_byte = 8 / in.bits;
  const uint8_t byte = in.data[r * in.data_shape[1] + c / per_byte];
  return (byte >> ((c % per_byte) * in.bits)) & ((1 << in.bits) - 1);
}

int gather_uint8_zero_point(const nibble::ort::GatherBlockQuantizedInputs<float>& in, int64_t r,
                            int64_t block) {
  if (in.zero_points == nullptr) return 1 << (in.bits - 1);
  const int64_t per_byte = 8 / in.bits;
  const uint8_t byte = in.zero_points[r * in.zero_points_shape[1] + block / per_byte];
  return (byte >> ((block % per_byte) * in.bits)) & ((1 << in.bits) - 1);
}

// Both ops' element (r, c) and zero points equal the table's, by each op's own indexing.
void expect_both_ops_read_the_table(const nibble::ort::TiedEmbeddingInputs<float>& tied,
                                    const nibble::QuantTensorView<float>& table) {
  for (int64_t r = 0; r < table.rows(); ++r) {
    for (int64_t c = 0; c < table.k(); ++c) {
      ASSERT_EQ(matmul_nbits_code(tied.lm_head, r, c), table.code(r, c)) << r << "," << c;
      ASSERT_EQ(gather_uint8_code(tied.embedding, r, c), table.code(r, c)) << r << "," << c;
    }
    for (int64_t block = 0; block < table.layout().n_groups; ++block) {
      ASSERT_EQ(matmul_nbits_zero_point(tied.lm_head, r, block), table.zero_point(r, block));
      ASSERT_EQ(gather_uint8_zero_point(tied.embedding, r, block), table.zero_point(r, block));
    }
  }
}

TEST(TiedEmbedding, Vocab13xHidden128IsOneSetOfBytesThroughTheBuildersReshape) {
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + (symmetric ? " sym" : " asym"));
      const auto table =
          quantize(Shape{13, 128}, QuantConfig{bits, 32, symmetric, ConventionId::ort_weight_only});
      const auto tied = nibble::ort::as_tied_embedding(table.view(), /*allow_copy=*/false);
      EXPECT_EQ(tied.data, nibble::ort::TiedData::reshape);
      EXPECT_TRUE(tied.shares_codes());
      EXPECT_TRUE(tied.shares_zero_points());
      EXPECT_TRUE(tied.data_copy.empty());
      // The same bytes for everything: B, data; scales; zero points (null for both when symmetric).
      EXPECT_EQ(tied.embedding.data, tied.lm_head.B);
      EXPECT_EQ(tied.embedding.data, table.qweight().data());
      EXPECT_EQ(tied.embedding.scales, tied.lm_head.scales);
      EXPECT_EQ(tied.embedding.zero_points, tied.lm_head.zero_points);
      EXPECT_EQ(tied.embedding.zero_points == nullptr, symmetric);
      // The builder's Reshape: [vocab, hidden * bits / 8], the element count of B.
      const std::array<int64_t, 2> flat{13, 128 * bits / 8};
      EXPECT_EQ(tied.reshape_shape, flat);
      EXPECT_EQ(tied.embedding.data_shape, (std::vector<int64_t>{flat[0], flat[1]}));
      EXPECT_EQ(tied.lm_head.B_shape[0] * tied.lm_head.B_shape[1] * tied.lm_head.B_shape[2],
                flat[0] * flat[1]);
      EXPECT_EQ(tied.embedding.scales_shape,
                (std::vector<int64_t>{tied.lm_head.scales_shape[0], tied.lm_head.scales_shape[1]}));
      EXPECT_EQ(tied.embedding.zero_points_shape,
                (std::vector<int64_t>{tied.lm_head.zero_points_shape[0],
                                      tied.lm_head.zero_points_shape[1]}));
      // The builder's attributes: bits and block_size of lm_head, gather_axis 0, quantize_axis 1.
      EXPECT_EQ(tied.embedding.bits, tied.lm_head.bits);
      EXPECT_EQ(tied.embedding.block_size, tied.lm_head.block_size);
      EXPECT_EQ(tied.embedding.gather_axis, 0);
      EXPECT_EQ(tied.embedding.quantize_axis, 1);
      expect_both_ops_read_the_table(tied, table.view());
    }
  }
}

TEST(TiedEmbedding, Hidden40Block32CopiesOnlyTheCodesWithoutRowPads) {
  // 40 codes a row, 64 in B (two blocks of 32): the Reshape's element count would be wrong.
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + (symmetric ? " sym" : " asym"));
      const auto table =
          quantize(Shape{9, 40}, QuantConfig{bits, 32, symmetric, ConventionId::ort});
      const auto tied = nibble::ort::as_tied_embedding(table.view());
      EXPECT_EQ(tied.data, nibble::ort::TiedData::unpadded_uint8);
      EXPECT_FALSE(tied.shares_codes());
      EXPECT_TRUE(tied.shares_zero_points());
      EXPECT_EQ(tied.embedding.data, tied.data_copy.data());
      EXPECT_EQ(tied.data_copy.size(), static_cast<std::size_t>(9 * 40 * bits / 8));
      EXPECT_EQ(tied.embedding.data_shape, (std::vector<int64_t>{9, 40 * bits / 8}));
      EXPECT_EQ(tied.embedding.scales, table.scales().data());
      EXPECT_EQ(tied.embedding.zero_points, tied.lm_head.zero_points);
      EXPECT_EQ(tied.embedding.scales_shape, (std::vector<int64_t>{9, 2}));
      EXPECT_EQ(tied.lm_head.B_shape, (std::array<int64_t, 3>{9, 2, 32 * bits / 8}));
      EXPECT_EQ(tied.lm_head.B, table.qweight().data());  // lm_head itself is never a copy
      expect_both_ops_read_the_table(tied, table.view());
    }
  }
}

TEST(TiedEmbedding, Hidden45At4BitsIsInt4DataWithSharedScales) {
  // 45 codes are not whole bytes: ORT's INT4 / UINT4 typed data, flat-packed, is what remains.
  for (bool symmetric : {false, true}) {
    const auto table =
        quantize(Shape{5, 45}, QuantConfig{4, 16, symmetric, ConventionId::ort_gather});
    const auto tied = nibble::ort::as_tied_embedding(table.view());
    const auto typed = nibble::ort::to_gather_block_quantized_int4(table.view());
    EXPECT_EQ(tied.data, nibble::ort::TiedData::int4);
    EXPECT_EQ(tied.signed_data, symmetric);
    EXPECT_FALSE(tied.shares_zero_points());
    EXPECT_EQ(tied.data_copy, typed.data);
    EXPECT_EQ(tied.zero_points_copy, typed.zero_points);
    EXPECT_EQ(tied.embedding.data, tied.data_copy.data());
    EXPECT_EQ(tied.embedding.data_shape, (std::vector<int64_t>{5, 45}));  // elements, not bytes
    EXPECT_EQ(tied.embedding.scales, tied.lm_head.scales);
    EXPECT_EQ(tied.embedding.zero_points, symmetric ? nullptr : tied.zero_points_copy.data());
    EXPECT_EQ(tied.embedding.zero_points_shape, (std::vector<int64_t>{5, 3}));
  }
}

TEST(TiedEmbedding, MovingKeepsTheEmbeddingPointingAtItsOwnCopy) {
  const auto table = quantize(Shape{3, 40}, QuantConfig{8, 16, false});
  auto tied = nibble::ort::as_tied_embedding(table.view());
  const uint8_t* data = tied.data_copy.data();
  const nibble::ort::TiedEmbeddingInputs<float> moved(std::move(tied));
  EXPECT_EQ(moved.embedding.data, data);
  EXPECT_EQ(moved.data_copy.data(), data);
}

TEST(TiedEmbedding, RejectsWhatNeitherFormCanHold) {
  const auto message_of = [](auto&& call) {
    try {
      call();
    } catch (const Error& error) {
      EXPECT_EQ(error.code(), ErrorCode::unsupported);
      return std::string(error.what());
    }
    return std::string("no error");
  };
  // The builder's form only: a table needing a copy says why the Reshape cannot work.
  const auto padded = quantize(Shape{4, 40}, QuantConfig{4, 32, true});
  const std::string reshape_message =
      message_of([&] { nibble::ort::as_tied_embedding(padded.view(), false); });
  EXPECT_NE(reshape_message.find("not a multiple of block_size 32"), std::string::npos)
      << reshape_message;
  // 2 bits, hidden 45: neither whole bytes per row nor a 4-bit typed layout.
  const auto two_bit = quantize(Shape{4, 45}, QuantConfig{2, 16, false});
  const std::string bits_message =
      message_of([&] { nibble::ort::as_tied_embedding(two_bit.view()); });
  EXPECT_NE(bits_message.find("not whole bytes per row"), std::string::npos) << bits_message;
  // Block sizes neither op takes, and tables that are not [vocab, hidden].
  EXPECT_THROW(
      nibble::ort::as_tied_embedding(quantize(Shape{4, 96}, QuantConfig{4, 48, true}).view()),
      Error);
  EXPECT_THROW(
      nibble::ort::as_tied_embedding(quantize(Shape{2, 4, 64}, QuantConfig{4, 32, true}).view()),
      Error);
}

}  // namespace
