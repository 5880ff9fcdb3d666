// The table of kernels for one architecture: the fast ISA-specific kernels where they exist,
// the portable ones everywhere else.
#pragma once

#include <xsimd/xsimd.hpp>

#include "nibble/core/float16.hpp"
#include "nibble/kernels/cpu/detail/portable_kernels.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"

namespace nibble::detail::cpu {

template <class Arch, int Bits, class ScaleT>
void fill_kernels(nibble_cpu_kernel_table& table, int bits_index, int scale_index) {
  using Kernels = PortableKernels<Arch, Bits, ScaleT>;
  table.gemm_f32[bits_index][scale_index] = &Kernels::gemm_f32;
  table.gemm_i8[bits_index][scale_index] = &Kernels::gemm_i8;
}

template <class Arch, int Bits>
void fill_scale_types(nibble_cpu_kernel_table& table, int bits_index) {
  fill_kernels<Arch, Bits, float>(table, bits_index, 0);
  fill_kernels<Arch, Bits, fp16>(table, bits_index, 1);
  fill_kernels<Arch, Bits, bf16>(table, bits_index, 2);
}

// `isa` names the table in messages and benchmarks (a string literal: it must outlive the table).
template <class Arch>
nibble_cpu_kernel_table make_kernel_table(const char* isa) {
  nibble_cpu_kernel_table table{};
  table.isa = isa;
  table.lanes = static_cast<int64_t>(xsimd::batch<float, Arch>::size);
  table.group_multiple = 1;  // the portable kernels take any group size
  fill_scale_types<Arch, 2>(table, 0);
  fill_scale_types<Arch, 4>(table, 1);
  fill_scale_types<Arch, 8>(table, 2);
  table.scratch_bytes = &PortableKernels<Arch, 4, float>::scratch_bytes;
  return table;
}

}  // namespace nibble::detail::cpu
