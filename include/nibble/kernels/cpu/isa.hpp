// Instruction sets the CPU kernels are built for, and what the running CPU supports.
//
//   generic     the portable kernels, compiled for whatever the including translation unit
//               targets (xsimd's default architecture: SSE2 on a plain x86-64 build, NEON on
//               AArch64, AVX-512 when the consumer builds with -march=native)
//   avx2        AVX2 + FMA + F16C                        (nibble::cpu_kernels, x86-64)
//   avx512      AVX-512 F/BW/DQ/VL + FMA                 (nibble::cpu_kernels, x86-64)
//   avx512vnni  avx512 + VNNI (vpdpbusd for int8 dots)   (nibble::cpu_kernels, x86-64)
//   avx512bf16  avx512vnni + AVX512_BF16 (vdpbf16ps: bf16 activations against 4-bit weights)
//
// Kernel calls pick the best ISA that is both compiled in and supported, unless told otherwise:
// GemmOptions::isa, or the environment variable NIBBLE_ISA (generic | avx2 | avx512 |
// avx512vnni | avx512bf16) for a whole process. Asking for an ISA that is not available is an
// Error.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "nibble/core/error.hpp"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#endif

namespace nibble {

enum class Isa : uint8_t { automatic, generic, avx2, avx512, avx512vnni, avx512bf16 };

inline const char* to_string(Isa isa) {
  switch (isa) {
    case Isa::automatic:
      return "automatic";
    case Isa::generic:
      return "generic";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
    case Isa::avx512vnni:
      return "avx512vnni";
    case Isa::avx512bf16:
      return "avx512bf16";
  }
  return "?";
}

inline Isa isa_from_name(std::string_view name) {
  for (Isa isa :
       {Isa::automatic, Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512vnni, Isa::avx512bf16}) {
    if (name == to_string(isa)) return isa;
  }
  detail::fail(
      ErrorCode::invalid_argument, "ISA \"", name,
      "\" is unknown (expected automatic, generic, avx2, avx512, avx512vnni or avx512bf16)");
}

namespace detail {

// What the running CPU (and its OS) can execute, read once: CPUID traps to the hypervisor in a
// VM (microseconds each), and a kernel call asks for several ISAs.
struct CpuFeatures {
  bool avx2 = false;
  bool avx512 = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
};

inline CpuFeatures detect_cpu_features() {
  CpuFeatures features;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  // __builtin_cpu_supports reads CPUID and checks that the OS saves the wider registers. Clang
  // (14 at least) has no "f16c" name for it: F16C is CPUID leaf 1, ECX bit 29, read directly (the
  // OS check is AVX2's, whose ymm state F16C uses).
  __builtin_cpu_init();
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
  features.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  features.avx512 = features.avx2 && __builtin_cpu_supports("avx512f") &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                    __builtin_cpu_supports("avx512vl");
  features.avx512vnni = features.avx512 && __builtin_cpu_supports("avx512vnni");
  features.avx512bf16 = features.avx512vnni && __builtin_cpu_supports("avx512bf16");
#endif
  return features;
}

inline const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect_cpu_features();
  return features;
}

}  // namespace detail

// Whether the running CPU (and its OS) can execute code for `isa`.
inline bool cpu_supports(Isa isa) {
  const detail::CpuFeatures& features = detail::cpu_features();
  switch (isa) {
    case Isa::automatic:
    case Isa::generic:
      return true;
    case Isa::avx2:
      return features.avx2;
    case Isa::avx512:
      return features.avx512;
    case Isa::avx512vnni:
      return features.avx512vnni;
    case Isa::avx512bf16:
      return features.avx512bf16;
    default:
      return false;
  }
}

// NIBBLE_ISA from the environment (Isa::automatic when unset or empty).
inline Isa isa_from_environment() {
  const char* value = std::getenv("NIBBLE_ISA");
  if (value == nullptr || *value == '\0') return Isa::automatic;
  return isa_from_name(value);
}

}  // namespace nibble
