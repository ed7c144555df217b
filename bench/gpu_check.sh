#!/usr/bin/env bash
# The CUDA paths on a GPU machine, on generated data, with their timings:
# task 3: the mmcv._ext shim's CUDA kernels against torchvision's, the seed's detector
#   (Faster R-CNN R-101 FPN at 1333x800, backbone from random weights since nothing
#   downloads there) and a crop classifier;
# task 4: the DCGAN pipeline (GAN, samples, lite0 FID, judged class accuracy, classifier).
#   bash bench/gpu_check.sh OUT_DIR
set -euo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

python -m pytest -q tests/test_mmcv_ext.py 2>&1 | tee "$out/test_mmcv_ext.log"

data=/tmp/fgvc-gpu/data
python -m shared.sample_data --out "$data" --classes 6 --per-class 40 --size 320
python task3_crop/detect.py --dataset bird --data-root "$data" --detector seed \
  --backbone-weights none --epochs 2 --batch-size 8 --out /tmp/fgvc-gpu/detector \
  > "$out/detect.log" 2>&1 || { tail -40 "$out/detect.log"; exit 1; }
tail -2 "$out/detect.log"
cp /tmp/fgvc-gpu/detector/metrics.json "$out/detector_metrics.json"
python task3_crop/train.py --dataset bird --data-root "$data" --crop box --model resnet18 \
  --weights none --image-size 224 --epochs 2 --batch-size 32 \
  --boxes /tmp/fgvc-gpu/detector/boxes.json --out /tmp/fgvc-gpu/box 2>&1 | tail -4
cp /tmp/fgvc-gpu/box/metrics.json "$out/box_metrics.json"
python - <<'EOF'
import json
d = json.load(open("/tmp/fgvc-gpu/detector/metrics.json"))
print("detector", d["env"]["device"], {k: round(v, 4) for k, v in d["timing"].items()})
b = json.load(open("/tmp/fgvc-gpu/box/metrics.json"))
print("classifier", b["env"]["device"], b["timing"], b["metrics"]["test_top1"])
EOF

# task 4: a short GAN on CUDA; the judge is the crop classifier above (same classes)
python task4_dcgan/train.py --dataset bird --data-root "$data" --gan-size 64 --gan-epochs 20 \
  --synthetic-per-class 10 --model resnet18 --weights none --image-size 224 --epochs 2 \
  --batch-size 32 --judge /tmp/fgvc-gpu/box/best.pt --out /tmp/fgvc-gpu/dcgan 2>&1 \
  | grep -v "^GAN epoch [0-9]/\|^GAN epoch 1[0-9]/"
cp /tmp/fgvc-gpu/dcgan/metrics.json "$out/dcgan_metrics.json"
cp /tmp/fgvc-gpu/dcgan/gan/samples/epoch_020.png "$out/dcgan_epoch_020.png"
