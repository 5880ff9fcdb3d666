#!/usr/bin/env bash
# Runs every nibble test from a fresh clone: installs dependencies, then
#   1. the release preset: unit tests, convention tests against the numpy reference, the
#      one-TU-per-header check, compile-fail checks, the CUDA compile check (nvcc, sm_80/89/90)
#      and the consumer tests (install + find_package, add_subdirectory);
#   2. the dev preset (clang): the same unit tests and the CLI fault tests under
#      AddressSanitizer + UndefinedBehaviorSanitizer, the thread-safety test under
#      ThreadSanitizer, and each libFuzzer harness for 200000 seeded runs plus its regression inputs;
#   3. the Python module (pip install .) and its pytest suite, including the bit-exact interop
#      tests against onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's own python refuses system-wide pip installs (PEP 668); a pyenv python ignores this.
export PIP_BREAK_SYSTEM_PACKAGES=1
bash scripts/install-deps.sh
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
if command -v nvcc > /dev/null; then
  cmake --workflow --preset cuda   # release + the CUDA part required
elif [ "${NIBBLE_REQUIRE_CUDA:-0}" = 1 ]; then
  echo "test.sh: NIBBLE_REQUIRE_CUDA=1 but no nvcc was found (install the CUDA toolkit)" >&2
  exit 1
else
  echo "test.sh: no nvcc on this machine: the CUDA compile check is skipped" >&2
  cmake --workflow --preset release
fi
cmake --workflow --preset dev
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore ".[test]"
python3 -m pytest -q python/tests
