#!/usr/bin/env bash
# One Slurm array task per video; the stages run as separate steps, so a task that dies is
# resumed by resubmitting it (cached stages return at once, training resumes from its checkpoint).
#
#   ls clips/*.mp4 > videos.txt
#   sbatch --array=1-$(wc -l < videos.txt) examples/farm/slurm_array.sh videos.txt projects/
#
#SBATCH --job-name=vid3d
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --requeue
set -euo pipefail
list=${1:?usage: slurm_array.sh VIDEO_LIST OUT_DIR}
out=${2:?usage: slurm_array.sh VIDEO_LIST OUT_DIR}
vid3d=${VID3D:-vid3d}
video=$(sed -n "${SLURM_ARRAY_TASK_ID}p" "$list")
project="$out/$(basename "${video%.*}")"

srun "$vid3d" poses "$project" --input "$video" --wait --json > "$project.poses.json"
srun "$vid3d" reconstruct "$project" --wait --json > "$project.splats.json"
srun "$vid3d" export "$project" --mesh --splat ply --cameras --wait --json > "$project.export.json"
