#!/usr/bin/env bash
# InsectSet32 (32 insect species; Faiss & Stowell 2023, CC BY 4.0): train on the dataset's `train`
# split, select on its `validation` split, never touch its test split (held out, not here).
# BioMamba and the Transformer baseline at the same preset, from scratch and (with $RECIPES)
# pre-trained, each seed in $SEEDS. Writes recipes/results/$RESULTS_NAME.{json,md} through
# recipes/collect_insectset32.py. Only the `bmamba` CLI is used.
#
#   recipes/insectset32.sh                                  # the full recipe, into $WORK
#   SEEDS=0 EPOCHS=30 RECIPES= recipes/insectset32.sh       # a reduced run (one seed, no pre-training)
#   DEVICE=cuda SIZES="edge base" recipes/insectset32.sh    # larger sizes are for a GPU
#   SIZES=tiny ARCHS=biomamba PT_STEPS=1000 recipes/insectset32.sh   # what made the shipped model
#   SAMPLE_RATE=16000 CROP=5s recipes/insectset32.sh        # the paper's 16 kHz input (hears to 8 kHz)
#   JOBS=2 SEEDS=0 recipes/insectset32.sh                   # a 2-core CPU: tiny and edge, both architectures,
#                                                           # about 170 min (summed steps, recipes/README)
#
# Runs are grouped into jobs -- a pre-training with the fine-tunes that start from it, or one run
# from scratch -- and $JOBS jobs run at a time, each on $OMP_NUM_THREADS threads, the pre-trainings
# (the longest) first. A failed job is named at the end, after the others finish; then nothing is
# collected (exit 1).
#
# Re-running skips every step already recorded in $WORK/times.tsv (delete a line to redo it).
#
# What each run does (say it in any table made from it):
# - pre-training: $PT_STEPS steps a phase of $PT_BATCH x $CROP crops, at $SAMPLE_RATE.
# - training: random crops of $CROP from the train split (shorter recordings zero-padded),
#   batch $BATCH, Adam lr $LR ($LR_SCHEDULE schedule), $EPOCHS epochs, mixup $MIXUP; from scratch the front end trains too
#   (--no-freeze-frontend: a random frozen front end would only be noise); a pre-trained encoder
#   keeps its front end frozen (the paper's protocol). Each epoch is scored on the centred $CROP
#   of every validation recording and the best epoch is kept (best/): selection on validation.
# - evaluation: `bmamba eval best/` on every validation recording WHOLE (no crop: the causal
#   model runs over the full length, frame logits mean-pooled over all of it).
# - speed: each BioMamba's best/ is exported (`bmamba export`, portable fp32) and timed with
#   `bmamba detect --report` over the validation recordings (x real time = audio s / wall s).
#   The Transformer cannot be exported (it attends over the whole recording), so it has no speed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/work/runs/insectset32}
BMAMBA=${BMAMBA:-bmamba}
PYTHON=${PYTHON:-python}
REAL=${BMAMBA_REAL_DATA:-$REPO/../shared/data/real}   # the real-data root (recipes/layout.py's too)
DATA=${DATA:-$REAL/insectset32/files.csv}

DEVICE=${DEVICE:-auto}
SEEDS=${SEEDS:-"0 1 2"}
SIZES=${SIZES:-"edge tiny"}
ARCHS=${ARCHS:-"biomamba transformer"}
# fine-tuning budget, the same for every model
EPOCHS=${EPOCHS:-100}
BATCH=${BATCH:-16}
LR=${LR:-1e-3}
LR_SCHEDULE=${LR_SCHEDULE:-linear}   # decay to 0 over the run (constant: keep lr)
# mixup in fine-tuning (bmamba train --mixup ALPHA); empty: none. Its runs are named ...-mixup.
MIXUP=${MIXUP-}
# The models' input rate: 32000 hears to 16 kHz, where most InsectSet32 species sing
# (recipes/band_energy.py); 16000, the paper's, stops at 8 kHz. 2.5 s crops at 32 kHz hold the
# samples (and cost) of 5 s crops at 16 kHz.
SAMPLE_RATE=${SAMPLE_RATE:-32000}
CROP=${CROP:-2.5s}
# pre-training (BioMamba recipes; the Transformer gets HuBERT's): empty RECIPES skips it
RECIPES=${RECIPES-"delayed"}     # the default recipe; RECIPES= (set, empty) runs none
PT_STEPS=${PT_STEPS:-1000}
PT_BATCH=${PT_BATCH:-8}
RESULTS_NAME=${RESULTS_NAME:-insectset32}
# One thread a run and $JOBS runs at a time: on a CPU, JOBS x OMP_NUM_THREADS = the cores to use.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
JOBS=${JOBS:-1}

mkdir -p "$WORK/eval" "$WORK/speed"
. "$REPO/recipes/timed.sh"
cd "$REPO"

