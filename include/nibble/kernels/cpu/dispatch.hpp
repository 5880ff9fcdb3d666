// How a CPU kernel call reaches its kernels: the ISA's table (run-time choice, see isa.hpp), the
// operands in the ABI's plain form (kernel_abi.hpp), and one OpenMP region that prepares the
// activations row-parallel and then runs the kernels over chunks of output columns.
//
// Used by gemm.hpp, moe_gemm.hpp and dequantize.hpp; nothing here is meant to be called directly.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "nibble/core/checked_math.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/parallel.hpp"
#include "nibble/kernels/cpu/detail/kernel_table.hpp"
#include "nibble/kernels/cpu/isa.hpp"
#include "nibble/kernels/cpu/kernel_abi.hpp"
#include "nibble/quant_tensor.hpp"

#if defined(NIBBLE_WITH_CPU_KERNELS_X86)
// Defined in the nibble::cpu_kernels library, one translation unit per ISA (src/).
const nibble_cpu_kernel_table* nibble_cpu_kernels_avx2();
const nibble_cpu_kernel_table* nibble_cpu_kernels_avx512();
const nibble_cpu_kernel_table* nibble_cpu_kernels_avx512vnni();
const nibble_cpu_kernel_table* nibble_cpu_kernels_avx512bf16();
#endif

