#!/usr/bin/env bash
# Sets up pconv on a Debian 12 machine and builds it: installs the missing Debian packages,
# creates .venv with the pinned torch wheel (its LibTorch is what pconv links), configures
# and builds in Release. Idempotent: a second run downloads nothing and rebuilds only what
# changed. Environment: PCONV_BUILD_DIR (default build), PCONV_JOBS (default nproc).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)  # -P: as CMake records it
torch_version=2.11.0
build_dir=${PCONV_BUILD_DIR:-$root/build}
jobs=${PCONV_JOBS:-$(nproc)}
venv=$root/.venv

say() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
packages=(build-essential cmake ninja-build python3 python3-venv
          libopencv-dev libcli11-dev libspdlog-dev libfmt-dev libgtest-dev nlohmann-json3-dev libgloo-dev libbenchmark-dev
          zlib1g-dev libpng-dev libjpeg-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  say "installing Debian packages: ${missing[*]}"
  # env: sudo's env_reset would drop the variable, and a debconf question would then wait,
  # unseen, for an answer.
  # shellcheck disable=SC2206  # $sudo: empty or one word
  apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=3)
  "${apt[@]}" update -qq
  "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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
  # A first run cut short while making the environment can leave a python without pip.
  if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    say "$venv has no pip: making it anew"
    "$python" -m venv --clear "$venv"
  fi
  say "installing torch==$torch_version into $venv (LibTorch with CUDA; a few GB, once)"
  # pip retries a connection, not a read cut off in the middle of a large wheel: try again.
  for attempt in 1 2 3; do
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --timeout 60 \
      "torch==$torch_version" && break
    [ "$attempt" -lt 3 ] || { say "could not install torch==$torch_version (see above)"; exit 1; }
    say "pip failed (attempt $attempt of 3); trying again in 15 s"
    sleep 15
  done
fi
# -W ignore: torch warns on import that it found no NumPy, which it needs only for Python
# arrays; nothing here uses them (an import that fails still says why).
if ! torch_prefix=$("$venv/bin/python" -W ignore -c 'import torch.utils; print(torch.utils.cmake_prefix_path)'); then
  say "$venv: torch is installed but cannot be imported (see above); remove $venv and run again"
  exit 1
fi
torch_cuda=$("$venv/bin/python" -W ignore -c 'import torch; print(torch.version.cuda or "")')

# --- configure and build ---------------------------------------------------------------------
# Configured when it has not been, or not whole (a configure that failed leaves a cache but no
# build.ninja), or for another source tree (a build/ copied along with a checkout).
cache=$build_dir/CMakeCache.txt
if [ -f "$cache" ] && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$root" "$cache"; then
  say "$build_dir was configured for another source tree: configuring it anew"
  rm -rf "$cache" "$build_dir/CMakeFiles"
fi
if [ ! -f "$cache" ] || [ ! -f "$build_dir/build.ninja" ]; then
  say "configuring $build_dir"
  cuda_args=()
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    cuda_args=(-DCUDAToolkit_ROOT=/usr/local/cuda -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
  elif [ -n "$torch_cuda" ] && ! command -v nvcc >/dev/null; then
    # LibTorch's CMake config stops without the toolkit when the wheel is a CUDA one.
    say "the torch wheel is built with CUDA $torch_cuda, whose CMake config needs the CUDA" \
      "toolkit: install it (nvcc at /usr/local/cuda/bin) and run again"
    exit 1
  fi
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix" "${cuda_args[@]}" ${PCONV_CMAKE_ARGS:-} >/dev/null
fi
say "building $build_dir ($jobs jobs)"
cmake --build "$build_dir" -j "$jobs"
