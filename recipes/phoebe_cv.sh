#!/usr/bin/env bash
# 5-fold cross-validation on the phoebe xeno-canto clips (10 species x 10 recordings), split by
# recording: BioMamba and the Transformer baseline at the same preset and fine-tuning budget,
# from scratch and after self-supervised pre-training (BioMamba: each recipe in $RECIPES;
# Transformer: HuBERT's two phases). See recipes/README.md for the results and what they mean.
#
#   recipes/phoebe_cv.sh                      # everything, into $WORK (default /work/runs/phoebe-cv)
#   WORK=/data/cv DEVICE=cuda recipes/phoebe_cv.sh
#   BMAMBA="torchrun --nproc_per_node 4 -m biomamba.cli.app" \
#       DEVICE=cuda recipes/phoebe_cv.sh      # several GPUs (batch sizes are per process)
#
# Re-running skips every step already recorded in $WORK/times.tsv (delete a line to redo it).
# Pre-training is shared by the five folds: its audio (recipes/layout.py PRETRAIN_SOURCES: the
# maad soundscape and the oss field-recorder files) holds no phoebe clip, so no test fold is in it.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/work/runs/phoebe-cv}
BMAMBA=${BMAMBA:-bmamba}

DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
PRESET=${PRESET:-edge}
# fine-tuning budget, the same for every model
EPOCHS=${EPOCHS:-40}
BATCH=${BATCH:-16}
LR=${LR:-1e-3}
# pre-training budget, the same for every recipe and phase
PT_STEPS=${PT_STEPS:-400}
PT_BATCH=${PT_BATCH:-8}
RECIPES=${RECIPES:-"causal bidirectional-teacher"}
# HuBERT's feature penalty (its default 10 collapsed every encoder on this little audio; see
# recipes/README.md): FEATURE_PENALTY=10 reruns that first table.
FEATURE_PENALTY=${FEATURE_PENALTY:-0}
RESULTS_NAME=${RESULTS_NAME:-phoebe_cv}
# One thread: on the 2 shared cores of the development machine two OpenMP threads competing with
# another process ran 6x slower than one. Set OMP_NUM_THREADS to your core count on a free machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

mkdir -p "$WORK/eval"
. "$REPO/recipes/timed.sh"

cd "$REPO"
python recipes/layout.py cv "$WORK"
python recipes/layout.py pretrain "$WORK"
mapfile -t PT_AUDIO < "$WORK/pretrain_audio.txt"
PT_COMMON=(--preset "$PRESET" --steps "$PT_STEPS" --batch-size "$PT_BATCH" --kmeans-fraction 1
           --seed "$SEED" --device "$DEVICE" --feature-penalty "$FEATURE_PENALTY")

# finetune NAME FOLD [train options...]: fine-tune on the other folds, evaluate on fold FOLD.
finetune() {
  local name=$1 k=$2; shift 2
  local run="$WORK/ft/$name/fold$k"
  timed "train-$name-fold$k" $BMAMBA train "$WORK/fold$k/train.csv" --preset "$PRESET" \
      --epochs "$EPOCHS" --batch-size "$BATCH" --lr "$LR" --valid-fraction 0 --seed "$SEED" \
      --device "$DEVICE" --out "$run" "$@"
  timed "eval-$name-fold$k" $BMAMBA eval "$run/last" "$WORK/fold$k/test.csv" --device "$DEVICE" \
      --report "$WORK/eval/$name-fold$k.json"
}

# 1. From scratch (random init; the front end frozen as in every run: the paper's protocol).
for k in 1 2 3 4 5; do
  finetune biomamba-scratch "$k" --architecture biomamba
  finetune transformer-scratch "$k" --architecture transformer
done

# 2. Pre-training, once for all folds.
for recipe in $RECIPES; do
  timed "pretrain-$recipe-p1" $BMAMBA pretrain "${PT_AUDIO[@]}" "${PT_COMMON[@]}" --recipe "$recipe" \
      --phase 1 --out "$WORK/pt/$recipe-p1"
  timed "pretrain-$recipe-p2" $BMAMBA pretrain "${PT_AUDIO[@]}" "${PT_COMMON[@]}" --recipe "$recipe" \
      --phase 2 --init "$WORK/pt/$recipe-p1/last" --out "$WORK/pt/$recipe-p2"
done
# The Transformer has no causal/teacher distinction (it sees the whole clip): HuBERT's own recipe,
# MFCC labels then its middle layer's (layer 1 of 2).
timed "pretrain-transformer-p1" $BMAMBA pretrain "${PT_AUDIO[@]}" "${PT_COMMON[@]}" --architecture transformer \
    --phase 1 --out "$WORK/pt/transformer-p1"
timed "pretrain-transformer-p2" $BMAMBA pretrain "${PT_AUDIO[@]}" "${PT_COMMON[@]}" --architecture transformer \
    --phase 2 --init "$WORK/pt/transformer-p1/last" --out "$WORK/pt/transformer-p2"

# 3. Fine-tuning the pre-trained encoders.
for k in 1 2 3 4 5; do
  for recipe in $RECIPES; do
    finetune "biomamba-$recipe" "$k" --init "$WORK/pt/$recipe-p2/last"
  done
  finetune transformer-hubert "$k" --init "$WORK/pt/transformer-p2/last"
done

python recipes/collect_cv.py "$WORK" --name "$RESULTS_NAME"