namespace nibble::detail {

// A 64-byte aligned buffer.
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

// Whether `isa`'s kernels are compiled in. Runs no code of that ISA: safe on any CPU.
inline bool kernels_compiled(Isa isa) {
  switch (isa) {
    case Isa::generic:
      return true;
#if defined(NIBBLE_WITH_CPU_KERNELS_X86)
    case Isa::avx2:
    case Isa::avx512:
    case Isa::avx512vnni:
    case Isa::avx512bf16:
      return true;
#endif
    default:
      return false;
  }
}

// The table for `isa`, or null when it is not compiled in or this CPU lacks the ISA. The table
// getters live in translation units compiled with their ISA's flags, and even building the table
// (a function-local static) may use that ISA's instructions (an AVX-512 broadcast, on GCC 12):
// on a CPU without it the call itself is an illegal instruction. So the CPU is asked first.
inline const nibble_cpu_kernel_table* compiled_kernels(Isa isa) {
  if (!kernels_compiled(isa) || !cpu_supports(isa)) return nullptr;
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
    case Isa::avx512bf16:
      return nibble_cpu_kernels_avx512bf16();
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
    for (Isa isa : {Isa::avx512bf16, Isa::avx512vnni, Isa::avx512, Isa::avx2}) {
      if (kernels_compiled(isa) && cpu_supports(isa)) return isa;
    }
    return Isa::generic;
  }
  if (!kernels_compiled(requested)) {
    fail(ErrorCode::unsupported, "ISA ", to_string(requested),
         " is not compiled in (link nibble::cpu_kernels for avx2 / avx512 / avx512vnni / "
         "avx512bf16)");
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

// The table whose kernels run for this tensor: the resolved ISA's, unless the tensor's group size
// is not a multiple of what its fast kernels need, in which case the portable kernels run.
template <class ScaleT>
const nibble_cpu_kernel_table& kernels_for(const QuantTensorView<ScaleT>& w, Isa requested) {
  const nibble_cpu_kernel_table* table = compiled_kernels(resolve_isa(requested));
  if (w.layout().group_size % table->group_multiple != 0) table = compiled_kernels(Isa::generic);
  return *table;
}

inline int64_t round_up_to(int64_t value, int64_t multiple) {
  return ceil_div(value, multiple) * multiple;
}

inline void check_threads(const char* function, int num_threads) {
  if (num_threads < 0) {
    fail(ErrorCode::invalid_argument, function, ": num_threads = ", num_threads,
         " (expected >= 0; 0 uses OpenMP's default)");
  }
}

// Operands for W rows [first_row, first_row + n) (an expert of a 3-D tensor, or all rows);
// activations, outputs and bias are filled in by the caller.
template <class ScaleT>
nibble_gemm_operands weight_operands(const QuantTensorView<ScaleT>& w, int64_t first_row,
                                     int64_t n) {
  const RowLayout& layout = w.layout();
  nibble_gemm_operands op{};
  op.n = n;
  op.padded_k = layout.padded_k;
  op.qweight = w.qweight_row(first_row);
  op.packed_row_bytes = layout.packed_row_bytes;
  op.scales = w.scale_row(first_row);
  op.zeros = w.zero_row(first_row);
  op.zero_row_bytes = layout.zero_row_bytes;
  op.group_size = layout.group_size;
  op.n_groups = layout.n_groups;
  op.x_block = activation_block(layout.group_size);
  return op;
}

// Runs a batch of independent GEMMs (one per operand set: a plain gemm has one, moe_gemm one per
// expert) with one table, in one OpenMP region:
//   1. rows of every X: fill_rows(problem, row_begin, row_end) writes op.x's rows (conversion,
//      padding, gathering), then the table prepares them, in parallel over row chunks;
//   2. the kernels over (problem, chunk of output columns) items, dynamically scheduled.
// Each op.x must point at its problem's float rows when fill_rows returns; op.prepared is set here.
template <class FillRows>
void run_gemm_batch(const nibble_cpu_kernel_table& table, int bits, int scale, bool int8,
                    std::vector<nibble_gemm_operands>& ops, int num_threads, FillRows&& fill_rows) {
  const int b = bits_index(bits);
  const int a = int8 ? 1 : 0;
  const nibble_gemm_rows_fn kernel = table.gemm[b][scale][a];

  // Prepared activations, one buffer per problem.
  std::vector<std::unique_ptr<ScratchBuffer>> prepared(ops.size());
  for (std::size_t p = 0; p < ops.size(); ++p) {
    const std::size_t bytes = table.prepared_bytes[b][a](&ops[p]);
    if (bytes > 0) {
      prepared[p] = std::make_unique<ScratchBuffer>(bytes);
      ops[p].prepared = prepared[p]->data();
      table.prepare_shared[b][a](&ops[p], prepared[p]->data());
    }
  }

  // Work items: rows of X to prepare, and column chunks to compute. Chunks are whole 64-column
  // tiles (the panel kernels' tiles divide 64), sized so that every chunk of every problem holds
  // about the same work (columns x rows of X), 8 per thread for balance: a MoE batch's experts
  // differ in token count.
  struct Item {
    std::size_t problem;
    int64_t begin;
    int64_t end;
  };
  int64_t total_columns = 0;
  int64_t total_rows = 0;
  double total_work = 0.0;
  for (const auto& op : ops) {
    total_columns += op.n;
    total_rows += op.m;
    total_work += static_cast<double>(op.n) * static_cast<double>(op.m);
  }
  const int threads = std::max(
      1, std::min<int>(thread_count(num_threads), static_cast<int>(ceil_div(total_columns, 64))));
  const double work_per_chunk = total_work / (8.0 * threads);
  const int64_t row_chunk = std::max<int64_t>(1, ceil_div(total_rows, threads * 4));
  std::vector<Item> row_items;
  std::vector<Item> column_items;
  std::size_t scratch_bytes = 0;
  for (std::size_t p = 0; p < ops.size(); ++p) {
    for (int64_t row = 0; row < ops[p].m; row += row_chunk)
      row_items.push_back({p, row, std::min(ops[p].m, row + row_chunk)});
    const auto columns = static_cast<int64_t>(work_per_chunk / static_cast<double>(ops[p].m));
    const int64_t chunk = std::min(round_up_to(std::max<int64_t>(columns, 64), 64), ops[p].n);
    for (int64_t col = 0; col < ops[p].n; col += chunk)
      column_items.push_back({p, col, std::min(ops[p].n, col + chunk)});
    scratch_bytes = std::max(scratch_bytes, table.scratch_bytes[b][a](&ops[p]));
  }
  std::vector<ScratchBuffer> scratch;
  for (int thread = 0; thread < threads; ++thread)
    scratch.emplace_back(scratch_bytes);

  const auto row_count = static_cast<int64_t>(row_items.size());
  const auto column_count = static_cast<int64_t>(column_items.size());
  // Two phases in one team: the rows of X are prepared, then (after the implicit barrier of the
  // first omp for: every X is prepared before any kernel reads it) the column chunks run. An
  // exception in either phase is captured and rethrown after the region; a failed preparation
  // skips the kernels.
  ExceptionCapture prepare_failure;
  ExceptionCapture kernel_failure;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
  {
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t index = 0; index < row_count; ++index) {
      prepare_failure.run(index, [&] {
        const Item& item = row_items[static_cast<std::size_t>(index)];
        fill_rows(item.problem, item.begin, item.end);
        nibble_gemm_operands& op = ops[item.problem];
        table.prepare_rows[b][a](&op, const_cast<void*>(op.prepared), item.begin, item.end);
      });
    }
#if defined(_OPENMP)
    void* thread_scratch = scratch[static_cast<std::size_t>(omp_get_thread_num())].data();
#pragma omp for schedule(dynamic, 1)
#else
    void* thread_scratch = scratch[0].data();
#endif
    for (int64_t index = 0; index < column_count; ++index) {
      if (prepare_failure.failed()) continue;
      kernel_failure.run(index, [&] {
        const Item& item = column_items[static_cast<std::size_t>(index)];
        kernel(&ops[item.problem], item.begin, item.end, thread_scratch);
      });
    }
  }
  prepare_failure.rethrow();
  kernel_failure.rethrow();
}

}  // namespace nibble::detail
