// MoE GEMM: T tokens routed to their top-2 of E = 8 experts, W [8, 4096, 4096] cold, against the
// same work done as separate GEMMs, one nibble::gemm per expert on its tokens gathered beforehand
// (outside the timing) — what an engine without a grouped kernel does.
//
//   vs_separate  separate GEMMs' time / moe_gemm's time (>= 1 / 1.2 is the target: moe_gemm
//                within 1.2x of the separate GEMMs although it also gathers and combines)
//   GBps, roofline, vs_read: over the bytes of the experts the routing touches
// Counters and label otherwise as support/dequant_gemm.hpp. Build and run: README.md.
//
//   OMP_NUM_THREADS=2 OMP_PROC_BIND=close ./bench_moe
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <random>

#include "nibble/kernels/cpu/moe_gemm.hpp"
#include "support/dequant_gemm.hpp"

namespace {

using nibble::bench::ColdQuantWeights;

constexpr int64_t kExperts = 8;
constexpr int64_t kTopK = 2;

// Each token's top-2 distinct experts, uniformly at random from a fixed seed.
std::vector<int32_t> routing(int64_t tokens) {
  std::mt19937 random(static_cast<unsigned>(tokens));
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < tokens; ++t) {
    const auto first = static_cast<int32_t>(random() % kExperts);
    auto second = static_cast<int32_t>(random() % (kExperts - 1));
    if (second >= first) ++second;
    ids.push_back(first);
    ids.push_back(second);
  }
  return ids;
}

template <int Bits, int GroupSize, bool Symmetric>
void BM_Moe(benchmark::State& state) {
  using namespace nibble;
  const bench::DequantGemmRun& run = bench::dequant_gemm_run();
  const int64_t n = state.range(0);
  const int64_t k = state.range(1);
  const int64_t tokens = state.range(2);
  const bool int8 = state.range(3) != 0;
  const QuantConfig config{Bits, GroupSize, Symmetric, ConventionId::olive};
  const ColdQuantWeights& weights = bench::cold_quant_weights(config, {kExperts, n, k});

  const std::vector<float> x = bench::random_activations(tokens, k);
  const std::vector<int32_t> ids = routing(tokens);
  const std::vector<float> gates(ids.size(), 0.5f);
  std::vector<float> y(static_cast<std::size_t>(tokens * n));
  GemmOptions options;
  options.num_threads = run.threads;
  options.activations = int8 ? ActivationPrecision::int8 : ActivationPrecision::fp32;

  // The separate-GEMM baseline's inputs: each expert's tokens gathered, outside any timing.
  std::vector<std::vector<float>> x_expert(kExperts);
  std::vector<std::vector<float>> y_expert(kExperts);
  int64_t used_experts = 0;
  for (std::size_t route = 0; route < ids.size(); ++route) {
    const auto expert = static_cast<std::size_t>(ids[route]);
    const float* row = x.data() + static_cast<int64_t>(route / kTopK) * k;
    x_expert[expert].insert(x_expert[expert].end(), row, row + k);
  }
  for (int64_t e = 0; e < kExperts; ++e) {
    const auto rows = static_cast<int64_t>(x_expert[static_cast<std::size_t>(e)].size()) / k;
    y_expert[static_cast<std::size_t>(e)].resize(static_cast<std::size_t>(rows * n));
    used_experts += rows > 0 ? 1 : 0;
  }
  const auto separate = [&](std::size_t copy) {
    for (int64_t e = 0; e < kExperts; ++e) {
      const auto& xe = x_expert[static_cast<std::size_t>(e)];
      const auto rows = static_cast<int64_t>(xe.size()) / k;
      if (rows == 0) continue;
      gemm(weights.views[copy].slice(e), TensorView<const float>(xe.data(), {rows, k}),
           TensorView<float>(y_expert[static_cast<std::size_t>(e)].data(), {rows, n}), options);
    }
  };
  const auto moe = [&](std::size_t copy) {
    moe_gemm(weights.views[copy], TensorView<const float>(x.data(), {tokens, k}),
             TensorView<const int32_t>(ids.data(), {tokens, kTopK}),
             TensorView<const float>(gates.data(), {tokens, kTopK}),
             TensorView<float>(y.data(), {tokens, n}), options);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  };
  const bench::TimedCalls timed = bench::timed_calls(state, weights, run.threads, moe, separate);
  const double per_call = timed.per_call;
  const double read = timed.read;
  const double separate_seconds = timed.baseline;
  if (per_call <= 0.0) return;
  // Bytes the routing makes the kernel read: the used experts' share of the tensor.
  const double bytes = static_cast<double>(weights.copies.front().storage_bytes()) *
                       static_cast<double>(used_experts) / static_cast<double>(kExperts);
  const double gbps = bytes / per_call / 1e9;
  state.counters["GBps"] = gbps;
  state.counters["roofline"] = gbps / run.read_bandwidth_gbps;
  state.counters["GFLOPs"] = 2.0 * static_cast<double>(tokens * kTopK) * static_cast<double>(n) *
                             static_cast<double>(k) / per_call / 1e9;
  state.counters["vs_read"] =
      read * static_cast<double>(used_experts) / static_cast<double>(kExperts) / per_call;
  state.counters["separate_ms"] = separate_seconds * 1e3;
  state.counters["vs_separate"] = separate_seconds / per_call;
  state.counters["experts_used"] = static_cast<double>(used_experts);
  state.SetLabel(std::string(gemm_isa(weights.views.front(), options)) +
                 (int8 ? " int8" : " fp32"));
}

void moe_args(benchmark::internal::Benchmark* benchmark) {
  benchmark->ArgNames({"N", "K", "T", "act"})
      ->ArgsProduct({{4096}, {4096}, {1, 16, 64}, {0, 1}})
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond)
      ->ComputeStatistics("min", nibble::bench::min_of)
      ->ComputeStatistics("max", nibble::bench::max_of);
}

BENCHMARK_TEMPLATE(BM_Moe, 4, 128, true)->Apply(moe_args);
BENCHMARK_TEMPLATE(BM_Moe, 4, 32, false)->Apply(moe_args);

}  // namespace

int main(int argc, char** argv) {
  return nibble::bench::run_dequant_gemm_main(argc, argv);
}
