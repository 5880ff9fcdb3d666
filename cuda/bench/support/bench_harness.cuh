// Timing and roofline helpers shared by nibble's CUDA benchmarks (see ../shared's bench method):
// graph-captured launches timed with events (median of replays), the device's HBM read rate
// measured by the same binary, cold weights by rotating copies larger than L2.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "nibble/core/float16.hpp"
#include "nibble/cuda/check.cuh"
#include "nibble/cuda/device_buffer.cuh"

namespace nibble::cuda::bench {

void check_cublas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "bench: %s failed (cuBLAS status %d)\n", call, static_cast<int>(status));
    std::exit(1);
  }
}

// Median time of one launch of `launch(i)` (i = 0.. launches-1), captured as a graph of
// `launches` launches and replayed `replays` times.
template <class Launch>
double median_us(cudaStream_t stream, int launches, int replays, Launch&& launch) {
  for (int i = 0; i < 3; ++i)
    launch(i);  // warm-up outside the graph (module load, handles)
  nibble::cuda::check_cuda(cudaStreamSynchronize(stream), "bench", "warm-up");
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  nibble::cuda::check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
                           "bench", "cudaStreamBeginCapture");
  for (int i = 0; i < launches; ++i)
    launch(i);
  nibble::cuda::check_cuda(cudaStreamEndCapture(stream, &graph), "bench", "cudaStreamEndCapture");
  nibble::cuda::check_cuda(cudaGraphInstantiate(&exec, graph, 0), "bench", "cudaGraphInstantiate");
  nibble::cuda::check_cuda(cudaGraphLaunch(exec, stream), "bench", "cudaGraphLaunch (warm-up)");
  cudaEvent_t start, stop;
  nibble::cuda::check_cuda(cudaEventCreate(&start), "bench", "cudaEventCreate");
  nibble::cuda::check_cuda(cudaEventCreate(&stop), "bench", "cudaEventCreate");
  std::vector<double> times;
  for (int r = 0; r < replays; ++r) {
    nibble::cuda::check_cuda(cudaEventRecord(start, stream), "bench", "cudaEventRecord");
    nibble::cuda::check_cuda(cudaGraphLaunch(exec, stream), "bench", "cudaGraphLaunch");
    nibble::cuda::check_cuda(cudaEventRecord(stop, stream), "bench", "cudaEventRecord");
    nibble::cuda::check_cuda(cudaEventSynchronize(stop), "bench", "cudaEventSynchronize");
    float ms = 0.0f;
    nibble::cuda::check_cuda(cudaEventElapsedTime(&ms, start, stop), "bench",
                             "cudaEventElapsedTime");
    times.push_back(1000.0 * ms / launches);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

__global__ void read_all(const uint4* data, std::size_t count, unsigned* sink) {
  unsigned folded = 0;
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < count;
       i += std::size_t{gridDim.x} * blockDim.x) {
    const uint4 v = __ldcs(data + i);  // streaming: no reuse
    folded ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (folded == 0x9E3779B9u) *sink = folded;  // keeps the loads; practically never taken
}

// HBM read bandwidth in GB/s: a 2 GiB buffer read once per launch.
double measure_read_bandwidth(cudaStream_t stream, int sm_count) {
  const std::size_t bytes = std::size_t{2} << 30;
  nibble::cuda::DeviceBuffer<uint4> buffer(bytes / sizeof(uint4));
  nibble::cuda::check_cuda(cudaMemset(buffer.data(), 0x5A, bytes), "bench", "cudaMemset");
  nibble::cuda::DeviceBuffer<unsigned> sink(1);
  const double us = median_us(stream, 4, 7, [&](int) {
    read_all<<<sm_count * 8, 512, 0, stream>>>(buffer.data(), buffer.size(), sink.data());
  });
  return static_cast<double>(bytes) / us / 1e3;
}

template <class T>
std::vector<T> random_values(std::size_t count, float spread, uint32_t seed) {
  std::mt19937 random(seed);
  std::normal_distribution<float> value(0.0f, spread);
  std::vector<T> out(count);
  for (T& v : out)
    v = from_float<T>(value(random));
  return out;
}

// Copies of a `bytes`-sized operand so that the copies together exceed L2 four times (at least 2).
inline int cold_copies(int64_t bytes, int l2_bytes) {
  return static_cast<int>(std::max<int64_t>(2, (int64_t{4} * l2_bytes + bytes - 1) / bytes));
}

// The shapes and row counts of the W4A16 / W4A8 issues (K x N; M), or a quick subset.
struct GemmShape {
  int64_t k;
  int64_t n;
};
inline std::vector<GemmShape> gemm_shapes(bool quick) {
  if (quick) return {{4096, 4096}, {8192, 28672}};
  return {{4096, 4096}, {4096, 14336}, {14336, 4096}, {8192, 28672}, {28672, 8192}};
}
inline std::vector<int64_t> gemm_rows(bool quick) {
  if (quick) return {1, 16, 64, 1024};
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096};
}

