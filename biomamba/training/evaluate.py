"""`bmamba eval`: score a checkpoint on labelled data, BEANS style, and write a JSON report.

Classification (a folder per class or a BEANS CSV): accuracy (BEANS's metric), macro-F1, the
confusion matrix (rows true, columns predicted) and per-class precision/recall/F1.

Detection (a BEANS JSONL, or a folder of recordings with Raven/Audacity tables):
- BEANS mAP over fixed windows (`DetectionDataset`: window/hop per BEANS, a window positive by
  BEANS's overlap rule). The model sees each window on its own; a window's score for a class is
  the **largest frame probability** of that class inside the window (our model is frame-level;
  BEANS's models output one score per window);
- event precision/recall/F1: every recording runs whole through the model, streamed chunk by
  chunk with carried state (``model.stream()``; the Transformer baseline, which cannot stream,
  runs whole), frame probabilities become events (`biomamba.runtime.events.detect_events`:
  threshold, hysteresis, merge gap, minimum duration) and a predicted event matches a reference
  of the same class whose onset is within ``onset_tolerance_s`` (`biomamba.metrics.event_prf`).

This module also builds the datasets that `bmamba train` uses (`infer_task`,
`classification_items`, `CheckedDetectionDataset`), so train and eval read data the same way,
and holds the batched inference that train's validation shares (`classify_batches`,
`window_batches`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..audio import AUDIO_EXTENSIONS, AudioError, audio_info, iter_audio, read_audio
from ..data import (
    ClassificationDataset,
    DetectionDataset,
    class_index,
    collate_padded,
    find_annotation_table,
    read_annotations,
    read_beans_jsonl,
)
from ..loading import load_model_from
from ..metrics import (
    accuracy,
    average_precision,
    confusion_matrix,
    event_prf,
    macro_f1,
    mean_average_precision,
    plot_confusion,
    plot_precision_recall,
    prf_from_counts,
)
from ..streaming import frame_seconds
from .devices import Distributed, select_amp, select_device
from .loop import Run

TASKS = ("classify", "detect")


# --------------------------------------------------------------------------- data


def infer_task(data: Path) -> str:
    """'detect' for a JSONL listing or a folder whose recordings have annotation tables next to
    them; 'classify' for a CSV listing or a folder of class subfolders. Raises ValueError."""
    data = Path(data)
    if not data.exists():
        raise ValueError(f"{data}: no such file or folder")
    if data.is_file():
        if data.suffix.lower() == ".jsonl":
            return "detect"
        if data.suffix.lower() == ".csv":
            return "classify"
        raise ValueError(f"{data}: expected a BEANS .jsonl (detection) or .csv (classification) "
                         "listing, or a folder")
    for f in data.rglob("*"):
        if _is_audio(f) and find_annotation_table(f) is not None:
            return "detect"
    return "classify"


def _is_audio(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in AUDIO_EXTENSIONS


def classification_items(source: Path, split: str | None = None) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(readable (path, label) items, unreadable (path, reason)) of a class folder or BEANS CSV.
    Each file's header is read once, so a broken file is reported here, not mid-epoch."""
    items, bad = [], []
    for path, label in ClassificationDataset._load(Path(source), split):
        try:
            info = audio_info(path)
            if info.frames == 0:
                raise AudioError(path, "the recording holds no samples")
            items.append((path, label))
        except AudioError as e:
            bad.append((path, e.reason))
    return items, bad


class CheckedDetectionDataset(DetectionDataset):
    """`DetectionDataset` that skips recordings it cannot read (listed in ``unreadable`` as
    (path, reason)) instead of failing on them, so a run reports them with a count."""

    def _load(self, source: Path, label_column: str | None):
        self.unreadable: list[tuple[Path, str]] = []
        if source.is_dir():
            listed = []
            for recording in sorted(f for f in source.rglob("*") if _is_audio(f)):
                table = find_annotation_table(recording)
                if table is None:
                    self.skipped.append(recording)
                else:
                    listed.append((recording, None, table))
        else:
            listed = [(item.path, item, None) for item in read_beans_jsonl(source)]
        out = []
        for recording, item, table in listed:
            try:
                length = self._duration(recording)
            except AudioError as e:
                self.unreadable.append((recording, e.reason))
                continue
            if item is not None:
                out.append((item.path, item.length_s, list(item.annotations)))
            else:
                out.append((recording, length, read_annotations(table, label_column=label_column,
                                                                duration_s=length)))
        if not out:
            raise ValueError(f"{source}: no readable recording with annotations "
                             f"({len(self.unreadable)} unreadable, {len(self.skipped)} without a table)")
        return out

    def recordings(self) -> list[tuple[Path, float, tuple]]:
        """(path, length_s, annotations) of every recording, in window order."""
        seen: dict[Path, tuple[Path, float, tuple]] = {}
        for w in self.windows:
            seen.setdefault(w.path, (w.path, w.length_s, w.annotations))
        return list(seen.values())


