"""Linear probes of frozen encoders: how much of the labels one linear layer reads off their features.

Every recording is run WHOLE through each encoder (no crop, no gradient), once per checkpoint
whatever the number of tasks. Features of a recording, each mean-pooled over its frames -> [D]:

- ``last``: the last hidden state (after the final norm), what fine-tuning with mean pooling reads;
- ``layer1`` .. ``layerL``: each layer's output (the residual stream before the final norm,
  the model's ``encode_layers``).

One linear layer (multinomial logistic regression, scikit-learn, on standardised features) is
fitted on a split's training rows and scored on its held-out rows: accuracy and macro-F1. Its L2
strength C is chosen from C_GRID by a stratified cross-validation of the TRAINING rows only; the
best layer of a split is likewise the one with the best cross-validated accuracy on its training
rows, so nothing is selected on the scored rows. Nothing of the encoder trains, so probes compare
pre-training recipes without a fine-tuning budget deciding.

Tasks (any of them, in one call):

- ``--train A.csv --valid B.csv``: task ``listing``, fitted on A, scored on B;
- ``--insectset32 files.csv``: fitted on its ``train`` split, scored on its ``validation`` split;
- ``--phoebe DIR``: the folds ``DIR/fold{k}/train.csv`` / ``test.csv`` of ``recipes/layout.py cv DIR``
  (fitted on the other folds, scored on fold k); per-fold scores, their mean and std (ddof 1).

    python recipes/probe.py CHECKPOINT... [--train A.csv --valid B.csv] [--insectset32 FILES_CSV]
        [--phoebe CV_DIR] [--report probe.json]

CHECKPOINT: a checkpoint folder (config.json + model.safetensors) or a run folder (its best/, else
last/); any architecture bmamba saves (a pre-training run's encoder and the bidirectional teacher
included); or ``random:ARCH-PRESET[:SEED]`` (e.g. ``random:biomamba-tiny``), a freshly initialised
encoder (torch seed SEED, default 0): the control every pre-training must beat; several seeds show
how much the initialisation alone moves the scores. Listings: BEANS classification CSVs
(path,label).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
INNER_FOLDS = 5
RANDOM = "random:"


class Split(NamedTuple):
    """One fit/score pair of a task: rows (path, label) to fit on and rows to score on."""

    name: str
    train: list[tuple[Path, str]]
    valid: list[tuple[Path, str]]


# --------------------------------------------------------------------------- tasks


def read_listing(path: Path, split: str | None = None) -> list[tuple[Path, str]]:
    from biomamba.data import read_beans_csv

    try:
        return read_beans_csv(path, split=split)
    except (OSError, ValueError) as e:   # AnnotationError is a ValueError naming file and line
        raise SystemExit(f"probe: {path}: {e}") from None


def listing_task(train: Path, valid: Path) -> list[Split]:
    return [Split("valid", read_listing(train), read_listing(valid))]


def insectset32_task(files_csv: Path) -> list[Split]:
    """InsectSet32's files.csv: fitted on the train split, scored on the validation split."""
    return [Split("validation", read_listing(files_csv, "train"), read_listing(files_csv, "validation"))]


def folds_task(folder: Path) -> list[Split]:
    """folder/fold{k}/train.csv (the other folds) and test.csv (fold k), k in numeric order."""
    folds = sorted((p for p in folder.glob("fold*") if re.fullmatch(r"fold\d+", p.name)),
                   key=lambda p: int(p.name[4:]))
    folds = [p for p in folds if (p / "train.csv").is_file() and (p / "test.csv").is_file()]
    if len(folds) < 2:
        raise SystemExit(f"probe: {folder}: needs at least two fold*/train.csv + test.csv "
                         f"(write them with `python recipes/layout.py cv {folder}`)")
    return [Split(p.name, read_listing(p / "train.csv"), read_listing(p / "test.csv")) for p in folds]


# --------------------------------------------------------------------------- encoders and features


