"""Frame probabilities -> detection events, streaming and chunk-invariant.

The model gives one probability per class per 20 ms frame, in chunks, for recordings that may be
days long. `EventTracker` turns those chunks into events as they arrive, keeping only a few numbers
per class between chunks, so memory does not grow with the recording. Its output does not depend on
how the frames were split into chunks: the events returned by all `push` calls plus `flush`, in
order, equal `detect_events` on the whole array, and are sorted by (start_s, label).

The rules, per class, applied in this order:

1. Hysteresis: an event opens at the first frame with p >= threshold and stays open while
   p >= threshold_off; it closes at the first frame with p < threshold_off (that frame is outside).
2. Merging: events whose gap (next.start_s - prev.end_s) <= merge_gap_s become one event; its score
   is the largest of theirs.
3. Minimum duration: events (after merging) shorter than min_duration_s are dropped.

Times: frame t covers [t * frame_s, (t + 1) * frame_s) + offset_s, so an event over frames a..b
(inclusive) is [a * frame_s + offset_s, (b + 1) * frame_s + offset_s). The score of an event is the
largest frame probability inside it.

Torch-free: numpy and the standard library only (this runs on field devices).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Tolerance when turning a duration in seconds into a whole number of frames: 0.2 / 0.02 is
# 10.000000000000002 in floating point, and a 0.2 s gap must still count as 10 frames.
_FRAME_ROUNDING = 1e-9


@dataclass(frozen=True, slots=True)
class Event:
    """One detection: [start_s, end_s) in seconds, its class label, and its score.

    score is the largest frame probability inside the event (in [0, 1] for sigmoid outputs).
    Slots: tens of thousands may be released at once (behind an event that stays open for hours).
    """

    start_s: float
    end_s: float
    label: str
    score: float


class EventTracker:
    """Turns frame probabilities, pushed chunk by chunk, into events.

    Args:
        labels: class names, one per column of the probabilities (unique).
        frame_s: seconds per frame (0.02 for the 16 kHz / hop 320 model).
        threshold: a frame at or above it opens an event; a scalar or one value per class.
        threshold_off: an open event stays open while p >= threshold_off (hysteresis); a scalar or
            one value per class; default 0.8 * threshold; must be <= threshold.
        min_duration_s: events shorter than this, after merging, are dropped.
        merge_gap_s: events of the same class with a gap <= this are merged.
        offset_s: added to every time (the recording time of frame 0).

    Use: `events = tracker.push(probs_chunk)` for every chunk ([T, C] with C = len(labels), any
    T >= 0), then `events = tracker.flush()` at the end of the recording. Each call returns the
    events that are final: closed, out of reach of any later event of their class for merging, and
    with every event that could start earlier already returned. (So while one class stays on,
    the final events of the others that start after its onset wait in a small buffer: memory grows
    with the number of such events, never with the number of frames.)
    """

    def __init__(
        self,
        labels: Sequence[str],
        *,
        frame_s: float = 0.02,
        threshold: float | Sequence[float] | np.ndarray = 0.5,
        threshold_off: float | Sequence[float] | np.ndarray | None = None,
        min_duration_s: float = 0.1,
        merge_gap_s: float = 0.2,
        offset_s: float = 0.0,
    ):
        self.labels = [str(label) for label in labels]
        num_classes = len(self.labels)
        if num_classes == 0:
            raise ValueError("EventTracker needs at least one class label")
        if len(set(self.labels)) != num_classes:
            raise ValueError(f"class labels must be unique, got {self.labels}")
        if not (math.isfinite(frame_s) and frame_s > 0):
            raise ValueError(f"frame_s must be a positive number of seconds, got {frame_s}")
        if not (math.isfinite(min_duration_s) and min_duration_s >= 0):
            raise ValueError(f"min_duration_s must be >= 0 seconds, got {min_duration_s}")
        if not (math.isfinite(merge_gap_s) and merge_gap_s >= 0):
            raise ValueError(f"merge_gap_s must be >= 0 seconds, got {merge_gap_s}")
        if not math.isfinite(offset_s):
            raise ValueError(f"offset_s must be a finite number of seconds, got {offset_s}")

        self.threshold_on = _per_class("threshold", threshold, num_classes)
        if threshold_off is None:
            self.threshold_off = 0.8 * self.threshold_on
        else:
            self.threshold_off = _per_class("threshold_off", threshold_off, num_classes)
        if np.any(self.threshold_off > self.threshold_on):
            raise ValueError(
                f"threshold_off ({self.threshold_off.tolist()}) must be <= threshold "
                f"({self.threshold_on.tolist()}): an event could not open without already being on"
            )

        self.frame_s = float(frame_s)
        self.offset_s = float(offset_s)
        # In frames: a gap of g frames merges when g <= merge_gap_frames; an event of n frames is
        # kept when n >= min_frames.
        self.merge_gap_frames = math.floor(merge_gap_s / frame_s + _FRAME_ROUNDING)
        self.min_frames = math.ceil(min_duration_s / frame_s - _FRAME_ROUNDING)
        # Rank of each class's label in sorted order, for the (start_s, label) output order.
        self._label_rank = np.argsort(np.argsort(np.array(self.labels, dtype=object)))

        self.frames_seen = 0
        self._flushed = False
        # The "tail" of each class: its latest event, still open or still close enough to the
        # present that a later event could merge into it. start -1 = none. Frame indices.
        self._tail_start = np.full(num_classes, -1, dtype=np.int64)
        self._tail_end = np.zeros(num_classes, dtype=np.int64)  # exclusive; meaningless if open
        self._tail_score = np.zeros(num_classes, dtype=np.float64)
        self._tail_open = np.zeros(num_classes, dtype=bool)
        # Final events not yet returned because an earlier-starting one may still come.
        self._ready = _EventArrays.empty()

    def push(self, probs: np.ndarray) -> list[Event]:
        """Adds the next frames. probs: [T, C] probabilities (T may be 0). Returns final events."""
        if self._flushed:
            raise RuntimeError("EventTracker.push after flush: use a new tracker per recording")
        probs = self._check(probs)
        num_frames = probs.shape[0]
        if num_frames == 0:
            return []
        first_frame = self.frames_seen
        self.frames_seen += num_frames

        runs = self._find_runs(probs, first_frame)
        self._merge_into_tails(runs)
        return self._release(watermark=self._watermark())

    def flush(self) -> list[Event]:
        """Ends the recording: closes open events and returns every event not yet returned."""
        if self._flushed:
            return []
        self._flushed = True
        has_tail = self._tail_start >= 0
        self._tail_end[self._tail_open] = self.frames_seen
        classes = np.flatnonzero(has_tail)
        self._add_ready(
            _EventArrays(
                classes,
                self._tail_start[classes],
                self._tail_end[classes],
                self._tail_score[classes],
            )
        )
        self._tail_start[:] = -1
        self._tail_open[:] = False
        return self._release(watermark=None)

    # --- one chunk ---------------------------------------------------------------------------

    def _check(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs)
        if probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise ValueError(
                f"probabilities must be [frames, {len(self.labels)}] (one column per label "
                f"{self.labels}), got shape {probs.shape}"
            )
        if not np.issubdtype(probs.dtype, np.floating):
            probs = probs.astype(np.float64)
        return probs

    def _find_runs(self, probs: np.ndarray, first_frame: int) -> _Runs:
        """Hysteresis runs in this chunk, joined to the open runs carried from the last chunk.

        A run is a stretch of frames >= threshold_off that holds a frame >= threshold; it starts at
        that frame and ends where the stretch ends. Working on the flattened [C, T] array finds the
        runs of all classes at once.
        """
        num_frames, num_classes = probs.shape
        by_class = np.ascontiguousarray(probs.T)  # [C, T]; flat index = c * T + t
        on = by_class >= self.threshold_on[:, None]
        sustain = by_class >= self.threshold_off[:, None]

        # An event still open from the last chunk needs no new onset: it goes on while sustained.
        continues = self._tail_open & sustain[:, 0]
        on[continues, 0] = True
        stops_at_boundary = self._tail_open & ~sustain[:, 0]
        self._tail_end[stops_at_boundary] = first_frame
        self._tail_open[stops_at_boundary] = False

        # Stretches of sustain: +1 where one starts, -1 one past where it ends (padding closes the
        # stretches at both chunk edges).
        padded = np.zeros((num_classes, num_frames + 2), dtype=np.int8)
        padded[:, 1:-1] = sustain
        edges = np.diff(padded, axis=1)
        stretch_class, stretch_start = np.nonzero(edges == 1)
        _, stretch_end = np.nonzero(edges == -1)
        flat_start = stretch_class * num_frames + stretch_start
        flat_end = stretch_class * num_frames + stretch_end

        # First onset at or after each stretch's start; the stretch is a run if it lies inside.
        onsets = np.append(np.flatnonzero(on), num_classes * num_frames)
        first_onset = onsets[np.searchsorted(onsets, flat_start)]
        is_run = first_onset < flat_end
        run_class = stretch_class[is_run]
        run_flat_start = first_onset[is_run]
        run_flat_end = flat_end[is_run]

        # Largest probability in each run: reduceat over [start, end) pairs (the odd slots reduce
        # the gaps between runs and are discarded; the sentinel keeps every index in range).
        bounds = np.empty(2 * len(run_class), dtype=np.int64)
        bounds[0::2] = run_flat_start
        bounds[1::2] = run_flat_end
        values = np.append(by_class.ravel().astype(np.float64), -np.inf)
        score = np.maximum.reduceat(values, bounds)[0::2] if len(bounds) else np.zeros(0)

        start = run_flat_start - run_class * num_frames
        end = run_flat_end - run_class * num_frames
        is_open = end == num_frames
        start += first_frame
        end += first_frame

        # Runs that continue a carried open event take over its start and score.
        is_continuation = continues[run_class] & (start == first_frame)
        carried = run_class[is_continuation]
        start[is_continuation] = self._tail_start[carried]
        score[is_continuation] = np.maximum(score[is_continuation], self._tail_score[carried])
        self._tail_start[continues] = -1  # now represented by the continuing run
        self._tail_open[continues] = False
        return _Runs(_EventArrays(run_class, start, end, score), is_open)

    def _merge_into_tails(self, runs: _Runs) -> None:
        """Merges the carried tails with this chunk's runs, per class, across gaps <= merge gap.

        Every merged group but the last of each class is final. The last one becomes the new tail
        unless it is closed and already farther than the merge gap from the present.
        """
        tail_classes = np.flatnonzero(self._tail_start >= 0)  # closed tails only, at this point
        items = _EventArrays.concat(
            [
                _EventArrays(
                    tail_classes,
                    self._tail_start[tail_classes],
                    self._tail_end[tail_classes],
                    self._tail_score[tail_classes],
                ),
                runs.events,
            ]
        )
        is_open = np.concatenate([np.zeros(len(tail_classes), dtype=bool), runs.is_open])
        self._tail_start[:] = -1
        self._tail_open[:] = False
        if len(items.cls) == 0:
            return

        order = np.lexsort((items.start, items.cls))
        items = items.take(order)
        is_open = is_open[order]

        same_class = items.cls[1:] == items.cls[:-1]
        close_enough = items.start[1:] - items.end[:-1] <= self.merge_gap_frames
        group_first = np.flatnonzero(np.concatenate([[True], ~(same_class & close_enough)]))
        group_last = np.append(group_first[1:] - 1, len(items.cls) - 1)
        groups = _EventArrays(
            items.cls[group_first],
            items.start[group_first],
            items.end[group_last],
            np.maximum.reduceat(items.score, group_first),
        )
        group_open = is_open[group_last]

        last_of_class = np.append(groups.cls[1:] != groups.cls[:-1], True)
        reachable = self.frames_seen - groups.end <= self.merge_gap_frames
        stays = last_of_class & (group_open | reachable)

        tails = groups.take(np.flatnonzero(stays))
        self._tail_start[tails.cls] = tails.start
        self._tail_end[tails.cls] = tails.end
        self._tail_score[tails.cls] = tails.score
        self._tail_open[tails.cls] = group_open[stays]
        self._add_ready(groups.take(np.flatnonzero(~stays)))

    # --- output ------------------------------------------------------------------------------

    def _watermark(self) -> int:
        """No event still to come can start before this frame."""
        tails = self._tail_start[self._tail_start >= 0]
        return int(min(self.frames_seen, tails.min(initial=self.frames_seen)))

    def _add_ready(self, events: _EventArrays) -> None:
        long_enough = events.end - events.start >= self.min_frames
        self._ready = _EventArrays.concat([self._ready, events.take(np.flatnonzero(long_enough))])

    def _release(self, watermark: int | None) -> list[Event]:
        """Returns the ready events that start before the watermark (all if None), in order."""
        ready = self._ready
        due = np.ones(len(ready.cls), dtype=bool) if watermark is None else ready.start < watermark
        out = ready.take(np.flatnonzero(due))
        self._ready = ready.take(np.flatnonzero(~due))
        out = out.take(np.lexsort((self._label_rank[out.cls], out.start)))

        start_s = (out.start * self.frame_s + self.offset_s).tolist()
        end_s = (out.end * self.frame_s + self.offset_s).tolist()
        return [
            Event(start, end, self.labels[c], score)
            for start, end, c, score in zip(
                start_s, end_s, out.cls.tolist(), out.score.tolist(), strict=True
            )
        ]


def detect_events(probs: np.ndarray, labels: Sequence[str], **kwargs) -> list[Event]:
    """Events of a whole recording at once. probs: [T, C]; kwargs as for EventTracker."""
    tracker = EventTracker(labels, **kwargs)
    return tracker.push(probs) + tracker.flush()


class ClassSummary:
    """Per class, over the recordings of a run: events, their total duration, and the number of
    recordings with at least one event (what `bmamba detect` prints at the end)."""

    def __init__(self):
        self._totals: dict[str, list] = {}   # label -> [events, seconds, recordings]

    def add_recording(self, events: Iterable[Event]) -> None:
        """Adds the events of one recording."""
        seen = set()
        for e in events:
            total = self._totals.setdefault(e.label, [0, 0.0, 0])
            total[0] += 1
            total[1] += e.end_s - e.start_s
            if e.label not in seen:
                seen.add(e.label)
                total[2] += 1

    def rows(self) -> list[dict]:
        """[{"class", "events", "duration_s", "recordings"}], most events first."""
        return [{"class": label, "events": n, "duration_s": round(seconds, 3), "recordings": files}
                for label, (n, seconds, files) in sorted(self._totals.items(), key=lambda kv: (-kv[1][0], kv[0]))]


# --- helpers -------------------------------------------------------------------------------------


@dataclass
class _EventArrays:
    """Events as parallel arrays: class index, start and end frame (end exclusive), score."""

    cls: np.ndarray
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray

    @staticmethod
    def empty() -> _EventArrays:
        ints = np.zeros(0, dtype=np.int64)
        return _EventArrays(ints, ints, ints, np.zeros(0, dtype=np.float64))

    @staticmethod
    def concat(parts: list[_EventArrays]) -> _EventArrays:
        return _EventArrays(
            np.concatenate([p.cls for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.start for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.end for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.score for p in parts]).astype(np.float64, copy=False),
        )

    def take(self, index: np.ndarray) -> _EventArrays:
        return _EventArrays(self.cls[index], self.start[index], self.end[index], self.score[index])


@dataclass
class _Runs:
    events: _EventArrays
    is_open: np.ndarray  # [n] bool: still on at the end of the chunk


def _per_class(name: str, value, num_classes: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(num_classes, float(array))
    if array.shape != (num_classes,):
        raise ValueError(f"{name} must be a scalar or one value per class ({num_classes}), got {value}")
    if np.any(np.isnan(array)):
        raise ValueError(f"{name} must not be NaN, got {value}")
    return array
