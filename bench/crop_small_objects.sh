#!/usr/bin/env bash
# Does cropping help when the animal is small? Generated birds whose body spans 10-15% of a
# 192 px photo; the classifier sees 96 px: the whole photo, the detector's box, or the true
# box. CPU settings (a few minutes a run on 2 cores); results in OUT/TABLES.md.
#   bash bench/crop_small_objects.sh [OUT]     (default results/small-objects)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/small-objects}
data=$out/data
if [[ ! -d $data/CUB_200_2011 ]]; then
  python -m shared.sample_data --out "$data" --classes 6 --per-class 40 --size 192 \
    --object-scale 0.1 0.15
fi
if [[ ! -f $out/detector/metrics.json ]]; then
  python task3_crop/detect.py --dataset bird --data-root "$data" --detector small \
    --backbone-weights none --image-scale 192 192 --epochs 12 --out "$out/detector" --resume
fi
common=(--dataset bird --data-root "$data" --model tf_efficientnet_lite0 --image-size 96
        --epochs 10 --batch-size 16 --step-size 6 --boxes "$out/detector/boxes.json" --resume)
for run in "none" "box" "box --test-boxes gt"; do
  read -r crop extra <<<"$run"
  name=$crop${extra:+-oracle}
  [[ -f $out/$name/metrics.json ]] || python task3_crop/train.py "${common[@]}" --crop "$crop" \
    $extra --out "$out/$name"
done
python -m shared.results "$out"
