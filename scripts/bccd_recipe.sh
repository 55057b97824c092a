#!/usr/bin/env bash
# Proof of learning on real photos, CPU only: train aLRP, Focal and AP Loss RetinaNets (ResNet-18 from scratch)
# on BCCD train, evaluate on BCCD val, then plot the curves and print the README table.
#   scripts/bccd_recipe.sh [alrp focal ap]      (default: all three; BCCD is read from ../shared/datasets/bccd)
set -euo pipefail
cd "$(dirname "$0")/.."
LOSSES=${*:-alrp focal ap}
[ -d ../shared/datasets/bccd ] || { echo "$0: ../shared/datasets/bccd not found (set data.root to your copy)" >&2; exit 2; }
runs=()
for loss in $LOSSES; do
  out=checkpoints/bccd_${loss}_r18
  start=$(date +%s)
  python train.py --config configs/bccd_${loss}_r18.yaml --output-dir "$out" --overwrite
  echo "bccd_${loss}_r18: $(( ($(date +%s) - start) / 60 )) min wall time"
  runs+=("$out")
done
python -m scripts.plot_curves "${runs[@]}" --out docs/bccd_curves.png
