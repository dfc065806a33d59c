#!/usr/bin/env bash
# Runs the layer benchmark the way the README's table was made: each layer shape in a process
# of its own (5 randomly interleaved repetitions, medians), then the geometric means of the
# ratios over all shapes, and the host's cost of a call (a layer whose arithmetic costs next to
# nothing). Writes the Markdown tables to out/bench-layer.md.
#   scripts/bench.sh [extra flags for bench_partial_conv2d, e.g. --device cuda --dtype bf16]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench=${PCONV_BUILD_DIR:-$root/build}/tests/bench/bench_partial_conv2d
out=$root/out/bench-layer.md
mkdir -p "$root/out"
rows=$(mktemp)
host=$(mktemp)
trap 'rm -f "$rows" "$host"' EXIT
for shape in 0 1 2 3 4 5; do
  "$bench" --shape "$shape" --benchmark_min_time=0.2 --benchmark_repetitions=5 \
    --benchmark_enable_random_interleaving=true "$@" | tee -a /dev/stderr | grep -E '^\| [0-9]' >>"$rows"
done
"$bench" --shape host --benchmark_min_time=0.5 --benchmark_repetitions=5 \
  --benchmark_enable_random_interleaving=true "$@" | tee -a /dev/stderr |
  awk '/^Host cost/ { on = 1 } on && /^$/ && seen { on = 0 } on { print; if (/^\|/) seen = 1 }' >"$host"
{
  echo "| layer | pass | batch | conv2d ms | pconv ms | pconv unfused ms | nvidia ms | pconv / conv2d | unfused / pconv | nvidia / pconv |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  sort -t'|' -k3,3 -s "$rows"
  echo
  echo "| geometric mean over the layers | pconv / conv2d | unfused / pconv | nvidia / pconv |"
  echo "|---|---|---|---|"
  awk -F'|' '{
      pass = $3; gsub(/^ +| +$/, "", pass); batch = $4 + 0
      for (key in k) delete k[key]
      k[pass " (batch 1 and 4)"]; k[pass " batch " batch]
      for (key in k) { conv[key] += log($9); un[key] += log($10); nv[key] += log($11); n[key]++ }
    } END {
      for (key in n) printf "| %s | %.3f | %.2f | %.2f |\n", key, exp(conv[key] / n[key]),
                            exp(un[key] / n[key]), exp(nv[key] / n[key])
    }' "$rows" | sort
  echo
  cat "$host"
} >"$out"
echo
cat "$out"
echo "written: $out"