def load_encoder(name: str):
    """(model, description) of a checkpoint or run folder, or of ``random:ARCH-PRESET[:SEED]``."""
    import torch

    from biomamba import loading
    from biomamba.presets import PRESETS

    if name.startswith(RANDOM):
        spec, _, seed = name[len(RANDOM):].partition(":")
        arch, _, preset = spec.rpartition("-")
        if arch not in loading.ARCHITECTURES or preset not in PRESETS or not (seed or "0").isdigit():
            raise SystemExit(f"probe: {name}: expected random:ARCH-PRESET[:SEED] with ARCH one of "
                             f"{', '.join(loading.ARCHITECTURES)}, PRESET one of {', '.join(PRESETS)}, "
                             "SEED a whole number")
        torch.manual_seed(int(seed or 0))
        model = loading.ARCHITECTURES[arch].from_preset(preset, task="embed")
        return model.float().eval(), {"checkpoint": name, "pretraining": None}
    try:
        folder = loading.resolve_checkpoint(name)
        model = loading.load_model(folder)
        pretraining = loading.read_config(folder).get("pretraining")
    except (loading.CheckpointError, OSError) as e:
        raise SystemExit(f"probe: {e}") from None
    return model.float().eval(), {"checkpoint": str(folder), "pretraining": pretraining}


def clip_features(model, paths: list[Path], device: str = "cpu") -> dict[str, np.ndarray]:
    """{"last": [N, D], "layer1": [N, D], ...} float64: each recording's features mean-pooled over
    all its frames (the whole recording in one pass)."""
    import torch

    from biomamba.audio import AudioError, read_audio
    from biomamba.model import pad_for_frontend

    rows: dict[str, list[np.ndarray]] = {}
    model = model.to(device)
    with torch.no_grad():
        for path in paths:
            try:
                audio = torch.from_numpy(read_audio(path, sample_rate=model.sample_rate))[None].to(device)
            except AudioError as e:
                raise SystemExit(f"probe: {e}") from None
            hidden, layers = model.encode_layers(model.frontend(pad_for_frontend(audio)))
            pooled = {"last": hidden[0]} | {f"layer{i}": h[0] for i, h in enumerate(layers, 1)}
            for key, h in pooled.items():                                  # h [T, D]
                rows.setdefault(key, []).append(h.double().mean(0).cpu().numpy())
    return {key: np.stack(v) for key, v in rows.items()}


# --------------------------------------------------------------------------- the linear layer


def linear_probe(c: float, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))


def fit_probe(train_x: np.ndarray, train_y: list[str], valid_x: np.ndarray, valid_y: list[str],
              c: float = 1.0, seed: int = 0) -> dict:
    """One linear layer on standardised features: fitted on train, scored on valid."""
    from sklearn.metrics import accuracy_score, f1_score

    probe = linear_probe(c, seed).fit(train_x, train_y)
    predicted = probe.predict(valid_x)
    return {"accuracy": float(accuracy_score(valid_y, predicted)),
            "macro_f1": float(f1_score(valid_y, predicted, average="macro", labels=sorted(set(train_y)),
                                       zero_division=0)),
            "train_accuracy": float(accuracy_score(train_y, probe.predict(train_x)))}


def select_c(train_x: np.ndarray, train_y: list[str], grid=C_GRID, folds: int = INNER_FOLDS) -> tuple[float, float]:
    """(C, its cross-validated accuracy): the C of ``grid`` with the best mean accuracy over a
    stratified ``folds``-fold split of the TRAINING rows (ties: the smaller C). Classes with fewer
    rows than folds are spread as far as they go."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    y = np.asarray(train_y)
    n_splits = max(2, min(folds, max(np.unique(y, return_counts=True)[1])))
    split = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0)
    scores = []
    with warnings.catch_warnings():   # "the least populated class has only k members": expected here
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for c in grid:
            scores.append(float(cross_val_score(linear_probe(c), train_x, y, cv=split, scoring="accuracy").mean()))
    best = int(np.argmax(scores))     # the first maximum: grid is ascending, so the smaller C
    return float(grid[best]), scores[best]


def probe_split(train_x: dict[str, np.ndarray], train_y: list[str], valid_x: dict[str, np.ndarray],
                valid_y: list[str]) -> dict:
    """Every feature of one split: C chosen on the training rows, then fitted there and scored on
    the valid rows. ``best_layer``: the layer with the best cross-validated accuracy on the training
    rows (the valid rows play no part in any choice)."""
    features = {}
    for key in train_x:
        c, cv_accuracy = select_c(train_x[key], train_y)
        features[key] = {"C": c, "cv_accuracy": cv_accuracy,
                         **fit_probe(train_x[key], train_y, valid_x[key], valid_y, c=c)}
    layers = [k for k in features if k.startswith("layer")]
    best = max(layers, key=lambda k: features[k]["cv_accuracy"]) if layers else None  # first of ties
    return {"n_train": len(train_y), "n_valid": len(valid_y), "features": features, "best_layer": best}


def summarise(splits: list[dict]) -> dict:
    """Mean (and std, ddof 1, over more than one split) of ``last`` and of the best layer."""
    def stats(results: list[dict]) -> dict:
        acc = np.array([r["accuracy"] for r in results])
        return {"accuracy": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
                "macro_f1": float(np.mean([r["macro_f1"] for r in results])),
                "per_split_accuracy": [float(a) for a in acc]}
    out = {"last": stats([s["features"]["last"] for s in splits])}
    if all(s["best_layer"] for s in splits):
        out["best_layer"] = {"layers": [int(s["best_layer"][5:]) for s in splits],
                             **stats([s["features"][s["best_layer"]] for s in splits])}
    return out


# --------------------------------------------------------------------------- the run


def rows_of(features: dict[str, np.ndarray], index: dict[Path, int], rows: list[tuple[Path, str]]) -> dict:
    """The feature rows [len(rows), D] of a listing's recordings, per feature."""
    at = [index[p] for p, _ in rows]
    return {key: x[at] for key, x in features.items()}


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), platform.processor())


