#!/usr/bin/env bash
# Runs clang-tidy (the checks in .clang-tidy) over the library and the command. Uses a build
# folder configured without precompiled headers (clang cannot read GCC's), build-tidy/.
#   scripts/tidy.sh [files...]     (default: every .cpp under lib/ and app/)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
torch_prefix=$(.venv/bin/python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
# Configured every time (a few seconds) so that the compile commands follow the CMake files.
cmake -S . -B build-tidy -G Ninja -DCMAKE_BUILD_TYPE=Release -DPCONV_PCH=OFF \
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DCUDAToolkit_ROOT=/usr/local/cuda >/dev/null
files=("$@")
[ ${#files[@]} -gt 0 ] || mapfile -t files < <(git ls-files 'lib/*.cpp' 'app/*.cpp')
status=0
for file in "${files[@]}"; do
  echo "clang-tidy $file" >&2
  clang-tidy -p build-tidy --quiet --extra-arg=-std=gnu++17 "$file" 2>/dev/null || status=1
done
exit $status
