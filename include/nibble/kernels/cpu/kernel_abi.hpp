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
  // fp32 path: X [m, padded_k], the activations converted to float (pads are 0.0).
  const float* x;
  // int8 path: X quantized per row in blocks of x_block: codes [m, padded_k] (pads 0), scales
  // and code sums [m, padded_k / x_block]. x_block divides group_size.
  const int8_t* x_codes;
  const float* x_scales;
  const int32_t* x_code_sums;
  int64_t x_block;
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
  // X rearranged once per call by the table's `prepare` for its kernels (null when the table
  // needs no preparation): the kernels read it instead of x / x_codes.
  const void* prepared;
};

// Computes Y[:, n_begin:n_end). `scratch` holds nibble_cpu_kernel_table::scratch_bytes bytes
// (64-byte aligned) private to the calling thread.
using nibble_gemm_rows_fn = void (*)(const nibble_gemm_operands* operands, int64_t n_begin,
                                     int64_t n_end, void* scratch);

// The kernels one ISA provides. Indices: [bits: 2, 4, 8 -> 0, 1, 2][scale: f32, f16, bf16].
struct nibble_cpu_kernel_table {
  const char* isa;         // "generic (sse2)", "avx2", "avx512", "avx512vnni"
  int64_t lanes;           // fp32 lanes of the ISA's vectors
  int64_t group_multiple;  // the fast kernels need group_size % group_multiple == 0
  nibble_gemm_rows_fn gemm_f32[3][3];
  nibble_gemm_rows_fn gemm_i8[3][3];
  // Scratch bytes one thread needs for a call covering up to `columns` output columns.
  std::size_t (*scratch_bytes)(const nibble_gemm_operands* operands, int64_t columns);
  // Bytes of prepared X for [bits][int8 ? 1 : 0] (0: no preparation), and the preparation,
  // run once per call before the kernels (single-threaded).
  std::size_t (*prepared_bytes[3][2])(const nibble_gemm_operands* operands);
  void (*prepare[3][2])(const nibble_gemm_operands* operands, void* prepared);
};
