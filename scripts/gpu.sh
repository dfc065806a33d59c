#!/usr/bin/env bash
# GPU work in one command each, for the lent CUDA machine (see ../shared/GPU.md). That machine
# has torch (LibTorch) and Python but no OpenCV for C++, GoogleTest, Benchmark, CLI11 or spdlog:
# pconv is built there without OpenCV (images are tensor images, .pt) from .deb files fetched here.
#
#   here:   scripts/gpu.sh fetch                 .deb files into .gpu-debs/, the photos into
#                                                .gpu-data/photos (both ignored by git; carry them)
#   there:  scripts/gpu.sh check OUT_DIR         build, unit tests (*_CUDA included), all CTest
#                                                tests, pconv eval/inpaint on CUDA in each precision
#                                                (PCONV_GPU_TESTS=REGEX: only the tests it matches)
#           scripts/gpu.sh bench OUT_DIR         the layer (fp32/bf16, NCHW/channels-last), UNet
#                                                inference/training and train-step benchmarks
#           scripts/gpu.sh layer OUT_DIR [bench_partial_conv2d flags...]
#                                                builds only the layer benchmark and runs it
#                                                once with these flags (e.g. --dtype bf16
#                                                --batch 16), appending to bench-layer-runs.txt
#           scripts/gpu.sh train OUT_DIR SECONDS [pconv train options...]
#                                                photos -> tensor images, then pconv train on the
#                                                GPU in /tmp/pconv-run for at most SECONDS (Ctrl-C
#                                                at the limit = checkpoint); run again to resume.
# Every step logs into OUT_DIR; the build stays in /tmp/pconv-gpu-build between calls.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
debs=$root/.gpu-debs
command=${1:?usage: gpu.sh fetch | check OUT_DIR | bench OUT_DIR | train OUT_DIR SECONDS [options]}
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
  if [ ! -f "$deps/.complete" ]; then  # an extraction cut short is done again
    rm -rf "$deps"
    mkdir -p "$deps"
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$deps"; done
    touch "$deps/.complete"
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
  cmake --build "$build" -j "$(nproc)" ${build_target:+--target "$build_target"} \
    > "$out_dir/build.log" 2>&1 || { tail -60 "$out_dir/build.log"; exit 1; }
  echo "built in $build"
}

