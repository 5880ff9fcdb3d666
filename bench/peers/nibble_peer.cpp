// nibble's side of the peer benchmark (bench/peers/peers.py): times nibble::gemm the way
// ggml_peer.cpp times ggml and ort_peer.py times onnxruntime, and prints one JSON line, so the
// driver can interleave the three process by process.
//
//   nibble_peer --bits 4 --group 32 --sym 1 --act int8 --n 4096 --k 4096 --m 1 --threads 1
//               --copies 16 --calls 50
//   nibble_peer ... --layout packed               (W packed once, pack_for_cpu, before timing)
//   nibble_peer --read-bandwidth --threads 1      (the roofline: GB/s of a plain streaming read)
//
// Weights: N(0, 0.02) from a seeded generator, quantized with the ORT convention (what
// MatMulNBits runs); `copies` distinct copies (cold runs pass enough to exceed 4x the last-level
// cache, hot runs 1), call i uses copy i % copies. X [m, k] ~ N(0, 1) stays hot, as in decoding.
// Time per call: steady_clock around one nibble::gemm, after one untimed call per copy.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "nibble/kernels/cpu/dequantize.hpp"
#include "nibble/kernels/cpu/gemm.hpp"
#include "nibble/kernels/cpu/packed.hpp"
#include "nibble/quantizer.hpp"
#include "peer_common.hpp"
#include "support/roofline.hpp"

namespace {

constexpr char kUsage[] =
    "usage: nibble_peer --bits B --group G --sym 0|1 --act fp32|int8 --n N --k K --m M\n"
    "                   --threads T --copies C --calls R [--seed S] [--layout canonical|packed]\n"
    "       nibble_peer --read-bandwidth --threads T\n";

int run(const peer::Args& args) {
  const int threads = static_cast<int>(args.integer("threads"));
  if (threads < 1) args.usage("--threads must be >= 1");
  if (args.has("read-bandwidth")) {
    std::printf("{\"peer\":\"read\",\"threads\":%d,\"read_GBps\":%.3f}\n", threads,
                nibble::bench::measure_read_bandwidth_gbps(threads, std::size_t{512} << 20));
    return 0;
  }
  const int64_t n = args.integer("n"), k = args.integer("k"), m = args.integer("m");
  const int64_t copies = args.integer("copies"), calls = args.integer("calls");
  const auto seed = static_cast<uint32_t>(args.integer("seed", "1"));
  if (n < 1 || k < 1 || m < 1 || copies < 1 || calls < 1)
    args.usage("sizes and counts must be >= 1");
  const std::string act = args.text("act");
  if (act != "fp32" && act != "int8") args.usage("--act must be fp32 or int8");
  const std::string layout = args.text("layout", "canonical");
  if (layout != "canonical" && layout != "packed")
    args.usage("--layout must be canonical or packed");
  const bool packed = layout == "packed";
  nibble::QuantConfig config;
  config.bits = static_cast<int>(args.integer("bits"));
  config.group_size = args.integer("group");
  config.symmetric = args.integer("sym") != 0;
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
  options.activations =
      act == "int8" ? nibble::ActivationPrecision::int8 : nibble::ActivationPrecision::fp32;
  // Packed: every copy packed once (timed: the load-time cost), the canonical copies but the
  // first (kept for the check) dropped, as a caller would.
  std::vector<nibble::PackedWeights<nibble::fp16>> packed_weights;
  double pack_ms = 0.0;
  if (packed) {
    nibble::PackOptions pack_options;
    pack_options.num_threads = threads;
    for (std::size_t c = 0; c < weights.size(); ++c) {
      const auto start = std::chrono::steady_clock::now();
      packed_weights.push_back(nibble::pack_for_cpu(weights[c].view(), pack_options));
      pack_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count();
    }
    pack_ms /= static_cast<double>(weights.size());
    weights.erase(weights.begin() + 1, weights.end());
  }
  const auto call = [&](int64_t c) {
    const nibble::TensorView<const float> x_view(x.data(), {m, k});
    const nibble::TensorView<float> y_view(y.data(), {m, n});
    if (packed) {
      nibble::gemm(packed_weights[static_cast<std::size_t>(c)], x_view, y_view, options);
    } else {
      nibble::gemm(weights[static_cast<std::size_t>(c)].view(), x_view, y_view, options);
    }
  };
  // Correctness before timing: copy 0 against the fp64 product of its dequantized weights.
  call(0);
  std::vector<float> dequantized(static_cast<std::size_t>(n * k));
  nibble::dequantize(weights[0].view(), nibble::TensorView<float>(dequantized.data(), {n, k}));
  const double relative_error =
      peer::relative_error(x.data(), dequantized.data(), y.data(), m, n, k);
  peer::check_result("nibble_peer", relative_error);
  const peer::CallTimes times = peer::time_calls(copies, calls, call);
  const nibble::QuantTensor<nibble::fp16>& first = weights[0];
  const auto weight_bytes = packed ? packed_weights[0].bytes()
                                   : first.qweight().size() +
                                         first.scales().size() * sizeof(nibble::fp16) +
                                         first.zeros().size();
  std::printf(
      "{\"peer\":\"nibble\",\"isa\":\"%s\",\"bits\":%d,\"group\":%lld,\"sym\":%s,\"act\":\"%s\","
      "\"n\":%lld,\"k\":%lld,\"m\":%lld,\"threads\":%d,\"copies\":%lld,\"calls\":%lld,"
      "\"median_ms\":%.5f,\"min_ms\":%.5f,\"max_ms\":%.5f,\"rel_err\":%.3g,\"weight_bytes\":%zu,"
      "\"layout\":\"%s\",\"pack_ms\":%.3f}\n",
      packed ? nibble::to_string(packed_weights[0].isa()) : nibble::gemm_isa(first.view(), options),
      config.bits, static_cast<long long>(config.group_size), config.symmetric ? "true" : "false",
      act.c_str(), static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(m),
      threads, static_cast<long long>(copies), static_cast<long long>(calls), times.median_ms,
      times.min_ms, times.max_ms, relative_error, static_cast<std::size_t>(weight_bytes),
      layout.c_str(), pack_ms);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(peer::Args(argc, argv, "nibble_peer", kUsage,
                          {"bits", "group", "sym", "act", "n", "k", "m", "threads", "copies",
                           "calls", "seed", "layout"},
                          {"read-bandwidth"}));
  } catch (const std::exception& error) {
    std::fprintf(stderr, "nibble_peer: %s\n", error.what());
    return 1;
  }
}
