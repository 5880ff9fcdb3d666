// The table of kernels for one architecture: the fast ISA-specific kernels where they exist,
// the portable ones everywhere else.
#pragma once

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "nibble/core/float16.hpp"
#include "nibble/kernels/cpu/detail/avx512_int8_kernels.hpp"
#include "nibble/kernels/cpu/detail/avx512_kernels.hpp"
#include "nibble/kernels/cpu/detail/portable_kernels.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"

namespace nibble::detail::cpu {

inline std::size_t no_preparation_bytes(const nibble_gemm_operands*) {
  return 0;
}
inline void no_preparation(const nibble_gemm_operands*, void*) {}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
inline constexpr bool kAvx512Compiled = true;
#else
inline constexpr bool kAvx512Compiled = false;
#endif

// The VNNI table is the AVX-512 one built in a unit with -mavx512vnni (vpdpbusd for int8 dots).
#if defined(__AVX512VNNI__)
inline constexpr bool kVnniCompiled = true;
#else
inline constexpr bool kVnniCompiled = false;
#endif

template <class Arch>
constexpr bool uses_avx512_kernels() {
  return kAvx512Compiled && std::is_same_v<Arch, xsimd::avx512bw>;
}

template <class Arch, int Bits, class ScaleT>
void fill_kernels(nibble_cpu_kernel_table& table, int bits_index, int scale_index) {
  using Portable = PortableKernels<Arch, Bits, ScaleT>;
  table.gemm_f32[bits_index][scale_index] = &Portable::gemm_f32;
  table.gemm_i8[bits_index][scale_index] = &Portable::gemm_i8;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
  if constexpr (uses_avx512_kernels<Arch>()) {
    table.gemm_f32[bits_index][scale_index] = &avx512::Fp32Kernel<Bits, ScaleT>::run;
    table.prepared_bytes[bits_index][0] = &avx512::prepared_bytes_f32<Bits>;
    table.prepare[bits_index][0] = &avx512::prepare_f32<Bits>;
    table.gemm_i8[bits_index][scale_index] = &avx512::Int8Kernel<Bits, ScaleT, kVnniCompiled>::run;
    table.prepared_bytes[bits_index][1] = &avx512::prepared_bytes_i8<Bits>;
    table.prepare[bits_index][1] = &avx512::prepare_i8<Bits>;
  }
#endif
}

template <class Arch, int Bits>
void fill_scale_types(nibble_cpu_kernel_table& table, int bits_index) {
  for (int int8 = 0; int8 < 2; ++int8) {
    table.prepared_bytes[bits_index][int8] = &no_preparation_bytes;
    table.prepare[bits_index][int8] = &no_preparation;
  }
  fill_kernels<Arch, Bits, float>(table, bits_index, 0);
  fill_kernels<Arch, Bits, fp16>(table, bits_index, 1);
  fill_kernels<Arch, Bits, bf16>(table, bits_index, 2);
}

template <class Arch>
std::size_t scratch_bytes(const nibble_gemm_operands* op, int64_t columns) {
  std::size_t bytes = PortableKernels<Arch, 4, float>::scratch_bytes(op, columns);
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
  if constexpr (uses_avx512_kernels<Arch>()) {
    bytes = std::max(bytes, avx512::Fp32Kernel<4, float>::scratch_bytes(op, columns));
    bytes =
        std::max(bytes, avx512::Int8Kernel<4, float, kVnniCompiled>::scratch_bytes(op, columns));
  }
#endif
  return bytes;
}

// `isa` names the table in messages and benchmarks (a string literal: it must outlive the table).
template <class Arch>
nibble_cpu_kernel_table make_kernel_table(const char* isa) {
  nibble_cpu_kernel_table table{};
  table.isa = isa;
  table.lanes = static_cast<int64_t>(xsimd::batch<float, Arch>::size);
  // The portable kernels take any group size; the AVX-512 ones whole 16-element slices.
  table.group_multiple = uses_avx512_kernels<Arch>() ? 16 : 1;
  fill_scale_types<Arch, 2>(table, 0);
  fill_scale_types<Arch, 4>(table, 1);
  fill_scale_types<Arch, 8>(table, 2);
  table.scratch_bytes = &scratch_bytes<Arch>;
  return table;
}

}  // namespace nibble::detail::cpu
