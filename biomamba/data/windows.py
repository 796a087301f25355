"""BEANS windowing and targets: windows per recording, window labels, 20 ms frame labels.

numpy only. Events are anything with `start_s`, `end_s`, `label` (e.g. `Annotation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..streaming import SAMPLE_RATE, frame_seconds


def window_starts(length_s: float, window_s: float, hop_s: float) -> np.ndarray:
    """Start times (s) [n_windows] float64 of the BEANS windows of a recording.

    Follows earthspecies/beans `beans/datasets.py`, `RecognitionDataset.__init__`:
    n = int((length - window) / hop) + 1 windows starting at i * hop, with Python's int()
    (truncation toward zero) on the float quotient. So a recording shorter than one window
    still gets one window when length > window - hop (BEANS zero-pads its audio), and none
    when it is shorter than that. Float rounding is BEANS's too (e.g. 0.3 s / 0.1 s windows of
    0.1 s give 2 windows, as there).
    """
    if window_s <= 0 or hop_s <= 0:
        raise ValueError(f"window_s and hop_s must be > 0, got {window_s}, {hop_s}")
    if length_s < 0:
        raise ValueError(f"length_s must be >= 0, got {length_s}")
    n = max(int((length_s - window_s) / hop_s) + 1, 0)
    return np.array([i * hop_s for i in range(n)], dtype=np.float64)


def class_index(
    classes: Sequence[str], label: str, unknown_label: str | None = None
) -> int:
    """Index of `label` in `classes`; a label not there maps to `unknown_label` (BEANS's
    `OTHR` for enabirds) when one is given, else it is an error."""
    try:
        return classes.index(label) if isinstance(classes, list) else list(classes).index(label)
    except ValueError:
        if unknown_label is not None and unknown_label in classes:
            return list(classes).index(unknown_label)
        raise ValueError(f"label {label!r} is not one of the classes {list(classes)}") from None


def window_targets(
    annotations: Iterable[Any],
    starts: np.ndarray,
    window_s: float,
    classes: Sequence[str],
    *,
    unknown_label: str | None = None,
) -> np.ndarray:
    """BEANS window labels [n_windows, n_classes] float32 (0/1).

    Rule of earthspecies/beans `RecognitionDataset`: with window [st, ed = st + window] and event
    [a, b], the window is positive for the event's class when an end of the event lies in
    the window (closed interval) and (min(ed, b) - max(st, a)) / min(ed - st, b - a) > 0.2
    (strictly; zero-length events are skipped), or when the event covers the window
    (a <= st and ed <= b). Same float operations as there, so the boundaries agree.
    """
    starts = np.asarray(starts, dtype=np.float64)
    ends = starts + window_s
    targets = np.zeros((len(starts), len(classes)), dtype=np.float32)
    for event in annotations:
        c = class_index(classes, event.label, unknown_label)
        a, b = float(event.start_s), float(event.end_s)
        end_inside = ((starts <= a) & (a <= ends)) | ((starts <= b) & (b <= ends))
        denom = np.minimum(ends - starts, b - a)
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = (np.minimum(ends, b) - np.maximum(starts, a)) / denom
        positive = end_inside & (denom != 0) & (overlap > 0.2)
        positive |= (a <= starts) & (ends <= b)
        targets[positive, c] = 1.0
    return targets


def frame_targets(
    annotations: Iterable[Any],
    n_frames: int,
    classes: Sequence[str],
    frame_s: float = frame_seconds(SAMPLE_RATE),   # the model's frame: 0.02 s at 16 kHz
    *,
    offset_s: float = 0.0,
    unknown_label: str | None = None,
) -> np.ndarray:
    """Frame labels [n_frames, n_classes] float32 (0/1) for the model's frames of ``frame_s``.

    Frame t covers [offset_s + t * frame_s, offset_s + (t + 1) * frame_s) (`offset_s`: where the
    first frame starts in the recording, e.g. a window's start). Rule: a frame is positive for
    a class when an event of that class overlaps at least half of the frame; an event shorter
    than half a frame marks the frame that holds its midpoint, so that no event is lost.
    Overlaps are measured in frame units with a 1e-9 frame slack, so that times written in
    decimals (e.g. an event ending at 0.03 s) fall on the side their decimal value says.
    """
    if frame_s <= 0:
        raise ValueError(f"frame_s must be > 0, got {frame_s}")
    targets = np.zeros((n_frames, len(classes)), dtype=np.float32)
    t = np.arange(n_frames, dtype=np.float64)
    slack = 1e-9
    for event in annotations:
        c = class_index(classes, event.label, unknown_label)
        a = (float(event.start_s) - offset_s) / frame_s
        b = (float(event.end_s) - offset_s) / frame_s
        if b - a < 0.5 - slack:
            mid = int(np.floor((a + b) / 2))
            if 0 <= mid < n_frames:
                targets[mid, c] = 1.0
            continue
        overlap = np.minimum(t + 1, b) - np.maximum(t, a)
        targets[overlap >= 0.5 - slack, c] = 1.0
    return targets


def events_by_window(annotations: Sequence[Any], starts: np.ndarray, reach_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Which annotations can touch which window, indexed by time: O(n_windows + n_events log n_windows
    + pairs), not O(windows x annotations).

    Window i spans the closed interval [starts[i], starts[i] + reach_s] (starts sorted ascending;
    reach_s: the longest span its targets read, e.g. max(window, frames x 20 ms)). Returns CSR
    arrays (offsets [n_windows + 1] int64, events [n_pairs] int64): the annotations of window i
    are ``annotations[j] for j in events[offsets[i]:offsets[i + 1]]``, in annotation order. The
    selection errs on the wide side by 1e-6 s, so it holds every annotation that overlaps the
    window (and perhaps one that only touches it); `window_targets` and `frame_targets` give the
    same result on it as on all the recording's annotations.
    """
    starts = np.asarray(starts, dtype=np.float64)
    n_windows = len(starts)
    if len(annotations) == 0 or n_windows == 0:
        return np.zeros(n_windows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    a = np.array([float(e.start_s) for e in annotations])
    b = np.array([float(e.end_s) for e in annotations])
    slack = 1e-6
    first = np.searchsorted(starts, a - reach_s - slack, side="left")   # start + reach >= a
    last = np.searchsorted(starts, b + slack, side="right")             # start <= b
    counts = np.maximum(last - first, 0)
    total = int(counts.sum())
    event_ids = np.repeat(np.arange(len(annotations)), counts)
    # window ids: first[j], first[j] + 1, ..., last[j] - 1 for each event j, flattened
    run_start = np.repeat(np.cumsum(counts) - counts, counts)
    window_ids = np.repeat(first, counts) + (np.arange(total) - run_start)
    order = np.argsort(window_ids, kind="stable")                        # keeps annotation order
    offsets = np.concatenate([[0], np.cumsum(np.bincount(window_ids, minlength=n_windows))])
    return offsets.astype(np.int64), event_ids[order].astype(np.int64)
