#!/usr/bin/env bash
# The default model shipped in biomamba/models/default (what `bmamba detect` uses without --model):
# a 10-species frame-level detector (edge preset) trained on 4 of the 5 phoebe folds (weak labels:
# each clip's species over the whole clip) plus 84 of the 96 maad soundscape clips as negatives,
# tested on phoebe fold 5 and the 12 other soundscape clips, none of which any stage of its
# training heard. See recipes/README.md and biomamba/models/default/README.md.
#
#   recipes/default_model.sh                 # train, evaluate, export into $WORK
#   INSTALL=1 recipes/default_model.sh       # ... and copy the export into biomamba/models/default
#   PRETRAINED=/work/runs/phoebe-cv/pt/bidirectional-teacher-p2/last recipes/default_model.sh
#                                            # reuse the CV's pre-training (the same command and seed)
# Re-running skips the steps recorded in $WORK/times.tsv.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/work/runs/default}
BMAMBA=${BMAMBA:-bmamba}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
TEST_FOLD=${TEST_FOLD:-5}
# pre-training recipe of the encoder (none: random init): in the cross-validation no pre-training
# beat random init (recipes/README.md), and none is the cheapest
RECIPE=${RECIPE:-none}
PT_STEPS=${PT_STEPS:-400}
EPOCHS=${EPOCHS:-15}
BATCH=${BATCH:-16}
LR=${LR:-1e-3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # see phoebe_cv.sh

. "$REPO/recipes/timed.sh"

cd "$REPO"
python recipes/layout.py detect "$WORK" --test-fold "$TEST_FOLD"
INIT=()
if [ "$RECIPE" != none ]; then
  if [ -z "${PRETRAINED:-}" ]; then
    # the same pre-training as recipes/phoebe_cv.sh (its audio holds no phoebe clip and none of
    # the held-out soundscape clips)
    python recipes/layout.py pretrain "$WORK"
    mapfile -t PT_AUDIO < "$WORK/pretrain_audio.txt"
    PT=(--preset edge --steps "$PT_STEPS" --batch-size 8 --kmeans-fraction 1 --seed "$SEED" --device "$DEVICE"
        --recipe "$RECIPE")
    timed "pretrain-$RECIPE-p1" $BMAMBA pretrain "${PT_AUDIO[@]}" "${PT[@]}" --phase 1 --out "$WORK/pt/$RECIPE-p1"
    timed "pretrain-$RECIPE-p2" $BMAMBA pretrain "${PT_AUDIO[@]}" "${PT[@]}" --phase 2 \
        --init "$WORK/pt/$RECIPE-p1/last" --out "$WORK/pt/$RECIPE-p2"
    PRETRAINED=$WORK/pt/$RECIPE-p2/last
  fi
  INIT=(--init "$PRETRAINED")
fi

# the negatives double as backgrounds mixed into half of the training windows at 0-20 dB SNR
mapfile -t BACKGROUNDS < "$WORK/backgrounds.txt"
BG=()
for f in "${BACKGROUNDS[@]}"; do BG+=(--background "$f"); done
timed train $BMAMBA train "$WORK/train.jsonl" --task detect --preset edge "${INIT[@]}" --window 2s --hop 1s \
    "${BG[@]}" --background-snr 0,20 --background-prob 0.5 \
    --epochs "$EPOCHS" --batch-size "$BATCH" --lr "$LR" --valid-fraction 0 --seed "$SEED" --device "$DEVICE" \
    --out "$WORK/train"
# BEANS window mAP (held-out phoebe clips + held-out soundscape clips as negatives)
timed eval $BMAMBA eval "$WORK/train/last" "$WORK/test.jsonl" --no-events --device "$DEVICE" \
    --report "$WORK/eval_beans.json"
# clip accuracy from frame probabilities, false alarms on the soundscape
timed eval-default python recipes/eval_default.py "$WORK/train/last" "$WORK/test_phoebe.jsonl" \
    "$WORK/test_soundscape.jsonl" --report "$WORK/eval_default.json"
timed export $BMAMBA export "$WORK/train/last" --out "$WORK/export" --variant portable

if [ "${INSTALL:-0}" = 1 ]; then
  DEST=$REPO/biomamba/models/default
  mkdir -p "$DEST"
  cp "$WORK"/export/{model.json,frontend.onnx,mamba.onnx,model.safetensors,config.json} "$DEST/"
  echo "installed the export into $DEST"
fi

# the shipped pipeline end to end on a held-out soundscape recording and a held-out phoebe clip
SOUNDSCAPE=$(python -c "import json; print(json.loads(open('$WORK/test_soundscape.jsonl').readline())['path'])")
PHOEBE=$(python -c "import json; print(json.loads(open('$WORK/test_phoebe.jsonl').readline())['path'])")
$BMAMBA detect "$SOUNDSCAPE" "$PHOEBE" --model "$WORK/export" --format json --out "$WORK/detect-check" \
    --no-resume --report "$WORK/detect-check/report.json" -q
# recordings from other sites whose sounds are none of the 10 species (a tropical spinetail and
# crake, a toad chorus, a grouse drumming, three golden-winged warbler recordings from xeno-canto),
# none heard in training: every event here is false
mapfile -t OTHER < <(python -c "import json; [print(json.loads(l)['path']) for l in open('$WORK/test_other.jsonl')]")
$BMAMBA detect "${OTHER[@]}" --model "$WORK/export" --format json --out "$WORK/detect-other" --no-resume -q
python recipes/collect_default.py "$WORK"
