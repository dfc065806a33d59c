#!/usr/bin/env bash
# Sets up and builds pconv (scripts/setup.sh), then runs the whole test suite with CTest:
# unit tests, CLI tests, the CMake package test and one quick pass of the benchmarks.
# Extra arguments go to ctest (e.g. -L unit, -R cli, -V).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build_dir=${PCONV_BUILD_DIR:-$root/build}
cd "$build_dir"
ctest --output-on-failure --no-tests=error -j "${PCONV_JOBS:-$(nproc)}" "$@"
