#!/usr/bin/env bash
# Builds ggml's side of the peer benchmark (bench/peers/peers.py): a CPU-only static ggml and,
# against it, bench/peers/ggml_peer.cpp.
#
#   bash bench/peers/build_ggml.sh WORKDIR
#
# ggml comes from the PyPI source distribution of ggml-python 0.0.45, whose vendor/ggml is the
# ggml source at version 0.15.3 (a pinned, checksummed artifact that pip can fetch; no git).
#
#   WORKDIR/download/     the sdist (downloaded once, reused when present)
#   WORKDIR/src/          the extracted sdist
#   WORKDIR/ggml-build/   ggml's CMake build (Release, static, GGML_NATIVE, CPU + OpenMP only)
#   WORKDIR/ggml_peer     the benchmark binary; its path is the last line this script prints
#
# Everything but that path goes to stderr. Builds with -j2 (set JOBS to change); extra CMake
# arguments for ggml can be passed in GGML_CMAKE_EXTRA (e.g. "-DGGML_LLAMAFILE=ON", which
# llama.cpp turns on by default and standalone ggml does not).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: bash bench/peers/build_ggml.sh WORKDIR" >&2
  exit 2
fi

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly PEER_SOURCE="${SCRIPT_DIR}/ggml_peer.cpp"
readonly GGML_PYTHON_VERSION="0.0.45"
readonly GGML_VERSION="0.15.3"
readonly JOBS="${JOBS:-2}"

mkdir -p "$1"
WORKDIR="$(cd "$1" && pwd)"
readonly WORKDIR
readonly DOWNLOAD_DIR="${WORKDIR}/download"
readonly SRC_DIR="${WORKDIR}/src"
readonly BUILD_DIR="${WORKDIR}/ggml-build"
readonly BINARY="${WORKDIR}/ggml_peer"

log() { echo "build_ggml: $*" >&2; }
start_seconds=${SECONDS}

# 1. The sdist. pip names it ggml_python-X.tar.gz (older pips: ggml-python-X.tar.gz).
# (find -print -quit rather than a pipe into head: under pipefail a SIGPIPE would abort the script.)
find_tarball() {
  [[ -d "${DOWNLOAD_DIR}" ]] || return 0
  find "${DOWNLOAD_DIR}" -maxdepth 1 -type f -name "ggml[-_]python-${GGML_PYTHON_VERSION}.tar.gz" \
    -print -quit
}
tarball="$(find_tarball)"
if [[ -z "${tarball}" ]]; then
  log "downloading ggml-python==${GGML_PYTHON_VERSION} (sdist) into ${DOWNLOAD_DIR}"
  mkdir -p "${DOWNLOAD_DIR}"
  python3 -m pip download --no-deps --no-binary :all: "ggml-python==${GGML_PYTHON_VERSION}" \
    -d "${DOWNLOAD_DIR}" >&2
  tarball="$(find_tarball)"
  if [[ -z "${tarball}" ]]; then
    log "pip did not leave ggml_python-${GGML_PYTHON_VERSION}.tar.gz in ${DOWNLOAD_DIR}"
    exit 1
  fi
else
  log "using ${tarball}"
fi

# 2. Extract it (once) and check that vendor/ggml is the ggml version we pin.
top_dir="$(tar -tzf "${tarball}" | awk -F/ 'NR == 1 { print $1 }')"
readonly GGML_SOURCE="${SRC_DIR}/${top_dir}/vendor/ggml"
if [[ ! -f "${GGML_SOURCE}/CMakeLists.txt" ]]; then
  log "extracting ${tarball}"
  mkdir -p "${SRC_DIR}"
  tar -xzf "${tarball}" -C "${SRC_DIR}"
fi
if [[ ! -f "${GGML_SOURCE}/CMakeLists.txt" ]]; then
  log "${tarball} has no vendor/ggml/CMakeLists.txt"
  exit 1
fi
version_of() { sed -n "s/^set(GGML_VERSION_$1 \([0-9]*\))$/\1/p" "${GGML_SOURCE}/CMakeLists.txt"; }
found_version="$(version_of MAJOR).$(version_of MINOR).$(version_of PATCH)"
if [[ "${found_version}" != "${GGML_VERSION}" ]]; then
  log "expected ggml ${GGML_VERSION} in ${GGML_SOURCE}, found ${found_version}"
  exit 1
fi

# 3. Configure and build ggml: static, tuned for this CPU, CPU backend with OpenMP, nothing else.
cmake_args=(
  -S "${GGML_SOURCE}" -B "${BUILD_DIR}"
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_BACKEND_DL=OFF
  -DGGML_NATIVE=ON
  -DGGML_CPU=ON
  -DGGML_OPENMP=ON
  -DGGML_BLAS=OFF
  -DGGML_CUDA=OFF
  -DGGML_HIP=OFF
  -DGGML_METAL=OFF
  -DGGML_VULKAN=OFF
  -DGGML_OPENCL=OFF
  -DGGML_CCACHE=OFF
  -DGGML_BUILD_TESTS=OFF
  -DGGML_BUILD_EXAMPLES=OFF
)
# The runtime weight repacking (the "CPU_REPACK" extra buffer type) is an option in 0.15.3; guard
# for ggml versions where it is not.
if grep -q "option(GGML_CPU_REPACK" "${GGML_SOURCE}/CMakeLists.txt"; then
  cmake_args+=(-DGGML_CPU_REPACK=ON)
else
  log "this ggml has no GGML_CPU_REPACK option"
fi
if [[ -n "${GGML_CMAKE_EXTRA:-}" ]]; then
  read -r -a extra <<<"${GGML_CMAKE_EXTRA}"
  cmake_args+=("${extra[@]}")
fi

log "configuring ggml ${found_version} into ${BUILD_DIR}"
cmake "${cmake_args[@]}" >&2
log "building ggml with -j${JOBS}"
cmake --build "${BUILD_DIR}" --config Release -j "${JOBS}" >&2

# 4. The peer binary. Link order: libggml (backend registry) needs libggml-cpu, and both need
# libggml-base.
libs=()
for name in ggml ggml-cpu ggml-base; do
  lib="$(find "${BUILD_DIR}" -type f -name "lib${name}.a" -print -quit)"
  if [[ -z "${lib}" ]]; then
    log "the ggml build produced no lib${name}.a"
    exit 1
  fi
  libs+=("${lib}")
done

log "compiling ${PEER_SOURCE}"
g++ -O2 -std=c++17 -march=native -fopenmp -Wall -Wextra \
  -I "${GGML_SOURCE}/include" \
  "${PEER_SOURCE}" -o "${BINARY}" \
  "${libs[@]}" -lpthread -lm -ldl -fopenmp

log "done in $((SECONDS - start_seconds)) s"
echo "${BINARY}"
