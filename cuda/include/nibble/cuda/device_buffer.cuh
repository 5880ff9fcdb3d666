// A typed device allocation that frees itself, with checked copies to and from host vectors
// (for nibble's CUDA tests, benchmarks and examples; kernels take plain pointers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "nibble/core/error.hpp"
#include "nibble/cuda/check.cuh"

namespace nibble::cuda {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count_ > 0)
      check_cuda(cudaMalloc(reinterpret_cast<void**>(&data_), bytes()), "DeviceBuffer",
                 "cudaMalloc");
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), count_(other.count_) {
    other.data_ = nullptr;
    other.count_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = other.data_;
      count_ = other.count_;
      other.data_ = nullptr;
      other.count_ = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }

  void upload(const std::vector<T>& host) {
    if (host.size() != count_) {
      detail::fail(ErrorCode::shape_mismatch, "DeviceBuffer::upload: ", host.size(),
                   " elements into a buffer of ", count_);
    }
    if (count_ > 0) {
      check_cuda(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice),
                 "DeviceBuffer::upload", "cudaMemcpy");
    }
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    if (count_ > 0) {
      check_cuda(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost),
                 "DeviceBuffer::download", "cudaMemcpy");
    }
    return host;
  }

 private:
  void release() {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

// Whether device 0 exists and has compute capability >= min_arch (80 = sm_80, 89 = sm_89);
// `why` says what is missing.
inline bool have_device(int min_arch, std::string& why) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    why = std::string("no CUDA device (") +
          (status != cudaSuccess ? cudaGetErrorString(status) : "device count 0") + ")";
    return false;
  }
  int major = 0;
  int minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  if (major * 10 + minor < min_arch) {
    why = "device 0 is sm_" + std::to_string(major * 10 + minor) + ", below sm_" +
          std::to_string(min_arch);
    return false;
  }
  return true;
}

}  // namespace nibble::cuda
