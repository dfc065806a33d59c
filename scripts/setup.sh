#!/usr/bin/env bash
# Sets up pconv on a Debian 12 machine and builds it: installs the missing Debian packages,
# creates .venv with the pinned torch wheel (its LibTorch is what pconv links), configures
# and builds in Release. Idempotent: a second run downloads nothing and rebuilds only what
# changed. Environment: PCONV_BUILD_DIR (default build), PCONV_JOBS (default nproc).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
torch_version=2.11.0
build_dir=${PCONV_BUILD_DIR:-$root/build}
jobs=${PCONV_JOBS:-$(nproc)}
venv=$root/.venv

say() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
packages=(build-essential cmake ninja-build python3 python3-venv
          libopencv-dev libcli11-dev libspdlog-dev libfmt-dev libgtest-dev nlohmann-json3-dev libgloo-dev libbenchmark-dev
          zlib1g-dev libpng-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# --- LibTorch from the torch wheel, in a project-local virtual environment ------------------
python=${PCONV_PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" - "$torch_version" 2>/dev/null <<'PY'
import sys, importlib.metadata as m
sys.exit(0 if m.version("torch").split("+")[0] == sys.argv[1] else 1)
PY
then
  say "installing torch==$torch_version into $venv (LibTorch with CUDA; a few GB, once)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==$torch_version"
fi
torch_prefix=$("$venv/bin/python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null)

# --- configure and build ---------------------------------------------------------------------
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  say "configuring $build_dir"
  cuda_args=()
  [ -x /usr/local/cuda/bin/nvcc ] && cuda_args=(-DCUDAToolkit_ROOT=/usr/local/cuda
                                               -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix" "${cuda_args[@]}" ${PCONV_CMAKE_ARGS:-} >/dev/null
fi
say "building $build_dir ($jobs jobs)"
cmake --build "$build_dir" -j "$jobs"
