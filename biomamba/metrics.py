"""Evaluation metrics: classification, BEANS detection mAP, event-level scores, plots.

numpy only (the torch-free runtime imports this module for `bmamba detect --parity`);
matplotlib is imported lazily inside the plotting functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- classification


def _labels_1d(y: Any, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    return y


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Fraction of items whose predicted class equals the true class; 0.0 for no items
    (as BEANS's `Accuracy`)."""
    y_true, y_pred = _labels_1d(y_true, "y_true"), _labels_1d(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        return 0.0
    return float(np.mean(y_true == y_pred))


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """Counts [n_classes, n_classes] int64: row = true class index, column = predicted index."""
    y_true, y_pred = _labels_1d(y_true, "y_true"), _labels_1d(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} must hold class indices in [0, {n_classes})")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return cm


def macro_f1(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> float:
    """Unweighted mean over all `n_classes` of the one-vs-rest F1 of each class.

    A class with no true and no predicted items has F1 0 (precision and recall are 0 when
    their denominators are 0, as in BEANS's `BinaryF1Score` and scikit-learn's default
    `zero_division`), and it still counts in the mean.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    true = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean()) if n_classes > 0 else 0.0


# --------------------------------------------------------------------------- detection mAP


def _ranked_truth(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Targets (bool) in order of decreasing score; ties keep their input order."""
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite (no NaN or inf)")
    if not np.all((targets == 0) | (targets == 1)):
        raise ValueError("targets must be 0 or 1")
    order = np.argsort(-scores, kind="stable")
    return targets[order].astype(bool)


def average_precision(scores: Sequence[float] | np.ndarray, targets: Sequence[int] | np.ndarray) -> float:
    """Non-interpolated average precision of one class, as BEANS computes it.

    Follows earthspecies/beans `beans/metrics.py`, class `AveragePrecision.get_metric` (itself
    from tnt's APMeter), without weights: sort the items by decreasing score, take the
    precision tp/rank at every positive, and average over the positives; a class with no
    positives scores 0.

    Ties: BEANS ranks with `torch.sort(descending=True)`, whose order among equal scores is
    not specified; here equal scores keep their input order (a stable sort), so the result
    is deterministic. With ties the value can depend on that order (as in BEANS).

    scores, targets: [n] (targets 0/1).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 1 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be the same 1-D shape")
    truth = _ranked_truth(scores, targets)
    if not truth.any():
        return 0.0
    precision = np.cumsum(truth) / np.arange(1, len(truth) + 1)
    return float(precision[truth].sum() / truth.sum())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """BEANS detection mAP: the unweighted mean over the C classes of `average_precision`.

    scores: [n, C] (any monotone score: logits or probabilities); targets: [n, C] 0/1.
    Classes without positives count as 0 in the mean (BEANS `MeanAveragePrecision`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be the same [n, C] shape")
    if scores.shape[1] == 0:
        raise ValueError("no classes")
    return float(np.mean([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]))


def precision_recall_curve(
    scores: Sequence[float] | np.ndarray, targets: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall [n] after each item in the ranking of `average_precision`
    (recall is 0 everywhere when there are no positives)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 1 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be the same 1-D shape")
    truth = _ranked_truth(scores, targets)
    tp = np.cumsum(truth)
    precision = tp / np.arange(1, len(truth) + 1)
    recall = tp / max(int(truth.sum()), 1)
    return precision, recall


# --------------------------------------------------------------------------- event scores


def _event_tuple(event: Any) -> tuple[float, float, str]:
    if hasattr(event, "start_s"):
        return float(event.start_s), float(event.end_s), str(event.label)
    start, end, label = event
    return float(start), float(end), str(label)


def _match_count(pred_onsets: list[float], ref_onsets: list[float], tolerance: float) -> int:
    """Size of a maximum one-to-one matching between onsets with |pred - ref| <= tolerance.

    Every reference accepts the same-width interval [ref - tol, ref + tol], so the intervals
    sorted by start are also sorted by end; giving each reference, in that order, the
    earliest still-free prediction inside its interval is then a maximum matching (the
    classic greedy for points and intervals sorted by right end).
    """
    preds = sorted(pred_onsets)
    matched = 0
    j = 0
    for ref in sorted(ref_onsets):
        # Predictions too early for this reference are too early for every later one too.
        while j < len(preds) and preds[j] < ref and ref - preds[j] > tolerance:
            j += 1
        if j < len(preds) and abs(preds[j] - ref) <= tolerance:
            matched += 1
            j += 1
    return matched


def prf_from_counts(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """Precision, recall and F1 from counts, with sed_eval's conventions (see `event_prf`)."""
    precision = tp / (tp + fp) if tp + fp > 0 else math.nan
    recall = tp / (tp + fn) if tp + fn > 0 else math.nan
    if precision == 0 and recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)  # NaN if either is NaN
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def event_prf(
    predicted: Iterable[Any], reference: Iterable[Any], *, onset_tolerance_s: float = 0.5
) -> dict[str, float | int]:
    """Event-level precision, recall and F1 of predicted events against reference events.

    Events are objects with `start_s`, `end_s`, `label` attributes or (start, end, label)
    tuples. A prediction matches a reference of the same label whose onset is within
    `onset_tolerance_s` (inclusive: |onset_pred - onset_ref| <= tolerance), one-to-one, and the
    matching is a maximum one (per label; see `_match_count`). Offsets are not compared.

    Returns {"precision", "recall", "f1", "tp", "fp", "fn"}. Conventions for empty sets are
    sed_eval's (`sed_eval.metric.precision/recall/f_measure`): precision is NaN when there
    are no predictions, recall NaN when there are no references, F1 is 0 when precision and
    recall are both 0 and NaN when either is NaN. To score many recordings together, sum
    the counts and call `prf_from_counts`.
    """
    if onset_tolerance_s < 0:
        raise ValueError(f"onset_tolerance_s must be >= 0, got {onset_tolerance_s}")
    preds = [_event_tuple(e) for e in predicted]
    refs = [_event_tuple(e) for e in reference]
    tp = 0
    for label in {e[2] for e in preds} & {e[2] for e in refs}:
        tp += _match_count(
            [e[0] for e in preds if e[2] == label],
            [e[0] for e in refs if e[2] == label],
            onset_tolerance_s,
        )
    return prf_from_counts(tp, len(preds) - tp, len(refs) - tp)


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(
    cm: np.ndarray, labels: Sequence[str], path: str | Path, *, normalize: bool = True, title: str | None = None
) -> Path:
    """Save a confusion-matrix heat map (rows true, columns predicted) to `path` (PNG, SVG, PDF
    by extension). With `normalize`, each row is divided by its count (recall per class)."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise ValueError(f"cm {cm.shape} must be square with one row per label ({len(labels)})")
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 30:
        for i in range(len(labels)):
            for j in range(len(labels)):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > 0.5 * shown.max() else "black")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_precision_recall(
    scores: np.ndarray, targets: np.ndarray, labels: Sequence[str], path: str | Path, *, title: str | None = None
) -> Path:
    """Save per-class precision-recall curves (the ranking of `average_precision`, AP in the
    legend) to `path`. scores, targets: [n, C]; labels: C names."""
    plt = _pyplot()
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape or scores.shape[1] != len(labels):
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be [n, {len(labels)}]")
    fig, ax = plt.subplots(figsize=(6, 5))
    for c, label in enumerate(labels):
        precision, recall = precision_recall_curve(scores[:, c], targets[:, c])
        ap = average_precision(scores[:, c], targets[:, c])
        ax.plot(recall, precision, label=f"{label} (AP {ap:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    map_ = mean_average_precision(scores, targets)
    ax.set_title(title or f"precision-recall (mAP {map_:.3f})")
    if len(labels) <= 20:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
