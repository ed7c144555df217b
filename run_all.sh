#!/usr/bin/env bash
# Reproduces every table; each mode's settings are in configs/<mode>.sh.
#   bash run_all.sh          full runs on data/ (CUB_200_2011/, StanfordDogs/) -> results/TABLES.md
#   bash run_all.sh --quick  every table on the real photos under DATA (default data/), sized
#                            for a CPU (lite0 at 224 px) -> results/quick/TABLES.md
#   bash run_all.sh --demo   the same studies on generated sample data, CPU settings
#                            -> results/demo/TABLES.md (about 8.5 minutes on 2 cores)
#   --datasets bird          only CUB (or dog; both by default)
#   --seeds N                every run with seeds 0..N-1, into <results>/seed0/, seed1/, ...;
#                            each table row is then the mean over the seeds (default 1)
#   --seed K                 only seed K, into <results>/seedK/ (one seed a machine or core)
#   --jobs N                 up to N runs at once, the cores shared between them, each run's
#                            output in <its folder>/run_all.log (default: the demo as many as
#                            cores, at most 4; otherwise 1). Table 4, which times its models,
#                            runs one at a time.
#   --dry-run                print every command, run none (a finished one as a comment,
#                            '# finished: python ...')
#   -h, --help               print this and stop
# RESULTS=<folder> writes elsewhere. A run whose metrics.json exists is not run again; a
# killed run resumes from its last.pt.
# Rows that need true boxes (the detector's, the oracle crop) run only where the data has
# them. Extra arguments after these go to every training script (e.g. --device cpu);
# ARGS_<task folder> to one task's (ARGS_task8_simclr="--simclr-batch-size 64").
set -euo pipefail
cd "$(dirname "$0")"

