// Dequant-GEMM on the CPU: Y[M, N] = X[M, K] * dequant(W)[N, K]^T (+ bias).
//
//   nibble::gemm(w, x, y);                                   // fp32 activations, best ISA
//   nibble::gemm(w, x, y, bias, {.activations = nibble::ActivationPrecision::int8});
//
// W is any QuantTensorView (2/4/8 bits, symmetric or not, any group size; its leading
// dimensions flatten into N). X and Y are float, fp16 or bf16 (the same type), row-major, with
// any leading dimensions; Y has X's leading dimensions and N columns. M = 1 is a GEMV.
//
// Activations: fp32 (the products are computed in float; the default) or int8 (ONNX Runtime's
// accuracy_level 4, llama.cpp's Q8 activations): each row of X is quantized once, in blocks that
// divide the weights' group size, to int8 with scale max|x| / 127; integer dot products are
// scaled per block. Its error against fp32 is bounded by sum_k |w_k| * max|x|_block / 254 per
// output (tests/test_gemm.cpp checks that bound).
//
// The kernels run on the best ISA compiled in and supported by the CPU (see isa.hpp), threaded
// over N with OpenMP (GemmOptions::num_threads, 0 = OpenMP's default). They are re-entrant: no
// mutable global state but the lazily built kernel tables.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/parallel.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/kernels/cpu/detail/kernel_table.hpp"
#include "nibble/kernels/cpu/isa.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/quant_tensor.hpp"

#if defined(NIBBLE_WITH_CPU_KERNELS_X86)
// Defined in the nibble::cpu_kernels library, one translation unit per ISA (src/).
const nibble_cpu_kernel_table* nibble_cpu_kernels_avx2();
const nibble_cpu_kernel_table* nibble_cpu_kernels_avx512();
const nibble_cpu_kernel_table* nibble_cpu_kernels_avx512vnni();
#endif

namespace nibble {

enum class ActivationPrecision : uint8_t {
  fp32,  // activations stay float
  int8,  // activations quantized per block to int8; integer dot products
};

struct GemmOptions {
  int num_threads = 0;  // OpenMP threads over N; 0 = OpenMP's default
  ActivationPrecision activations = ActivationPrecision::fp32;
  Isa isa = Isa::automatic;  // automatic: NIBBLE_ISA if set, else the best available
};

// X quantized to int8 per row in blocks: what the int8 path multiplies with.
struct QuantizedActivations {
  int64_t rows = 0;
  int64_t padded_k = 0;            // row length (X's K rounded up to the weights' whole groups)
  int64_t block = 0;               // elements per block; divides the weights' group size
  std::vector<int8_t> codes;       // [rows, padded_k]; 0 in the padding
  std::vector<float> scales;       // [rows, padded_k / block]: max|x| / 127 (0 for all-zero)
  std::vector<int32_t> code_sums;  // [rows, padded_k / block]
};

namespace detail {

// The activation block for weights with `group_size`: the group itself when it is small, else
// the largest power of two <= 256 dividing it (per-channel rows of odd length: the whole row).
inline int64_t activation_block(int64_t group_size) {
  if (group_size <= 256) return group_size;
  for (int64_t block : {256, 128, 64, 32, 16}) {
    if (group_size % block == 0) return block;
  }
  return group_size;
}

// Rows of `x` (K valid elements each) quantized in blocks of `block` over `padded_k` elements.
template <class ActT>
QuantizedActivations quantize_activation_blocks(const TensorView<const ActT>& x, int64_t padded_k,
                                                int64_t block) {
  QuantizedActivations out;
  out.rows = x.rows();
  out.padded_k = padded_k;
  out.block = block;
  const int64_t blocks = padded_k / block;
  out.codes.assign(static_cast<std::size_t>(checked_mul(x.rows(), padded_k, "int8 activations")),
                   0);
  out.scales.assign(static_cast<std::size_t>(x.rows() * blocks), 0.0f);
  out.code_sums.assign(static_cast<std::size_t>(x.rows() * blocks), 0);
  const int64_t k = x.cols();
  for (int64_t row = 0; row < x.rows(); ++row) {
    const ActT* values = x.row(row);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * block;
      const int64_t end = std::min(begin + block, k);
      float amax = 0.0f;
      for (int64_t i = begin; i < end; ++i)
        amax = std::max(amax, std::fabs(to_float(values[i])));
      const auto index = static_cast<std::size_t>(row * blocks + b);
      if (amax == 0.0f) continue;  // codes stay 0, scale 0
      const float inverse = 127.0f / amax;
      int32_t sum = 0;
      for (int64_t i = begin; i < end; ++i) {
        // nearbyint: round half to even in the default environment; |x| <= amax keeps the code
        // within [-127, 127].
        const auto code = static_cast<int8_t>(std::nearbyint(to_float(values[i]) * inverse));
        out.codes[static_cast<std::size_t>(row * padded_k + i)] = code;
        sum += code;
      }
      out.scales[index] = amax / 127.0f;
      out.code_sums[index] = sum;
    }
  }
  return out;
}

// A 64-byte aligned scratch buffer.
class ScratchBuffer {
 public:
  explicit ScratchBuffer(std::size_t bytes) : storage_(new unsigned char[bytes + 64]) {
    void* pointer = storage_.get();
    std::size_t space = bytes + 64;
    data_ = std::align(64, bytes, pointer, space);
  }
  void* data() const { return data_; }

