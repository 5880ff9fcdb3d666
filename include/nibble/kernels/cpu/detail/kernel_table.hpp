// The table of kernels for one architecture: the x86 kernels (x86_*.hpp) in the translation
// units built for AVX2 / AVX-512, the portable ones everywhere else.
#pragma once

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "nibble/core/float16.hpp"
#include "nibble/kernels/cpu/detail/packed_kernels.hpp"
#include "nibble/kernels/cpu/detail/portable_kernels.hpp"
#include "nibble/kernels/cpu/detail/x86_bf16_kernels.hpp"
#include "nibble/kernels/cpu/detail/x86_panel_kernels.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"

namespace nibble::detail::cpu {

#if defined(NIBBLE_X86_AVX2_COMPILED)

// Y = X * W^T on x86: the streaming kernel for small M (decoding), panels above.
template <class T, int Bits, class ScaleT, bool Int8>
struct X86Gemm {
  using Stream = std::conditional_t<Int8, StreamI8<T, Bits, ScaleT>, StreamF32<T, Bits, ScaleT>>;
  using Panel = std::conditional_t<Int8, PanelI8<T, Bits, ScaleT>, PanelF32<T, Bits, ScaleT>>;

  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    if (op->m <= T::kStreamMaxM) {
      Stream::run(op, n_begin, n_end, scratch);
    } else {
      Panel::run(op, n_begin, n_end, scratch);
    }
  }
  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    return op->m <= T::kStreamMaxM ? Stream::scratch_bytes(op) : Panel::scratch_bytes(op);
  }
};

// The x86 traits for an xsimd architecture tag, or void.
template <class Arch>
struct X86TraitsFor {
  using type = void;
};
template <>
struct X86TraitsFor<xsimd::fma3<xsimd::avx2>> {
  using type = Avx2Traits;
};
#if defined(NIBBLE_X86_AVX512_COMPILED)
template <>
struct X86TraitsFor<xsimd::avx512bw> {
#if defined(__AVX512VNNI__) && defined(__AVX512BF16__)
  using type = Avx512Traits<true, true>;
#elif defined(__AVX512VNNI__)
  using type = Avx512Traits<true>;
#else
  using type = Avx512Traits<false>;
#endif
};
#endif

#if defined(NIBBLE_X86_AVX512_COMPILED)
// The fp32-activation entries of a BF16 table for 4-bit weights: the bf16 kernel when the call
// qualifies (uses_bf16_kernel), else the fp32 kernels.
template <class T, class ScaleT>
struct Bf16OrFp32 {
  using Fp32 = X86Gemm<T, 4, ScaleT, false>;
  using Bf16 = StreamBf16<T, ScaleT>;
  static void run(const nibble_gemm_operands* op, int64_t n_begin, int64_t n_end, void* scratch) {
    if (uses_bf16_kernel<T>(*op)) {
      Bf16::run(op, n_begin, n_end, scratch);
    } else {
      Fp32::run(op, n_begin, n_end, scratch);
    }
  }
  static std::size_t scratch_bytes(const nibble_gemm_operands* op) {
    return uses_bf16_kernel<T>(*op) ? Bf16::scratch_bytes(op) : Fp32::scratch_bytes(op);
  }
  static std::size_t prepared_bytes(const nibble_gemm_operands* op) {
    return uses_bf16_kernel<T>(*op) ? PreparedBf16::bytes(*op) : prepared_bytes_f32<T, 4>(op);
  }
  static void prepare_shared(const nibble_gemm_operands* op, void* prepared) {
    if (!uses_bf16_kernel<T>(*op)) prepare_shared_f32<T, 4>(op, prepared);
  }
  static void prepare_rows(const nibble_gemm_operands* op, void* prepared, int64_t row_begin,
                           int64_t row_end) {
    if (uses_bf16_kernel<T>(*op)) {
      prepare_rows_bf16(op, prepared, row_begin, row_end);
    } else {
      prepare_rows_f32<T, 4>(op, prepared, row_begin, row_end);
    }
  }
};
#endif

