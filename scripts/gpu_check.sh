#!/usr/bin/env bash
# GPU check, about 10 minutes on one GPU: the CUDA paths that CPU-only CI cannot run.
#   bash scripts/gpu_check.sh [OUT_DIR]        (run from the repository root on a CUDA machine)
# 1. the aLRP / AP losses on CUDA vs CPU (reference cases if ../shared is there), fp32, fp16 and bf16 logits
# 2. the loss benchmark against the per-positive loop, on CUDA
# 3. one training iteration, aLRP vs Focal, R-50 at the paper's per-GPU batch (8 images at 512), AMP
# 4. a 1-GPU NCCL DDP smoke run of the default config with validation (torchrun), exit code and AP
# Each step's output goes to OUT_DIR/<step>.log; a summary table is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || { echo "no CUDA device" >&2; exit 1; }
GPU=$(python -c "import torch; print(torch.cuda.get_device_name(0))")
declare -A RESULT
step() {  # step NAME TIMEOUT COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local code=$?
  RESULT[$name]="exit $code, $((SECONDS - t0)) s"
  echo "== $name: exit $code in $((SECONDS - t0)) s"; tail -n 12 "$OUT/$name.log"
}
CASES=(); [ -f ../shared/reference/alrp_cases.npz ] && CASES=(--cases ../shared/reference/alrp_cases.npz)
step loss_cuda_vs_cpu 120 python -m scripts.gpu_check_loss "${CASES[@]}"
step loss_benchmark 180 python -m scripts.benchmark_loss --device cuda --threads 1
step train_step_r50_b8_amp 240 python -m scripts.benchmark_train_step --device cuda --amp --batch 8 --size 512 \
  --iters 10 --warmup 3
step ddp_nccl_smoke 180 torchrun --nproc_per_node 1 --master_port 29533 train.py --output-dir "$OUT/ddp_smoke" \
  --overwrite --device cuda --amp data.root="$OUT/shapes" solver.max_iters=60 runtime.eval_interval=1 \
  runtime.log_interval=20
echo
echo "GPU check on $GPU"
printf '%-24s %s\n' step result
for k in loss_cuda_vs_cpu loss_benchmark train_step_r50_b8_amp ddp_nccl_smoke; do printf '%-24s %s\n' "$k" "${RESULT[$k]}"; done
grep -h "float32 agreement" "$OUT/loss_cuda_vs_cpu.log" || true
grep -h "ratio" "$OUT/train_step_r50_b8_amp.log" | tail -n 2 || true
grep -h "COCO AP" "$OUT/ddp_nccl_smoke.log" || true
