"""Events from frame probabilities: against a naive per-frame oracle, and chunk invariance."""

from __future__ import annotations

import numpy as np
import pytest

from biomamba.runtime.events import Event, EventTracker, detect_events

EPS = 1e-9


def naive_events(probs, labels, *, frame_s=0.02, threshold=0.5, threshold_off=None,
                 min_duration_s=0.1, merge_gap_s=0.2, offset_s=0.0):
    """The rules written out frame by frame, in seconds, with no vectorisation."""
    num_frames, num_classes = probs.shape
    on = np.broadcast_to(np.asarray(threshold, dtype=float), (num_classes,))
    off = 0.8 * on if threshold_off is None else np.broadcast_to(
        np.asarray(threshold_off, dtype=float), (num_classes,))
    events = []
    for c in range(num_classes):
        runs = []  # [start_frame, end_frame_exclusive, score]
        current = None
        for t in range(num_frames):
            p = float(probs[t, c])
            if current is None:
                if p >= on[c]:
                    current = [t, None, p]
            elif p >= off[c]:
                current[2] = max(current[2], p)
            else:
                current[1] = t
                runs.append(current)
                current = None
        if current is not None:
            current[1] = num_frames
            runs.append(current)

        in_seconds = [[a * frame_s + offset_s, b * frame_s + offset_s, s] for a, b, s in runs]
        merged = []
        for run in in_seconds:
            if merged and run[0] - merged[-1][1] <= merge_gap_s + EPS * frame_s:
                merged[-1][1] = run[1]
                merged[-1][2] = max(merged[-1][2], run[2])
            else:
                merged.append(run)
        for start, end, score in merged:
            if end - start >= min_duration_s - EPS * frame_s:
                events.append(Event(start, end, labels[c], score))
    return sorted(events, key=lambda e: (e.start_s, e.label))


def random_probs(rng, num_frames, num_classes):
    """Smoothed noise, so that runs, gaps and hysteresis bands all occur."""
    noise = rng.random((num_frames + 8, num_classes))
    kernel = np.ones(rng.integers(1, 8)) / 1.0
    smooth = np.stack([np.convolve(noise[:, c], kernel / kernel.sum(), "same")
                       for c in range(num_classes)], axis=1)
    return smooth[:num_frames].astype(rng.choice([np.float32, np.float64]))


def random_settings(rng, num_classes):
    threshold = rng.uniform(0.3, 0.7, size=num_classes) if rng.random() < 0.5 else \
        float(rng.uniform(0.3, 0.7))
    settings = dict(
        threshold=threshold,
        min_duration_s=float(rng.choice([0.0, 0.02, 0.1, rng.uniform(0, 0.3)])),
        merge_gap_s=float(rng.choice([0.0, 0.2, rng.uniform(0, 0.3)])),
        offset_s=float(rng.choice([0.0, rng.uniform(0, 1000)])),
    )
    if rng.random() < 0.5:
        settings["threshold_off"] = np.asarray(threshold) * rng.uniform(0.5, 1.0)
    return settings


def random_split(rng, num_frames):
    """Cut points anywhere, with repeats (empty pieces) and neighbours (1-frame pieces)."""
    cuts = np.sort(rng.integers(0, num_frames + 1, size=rng.integers(0, 30)))
    if rng.random() < 0.5:
        start = int(rng.integers(0, num_frames))
        cuts = np.sort(np.concatenate([cuts, np.arange(start, min(start + 10, num_frames))]))
    return np.split(np.arange(num_frames), cuts)


def push_in_pieces(probs, labels, pieces, **settings):
    tracker = EventTracker(labels, **settings)
    events = []
    for piece in pieces:
        events += tracker.push(probs[piece[0]:piece[-1] + 1] if len(piece) else probs[:0])
    events += tracker.flush()
    assert tracker.frames_seen == len(probs)
    return events


LABELS = ["owl", "frog", "bat", "Cricket", "wren"]


@pytest.mark.parametrize("seed", range(40))
def test_matches_naive_oracle(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(1, 6))
    labels = LABELS[:num_classes]
    probs = random_probs(rng, int(rng.integers(1, 400)), num_classes)
    settings = random_settings(rng, num_classes)
    assert detect_events(probs, labels, **settings) == naive_events(probs, labels, **settings)


@pytest.mark.parametrize("seed", range(40))
def test_chunk_invariance(seed):
    rng = np.random.default_rng(1000 + seed)
    num_classes = int(rng.integers(1, 6))
    labels = LABELS[:num_classes]
    probs = random_probs(rng, int(rng.integers(1, 400)), num_classes)
    settings = random_settings(rng, num_classes)
    whole = detect_events(probs, labels, **settings)
    for _ in range(3):
        pieces = random_split(rng, len(probs))
        assert push_in_pieces(probs, labels, pieces, **settings) == whole


def test_one_frame_at_a_time_and_empty_pushes():
    rng = np.random.default_rng(7)
    probs = random_probs(rng, 300, 3)
    labels = LABELS[:3]
    pieces = []
    for t in range(len(probs)):
        pieces += [np.arange(t, t + 1), np.arange(0)]
    assert push_in_pieces(probs, labels, pieces) == naive_events(probs, labels)


