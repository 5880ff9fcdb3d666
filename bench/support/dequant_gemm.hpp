// What bench_gemv.cpp and bench_gemm.cpp share: cold weight sets, the same-process Eigen fp32
// baseline, the timed loop and its counters, and the run's context (see
// ../shared/design/bench-method.md).
//
//   Y[M, N] = X[M, K] * dequant(W)[N, K]^T     W: 4096 x 4096 by default, fp16 scales, olive RTN
//
// Counters (plain numbers, from this file's own timing; Google Benchmark's time is manual):
//   GBps      (qweight + scales + zeros bytes) / time per call
//   roofline  GBps / the read bandwidth measured at start-up with the same thread count
//   GFLOPs    2 * M * N * K / time per call / 1e9
//   eigen_ms  Eigen fp32 on the dequantized W, same M, N, K and threads, cold weights (median)
//   vs_eigen  eigen time / our time (> 1: nibble is faster)
//   read_ms   a plain streaming read of the same cold bytes (qweight + scales + zeros of another
//             copy), same threads, timed in the same loop as the kernel: the median
//   vs_read   read_ms / our time: 1.0 = the kernel costs no more than reading its weights; unlike
//             roofline it moves with the machine's bandwidth while the benchmark runs
// Label: "<ISA that ran> <activations>", e.g. "avx512vnni int8".
#pragma once

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "nibble/kernels/cpu/gemm.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/quantizer.hpp"
#include "support/roofline.hpp"

namespace nibble::bench {

// Scales are fp16, as in the ONNX / GPTQ checkpoints these kernels read.
using BenchScale = fp16;

// Set once by run_dequant_gemm_main, before any benchmark runs.
struct DequantGemmRun {
  int threads = 1;
  double read_bandwidth_gbps = 0.0;
};

inline DequantGemmRun& dequant_gemm_run() {
  static DequantGemmRun run;
  return run;
}

// ---- cache and memory sizes ---------------------------------------------------------------------

// Bytes of the last-level cache: Google Benchmark's cache list (highest level, data or unified),
// else sysconf, else 32 MiB.
inline std::size_t last_level_cache_bytes() {
  int best_level = 0;
  std::size_t best_bytes = 0;
  for (const auto& cache : benchmark::CPUInfo::Get().caches) {
    if (cache.type == "Instruction" || cache.size <= 0) continue;
    const auto bytes = static_cast<std::size_t>(cache.size);
    if (cache.level > best_level || (cache.level == best_level && bytes > best_bytes)) {
      best_level = cache.level;
      best_bytes = bytes;
    }
  }
#if defined(_SC_LEVEL3_CACHE_SIZE)
  if (best_bytes == 0) {
    const long level3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (level3 > 0) best_bytes = static_cast<std::size_t>(level3);
  }
#endif
  return best_bytes > 0 ? best_bytes : std::size_t{32} << 20;
}

// Bytes a cold weight set must exceed: 4x the last-level cache.
inline std::size_t cold_set_bytes() {
  return 4 * last_level_cache_bytes();
}

// How many copies of `bytes_per_copy` make a cold set (at least `min_copies`), capped so that
// the copies take at most half the memory available now (0 if unknown: no cap).
inline std::size_t cold_copy_count(std::size_t bytes_per_copy, std::size_t min_copies) {
  std::size_t copies = std::max(min_copies, cold_set_bytes() / bytes_per_copy + 1);
  const long pages = sysconf(_SC_AVPHYS_PAGES);
  const long page_bytes = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_bytes > 0) {
    const std::size_t budget =
        static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_bytes) / 2;
    copies = std::min(copies, std::max<std::size_t>(1, budget / bytes_per_copy));
  }
  return copies;
}

// ---- inputs -------------------------------------------------------------------------------------

// fp32 weights [n, k] ~ N(0, 0.02), like a trained linear layer. Deterministic per shape.
inline std::vector<float> random_weights(int64_t n, int64_t k) {
  std::mt19937 random(static_cast<unsigned>(n * 31 + k));
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> values(static_cast<std::size_t>(n * k));
  for (float& value : values)
    value = normal(random);
  return values;
}

// Activations [m, k] ~ N(0, 1). Few and reused every call, as in decoding: they stay hot.
inline std::vector<float> random_activations(int64_t m, int64_t k) {
  std::mt19937 random(static_cast<unsigned>(m * 7 + k));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(static_cast<std::size_t>(m * k));
  for (float& value : values)
    value = normal(random);
  return values;
}

// ---- cold quantized weights ---------------------------------------------------------------------

// Distinct copies of one quantized [n, k] tensor whose total size exceeds the cold-set size;
// a benchmark calls the kernel on copy i % copies at iteration i, so no call finds its weights in
// the cache. One slot: Google Benchmark calls a benchmark function several times (to size its
// iteration count, then per repetition) with the same config, so the set is built once per config.
struct ColdQuantWeights {
  QuantConfig config;
  std::vector<int64_t> shape;
  std::vector<QuantTensor<BenchScale>> copies;
  std::vector<QuantTensorView<BenchScale>> views;
};

