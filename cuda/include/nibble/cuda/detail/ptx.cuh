// PTX building blocks shared by nibble's CUDA kernels: asynchronous copies, ldmatrix, lop3,
// register reinterpretation and paired output stores, each with what it does spelled out.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "nibble/core/float16.hpp"

namespace nibble::cuda::ptx {

template <class T>
struct Types;
template <>
struct Types<fp16> {
  using scalar = __half;
  using pair = __half2;
};
template <>
struct Types<bf16> {
  using scalar = __nv_bfloat16;
  using pair = __nv_bfloat162;
};

__device__ inline uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// An L2 cache policy that marks what it loads as first to evict: weights stream through once per
// GEMM and should not push X or the scales out of L2. Made once per thread, used by every copy.
__device__ inline uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// 16 bytes global -> shared, asynchronously, under an L2 cache policy.
__device__ inline void copy_16_with_policy(void* shared, const void* global, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(
                   shared_address(shared)),
               "l"(global), "l"(policy));
}

// 16 bytes global -> shared, or 16 zero bytes when !valid (source size 0: nothing is read).
__device__ inline void copy_16_or_zero(void* shared, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)),
               "l"(global), "r"(valid ? 16 : 0));
}

__device__ inline void commit_copies() {
  asm volatile("cp.async.commit_group;\n" ::);
}

template <int pending>
__device__ inline void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

__device__ inline void load_matrix_x4(uint32_t (&registers)[4], const void* shared) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(registers[0]), "=r"(registers[1]), "=r"(registers[2]), "=r"(registers[3])
               : "r"(shared_address(shared)));
}

// (a & b) | c in one instruction. lop3 takes the truth table of f(a, b, c) evaluated on the
// constants a = 0xF0, b = 0xCC, c = 0xAA: (0xF0 & 0xCC) | 0xAA = 0xEA.
__device__ inline uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t result;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(result) : "r"(a), "r"(b), "r"(c));
  return result;
}

__device__ inline float to_float(__half value) {
  return __half2float(value);
}
__device__ inline float to_float(__nv_bfloat16 value) {
  return __bfloat162float(value);
}

template <class Pair>
__device__ inline Pair as_pair(uint32_t bits) {
  Pair pair;
  static_assert(sizeof(pair) == sizeof(bits), "a pair of 16-bit values is 32 bits");
  memcpy(&pair, &bits, sizeof(bits));
  return pair;
}

template <class Pair>
__device__ inline uint32_t as_bits(Pair pair) {
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

// Two adjacent output columns, rounded to T (round to nearest even) and stored as one 32-bit word.
template <class T>
__device__ inline void store_pair(T* at, float first, float second) {
  using Pair = typename Types<T>::pair;
  Pair out;
  if constexpr (std::is_same_v<T, fp16>) {
    out = __floats2half2_rn(first, second);
  } else {
    out = __floats2bfloat162_rn(first, second);
  }
  *reinterpret_cast<Pair*>(at) = out;
}

}  // namespace nibble::cuda::ptx
