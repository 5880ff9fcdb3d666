// core/parallel.hpp: exceptions thrown inside OpenMP regions reach the caller (instead of
// std::terminate), and the one that comes out is the one a serial loop would throw.
#include "nibble/core/parallel.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "nibble/core/error.hpp"

namespace {

constexpr int kThreadCounts[] = {1, 2, 3, 8};

TEST(Parallel, EveryIndexRunsOnceWithoutFailure) {
  for (int threads : kThreadCounts) {
    std::vector<std::atomic<int>> visits(1000);
    nibble::detail::parallel_for(threads, 1000, [&](int64_t index) {
      visits[static_cast<std::size_t>(index)].fetch_add(1);
    });
    for (const auto& count : visits)
      EXPECT_EQ(count.load(), 1) << threads << " threads";
  }
}

TEST(Parallel, TheLowestFailingIndexIsRethrownWhateverTheThreadCount) {
  for (int threads : kThreadCounts) {
    for (int repeat = 0; repeat < 20; ++repeat) {
      try {
        // Indices 37, 38, ... and 400, 401, ... all fail; a serial loop throws at 37.
        nibble::detail::parallel_for(threads, 1000, [&](int64_t index) {
          if ((index >= 37 && index < 60) || index >= 400) {
            nibble::detail::fail(nibble::ErrorCode::non_finite, "row ", index);
          }
        });
        FAIL() << "no exception with " << threads << " threads";
      } catch (const nibble::Error& error) {
        EXPECT_EQ(error.code(), nibble::ErrorCode::non_finite);
        EXPECT_EQ(std::string(error.what()), "nibble: row 37") << threads << " threads";
      }
    }
  }
}

TEST(Parallel, DynamicScheduleRethrowsTheLowestFailure) {
  for (int threads : kThreadCounts) {
    EXPECT_THROW(
        {
          try {
            nibble::detail::parallel_for_dynamic(threads, 64, [&](int64_t index) {
              if (index % 10 == 9) throw std::runtime_error("task " + std::to_string(index));
            });
          } catch (const std::runtime_error& error) {
            EXPECT_EQ(std::string(error.what()), "task 9");
            throw;
          }
        },
        std::runtime_error);
  }
}

TEST(Parallel, AnyExceptionTypeComesOut) {
  EXPECT_THROW(nibble::detail::parallel_for(2, 10, [](int64_t) { throw std::bad_alloc(); }),
               std::bad_alloc);
  EXPECT_THROW(nibble::detail::parallel_for(2, 10, [](int64_t index) {
                 if (index == 3) throw 42;  // not even a std::exception
               }),
               int);
}

TEST(Parallel, IndicesBelowTheFailureStillRun) {
  for (int threads : kThreadCounts) {
    std::vector<std::atomic<int>> visits(200);
    EXPECT_THROW(nibble::detail::parallel_for(threads, 200,
                                              [&](int64_t index) {
                                                visits[static_cast<std::size_t>(index)] = 1;
                                                if (index == 150) throw std::logic_error("x");
                                              }),
                 std::logic_error);
    for (int64_t index = 0; index <= 150; ++index)
      EXPECT_EQ(visits[static_cast<std::size_t>(index)].load(), 1) << index;
  }
}

TEST(Parallel, RangesCoverTheCountWithAShortLastRange) {
  for (int64_t count : {int64_t{0}, int64_t{1}, int64_t{16}, int64_t{17}, int64_t{1000}}) {
    std::vector<int> covered(static_cast<std::size_t>(count), 0);
    nibble::detail::parallel_for_ranges(2, count, 16, [&](int64_t begin, int64_t end) {
      EXPECT_LT(begin, end);
      EXPECT_LE(end - begin, 16);
      for (int64_t index = begin; index < end; ++index)
        ++covered[static_cast<std::size_t>(index)];
    });
    for (int value : covered)
      EXPECT_EQ(value, 1) << count;
  }
  EXPECT_THROW(nibble::detail::parallel_for_ranges(2, 100, 7,
                                                   [](int64_t begin, int64_t) {
                                                     if (begin >= 50) throw std::range_error("r");
                                                   }),
               std::range_error);
}

TEST(Parallel, ACaptureWithoutFailureRethrowsNothing) {
  nibble::detail::ExceptionCapture capture;
  capture.run(0, [] {});
  EXPECT_FALSE(capture.failed());
  EXPECT_NO_THROW(capture.rethrow());
  capture.run(5, [] { throw std::runtime_error("five"); });
  capture.run(9, [] { FAIL() << "an index after a failure must be skipped"; });
  EXPECT_TRUE(capture.failed());
  EXPECT_THROW(capture.rethrow(), std::runtime_error);
}

}  // namespace
