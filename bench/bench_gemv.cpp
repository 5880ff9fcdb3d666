// Dequant-GEMV: decoding, M = 1..8 rows of activations against a cold 4096 x 4096 quantized W.
// Bound by reading W once per call, so `roofline` (GB/s of qweight + scales + zeros over the
// read bandwidth this process measured) is the figure to watch; `vs_eigen` compares with Eigen
// fp32 on the dequantized W in the same process (M = 1: rows split across threads by hand).
// Counters and label: support/dequant_gemm.hpp. Build and run: README.md.
//
//   OMP_NUM_THREADS=2 OMP_PROC_BIND=close ./bench_gemv
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include "support/dequant_gemm.hpp"

namespace {

template <int Bits, int GroupSize, bool Symmetric>
void BM_Gemv(benchmark::State& state) {
  nibble::bench::run_dequant_gemm<Bits, GroupSize, Symmetric>(state);
}

// N, K = 4096; M = 1, 2, 4, 8; act = 0 (fp32) or 1 (int8 activations).
void gemv_args(benchmark::internal::Benchmark* benchmark) {
  nibble::bench::dequant_gemm_args(benchmark, {1, 2, 4, 8});
}

// The same with bf16 X and Y too (act = 2): the avx512bf16 kernels' case (4-bit).
void gemv_args_bf16(benchmark::internal::Benchmark* benchmark) {
  nibble::bench::dequant_gemm_args(benchmark, {1, 2, 4, 8}, {0, 1, 2});
}

// <bits, group size (-1: per channel), symmetric>
BENCHMARK_TEMPLATE(BM_Gemv, 4, 32, true)->Apply(gemv_args);
BENCHMARK_TEMPLATE(BM_Gemv, 4, 32, false)->Apply(gemv_args);
BENCHMARK_TEMPLATE(BM_Gemv, 4, 64, true)->Apply(gemv_args);
BENCHMARK_TEMPLATE(BM_Gemv, 4, 128, true)->Apply(gemv_args_bf16);
BENCHMARK_TEMPLATE(BM_Gemv, 4, 128, false)->Apply(gemv_args);
BENCHMARK_TEMPLATE(BM_Gemv, 8, 32, true)->Apply(gemv_args);
BENCHMARK_TEMPLATE(BM_Gemv, 8, 128, true)->Apply(gemv_args);
BENCHMARK_TEMPLATE(BM_Gemv, 8, -1, true)->Apply(gemv_args);
BENCHMARK_TEMPLATE(BM_Gemv, 2, 32, false)->Apply(gemv_args);
BENCHMARK_TEMPLATE(BM_Gemv, 2, 128, false)->Apply(gemv_args);

}  // namespace

int main(int argc, char** argv) {
  return nibble::bench::run_dequant_gemm_main(argc, argv);
}