# files.csv is a BEANS CSV with a `split` column: --split / --valid-split select its rows (its 4
# `unlisted` rows are used nowhere). The validation recordings, for timing `bmamba detect`:
listing() {
  "$PYTHON" -c 'import sys; from biomamba.data import read_beans_csv
print("\n".join(str(p) for p, _ in read_beans_csv(sys.argv[1], split=sys.argv[2])))' "$DATA" "$1"
}
mapfile -t VALID_AUDIO < <(listing validation)

# finetune NAME SEED [train options...]: train, evaluate whole validation recordings, and (BioMamba)
# export and time the exported model once per NAME.
finetune() {
  local name=$1 seed=$2; shift 2
  if [[ -n $MIXUP ]]; then name="$name-mixup"; set -- "$@" --mixup "$MIXUP"; fi
  local run="$WORK/ft/$name/seed$seed"
  timed "train-$name-seed$seed" $BMAMBA train "$DATA" --split train --valid-split validation \
      --epochs "$EPOCHS" --batch-size "$BATCH" --lr "$LR" --lr-schedule "$LR_SCHEDULE" --crop "$CROP" --seed "$seed" \
      --device "$DEVICE" --out "$run" "$@"
  timed "eval-$name-seed$seed" $BMAMBA eval "$run/best" "$DATA" --split validation --device "$DEVICE" \
      --report "$WORK/eval/$name-seed$seed.json"
  if [[ $name == biomamba-* ]]; then
    timed "export-$name-seed$seed" $BMAMBA export "$run/best" --out "$WORK/export/$name-seed$seed" \
        --variant portable
    timed "speed-$name-seed$seed" $BMAMBA detect "${VALID_AUDIO[@]}" --model "$WORK/export/$name-seed$seed" \
        --out "$WORK/speed/$name-seed$seed" --no-resume --quiet --threads "$OMP_NUM_THREADS" \
        --report "$WORK/speed/$name-seed$seed.json"
  fi
}

# job COMMAND...: run COMMAND in the background once fewer than $JOBS jobs run; if it fails, say so
# in $FAILED (this invocation's own) and let the other jobs go on.
FAILED=$(mktemp "$WORK/.failed-jobs.XXXXXX")
trap 'rm -f "$FAILED"' EXIT
job() {
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
  { ( "$@" ) || echo "$*" >> "$FAILED"; } &
}

# pretrained RECIPE SIZE: pre-train (two phases), then fine-tune every seed from the phase-2 encoder.
# RECIPE is a BioMamba pre-training recipe, or `hubert` for the Transformer's.
pretrained() {
  local recipe=$1 size=$2
  local options=(--recipe "$recipe") name="biomamba-$size-$recipe" pt="$recipe-$size"
  if [[ $recipe == hubert ]]; then
    options=(--architecture transformer) name="transformer-$size-hubert" pt="transformer-$size"
  fi
  options+=(--preset "$size" --steps "$PT_STEPS" --batch-size "$PT_BATCH" --crop "$CROP" --seed 0 --device "$DEVICE")
  timed "pretrain-$pt-p1" $BMAMBA pretrain "${PT_AUDIO[@]}" "${options[@]}" --phase 1 \
      --sample-rate "$SAMPLE_RATE" --out "$WORK/pt/$pt-p1"
  timed "pretrain-$pt-p2" $BMAMBA pretrain "${PT_AUDIO[@]}" "${options[@]}" --phase 2 \
      --init "$WORK/pt/$pt-p1/last" --out "$WORK/pt/$pt-p2"
  for seed in $SEEDS; do
    finetune "$name" "$seed" --init "$WORK/pt/$pt-p2/last"
  done
}

# 1. Pre-training on every unlabelled recording we have except the validation split (labels unused):
#    InsectSet32 train plus recipes/layout.py's pre-training list (maad soundscape, oss field
#    recordings). Started first: these jobs are the longest.
if [[ -n $RECIPES ]]; then
  BMAMBA_REAL_DATA=$REAL "$PYTHON" recipes/layout.py pretrain "$WORK"
  mapfile -t PT_AUDIO < <(cat "$WORK/pretrain_audio.txt"; listing train)
  for size in $SIZES; do
    if [[ $ARCHS == *biomamba* ]]; then
      for recipe in $RECIPES; do job pretrained "$recipe" "$size"; done
    fi
    if [[ $ARCHS == *transformer* ]]; then job pretrained hubert "$size"; fi
  done
fi

# 2. From scratch.
for seed in $SEEDS; do
  for arch in $ARCHS; do
    for size in $SIZES; do
      job finetune "$arch-$size-scratch" "$seed" --preset "$size" --architecture "$arch" \
          --no-freeze-frontend --sample-rate "$SAMPLE_RATE"
    done
  done
done

wait
if [[ -s $FAILED ]]; then
  echo "failed jobs (the others ran to the end; a rerun redoes only what is missing):" >&2
  sed 's/^/  /' "$FAILED" >&2
  exit 1
fi
"$PYTHON" recipes/collect_insectset32.py "$WORK" --name "$RESULTS_NAME"
