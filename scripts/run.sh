#!/usr/bin/env bash
# The main job on a fresh machine: sets up and builds pconv (scripts/setup.sh), takes a real
# photo from a Debian package (NASA's public-domain astronaut portrait, 512x512, shipped in
# python3-skimage; only the .deb is downloaded and the one file unpacked, nothing installed),
# draws a hole mask with `pconv masks`, fills it with the shipped default model and says where
# the result is.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
pconv=${PCONV_BUILD_DIR:-$root/build}/app/pconv
example=$root/out/example
mkdir -p "$example"

photo=$example/astronaut.png
if [ ! -f "$photo" ]; then
  download=$(mktemp -d)
  trap 'rm -rf "$download" "$photo.tmp"' EXIT
  # Package lists that are stale or gone (as in many container images) are fetched once.
  if ! (cd "$download" && apt-get download -q python3-skimage); then
    sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "[run] updating the package lists and trying again" >&2
    $sudo apt-get -o Acquire::Retries=3 update -qq
    (cd "$download" && apt-get -o Acquire::Retries=3 download -q python3-skimage)
  fi
  dpkg-deb --fsys-tarfile "$download"/python3-skimage_*.deb |
    tar -xO ./usr/lib/python3/dist-packages/skimage/data/astronaut.png > "$photo.tmp"
  mv "$photo.tmp" "$photo"
fi
# One generated mask (white = hole) with about 10-20% of the photo missing.
"$pconv" masks -n 1 -o "$example/masks" --size 512x512 --seed 7 --min-ratio 0.1 \
  --max-ratio 0.2 --overwrite
cp "$example/masks/mask_00000.png" "$example/astronaut.mask.png"

result=$("$pconv" inpaint "$photo" "$example/astronaut.mask.png" --device auto \
  -o "$example/astronaut.inpainted.png" --compare "$example/astronaut.compare.png")
echo
echo "photo:  $photo"
echo "mask:   $example/astronaut.mask.png (white = hole)"
echo "result: $result"
echo "side by side (photo with holes | result | mask): $example/astronaut.compare.png"
