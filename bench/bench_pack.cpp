// pack<Bits> / unpack<Bits> throughput over a 4096 x 4096 tensor of codes, as GB/s of packed
// bytes and as a fraction of the read bandwidth measured by this process (`roofline`).
// The scalar loops are the definition; kernels unpack in registers and never call these.
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "nibble/pack.hpp"
#include "support/roofline.hpp"
#include "support/throughput.hpp"

namespace {

constexpr int64_t kRows = 4096;
constexpr int64_t kCols = 4096;
double g_read_bandwidth_gbps = 0.0;

template <int Bits>
std::vector<uint8_t> random_codes() {
  std::mt19937 random(Bits);
  std::uniform_int_distribution<int> code(0, (1 << Bits) - 1);
  std::vector<uint8_t> codes(static_cast<std::size_t>(kRows * kCols));
  for (uint8_t& value : codes)
    value = static_cast<uint8_t>(code(random));
  return codes;
}

template <int Bits>
void BM_Pack(benchmark::State& state) {
  const std::vector<uint8_t> codes = random_codes<Bits>();
  const nibble::Shape shape{kRows, kCols};
  std::vector<uint8_t> packed(static_cast<std::size_t>(nibble::packed_shape<Bits>(shape).numel()));
  nibble::bench::run_timed(state, static_cast<double>(packed.size()), g_read_bandwidth_gbps, [&] {
    nibble::pack<Bits>(
        nibble::TensorView<const uint8_t>(codes.data(), shape),
        nibble::TensorView<uint8_t>(packed.data(), nibble::packed_shape<Bits>(shape)));
    benchmark::ClobberMemory();
  });
}

template <int Bits>
void BM_Unpack(benchmark::State& state) {
  const nibble::Shape shape{kRows, kCols};
  const std::vector<uint8_t> packed =
      nibble::pack<Bits>(nibble::TensorView<const uint8_t>(random_codes<Bits>().data(), shape));
  std::vector<uint8_t> codes(static_cast<std::size_t>(shape.numel()));
  nibble::bench::run_timed(state, static_cast<double>(packed.size()), g_read_bandwidth_gbps, [&] {
    nibble::unpack<Bits>(
        nibble::TensorView<const uint8_t>(packed.data(), nibble::packed_shape<Bits>(shape)),
        nibble::TensorView<uint8_t>(codes.data(), shape));
    benchmark::ClobberMemory();
  });
}

BENCHMARK_TEMPLATE(BM_Pack, 2)->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK_TEMPLATE(BM_Pack, 4)->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK_TEMPLATE(BM_Pack, 8)->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK_TEMPLATE(BM_Unpack, 2)->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK_TEMPLATE(BM_Unpack, 4)->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK_TEMPLATE(BM_Unpack, 8)->Unit(benchmark::kMillisecond)->UseManualTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  g_read_bandwidth_gbps = nibble::bench::measure_read_bandwidth_gbps(1);
  benchmark::AddCustomContext("threads", "1");
  benchmark::AddCustomContext("read_bandwidth_GBps", std::to_string(g_read_bandwidth_gbps));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
