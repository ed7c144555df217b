#!/usr/bin/env bash
# The engine's CUDA paths through every task script that trains on it, on generated data at
# toy settings: bf16 and fp16 autocast (the fp16 gradient scaler with clipping),
# torch.compile, task 3's crop classifier with test-time refine, task 7's adversarial epoch
# and robust evaluation, task 8's SimCLR pre-training and probes, task 6's heatmaps; then the
# tables. A check that they run and record a CUDA device, not a benchmark.
#   bash bench/gpu_engine_check.sh OUT_DIR
set -euo pipefail
out=${1:?usage: bash bench/gpu_engine_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}  # DEVICE=cpu: the same commands on a CPU, to check the script itself
! command -v nvidia-smi > /dev/null || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
d=/tmp/fgvc-engine-check
rm -rf "$d"
$py -m shared.sample_data --out "$d/data" --classes 6 --per-class 30 --size 160 > /dev/null
common=(--data-root "$d/data" --model resnet18 --weights none --image-size 128 --epochs 2
        --batch-size 32 --workers 4 --device "$device")
step() {  # step NAME SCRIPT ARGS...: run, keep its log, show its last line
  local name=$1
  shift
  local start=$SECONDS
  $py "$@" > "$out/$name.log" 2>&1 || { tail -30 "$out/$name.log"; exit 1; }
  echo "$name ($((SECONDS - start)) s): $(tail -1 "$out/$name.log")"
}
step t12_bf16 task1_2_finetune/train.py --dataset bird --variant baseline "${common[@]}" \
  --amp bf16 --out "$d/runs/task1_2_finetune/bird/bf16"
fp16=$([[ $device == cuda ]] && echo fp16 || echo off)  # fp16 autocast is CUDA's alone
step t12_fp16 task1_2_finetune/train.py --dataset bird --variant baseline "${common[@]}" \
  --amp "$fp16" --clip-grad 1 --out "$d/runs/task1_2_finetune/bird/fp16"
step t12_compile task1_2_finetune/train.py --dataset dog --variant baseline "${common[@]}" \
  --compile --out "$d/runs/task1_2_finetune/dog/compiled"
step t3_tta task3_crop/train.py --dataset bird "${common[@]}" --crop box --test-boxes gt \
  --tta whole+crop --out "$d/runs/task3_crop/bird/oracle-tta"
step t7 task7_fgsm/train.py --dataset bird "${common[@]}" --adv-mode sample --robust-eps 2 8 \
  --pgd-steps 3 --val-pgd-steps 2 --out "$d/runs/task7_fgsm/bird/fgsm"
step t8 task8_simclr/train.py --dataset bird "${common[@]}" --simclr-epochs 2 \
  --simclr-batch-size 32 --label-fractions 1 --epochs 1 --out "$d/runs/task8_simclr/bird/simclr"
step t6 task6_heatmap/train.py --dataset bird --data-root "$d/data" --device "$device" \
  --checkpoint "$d/runs/task1_2_finetune/bird/bf16/best.pt" --images 12 \
  --out "$d/runs/task6_heatmap/bird/resnet18"
$py -m shared.results "$d/runs" > /dev/null
cp "$d/runs/TABLES.md" "$out/TABLES.md"
grep -h '"device"' "$d"/runs/*/*/*/metrics.json | sort | uniq -c