# --------------------------------------------------------------------------- batched inference


@torch.no_grad()
def classify_batches(model, loader: DataLoader, run: Run) -> tuple[np.ndarray, np.ndarray, float]:
    """(true labels [n] int64, class probabilities [n, C], mean cross-entropy) over a loader of
    `collate_padded` classification batches."""
    model.eval()
    labels, probs, loss_sum = [], [], 0.0
    for batch in loader:
        audio, lengths, y = (batch[k].to(run.device) for k in ("audio", "lengths", "labels"))
        with run.autocast():
            logits = model(audio, lengths)["clip_logits"].float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        labels.append(y.cpu().numpy())
        probs.append(torch.softmax(logits, -1).cpu().numpy())
    n = sum(len(y) for y in labels)
    return np.concatenate(labels), np.concatenate(probs), loss_sum / max(n, 1)


@torch.no_grad()
def window_batches(model, loader: DataLoader, run: Run) -> tuple[np.ndarray, np.ndarray, float]:
    """(window scores [n, C], window targets [n, C], mean frame BCE) over a loader of detection
    batches. A window's score is the largest frame probability in it."""
    model.eval()
    scores, targets, loss_sum, frames = [], [], 0.0, 0.0
    for batch in loader:
        audio, lengths = batch["audio"].to(run.device), batch["lengths"].to(run.device)
        frame_targets = batch["frame_targets"].to(run.device)
        with run.autocast():
            logits = model(audio, lengths)["frame_logits"].float()
        mask = _frame_mask(batch["frame_lengths"].to(run.device), logits.shape[1])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, frame_targets, reduction="none")
        loss_sum += float((bce * mask[..., None]).sum())
        frames += float(mask.sum()) * logits.shape[-1]
        probs = torch.sigmoid(logits).masked_fill(~mask[..., None], 0.0)
        scores.append(probs.amax(1).cpu().numpy())
        targets.append(batch["window_targets"].numpy())
    return np.concatenate(scores), np.concatenate(targets), loss_sum / max(frames, 1.0)


