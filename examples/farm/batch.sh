#!/usr/bin/env bash
# Reconstruct many videos, one project each, one after another (or run several copies of this
# script at once: the project lock makes each video be worked on by one process at a time).
#
#   bash examples/farm/batch.sh projects/ clips/*.mp4
#
# Reruns are cheap: finished stages report "cached"; interrupted ones resume.
set -uo pipefail
out=${1:?usage: batch.sh OUT_DIR VIDEO...}; shift
vid3d=${VID3D:-vid3d}
status=0
for video in "$@"; do
  project="$out/$(basename "${video%.*}")"
  if "$vid3d" run "$project" --input "$video" --json --wait > "$project.json.tmp" 2>> "$out/batch.log"; then
    mv "$project.json.tmp" "$project.json"
  else
    code=$?
    echo "$video: failed with exit code $code (see $project/logs/vid3d.log)" >&2
    status=1
  fi
done
exit $status
