// GPTQ on one 4096 x 4096 layer with 4096 calibration rows: the time of each phase and the
// sweep's (update phase's) GFLOP/s against Eigen's fp32 GEMM measured in the same process, same
// threads, same ISA (-march=native, see CMakeLists.txt). Counters:
//   sweep_GFLOPs   the in-block and lazy-batch updates' 2 * multiply-adds per second of sweep
//   eigen_lazy_GFLOPs    Eigen fp32 GEMM [K, 128] x [128, N], the shape of one lazy-batch update
//   eigen_square_GFLOPs  Eigen fp32 GEMM [N, K] x [K, N]
//   vs_eigen       sweep_GFLOPs / the larger of the two (issue 6's target: >= 0.5)
//   prepare_s      permutation, damping and the inverse Cholesky factor
//   hessian_s      GptqHessian::add_batch of the 4096 rows (double precision)
//
//   OMP_NUM_THREADS=2 OMP_PROC_BIND=close ./bench_gptq --benchmark_repetitions=3
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "nibble/solvers/gptq.hpp"

namespace {

constexpr int64_t kN = 4096;
constexpr int64_t kK = 4096;
constexpr int64_t kTokens = 4096;

std::vector<float> normal_values(int64_t count, uint32_t seed, float stddev) {
  std::mt19937 random(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> values(static_cast<std::size_t>(count));
  for (float& value : values)
    value = normal(random);
  return values;
}

const std::vector<float>& weights() {
  static const std::vector<float> values = normal_values(kN * kK, 1, 0.02f);
  return values;
}

// Calibration inputs with correlated channels: Gaussian sources mixed by a random matrix.
const nibble::GptqHessian& hessian(double* seconds) {
  static double accumulate_seconds = 0;
  static const nibble::GptqHessian value = [] {
    const int64_t sources = 1024;
    using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const std::vector<float> s = normal_values(kTokens * sources, 2, 1.0f);
    const std::vector<float> mixing = normal_values(sources * kK, 3, 1.0f);
    Matrix x = Eigen::Map<const Matrix>(s.data(), kTokens, sources) *
               Eigen::Map<const Matrix>(mixing.data(), sources, kK);
    x.array() += Eigen::Map<const Matrix>(normal_values(kTokens * kK, 4, 0.1f).data(), kTokens, kK)
                     .array();  // full rank
    nibble::GptqHessian h(kK);
    const auto start = std::chrono::steady_clock::now();
    h.add_batch(nibble::TensorView<const float>(x.data(), {kTokens, kK}));
    accumulate_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return h;
  }();
  *seconds = accumulate_seconds;
  return value;
}

// Best GFLOP/s of Eigen's fp32 GEMM C -= A [m, inner] B [inner, n] over a few runs.
double eigen_gemm_gflops(int64_t m, int64_t inner, int64_t n) {
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Matrix a = Matrix::Random(m, inner);
  const Matrix b = Matrix::Random(inner, n);
  Matrix c = Matrix::Zero(m, n);
  double best = 0;
  for (int repeat = 0; repeat < 3; ++repeat) {
    const auto start = std::chrono::steady_clock::now();
    c.noalias() -= a * b;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, 2.0 * static_cast<double>(m * inner * n) / seconds / 1e9);
  }
  benchmark::DoNotOptimize(c.data());
  return best;
}

// <bits, group size (-1: per channel), symmetric>; act_order as the benchmark argument.
template <int Bits, int64_t GroupSize, bool Symmetric>
void BM_Gptq(benchmark::State& state) {
  double hessian_seconds = 0;
  const nibble::GptqHessian& h = hessian(&hessian_seconds);
  static const double eigen_lazy = eigen_gemm_gflops(kK, 128, kN);
  static const double eigen_square = eigen_gemm_gflops(kN, kK, kN);
  const double eigen = std::max(eigen_lazy, eigen_square);
  nibble::GptqOptions options;
  options.act_order = state.range(0) != 0;
  options.num_threads = nibble::detail::thread_count(0);
  const nibble::QuantConfig config{Bits, GroupSize, Symmetric};
  const nibble::TensorView<const float> view(weights().data(), {kN, kK});
  double sweep_seconds = 0, sweep_flops = 0, prepare_seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    auto result = nibble::gptq_quantize<float>(view, config, {h}, options);
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    benchmark::DoNotOptimize(result.tensor.qweight().data());
    sweep_seconds += result.sweep_seconds;
    sweep_flops += result.sweep_flops;
    prepare_seconds += result.prepare_seconds;
  }
  const double iterations = static_cast<double>(state.iterations());
  const double sweep_gflops = sweep_flops / sweep_seconds / 1e9;
  state.counters["sweep_GFLOPs"] = sweep_gflops;
  state.counters["eigen_lazy_GFLOPs"] = eigen_lazy;
  state.counters["eigen_square_GFLOPs"] = eigen_square;
  state.counters["vs_eigen"] = sweep_gflops / eigen;
  state.counters["sweep_s"] = sweep_seconds / iterations;
  state.counters["prepare_s"] = prepare_seconds / iterations;
  state.counters["hessian_s"] = hessian_seconds;
  state.counters["threads"] = options.num_threads;
  state.SetLabel(options.act_order ? "act_order" : "in order");
}

BENCHMARK_TEMPLATE(BM_Gptq, 4, 128, false)
    ->ArgName("act_order")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(2);
BENCHMARK_TEMPLATE(BM_Gptq, 4, 32, true)
    ->ArgName("act_order")
    ->Arg(0)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(2);

}  // namespace

BENCHMARK_MAIN();
