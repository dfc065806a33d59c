#!/bin/bash
# Alternating runs of pconv inpaint --nchw / --channels-last on a few images; prints the network time and RSS.
cd "$(dirname "$0")/../../../.."   # the repository root
build/app/pconv masks -n 1 -o /tmp/clm/m --size 512x512 --seed 3 --overwrite >/dev/null  # the 16% mask
P=../shared/data/photos/val
imgs=("out/example/astronaut.png:out/example/astronaut.mask.png" "$P/$(ls $P | grep jpg | head -1):/tmp/clm/m/mask_00000.png" "$P/$(ls $P | grep jpg | sed -n 6p):/tmp/clm/m/mask_00000.png" "$P/$(ls $P | grep jpg | sed -n 16p):/tmp/clm/m/mask_00000.png")
for run in 1 2 3; do
  for im in "${imgs[@]}"; do
    img=${im%%:*}; mask=${im##*:}
    for f in --nchw --channels-last; do
      line=$( { /usr/bin/time -f "rss %M" build/app/pconv -v inpaint "$img" "$mask" --resize-mask -o /tmp/clm/out.png --device cpu --threads 2 $f; } 2>&1 | grep -E 'strategy|^rss' | tr '\n' ' ')
      echo "$run $f $(basename "$img") $line"
    done
  done
done
