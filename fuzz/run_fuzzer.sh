#!/usr/bin/env bash
# CTest's fuzz.<harness>.run: a fixed budget of executions from a fixed seed, so a CI run is
# repeatable and a finding is the code's, not the clock's (a time budget explores differently on
# every machine and every load). Usage:
#   run_fuzzer.sh HARNESS_BINARY WORK_DIR ARTIFACT_PREFIX RUNS SEED CORPUS_DIR...
# WORK_DIR (where libFuzzer writes new inputs) starts empty on every run. What else libFuzzer's
# search depends on is pinned too: -reload=0 (no periodic corpus reload, a timer), one OpenMP
# thread (the readers' parallel regions would make coverage depend on scheduling), and no address
# randomization where setarch allows it (compare operands that are pointers feed the mutation
# dictionary). Exit status: the fuzzer's (0: no finding).
set -euo pipefail
binary=$1 work=$2 artifacts=$3 runs=$4 seed=$5
shift 5
rm -rf "$work"
mkdir -p "$work" "$(dirname "$artifacts")"
no_aslr=()
if setarch "$(uname -m)" -R true 2> /dev/null; then no_aslr=(setarch "$(uname -m)" -R); fi
export OMP_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
exec "${no_aslr[@]}" "$binary" -seed="$seed" -runs="$runs" -reload=0 -timeout=30 \
    -rss_limit_mb=3072 -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts" \
    "$work" "$@"
