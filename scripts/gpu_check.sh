#!/usr/bin/env bash
# One call on a lent GPU machine (see ../shared's bench method): configure and build only the CUDA
# targets, run the GPU tests, then the benchmarks; logs under $OUT (or ./gpu_out).
#   bash scripts/gpu_check.sh [--quick]     (--quick: the benchmarks' short shape list)
# Prints the test summary and the benchmark tables last.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
[ "${1:-}" = "--quick" ] && quick=(--quick)
out="${OUT:-gpu_out}"
mkdir -p "$out"
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
cat "$out/gpu.txt"
build=build/gpu
# Only the device's architecture: a much shorter build than CI's three.
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DNIBBLE_CUDA=ON -DNIBBLE_BUILD_TOOLS=OFF \
  -DNIBBLE_BUILD_EXAMPLES=OFF -DNIBBLE_CONSUMER_TESTS=OFF -DNIBBLE_CUDA_ARCHITECTURES="$arch" \
  > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target test_w4a16 test_w4a8 bench_cuda_w4a16 bench_cuda_w4a8 \
  > "$out/build.log" 2>&1 || { grep -E "error" -A3 "$out/build.log" | head -40; exit 1; }
status=0
for test in test_w4a16 test_w4a8; do
  "$build/cuda/$test" --gtest_brief=1 > "$out/$test.log" 2>&1 || status=1
  grep -E "PASSED|FAILED|SKIPPED|pipeline" "$out/$test.log" | head -20
done
for dtype in fp16 bf16; do
  "$build/cuda/bench_cuda_w4a16" "${quick[@]}" --dtype "$dtype" > "$out/bench_w4a16_$dtype.txt" 2>&1 || status=1
  "$build/cuda/bench_cuda_w4a8" "${quick[@]}" --dtype "$dtype" > "$out/bench_w4a8_$dtype.txt" 2>&1 || status=1
done
cat "$out"/bench_*.txt
exit $status
