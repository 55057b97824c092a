#!/usr/bin/env bash
# Slurm: train on N nodes x G GPUs with torchrun, requeued automatically when pre-empted.
#
#   sbatch --nodes=2 --gres=gpu:8 --ntasks-per-node=1 --cpus-per-task=32 \
#          scripts/slurm_train.sh configs/alrp_retinanet_r50_atss_500.yaml [--amp] [key=value ...]
#
# OUTPUT_DIR (default checkpoints/<config file name>) is passed as --output-dir. Every launch passes --resume: the first one starts fresh (no last.pth yet), a requeued one continues from
# OUTPUT_DIR/last.pth. Slurm sends SIGTERM before pre-empting or at the time limit (--signal below asks for it
# 120 s early); every rank saves last.pth at the next iteration and exits 75 ("stopped, resumable"), and this
# script then requeues the job. Any other exit code ends the job with that code (see the README's exit codes).
#SBATCH --job-name=alrp
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: sbatch [slurm options] $0 CONFIG [train.py args / key=value overrides ...]" >&2
  exit 2
fi
CONFIG=$1; shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/$(basename "$CONFIG" .yaml)}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$GPUS_PER_NODE" -ge 1 ] 2>/dev/null || GPUS_PER_NODE=1
NNODES=${SLURM_NNODES:-1}
MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1)
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
echo "slurm_train: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: $NNODES node(s) x $GPUS_PER_NODE GPU(s)," \
     "rendezvous $MASTER_ADDR:$MASTER_PORT"

# srun starts one torchrun per node (in the background so this batch shell can forward SIGTERM to it).
srun --kill-on-bad-exit=1 torchrun --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" \
  --rdzv_id="${SLURM_JOB_ID:-local}" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
  train.py --config "$CONFIG" --output-dir "$OUTPUT_DIR" --resume "$@" &
PID=$!
trap 'echo "slurm_train: SIGTERM, forwarding to the training processes"; kill -TERM $PID 2>/dev/null' TERM
wait $PID; CODE=$?
while kill -0 $PID 2>/dev/null; do wait $PID; CODE=$?; done   # wait again if the trap interrupted it
# torchrun reports a failed worker as 1, so the trainer also writes its code to OUTPUT_DIR/exit_status.
STATUS=$(cut -d' ' -f1 "$OUTPUT_DIR/exit_status" 2>/dev/null || true)
if [ "$CODE" -eq 75 ] || [ "${STATUS:-}" = "75" ]; then
  echo "slurm_train: stopped and resumable (exit $CODE): requeueing job ${SLURM_JOB_ID:-?}"
  scontrol requeue "${SLURM_JOB_ID}"
  exit 0
fi
echo "slurm_train: training exited with code $CODE"
exit "$CODE"
