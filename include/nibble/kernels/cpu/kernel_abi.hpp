// The boundary between the CPU-kernel dispatcher and the kernels compiled for one ISA.
//
// Kernels for AVX2 and AVX-512 are the same templates as the portable ones, instantiated in
// translation units compiled with that ISA's flags (the nibble::cpu_kernels library). Those units
// are compiled with `-Dnibble=nibble_isa_<name>`, so every nibble symbol they emit, inline
// functions included, lives in a namespace of its own: no function compiled for AVX-512 can be
// picked by the linker for code that must run on any x86-64. What crosses between them is this
// file: plain structs and function pointers in the global namespace, whose names do not contain
// the token `nibble` on its own and so are the same in every unit.
#pragma once

#include <cstddef>
#include <cstdint>

// Operands of Y = X * dequant(W)^T for output columns [n_begin, n_end), validated and prepared by
// the dispatcher (kernels/cpu/gemm.hpp). All arrays are row-major and dense.
struct nibble_gemm_operands {
  int64_t m;         // rows of X and Y
  int64_t n;         // rows of W = columns of Y
  int64_t padded_k;  // n_groups * group_size: X rows are zero-padded to this length
  const float* x;    // X [m, padded_k] as float (pads are 0.0)
  // When X is bf16 (and activations stay fp32): X [m, padded_k] as bf16 bits (pads 0), for
  // kernels that multiply bf16 directly; null otherwise. x holds the same values.
  const uint16_t* x_bf16;
  int64_t x_block;    // int8 activations: elements per quantization block (divides group_size)
  float* y;           // [m, n] fp32 (the dispatcher converts to the output type)
  const float* bias;  // [n] or null
  // W in the canonical layout.
  const uint8_t* qweight;  // [n, packed_row_bytes]
  int64_t packed_row_bytes;
  const void* scales;    // [n, n_groups] of the scale type the kernel was instantiated for
  const uint8_t* zeros;  // [n, zero_row_bytes] packed zero points, or null when symmetric
  int64_t zero_row_bytes;
  int64_t group_size;
  int64_t n_groups;
  // X in the kernels' own form (decode order, int8 codes and scales, ...), made by the table's
  // prepare functions before any kernel runs; the kernels read it instead of x.
  const void* prepared;
};

// Computes Y[:, n_begin:n_end). `scratch` holds scratch_bytes bytes (64-byte aligned) private to
// the calling thread.
using nibble_gemm_rows_fn = void (*)(const nibble_gemm_operands* operands, int64_t n_begin,
                                     int64_t n_end, void* scratch);

// Operands of out[r, :] = dequant(W[row_of(r), :]) for r in [row_begin, row_end).
struct nibble_dequantize_operands {
  const uint8_t* qweight;  // canonical layout, as in nibble_gemm_operands
  int64_t packed_row_bytes;
  const void* scales;
  const uint8_t* zeros;
  int64_t zero_row_bytes;
  int64_t group_size;
  int64_t n_groups;
  int64_t k;            // elements written per row (W's K)
  const int64_t* rows;  // source row of each output row (validated), or null: row r itself
  float* out;           // [*, out_stride]
  int64_t out_stride;
};

using nibble_dequantize_rows_fn = void (*)(const nibble_dequantize_operands* operands,
                                           int64_t row_begin, int64_t row_end);

// Operands of Y = X * W^T for W in the packed layout (kernels/cpu/packed.hpp,
// docs/packed-layout.md): tiles of 8 output columns, K in activation blocks of 32-byte chunks. Made
// by packed.hpp.
struct nibble_packed_operands {
  int64_t m;                 // rows of X and Y
  int64_t n;                 // columns of Y (the tiles' last one may be partial)
  int64_t n_groups;          // weight groups per column
  int64_t blocks_per_group;  // activation blocks per group
  int64_t chunks_per_block;  // 32-byte chunks per block and tile
  int64_t block_stride;      // elements of a prepared X row per block (chunks_per_block * chunk K)
  const uint8_t* codes;      // [tiles][blocks][chunks_per_block][32]
  const void* scales;        // [tiles][n_groups][8] of the tensor's scale type
  const int8_t* zeros;       // [tiles][n_groups][8] zero points on the stored codes, or null
  int32_t symmetric_zero;    // the zero point on the stored codes when zeros is null
  // int8 activations: codes [m][blocks * block_stride] (0 in pads), scales s_x [m][blocks] and
  // s_x * (sum of the block's codes) [m][blocks]. fp32 activations: x [m][blocks * block_stride].
  const int8_t* x_codes;
  const float* x_scales;
  const float* x_scaled_sums;
  const float* x;
  float* y;           // [m, n]
  const float* bias;  // [n] or null
};

// Computes Y for tiles [tile_begin, tile_end) (output columns 8 * tile_begin ...).
using nibble_packed_gemm_fn = void (*)(const nibble_packed_operands* operands, int64_t tile_begin,
                                       int64_t tile_end);

// The kernels one ISA provides. Indices: [bits: 2, 4, 8 -> 0, 1, 2], [scale: f32, f16, bf16],
// [activations: fp32, int8 -> 0, 1].
struct nibble_cpu_kernel_table {
  const char* isa;            // "generic (sse2)", "avx2", "avx512", "avx512vnni"
  int64_t lanes;              // fp32 lanes of the ISA's vectors
  int64_t group_multiple;     // the fast kernels need group_size % group_multiple == 0
  int uses_bf16_activations;  // 1: kernels read nibble_gemm_operands::x_bf16 when given
  nibble_gemm_rows_fn gemm[3][3][2];
  nibble_dequantize_rows_fn dequantize_rows[3][3];
  // Over the packed layout: [bits][scale][activations], as gemm.
  nibble_packed_gemm_fn packed_gemm[3][3][2];
  // Scratch bytes one thread needs for a call (any columns).
  std::size_t (*scratch_bytes[3][2])(const nibble_gemm_operands* operands);
  // Bytes of prepared X; its parts shared by all rows (once, single-threaded); then rows
  // [row_begin, row_end) of it (rows in parallel). All run before the kernels.
  std::size_t (*prepared_bytes[3][2])(const nibble_gemm_operands* operands);
  void (*prepare_shared[3][2])(const nibble_gemm_operands* operands, void* prepared);
  void (*prepare_rows[3][2])(const nibble_gemm_operands* operands, void* prepared,
                             int64_t row_begin, int64_t row_end);
};
