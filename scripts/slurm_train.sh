#!/bin/bash
# Chapter 08 on many machines: the suggested run (gpu_train_config) on a SLURM cluster.
#     sbatch scripts/slurm_train.sh                      # 2 nodes x 8 GPUs, the "gpu" (mini-V3) preset
#     sbatch --nodes=4 scripts/slurm_train.sh --fsdp     # more nodes; extra flags go to `minids train`
#     PRESET=gpu-dense DATA=data/tinystories-bpe8192 sbatch scripts/slurm_train.sh
# Run it from the repository root with the environment active (sbatch passes it on). Prepare the
# token folder first, once, on a shared filesystem (python -m minids prepare ...; chapter 08).
#
# SLURM starts ONE task per node (srun); each runs torchrun, which starts one process per GPU of its
# node. The torchrun agents find each other through the c10d rendezvous: a key-value store on the
# first node at $HEAD:$PORT, under the job's id. The same command, typed by hand on each node, is:
#     torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=NODE0:29500 \
#              --rdzv-id=minids-1 -m minids train --preset gpu --max-iters 948
# Steps: the suggested run is 15,153 steps of 131,072 tokens on one GPU (~20 tokens per parameter of
# gpu-dense, Chinchilla, arXiv 2203.15556). batch_size is per GPU, so with N GPUs a step holds
# N x 131,072 tokens: this script divides the steps by N (rounding up), keeping the tokens.
#SBATCH --job-name=minids-gpu
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=02:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
NNODES=${SLURM_NNODES:?run under sbatch (SLURM_NNODES is not set)}
mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")   # the job's nodes, one per line
HEAD=${HOSTS[0]}
PORT=${PORT:-29500}
PRESET=${PRESET:-gpu}
DATA=${DATA:-data/fineweb-edu-bpe8192}
RUN_STEPS=${RUN_STEPS:-15153}                       # the one-GPU step count of gpu_train_config
WORLD=$((NNODES * GPUS_PER_NODE))
ITERS=${ITERS:-$(( (RUN_STEPS + WORLD - 1) / WORLD ))}
OUT_DIR=${OUT_DIR:-out/$PRESET-$SLURM_JOB_ID}
echo "minids: $NNODES nodes x $GPUS_PER_NODE GPUs, rendezvous $HEAD:$PORT, $ITERS steps, data $DATA -> $OUT_DIR"
# --resume: a requeued job (sbatch --requeue, or a time limit hit) continues from its checkpoint
RESUME=()
[ -f "$OUT_DIR/ckpt.safetensors" ] && RESUME=(--resume)
srun --ntasks-per-node=1 torchrun --nnodes="$NNODES" --nproc-per-node="$GPUS_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="minids-$SLURM_JOB_ID" \
    -m minids train --preset "$PRESET" --dataset "$DATA" --max-iters "$ITERS" --out-dir "$OUT_DIR" \
    --checkpoint-interval 200 "${RESUME[@]}" "$@"
