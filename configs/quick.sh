# run_all.sh --quick: every table on the real photos under DATA (default data/), sized for a
# CPU -> results/quick/. lite0 (its ImageNet weights install offline) at 224 px, task 1-2's
# strong recipe with 4 epochs instead of 30, and what the real-photo runs of tasks 3, 4, 6,
# 7 and 8 chose (docs/studies/), shortened for 2 cores and the kit's 4,403 CUB photos;
# tasks 4, 7 and 8 at the smallest budgets their gates were measured to pass at on
# validation (docs/studies/2026-12-05-gate-curves.md).
RESULTS=${RESULTS:-results/quick}
DATA=${DATA:-data}
# for the printed estimate: one seed of the bird study on the kit's 4,403 CUB photos, one run
# a core of an AMD EPYC (fp32), about 34,500 core-seconds: Tables 1, 2, 4, 5 and 6 measured
# whole (2,215 + 1,737 + 2,635 + 230 + 5,141 s), Table 3's two GANs from their epochs (about
# 19,600 s), Table 7 from a 2-core run (about 3,000 s) (docs/studies/2026-12-07-*.md)
CORE_SECONDS_PER_PHOTO=7.8
DEFAULT_JOBS=1  # one run at a time, every core its own (--jobs N to share them)

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

# a 32-px GAN with hinge loss, spectral norm, G's EMA and TTUR: GAN-test reached 10x chance
# at about 10,000 generator steps (400 epochs of 26 steps; 5.3 s an epoch on an AMX Xeon)
GAN=(--gan-size 32 --gan-epochs 400 --fid-every 40 --gan-loss hinge --spectral-norm
     --g-ema 0.999 --gan-lr 1e-4 --d-lr 4e-4 --gan-beta1 0 --synthetic-per-class 10
     --recipe strong)

# lite1 and lite2 fine-tuned (ImageNet weights offline; lite0 is Table 1's strong run), then
# a small CNN and a small ViT from scratch at the same budget (96 px, 8 epochs); a
# pretrained ViT needs the full run
VIT_RUNS=("tf_efficientnet_lite1 strong" "tf_efficientnet_lite2 strong"
          "resnet18 seed --weights none --image-size 96 --epochs 8"
          "timm/vit_tiny_patch16_224 vit --weights none --image-size 96 --epochs 8 --lr 1e-3 --layer-decay 1.0")
VIT=()

HEATMAP_VIT=timm/vit_tiny_patch16_224
HEATMAP=(--images 50)

# task 7's real-photo protocol: PGD-2 training at 1/255 on every image, 4 epochs from the
# standard model, unfrozen, no warm-up, one learning rate (its gate passed on validation;
# fast FGSM at 2/255 and 2 frozen FGSM epochs left none); FGSM and PGD-10 x 2 restarts on a
# seeded 100 test photos
ROBUST=(--test-images 100 --pgd-steps 10 --restarts 2 --robust-eps 1 2 4 8)
ADV=(--recipe strong --freeze-stages 0 --no-freeze-bn --warmup-epochs 0 --head-only-epochs 0
     --head-lr-mult 1 --lr 5e-4 --adv-eps 1 --adv-prob 1 --epochs 4 --val-pgd-steps 3)
ADV_MORE=()
ADV_RUNS=("pgd2 --adv-attack pgd --adv-steps 2")
ADV_MORE_RUNS=()

# task 8 at 96 px; its fine-tunes use task 8's default recipe, lp-ft (shared/cli.py): the
# one setting of the validation curve whose fine-tunes reach their probes at all three
# label budgets (docs/studies/2026-12-06-epyc-tables-6-7.md)
SIMCLR=(--image-size 96 --simclr-epochs 6 --simclr-warmup-epochs 1
        --label-fractions 1/class 0.1 1 --epochs 4)
SIMCLR_MORE=(bird dog)
