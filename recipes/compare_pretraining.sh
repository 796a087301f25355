#!/usr/bin/env bash
# Compare pre-training recipes by linear probes of the frozen encoders (issue 10).
#
# For preset $SIZE and each recipe in $RECIPES: `bmamba pretrain` phase 1, then phase 2 from it,
# every run with the same steps, batch, crop and seed, on the same audio as recipes/insectset32.sh's
# pre-training (recipes/layout.py's pre-training list + InsectSet32's train split; labels unused,
# the validation split never). Then recipes/probe.py probes every encoder (phase 2 and phase 1)
# and freshly initialised ones (random:biomamba-$SIZE:SEED for each of $CONTROL_SEEDS: the control
# every recipe must beat, and how much the initialisation alone moves the scores) on
# InsectSet32 (fitted on train, scored on validation) and the phoebe 5 folds, and
# recipes/collect_probes.py writes recipes/results/$RESULTS_NAME.{json,md}.
#
#   recipes/compare_pretraining.sh                               # WORK=/work/exp, tiny, 1000 steps
#   RECIPES="causal delayed" STEPS=200 recipes/compare_pretraining.sh
#   DEVICE=cuda SIZE=edge STEPS=20000 recipes/compare_pretraining.sh
#
# Layout: WORK/pt/<recipe>-<size>-p<phase>/ (the runs), WORK/probes/<run>.json (probe.py's report
# per encoder), WORK/logs/<step>.log and WORK/times.tsv (recipes/timed.sh). Re-running skips every
# step already in WORK/times.tsv (delete its line to redo it).
#
# distill's phase 1 trains the bidirectional teacher exactly as bidirectional-teacher's does, so it
# is run once, as WORK/pt/bidirectional-teacher-<size>-p1, and distill's phase 2 starts from it.
# That teacher sees the future: its probe is a reference, not a causal encoder (the table names
# each encoder's architecture).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/work/exp}
BMAMBA=${BMAMBA:-bmamba}
PYTHON=${PYTHON:-python}
REAL=${BMAMBA_REAL_DATA:-$REPO/../shared/data/real}   # the real-data root (recipes/layout.py's too)
DATA=${DATA:-$REAL/insectset32/files.csv}

DEVICE=${DEVICE:-auto}
PROBE_DEVICE=${PROBE_DEVICE:-cpu}
SIZE=${SIZE:-tiny}
RECIPES=${RECIPES:-"causal bidirectional-teacher future delayed distill"}
STEPS=${STEPS:-1000}
BATCH=${BATCH:-8}
CONTROL_SEEDS=${CONTROL_SEEDS:-"0 1 2"}
RESULTS_NAME=${RESULTS_NAME:-pretraining_probes}
# One thread: the development machine's 2 cores are shared. Use your core count on a free machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

mkdir -p "$WORK/pt" "$WORK/probes"
. "$REPO/recipes/timed.sh"
cd "$REPO"

# The pre-training audio: layout.py's list (one path a line) and InsectSet32's train split. mapfile
# keeps every path one argument (some hold spaces).
BMAMBA_REAL_DATA=$REAL "$PYTHON" recipes/layout.py pretrain "$WORK"
BMAMBA_REAL_DATA=$REAL "$PYTHON" recipes/layout.py cv "$WORK"          # WORK/fold{1..5}: the phoebe folds
mapfile -t PT_AUDIO < <(cat "$WORK/pretrain_audio.txt"; "$PYTHON" -c 'import sys
from biomamba.data import read_beans_csv
print("\n".join(str(p) for p, _ in read_beans_csv(sys.argv[1], split="train")))' "$DATA")

# phase1 RECIPE: the recipe whose phase-1 run RECIPE's phase 2 starts from
phase1() { if [[ $1 == distill ]]; then echo bidirectional-teacher; else echo "$1"; fi; }

COMMON=(--preset "$SIZE" --steps "$STEPS" --batch-size "$BATCH" --seed 0 --device "$DEVICE")
for recipe in $RECIPES; do
  first=$(phase1 "$recipe")
  timed "pretrain-$first-$SIZE-p1" $BMAMBA pretrain "${PT_AUDIO[@]}" "${COMMON[@]}" \
      --recipe "$first" --phase 1 --out "$WORK/pt/$first-$SIZE-p1"
  timed "pretrain-$recipe-$SIZE-p2" $BMAMBA pretrain "${PT_AUDIO[@]}" "${COMMON[@]}" \
      --recipe "$recipe" --phase 2 --init "$WORK/pt/$first-$SIZE-p1/last" --out "$WORK/pt/$recipe-$SIZE-p2"
done

# probe NAME CHECKPOINT: one encoder on both tasks -> WORK/probes/NAME.json
probe() {
  timed "probe-$1" "$PYTHON" recipes/probe.py "$2" --insectset32 "$DATA" --phoebe "$WORK" \
      --device "$PROBE_DEVICE" --report "$WORK/probes/$1.json"
}
for seed in $CONTROL_SEEDS; do
  probe "random-biomamba-$SIZE-seed$seed" "random:biomamba-$SIZE:$seed"
done
for recipe in $RECIPES; do
  probe "$recipe-$SIZE-p2" "$WORK/pt/$recipe-$SIZE-p2/last"
done
for recipe in $RECIPES; do      # a phase-1 run shared by two recipes is probed once (timed skips it)
  first=$(phase1 "$recipe")
  probe "$first-$SIZE-p1" "$WORK/pt/$first-$SIZE-p1/last"
done

"$PYTHON" recipes/collect_probes.py "$WORK" --name "$RESULTS_NAME"