case "$command" in
  check)
    build_pconv
    # Every CTest test (unit tests one by one, *_CUDA included; distributed; package), without
    # the benchmark smoke runs; failures with their output.
    # 8 tests at a time, each unit test's own LibTorch with its share of the cores: with 16
    # OpenMP threads each, a CPU-heavy one took 125 s there (H100, 2026-11-23) and 0.7 s alone
    # on the 2-core machine. (The pconv commands the CLI tests start do not inherit it: the
    # tests clear OMP_NUM_THREADS for them.)
    OMP_NUM_THREADS=$(( $(nproc) / 8 > 0 ? $(nproc) / 8 : 1 )) \
      ctest --test-dir "$build" -j 8 --timeout 150 -E '^bench[.]' ${PCONV_GPU_TESTS:+-R "$PCONV_GPU_TESTS"} \
      --output-on-failure > "$out_dir/ctest.log" 2>&1 || true
    grep -E "_CUDA|tests passed|tests failed|\*\*\*Failed" "$out_dir/ctest.log" | tail -20 || true
    # The commands on the GPU: eval in each precision and layout (quality and time), and one
    # inpaint on CUDA against the CPU.
    photos=/tmp/pconv-photos
    [ -d "$photos/val" ] || "$python" "$root/scripts/photos_to_tensors.py" "$root/.gpu-data/photos/val" "$photos/val" > /dev/null
    {
      for variant in "--device cuda --precision fp32" "--device cuda --precision bf16" \
                     "--device cuda --precision fp16" "--device cuda --precision bf16 --channels-last" \
                     "--device cpu --threads 16"; do
        echo "== pconv eval --data val --per-bin 8 $variant"
        /usr/bin/time -f "%e s wall, %M KB peak RSS" "$build/app/pconv" -q eval --data "$photos/val" \
          --per-bin 8 $variant -o "/tmp/pconv-eval" 2>&1 | tail -12
      done
      first=$(ls "$photos/val" | head -1)
      "$python" -c "import torch,sys; img=torch.load(sys.argv[1]); m=torch.zeros(img.shape[:2],dtype=torch.uint8); m[100:220,150:300]=255; torch.save(m,sys.argv[2])" \
        "$photos/val/$first" /tmp/pconv-mask.pt
      rm -f /tmp/pconv-inpainted-*.pt
      for device in cpu cuda; do
        echo "== pconv inpaint $first --device $device"
        /usr/bin/time -f "%e s wall, %M KB peak RSS" "$build/app/pconv" inpaint "$photos/val/$first" \
          /tmp/pconv-mask.pt -o "/tmp/pconv-inpainted-$device.pt" --device "$device"
      done
      "$python" -c "import torch; a=torch.load('/tmp/pconv-inpainted-cpu.pt').float(); b=torch.load('/tmp/pconv-inpainted-cuda.pt').float(); print('inpaint cpu vs cuda: max |diff| (8-bit levels)', (a-b).abs().max().item())"
      # A damaged model and a damaged checkpoint on CUDA: one-line errors, exit status 4.
      head -c 100000 "$root/models/pconv-default.pt" > /tmp/pconv-damaged.pt
      echo "== pconv inpaint --model damaged.pt --device cuda"
      "$build/app/pconv" inpaint "$photos/val/$first" /tmp/pconv-mask.pt -o /tmp/pconv-damaged-out.pt \
        --model /tmp/pconv-damaged.pt --device cuda && echo "exit status 0" || echo "exit status $?"
      rm -rf /tmp/pconv-damaged-run && mkdir -p /tmp/pconv-damaged-run
      cp /tmp/pconv-damaged.pt /tmp/pconv-damaged-run/checkpoint.pt
      echo "== pconv train --resume from a damaged checkpoint --device cuda"
      "$build/app/pconv" train --device cuda --data "$photos/val" -o /tmp/pconv-damaged-run --resume \
        --steps 2 && echo "exit status 0" || echo "exit status $?"
    } > "$out_dir/cli-cuda.log" 2>&1 || true
    grep -E "^==| all |PSNR|per image|diff|wall|error|exit status" "$out_dir/cli-cuda.log" | head -60 || true
    ;;
  bench)
    build_pconv
    for config in "--dtype fp32 --format nchw" "--dtype bf16 --format nchw" "--dtype bf16 --format cl"; do
      echo "== bench_partial_conv2d --device cuda $config"
      "$build/tests/bench/bench_partial_conv2d" --device cuda $config --benchmark_color=false --benchmark_min_time=0.05 \
        --benchmark_repetitions=3 --benchmark_report_aggregates_only=true 2>&1 || echo "(exit status $?)"
    done > "$out_dir/bench-layer.txt"
    "$build/tests/bench/bench_unet" --device cuda --benchmark_color=false --benchmark_min_time=0.3 > "$out_dir/bench-unet.txt" 2>&1 || true
    "$build/tests/bench/bench_train_step" --device cuda --benchmark_color=false --benchmark_min_time=1 \
      > "$out_dir/bench-train-cuda.txt" 2>&1 || true
    # The ratio tables, the host cost of a call and the geometric means, the UNet images/s, the
    # train step; errors as they are.
    grep -E "^==|^\| [0-9]|^\| forward|^ +forward|exit status|CUDA GPU" "$out_dir/bench-layer.txt" || true
    grep -E "unet_|profiled|CUDA GPU|rror" "$out_dir/bench-unet.txt" | sed -E 's/ +[0-9]+ ms +[0-9]+ +/ /' | head -100 || true
    tail -6 "$out_dir/bench-train-cuda.txt"
    ;;
  layer)
    build_target=bench_partial_conv2d build_pconv
    {
      echo "== bench_partial_conv2d --device cuda $*"
      "$build/tests/bench/bench_partial_conv2d" --device cuda --benchmark_min_time=0.05 \
        --benchmark_repetitions=3 --benchmark_report_aggregates_only=true "$@" 2>&1 ||
        echo "(exit status $?)"
    } > "$out_dir/bench-layer-run.txt"
    cat "$out_dir/bench-layer-run.txt" >> "$out_dir/bench-layer-runs.txt"
    grep -E "^==|^\| |^ +forward|exit status" "$out_dir/bench-layer-run.txt" || true
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
    tr '\r' '\n' < "$out_dir/train.log" | { grep -v "^\s*$" || true; } | tail -25
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
