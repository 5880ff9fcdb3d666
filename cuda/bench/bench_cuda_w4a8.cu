// bench_cuda_w4a8: nibble's W4A8 GEMM (fp8 e4m3 activations, int4 weights, output * alpha)
// against cuBLASLt's FP8 GEMM (cublasLtMatmul, e4m3 x e4m3, fp32 compute) and nibble's W4A16, on
// the W4A16 issue's shapes, in one run; plus the activation quantization kernel alone.
//
//   bench_cuda_w4a8 [--quick] [--dtype fp16|bf16]
//
// Weights are cold (rotating copies over 4x L2); launches are graph-captured and timed with
// events (median of replays). W4A8 is timed as the GEMM on already-quantized activations (as
// cuBLASLt FP8, which also takes fp8 inputs); the "quant us" column is the activation kernel on
// its own (static per-tensor scale). Needs sm_89 or newer; otherwise it says so and measures
// nothing.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "nibble/cuda/device_buffer.cuh"
#include "nibble/cuda/w4a16.cuh"
#include "nibble/cuda/w4a8.cuh"
#include "support/bench_harness.cuh"

namespace {

using nibble::bf16;
using nibble::fp16;
using nibble::cuda::check_cuda;
using nibble::cuda::DeviceBuffer;
using namespace nibble::cuda::bench;  // NOLINT

// cuBLASLt FP8: D[N, M] (column-major) = alpha * W[K, N]^T (column-major, i.e. W row-major
// [N, K]) * X[K, M], the TN form FP8 requires. Returns false when cuBLASLt has no algorithm.
template <class T>
struct LtFp8Gemm {
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulHeuristicResult_t heuristic{};
  bool ok = false;

  LtFp8Gemm(cublasLtHandle_t lt, int64_t m, int64_t n, int64_t k, int64_t workspace_bytes) {
    check_cublas(cublasLtMatmulDescCreate(&operation, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                 "cublasLtMatmulDescCreate");
    const cublasOperation_t transpose = CUBLAS_OP_T;
    const cublasOperation_t keep = CUBLAS_OP_N;
    check_cublas(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                                sizeof(transpose)),
                 "CUBLASLT_MATMUL_DESC_TRANSA");
    check_cublas(
        cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep)),
        "CUBLASLT_MATMUL_DESC_TRANSB");
    const cudaDataType_t out = std::is_same_v<T, fp16> ? CUDA_R_16F : CUDA_R_16BF;
    check_cublas(cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, static_cast<uint64_t>(k),
                                            static_cast<uint64_t>(n), k),
                 "cublasLtMatrixLayoutCreate A");
    check_cublas(cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, static_cast<uint64_t>(k),
                                            static_cast<uint64_t>(m), k),
                 "cublasLtMatrixLayoutCreate B");
    check_cublas(
        cublasLtMatrixLayoutCreate(&d, out, static_cast<uint64_t>(n), static_cast<uint64_t>(m), n),
        "cublasLtMatrixLayoutCreate D");
    cublasLtMatmulPreference_t preference;
    check_cublas(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
    const uint64_t bytes = static_cast<uint64_t>(workspace_bytes);
    check_cublas(cublasLtMatmulPreferenceSetAttribute(
                     preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bytes, sizeof(bytes)),
                 "CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES");
    int found = 0;
    ok = cublasLtMatmulAlgoGetHeuristic(lt, operation, a, b, d, d, preference, 1, &heuristic,
                                        &found) == CUBLAS_STATUS_SUCCESS &&
         found > 0;
    cublasLtMatmulPreferenceDestroy(preference);
  }
  ~LtFp8Gemm() {
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(d);
    cublasLtMatmulDescDestroy(operation);
  }
};

