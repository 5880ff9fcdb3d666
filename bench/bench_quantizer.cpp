// WeightQuantizer throughput: fp32 weights quantized per second, as GB/s of weights read and as
// a fraction of the read bandwidth measured by this process (`roofline`). RTN is compute-bound
// (a divide, two roundings and a clamp per weight, more under fp16 emulation), so the roofline
// fraction says how far quantization is from streaming speed, not a kernel target.
//
//   OMP_NUM_THREADS=2 OMP_PROC_BIND=close ./bench_quantizer
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "nibble/core/float16.hpp"
#include "nibble/quantizer.hpp"
#include "support/roofline.hpp"
#include "support/throughput.hpp"

namespace {

constexpr int64_t kRows = 4096;
constexpr int64_t kCols = 4096;
double g_read_bandwidth_gbps = 0.0;

const std::vector<float>& weights() {
  static const std::vector<float> values = [] {
    std::mt19937 random(1);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::vector<float> data(static_cast<std::size_t>(kRows * kCols));
    for (float& value : data)
      value = normal(random);
    return data;
  }();
  return values;
}

template <class W>
void quantize_benchmark(benchmark::State& state) {
  const nibble::QuantConfig config{static_cast<int>(state.range(1)), state.range(3),
                                   state.range(2) != 0,
                                   static_cast<nibble::ConventionId>(state.range(0))};
  const std::vector<W> input = [] {
    if constexpr (std::is_same_v<W, float>) {
      return weights();
    } else {
      std::vector<W> converted;
      for (float value : weights())
        converted.push_back(nibble::from_float<W>(value));
      return converted;
    }
  }();
  const nibble::TensorView<const W> view(input.data(), {kRows, kCols});
  const double bytes = static_cast<double>(kRows * kCols * sizeof(W));
  nibble::bench::run_timed(state, bytes, g_read_bandwidth_gbps, [&] {
    auto quantized = nibble::quantize<nibble::fp16>(view, config);
    benchmark::DoNotOptimize(quantized.qweight().data());
  });
  state.SetLabel(std::string(nibble::to_string(config.convention)) + " " + nibble::type_name<W>());
}

void BM_Quantize_f32(benchmark::State& state) {
  quantize_benchmark<float>(state);
}
void BM_Quantize_f16(benchmark::State& state) {
  quantize_benchmark<nibble::fp16>(state);
}

// convention: 0 olive, 1 ort, 2 ort_gather, 3 ort_weight_only
BENCHMARK(BM_Quantize_f32)
    ->ArgNames({"convention", "bits", "sym", "group"})
    ->ArgsProduct({{0, 1, 2, 3}, {4}, {0, 1}, {32, 128}})
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime();
BENCHMARK(BM_Quantize_f32)
    ->ArgNames({"convention", "bits", "sym", "group"})
    ->ArgsProduct({{0}, {2, 8}, {0}, {128}})
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime();
BENCHMARK(BM_Quantize_f16)
    ->ArgNames({"convention", "bits", "sym", "group"})
    ->ArgsProduct({{0, 1}, {4}, {0}, {128}})
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const int threads = nibble::bench::default_threads();
  g_read_bandwidth_gbps = nibble::bench::measure_read_bandwidth_gbps(threads);
  benchmark::AddCustomContext("threads", std::to_string(threads));
  benchmark::AddCustomContext("read_bandwidth_GBps", std::to_string(g_read_bandwidth_gbps));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
