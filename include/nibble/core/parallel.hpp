// OpenMP regions that carry exceptions out to the caller, used without warnings when OpenMP is
// off.
//
//   nibble::detail::parallel_for(threads, rows, [&](int64_t row) { quantize_row(row); });
//
// An exception must never leave an OpenMP region: the OpenMP runtime calls std::terminate, which
// aborts the process with no message, no unwinding and no clean-up of its temporary files. Every
// parallel region in nibble therefore runs its body through an ExceptionCapture: the body's
// exception is caught inside the region and rethrown by the calling thread after the region has
// ended. Which exception comes out is the one a serial loop would have thrown (the lowest
// failing index), whatever the thread count or schedule: indices above the lowest failure seen
// so far are skipped, indices below it still run, so the lowest failing index always runs.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>

#if defined(_OPENMP)
#include <omp.h>
#endif

// `#pragma omp` with a directive built by macros (0 threads = OpenMP's default). Use it only
// through the helpers below, which capture exceptions.
#if defined(_OPENMP)
#define NIBBLE_PRAGMA(text) _Pragma(#text)
#else
#define NIBBLE_PRAGMA(text)
#endif

namespace nibble::detail {

// The thread count to use for a request of `requested` threads (<= 0: OpenMP's default).
inline int thread_count(int requested) {
#if defined(_OPENMP)
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

// The first (lowest-index) exception thrown by bodies run through it; rethrown after the region.
class ExceptionCapture {
 public:
  // Runs body() for iteration `index` unless an iteration before it has already failed; never
  // throws.
  template <class Body>
  void run(int64_t index, Body&& body) noexcept {
    if (index > first_failed_.load(std::memory_order_relaxed)) return;
    try {
      body();
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (index < first_failed_.load(std::memory_order_relaxed)) {
        first_failed_.store(index, std::memory_order_relaxed);
        exception_ = std::current_exception();
      }
    }
  }

  bool failed() const noexcept {
    return first_failed_.load(std::memory_order_relaxed) != kNone;
  }

  // On the calling thread, after the region: throws the captured exception, if any.
  void rethrow() const {
    if (exception_) std::rethrow_exception(exception_);
  }

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::atomic<int64_t> first_failed_{kNone};
  std::mutex mutex_;
  std::exception_ptr exception_;
};

// body(index) for index in [0, count) on `threads` OpenMP threads (0 = OpenMP's default), static
// schedule; the lowest failing index's exception is rethrown here, after every thread is done.
template <class Body>
void parallel_for(int threads, int64_t count, const Body& body) {
  ExceptionCapture capture;
#if defined(_OPENMP)
  NIBBLE_PRAGMA(omp parallel for schedule(static) num_threads(::nibble::detail::thread_count(threads)))
#else
  (void)threads;
#endif
  for (int64_t index = 0; index < count; ++index)
    capture.run(index, [&] { body(index); });
  capture.rethrow();
}

// The same with a dynamic schedule of one index at a time (uneven work per index).
template <class Body>
void parallel_for_dynamic(int threads, int64_t count, const Body& body) {
  ExceptionCapture capture;
#if defined(_OPENMP)
  NIBBLE_PRAGMA(omp parallel for schedule(dynamic, 1) num_threads(::nibble::detail::thread_count(threads)))
#else
  (void)threads;
#endif
  for (int64_t index = 0; index < count; ++index)
    capture.run(index, [&] { body(index); });
  capture.rethrow();
}

// body(begin, end) over [0, count) in ranges of `grain` indices (the last one shorter), for
// loops whose per-index work is a few instructions: the capture's check runs once per range and
// the range's inner loop stays a plain, vectorizable loop.
template <class Body>
void parallel_for_ranges(int threads, int64_t count, int64_t grain, const Body& body) {
  if (count <= 0) return;
  const int64_t ranges = (count + grain - 1) / grain;
  parallel_for(threads, ranges, [&](int64_t range) {
    const int64_t begin = range * grain;
    body(begin, count - begin < grain ? count : begin + grain);
  });
}

}  // namespace nibble::detail
