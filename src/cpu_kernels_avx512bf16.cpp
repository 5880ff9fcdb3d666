// The CPU kernels for AVX-512 F/BW/DQ/VL + VNNI + BF16 (part of nibble::cpu_kernels): the VNNI
// table, with vdpbf16ps kernels for bf16 activations against 4-bit weights.
//
// Compiled with this ISA's flags and with -Dnibble=nibble_isa_avx512bf16 (CMakeLists.txt), so
// every nibble symbol in this unit is distinct from the portable build's: see kernel_abi.hpp.
#include "nibble/kernels/cpu/detail/kernel_table.hpp"

const nibble_cpu_kernel_table* nibble_cpu_kernels_avx512bf16() {
  static const nibble_cpu_kernel_table table =
      nibble::detail::cpu::make_kernel_table<xsimd::avx512bw, true>("avx512bf16");
  return &table;
}
