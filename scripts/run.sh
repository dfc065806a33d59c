#!/usr/bin/env bash
# Sets up and builds pconv (scripts/setup.sh), then runs the main job: `pconv --help` and the
# layer demo (a stack of partial convolutions over an image with a hole), and says where the
# result is.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
pconv=${PCONV_BUILD_DIR:-$root/build}/app/pconv
out_dir=$root/out
mkdir -p "$out_dir"

"$pconv" --help
echo
"$pconv" demo --size 512 --hole-ratio 0.2 --device auto | tee "$out_dir/demo.txt"
echo
echo "result: $out_dir/demo.txt (the layer-by-layer table above)"