template <class T>
void bench_shape(const GemmShape& shape, const std::vector<int64_t>& ms, cudaStream_t stream,
                 cublasLtHandle_t lt, int l2_bytes, double hbm_gbps, const char* dtype) {
  using namespace nibble::cuda;
  const int64_t group_size = 128;
  const Int4Copies<fp16> w4a8_weights =
      random_int4_copies<fp16>(shape.n, shape.k, group_size, l2_bytes);
  const Int4Copies<T> w4a16_weights = random_int4_copies<T>(shape.n, shape.k, group_size, l2_bytes);
  const int fp8_copies = cold_copies(shape.n * shape.k, l2_bytes);
  std::vector<uint8_t> dense(static_cast<std::size_t>(shape.n * shape.k));
  for (std::size_t i = 0; i < dense.size(); ++i) {
    dense[i] = static_cast<uint8_t>((i * 37 + i / 91) & 0x77);  // finite e4m3 values, both signs
  }
  std::vector<DeviceBuffer<uint8_t>> fp8_weights;
  for (int c = 0; c < fp8_copies; ++c)
    fp8_weights.emplace_back(dense);
  const int64_t max_m = *std::max_element(ms.begin(), ms.end());
  const DeviceBuffer<T> x(random_values<T>(static_cast<std::size_t>(max_m * shape.k), 1.0f, 4));
  DeviceBuffer<uint8_t> x8(static_cast<std::size_t>(max_m * shape.k));
  DeviceBuffer<T> y(static_cast<std::size_t>(max_m * shape.n));
  const int64_t lt_workspace_bytes = int64_t{32} << 20;
  DeviceBuffer<unsigned char> lt_workspace(static_cast<std::size_t>(lt_workspace_bytes));
  w4a8::ActivationQuant<T> quant;
  quant.inverse_scale = 1.0f / 0.02f;

  for (int64_t m : ms) {
    quantize_activations_fp8(x.data(), m, shape.k, quant, x8.data(), nullptr, stream);
    W4A8Weights w8;
    w8.n = shape.n;
    w8.k = shape.k;
    w8.group_size = group_size;
    w8.words = w4a8_weights.words.front().data();
    w8.scales = w4a8_weights.scales.front().data();
    const w4a16::LaunchPlan plan8 = plan_gemm_w4a8(w8, m);
    DeviceBuffer<unsigned char> workspace8(static_cast<std::size_t>(plan8.workspace_bytes));
    const int copies8 = static_cast<int>(w4a8_weights.words.size());
    const double w4a8_us = median_us(stream, std::max(copies8, 8), 9, [&](int i) {
      w8.words = w4a8_weights.words[static_cast<std::size_t>(i % copies8)].data();
      w8.scales = w4a8_weights.scales[static_cast<std::size_t>(i % copies8)].data();
      gemm_w4a8(w8, x8.data(), nullptr, 0.5f, y.data(), m, plan8, workspace8.data(),
                plan8.workspace_bytes, stream);
    });
    const double quant_us = median_us(stream, 8, 9, [&](int) {
      quantize_activations_fp8(x.data(), m, shape.k, quant, x8.data(), nullptr, stream);
    });
    W4A16Weights<T> w16;
    w16.n = shape.n;
    w16.k = shape.k;
    w16.group_size = group_size;
    w16.words = w4a16_weights.words.front().data();
    w16.scales = w4a16_weights.scales.front().data();
    const w4a16::LaunchPlan plan16 = plan_gemm_w4a16(w16, m);
    DeviceBuffer<unsigned char> workspace16(static_cast<std::size_t>(plan16.workspace_bytes));
    const int copies16 = static_cast<int>(w4a16_weights.words.size());
    const double w4a16_us = median_us(stream, std::max(copies16, 8), 9, [&](int i) {
      w16.words = w4a16_weights.words[static_cast<std::size_t>(i % copies16)].data();
      w16.scales = w4a16_weights.scales[static_cast<std::size_t>(i % copies16)].data();
      gemm_w4a16(w16, x.data(), y.data(), m, plan16, workspace16.data(), plan16.workspace_bytes,
                 stream);
    });
    // cuBLASLt FP8; if it has no algorithm for this M, M rounded up to 16 (marked '*').
    int64_t lt_m = m;
    auto lt_gemm = std::make_unique<LtFp8Gemm<T>>(lt, lt_m, shape.n, shape.k, lt_workspace_bytes);
    if (!lt_gemm->ok) {
      lt_m = (m + 15) / 16 * 16;
      lt_gemm = std::make_unique<LtFp8Gemm<T>>(lt, lt_m, shape.n, shape.k, lt_workspace_bytes);
    }
    double lt_us = 0.0;
    if (lt_gemm->ok && lt_m <= max_m) {
      const float alpha = 0.5f;
      const float beta = 0.0f;
      lt_us = median_us(stream, std::max(fp8_copies, 8), 9, [&](int i) {
        check_cublas(
            cublasLtMatmul(lt, lt_gemm->operation, &alpha,
                           fp8_weights[static_cast<std::size_t>(i % fp8_copies)].data(), lt_gemm->a,
                           x8.data(), lt_gemm->b, &beta, y.data(), lt_gemm->d, y.data(), lt_gemm->d,
                           &lt_gemm->heuristic.algo, lt_workspace.data(),
                           static_cast<size_t>(lt_workspace_bytes), stream),
            "cublasLtMatmul");
      });
    }
    const double bytes =
        static_cast<double>(w4a8_weights.bytes_each + m * shape.k + m * shape.n * 2);
    const double gbps = bytes / w4a8_us / 1e3;
    std::printf("%-5s %6lld %6lld %6lld %7d %9.2f %9.2f %9.2f%s %9.2f %8.2fx %8.2fx %6.1f%%\n",
                dtype, static_cast<long long>(m), static_cast<long long>(shape.k),
                static_cast<long long>(shape.n), plan8.splits, w4a8_us, quant_us, lt_us,
                lt_m != m ? "*" : " ", w4a16_us, lt_us > 0.0 ? lt_us / w4a8_us : 0.0,
                w4a16_us / w4a8_us, 100.0 * gbps / hbm_gbps);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  return bench_main(
      argc, argv, "bench_cuda_w4a8", 89,
      [](const BenchOptions& options, const BenchDevice& device) {
        cublasLtHandle_t lt;
        check_cublas(cublasLtCreate(&lt), "cublasLtCreate");
        std::printf("configurations:\n%s", nibble::cuda::w4a8::config_table().c_str());
        std::printf(
            "weights int4 g128 symmetric; output %s; '*': cuBLASLt needed M rounded to 16\n",
            options.dtype.c_str());
        std::printf("%-5s %6s %6s %6s %7s %9s %9s %10s %9s %9s %9s %7s\n", "dtype", "M", "K", "N",
                    "splits", "w4a8 us", "quant us", "lt fp8 us", "w4a16 us", "vs fp8", "vs w4a16",
                    "of HBM");
        const std::vector<int64_t> ms = gemm_rows(options.quick);
        for (const GemmShape& shape : gemm_shapes(options.quick)) {
          with_dtype(options, [&](auto type) {
            bench_shape<decltype(type)>(shape, ms, device.stream, lt, device.properties.l2CacheSize,
                                        device.hbm_gbps, options.dtype.c_str());
          });
        }
        cublasLtDestroy(lt);
      });
}
