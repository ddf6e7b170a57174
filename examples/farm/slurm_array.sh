#!/usr/bin/env bash
# One Slurm array task per video; the stages run as separate steps, so a task that dies is
# resumed by resubmitting it (cached stages return at once, training resumes from its checkpoint).
#
#   ls clips/*.mp4 > videos.txt
#   sbatch --array=1-$(wc -l < videos.txt) examples/farm/slurm_array.sh videos.txt projects/
#
# Options on sbatch's command line override the #SBATCH lines below. On a CPU partition ask for no
# GPU and at most the cores a node has (there, --gres=gpu:1 is refused or pends for ever):
#   sbatch --gres=none --cpus-per-task=2 --array=1-$(wc -l < videos.txt) examples/farm/slurm_array.sh ...
# VID3D_FLAGS is added to every vid3d command, e.g. VID3D_FLAGS="--config farm.toml" (split at
# spaces); VID3D names the vid3d program (default: the one on PATH).
# `scontrol requeue JOBID_TASK` (or Slurm requeueing a task itself) sends SIGTERM to the running
# vid3d, which saves a checkpoint, then runs the task again from the top: finished stages are
# cached, training continues from its checkpoint, and the task's log keeps every run (append).
#
#SBATCH --job-name=vid3d
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
list=${1:?usage: slurm_array.sh VIDEO_LIST OUT_DIR}
out=${2:?usage: slurm_array.sh VIDEO_LIST OUT_DIR}
vid3d=${VID3D:-vid3d}
flags=${VID3D_FLAGS:-}
video=$(sed -n "${SLURM_ARRAY_TASK_ID}p" "$list")
project="$out/$(basename "${video%.*}")"
mkdir -p "$out"
echo "task $SLURM_ARRAY_TASK_ID (run $((${SLURM_RESTART_COUNT:-0} + 1))): $video -> $project"

# $flags unquoted on purpose: one word per flag
srun "$vid3d" poses "$project" --input "$video" --wait --json $flags > "$project.poses.json"
srun "$vid3d" reconstruct "$project" --wait --json $flags > "$project.splats.json"
srun "$vid3d" export "$project" --mesh --splat ply --cameras --wait --json $flags > "$project.export.json"
