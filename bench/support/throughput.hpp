// Reports a benchmark's throughput as plain numbers: GBps (bytes moved per second) and roofline
// (GBps over the read bandwidth this process measured). The iterations are timed here, with
// manual time, so the counters are ratios rather than Google Benchmark's "per second" rates.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>

namespace nibble::bench {

template <class Body>
void run_timed(benchmark::State& state, double bytes_per_iteration, double read_bandwidth_gbps,
               Body&& body) {
  double seconds = 0.0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    body();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    state.SetIterationTime(elapsed.count());
    seconds += elapsed.count();
  }
  const double gbps = bytes_per_iteration * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["GBps"] = gbps;
  state.counters["roofline"] = gbps / read_bandwidth_gbps;
}

}  // namespace nibble::bench
