// Counts the bytes that operator new holds, to bound a function's memory in a test without
// timing or RSS (both noisy): deterministic for a given input and standard library.
//
//   // in exactly one translation unit of the test binary:
//   NIBBLE_DEFINE_COUNTING_OPERATOR_NEW
//   ...
//   nibble::testing::AllocationPeak peak;      // starts measuring
//   parse(hostile_input);
//   EXPECT_LE(peak.bytes(), 4 * input_size);   // most bytes held at once since `peak` began
//
// Replaces the global scalar and array operator new / delete (the aligned forms keep the
// library's own, which pair with each other). Each block carries a 16-byte prefix holding its
// size, so alignment stays that of malloc. Not for multi-threaded measurements.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace nibble::testing {

struct AllocationCounts {
  std::atomic<long long> current{0};
  std::atomic<long long> peak{0};
};

inline AllocationCounts& allocation_counts() {
  static AllocationCounts counts;
  return counts;
}

inline void* counted_allocate(std::size_t size) {
  constexpr std::size_t kPrefix = 16;
  void* block = std::malloc(size + kPrefix);
  if (block == nullptr) throw std::bad_alloc();
  *static_cast<std::size_t*>(block) = size;
  AllocationCounts& counts = allocation_counts();
  const long long now = counts.current += static_cast<long long>(size);
  long long peak = counts.peak.load();
  while (now > peak && !counts.peak.compare_exchange_weak(peak, now)) {
  }
  return static_cast<char*>(block) + kPrefix;
}

inline void counted_free(void* pointer) noexcept {
  if (pointer == nullptr) return;
  void* block = static_cast<char*>(pointer) - 16;
  allocation_counts().current -= static_cast<long long>(*static_cast<std::size_t*>(block));
  std::free(block);
}

// The most bytes held at once since construction, above what was held at construction.
class AllocationPeak {
 public:
  AllocationPeak() : start_(allocation_counts().current.load()) {
    allocation_counts().peak = start_;
  }
  long long bytes() const { return allocation_counts().peak.load() - start_; }

 private:
  long long start_;
};

}  // namespace nibble::testing

#define NIBBLE_DEFINE_COUNTING_OPERATOR_NEW                                                     \
  void* operator new(std::size_t size) { return nibble::testing::counted_allocate(size); }     \
  void* operator new[](std::size_t size) { return nibble::testing::counted_allocate(size); }   \
  void operator delete(void* pointer) noexcept { nibble::testing::counted_free(pointer); }     \
  void operator delete[](void* pointer) noexcept { nibble::testing::counted_free(pointer); }   \
  void operator delete(void* pointer, std::size_t) noexcept {                                  \
    nibble::testing::counted_free(pointer);                                                    \
  }                                                                                            \
  void operator delete[](void* pointer, std::size_t) noexcept {                                \
    nibble::testing::counted_free(pointer);                                                    \
  }
