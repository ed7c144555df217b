#!/usr/bin/env bash
# Issue 10's GPU figures in one go, each table also written to OUT_DIR: training images/s of
# the seed's step against the engine's default, with and without torch.compile, and model
# FLOP utilisation (PEAK_TFLOPS: 989 for an H100's or H200's dense bf16); peak memory and
# the largest batch; the DataLoader's images/s at 8 workers (the seed's) and at the
# engine's default of one a core.
# Not yet run (written in a session without a GPU); the largest-batch search alone may take
# several minutes, so under a tight device budget run its commands one at a time.
#   bash bench/gpu_speed.sh OUT_DIR [PEAK_TFLOPS]
set -euo pipefail
out=${1:?usage: bash bench/gpu_speed.sh OUT_DIR [PEAK_TFLOPS]}
peak=${2:-989}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/machine.txt"
python -c "import os, torch; print('torch', torch.__version__, '| cores', len(os.sched_getaffinity(0)))" \
  | tee -a "$out/machine.txt"

python bench/train_speed.py --models resnext101_32x8d vit_b_16 --batch-sizes 32 64 \
  --image-size 448 --steps 10 --compile --peak-tflops "$peak" | tee "$out/train_448.md"
python bench/train_speed.py --models vit_b_16 --batch-sizes 128 --image-size 224 --steps 10 \
  --compile --peak-tflops "$peak" | tee "$out/train_224.md"
python bench/memory.py --models resnext101_32x8d vit_b_16 --batch-sizes 16 64 --image-size 448 \
  | tee "$out/memory_448.md"
cores=$(python -c "import os; print(len(os.sched_getaffinity(0)))")
python bench/data_speed.py --loader-only --images 400 --loader-workers 8 "$cores" \
  | tee "$out/loader.md"
