#!/usr/bin/env bash
# An example batch job: fill the holes of every image in a folder, with masks matched by file
# stem (photos/cat.jpg <- masks/cat.png) or one mask for all, as a step of a shell pipeline.
#
#   scripts/inpaint-folder.sh PHOTOS_DIR MASKS_DIR_OR_FILE OUT_DIR [extra pconv inpaint options]
#
# The model is loaded once and the next image is read while the current one is computed.
# Re-running the job does only what is missing (--skip-existing), so it can be resumed after
# a failure or a Ctrl-C. Exit status: 0 all done; 3 some inputs were bad (listed on stderr,
# the rest done); other codes as in the README (2 usage, 4 model, 1 runtime).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pconv=${PCONV:-${PCONV_BUILD_DIR:-$root/build}/app/pconv}
if [ $# -lt 3 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
photos=$1 masks=$2 out=$3
shift 3
while [ "$out" != / ] && [ "${out%/}" != "$out" ]; do out=${out%/}; done

# pconv's messages go to the terminal and to OUT_DIR.log beside the output folder (the absolute
# path, so that "-o ." logs beside the current folder, not inside it), where each run of the
# job adds its own section. They are collected first: pconv makes the folder, or refuses the
# command, and then no log is left anywhere.
collected=$(mktemp)
trap 'rm -f "$collected"' EXIT
{
  "$pconv" inpaint --input "$photos" --masks "$masks" -o "$out" --skip-existing "$@" \
    2>&1 1>&3 3>&- | tee "$collected" >&2
  status=${PIPESTATUS[0]}
} 3>&1
# Refused: a usage error (2), a bad model (4) or an input that stops the whole job (3 without
# a count of failed images), before any image was done.
refused=false
case $status in
  2 | 4) refused=true ;;
  3) grep -q "images failed" "$collected" || refused=true ;;
esac
log=""
if ! $refused; then
  if [ -d "$out" ]; then
    log="$(cd -- "$out" && pwd -P).log"
  elif parent=$(cd -- "$(dirname -- "$out")" 2>/dev/null && pwd -P); then
    # Every image failed: pconv removed the output folder it had made, and the log still goes
    # where it would have been.
    log="${parent%/}/$(basename -- "$out").log"
  fi
fi
if [ -n "$log" ] && [ "$log" != /.log ] && [ "$log" != .log ]; then
  { echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) exit status $status"; cat "$collected"; } >>"$log"
else
  log="the messages above"
fi
if $refused; then
  echo "pconv inpaint refused the job, exit status $status (see $log)" >&2
else
  case $status in
    0) echo "all images done: $out" ;;
    3) echo "done except the inputs named in $log (fix them and run again)" >&2 ;;
    *) echo "pconv inpaint failed with exit status $status (see $log)" >&2 ;;
  esac
fi
# The next stage of a pipeline can take the results of this run, e.g. to make thumbnails, with
# a marker file touched before the run:   find "$out" -type f -newer marker | xargs ...
exit $status
