#!/usr/bin/env bash
# Table 4's cost columns for the real models on a CUDA machine, on generated data and from
# random weights (nothing downloads there, so the accuracies mean nothing): parameters,
# GFLOPs, training and inference images/s, peak memory, bf16 autocast.
#   bash bench/gpu_vit_cost.sh OUT_DIR
set -euo pipefail
out=${1:?usage: bash bench/gpu_vit_cost.sh OUT_DIR}
mkdir -p "$out"
data=/tmp/fgvc-vit/data
[[ -d $data ]] || python -m shared.sample_data --out "$data" --classes 6 --per-class 60 --size 320
for model_recipe in "resnext101_32x8d strong" "vit_b_32 vit" "vit_b_16 vit" "vit_b_16_swag vit"; do
  read -r model recipe <<<"$model_recipe"
  python task5_vit/train.py --dataset bird --data-root "$data" --model "$model" \
    --recipe "$recipe" --weights none --epochs 2 --head-only-epochs 0 --batch-size 32 \
    --out "/tmp/fgvc-vit/runs/$model" > "$out/$model.log" 2>&1 || { tail -20 "$out/$model.log"; exit 1; }
  python -c "
import json; r = json.load(open('/tmp/fgvc-vit/runs/$model/metrics.json'))
m = r['metrics']
print('$model', r['args']['image_size'], 'px', {k: round(m[k], 2) for k in ('params_m', 'gflops',
      'train_images_per_s', 'infer_images_per_s', 'peak_mem_mb')}, r['env']['device'], r['env']['amp'])"
done
