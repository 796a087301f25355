"""recipes/insectset32.sh's job scheduling, run with a stand-in `bmamba` that only records its calls:
every run happens once, a pre-training's phases come before the fine-tunes started from them, no
more than $JOBS runs at once, a failed job stops nothing else but the collection, and a rerun does
only what is missing."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the recipe is a bash script")

# Stands in for `bmamba`: records "start|end TIME SUBCOMMAND TARGET" (TARGET: --out, or --report for
# eval), sleeps, and fails where FAKE_FAIL names the target.
FAKE_BMAMBA = r"""#!/usr/bin/env bash
sub=$1; target=
while (( $# )); do
  case $1 in --out) target=$2 ;; --report) [[ $sub == eval ]] && target=$2 ;; esac
  shift
done
target=${target#$WORK/}
echo "start $(date +%s.%N) $sub $target" >> "$CALLS"
sleep "$FAKE_SLEEP"
[[ -n $FAKE_FAIL && $target == "$FAKE_FAIL" ]] && exit 3
echo "end $(date +%s.%N) $sub $target" >> "$CALLS"
"""

# Stands in for the recipe's $PYTHON: the real interpreter for the split listing, a record for the
# collector, an empty extra pre-training list for recipes/layout.py (no real data needed).
FAKE_PYTHON = r"""#!/usr/bin/env bash
case $1 in
  recipes/layout.py) : > "$3/pretrain_audio.txt" ;;
  recipes/collect_insectset32.py) echo "collect" >> "$CALLS" ;;
  *) exec "$REAL_PYTHON" "$@" ;;
esac
"""


def _setup(tmp_path):
    for name, text in (("bmamba", FAKE_BMAMBA), ("python", FAKE_PYTHON)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    rows = ["path,label,split"] + [f"{s}{i}.wav,sp{i},{s}" for s in ("train", "validation") for i in range(2)]
    (tmp_path / "files.csv").write_text("\n".join(rows) + "\n")


def _run(tmp_path, jobs, fail=""):
    env = dict(os.environ, WORK=str(tmp_path / "work"), CALLS=str(tmp_path / "calls.txt"),
               BMAMBA=str(tmp_path / "bmamba"), PYTHON=str(tmp_path / "python"), REAL_PYTHON=sys.executable,
               DATA=str(tmp_path / "files.csv"), JOBS=str(jobs), SEEDS="0 1", SIZES="tiny",
               ARCHS="biomamba transformer", RECIPES="delayed", FAKE_SLEEP="0.3", FAKE_FAIL=fail)
    return subprocess.run(["bash", str(REPO / "recipes/insectset32.sh")], env=env, capture_output=True,
                          text=True, timeout=120)


def _calls(tmp_path):
    """[(start, end or None, subcommand, target)] in the order the runs started; and the collections."""
    started, ended, collected = {}, {}, 0
    for line in (tmp_path / "calls.txt").read_text().splitlines():
        if line == "collect":
            collected += 1
            continue
        kind, when, sub, target = line.split()
        book = started if kind == "start" else ended
        assert (sub, target) not in book, f"{sub} {target} ran twice"
        book[sub, target] = float(when)
    runs = sorted((t0, ended.get(key), *key) for key, t0 in started.items())
    return runs, collected


def _most_at_once(runs):
    edges = sorted([(t0, 1) for t0, t1, *_ in runs] + [(t1, -1) for t0, t1, *_ in runs if t1 is not None])
    now = most = 0
    for _, step in edges:  # an end sorts before a start at the same instant (-1 < 1)
        now += step
        most = max(most, now)
    return most


# What the recipe must run with SEEDS="0 1" SIZES=tiny, both architectures, RECIPES=delayed.
PRETRAINED = {"biomamba-tiny-delayed": "pt/delayed-tiny", "transformer-tiny-hubert": "pt/transformer-tiny"}
FINETUNES = [f"ft/{name}/seed{seed}" for name in
             ("biomamba-tiny-delayed", "transformer-tiny-hubert", "biomamba-tiny-scratch",
              "transformer-tiny-scratch") for seed in (0, 1)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_run_once_in_order_and_at_most_jobs_at_once(tmp_path, jobs):
    _setup(tmp_path)
    done = _run(tmp_path, jobs)
    assert done.returncode == 0, done.stderr
    runs, collected = _calls(tmp_path)
    assert collected == 1
    assert all(t1 is not None for _, t1, *_ in runs)
    started = {(sub, target): t0 for t0, _, sub, target in runs}
    finished = {(sub, target): t1 for _, t1, sub, target in runs}
    assert sorted(t for s, t in started if s == "train") == sorted(FINETUNES)
    assert sorted(t for s, t in started if s == "pretrain") == sorted(
        f"{pt}-p{phase}" for pt in PRETRAINED.values() for phase in (1, 2))
    assert sum(s == "eval" for s, _ in started) == len(FINETUNES)
    # only BioMamba is exported and timed
    assert sorted(t for s, t in started if s == "export") == sorted(
        f"export/{f.split('/')[1]}-{f.split('/')[2]}" for f in FINETUNES if "biomamba" in f)
    for name, pt in PRETRAINED.items():
        assert finished["pretrain", f"{pt}-p1"] <= started["pretrain", f"{pt}-p2"]
        for seed in (0, 1):
            assert finished["pretrain", f"{pt}-p2"] <= started["train", f"ft/{name}/seed{seed}"]
    assert _most_at_once(runs) == jobs


def test_a_failed_job_is_named_the_others_finish_and_a_rerun_does_only_what_is_missing(tmp_path):
    _setup(tmp_path)
    broken = "pt/delayed-tiny-p2"
    done = _run(tmp_path, 2, fail=broken)
    assert done.returncode == 1
    assert "failed jobs" in done.stderr and "pretrained delayed tiny" in done.stderr
    runs, collected = _calls(tmp_path)
    assert collected == 0
    trained = {t for _, _, s, t in runs if s == "train"}
    # the failed job's fine-tunes never started; every other job ran to its end
    assert trained == {f for f in FINETUNES if "biomamba-tiny-delayed" not in f}
    assert all(t1 is not None for _, t1, _, t in runs if t != broken)

    (tmp_path / "calls.txt").unlink()
    again = _run(tmp_path, 2)
    assert again.returncode == 0, again.stderr
    runs, collected = _calls(tmp_path)
    assert collected == 1
    assert {t for _, _, s, t in runs if s in ("pretrain", "train")} == {
        broken, "ft/biomamba-tiny-delayed/seed0", "ft/biomamba-tiny-delayed/seed1"}
