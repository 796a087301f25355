"""Gather recipes/compare_pretraining.sh's probes into recipes/results/NAME.{json,md}.

Reads WORK/probes/*.json (`recipes/probe.py` reports; every checkpoint in them is a row),
WORK/times.tsv (wall seconds of each step: ``pretrain-<run>``), and each run's args.json
(WORK/pt/<run>/args.json: the pre-training settings that actually ran). A run is named
``<recipe>-<size>-p<phase>`` (the script's layout); ``random:ARCH-PRESET[:SEED]`` is the control.

Usage: python recipes/collect_probes.py WORK [--out recipes/results] [--name pretraining_probes]
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from results_io import collector_arguments, read_json, read_times, write_results

RUN = re.compile(r"^(?P<recipe>.+)-(?P<size>[a-z]+)-p(?P<phase>\d+)$")
SETTINGS = ("preset", "steps", "batch_size", "crop_s", "min_crop_s", "seed", "lr", "clusters",
            "kmeans_fraction", "mask_prob", "mask_length", "feature_penalty", "future_frames", "delay")
CAUSAL = {"biomamba": "causal", "transformer": "not causal (attends both ways)",
          "biomamba-bidirectional": "not causal (the bidirectional teacher)"}






def run_name(entry: dict) -> str:
    """The run folder's name of a probed checkpoint (its last/ or best/ is the checkpoint), or the
    random:ARCH-PRESET[:SEED] spelling of the control."""
    folder = Path(entry["checkpoint"])
    if entry["checkpoint"].startswith("random:"):
        return entry["checkpoint"]
    return folder.parent.name if folder.name in ("last", "best") else folder.name


def random_label(name: str) -> str:
    """random:biomamba-tiny:1 -> 'none (random init, seed 1)'."""
    return f"none (random init, seed {name.split(':')[2] if name.count(':') == 2 else 0})"


def probe_step(name: str) -> str:
    """The name compare_pretraining.sh gives a run's probe step (random:biomamba-tiny:1 ->
    random-biomamba-tiny-seed1)."""
    if not name.startswith("random:"):
        return name
    spec, _, seed = name[len("random:"):].partition(":")
    return f"random-{spec}-seed{seed or 0}"


def row(work: Path, entry: dict, times: dict[str, int]) -> dict:
    name = run_name(entry)
    m = RUN.match(name)
    args_file = work / "pt" / name / "args.json"
    args = read_json(args_file) if args_file.is_file() else {}
    tasks = entry["tasks"]
    return {
        "run": name,
        "recipe": m["recipe"] if m else (random_label(name) if name.startswith("random:") else name),
        "phase": int(m["phase"]) if m else None,
        "architecture": entry["architecture"], "preset": entry["preset"],
        "causal": CAUSAL.get(entry["architecture"], entry["architecture"]),
        "pretrain_wall_s": times.get(f"pretrain-{name}"),
        "probe_wall_s": times.get(f"probe-{probe_step(name)}"),
        "insectset32": {k: tasks["insectset32"].get(k) for k in ("last", "best_layer")} if "insectset32" in tasks else None,
        "phoebe": {k: tasks["phoebe"].get(k) for k in ("last", "best_layer")} if "phoebe" in tasks else None,
        "settings": {k: args[k] for k in SETTINGS if k in args},
    }


def collect(work: Path) -> dict:
    times = read_times(work)
    reports = [read_json(p) for p in sorted((work / "probes").glob("*.json"))]
    if not reports:
        raise SystemExit(f"collect_probes: {work / 'probes'}: no probe reports (*.json)")
    rows = [row(work, entry, times) for r in reports for entry in r["checkpoints"].values()]
    # the control first, then phase 2 (the encoders fine-tuning starts from), then phase 1
    rows.sort(key=lambda r: (r["phase"] is not None, -(r["phase"] or 0), r["recipe"]))
    first = reports[0]
    return {"rows": rows, "probe_settings": first["settings"], "machine": first["machine"],
            "tasks": first["tasks"]}


def _score(task: dict | None, feature: str, with_std: bool) -> tuple[str, str]:
    """(accuracy [± std], macro-F1) cells of one feature, '-' where absent."""
    s = (task or {}).get(feature)
    if not s:
        return "-", "-"
    acc = f"{s['accuracy']:.3f}"
    if with_std and s.get("accuracy_std") is not None:
        acc += f" ± {s['accuracy_std']:.3f}"
    if feature == "best_layer":
        acc += f" (layer {', '.join(str(x) for x in s['layers'])})"
    return acc, f"{s['macro_f1']:.3f}"


def noise_line(result: dict) -> str:
    """Binomial standard error of the InsectSet32 validation accuracies, and the phoebe fold spread."""
    n = result["tasks"].get("insectset32", {}).get("n_valid", [None])[0]
    accs = [r["insectset32"]["last"]["accuracy"] for r in result["rows"] if r["insectset32"]]
    parts = []
    if n and accs:
        se = [math.sqrt(p * (1 - p) / n) for p in accs]
        parts.append(f"InsectSet32: one validation recording is 1/{n} = {1 / n:.3f} of accuracy; the binomial "
                     f"standard error sqrt(p (1 - p) / {n}) of the accuracies above is {min(se):.3f}-{max(se):.3f}, "
                     f"so differences under about {2 * max(se):.2f} (two standard errors) are inside the noise")
    stds = [r["phoebe"]["last"]["accuracy_std"] for r in result["rows"] if r["phoebe"]
            and r["phoebe"]["last"].get("accuracy_std") is not None]
    if stds:
        folds = len(result["tasks"]["phoebe"]["splits"])
        parts.append(f"phoebe: ± is the sample std (ddof 1) over the {folds} folds ({min(stds):.3f}-{max(stds):.3f}); "
                     f"one test clip is 1/{result['tasks']['phoebe']['n_valid'][0]} of a fold's accuracy")
    controls = [r for r in result["rows"] if r["run"].startswith("random:")]
    if len(controls) > 1:
        spans = [f"{task} {min(v):.3f}-{max(v):.3f}" for task in ("insectset32", "phoebe")
                 if (v := [r[task]["last"]["accuracy"] for r in controls if r[task]])]
        parts.append(f"the {len(controls)} random controls (initialisation seeds only) span " + ", ".join(spans)
                     + ": a recipe inside that span is not distinguished from a random encoder")
    parts.append("one pre-training seed per recipe, so seed-to-seed spread of pre-training is not in these numbers")
    return "Noise: " + "; ".join(parts) + "."


def markdown(result: dict) -> str:
    ps, m = result["probe_settings"], result["machine"]
    # each distinct set of pre-training settings once, keys in SETTINGS order
    settings = list(dict.fromkeys(", ".join(f"{k} {v}" for k, v in r["settings"].items())
                                  for r in result["rows"] if r["settings"]))
    lines = ["# Pre-training recipes compared by linear probes", "",
             "Frozen encoders, one linear layer: " + ps["probe"] + ". Features: " + ps["features"] + ". "
             + f"Selection: {ps['selection']} (C from {ps['C_grid']}). Control: {ps['random']}.", "",
             "Tasks: InsectSet32 (32 species), fitted on its train split, scored on its validation split; "
             "phoebe (10 species, 100 clips), fitted on four folds and scored on the fifth "
             "(recipes/phoebe_folds.csv), mean over the folds. Every recording whole.", "",
             "Pre-training (from each run's args.json): "
             + ("; ".join(settings) or "-") + ".", "",
             f"Machine: {m['cpu']}, {m['cpu_count']} CPU cores, {m['torch_threads']} torch thread(s), "
             f"encoders on {m['device']} ({m['platform']}). Wall times move with the machine's load.", "",
             noise_line(result), "",
             "| recipe | phase | encoder | InsectSet32 val accuracy | macro-F1 | best layer: accuracy | "
             "phoebe 5-fold accuracy (mean ± std) | macro-F1 | best layer: accuracy | pre-training wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ins, ins_f1 = _score(r["insectset32"], "last", False)
        ins_best, _ = _score(r["insectset32"], "best_layer", False)
        pho, pho_f1 = _score(r["phoebe"], "last", True)
        pho_best, _ = _score(r["phoebe"], "best_layer", True)
        wall = "-" if r["pretrain_wall_s"] is None else str(r["pretrain_wall_s"])
        lines.append(f"| {r['recipe']} | {r['phase'] or '-'} | {r['architecture']} {r['preset']}, {r['causal']} | "
                     f"{ins} | {ins_f1} | {ins_best} | {pho} | {pho_f1} | {pho_best} | {wall} |")
    lines += ["", "Accuracy and macro-F1 are of the last hidden state (what fine-tuning with mean pooling "
                  "reads); \"best layer\" is the layer chosen on the training rows of each split (per fold "
                  "for phoebe), scored like the last hidden state."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = collector_arguments(__doc__.split("\n\n")[0], "pretraining_probes")
    args = parser.parse_args()
    result = collect(args.work)
    write_results(args.out, args.name, result, markdown(result))


if __name__ == "__main__":
    main()