 private:
  std::unique_ptr<unsigned char[]> storage_;
  void* data_ = nullptr;
};

// The table for `isa`, or null when it is not compiled in.
inline const nibble_cpu_kernel_table* compiled_kernels(Isa isa) {
  switch (isa) {
    case Isa::generic: {
      static const nibble_cpu_kernel_table table =
          cpu::make_kernel_table<xsimd::default_arch>(xsimd::default_arch::name());
      return &table;
    }
#if defined(NIBBLE_WITH_CPU_KERNELS_X86)
    case Isa::avx2:
      return nibble_cpu_kernels_avx2();
    case Isa::avx512:
      return nibble_cpu_kernels_avx512();
    case Isa::avx512vnni:
      return nibble_cpu_kernels_avx512vnni();
#endif
    default:
      return nullptr;
  }
}

// The ISA a call with `requested` runs on: the request (or NIBBLE_ISA), checked, or the best
// available one.
inline Isa resolve_isa(Isa requested) {
  if (requested == Isa::automatic) requested = isa_from_environment();
  if (requested == Isa::automatic) {
    for (Isa isa : {Isa::avx512vnni, Isa::avx512, Isa::avx2}) {
      if (compiled_kernels(isa) != nullptr && cpu_supports(isa)) return isa;
    }
    return Isa::generic;
  }
  if (compiled_kernels(requested) == nullptr) {
    fail(ErrorCode::unsupported, "ISA ", to_string(requested),
         " is not compiled in (link nibble::cpu_kernels for avx2 / avx512 / avx512vnni)");
  }
  if (!cpu_supports(requested)) {
    fail(ErrorCode::unsupported, "ISA ", to_string(requested), " is not supported by this CPU");
  }
  return requested;
}

template <class ScaleT>
constexpr int scale_index() {
  return std::is_same_v<ScaleT, float> ? 0 : std::is_same_v<ScaleT, fp16> ? 1 : 2;
}

inline int bits_index(int bits) {
  return bits == 2 ? 0 : bits == 4 ? 1 : 2;
}

// The table whose kernel runs for this tensor: the resolved ISA's, unless the tensor's group size
// is not a multiple of what its fast kernels need, in which case the portable kernels run.
template <class ScaleT>
const nibble_cpu_kernel_table& kernels_for(const QuantTensorView<ScaleT>& w, Isa requested) {
  const nibble_cpu_kernel_table* table = compiled_kernels(resolve_isa(requested));
  if (w.layout().group_size % table->group_multiple != 0) table = compiled_kernels(Isa::generic);
  return *table;
}

template <class ScaleT, class ActT>
void run_gemm(const QuantTensorView<ScaleT>& w, const TensorView<const ActT>& x,
              const TensorView<ActT>& y, const ActT* bias, const GemmOptions& options) {
  static_assert(is_float_type_v<ActT>, "gemm: activations are float, fp16 or bf16");
  if (options.num_threads < 0) {
    fail(ErrorCode::invalid_argument, "GemmOptions.num_threads = ", options.num_threads,
         " (expected >= 0; 0 uses OpenMP's default)");
  }
  const nibble_cpu_kernel_table& table = kernels_for(w, options.isa);
  const RowLayout& layout = w.layout();
  const int64_t m = x.rows();
  const int64_t n = w.rows();
  const int64_t k = w.k();

  nibble_gemm_operands op{};
  op.m = m;
  op.n = n;
  op.padded_k = layout.padded_k;
  op.qweight = w.qweight();
  op.packed_row_bytes = layout.packed_row_bytes;
  op.scales = w.scales();
  op.zeros = w.zeros();
  op.zero_row_bytes = layout.zero_row_bytes;
  op.group_size = layout.group_size;
  op.n_groups = layout.n_groups;

  // Activations, padded to whole groups with zeros.
  std::vector<float> x_float;
  QuantizedActivations x_int8;
  const bool int8 = options.activations == ActivationPrecision::int8;
  if (int8) {
    x_int8 = quantize_activation_blocks(x, layout.padded_k, activation_block(layout.group_size));
    op.x_codes = x_int8.codes.data();
    op.x_scales = x_int8.scales.data();
    op.x_code_sums = x_int8.code_sums.data();
    op.x_block = x_int8.block;
  } else if (std::is_same_v<ActT, float> && layout.padded_k == k) {
    op.x = reinterpret_cast<const float*>(x.data());  // already float and unpadded: no copy
  } else {
    x_float.assign(static_cast<std::size_t>(checked_mul(m, layout.padded_k, "activations")), 0.0f);
    for (int64_t row = 0; row < m; ++row) {
      for (int64_t i = 0; i < k; ++i) {
        x_float[static_cast<std::size_t>(row * layout.padded_k + i)] = to_float(x.row(row)[i]);
      }
    }
    op.x = x_float.data();
  }

  std::vector<float> bias_float;
  if (bias != nullptr) {
    if constexpr (std::is_same_v<ActT, float>) {
      op.bias = bias;
    } else {
      for (int64_t col = 0; col < n; ++col)
        bias_float.push_back(to_float(bias[col]));
      op.bias = bias_float.data();
    }
  }
  std::vector<float> y_float;
  if constexpr (std::is_same_v<ActT, float>) {
    op.y = y.data();
  } else {
    y_float.assign(static_cast<std::size_t>(m * n), 0.0f);
    op.y = y_float.data();
  }

  const int bits = bits_index(w.bits());
  const nibble_gemm_rows_fn kernel =
      (int8 ? table.gemm_i8 : table.gemm_f32)[bits][scale_index<ScaleT>()];
  // X in the kernels' own order, once for all threads.
  const std::size_t prepared_bytes = table.prepared_bytes[bits][int8 ? 1 : 0](&op);
  std::unique_ptr<ScratchBuffer> prepared;
  if (prepared_bytes > 0) {
    prepared = std::make_unique<ScratchBuffer>(prepared_bytes);
    table.prepare[bits][int8 ? 1 : 0](&op, prepared->data());
    op.prepared = prepared->data();
  }
  // Columns in chunks of whole 64-column tiles, a few per thread for balance.
  const int threads = std::max(
      1, std::min<int>(thread_count(options.num_threads), static_cast<int>(ceil_div(n, 64))));
  const int64_t chunk = std::max<int64_t>(64, ceil_div(ceil_div(n, threads * 4), 64) * 64);
  const int64_t chunks = ceil_div(n, chunk);
  const std::size_t scratch_bytes = table.scratch_bytes(&op, chunk);
  std::vector<ScratchBuffer> scratch;
  for (int thread = 0; thread < threads; ++thread)
    scratch.emplace_back(scratch_bytes);
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
  for (int64_t index = 0; index < chunks; ++index) {
#if defined(_OPENMP)
    void* thread_scratch = scratch[static_cast<std::size_t>(omp_get_thread_num())].data();
#else
    void* thread_scratch = scratch[0].data();
#endif
    kernel(&op, index * chunk, std::min(n, (index + 1) * chunk), thread_scratch);
  }

  if constexpr (!std::is_same_v<ActT, float>) {
    for (std::size_t i = 0; i < y_float.size(); ++i)
      y.data()[i] = from_float<ActT>(y_float[i]);
  }
}

}  // namespace detail