// `copies` device copies of random int4 words (every nibble pattern equally likely) and small
// random scales of type S for an [N, K] weight in groups of `group_size`.
template <class S>
struct Int4Copies {
  std::vector<nibble::cuda::DeviceBuffer<uint32_t>> words;
  std::vector<nibble::cuda::DeviceBuffer<S>> scales;
  int64_t bytes_each = 0;  // words + scales of one copy
};
template <class S>
Int4Copies<S> random_int4_copies(int64_t n, int64_t k, int64_t group_size, int l2_bytes) {
  Int4Copies<S> copies;
  std::vector<uint32_t> words(static_cast<std::size_t>(n * k / 8));
  std::mt19937 random(1);
  for (uint32_t& word : words)
    word = static_cast<uint32_t>(random());
  const std::vector<S> scales =
      random_values<S>(static_cast<std::size_t>(n * (k / group_size)), 0.01f, 2);
  copies.bytes_each = static_cast<int64_t>(words.size() * 4 + scales.size() * sizeof(S));
  const int count = cold_copies(copies.bytes_each, l2_bytes);
  for (int c = 0; c < count; ++c) {
    copies.words.emplace_back(words);
    copies.scales.emplace_back(scales);
  }
  return copies;
}

struct BenchOptions {
  bool quick = false;
  std::string dtype = "fp16";  // the activation / output type: fp16 or bf16
};

// Calls f(fp16{}) or f(bf16{}) for the type --dtype named.
template <class F>
void with_dtype(const BenchOptions& options, F&& f) {
  if (options.dtype == "fp16") {
    f(fp16{});
  } else {
    f(bf16{});
  }
}

struct BenchDevice {
  cudaDeviceProp properties{};
  cudaStream_t stream = nullptr;
  double hbm_gbps = 0.0;  // measured read bandwidth
};

// A benchmark's main: parses [--quick] [--dtype fp16|bf16], says so and measures nothing without a
// device of compute capability >= min_arch, measures the HBM read rate, prints the device line,
// then runs body(options, device). nibble errors end it with their message (exit 1).
template <class Body>
int bench_main(int argc, char** argv, const char* name, int min_arch, Body body) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      options.quick = true;
    } else if (std::strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
      options.dtype = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--dtype fp16|bf16]\n", name);
      return 2;
    }
  }
  if (options.dtype != "fp16" && options.dtype != "bf16") {
    std::fprintf(stderr, "%s: --dtype %s (expected fp16 or bf16)\n", name, options.dtype.c_str());
    return 2;
  }
  std::string why;
  if (!have_device(min_arch, why)) {
    std::printf("%s: %s; nothing measured\n", name, why.c_str());
    return 0;
  }
  try {
    BenchDevice device;
    check_cuda(cudaGetDeviceProperties(&device.properties, 0), name, "cudaGetDeviceProperties");
    check_cuda(cudaStreamCreateWithFlags(&device.stream, cudaStreamNonBlocking), name,
               "cudaStreamCreate");
    device.hbm_gbps = measure_read_bandwidth(device.stream, device.properties.multiProcessorCount);
    std::printf("device: %s, sm_%d%d, %d SMs, L2 %d MiB; measured HBM read %.0f GB/s\n",
                device.properties.name, device.properties.major, device.properties.minor,
                device.properties.multiProcessorCount, device.properties.l2CacheSize >> 20,
                device.hbm_gbps);
    body(options, device);
    cudaStreamDestroy(device.stream);
  } catch (const Error& error) {
    std::fprintf(stderr, "%s: %s\n", name, error.what());
    return 1;
  }
  return 0;
}

}  // namespace nibble::cuda::bench
