#!/usr/bin/env bash
# One long generation spread over every GPU of several nodes: one torchrun per node, meeting the
# others through torchrun's c10d rendezvous on the first node; rank 0 owns the project.
#
#   sbatch --nodes=2 --gres=gpu:4 examples/farm/slurm_generate.sh PROJECT ref.png [vid3d generate flags]
#
# GPUS_PER_NODE (default: the GPUs Slurm gave the job on each node, else 1) sets the ranks per node;
# on a CPU partition leave out --gres and set GPUS_PER_NODE to the ranks wanted (gloo on the CPU).
#SBATCH --job-name=vid3d-generate
#SBATCH --ntasks-per-node=1
#SBATCH --time=04:00:00
set -euo pipefail
project=${1:?usage: slurm_generate.sh PROJECT REFERENCE_IMAGE [vid3d generate flags]}
image=${2:?usage: slurm_generate.sh PROJECT REFERENCE_IMAGE [vid3d generate flags]}
shift 2
torchrun=${TORCHRUN:-torchrun}
per_node=${GPUS_PER_NODE:-$(echo "${SLURM_GPUS_ON_NODE:-1}" | cut -d, -f1)}
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

# --kill-on-bad-exit: a node whose rank fails takes the other nodes' ranks down with it
srun --kill-on-bad-exit=1 "$torchrun" --nnodes "$SLURM_NNODES" --nproc-per-node "$per_node" \
  --rdzv-backend c10d --rdzv-endpoint "$head:${RDZV_PORT:-29500}" --rdzv-id "$SLURM_JOB_ID" \
  -m vid3d generate "$project" --image "$image" "$@" --wait
