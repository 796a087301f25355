"""Linear probe of a frozen encoder: how much of the labels one linear layer reads off its features.

Every recording is run WHOLE through the encoder (no crop, no gradient); its clip feature is the
encoder's last hidden state [T, D] mean-pooled over the recording's frames -> [D]. One linear layer
(multinomial logistic regression, scikit-learn, on standardised features; L2 strength C) is fitted
on the --train listing and scored on the --valid listing: accuracy and macro-F1. Nothing of the
encoder trains, so a probe compares pre-training recipes without a fine-tuning budget deciding.

    python recipes/probe.py CHECKPOINT --train WORK/train.csv --valid WORK/validation.csv \
        [--report probe.json]

CHECKPOINT: a checkpoint folder (config.json + model.safetensors) or a run folder (its best/, else
last/); any architecture bmamba saves (a pre-training run's encoder included). Listings: BEANS
classification CSVs (path,label).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def checkpoint_folder(path: Path) -> Path:
    """A checkpoint folder, or a run folder's best/ (else last/)."""
    for folder in (path, path / "best", path / "last"):
        if (folder / "config.json").is_file():
            return folder
    raise SystemExit(f"probe: {path}: not a bmamba checkpoint or run folder (no config.json)")


def clip_features(model, listing: list[tuple[Path, str]]) -> np.ndarray:
    """Mean-pooled last hidden states [N, D] float64 of whole recordings."""
    import torch

    from biomamba.audio import read_audio

    features = []
    with torch.no_grad():
        for path, _ in listing:
            audio = torch.from_numpy(read_audio(path))[None]
            hidden = model(audio)["hidden"][0]                           # [T, D]
            features.append(hidden.double().mean(0).numpy())
    return np.stack(features)


def fit_probe(train_x: np.ndarray, train_y: list[str], valid_x: np.ndarray, valid_y: list[str],
              c: float = 1.0, seed: int = 0) -> dict:
    """One linear layer on standardised features: fitted on train, scored on valid."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
    probe.fit(train_x, train_y)
    predicted = probe.predict(valid_x)
    return {"accuracy": float(accuracy_score(valid_y, predicted)),
            "macro_f1": float(f1_score(valid_y, predicted, average="macro", labels=sorted(set(train_y)),
                                       zero_division=0)),
            "train_accuracy": float(accuracy_score(train_y, probe.predict(train_x)))}


def probe(checkpoint: Path, train: Path, valid: Path, c: float = 1.0) -> dict:
    import torch

    from biomamba.data import read_beans_csv
    from biomamba.model import load_model

    torch.manual_seed(0)
    folder = checkpoint_folder(checkpoint)
    model = load_model(folder).float().eval()
    train_items, valid_items = read_beans_csv(train), read_beans_csv(valid)
    started = time.time()
    train_x, valid_x = clip_features(model, train_items), clip_features(model, valid_items)
    scores = fit_probe(train_x, [y for _, y in train_items], valid_x, [y for _, y in valid_items], c=c)
    return {"checkpoint": str(folder), "architecture": model.architecture, "train": str(train),
            "valid": str(valid), "n_train": len(train_items), "n_valid": len(valid_items),
            "feature": "last hidden state, mean over the whole recording", "dim": int(train_x.shape[1]),
            "C": c, **scores, "seconds": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--train", type=Path, required=True, help="BEANS CSV the probe is fitted on")
    parser.add_argument("--valid", type=Path, required=True, help="BEANS CSV the probe is scored on")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--report", type=Path, help="write the result as JSON")
    args = parser.parse_args()
    result = probe(args.checkpoint, args.train, args.valid, args.c)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
