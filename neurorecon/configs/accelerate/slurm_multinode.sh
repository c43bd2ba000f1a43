#!/bin/bash
# SLURM example: NeuroPictor pretraining on 2 nodes x 8 GPUs with accelerate (one launcher per node).
#   sbatch --nodes 2 neurorecon/configs/accelerate/slurm_multinode.sh pretrain
# Adapt the #SBATCH lines, the environment activation and the paths to your cluster. NEURORECON_HOME (and
# the prepared NSD store in it) must be on a shared file system. A killed or preempted job resumes from its
# last checkpoint when resubmitted with the same config and the same global batch (requeue-safe).
#SBATCH --job-name=neurorecon
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --output=neurorecon-%j.log
set -euo pipefail

STAGE=${1:-pretrain}
CONFIG=${CONFIG:-}                 # optional: your run YAML (weights and nsd_root paths)
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export NEURORECON_HOME=${NEURORECON_HOME:?set NEURORECON_HOME to a folder on the shared file system}
export OMP_NUM_THREADS=8

MAIN_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
EXTRA=()
if [ -n "$CONFIG" ]; then EXTRA+=(--config "$CONFIG"); fi

# one task per node; each starts GPUS_PER_NODE processes with its own machine rank
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
    --config_file '$HERE/ddp_multinode.yaml' \
    --num_machines $SLURM_NNODES --num_processes $NUM_PROCESSES \
    --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_NODE --main_process_port $MAIN_PORT \
    -m neurorecon.neuropictor.train --stage $STAGE --profile full ${EXTRA[*]:-}"
