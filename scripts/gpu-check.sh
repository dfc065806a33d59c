#!/usr/bin/env bash
# The GPU check in one command, for the lent CUDA machine (see ../shared/GPU.md): builds the
# core (no OpenCV, no CLI) against the machine's torch, runs the unit tests (the *_CUDA ones
# included) and the layer benchmark on the GPU and on the CPU, and writes logs to OUT_DIR.
#
# That machine has no GoogleTest or Google Benchmark, so bring them as .deb files:
#   here:   scripts/gpu-check.sh --fetch-debs      (writes .gpu-debs/, which git ignores)
#   there:  scripts/gpu-check.sh OUT_DIR           (with .gpu-debs carried along)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
debs=$root/.gpu-debs

if [ "${1:-}" = "--fetch-debs" ]; then
  mkdir -p "$debs"
  (cd "$debs" && apt-get download libgtest-dev libgmock-dev googletest libbenchmark-dev libbenchmark1debian)
  ls -l "$debs"
  exit 0
fi

out_dir=${1:?usage: gpu-check.sh OUT_DIR | --fetch-debs}
mkdir -p "$out_dir"
deps=/tmp/pconv-deps
mkdir -p "$deps"
for deb in "$debs"/*.deb; do dpkg -x "$deb" "$deps"; done
python=${PCONV_GPU_PYTHON:-/opt/torch/.venv/bin/python}
torch_prefix=$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
build=/tmp/pconv-gpu-build
export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
} | tee "$out_dir/device.txt"

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/usr" -DPCONV_WITH_OPENCV=OFF -DPCONV_BUILD_APP=OFF \
  2>&1 | tee "$out_dir/configure.log"
cmake --build "$build" -j "$(nproc)" 2>&1 | tee "$out_dir/build.log"
"$build/tests/pconv_unit_tests" 2>&1 | tee "$out_dir/unit-tests.log"
"$build/tests/bench/bench_partial_conv2d" --device cuda --benchmark_min_time=0.2 \
  --benchmark_repetitions=3 2>&1 | tee "$out_dir/bench-cuda.txt"
