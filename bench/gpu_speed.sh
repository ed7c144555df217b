#!/usr/bin/env bash
# Issue 10's GPU figures in one go, each table also written to OUT_DIR: training images/s
# of the seed's step against the engine's training loop, with and without torch.compile
# (and ViT-B/16 with torchvision's own attention), and model FLOP utilisation (PEAK_TFLOPS:
# 989 for an H100's or H200's dense bf16); peak memory and the largest batch; the
# DataLoader's images/s at 8 workers (the seed's) and at the engine's default of one a
# core; where a step's GPU time goes (bench/profile_step.py); task 1-2's own script with
# and without --compile on generated photos (its loop, loaders and evaluation; images/s and
# accuracy from metrics.json); the machine's CPU alone (train_speed with CUDA hidden: on an
# AMX CPU the engine's bf16 default against the seed's fp32). Each part has a time limit
# (seconds, first column below), so that a short device lease gets every part it has time
# for; on an H200 train, task and profile took about 6 minutes, train, memory and loader
# 338 s (with fewer train columns). PARTS picks some of them (train memory loader profile
# task cpu), e.g. to split the script over two commands of a time-limited machine.
#   [PARTS="train loader"] bash bench/gpu_speed.sh OUT_DIR [PEAK_TFLOPS]
set -uo pipefail
all="train memory loader profile task cpu"
out=${1:?usage: [PARTS="$all"] bash bench/gpu_speed.sh OUT_DIR [PEAK_TFLOPS]}
peak=${2:-989}
parts=" ${PARTS:-$all} "
mkdir -p "$out"
export PYTHONUNBUFFERED=1

part() {  # part SECONDS FILE COMMAND...: run COMMAND, its output also in OUT_DIR/FILE
  local limit=$1 file=$2
  shift 2
  echo "== $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$file"
  local status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || echo "== stopped: exit status $status (124: over its ${limit} s)" \
    | tee -a "$out/$file"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/machine.txt"
python -c "import os, torch; print('torch', torch.__version__, '| cores', len(os.sched_getaffinity(0)))" \
  | tee -a "$out/machine.txt"
cores=$(python -c "import os; print(len(os.sched_getaffinity(0)))")

if [[ $parts == *" train "* ]]; then
  train=(bench/train_speed.py --steps 8 --rounds 2 --compile --peak-tflops "$peak")
  vit=(--torchvision-attention --models vit_b_16)
  part 150 train_vit_448.md python "${train[@]}" --image-size 448 "${vit[@]}" --batch-sizes 64
  part 150 train_vit_224.md python "${train[@]}" --image-size 224 "${vit[@]}" --batch-sizes 128
  part 210 train_resnext_448.md python "${train[@]}" --image-size 448 \
    --models resnext101_32x8d --batch-sizes 32
fi
if [[ $parts == *" memory "* ]]; then
  part 170 memory_448.md python bench/memory.py --models resnext101_32x8d vit_b_16 \
    --batch-sizes 16 64 --image-size 448
fi
if [[ $parts == *" loader "* ]]; then
  part 200 loader.md python bench/data_speed.py --loader-only --images 800 \
    --epoch-images 5994 --repeats 1 --loader-workers 8 "$cores"
fi
if [[ $parts == *" profile "* ]]; then
  for model_batch in "vit_b_16 64" "vit_b_16 64 --compile" "resnext101_32x8d 32"; do
    read -r model batch compile <<<"$model_batch"
    part 150 "profile_$model${compile:+_compiled}.md" python bench/profile_step.py \
      --model "$model" --batch-size "$batch" --image-size 448 --steps 5 --rows 20 $compile
  done
fi
if [[ $parts == *" cpu "* ]]; then
  # the CPU goal (3x the seed's images/s) on the GPU machine's own CPU, which has AMX: the
  # engine's default there is bf16 autocast + channels_last, against each alone; CUDA hidden
  CUDA_VISIBLE_DEVICES="" part 300 cpu_train.md python bench/train_speed.py \
    --models resnet18 resnext101_32x8d --batch-sizes 16 4 --steps 2 --rounds 3 --layouts
fi
[[ $parts == *" task "* ]] || exit 0

# --compile in a task's own loop: 3 epochs of ResNet-50 at 448 px on 400 generated photos
python -m shared.sample_data --out "$out/sample" --classes 10 --per-class 40 --size 448 \
  > /dev/null
for compile in "" --compile; do
  part 200 "task1${compile:+_compiled}.txt" python task1_2_finetune/train.py --dataset bird \
    --data-root "$out/sample" --model resnet50 --weights none --image-size 448 --epochs 3 \
    --batch-size 32 --resize-mode random-resized-crop $compile --out "$out/task1${compile:+_compiled}"
done
python - "$out" <<'PY' | tee "$out/task1_compile.md"
import json, sys
from pathlib import Path
print("| task 1-2 run | train img/s | test top-1 | train seconds |\n|---|---|---|---|")
for name in ("task1", "task1_compiled"):
    path = Path(sys.argv[1], name, "metrics.json")
    if path.exists():
        m = json.loads(path.read_text())
        print(f"| {name} | {m['timing']['train_images_per_s']:.1f} | "
              f"{m['metrics']['test_top1']:.4f} | {m['timing']['train_seconds']:.1f} |")
PY
