"""BEANS windowing rule and frame targets against oracles written here."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from biomamba.data.annotations import Annotation
from biomamba.data.windows import frame_targets, window_starts, window_targets

CLASSES = ["a", "b"]


def beans_loop(length, window, hop, annotations, classes):
    """BEANS's RecognitionDataset loop, restated with plain Python floats."""
    n = int((length - window) / hop) + 1
    out = []
    for i in range(n):
        st, ed = i * hop, i * hop + window
        y = [0.0] * len(classes)
        for an in annotations:
            c = classes.index(an.label)
            if (st <= an.start_s <= ed) or (st <= an.end_s <= ed):
                denom = min(ed - st, an.end_s - an.start_s)
                if denom == 0:
                    continue
                if (min(ed, an.end_s) - max(st, an.start_s)) / denom > 0.2:
                    y[c] = 1.0
            if an.start_s <= st and ed <= an.end_s:
                y[c] = 1.0
        out.append(y)
    return np.array(out, dtype=np.float32).reshape(max(n, 0), len(classes))


@pytest.mark.parametrize(
    ("length", "window", "hop", "count"),
    [(60.0, 2.0, 1.0, 59), (10.0, 2.0, 1.0, 9), (10.5, 2.0, 1.0, 9), (2.0, 2.0, 1.0, 1),
     (1.5, 2.0, 1.0, 1), (1.0, 2.0, 1.0, 0), (0.5, 2.0, 1.0, 0), (30.0, 10.0, 5.0, 5)],
)
def test_window_count(length, window, hop, count):
    starts = window_starts(length, window, hop)
    assert len(starts) == count
    np.testing.assert_array_equal(starts, [i * hop for i in range(count)])


def window_of(events, start=0.0, window=5.0):
    return window_targets(events, np.array([start]), window, CLASSES)[0]


def test_overlap_exactly_point_two_is_negative():
    # window [0, 5], event [4, 9]: overlap 1 / min(5, 5) = 0.2 -> not > 0.2
    assert window_of([Annotation(4.0, 9.0, "a")]).tolist() == [0, 0]
    # event shorter than the window: [4.5, 7] overlaps 0.5 s, 0.5 / min(5, 2.5) = 0.2 -> negative
    assert window_of([Annotation(4.5, 7.0, "b")]).tolist() == [0, 0]


def test_overlap_just_above_point_two_is_positive():
    assert window_of([Annotation(4.0 - 1e-6, 9.0, "a")]).tolist() == [1, 0]
    assert window_of([Annotation(4.5 - 1e-6, 7.0, "b")]).tolist() == [0, 1]
    assert window_of([Annotation(4.75, 5.75, "a")]).tolist() == [1, 0]  # 0.25 / 1


def test_event_covering_window_and_longer_than_window():
    assert window_of([Annotation(-1.0, 10.0, "a")], start=0.0).tolist() == [1, 0]
    assert window_of([Annotation(0.0, 5.0, "a")]).tolist() == [1, 0]
    # event longer than the window, ends inside: overlap 3 / min(5, 20) = 0.6
    assert window_of([Annotation(-17.0, 3.0, "b")]).tolist() == [0, 1]
    # event longer than the window, only 0.5 s inside: 0.5 / 5 = 0.1
    assert window_of([Annotation(4.5, 30.0, "b")]).tolist() == [0, 0]


def test_event_at_file_end_and_zero_length_events():
    starts = window_starts(10.0, 2.0, 1.0)
    targets = window_targets([Annotation(9.5, 10.0, "a"), Annotation(3.0, 3.0, "b")], starts, 2.0, CLASSES)
    assert targets[:, 0].tolist() == [0] * 8 + [1]  # only the last window [8, 10]
    assert targets[:, 1].sum() == 0


def test_window_targets_match_beans_loop_on_random_events():
    rng = np.random.default_rng()
    for _ in range(30):
        length = float(rng.integers(5, 40)) + float(rng.choice([0.0, 0.5, 0.3]))
        window, hop = [(2.0, 1.0), (4.0, 2.0), (10.0, 5.0), (0.3, 0.1)][int(rng.integers(4))]
        events = []
        for _ in range(int(rng.integers(0, 8))):
            st = float(np.round(rng.uniform(0, length), int(rng.integers(0, 3))))
            dur = float(np.round(rng.uniform(0, 6), int(rng.integers(0, 3))))
            events.append(Annotation(st, st + dur, str(rng.choice(CLASSES))))
        starts = window_starts(length, window, hop)
        np.testing.assert_array_equal(
            window_targets(events, starts, window, CLASSES), beans_loop(length, window, hop, events, CLASSES)
        )


def test_unknown_label_mapping():
    starts = window_starts(4.0, 2.0, 1.0)
    out = window_targets([Annotation(0, 2, "zebra")], starts, 2.0, ["a", "OTHR"], unknown_label="OTHR")
    assert out[:, 1].tolist() == [1, 1, 0]  # [1, 3] overlaps half of it
    with pytest.raises(ValueError, match="zebra"):
        window_targets([Annotation(0, 2, "zebra")], starts, 2.0, ["a"])


# --------------------------------------------------------------------------- frames


def frames_oracle(events, n_frames, classes, frame_ms=20, offset_ms=0):
    """Exact rational arithmetic on decimal times, one frame and one event at a time."""
    out = np.zeros((n_frames, len(classes)), dtype=np.float32)
    frame = Fraction(frame_ms, 1000)
    for start, end, label in events:
        a = (Fraction(start) - Fraction(offset_ms, 1000)) / frame
        b = (Fraction(end) - Fraction(offset_ms, 1000)) / frame
        c = classes.index(label)
        if b - a < Fraction(1, 2):
            mid = (a + b) / 2
            t = int(mid // 1)
            if 0 <= t < n_frames:
                out[t, c] = 1
            continue
        for t in range(n_frames):
            overlap = min(Fraction(t + 1), b) - max(Fraction(t), a)
            if overlap >= Fraction(1, 2):
                out[t, c] = 1
    return out


def test_frame_targets_match_exact_oracle():
    rng = np.random.default_rng()
    for _ in range(40):
        events_text = []
        for _ in range(int(rng.integers(0, 6))):
            start_ms = int(rng.integers(-50, 2000))
            dur_ms = int(rng.integers(0, 400))
            events_text.append((f"{start_ms / 1000}", f"{(start_ms + dur_ms) / 1000}", str(rng.choice(CLASSES))))
        offset_ms = int(rng.choice([0, 20, 1000, 333]))
        annotations = [Annotation(float(s), float(e), lab) for s, e, lab in events_text]
        got = frame_targets(annotations, 100, CLASSES, offset_s=offset_ms / 1000)
        np.testing.assert_array_equal(got, frames_oracle(events_text, 100, CLASSES, offset_ms=offset_ms))


def test_frame_targets_half_frame_boundaries():
    # frame 1 is [0.02, 0.04): an event [0.01, 0.03] covers exactly half of frames 0 and 1
    assert frame_targets([Annotation(0.01, 0.03, "a")], 3, CLASSES)[:, 0].tolist() == [1, 1, 0]
    assert frame_targets([Annotation(0.011, 0.03, "a")], 3, CLASSES)[:, 0].tolist() == [0, 1, 0]
    # a 5 ms event marks the frame holding its midpoint
    assert frame_targets([Annotation(0.041, 0.046, "b")], 4, CLASSES)[:, 1].tolist() == [0, 0, 1, 0]
    # events outside the frames leave nothing
    assert frame_targets([Annotation(5.0, 6.0, "a")], 4, CLASSES).sum() == 0
