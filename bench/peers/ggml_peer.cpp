// ggml's side of the peer benchmark (bench/peers/peers.py): times ggml's quantized matrix multiply
// the way an inference engine (llama.cpp) runs it, and prints one JSON line in the shape that
// nibble_peer.cpp and ort_peer.py print, so the driver can interleave them process by process.
// Built against a static, CPU-only ggml 0.15.3 by bench/peers/build_ggml.sh.
//
//   ggml_peer --type q4_0|q4_K|q8_0 --n N --k K --m M --threads T --copies C --calls R
//             [--repack 0|1] [--seed S]
//
// Computes Y[M, N] = X[M, K] . W[N, K]^T as ggml_mul_mat(W, X): W quantized, X fp32 (ggml converts
// X to the type's vec_dot type, q8_0 or q8_K, inside the op). In ggml's ne order W is [K, N], X is
// [K, M] and the result is [N, M], i.e. Y^T stored row-major as Y.
//
// Weights: `copies` distinct copies (cold runs pass enough to exceed 4x the last-level cache, hot
// runs 1), copy c ~ N(0, 0.02) from std::mt19937(seed + c), quantized with ggml_quantize_chunk
// (no importance matrix). X ~ N(0, 1) from its own stream, the same for every copy count.
//
// Backend: ggml_backend_cpu_init with ggml_backend_cpu_set_n_threads(T). With --repack 1 (the
// default) the weights go into the first of the CPU device's "extra" buffer types (on x86 without
// AMX that is CPU_REPACK) that supports this mul_mat, found the way llama.cpp finds it: the
// registry's "ggml_backend_dev_get_extra_bufts" proc address, then ggml_backend_dev_supports_op on
// a probe op whose weight sits in a dummy buffer of that type. ggml repacks such weights into its
// interleaved layout when they are uploaded. Otherwise, or with --repack 0, they go into the
// plain CPU buffer type. The JSON says which buffer type held them.
//
// Timing: one graph per copy, each computing ggml_mul_mat(W_c, X); every graph is computed once
// untimed, then call i computes graph i % copies with one ggml_backend_graph_compute, timed with
// steady_clock. ggml's logs go to stderr; stdout carries only the JSON line.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "peer_common.hpp"

