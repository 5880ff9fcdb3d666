// OpenMP, used without warnings when it is off: the pragma is emitted only under _OPENMP.
#pragma once

#if defined(_OPENMP)
#include <omp.h>
#endif

// `#pragma omp parallel for` over the next loop with `threads` threads (0 = OpenMP's default).
// Without OpenMP the loop simply runs serially.
#if defined(_OPENMP)
#define NIBBLE_PRAGMA(text) _Pragma(#text)
#define NIBBLE_PARALLEL_FOR(threads) \
  NIBBLE_PRAGMA(omp parallel for schedule(static) num_threads(::nibble::detail::thread_count(threads)))
#else
#define NIBBLE_PARALLEL_FOR(threads)
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

}  // namespace nibble::detail
