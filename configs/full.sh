# run_all.sh (full): the seed study's settings on the full datasets under data/
# (CUB_200_2011/, StanfordDogs/) -> results/. Meant for a GPU; never run here.
RESULTS=${RESULTS:-results}
DATA=${DATA:-data}

DEFAULT_JOBS=1  # one run at a time, every core and GPU its own

CNN=resnext101_32x8d  # the scripts' default model
COMMON=(--data-root "$DATA")
REFERENCE=pretrained
STRONG=()
COST=(--measure-cost)  # Table 1's strong run is Table 4's ResNeXt row

DETECT=(--detector seed)
CROPS=(box square)
CROP_RECIPE=()
BOX_FREE=(bird dog)

GAN=()

VIT_RUNS=("vit_b_32 vit" "vit_b_16 vit" "vit_b_16_swag vit")
VIT=()

HEATMAP_VIT=vit_b_16
HEATMAP=()

ROBUST=(--restarts 3)
ADV=()
ADV_MORE=(bird dog)
ADV_RUNS=("fgsm")  # "folder flags": FGSM training for every dataset
ADV_MORE_RUNS=("fast-fgsm --fast" "pgd3 --adv-attack pgd --adv-steps 3")

SIMCLR=(--model resnet50 --image-size 224)  # SimCLR's own setting; batch 256
SIMCLR_MORE=(bird dog)
