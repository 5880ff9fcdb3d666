// bench_cuda_w4a16: nibble's W4A16 GEMM against cuBLAS fp16 GEMM and against the device's HBM read
// bandwidth, all measured by this binary in the same run.
//
//   bench_cuda_w4a16 [--quick] [--dtype fp16|bf16]
//
// Shapes K x N in {4096x4096, 4096x14336, 14336x4096, 8192x28672, 28672x8192} and M in
// {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096} (--quick: the first and the largest shape,
// M in {1, 16, 64, 1024}). Weights are cold: every timed launch reads a different copy, and the
// copies together exceed the L2 cache 4x. Launches are captured in a CUDA graph and timed with
// events over its replays (the median of several replays), as ../shared's bench method asks.
//
// Columns: time per GEMM (us), cuBLAS fp16 time, the speedup, the bytes W4A16 must move (int4
// weights + scales + X + Y) over its time, and that as a share of the measured HBM read rate.
// Without a device (or below sm_80) it says so and measures nothing.
#include <cublas_v2.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "nibble/cuda/device_buffer.cuh"
#include "nibble/cuda/w4a16.cuh"
#include "support/bench_harness.cuh"

namespace {

using nibble::bf16;
using nibble::fp16;
using nibble::cuda::check_cuda;
using nibble::cuda::DeviceBuffer;
using namespace nibble::cuda::bench;  // NOLINT

template <class T>
void bench_shape(const GemmShape& shape, const std::vector<int64_t>& ms, cudaStream_t stream,
                 cublasHandle_t cublas, int l2_bytes, double hbm_gbps, const char* dtype) {
  using namespace nibble::cuda;
  const int64_t group_size = 128;
  const Int4Copies<T> w4 = random_int4_copies<T>(shape.n, shape.k, group_size, l2_bytes);
  const int w4_copies = static_cast<int>(w4.words.size());
  const int64_t w4_bytes = w4.bytes_each;
  const int fp16_copies = cold_copies(shape.n * shape.k * 2, l2_bytes);
  const std::vector<T> host_dense =
      random_values<T>(static_cast<std::size_t>(shape.n * shape.k), 0.02f, 3);
  std::vector<DeviceBuffer<T>> dense_copies;
  for (int c = 0; c < fp16_copies; ++c)
    dense_copies.emplace_back(host_dense);
  const int64_t max_m = *std::max_element(ms.begin(), ms.end());
  const DeviceBuffer<T> x(random_values<T>(static_cast<std::size_t>(max_m * shape.k), 1.0f, 4));
  DeviceBuffer<T> y(static_cast<std::size_t>(max_m * shape.n));

  for (int64_t m : ms) {
    W4A16Weights<T> w;
    w.n = shape.n;
    w.k = shape.k;
    w.group_size = group_size;
    w.words = w4.words.front().data();
    w.scales = w4.scales.front().data();
    const w4a16::LaunchPlan plan = plan_gemm_w4a16(w, m);
    DeviceBuffer<unsigned char> workspace(static_cast<std::size_t>(plan.workspace_bytes));
    const int launches = std::max(w4_copies, 8);
    const double w4_us = median_us(stream, launches, 9, [&](int i) {
      w.words = w4.words[static_cast<std::size_t>(i % w4_copies)].data();
      w.scales = w4.scales[static_cast<std::size_t>(i % w4_copies)].data();
      gemm_w4a16(w, x.data(), y.data(), m, plan, workspace.data(), plan.workspace_bytes, stream);
    });
    const cudaDataType_t type = std::is_same_v<T, fp16> ? CUDA_R_16F : CUDA_R_16BF;
    const float one = 1.0f;
    const float zero = 0.0f;
    check_cublas(cublasSetStream(cublas, stream), "cublasSetStream");
    const double dense_us = median_us(stream, std::max(fp16_copies, 8), 9, [&](int i) {
      // Column-major: Y^T[N, M] = W[N, K] (row-major = col-major K x N, transposed) * X^T.
      check_cublas(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(shape.n),
                                static_cast<int>(m), static_cast<int>(shape.k), &one,
                                dense_copies[static_cast<std::size_t>(i % fp16_copies)].data(),
                                type, static_cast<int>(shape.k), x.data(), type,
                                static_cast<int>(shape.k), &zero, y.data(), type,
                                static_cast<int>(shape.n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx");
    });
    // The bytes the GEMM must move (the split-K workspace is overhead, not counted).
    const double bytes = static_cast<double>(w4_bytes + m * shape.k * 2 + m * shape.n * 2);
    const double gbps = bytes / w4_us / 1e3;
    std::printf("%-5s %6lld %6lld %6lld %7d %10.2f %10.2f %7.2fx %9.0f %6.1f%%\n", dtype,
                static_cast<long long>(m), static_cast<long long>(shape.k),
                static_cast<long long>(shape.n), plan.splits, w4_us, dense_us, dense_us / w4_us,
                gbps, 100.0 * gbps / hbm_gbps);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  return bench_main(
      argc, argv, "bench_cuda_w4a16", 80,
      [](const BenchOptions& options, const BenchDevice& device) {
        cublasHandle_t cublas;
        check_cublas(cublasCreate(&cublas), "cublasCreate");
        std::printf("configurations:\n%s", nibble::cuda::w4a16::config_table().c_str());
        std::printf("weights int4 g128 symmetric; cuBLAS: cublasGemmEx %s, fp32 compute\n",
                    options.dtype.c_str());
        std::printf("%-5s %6s %6s %6s %7s %10s %10s %8s %9s %7s\n", "dtype", "M", "K", "N",
                    "splits", "w4a16 us", "cublas us", "speedup", "GB/s", "of HBM");
        const std::vector<int64_t> ms = gemm_rows(options.quick);
        for (const GemmShape& shape : gemm_shapes(options.quick)) {
          with_dtype(options, [&](auto type) {
            bench_shape<decltype(type)>(shape, ms, device.stream, cublas,
                                        device.properties.l2CacheSize, device.hbm_gbps,
                                        options.dtype.c_str());
          });
        }
        cublasDestroy(cublas);
      });
}