// `shape`: [N, K], or [E, N, K] for MoE experts.
inline const ColdQuantWeights& cold_quant_weights(const QuantConfig& config,
                                                  const std::vector<int64_t>& shape) {
  static ColdQuantWeights slot;
  if (!slot.copies.empty() && slot.config == config && slot.shape == shape) return slot;
  slot = ColdQuantWeights{};  // free the previous set before building the next
  slot.config = config;
  slot.shape = shape;
  const Shape tensor_shape(shape);
  const std::vector<float> weights = random_weights(tensor_shape.rows(), tensor_shape.last());
  QuantTensor<BenchScale> original =
      quantize<BenchScale>(TensorView<const float>(weights.data(), tensor_shape), config);
  // At least 3 copies, so the read baseline between calls can use one neither call touches.
  const std::size_t copies = cold_copy_count(static_cast<std::size_t>(original.storage_bytes()), 3);
  slot.copies.reserve(copies);
  for (std::size_t copy = 1; copy < copies; ++copy)
    slot.copies.push_back(original);
  slot.copies.push_back(std::move(original));
  for (const auto& copy : slot.copies)
    slot.views.push_back(copy.view());
  return slot;
}

// The buffers of one copy, for the read baseline.
inline std::vector<ReadSpan> weight_spans(const QuantTensor<BenchScale>& copy) {
  std::vector<ReadSpan> spans{{copy.qweight().data(), copy.qweight().size()},
                              {copy.scales().data(), copy.scales().size() * sizeof(BenchScale)}};
  if (!copy.zeros().empty()) spans.push_back({copy.zeros().data(), copy.zeros().size()});
  return spans;
}

// Times `call(copy index)` over the cold copies as the benchmark's manual time. Between calls
// (untimed by Google Benchmark) it times a read pass over another copy, and `baseline(copy)` on
// another copy when given, so the baselines see the machine as the calls do. Returns seconds per
// call and the medians of the read and baseline times (0 when no baseline).
struct TimedCalls {
  double per_call = 0.0;
  double read = 0.0;
  double baseline = 0.0;
};

template <class Call, class Baseline = std::nullptr_t>
TimedCalls timed_calls(benchmark::State& state, const ColdQuantWeights& weights, int threads,
                       Call&& call, Baseline&& baseline = nullptr) {
  constexpr bool kHasBaseline = !std::is_same_v<std::decay_t<Baseline>, std::nullptr_t>;
  const std::size_t copies = weights.copies.size();
  // The copy half the rotation away (at least 2 on): enough traffic passes between its last use
  // and its use here, and between here and its next call, that it is never found cached.
  const std::size_t distance = std::max<std::size_t>(2, copies / 2);
  std::size_t next = 0;
  call(next);  // untimed: kernel tables are built lazily
  if constexpr (kHasBaseline) baseline(next);
  next = 1 % copies;
  double seconds = 0.0;
  std::vector<double> reads;
  std::vector<double> baselines;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    call(next);
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    state.SetIterationTime(elapsed.count());
    seconds += elapsed.count();
    const std::size_t other = (next + distance) % copies;
    reads.push_back(read_seconds(weight_spans(weights.copies[other]), threads));
    if constexpr (kHasBaseline) {
      const std::size_t third = (other + distance) % copies;
      const auto baseline_start = std::chrono::steady_clock::now();
      baseline(third);
      baselines.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - baseline_start).count());
    }
    next = (next + 1) % copies;
  }
  TimedCalls out;
  if (reads.empty()) return out;
  const auto median = [](std::vector<double>& values) {
    std::nth_element(values.begin(),
                     values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2), values.end());
    return values[values.size() / 2];
  };
  out.per_call = seconds / static_cast<double>(state.iterations());
  out.read = median(reads);
  if (!baselines.empty()) out.baseline = median(baselines);
  return out;
}

// ---- the Eigen fp32 baseline --------------------------------------------------------------------

using RowMajorMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Y[m, n] = X[m, k] * W[n, k]^T in Eigen fp32 with `threads` threads. Eigen parallelises GEMM
// itself (OpenMP, Eigen::setNbThreads) but runs GEMV on one thread, so for m = 1 the rows of W
// are split across the threads here, each thread running Eigen's GEMV on its slice.
inline void eigen_gemm(const float* w, const float* x, float* y, int64_t m, int64_t n, int64_t k,
                       int threads) {
  using Index = Eigen::Index;
  const Eigen::Map<const RowMajorMatrix> weights(w, static_cast<Index>(n), static_cast<Index>(k));
  if (m == 1) {
    const Eigen::Map<const Eigen::VectorXf> input(x, static_cast<Index>(k));
    Eigen::Map<Eigen::VectorXf> output(y, static_cast<Index>(n));
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
    {
#if defined(_OPENMP)
      const auto thread = static_cast<Index>(omp_get_thread_num());
      const auto thread_total = static_cast<Index>(omp_get_num_threads());
#else
      const Index thread = 0;
      const Index thread_total = 1;
#endif
      const Index begin = weights.rows() * thread / thread_total;
      const Index end = weights.rows() * (thread + 1) / thread_total;
      output.segment(begin, end - begin).noalias() = weights.middleRows(begin, end - begin) * input;
    }
    return;
  }
  Eigen::setNbThreads(threads);
  const Eigen::Map<const RowMajorMatrix> input(x, static_cast<Index>(m), static_cast<Index>(k));
  Eigen::Map<RowMajorMatrix> output(y, static_cast<Index>(m), static_cast<Index>(n));
  output.noalias() = input * weights.transpose();
}

// Cold copies of the fp32 dequantized weights (at least 2: 64 MiB each at 4096 x 4096), one slot
// per shape. Eigen's time does not depend on the values, so whichever config first asks for a
// shape provides them.
struct ColdFloatWeights {
  int64_t n = 0;
  int64_t k = 0;
  std::vector<std::vector<float>> copies;
};

inline const ColdFloatWeights& cold_float_weights(const QuantTensorView<BenchScale>& w) {
  static ColdFloatWeights slot;
  if (!slot.copies.empty() && slot.n == w.rows() && slot.k == w.k()) return slot;
  slot = ColdFloatWeights{};
  slot.n = w.rows();
  slot.k = w.k();
  std::vector<float> dequantized = dequantize_ref(w);
  const std::size_t copies = cold_copy_count(dequantized.size() * sizeof(float), 2);
  for (std::size_t copy = 1; copy < copies; ++copy)
    slot.copies.push_back(dequantized);
  slot.copies.push_back(std::move(dequantized));
  return slot;
}

// Eigen's median seconds per call for this shape and thread count, measured once per process
// (cold weights, rotating copies; one untimed warm-up call; >= 5 calls and >= 0.25 s).
inline double eigen_seconds(const QuantTensorView<BenchScale>& w, int64_t m, int threads) {
  static std::map<std::tuple<int64_t, int64_t, int64_t, int>, double> measured;
  const auto key = std::make_tuple(m, w.rows(), w.k(), threads);
  if (const auto found = measured.find(key); found != measured.end()) return found->second;

  const ColdFloatWeights& weights = cold_float_weights(w);
  const std::vector<float> x = random_activations(m, w.k());
  std::vector<float> y(static_cast<std::size_t>(m * w.rows()));
  std::size_t next = 0;
  const auto call = [&] {
    eigen_gemm(weights.copies[next].data(), x.data(), y.data(), m, w.rows(), w.k(), threads);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    next = (next + 1) % weights.copies.size();
  };
  call();
  std::vector<double> samples;
  double total = 0.0;
  while (samples.size() < 200 && (samples.size() < 5 || total < 0.25)) {
    const auto start = std::chrono::steady_clock::now();
    call();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    samples.push_back(elapsed.count());
    total += elapsed.count();
  }
  std::nth_element(samples.begin(),
                   samples.begin() + static_cast<std::ptrdiff_t>(samples.size() / 2),
                   samples.end());
  const double median = samples[samples.size() / 2];
  measured.emplace(key, median);
  return median;
}

// ---- the benchmark body -------------------------------------------------------------------------

// Runtime arguments, in ArgNames order.
enum DequantGemmArg { kArgN = 0, kArgK = 1, kArgM = 2, kArgActivations = 3 };