namespace {

constexpr char kUsage[] =
    "usage: ggml_peer --type q4_0|q4_K|q8_0 --n N --k K --m M --threads T\n"
    "                 --copies C --calls R [--repack 0|1] [--seed S]\n";

[[noreturn]] void fail(const std::string& problem) {
  std::fprintf(stderr, "ggml_peer: %s\n", problem.c_str());
  std::exit(1);
}

// ggml logs (backend selection, repacking notices, ...) go to stderr, never to stdout.
void log_to_stderr(ggml_log_level /*level*/, const char* text, void* /*user_data*/) {
  std::fputs(text, stderr);
}

// Whether the CPU device runs mul_mat(weight, [K, M] f32) with the weight in `buft`. As llama.cpp's
// weight_buft_supported: build the op in a metadata-only context, give the weight a zero-sized
// dummy buffer of that type (supports_op decides by the weight's buffer type) and ask the device.
bool buffer_type_supports_mul_mat(ggml_backend_dev_t device, ggml_backend_buffer_type_t buft,
                                  ggml_type type, int64_t n, int64_t k, int64_t m) {
  ggml_init_params params = {/*mem_size=*/8 * ggml_tensor_overhead(), /*mem_buffer=*/nullptr,
                             /*no_alloc=*/true};
  ggml_context* probe = ggml_init(params);
  ggml_tensor* weight = ggml_new_tensor_2d(probe, type, k, n);
  ggml_tensor* input = ggml_new_tensor_2d(probe, GGML_TYPE_F32, k, m);
  ggml_tensor* product = ggml_mul_mat(probe, weight, input);
  weight->buffer = ggml_backend_buft_alloc_buffer(buft, 0);
  const bool supported = ggml_backend_dev_supports_op(device, product);
  ggml_backend_buffer_free(weight->buffer);
  weight->buffer = nullptr;
  ggml_free(probe);
  return supported;
}

// The buffer type the weights go into: the first extra buffer type of the CPU device that
// supports this mul_mat (when `allow_extra`), else the plain CPU buffer type.
ggml_backend_buffer_type_t choose_weight_buffer_type(ggml_backend_t backend, bool allow_extra,
                                                     ggml_type type, int64_t n, int64_t k,
                                                     int64_t m) {
  if (allow_extra) {
    ggml_backend_dev_t device = ggml_backend_get_device(backend);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(device);
    auto get_extra_bufts = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
    if (get_extra_bufts != nullptr) {
      for (ggml_backend_buffer_type_t* extra = get_extra_bufts(device); *extra != nullptr; ++extra)
        if (buffer_type_supports_mul_mat(device, *extra, type, n, k, m)) return *extra;
    }
  }
  return ggml_backend_cpu_buffer_type();
}

int run(const peer::Args& args) {
  // ---- arguments ----
  const std::string type_name = args.text("type");
  const std::map<std::string, ggml_type> types = {
      {"q4_0", GGML_TYPE_Q4_0}, {"q4_K", GGML_TYPE_Q4_K}, {"q8_0", GGML_TYPE_Q8_0}};
  if (types.count(type_name) == 0)
    args.usage("unknown --type " + type_name + " (q4_0, q4_K, q8_0)");
  const ggml_type type = types.at(type_name);
  const int64_t n = args.integer("n"), k = args.integer("k"), m = args.integer("m");
  const int64_t threads = args.integer("threads");
  const int64_t copies = args.integer("copies"), calls = args.integer("calls");
  const int64_t repack = args.integer("repack", "1");
  const auto seed = static_cast<uint32_t>(args.integer("seed", "1"));
  if (n < 1 || k < 1 || m < 1 || threads < 1 || copies < 1 || calls < 1)
    args.usage("sizes, --threads, --copies and --calls must be >= 1");
  if (repack != 0 && repack != 1) args.usage("--repack must be 0 or 1");
  const int64_t block = ggml_blck_size(type);
  if (k % block != 0)
    args.usage("--k " + std::to_string(k) + " is not a multiple of " + type_name +
               "'s block size " + std::to_string(block));

  ggml_log_set(log_to_stderr, nullptr);
  const ggml_type_traits* traits = ggml_get_type_traits(type);

  // ---- backend and weight buffer type ----
  ggml_backend_t backend = ggml_backend_cpu_init();
  if (backend == nullptr) fail("ggml_backend_cpu_init failed");
  ggml_backend_cpu_set_n_threads(backend, static_cast<int>(threads));
  ggml_backend_buffer_type_t weight_buft =
      choose_weight_buffer_type(backend, repack == 1, type, n, k, m);
  const bool repacked = weight_buft != ggml_backend_cpu_buffer_type();

  // ---- tensors: C weights (in weight_buft), X and the C results (in the CPU buffer type) ----
  // Metadata-only contexts; the data lives in backend buffers.
  ggml_init_params weight_params = {static_cast<std::size_t>(copies) * ggml_tensor_overhead(),
                                    nullptr, true};
  ggml_context* weight_ctx = ggml_init(weight_params);
  std::vector<ggml_tensor*> weights;
  for (int64_t c = 0; c < copies; ++c) {
    weights.push_back(ggml_new_tensor_2d(weight_ctx, type, k, n));
    ggml_format_name(weights.back(), "w%lld", static_cast<long long>(c));  // for ggml's logs
  }

  ggml_init_params compute_params = {
      static_cast<std::size_t>(copies + 1) * (ggml_tensor_overhead() + ggml_graph_overhead()),
      nullptr, true};
  ggml_context* compute_ctx = ggml_init(compute_params);
  ggml_tensor* x = ggml_new_tensor_2d(compute_ctx, GGML_TYPE_F32, k, m);
  std::vector<ggml_tensor*> results;
  std::vector<ggml_cgraph*> graphs;
  for (int64_t c = 0; c < copies; ++c) {
    results.push_back(ggml_mul_mat(compute_ctx, weights[static_cast<std::size_t>(c)], x));
    graphs.push_back(ggml_new_graph(compute_ctx));
    ggml_build_forward_expand(graphs.back(), results.back());
  }

  ggml_backend_buffer_t weight_buffer =
      ggml_backend_alloc_ctx_tensors_from_buft(weight_ctx, weight_buft);
  if (weight_buffer == nullptr) fail("could not allocate the weights");
  ggml_backend_buffer_set_usage(weight_buffer, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
  ggml_backend_buffer_t compute_buffer =
      ggml_backend_alloc_ctx_tensors_from_buft(compute_ctx, ggml_backend_cpu_buffer_type());
  if (compute_buffer == nullptr) fail("could not allocate X and the results");

  // ---- data: quantize each copy with ggml's quantizer and upload it ----
  // Uploading into CPU_REPACK converts to the interleaved layout (its set_tensor); the original
  // layout of copy 0 is kept on the host for the reference.
  const std::size_t weight_bytes = ggml_nbytes(weights[0]);
  std::vector<float> values(static_cast<std::size_t>(n * k));
  std::vector<uint8_t> quantized(weight_bytes), quantized_first;
  for (int64_t c = 0; c < copies; ++c) {
    std::mt19937 random(seed + static_cast<uint32_t>(c));
    std::normal_distribution<float> weight(0.0f, 0.02f);
    for (float& v : values)
      v = weight(random);
    const std::size_t written =
        ggml_quantize_chunk(type, values.data(), quantized.data(), 0, n, k, /*imatrix=*/nullptr);
    if (written != weight_bytes) fail("ggml_quantize_chunk wrote an unexpected number of bytes");
    ggml_backend_tensor_set(weights[static_cast<std::size_t>(c)], quantized.data(), 0,
                            weight_bytes);
    if (c == 0) quantized_first = quantized;
  }
  std::mt19937 x_random(seed ^ 0x9E3779B9u);  // independent of the copy seeds and of C
  std::normal_distribution<float> activation(0.0f, 1.0f);
  std::vector<float> x_values(static_cast<std::size_t>(m * k));
  for (float& v : x_values)
    v = activation(x_random);
  ggml_backend_tensor_set(x, x_values.data(), 0, ggml_nbytes(x));

  const auto compute = [&](int64_t c) {
    const ggml_status status =
        ggml_backend_graph_compute(backend, graphs[static_cast<std::size_t>(c)]);
    if (status != GGML_STATUS_SUCCESS)
      fail(std::string("ggml_backend_graph_compute: ") + ggml_status_to_string(status));
  };

  // ---- correctness: copy 0 against fp64 (ggml's dequantized W) . X ----
  compute(0);
  std::vector<float> y(static_cast<std::size_t>(n * m));  // ne [N, M]: element (j, i) at i*N + j
  ggml_backend_tensor_get(results[0], y.data(), 0, ggml_nbytes(results[0]));
  std::vector<float> dequantized(static_cast<std::size_t>(n * k));
  traits->to_float(quantized_first.data(), dequantized.data(), n * k);  // rows are contiguous
  const double relative_error =
      peer::relative_error(x_values.data(), dequantized.data(), y.data(), m, n, k);
  peer::check_result("ggml_peer", relative_error);

  // ---- warm-up: every copy's graph once, untimed; then the timed calls ----
  const peer::CallTimes times = peer::time_calls(copies, calls, compute);

  std::printf(
      "{\"peer\":\"ggml\",\"ggml_version\":\"%s\",\"type\":\"%s\",\"n\":%lld,\"k\":%lld,"
      "\"m\":%lld,\"threads\":%lld,\"copies\":%lld,\"calls\":%lld,\"repack\":%s,"
      "\"buffer\":\"%s\",\"median_ms\":%.5f,\"min_ms\":%.5f,\"max_ms\":%.5f,\"rel_err\":%.3g,"
      "\"weight_bytes\":%zu}\n",
      ggml_version(), type_name.c_str(), static_cast<long long>(n), static_cast<long long>(k),
      static_cast<long long>(m), static_cast<long long>(threads), static_cast<long long>(copies),
      static_cast<long long>(calls), repacked ? "true" : "false",
      ggml_backend_buft_name(weight_buft), times.median_ms, times.min_ms, times.max_ms,
      relative_error, weight_bytes);
  std::fflush(stdout);

  ggml_backend_buffer_free(compute_buffer);
  ggml_backend_buffer_free(weight_buffer);
  ggml_free(compute_ctx);
  ggml_free(weight_ctx);
  ggml_backend_free(backend);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(peer::Args(argc, argv, "ggml_peer", kUsage,
                          {"type", "n", "k", "m", "threads", "copies", "calls", "repack", "seed"}));
  } catch (const std::exception& error) {
    std::fprintf(stderr, "ggml_peer: %s\n", error.what());
    return 1;
  }
}
