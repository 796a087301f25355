"""Gather the cross-validation of recipes/phoebe_cv.sh into recipes/results/phoebe_cv.{json,md}.

Reads WORK/eval/<condition>-fold<k>.json (bmamba eval reports), WORK/times.tsv (wall seconds of
every step) and the runs' args.json (so the table states the settings that actually ran).
Mean and std are over the 5 folds; std is the sample standard deviation (ddof=1).

Usage: python recipes/collect_cv.py WORK [--out recipes/results] [--name phoebe_cv]
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import numpy as np
from results_io import collector_arguments, read_times, write_results

# table rows: condition -> (architecture, pre-training)
CONDITIONS = {
    "biomamba-scratch": ("BioMamba", "none"),
    "biomamba-causal": ("BioMamba", "causal (HuBERT, 2 phases)"),
    "biomamba-bidirectional-teacher": ("BioMamba", "bidirectional teacher -> causal student"),
    "biomamba-future": ("BioMamba", "causal + future-frame heads"),
    "transformer-scratch": ("Transformer", "none"),
    "transformer-hubert": ("Transformer", "HuBERT, 2 phases"),
}




def fold_results(work: Path, name: str, times: dict[str, int]) -> list[dict]:
    folds = []
    for report in sorted((work / "eval").glob(f"{name}-fold*.json")):
        k = int(re.search(r"fold(\d+)\.json$", report.name).group(1))
        r = json.loads(report.read_text())
        folds.append({"fold": k, "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "n_test": r["n_items"],
                      "train_wall_s": times.get(f"train-{name}-fold{k}"),
                      "eval_wall_s": times.get(f"eval-{name}-fold{k}")})
    return sorted(folds, key=lambda f: f["fold"])


def summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": len(v)}


def settings(work: Path) -> dict:
    """Fine-tuning and pre-training settings, from the runs' own args.json."""
    out = {}
    ft = sorted((work / "ft").glob("*/fold1/args.json"))
    if ft:
        a = json.loads(ft[0].read_text())
        out["finetune"] = {k: a[k] for k in ("preset", "epochs", "batch_size", "lr", "crop_s", "freeze_frontend",
                                             "pooling", "valid_fraction", "seed")}
    pt = sorted((work / "pt").glob("*/args.json"))
    if pt:
        a = json.loads(pt[0].read_text())
        out["pretrain"] = {k: a[k] for k in ("preset", "steps", "batch_size", "crop_s", "lr", "mask_prob",
                                             "mask_length", "kmeans_fraction", "seed")}
        out["pretrain"]["recordings"] = len(a["audio"])
        out["pretrain"]["clusters"] = {p.parent.name: json.loads(p.read_text())["clusters"] for p in pt}
        out["pretrain"]["feature_penalty"] = {p.parent.name: json.loads(p.read_text()).get("feature_penalty")
                                              for p in pt}
    return out


def markdown(result: dict) -> str:
    lines = ["| model | pre-training | accuracy (mean ± std, 5 folds) | macro-F1 | per-fold accuracy | "
             "fine-tune wall per fold (s) |", "|---|---|---|---|---|---|"]
    for c in result["conditions"].values():
        acc, f1 = c["accuracy"], c["macro_f1"]
        std = f"{acc['std']:.3f}" if acc["std"] is not None else "-"
        per_fold = " ".join(f"{f['accuracy']:.2f}" for f in c["folds"])
        walls = [f["train_wall_s"] for f in c["folds"] if f["train_wall_s"] is not None]
        wall = f"{np.mean(walls):.0f}" if walls else "-"
        lines.append(f"| {c['model']} | {c['pretraining']} | {acc['mean']:.3f} ± {std} | {f1['mean']:.3f} | "
                     f"{per_fold} | {wall} |")
    lines += ["", "| pre-training run | wall (s) |", "|---|---|"]
    lines += [f"| {name} | {s} |" for name, s in result["pretraining_wall_s"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = collector_arguments(__doc__.split("\n\n")[0], "phoebe_cv")
    args = parser.parse_args()
    times = read_times(args.work)
    conditions = {}
    for name, (model, pretraining) in CONDITIONS.items():
        folds = fold_results(args.work, name, times)
        if folds:
            conditions[name] = {"model": model, "pretraining": pretraining, "folds": folds,
                                "accuracy": summary([f["accuracy"] for f in folds]),
                                "macro_f1": summary([f["macro_f1"] for f in folds])}
    result = {
        "task": "10-species clip classification, phoebe xeno-canto clips, 5-fold CV split by recording "
                "(recipes/phoebe_folds.csv)",
        "machine": f"{platform.machine()}, 2 shared CPU cores, no GPU, OMP_NUM_THREADS=1",
        "settings": settings(args.work),
        "conditions": conditions,
        "pretraining_wall_s": {k[len("pretrain-"):]: v for k, v in times.items() if k.startswith("pretrain-")},
    }
    write_results(args.out, args.name, result, markdown(result))


if __name__ == "__main__":
    main()