def machine(device: str) -> dict:
    import torch

    return {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device}


def probe_all(checkpoints: list[str], tasks: dict[str, list[Split]], device: str = "cpu") -> dict:
    """Probe every checkpoint on every task; each recording's features computed once per checkpoint."""
    paths = sorted({p for splits in tasks.values() for s in splits for p, _ in s.train + s.valid}, key=str)
    index = {p: i for i, p in enumerate(paths)}
    result = {
        "settings": {
            "features": "mean over the whole recording of: last = the last hidden state (after the final "
                        "norm); layerK = layer K's output (before the final norm)",
            "probe": "multinomial logistic regression (scikit-learn, lbfgs, max_iter 5000) on standardised features",
            "C_grid": list(C_GRID),
            "selection": f"C, and the best layer, by {INNER_FOLDS}-fold stratified cross-validated accuracy "
                         "on the training rows only; ties go to the smaller C / the lower layer",
            "random": "random:ARCH-PRESET[:SEED] is a freshly initialised encoder, torch seed SEED (default 0)",
        },
        "machine": machine(device),
        "tasks": {name: {"splits": [s.name for s in splits], "n_train": [len(s.train) for s in splits],
                         "n_valid": [len(s.valid) for s in splits]} for name, splits in tasks.items()},
        "checkpoints": {},
    }
    for name in checkpoints:
        model, described = load_encoder(name)
        started = time.time()
        features = clip_features(model, paths, device)
        feature_s = time.time() - started
        entry = {**described, "architecture": model.architecture, "preset": model.preset,
                 "dim": int(features["last"].shape[1]), "layers": len(features) - 1,
                 "audio_files": len(paths), "feature_seconds": round(feature_s, 1), "tasks": {}}
        for task, splits in tasks.items():
            done = [{"split": s.name, **probe_split(rows_of(features, index, s.train), [y for _, y in s.train],
                                                    rows_of(features, index, s.valid), [y for _, y in s.valid])}
                    for s in splits]
            entry["tasks"][task] = {"splits": done, **summarise(done)}
        entry["probe_seconds"] = round(time.time() - started - feature_s, 1)
        result["checkpoints"][name] = entry
        last = {t: round(v["last"]["accuracy"], 3) for t, v in entry["tasks"].items()}
        print(f"{name}: accuracy of the last hidden state {last}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint or run folders, or random:ARCH-PRESET[:SEED]")
    parser.add_argument("--train", type=Path, help="BEANS CSV the probe is fitted on (task `listing`)")
    parser.add_argument("--valid", type=Path, help="BEANS CSV the probe is scored on (task `listing`)")
    parser.add_argument("--insectset32", type=Path, help="InsectSet32's files.csv (train -> validation)")
    parser.add_argument("--phoebe", type=Path, help="a `layout.py cv` folder: fold*/train.csv, test.csv")
    parser.add_argument("--device", default="cpu", help="where the encoders run (cpu, cuda)")
    parser.add_argument("--report", type=Path, help="write the result as JSON")
    args = parser.parse_args()
    if (args.train is None) != (args.valid is None):
        parser.error("--train and --valid go together")
    tasks = {}
    if args.train is not None:
        tasks["listing"] = listing_task(args.train, args.valid)
    if args.insectset32 is not None:
        tasks["insectset32"] = insectset32_task(args.insectset32)
    if args.phoebe is not None:
        tasks["phoebe"] = folds_task(args.phoebe)
    if not tasks:
        parser.error("no task: give --train/--valid, --insectset32 and/or --phoebe")
    result = probe_all(args.checkpoints, tasks, args.device)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
