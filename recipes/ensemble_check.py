"""Is the score bound by the runs' variance or by what every run misses? Averages the class
probabilities of several fine-tuned checkpoints on the same whole-recording evaluation `bmamba
eval` does, and prints each one's accuracy and macro-F1, then each group's ensemble.

If the runs erred independently, an ensemble of n of them would gain a lot over its members; if
they miss the same recordings, it gains little. Also printed: the share of recordings that at
least one member gets right (a ceiling for any vote among them) and that all of them get right.
A diagnosis only: an ensemble costs n times the runtime, and none is shipped.

    python recipes/ensemble_check.py DATA --split validation \\
        --group tiny WORK/ft/biomamba-tiny-delayed/seed{0,1,2}/best \\
        --group edge WORK/ft/biomamba-edge-delayed/seed{0,1,2}/best [--json out.json]

Every group is also scored pooled with all the others ("all"). The checkpoints must share their
classes (same order). CPU, torch threads from OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from biomamba.data import ClassificationDataset, collate_padded
from biomamba.loading import load_model_from
from biomamba.training.devices import Distributed, select_amp, select_device
from biomamba.training.evaluate import classification_items, classification_scores, classify_batches
from biomamba.training.loop import Run


def probabilities(checkpoint: str, items, run: Run) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels [n], probabilities [n, C], classes) of one checkpoint on whole recordings."""
    model = load_model_from(checkpoint, run.device)
    dataset = ClassificationDataset(items, classes=model.classes, sample_rate=model.sample_rate)
    labels, probs, _ = classify_batches(model, DataLoader(dataset, batch_size=8, collate_fn=collate_padded), run)
    return labels, probs, model.classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="classification CSV or folder, as bmamba eval takes")
    parser.add_argument("--split", default=None, help="the CSV's split to score (e.g. validation)")
    parser.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "CHECKPOINT"),
                        help="a name, then its checkpoints")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    device = select_device("cpu")
    run = Run(device, select_amp("none", device), Distributed())
    items, bad = classification_items(args.data, args.split)
    if bad:
        print(f"unreadable, left out: {len(bad)}")
    groups = {group[0]: group[1:] for group in args.group}
    probs, labels, classes, result = {}, None, None, {"members": {}, "ensembles": {}}
    for checkpoint in dict.fromkeys(c for members in groups.values() for c in members):
        y, p, names = probabilities(checkpoint, items, run)
        if classes is not None and (names != classes or not np.array_equal(y, labels)):
            raise SystemExit(f"{checkpoint}: other classes than {next(iter(probs))}")
        labels, classes, probs[checkpoint] = y, names, p
        scores = classification_scores(y, p, names)
        result["members"][checkpoint] = {k: scores[k] for k in ("accuracy", "macro_f1")}
        print(f"{scores['accuracy']:.3f}  {scores['macro_f1']:.3f}  {checkpoint}")
    if len(groups) > 1:
        groups["all"] = list(probs)
    for name, members in groups.items():
        scores = classification_scores(labels, np.mean([probs[c] for c in members], 0), classes)
        best = max(result["members"][c]["accuracy"] for c in members)
        right = np.array([probs[c].argmax(1) == labels for c in members])   # [members, n]
        result["ensembles"][name] = {"members": len(members), "accuracy": scores["accuracy"],
                                     "macro_f1": scores["macro_f1"], "best_member_accuracy": best,
                                     "right_by_any": float(right.any(0).mean()),
                                     "right_by_all": float(right.all(0).mean())}
        print(f"ensemble {name} ({len(members)}): accuracy {scores['accuracy']:.3f} (best member {best:.3f}), "
              f"macro-F1 {scores['macro_f1']:.3f}; right by any member {right.any(0).mean():.3f}, "
              f"by all {right.all(0).mean():.3f}")
    result["n_items"] = int(len(labels))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