template <class T, int Bits, class ScaleT>
void fill_x86_kernels(nibble_cpu_kernel_table& table, int bits_index, int scale_index) {
  table.gemm[bits_index][scale_index][0] = &X86Gemm<T, Bits, ScaleT, false>::run;
  table.gemm[bits_index][scale_index][1] = &X86Gemm<T, Bits, ScaleT, true>::run;
  table.dequantize_rows[bits_index][scale_index] = &DequantizeRows<T, Bits, ScaleT>::run;
  table.packed_gemm[bits_index][scale_index][0] = &PackedX86<Bits, ScaleT, false>::run;
  table.packed_gemm[bits_index][scale_index][1] = &PackedX86<Bits, ScaleT, true>::run;
  if constexpr (std::is_same_v<ScaleT, float>) {
    table.scratch_bytes[bits_index][0] = &X86Gemm<T, Bits, ScaleT, false>::scratch_bytes;
    table.scratch_bytes[bits_index][1] = &X86Gemm<T, Bits, ScaleT, true>::scratch_bytes;
    table.prepared_bytes[bits_index][0] = &prepared_bytes_f32<T, Bits>;
    table.prepared_bytes[bits_index][1] = &prepared_bytes_i8<T, Bits>;
    table.prepare_shared[bits_index][0] = &prepare_shared_f32<T, Bits>;
    table.prepare_shared[bits_index][1] = &prepare_shared_i8<T, Bits>;
    table.prepare_rows[bits_index][0] = &prepare_rows_f32<T, Bits>;
    table.prepare_rows[bits_index][1] = &prepare_rows_i8<T, Bits>;
  }
#if defined(NIBBLE_X86_AVX512_COMPILED)
  if constexpr (T::kBf16 && Bits == 4) {
    using Both = Bf16OrFp32<T, ScaleT>;
    table.uses_bf16_activations = 1;
    table.gemm[bits_index][scale_index][0] = &Both::run;
    if constexpr (std::is_same_v<ScaleT, float>) {
      table.scratch_bytes[bits_index][0] = &Both::scratch_bytes;
      table.prepared_bytes[bits_index][0] = &Both::prepared_bytes;
      table.prepare_shared[bits_index][0] = &Both::prepare_shared;
      table.prepare_rows[bits_index][0] = &Both::prepare_rows;
    }
  }
#endif
}

#endif  // AVX2

// The x86 traits a table for Arch uses, or void for the portable kernels.
template <class Arch, bool UseX86>
struct TableTraits {
  using type = void;
};
#if defined(NIBBLE_X86_AVX2_COMPILED)
template <class Arch>
struct TableTraits<Arch, true> {
  using type = typename X86TraitsFor<Arch>::type;
};
#endif

template <class Arch, int Bits, class ScaleT>
void fill_portable_kernels(nibble_cpu_kernel_table& table, int bits_index, int scale_index) {
  using Portable = PortableKernels<Arch, Bits, ScaleT>;
  table.gemm[bits_index][scale_index][0] = &Portable::gemm_f32;
  table.gemm[bits_index][scale_index][1] = &Portable::gemm_i8;
  table.dequantize_rows[bits_index][scale_index] = &Portable::dequantize_rows;
  table.packed_gemm[bits_index][scale_index][0] = &packed_gemm_scalar<Bits, ScaleT, false>;
  table.packed_gemm[bits_index][scale_index][1] = &packed_gemm_scalar<Bits, ScaleT, true>;
  table.scratch_bytes[bits_index][0] = &Portable::scratch_bytes;
  table.scratch_bytes[bits_index][1] = &Portable::scratch_bytes;
  table.prepared_bytes[bits_index][0] = &portable_prepared_bytes_f32;
  table.prepared_bytes[bits_index][1] = &portable_prepared_bytes_i8;
  table.prepare_shared[bits_index][0] = &portable_prepare_shared;
  table.prepare_shared[bits_index][1] = &portable_prepare_shared;
  table.prepare_rows[bits_index][0] = &portable_prepare_rows_f32;
  table.prepare_rows[bits_index][1] = &portable_prepare_rows_i8;
}

template <class Arch, bool UseX86, int Bits, class ScaleT>
void fill_kernels(nibble_cpu_kernel_table& table, int bits_index, int scale_index) {
  using X86 = typename TableTraits<Arch, UseX86>::type;
  if constexpr (std::is_void_v<X86>) {
    fill_portable_kernels<Arch, Bits, ScaleT>(table, bits_index, scale_index);
  } else {
#if defined(NIBBLE_X86_AVX2_COMPILED)
    fill_x86_kernels<X86, Bits, ScaleT>(table, bits_index, scale_index);
#endif
  }
}

template <class Arch, bool UseX86, int Bits>
void fill_scale_types(nibble_cpu_kernel_table& table, int bits_index) {
  fill_kernels<Arch, UseX86, Bits, float>(table, bits_index, 0);
  fill_kernels<Arch, UseX86, Bits, fp16>(table, bits_index, 1);
  fill_kernels<Arch, UseX86, Bits, bf16>(table, bits_index, 2);
}

// `isa` names the table in messages and benchmarks (a string literal: it must outlive the table).
// UseX86: the x86 kernels for Arch (in nibble::cpu_kernels' units); false: the portable kernels.
template <class Arch, bool UseX86 = false>
nibble_cpu_kernel_table make_kernel_table(const char* isa) {
  nibble_cpu_kernel_table table{};
  table.isa = isa;
  table.lanes = static_cast<int64_t>(xsimd::batch<float, Arch>::size);
  table.group_multiple = 1;  // the portable kernels take any group size
  // The x86 kernels need whole 16-element slices per group (x86_layout.hpp).
  if constexpr (!std::is_void_v<typename TableTraits<Arch, UseX86>::type>) {
    table.group_multiple = 16;
  }
  fill_scale_types<Arch, UseX86, 2>(table, 0);
  fill_scale_types<Arch, UseX86, 4>(table, 1);
  fill_scale_types<Arch, UseX86, 8>(table, 2);
  return table;
}

}  // namespace nibble::detail::cpu
