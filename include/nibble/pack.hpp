// pack<Bits> / unpack<Bits>: 2-, 4- and 8-bit codes <-> uint8 bytes along the last dimension.
//
// Byte order (Olive pack_to_uint8, ONNX Runtime MatMulNBits, GatherBlockQuantized uint8):
// code i of a row goes to byte i / (8 / Bits) at bit offset (i % (8 / Bits)) * Bits, so
//   4-bit: byte j = code[2j] | code[2j + 1] << 4               (low nibble = even element)
//   2-bit: byte j = code[4j] | code[4j+1] << 2 | code[4j+2] << 4 | code[4j+3] << 6
//   8-bit: byte j = code[j]
// Each row is padded to whole bytes; pad bits are 0. Only 2, 4 and 8 compile.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/tensor_view.hpp"

namespace nibble {

template <int Bits>
struct BitPacking {
  static_assert(Bits == 2 || Bits == 4 || Bits == 8, "nibble: BitPacking supports 2, 4 and 8 bits");

  static constexpr int kCodesPerByte = 8 / Bits;
  static constexpr unsigned kMask = (1u << Bits) - 1u;  // the largest code

  // Bytes for `count` codes.
  static constexpr int64_t packed_bytes(int64_t count) {
    return detail::ceil_div(count, kCodesPerByte);
  }

  // Packs codes[0, count) (each <= kMask, unchecked) into packed[0, packed_bytes(count)).
  static void pack_row(const uint8_t* codes, int64_t count, uint8_t* packed) {
    if constexpr (Bits == 8) {
      std::memcpy(packed, codes, static_cast<std::size_t>(count));
    } else {
      const int64_t full_bytes = count / kCodesPerByte;
      for (int64_t byte = 0; byte < full_bytes; ++byte) {
        const uint8_t* group = codes + byte * kCodesPerByte;
        unsigned value = 0;
        for (int i = 0; i < kCodesPerByte; ++i)
          value |= unsigned{group[i]} << (i * Bits);
        packed[byte] = static_cast<uint8_t>(value);
      }
      const int64_t tail = count - full_bytes * kCodesPerByte;  // codes in a partial last byte
      if (tail != 0) {
        unsigned value = 0;  // bits past the last code stay 0
        for (int64_t i = 0; i < tail; ++i) {
          value |= unsigned{codes[full_bytes * kCodesPerByte + i]} << (i * Bits);
        }
        packed[full_bytes] = static_cast<uint8_t>(value);
      }
    }
  }

  // Unpacks codes[0, count) from packed[0, packed_bytes(count)); pad bits are ignored.
  static void unpack_row(const uint8_t* packed, int64_t count, uint8_t* codes) {
    if constexpr (Bits == 8) {
      std::memcpy(codes, packed, static_cast<std::size_t>(count));
    } else {
      for (int64_t i = 0; i < count; ++i)
        codes[i] = code_at(packed, i);
    }
  }

  // Code i of a packed row.
  static uint8_t code_at(const uint8_t* packed, int64_t i) {
    const auto shift = static_cast<unsigned>((i % kCodesPerByte) * Bits);
    return static_cast<uint8_t>((packed[i / kCodesPerByte] >> shift) & kMask);
  }
};

// Calls f(BitPacking<bits>{}) for a bit width chosen at run time (2, 4 or 8, validated by the
// caller), so the caller's template resolves the width once, outside its loops.
template <class F>
decltype(auto) with_bit_packing(int bits, F&& f) {
  switch (bits) {
    case 2:
      return f(BitPacking<2>{});
    case 4:
      return f(BitPacking<4>{});
    default:
      return f(BitPacking<8>{});
  }
}

// The shape of packed codes: the last dimension K becomes ceil(K * Bits / 8) bytes.
template <int Bits>
Shape packed_shape(const Shape& codes_shape) {
  return codes_shape.with_last(BitPacking<Bits>::packed_bytes(codes_shape.last()));
}

// codes [..., K] (each < 2^Bits) -> packed [..., ceil(K * Bits / 8)]. Throws on a shape
// mismatch or a code that does not fit in Bits (naming its position).
template <int Bits>
void pack(TensorView<const uint8_t> codes, TensorView<uint8_t> packed) {
  if (packed.shape() != packed_shape<Bits>(codes.shape())) {
    detail::fail(ErrorCode::shape_mismatch, "pack<", Bits, ">: packed has shape ", packed.shape(),
                 " but codes ", codes.shape(), " pack to ", packed_shape<Bits>(codes.shape()));
  }
  const int64_t k = codes.cols();
  for (int64_t row = 0; row < codes.rows(); ++row) {
    const uint8_t* row_codes = codes.row(row);
    for (int64_t i = 0; i < k; ++i) {
      if (row_codes[i] > BitPacking<Bits>::kMask) {
        detail::fail(ErrorCode::invalid_argument, "pack<", Bits, ">: code ", int{row_codes[i]},
                     " at row ", row, ", column ", i, " does not fit in ", Bits,
                     " bits (expected 0..", BitPacking<Bits>::kMask, ")");
      }
    }
    BitPacking<Bits>::pack_row(row_codes, k, packed.row(row));
  }
}

template <int Bits>
std::vector<uint8_t> pack(TensorView<const uint8_t> codes) {
  const Shape shape = packed_shape<Bits>(codes.shape());
  std::vector<uint8_t> packed(detail::checked_bytes(shape.numel(), 1, "packed codes"));
  pack<Bits>(codes, TensorView<uint8_t>(packed.data(), shape, "packed"));
  return packed;
}

// packed [..., ceil(K * Bits / 8)] -> codes [..., K]; K is taken from codes.shape().
template <int Bits>
void unpack(TensorView<const uint8_t> packed, TensorView<uint8_t> codes) {
  if (packed.shape() != packed_shape<Bits>(codes.shape())) {
    detail::fail(ErrorCode::shape_mismatch, "unpack<", Bits, ">: packed has shape ", packed.shape(),
                 " but codes of shape ", codes.shape(), " need ",
                 packed_shape<Bits>(codes.shape()));
  }
  for (int64_t row = 0; row < codes.rows(); ++row) {
    BitPacking<Bits>::unpack_row(packed.row(row), codes.cols(), codes.row(row));
  }
}

// packed [..., B] -> codes [..., k], where B must equal ceil(k * Bits / 8).
template <int Bits>
std::vector<uint8_t> unpack(TensorView<const uint8_t> packed, int64_t k) {
  const Shape shape = packed.shape().with_last(k);
  std::vector<uint8_t> codes(detail::checked_bytes(shape.numel(), 1, "unpacked codes"));
  unpack<Bits>(packed, TensorView<uint8_t>(codes.data(), shape, "codes"));
  return codes;
}

}  // namespace nibble