// Y = X * dequant(W)^T. X [..., K], Y [..., N] (N = W's rows), both float, fp16 or bf16.
template <class ScaleT, class ActT>
void gemm(const QuantTensorView<ScaleT>& w, TensorView<const ActT> x, TensorView<ActT> y,
          const GemmOptions& options = {}) {
  detail::check_gemm_operands("gemm", w, x, y, w.rows());
  detail::run_gemm(w, x, y, static_cast<const ActT*>(nullptr), options);
}

// Y = X * dequant(W)^T + bias, bias [N] of the activation type.
template <class ScaleT, class ActT>
void gemm(const QuantTensorView<ScaleT>& w, TensorView<const ActT> x, TensorView<ActT> y,
          TensorView<const ActT> bias, const GemmOptions& options = {}) {
  detail::check_gemm_operands("gemm", w, x, y, w.rows());
  if (bias.shape() != Shape{w.rows()}) {
    detail::fail(ErrorCode::shape_mismatch, "gemm: bias has shape ", bias.shape(),
                 " (expected [N] = [", w.rows(), "])");
  }
  detail::run_gemm(w, x, y, bias.data(), options);
}

// The ISA whose kernels a gemm call with these weights and options runs ("avx512vnni", ...;
// the portable kernels report xsimd's architecture name, e.g. "sse2").
template <class ScaleT>
const char* gemm_isa(const QuantTensorView<ScaleT>& w, const GemmOptions& options = {}) {
  return detail::kernels_for(w, options.isa).isa;
}

// X [M, K] quantized as the int8 path does for weights with `group_size` (exposed for tests and
// for callers that reuse quantized activations).
template <class ActT>
QuantizedActivations quantize_activations(TensorView<const ActT> x, int64_t padded_k,
                                          int64_t group_size) {
  if (padded_k < x.cols() || group_size < 1 || padded_k % group_size != 0) {
    detail::fail(ErrorCode::invalid_argument, "quantize_activations: padded_k = ", padded_k,
                 ", group_size = ", group_size, " for K = ", x.cols(),
                 " (expected padded_k >= K, a multiple of group_size)");
  }
  return detail::quantize_activation_blocks(x, padded_k, detail::activation_block(group_size));
}

}  // namespace nibble
