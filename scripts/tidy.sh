#!/usr/bin/env bash
# Runs clang-tidy (the checks in .clang-tidy) over the library and the command. Uses a build
# folder configured without precompiled headers (clang cannot read GCC's), build-tidy/.
#   scripts/tidy.sh [files...]     (default: every .cpp under lib/ and app/)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v clang-tidy >/dev/null || { echo "tidy.sh: clang-tidy is not installed (apt-get install clang-tidy)" >&2; exit 2; }
# Files named relative to where the script was started from, before moving to the root.
files=()
for file in "$@"; do files+=("$(realpath -m "$file")"); done
cd "$root"
torch_prefix=$(.venv/bin/python -W ignore -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
# Configured every time (a few seconds) so that the compile commands follow the CMake files.
cmake -S . -B build-tidy -G Ninja -DCMAKE_BUILD_TYPE=Release -DPCONV_PCH=OFF \
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DCUDAToolkit_ROOT=/usr/local/cuda -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc >/dev/null
[ ${#files[@]} -gt 0 ] || mapfile -t files < <(git ls-files 'lib/*.cpp' 'app/*.cpp')
status=0
for file in "${files[@]}"; do
  echo "clang-tidy $file" >&2
  # Its "N warnings generated" counts (system headers' warnings, not shown) are left out.
  clang-tidy -p build-tidy --quiet --extra-arg=-std=gnu++17 "$file" \
    2> >(grep -v 'warnings\? generated\.$' >&2) || status=1
done
exit $status
