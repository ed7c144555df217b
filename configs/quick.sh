# run_all.sh --quick: every table on the real photos under DATA (default data/), sized for a
# CPU -> results/quick/. lite0 (its ImageNet weights install offline) at 224 px, task 1-2's
# strong recipe with 4 epochs instead of 30, and what the real-photo runs of tasks 3, 4, 6,
# 7 and 8 chose (docs/studies/), shortened to fit 3 hours on 2 cores for the kit's 4,403
# CUB photos: the GAN 10 epochs, heatmaps on 50 photos, SimCLR 6.
RESULTS=${RESULTS:-results/quick}
DATA=${DATA:-data}
# measured: the bird study on the kit's 4,403 CUB photos took 10,476 s on 2 cores of a Xeon
# without AMX (fp32): 4.76 core-seconds a photo, for the printed estimate
CORE_SECONDS_PER_PHOTO=4.76

CNN=tf_efficientnet_lite0
COMMON=(--data-root "$DATA" --model "$CNN" --image-size 224 --epochs 4)
REFERENCE=pretrained-strong
STRONG=()
# Table 1's strong run is Table 4's CNN row: it measures its cost there and Table 4 does not
# train it again
COST=(--measure-cost)

# no detection weights install offline: the small detector from scratch, where boxes exist
DETECT=(--detector small --backbone-weights none --image-scale 224 224 --epochs 4)
CROPS=(box)
CROP_RECIPE=(--recipe strong)
BOX_FREE=(bird dog)

GAN=(--gan-size 64 --gan-epochs 10 --synthetic-per-class 10 --recipe strong)

# lite1 and lite2 fine-tuned (ImageNet weights offline; lite0 is Table 1's strong run), then
# a small CNN and a small ViT from scratch at the same budget (96 px, 8 epochs); a
# pretrained ViT needs the full run
VIT_RUNS=("tf_efficientnet_lite1 strong" "tf_efficientnet_lite2 strong"
          "resnet18 seed --weights none --image-size 96 --epochs 8"
          "timm/vit_tiny_patch16_224 vit --weights none --image-size 96 --epochs 8 --lr 1e-3 --layer-decay 1.0")
VIT=()

HEATMAP_VIT=timm/vit_tiny_patch16_224
HEATMAP=(--images 50)

# task 7's real-photo protocol: 2 epochs of adversarial fine-tuning from the standard model;
# FGSM and PGD-10 x 2 restarts on a seeded 100 test photos (fast FGSM and PGD-3 training
# are left to the full run)
ROBUST=(--test-images 100 --pgd-steps 10 --restarts 2 --robust-eps 1 2 4 8)
ADV=(--recipe strong --epochs 2 --head-only-epochs 0 --val-pgd-steps 3)
ADV_MORE=()

# task 8's real-photo protocol: 96 px, full fine-tuning with the strong recipe
SIMCLR=(--image-size 96 --simclr-epochs 6 --simclr-warmup-epochs 1
        --label-fractions 1/class 0.1 1 --recipe strong --freeze-stages 0 --no-freeze-bn
        --head-only-epochs 0 --epochs 4)
SIMCLR_MORE=(bird dog)