// One dequant-GEMM benchmark: W quantized with <Bits, GroupSize (-1: per channel), Symmetric>.
template <int Bits, int GroupSize, bool Symmetric>
void run_dequant_gemm(benchmark::State& state) {
  const DequantGemmRun& run = dequant_gemm_run();
  const int64_t n = state.range(kArgN);
  const int64_t k = state.range(kArgK);
  const int64_t m = state.range(kArgM);
  // act: 0 = fp32 activations, 1 = int8 activations (from fp32 X), 2 = bf16 X and Y (fp32
  // activations: the bf16 kernels where the ISA has them)
  const int64_t act = state.range(kArgActivations);
  const bool int8 = act == 1;
  const bool bf16_io = act == 2;
  const QuantConfig config{Bits, GroupSize, Symmetric, ConventionId::olive};

  const ColdQuantWeights& weights = cold_quant_weights(config, {n, k});
  const double eigen = eigen_seconds(weights.views.front(), m, run.threads);

  const std::vector<float> x = random_activations(m, k);
  std::vector<float> y(static_cast<std::size_t>(m * n));
  const TensorView<const float> x_view(x.data(), {m, k});
  const TensorView<float> y_view(y.data(), {m, n});
  std::vector<bf16> x16;
  for (float value : x)
    x16.push_back(from_float<bf16>(value));
  std::vector<bf16> y16(y.size());
  const TensorView<const bf16> x16_view(x16.data(), {m, k});
  const TensorView<bf16> y16_view(y16.data(), {m, n});
  GemmOptions options;
  options.num_threads = run.threads;
  options.activations = int8 ? ActivationPrecision::int8 : ActivationPrecision::fp32;

  const TimedCalls timed = timed_calls(state, weights, run.threads, [&](std::size_t copy) {
    if (bf16_io) {
      gemm(weights.views[copy], x16_view, y16_view, options);
    } else {
      gemm(weights.views[copy], x_view, y_view, options);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  });
  const double per_call = timed.per_call;
  const double read = timed.read;
  if (per_call <= 0.0) return;

  const double bytes = static_cast<double>(weights.copies.front().storage_bytes());
  const double gbps = bytes / per_call / 1e9;
  state.counters["GBps"] = gbps;
  state.counters["roofline"] = gbps / run.read_bandwidth_gbps;
  state.counters["GFLOPs"] = 2.0 * static_cast<double>(m) * static_cast<double>(n) *
                             static_cast<double>(k) / per_call / 1e9;
  state.counters["eigen_ms"] = eigen * 1e3;
  state.counters["vs_eigen"] = eigen / per_call;
  state.counters["read_ms"] = read * 1e3;
  state.counters["vs_read"] = read / per_call;
  state.SetLabel(std::string(gemm_isa(weights.views.front(), options)) + (int8      ? " int8"
                                                                          : bf16_io ? " bf16"
                                                                                    : " fp32"));
}

// ---- registration and main ----------------------------------------------------------------------

inline double min_of(const std::vector<double>& values) {
  return *std::min_element(values.begin(), values.end());
}
inline double max_of(const std::vector<double>& values) {
  return *std::max_element(values.begin(), values.end());
}

// The runtime arguments and settings every dequant-GEMM benchmark shares; `ms` are the M values.
// min and max are reported beside Google Benchmark's mean / median / stddev / cv, so the report
// can say when repetitions spread more than 10%.
inline void dequant_gemm_args(benchmark::internal::Benchmark* benchmark,
                              const std::vector<int64_t>& ms,
                              const std::vector<int64_t>& activations = {0, 1}) {
  benchmark->ArgNames({"N", "K", "M", "act"})
      ->ArgsProduct({{4096}, {4096}, ms, activations})  // act: 0 fp32, 1 int8, 2 bf16 X and Y
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond)
      ->ComputeStatistics("min", min_of)
      ->ComputeStatistics("max", max_of);
}

// "model name" from /proc/cpuinfo, or "unknown".
inline std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const std::size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const std::size_t begin = line.find_first_not_of(' ', colon + 1);
    return begin == std::string::npos ? std::string() : line.substr(begin);
  }
  return "unknown";
}

// The ISAs gemm() can run here (compiled in and supported by this CPU), e.g.
// "generic(avx512bw) avx2 avx512 avx512vnni avx512bf16"; generic names the architecture xsimd
// compiled the portable kernels for.
inline std::string available_isas() {
  const std::vector<float> weights(32, 0.5f);
  const QuantTensor<BenchScale> tiny = quantize<BenchScale>(
      TensorView<const float>(weights.data(), {1, 32}), QuantConfig{4, 32, true});
  std::string list;
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512vnni, Isa::avx512bf16}) {
    GemmOptions options;
    options.isa = isa;
    try {
      const std::string name = gemm_isa(tiny.view(), options);
      if (!list.empty()) list += ' ';
      list += isa == Isa::generic ? "generic(" + name + ")" : name;
    } catch (const Error&) {
      // not compiled in, or not supported by this CPU
    }
  }
  return list;
}

inline std::string format_number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", value);
  return text;
}

// Measures the read bandwidth with the benchmarks' thread count, records the context, runs.
inline int run_dequant_gemm_main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  DequantGemmRun& run = dequant_gemm_run();
  run.threads = default_threads();
  run.read_bandwidth_gbps = measure_read_bandwidth_gbps(run.threads);
  benchmark::AddCustomContext("threads", std::to_string(run.threads));
  benchmark::AddCustomContext("read_bandwidth_GBps", format_number(run.read_bandwidth_gbps));
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("isa_available", available_isas());
  benchmark::AddCustomContext(
      "llc_MiB", format_number(static_cast<double>(last_level_cache_bytes()) / (1 << 20)));
  benchmark::AddCustomContext("weights", "random N(0, 0.02), olive RTN, fp16 scales");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace nibble::bench
