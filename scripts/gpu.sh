#!/usr/bin/env bash
# GPU work in one command each, for the lent CUDA machine (see ../shared/GPU.md). That machine
# has torch (LibTorch) and Python but no OpenCV for C++, GoogleTest, Benchmark, CLI11 or spdlog:
# pconv is built there without OpenCV (images are tensor images, .pt) from .deb files fetched here.
#
#   here:   scripts/gpu.sh fetch                 .deb files into .gpu-debs/, the photos into
#                                                .gpu-data/photos (both ignored by git; carry them)
#   there:  scripts/gpu.sh check OUT_DIR         build, unit tests (*_CUDA included), benchmarks
#           scripts/gpu.sh train OUT_DIR SECONDS [pconv train options...]
#                                                photos -> tensor images, then pconv train on the
#                                                GPU in /tmp/pconv-run for at most SECONDS (Ctrl-C
#                                                at the limit = checkpoint); run again to resume.
# Every step logs into OUT_DIR; the build stays in /tmp/pconv-gpu-build between calls.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
debs=$root/.gpu-debs
command=${1:?usage: gpu.sh fetch | check OUT_DIR | train OUT_DIR SECONDS [options]}
shift

if [ "$command" = fetch ]; then
  mkdir -p "$debs"
  (cd "$debs" && apt-get download libgtest-dev libgmock-dev googletest libbenchmark-dev \
    libbenchmark1debian libcli11-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 nlohmann-json3-dev libgloo-dev)
  mkdir -p "$root/.gpu-data"
  rm -rf "$root/.gpu-data/photos"
  cp -r "$root/../shared/data/photos" "$root/.gpu-data/photos"
  du -sh "$debs" "$root/.gpu-data"
  exit 0
fi

out_dir=${1:?OUT_DIR}
shift
mkdir -p "$out_dir"
deps=/tmp/pconv-deps
python=${PCONV_GPU_PYTHON:-/opt/torch/.venv/bin/python}
build=/tmp/pconv-gpu-build
export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

build_pconv() {
  if [ ! -d "$deps/usr" ]; then
    mkdir -p "$deps"
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$deps"; done
  fi
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
    nproc
  } | tee "$out_dir/device.txt"
  local torch_prefix
  torch_prefix=$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
  if [ ! -f "$build/build.ninja" ]; then
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/usr" -DPCONV_WITH_OPENCV=OFF \
      > "$out_dir/configure.log" 2>&1 || { tail -40 "$out_dir/configure.log"; exit 1; }
  fi
  cmake --build "$build" -j "$(nproc)" > "$out_dir/build.log" 2>&1 || { tail -60 "$out_dir/build.log"; exit 1; }
  echo "built in $build"
}

case "$command" in
  check)
    build_pconv
    "$build/tests/pconv_unit_tests" 2>&1 | tee "$out_dir/unit-tests.log" | grep -E "^\[  (FAILED|PASSED|SKIPPED) |tests ran" || true
    "$build/tests/bench/bench_partial_conv2d" --device cuda --benchmark_min_time=0.2 \
      --benchmark_repetitions=3 > "$out_dir/bench-cuda.txt" 2>&1
    "$build/tests/bench/bench_train_step" --device cuda --benchmark_min_time=2 \
      > "$out_dir/bench-train-cuda.txt" 2>&1 || true
    tail -30 "$out_dir/bench-cuda.txt"
    tail -8 "$out_dir/bench-train-cuda.txt"
    ;;
  train)
    seconds=${1:?SECONDS}
    shift
    build_pconv
    photos=/tmp/pconv-photos
    if [ ! -d "$photos/val" ]; then
      "$python" "$root/scripts/photos_to_tensors.py" "$root/.gpu-data/photos" "$photos" \
        > "$out_dir/photos.log" 2>&1 || { tail "$out_dir/photos.log"; exit 1; }
    fi
    tail -1 "$out_dir/photos.log" 2>/dev/null || true
    run=${PCONV_GPU_RUN:-/tmp/pconv-run}
    resume=()
    [ -f "$run/checkpoint.pt" ] && resume=(--resume)
    status=0
    timeout -s INT -k 60 "$seconds" "$build/app/pconv" train --device cuda \
      --data "$photos/train" --val "$photos/val" -o "$run" "${resume[@]}" "$@" \
      > "$out_dir/train.log" 2>&1 || status=$?
    tr '\r' '\n' < "$out_dir/train.log" | grep -v "^\s*$" | tail -25
    for file in log.csv validation.csv config.txt; do
      [ -f "$run/$file" ] && cp "$run/$file" "$out_dir/"
    done
    if [ -f "$run/model.pt" ]; then
      # Files come back in pieces of at most 16 MiB: join them with cat.
      split -b 15M -d "$run/model.pt" "$out_dir/model.pt.part"
      ls -l "$out_dir"
    fi
    echo "pconv train exit status $status"
    ;;
  *)
    echo "unknown command: $command" >&2
    exit 2
    ;;
esac
