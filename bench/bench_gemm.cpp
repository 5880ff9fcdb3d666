// Dequant-GEMM: prefill and batches, M = 16, 64, 512 rows of activations against a cold
// 4096 x 4096 quantized W. Small M is still bound by reading W (watch `roofline`); M = 512 is
// bound by arithmetic (watch `GFLOPs`). `vs_eigen` compares with Eigen fp32 GEMM on the
// dequantized W in the same process, same threads. Counters and label: support/dequant_gemm.hpp.
// Build and run: README.md.
//
//   OMP_NUM_THREADS=2 OMP_PROC_BIND=close ./bench_gemm
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include "support/dequant_gemm.hpp"

namespace {

template <int Bits, int GroupSize, bool Symmetric>
void BM_Gemm(benchmark::State& state) {
  nibble::bench::run_dequant_gemm<Bits, GroupSize, Symmetric>(state);
}

// N, K = 4096; M = 16, 64, 512; act = 0 (fp32) or 1 (int8 activations).
void gemm_args(benchmark::internal::Benchmark* benchmark) {
  nibble::bench::dequant_gemm_args(benchmark, {16, 64, 512});
}

// <bits, group size (-1: per channel), symmetric>
BENCHMARK_TEMPLATE(BM_Gemm, 4, 32, true)->Apply(gemm_args);
BENCHMARK_TEMPLATE(BM_Gemm, 4, 32, false)->Apply(gemm_args);
BENCHMARK_TEMPLATE(BM_Gemm, 4, 128, true)->Apply(gemm_args);
BENCHMARK_TEMPLATE(BM_Gemm, 4, 128, false)->Apply(gemm_args);
BENCHMARK_TEMPLATE(BM_Gemm, 8, 128, true)->Apply(gemm_args);
BENCHMARK_TEMPLATE(BM_Gemm, 8, -1, true)->Apply(gemm_args);
BENCHMARK_TEMPLATE(BM_Gemm, 2, 32, false)->Apply(gemm_args);
BENCHMARK_TEMPLATE(BM_Gemm, 2, 128, false)->Apply(gemm_args);

}  // namespace

int main(int argc, char** argv) {
  return nibble::bench::run_dequant_gemm_main(argc, argv);
}