def test_event_at_start_and_at_end_closed_by_flush():
    probs = np.zeros((100, 1))
    probs[:10, 0] = 0.9
    probs[-10:, 0] = 0.8
    tracker = EventTracker(["call"], merge_gap_s=0.2)
    first = tracker.push(probs)
    assert first == [Event(0.0, 10 * 0.02, "call", 0.9)]
    assert tracker.flush() == [Event(90 * 0.02, 100 * 0.02, "call", 0.8)]


def test_event_is_returned_once_out_of_merge_reach():
    """A closed event comes out of push as soon as merge_gap_s of silence has passed, not before."""
    tracker = EventTracker(["call"], merge_gap_s=0.1, min_duration_s=0.0)  # 5 frames
    probs = np.zeros((20, 1))
    probs[2:6, 0] = 0.9
    assert tracker.push(probs[:6]) == []
    assert tracker.push(probs[6:11]) == []  # gap of 5 frames: a frame now could still merge
    assert tracker.push(probs[11:12]) == [Event(2 * 0.02, 6 * 0.02, "call", 0.9)]
    assert tracker.flush() == []


def test_all_zero_and_all_one():
    labels = ["a", "b"]
    assert detect_events(np.zeros((500, 2)), labels) == []
    assert detect_events(np.ones((500, 2)), labels) == [
        Event(0.0, 500 * 0.02, "a", 1.0), Event(0.0, 500 * 0.02, "b", 1.0)]


def test_per_class_thresholds():
    probs = np.full((50, 2), 0.6)
    events = detect_events(probs, ["low", "high"], threshold=[0.5, 0.7])
    assert [e.label for e in events] == ["low"]


def test_hysteresis_keeps_event_open_between_thresholds():
    probs = np.array([0.1, 0.45, 0.6, 0.45, 0.45, 0.35, 0.6, 0.1])[:, None]
    events = detect_events(probs, ["x"], threshold=0.5, threshold_off=0.4,
                           min_duration_s=0.0, merge_gap_s=0.0)
    # Opens at frame 2 (not at the 0.45 before it), stays open through the 0.45s.
    assert events == [Event(2 * 0.02, 5 * 0.02, "x", 0.6), Event(6 * 0.02, 7 * 0.02, "x", 0.6)]


def test_merge_then_min_duration():
    # Two 3-frame events 4 frames apart: each too short, merged they are long enough.
    probs = np.zeros((30, 1))
    probs[5:8, 0] = 0.7
    probs[12:15, 0] = 0.9
    events = detect_events(probs, ["x"], min_duration_s=0.2, merge_gap_s=0.08)
    assert events == [Event(5 * 0.02, 15 * 0.02, "x", 0.9)]
    assert detect_events(probs, ["x"], min_duration_s=0.2, merge_gap_s=0.06) == []


def test_ties_sorted_by_label():
    probs = np.zeros((20, 3))
    probs[4:12] = 0.9
    assert [e.label for e in detect_events(probs, ["b", "c", "a"])] == ["a", "b", "c"]


def test_bad_settings_and_input():
    with pytest.raises(ValueError, match="threshold_off"):
        EventTracker(["a"], threshold=0.5, threshold_off=0.6)
    with pytest.raises(ValueError, match="threshold_off"):
        EventTracker(["a", "b"], threshold=[0.5, 0.5], threshold_off=[0.4, 0.6])
    with pytest.raises(ValueError, match="one value per class"):
        EventTracker(["a", "b"], threshold=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="unique"):
        EventTracker(["a", "a"])
    with pytest.raises(ValueError, match="frames, 2"):
        EventTracker(["a", "b"]).push(np.zeros((10, 3)))
    tracker = EventTracker(["a"])
    tracker.flush()
    with pytest.raises(RuntimeError):
        tracker.push(np.zeros((1, 1)))


@pytest.mark.parametrize("frames", range(1, 16))
def test_boundaries_are_inclusive_in_whole_frames(frames):
    """min_duration_s and merge_gap_s given as decimals (0.06 / 0.02 = 2.9999999999999996 in
    floating point) still mean whole frames, inclusive."""
    seconds = round(frames * 0.02, 2)
    kept = np.zeros((60, 1))
    kept[10:10 + frames, 0] = 0.9
    short = np.zeros((60, 1))
    short[10:10 + frames - 1, 0] = 0.9
    assert len(detect_events(kept, ["x"], min_duration_s=seconds, merge_gap_s=0)) == 1
    assert detect_events(short, ["x"], min_duration_s=seconds, merge_gap_s=0) == []

    two = np.zeros((60, 1))
    two[5:8, 0] = 0.9
    two[8 + frames:10 + frames, 0] = 0.9  # a gap of exactly `frames` frames
    assert len(detect_events(two, ["x"], min_duration_s=0, merge_gap_s=seconds)) == 1
    assert len(detect_events(two, ["x"], min_duration_s=0, merge_gap_s=seconds - 0.02)) == 2
