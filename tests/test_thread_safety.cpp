// Several std::threads calling the library at once: quantize (RTN, k-quant), dequantize, gemm
// (fp32 and int8 activations, every ISA this build and CPU have), MoE GEMM and gather, starting
// together so that each kernel table's first-time dispatch (its static initialization) races.
// Each thread's results must equal the same calls made serially afterwards, bit for bit.
//
// Built twice: as an ordinary test (with OpenMP), and in the dev preset as
// test_thread_safety_tsan under ThreadSanitizer with OpenMP off (libgomp / libomp are not
// instrumented; the races sought are nibble's own), with the ISA kernels compiled into it.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

#include "nibble/kernels/cpu/dequantize.hpp"
#include "nibble/kernels/cpu/gemm.hpp"
#include "nibble/kernels/cpu/moe_gemm.hpp"
#include "nibble/quantizer.hpp"
#include "nibble/solvers/kquant.hpp"
#include "support/kernel_checks.hpp"
#include "support/test_data.hpp"

namespace {

using nibble::Isa;
using nibble::TensorView;

constexpr int kThreads = 4;
constexpr int64_t kN = 48, kK = 160, kM = 5, kExperts = 3;

// Everything one thread computes; compared with a serial run.
struct Results {
  std::vector<uint8_t> rtn_codes, kquant_codes;
  std::vector<float> dequantized, gathered, moe;
  std::vector<std::vector<float>> gemm;  // per ISA x activations
  bool operator==(const Results& other) const {
    return rtn_codes == other.rtn_codes && kquant_codes == other.kquant_codes &&
           dequantized == other.dequantized && gathered == other.gathered && moe == other.moe &&
           gemm == other.gemm;
  }
};

std::vector<Isa> available_isas() {
  std::vector<Isa> isas;
  for (Isa isa : nibble::testing::kIsas) {
    if (nibble::detail::compiled_kernels(isa) != nullptr) {
      isas.push_back(isa);
    }
  }
  return isas;
}

Results work(int seed) {
  const std::vector<float> w =
      nibble::testing::gaussian(kExperts * kN * kK, static_cast<uint32_t>(100 + seed));
  const std::vector<float> x = nibble::testing::gaussian(kM * kK, static_cast<uint32_t>(200 + seed));
  Results out;
  nibble::QuantConfig config{4, 32, false, nibble::ConventionId::ort};
  nibble::QuantizeOptions quantize_options;
  quantize_options.num_threads = 1;
  const TensorView<const float> experts(w.data(), {kExperts, kN, kK});
  const auto q = nibble::quantize<float>(experts, config, quantize_options);
  out.rtn_codes.assign(q.view().qweight(), q.view().qweight() + q.view().qweight_bytes());
  nibble::KQuantOptions kquant_options;
  kquant_options.num_threads = 1;
  const auto k = nibble::kquant_quantize<float>(experts, config, kquant_options);
  out.kquant_codes.assign(k.view().qweight(), k.view().qweight() + k.view().qweight_bytes());

  nibble::DequantizeOptions dequantize_options;
  dequantize_options.num_threads = 1;
  out.dequantized.resize(w.size());
  nibble::dequantize(q.view(), TensorView<float>(out.dequantized.data(), {kExperts, kN, kK}),
                     dequantize_options);
  const std::vector<int64_t> ids = {2, 0, 1, 2};
  out.gathered.resize(4 * kN * kK);
  nibble::gather_dequantize(q.view(), TensorView<const int64_t>(ids.data(), {4}),
                            TensorView<float>(out.gathered.data(), {4, kN, kK}));

  const auto linear = q.view().slice(1);  // expert 1: an [N, K] linear layer
  for (Isa isa : available_isas()) {
    for (auto activations :
         {nibble::ActivationPrecision::fp32, nibble::ActivationPrecision::int8}) {
      nibble::GemmOptions options;
      options.num_threads = 1;
      options.isa = isa;
      options.activations = activations;
      std::vector<float> y(kM * kN);
      nibble::gemm(linear, TensorView<const float>(x.data(), {kM, kK}),
                   TensorView<float>(y.data(), {kM, kN}), options);
      out.gemm.push_back(std::move(y));
    }
  }
  const std::vector<int32_t> routes = {0, 2, 1, 1, 2, 0, 0, 1, 2, 2};  // [M, top 2]
  nibble::GemmOptions moe_options;
  moe_options.num_threads = 1;
  out.moe.resize(kM * kN);
  nibble::moe_gemm(q.view(), TensorView<const float>(x.data(), {kM, kK}),
                   TensorView<const int32_t>(routes.data(), {kM, 2}),
                   TensorView<float>(out.moe.data(), {kM, kN}), moe_options);
  return out;
}

TEST(ThreadSafety, ConcurrentCallsGiveTheSerialResults) {
  std::vector<Results> concurrent(kThreads);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int thread = 0; thread < kThreads; ++thread) {
    threads.emplace_back([&, thread] {
      // All threads enter the library together: the kernel tables' first use races here.
      ready.fetch_add(1);
      while (ready.load() < kThreads) {
      }
      concurrent[static_cast<std::size_t>(thread)] = work(thread % 2);
    });
  }
  for (std::thread& thread : threads)
    thread.join();
  for (int thread = 0; thread < kThreads; ++thread) {
    EXPECT_TRUE(concurrent[static_cast<std::size_t>(thread)] == work(thread % 2))
        << "thread " << thread << " differs from the serial run";
  }
  EXPECT_FALSE(concurrent[0].gemm.empty());
}

TEST(ThreadSafety, ErrorsFromManyThreadsAtOnceAreEachThreadsOwn) {
  // Bad input on every thread at once: each gets its own Error, nothing shared is corrupted.
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int thread = 0; thread < kThreads; ++thread) {
    threads.emplace_back([&] {
      std::vector<float> w(64, 1.0f);
      w[7] = std::numeric_limits<float>::quiet_NaN();
      try {
        (void)nibble::quantize<float>(TensorView<const float>(w.data(), {2, 32}),
                                      nibble::QuantConfig{4, 32, true});
      } catch (const nibble::Error& error) {
        if (error.code() == nibble::ErrorCode::non_finite) errors.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads)
    thread.join();
  EXPECT_EQ(errors.load(), kThreads);
}

}  // namespace
