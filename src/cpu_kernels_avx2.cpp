// The CPU kernels for AVX2 + FMA + F16C (part of nibble::cpu_kernels).
//
// Compiled with this ISA's flags and with -Dnibble=nibble_isa_avx2 (CMakeLists.txt), so every
// nibble symbol in this unit is distinct from the portable build's: see kernel_abi.hpp.
#include "nibble/kernels/cpu/detail/kernel_table.hpp"

const nibble_cpu_kernel_table* nibble_cpu_kernels_avx2() {
  static const nibble_cpu_kernel_table table =
      nibble::detail::cpu::make_kernel_table<xsimd::fma3<xsimd::avx2>, true>("avx2");
  return &table;
}
