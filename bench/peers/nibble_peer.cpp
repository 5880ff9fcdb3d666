// nibble's side of the peer benchmark (bench/peers/peers.py): times nibble::gemm the way
// ggml_peer.cpp times ggml and ort_peer.py times onnxruntime, and prints one JSON line, so the
// driver can interleave the three process by process.
//
//   nibble_peer --bits 4 --group 32 --sym 1 --act int8 --n 4096 --k 4096 --m 1 --threads 1
//               --copies 16 --calls 50
//   nibble_peer --read-bandwidth --threads 1      (the roofline: GB/s of a plain streaming read)
//
// Weights: N(0, 0.02) from a seeded generator, quantized with the ORT convention (what
// MatMulNBits runs); `copies` distinct copies (cold runs pass enough to exceed 4x the last-level
// cache, hot runs 1), call i uses copy i % copies. X [m, k] ~ N(0, 1) stays hot, as in decoding.
// Time per call: steady_clock around one nibble::gemm, after one untimed call per copy.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "nibble/kernels/cpu/dequantize.hpp"
#include "nibble/kernels/cpu/gemm.hpp"
#include "nibble/quantizer.hpp"
#include "support/roofline.hpp"

namespace {

[[noreturn]] void usage(const std::string& problem) {
  std::fprintf(stderr,
               "nibble_peer: %s\n"
               "usage: nibble_peer --bits B --group G --sym 0|1 --act fp32|int8 --n N --k K --m M\n"
               "                   --threads T --copies C --calls R [--seed S]\n"
               "       nibble_peer --read-bandwidth --threads T\n",
               problem.c_str());
  std::exit(2);
}

// --name value pairs (and the bare --read-bandwidth flag).
std::map<std::string, std::string> parse(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string name = argv[i];
    if (name.rfind("--", 0) != 0) usage("unexpected argument '" + name + "'");
    if (name == "--read-bandwidth") {
      args[name.substr(2)] = "1";
      continue;
    }
    if (i + 1 >= argc) usage("missing value after " + name);
    args[name.substr(2)] = argv[++i];
  }
  return args;
}

int64_t integer(const std::map<std::string, std::string>& args, const std::string& name,
                const char* fallback = nullptr) {
  const auto found = args.find(name);
  if (found == args.end() && fallback == nullptr) usage("missing --" + name);
  const std::string text = found != args.end() ? found->second : fallback;
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != '\0') usage("--" + name + " " + text + " is not an integer");
  return value;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

int run(const std::map<std::string, std::string>& args) {
  const int threads = static_cast<int>(integer(args, "threads"));
  if (threads < 1) usage("--threads must be >= 1");
  if (args.count("read-bandwidth") != 0) {
    std::printf("{\"peer\":\"read\",\"threads\":%d,\"read_GBps\":%.3f}\n", threads,
                nibble::bench::measure_read_bandwidth_gbps(threads, std::size_t{512} << 20));
    return 0;
  }
  const int64_t n = integer(args, "n"), k = integer(args, "k"), m = integer(args, "m");
  const int64_t copies = integer(args, "copies"), calls = integer(args, "calls");
  const auto seed = static_cast<uint32_t>(integer(args, "seed", "1"));
  if (n < 1 || k < 1 || m < 1 || copies < 1 || calls < 1) usage("sizes and counts must be >= 1");
  const auto act = args.count("act") != 0 ? args.at("act") : std::string();
  if (act != "fp32" && act != "int8") usage("--act must be fp32 or int8");
  nibble::QuantConfig config;
  config.bits = static_cast<int>(integer(args, "bits"));
  config.group_size = integer(args, "group");
  config.symmetric = integer(args, "sym") != 0;
  config.convention = nibble::ConventionId::ort;

  std::mt19937 random(seed);
  std::normal_distribution<float> weight(0.0f, 0.02f), activation(0.0f, 1.0f);
  std::vector<nibble::QuantTensor<nibble::fp16>> weights;
  std::vector<float> values(static_cast<std::size_t>(n * k));
  for (int64_t c = 0; c < copies; ++c) {
    for (float& v : values)
      v = weight(random);
    weights.push_back(nibble::quantize<nibble::fp16>(
        nibble::TensorView<const float>(values.data(), {n, k}), config));
  }
  std::vector<float> x(static_cast<std::size_t>(m * k)), y(static_cast<std::size_t>(m * n));
  for (float& v : x)
    v = activation(random);

  nibble::GemmOptions options;
  options.num_threads = threads;
  options.activations = act == "int8" ? nibble::ActivationPrecision::int8
                                      : nibble::ActivationPrecision::fp32;
  const auto call = [&](int64_t c) {
    nibble::gemm(weights[static_cast<std::size_t>(c)].view(),
                 nibble::TensorView<const float>(x.data(), {m, k}),
                 nibble::TensorView<float>(y.data(), {m, n}), options);
  };
  // Correctness before timing: copy 0 against the fp64 product of its dequantized weights.
  call(0);
  std::vector<float> dequantized(static_cast<std::size_t>(n * k));
  nibble::dequantize(weights[0].view(), nibble::TensorView<float>(dequantized.data(), {n, k}));
  double max_error = 0.0, max_reference = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double reference = 0.0;
      for (int64_t e = 0; e < k; ++e)
        reference += static_cast<double>(x[static_cast<std::size_t>(i * k + e)]) *
                     dequantized[static_cast<std::size_t>(j * k + e)];
      max_reference = std::max(max_reference, std::fabs(reference));
      max_error = std::max(max_error, std::fabs(reference - y[static_cast<std::size_t>(i * n + j)]));
    }
  }
  const double relative_error = max_error / std::max(max_reference, 1e-30);
  if (relative_error > 0.05) {
    std::fprintf(stderr, "nibble_peer: result off by %.3g of max |reference|\n", relative_error);
    return 1;
  }
  for (int64_t c = 1; c < copies; ++c)
    call(c);  // untimed: every copy touched once

  std::vector<double> ms;
  for (int64_t i = 0; i < calls; ++i) {
    const auto start = std::chrono::steady_clock::now();
    call(i % copies);
    const std::chrono::duration<double, std::milli> elapsed =
        std::chrono::steady_clock::now() - start;
    ms.push_back(elapsed.count());
  }
  const nibble::QuantTensor<nibble::fp16>& first = weights[0];
  const auto weight_bytes = first.qweight().size() + first.scales().size() * sizeof(nibble::fp16) +
                            first.zeros().size();
  std::printf(
      "{\"peer\":\"nibble\",\"isa\":\"%s\",\"bits\":%d,\"group\":%lld,\"sym\":%s,\"act\":\"%s\","
      "\"n\":%lld,\"k\":%lld,\"m\":%lld,\"threads\":%d,\"copies\":%lld,\"calls\":%lld,"
      "\"median_ms\":%.5f,\"min_ms\":%.5f,\"max_ms\":%.5f,\"rel_err\":%.3g,\"weight_bytes\":%zu}\n",
      nibble::gemm_isa(first.view(), options), config.bits,
      static_cast<long long>(config.group_size), config.symmetric ? "true" : "false", act.c_str(),
      static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(m), threads,
      static_cast<long long>(copies), static_cast<long long>(calls), median(ms),
      *std::min_element(ms.begin(), ms.end()), *std::max_element(ms.begin(), ms.end()),
      relative_error, static_cast<std::size_t>(weight_bytes));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& error) {
    std::fprintf(stderr, "nibble_peer: %s\n", error.what());
    return 1;
  }
}