MODE=full
DRY_RUN=false
SEEDS=1
ONLY_SEED=
JOBS=
DATASETS=(bird dog)
count() {  # count FLAG VALUE: VALUE if a whole number of at least 1, else stop naming FLAG
  if [[ ! $2 =~ ^[1-9][0-9]*$ ]]; then
    echo "run_all.sh: $1 expects a whole number of at least 1, got '$2'" >&2
    exit 2
  fi
  echo "$2"
}
while [[ $# -gt 0 ]]; do
  case $1 in
    --demo | --quick) MODE=${1#--} ;;
    --dry-run) DRY_RUN=true ;;
    -h | --help)  # this file's opening comment, up to its first command
      awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
      exit 0
      ;;
    --seeds)
      SEEDS=$(count "$1" "${2:-}")
      shift
      ;;
    --seed)
      if [[ ! ${2:-} =~ ^[0-9]+$ ]]; then
        echo "run_all.sh: --seed expects a whole number of 0 or more, got '${2:-}'" >&2
        exit 2
      fi
      ONLY_SEED=$((10#$2))
      shift
      ;;
    --jobs)
      JOBS=$(count "$1" "${2:-}")
      shift
      ;;
    --datasets)
      DATASETS=()
      while [[ "${2:-}" == "bird" || "${2:-}" == "dog" ]]; do
        DATASETS+=("$2")
        shift
      done
      if [[ ${#DATASETS[@]} -eq 0 ]]; then
        echo "run_all.sh: --datasets expects bird, dog or both, got '${2:-}'" >&2
        exit 2
      fi
      ;;
    *) break ;;
  esac
  shift
done
EXTRA=("$@")
# shellcheck source=configs/demo.sh
source "configs/$MODE.sh"
JOBS=${JOBS:-$DEFAULT_JOBS}
CORES=$(nproc)
# each of N parallel runs gets its share of the cores as its threads (PyTorch reads
# OMP_NUM_THREADS): more threads than cores slow every run down
THREADS=$((CORES / JOBS > 0 ? CORES / JOBS : 1))
FAILED=$(mktemp)  # the folders of parallel runs that failed
trap 'rm -f "$FAILED"' EXIT

if [[ $MODE == demo && ( ! -d $DATA/CUB_200_2011 || ! -d $DATA/StanfordDogs ) ]]; then
  if $DRY_RUN; then
    echo "python -m shared.sample_data --out $DATA ${SAMPLE_DATA[*]}"
  else
    python -m shared.sample_data --out "$DATA" "${SAMPLE_DATA[@]}"
  fi
fi
if [[ $MODE == quick ]]; then
  photos=0
  for dataset in "${DATASETS[@]}"; do
    folder=$DATA/$([[ $dataset == bird ]] && echo CUB_200_2011/images || echo StanfordDogs/Images)
    if [[ ! -d $folder ]]; then
      echo "run_all.sh --quick: no $folder (python -m shared.download --dataset $dataset" \
        "--data-root $DATA, or DATA=<folder holding it>)" >&2
      $DRY_RUN || exit 2
    else
      photos=$((photos + $(find "$folder" -name '*.jpg' | wc -l)))
    fi
  done
  seeds_run=$([[ -n $ONLY_SEED ]] && echo 1 || echo "$SEEDS")
  minutes=$(awk "BEGIN {print int($seeds_run * $photos * $CORE_SECONDS_PER_PHOTO / $(nproc) / 60)}")
  echo "== run_all.sh --quick: $photos photos on $(nproc) cores, roughly" \
    "$((minutes / 60)) h $((minutes % 60)) min (a rough estimate from the photo count)"
fi

run() {  # run OUT SCRIPT ARGS...: skip a finished run, resume a killed one
  local out=$1 script=$2
  shift 2
  local name=ARGS_${script%%/*} task_args=()  # ARGS_task8_simclr='...': that task's only
  read -ra task_args <<<"${!name:-}"
  launch "$out" "$script" --out "$out" --resume --seed "$SEED" "${COMMON[@]}" "$@" \
    "${EXTRA[@]}" "${task_args[@]}"
}

declare -A COMMANDS  # each run's folder -> its command (quoted), for train_again_if_gone

launch() {  # launch OUT SCRIPT ARGS...: python SCRIPT ARGS, or print it with --dry-run
  local out=$1
  shift
  COMMANDS[$out]=$(printf ' %q' "$@")
  if $DRY_RUN; then
    [[ -f $out/metrics.json ]] && printf '# finished: '  # what is left of a study, at a glance
    printf '%s' python
    printf ' %q' "$@"
    printf '\n'
  elif [[ -f $out/metrics.json ]]; then
    echo "finished already: $out"
  elif ((JOBS == 1)); then
    train_again_if_gone "$@"
    echo "== $* -> $out"
    local start=$SECONDS
    python "$@"
    same_as_kept "$out"
    echo "== took $((SECONDS - start)) s: $out"
  else
    train_again_if_gone "$@"
    while (($(jobs -rp | wc -l) >= JOBS)); do
      wait -n || true  # a failure is in $FAILED
    done
    stop_if_failed
    mkdir -p "$out"
    echo "== $* -> $out (output in $out/run_all.log)"
    (
      start=$SECONDS
      if OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS} python "$@" >"$out/run_all.log" 2>&1 &&
        same_as_kept "$out" >>"$out/run_all.log" 2>&1; then
        echo "== took $((SECONDS - start)) s: $out"
      else
        echo "$out" >>"$FAILED"
      fi
    ) &
  fi
}

# A study carried to another machine with its records but without checkpoints
# (docs/results.md): a run that reads an earlier run's checkpoint first trains that run
# again, with its record set aside (metrics.kept.json, *.kept.npz), and goes on only if the
# predictions come out exactly the same, so that no row stands on a model its table does not
# report.
train_again_if_gone() {  # train_again_if_gone ARGS...: for each checkpoint among ARGS
  local arg folder npz argv threads
  for arg in "$@"; do
    folder=${arg%/*}
    [[ $arg == */*.pt && ! -e $arg && -f $folder/metrics.json && -n ${COMMANDS[$folder]:-} ]] ||
      continue
    finish_runs
    echo "== $arg is gone and its run's record is kept: training $folder again"
    for npz in "$folder"/*.npz; do
      [[ ! -e $npz || $npz == *.kept.npz ]] || mv "$npz" "${npz%.npz}.kept.npz"
    done
    mv "$folder/metrics.json" "$folder/metrics.kept.json"
    eval "argv=(${COMMANDS[$folder]})"
    # with as many threads as it had (its record's env): another count sums in another order
    threads=$(grep -o '"threads": *[0-9]*' "$folder/metrics.kept.json" | grep -o '[0-9]*$') ||
      true
    OMP_NUM_THREADS=${threads:-${OMP_NUM_THREADS:-$CORES}} JOBS=1 launch "$folder" "${argv[@]}"
  done
}

same_as_kept() {  # same_as_kept OUT: a run trained again must reproduce its kept record
  local out=$1 npz
  [[ -f $out/metrics.kept.json ]] || return 0
  if python -m shared.results check-kept "$out"; then
    rm -f "$out/metrics.kept.json" "$out"/*.kept.npz
    return 0
  fi
  for npz in "$out"/*.kept.npz; do  # the record back as it was, the model that differs gone
    [[ ! -e $npz ]] || mv "$npz" "${npz%.kept.npz}.npz"
  done
  mv "$out/metrics.kept.json" "$out/metrics.json"
  rm -f "$out/best.pt" "$out/last.pt"
  echo "run_all.sh: $out trained again does not reproduce its kept record (restored), so the" \
    "runs that read its checkpoint cannot go on: train on the kind of machine, and with the" \
    "threads, its metrics.json names (env), or move its record and the records of the runs" \
    "that read it away to run them all again" >&2
  return 1
}

stop_if_failed() {  # after a parallel run failed: let the others finish, name it, stop
  [[ -s $FAILED ]] || return 0
  wait
  while read -r out; do
    echo "run_all.sh: this run failed: $out (its output: $out/run_all.log, last lines:)" >&2
    tail -n 5 "$out/run_all.log" >&2
  done <"$FAILED"
  exit 1
}

finish_runs() {  # wait for every parallel run: what comes next reads their results
  wait
  stop_if_failed
}

alone() {  # alone COMMAND...: with no other run beside it (a run that times its model)
  finish_runs
  JOBS=1 "$@"
}

has_boxes() {  # has_boxes DATASET: the data holds its true boxes (--dry-run without data: yes)
  local folder=$DATA/$([[ $1 == bird ]] && echo CUB_200_2011 || echo StanfordDogs)
  if $DRY_RUN && [[ ! -d $folder ]]; then
    return 0
  elif [[ $1 == bird ]]; then
    [[ -f $DATA/CUB_200_2011/bounding_boxes.txt ]]
  else
    [[ -d $DATA/StanfordDogs/Annotation ]]
  fi
}

table_started=$SECONDS
table_done() {  # table_done NAME: its wall time
  finish_runs
  $DRY_RUN || echo "== $1 took $((SECONDS - table_started)) s"
  table_started=$SECONDS
}

study() {  # every table's runs with one seed, into $RESULTS
  # Table 1: training tricks and transfer learning.
  for dataset in "${DATASETS[@]}"; do
    for variant in baseline pretrained; do
      run "$RESULTS/task1_2_finetune/$dataset/$variant" task1_2_finetune/train.py \
        --dataset "$dataset" --variant "$variant"
    done
    strong_run=("$RESULTS/task1_2_finetune/$dataset/pretrained-strong"
                task1_2_finetune/train.py --dataset "$dataset" --variant pretrained
                --recipe strong "${STRONG[@]}" "${COST[@]}")
    if [[ ${#COST[@]} -gt 0 ]]; then  # it times its model (Table 4's row): none beside it
      alone run "${strong_run[@]}"
    else
      run "${strong_run[@]}"
    fi
  done
  table_done "Table 1"

  # Table 2: a localiser finds the animal; the classifier sees its crop. The no-crop row is
  # Table 1's run trained alike. The detector trains on the true boxes; the centre box and the
  # CAM of Table 1's classifier need none, so their crops train on their own boxes
  # (--train-boxes pred), and CAM + whole averages both views (--tta).
  localise() {  # localise OUT ARGS...: detect.py, skipped once finished
    local out=$1
    shift
    launch "$out" task3_crop/detect.py --data-root "$DATA" --out "$out" --resume \
      --seed "$SEED" "$@"
  }
  box_free() { [[ " ${BOX_FREE[*]} " == *" $1 "* ]]; }  # box_free DATASET: centre, CAM rows
  for dataset in "${DATASETS[@]}"; do  # the localisers first: the crops read their boxes
    task3=$RESULTS/task3_crop/$dataset
    if has_boxes "$dataset"; then
      localise "$task3/detector" --dataset "$dataset" "${DETECT[@]}"
      run "$task3/box-oracle" task3_crop/train.py --dataset "$dataset" --crop box \
        --test-boxes gt "${CROP_RECIPE[@]}"
    elif ! $DRY_RUN; then
      echo "== $dataset: no true boxes under $DATA, so no detector or oracle-crop rows" \
        "(the centre and CAM rows need none)"
    fi
    box_free "$dataset" || continue
    localise "$task3/centre" --dataset "$dataset" --localiser centre
    localise "$task3/cam" --dataset "$dataset" --localiser cam \
      --classifier "$RESULTS/task1_2_finetune/$dataset/$REFERENCE/best.pt"
  done
  finish_runs
  for dataset in "${DATASETS[@]}"; do
    task3=$RESULTS/task3_crop/$dataset
    if has_boxes "$dataset"; then
      for crop in "${CROPS[@]}"; do
        run "$task3/$crop" task3_crop/train.py --dataset "$dataset" --crop "$crop" \
          --boxes "$task3/detector/boxes.json" "${CROP_RECIPE[@]}"
      done
    fi
    box_free "$dataset" || continue
    for localiser in centre cam; do
      run "$task3/box-$localiser" task3_crop/train.py --dataset "$dataset" --crop box \
        --train-boxes pred --boxes "$task3/$localiser/boxes.json" "${CROP_RECIPE[@]}"
    done
    run "$task3/box-cam-tta" task3_crop/train.py --dataset "$dataset" --crop box \
      --train-boxes pred --tta whole+crop --boxes "$task3/cam/boxes.json" "${CROP_RECIPE[@]}"
  done
  table_done "Table 2"

  # Table 3: class-conditional DCGAN samples added to the training set; task 1-2's classifier
  # judges the generated images (gen_class_acc). The same GAN without DiffAugment first: the
  # gate asks the row's validation FID to be below its.
  for dataset in "${DATASETS[@]}"; do
    run "$RESULTS/task4_dcgan/$dataset/no-diffaugment" task4_dcgan/train.py \
      --dataset "$dataset" --judge "$RESULTS/task1_2_finetune/$dataset/$REFERENCE/best.pt" \
      "${GAN[@]}" --gan-only --diffaugment none
  done
  finish_runs
  for dataset in "${DATASETS[@]}"; do
    run "$RESULTS/task4_dcgan/$dataset/dcgan" task4_dcgan/train.py --dataset "$dataset" \
      --judge "$RESULTS/task1_2_finetune/$dataset/$REFERENCE/best.pt" "${GAN[@]}" \
      --fid-baseline "$RESULTS/task4_dcgan/$dataset/no-diffaugment"
  done
  table_done "Table 3"

  # Table 4: ViT against CNN, each with a recipe that suits it, accuracy and cost (so one run
  # at a time); outside the demo its fine-tuned CNN is Table 1's strong run. A run's folder is its model's name,
  # timm/<name> as timm-<name>.
  for dataset in "${DATASETS[@]}"; do
    for model_recipe in "${VIT_RUNS[@]}"; do
      read -r model recipe extra <<<"$model_recipe"
      # shellcheck disable=SC2086  # $extra holds flags
      alone run "$RESULTS/task5_vit/$dataset/${model//\//-}" task5_vit/train.py \
        --dataset "$dataset" --model "$model" --recipe "$recipe" "${VIT[@]}" $extra
    done
  done
  table_done "Table 4"

  # Table 5 and a figure per dataset: heatmaps of task 1-2's CNN and of task 5's ViT.
  for dataset in "${DATASETS[@]}"; do
    for source_model in "task1_2_finetune/$dataset/$REFERENCE $CNN" \
                        "task5_vit/$dataset/${HEATMAP_VIT//\//-} $HEATMAP_VIT"; do
      read -r source model <<<"$source_model"
      run "$RESULTS/task6_heatmap/$dataset/${model//\//-}" task6_heatmap/train.py \
        --dataset "$dataset" --checkpoint "$RESULTS/$source/best.pt" "${HEATMAP[@]}"
    done
  done
  table_done "Table 5"

  # Table 6: robustness of task 1-2's model and of adversarially trained ones (ADV_RUNS, and
  # ADV_MORE_RUNS for the ADV_MORE datasets: "folder flags"), each attacked with FGSM and
  # PGD (worst case per image) and checked for gradient masking.
  for dataset in "${DATASETS[@]}"; do
    standard=$RESULTS/task1_2_finetune/$dataset/$REFERENCE/best.pt
    adversarial=("${ROBUST[@]}" --standard "$standard")  # the gate's reference
    [[ ${#ADV[@]} -eq 0 ]] || adversarial+=(--weights "$standard" "${ADV[@]}")
    run "$RESULTS/task7_fgsm/$dataset/standard" task7_fgsm/train.py --dataset "$dataset" \
      --evaluate "$standard" "${ROBUST[@]}"
    runs=("${ADV_RUNS[@]}")
    [[ " ${ADV_MORE[*]} " != *" $dataset "* ]] || runs+=("${ADV_MORE_RUNS[@]}")
    for name_flags in "${runs[@]}"; do
      read -r name extra <<<"$name_flags"
      # shellcheck disable=SC2086  # $extra holds flags
      run "$RESULTS/task7_fgsm/$dataset/$name" task7_fgsm/train.py --dataset "$dataset" \
        "${adversarial[@]}" $extra
    done
  done
  table_done "Table 6"

  # Table 7: SimCLR pre-training (from random and from ImageNet) against random and ImageNet
  # initialisation, same protocol.
  for dataset in "${DATASETS[@]}"; do
    for backbone in random simclr imagenet; do
      run "$RESULTS/task8_simclr/$dataset/$backbone" task8_simclr/train.py --dataset "$dataset" \
        --backbone "$backbone" "${SIMCLR[@]}"
    done
    if [[ " ${SIMCLR_MORE[*]} " == *" $dataset "* ]]; then
      run "$RESULTS/task8_simclr/$dataset/imagenet-simclr" task8_simclr/train.py \
        --dataset "$dataset" --backbone simclr --weights imagenet "${SIMCLR[@]}"
    fi
  done
  table_done "Table 7"
}

ROOT=$RESULTS
first_seed=${ONLY_SEED:-0}
last_seed=${ONLY_SEED:-$((SEEDS - 1))}
for ((SEED = first_seed; SEED <= last_seed; SEED++)); do
  RESULTS=$ROOT/seed$SEED
  $DRY_RUN || echo "== seed $SEED -> $RESULTS"
  study
done
RESULTS=$ROOT

if $DRY_RUN; then
  echo "python -m shared.results $RESULTS"
else
  python -m shared.results "$RESULTS"
  echo "== every table in $SECONDS s"
fi