def _frame_mask(frame_lengths: torch.Tensor, n: int) -> torch.Tensor:
    return torch.arange(n, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


def classification_scores(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """accuracy, macro_f1, confusion_matrix and per-class precision/recall/F1/support."""
    pred = probs.argmax(-1)
    cm = confusion_matrix(labels, pred, len(classes))
    per_class = {}
    for c, name in enumerate(classes):
        tp, predicted, true = cm[c, c], cm[:, c].sum(), cm[c, :].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / true if true else 0.0
        per_class[name] = {"precision": float(p), "recall": float(r),
                           "f1": float(2 * p * r / (p + r)) if p + r else 0.0, "support": int(true)}
    return {"accuracy": accuracy(labels, pred), "macro_f1": macro_f1(labels, pred, len(classes)),
            "confusion_matrix": cm.tolist(), "per_class": per_class}


def detection_scores(scores: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> dict:
    """BEANS mAP and the AP of each class over windows."""
    return {"map": mean_average_precision(scores, targets),
            "ap_per_class": {name: average_precision(scores[:, c], targets[:, c])
                             for c, name in enumerate(classes)},
            "positives_per_class": {name: int(targets[:, c].sum()) for c, name in enumerate(classes)}}


# --------------------------------------------------------------------------- events


def recording_probabilities(model, path: Path, chunk_s: float = 30.0) -> np.ndarray:
    """Frame probabilities [T, C] of a whole recording decoded at the model's rate: streamed with
    carried state (BioMamba), or in one pass (a model that cannot stream)."""
    if hasattr(model, "stream"):
        stream = model.stream(max_chunk_s=chunk_s)
        parts = [stream.push(block) for block in iter_audio(path, block_s=chunk_s, sample_rate=model.sample_rate)]
        parts.append(stream.flush())
        return np.concatenate(parts)
    return model.predict(read_audio(path, sample_rate=model.sample_rate))


def event_scores(model, recordings, classes: Sequence[str], *, unknown_label: str | None,
                 onset_tolerance_s: float, threshold: float, min_duration_s: float,
                 merge_gap_s: float) -> dict:
    """Event P/R/F1 over all recordings (counts summed), overall and per class."""
    from ..runtime.events import detect_events

    counts = {name: [0, 0, 0] for name in classes}
    for path, _length, events in recordings:
        probs = recording_probabilities(model, path)
        predicted = detect_events(probs, list(classes), frame_s=frame_seconds(model.sample_rate), threshold=threshold,
                                  min_duration_s=min_duration_s, merge_gap_s=merge_gap_s)
        reference = [(a.start_s, a.end_s, classes[class_index(classes, a.label, unknown_label)])
                     for a in events]
        for name in classes:
            r = event_prf([e for e in predicted if e.label == name], [e for e in reference if e[2] == name],
                          onset_tolerance_s=onset_tolerance_s)
            for i, key in enumerate(("tp", "fp", "fn")):
                counts[name][i] += int(r[key])
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    return {**prf_from_counts(*total), "onset_tolerance_s": onset_tolerance_s, "threshold": threshold,
            "min_duration_s": min_duration_s, "merge_gap_s": merge_gap_s, "n_recordings": len(recordings),
            "per_class": {name: prf_from_counts(*c) for name, c in counts.items()}}


# --------------------------------------------------------------------------- evaluate


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    batch_size: int = 8,
    device: str = "auto",
    amp: str = "auto",
    crop_s: float | None = None,
    window_s: float | None = None,
    hop_s: float | None = None,
    unknown_label: str | None = None,
    label_column: str | None = None,
    events: bool = True,
    onset_tolerance_s: float = 0.5,
    threshold: float = 0.5,
    min_duration_s: float = 0.1,
    merge_gap_s: float = 0.2,
    plot: str | Path | None = None,
    report: str | Path | None = None,
    workers: int = 0,
    split: str | None = None,
) -> dict:
    """Score a checkpoint (a folder, or a run folder: its best/ else last/) on labelled data.

    The task is the checkpoint's. Classification clips run whole unless ``crop_s`` (centred
    crop). Detection windows default to the ones the model was trained with (its config), else
    BEANS's dcase 2 s / 1 s. ``plot``: a confusion matrix (classify) or precision-recall curves
    (detect) as PNG. ``report``: the returned dict as JSON (NaN written as null). ``split``: a
    classification CSV's rows whose `split` column holds this value (InsectSet32: validation).

    Raises ValueError (bad data, unknown labels, a checkpoint without classes).
    """
    dev = select_device(device)
    run = Run(dev, select_amp(amp, dev), Distributed())
    model = load_model_from(checkpoint, dev)
    if model.task not in TASKS:
        raise ValueError(f"{checkpoint}: a {model.task!r} model has no class head to evaluate "
                         "(fine-tune it with bmamba train first)")
    trained = getattr(model, "training_info", {}) or {}
    unknown_label = unknown_label if unknown_label is not None else trained.get("unknown_label")
    classes = model.classes
    if split is not None and model.task != "classify":
        raise ValueError(f"--split {split!r}: selects rows of a classification CSV, not of detection data")
    result: dict = {"checkpoint": str(checkpoint), "data": str(data), "split": split, "task": model.task,
                    "architecture": model.architecture, "sample_rate": model.sample_rate, "classes": classes}
    if model.task == "classify":
        items, bad = classification_items(Path(data), split)
        if not items:
            raise ValueError(f"{data}: no readable recordings ({len(bad)} unreadable)")
        dataset = ClassificationDataset(items, classes=classes, unknown_label=unknown_label, crop_s=crop_s,
                                        sample_rate=model.sample_rate)
        if dataset.classes != classes:
            raise ValueError(f"{data}: labels outside the model's classes {classes} "
                             "(pass --unknown-label to map them to one class)")
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_padded, num_workers=workers)
        labels, probs, loss = classify_batches(model, loader, run)
        result.update(n_items=len(labels), loss=loss, unreadable=[f"{p}: {r}" for p, r in bad],
                      crop_s=crop_s, **classification_scores(labels, probs, classes))
        if plot:
            plot_confusion(np.array(result["confusion_matrix"]), classes, plot)
    else:
        window_s = window_s or trained.get("window_s") or 2.0
        hop_s = hop_s or trained.get("hop_s") or 1.0
        dataset = CheckedDetectionDataset(Path(data), window_s=window_s, hop_s=hop_s, classes=classes,
                                          unknown_label=unknown_label, label_column=label_column,
                                          sample_rate=model.sample_rate)
        if dataset.classes != classes:
            raise ValueError(f"{data}: labels outside the model's classes {classes} "
                             "(pass --unknown-label to map them to one class)")
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_padded, num_workers=workers)
        scores, targets, loss = window_batches(model, loader, run)
        result.update(n_windows=len(scores), window_s=window_s, hop_s=hop_s, loss=loss,
                      unreadable=[f"{p}: {r}" for p, r in dataset.unreadable],
                      without_table=[str(p) for p in dataset.skipped],
                      **detection_scores(scores, targets, classes))
        if events:
            model.eval()
            result["events"] = event_scores(
                model, dataset.recordings(), classes, unknown_label=unknown_label,
                onset_tolerance_s=onset_tolerance_s, threshold=threshold,
                min_duration_s=min_duration_s, merge_gap_s=merge_gap_s)
        if plot:
            plot_precision_recall(scores, targets, classes, plot)
    if plot:
        result["plot"] = str(plot)
    if report:
        Path(report).write_text(json.dumps(json_safe(result), indent=2) + "\n")
    return result


def json_safe(value):
    """NaN and inf -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
