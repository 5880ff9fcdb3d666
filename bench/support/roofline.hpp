// The machine's memory read bandwidth, measured in the benchmark's own process (see
// ../shared/design/bench-method.md): every kernel's GB/s is reported as a fraction of it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "nibble/core/parallel.hpp"

namespace nibble::bench {

// Best-of-`passes` read bandwidth in GB/s over a `bytes` buffer (much larger than the last-level
// cache) with `threads` OpenMP threads. The kernel sums 64-bit words: integer addition is
// associative, so the compiler vectorises it without -ffast-math and the loop is bound by loads.
inline double measure_read_bandwidth_gbps(int threads, std::size_t bytes = std::size_t{1} << 30,
                                          int passes = 5) {
  const std::size_t words = bytes / sizeof(uint64_t);
  const auto count = static_cast<int64_t>(words);
  std::unique_ptr<uint64_t[]> buffer(new uint64_t[words]);
  // First touch per thread, with the static schedule of the timed loop below (nothing throws).
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(::nibble::detail::thread_count(threads))
#endif
  for (int64_t i = 0; i < count; ++i)
    buffer[static_cast<std::size_t>(i)] = static_cast<uint64_t>(i);

  double best_seconds = 1e30;
  volatile uint64_t sink = 0;
  for (int pass = 0; pass < passes; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    uint64_t sum = 0;
#if defined(_OPENMP)
#pragma omp parallel for reduction(+ : sum) schedule(static) num_threads(::nibble::detail::thread_count(threads))
#endif
    for (int64_t i = 0; i < count; ++i)
      sum += buffer[static_cast<std::size_t>(i)];
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    sink = sink + sum;
    best_seconds = std::min(best_seconds, elapsed.count());
  }
  return static_cast<double>(words * sizeof(uint64_t)) / best_seconds / 1e9;
}

// A buffer a read pass covers.
struct ReadSpan {
  const void* data;
  std::size_t bytes;
};

// Seconds to stream-read the spans once with `threads` threads in one parallel region (each
// thread a contiguous share of each span, the same 64-bit sum): what reading a kernel's operands
// costs when nothing else is done with them.
inline double read_seconds(const std::vector<ReadSpan>& spans, int threads) {
  uint64_t sum = 0;
  const auto start = std::chrono::steady_clock::now();
#if defined(_OPENMP)
#pragma omp parallel reduction(+ : sum) num_threads(::nibble::detail::thread_count(threads))
#endif
  for (const ReadSpan& span : spans) {
    const auto* words = static_cast<const uint64_t*>(span.data);
    const auto count = static_cast<int64_t>(span.bytes / sizeof(uint64_t));
#if defined(_OPENMP)
#pragma omp for schedule(static) nowait
#endif
    for (int64_t i = 0; i < count; ++i)
      sum += words[i];
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  volatile uint64_t sink = sum;
  (void)sink;
  return elapsed.count();
}

// The thread count from OMP_NUM_THREADS (OpenMP's default), so every number says what it used.
inline int default_threads() {
  return nibble::detail::thread_count(0);
}

}  // namespace nibble::bench
