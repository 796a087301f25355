"""Output files: each format read back with an independent parser; atomic replacement."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from biomamba.runtime import writers
from biomamba.runtime.events import Event
from biomamba.runtime.writers import (
    FORMATS,
    EventFile,
    OutputError,
    atomic_write_text,
    output_path,
    write_events,
)

# Raven Pro's own measurement names, in the order Raven lists them, then ours.
RAVEN_HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                "High Freq (Hz)", "Label", "Score", "Begin File", "File Offset (s)", "Begin Path"]
LABELS = ["owl", "Common Frog", "wren, winter", 'say "hi"', "ménage"]
META = dict(duration_s=3725.5, sample_rate=44100, backend="onnxruntime", model="edge-1234abcd")


def random_events(seed: int, count: int | None = None) -> list[Event]:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 50)) if count is None else count
    starts = np.sort(rng.uniform(0, 3600, size=count))
    return [Event(float(s), float(s + rng.uniform(0.02, 30)), str(rng.choice(LABELS)),
                  float(rng.random())) for s in starts]


def write(tmp_path: Path, events, fmt: str, recording: Path | None = None) -> Path:
    recording = recording or tmp_path / "site A" / "rec_20240501.wav"
    path = output_path(recording, tmp_path, fmt)
    write_events(path, events, fmt, recording=recording, **META)
    return path


def assert_same_events(rows, events, *, time_tol=1e-6, score_tol=5e-5):
    assert len(rows) == len(events)
    for (start, end, label, score), event in zip(rows, events, strict=True):
        assert abs(start - event.start_s) <= time_tol
        assert abs(end - event.end_s) <= time_tol
        assert label == event.label
        assert abs(score - event.score) <= score_tol


@pytest.mark.parametrize("seed", range(5))
def test_raven_round_trip(tmp_path, seed):
    events = random_events(seed)
    recording = tmp_path / "rec 1.flac"
    path = write(tmp_path, events, "raven", recording)
    assert path.name == "rec 1.bmamba.selection.table.txt"
    raw = path.read_bytes()
    assert b"\r" not in raw
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
    assert reader.fieldnames == RAVEN_HEADER
    assert [int(r["Selection"]) for r in rows] == list(range(1, len(events) + 1))
    for row in rows:
        assert row["View"] == "Spectrogram 1"
        assert row["Channel"] == "1"
        assert float(row["Low Freq (Hz)"]) == 0
        assert float(row["High Freq (Hz)"]) == 44100 / 2
        assert row["Begin File"] == "rec 1.flac"
        assert row["File Offset (s)"] == row["Begin Time (s)"]
        assert row["Begin Path"] == os.path.abspath(recording)
    assert_same_events([(float(r["Begin Time (s)"]), float(r["End Time (s)"]), r["Label"],
                         float(r["Score"])) for r in rows], events)


@pytest.mark.parametrize("seed", range(5))
def test_csv_round_trip(tmp_path, seed):
    events = random_events(10 + seed)
    recording = tmp_path / "a,b" / "x.wav"
    path = write(tmp_path, events, "csv", recording)
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert reader.fieldnames == ["file", "start_s", "end_s", "label", "score"]
    assert all(r["file"] == str(recording) for r in rows)
    assert_same_events([(float(r["start_s"]), float(r["end_s"]), r["label"], float(r["score"]))
                        for r in rows], events)


@pytest.mark.parametrize("seed", range(5))
def test_json_round_trip(tmp_path, seed):
    events = random_events(20 + seed)
    recording = tmp_path / "x.wav"
    path = write(tmp_path, events, "json", recording)
    with path.open(encoding="utf-8") as file:
        document = json.load(file)
    assert set(document) == {"file", "duration_s", "sample_rate", "backend", "model", "events"}
    assert document["file"] == str(recording)
    assert document["duration_s"] == META["duration_s"]
    assert document["sample_rate"] == META["sample_rate"]
    assert document["backend"] == META["backend"] and document["model"] == META["model"]
    assert all(set(e) == {"start_s", "end_s", "label", "score"} for e in document["events"])
    assert_same_events([(e["start_s"], e["end_s"], e["label"], e["score"])
                        for e in document["events"]], events)


@pytest.mark.parametrize("seed", range(5))
def test_audacity_round_trip(tmp_path, seed):
    events = random_events(30 + seed)
    path = write(tmp_path, events, "audacity")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        start, end, text = line.split("\t")
        label, score = text.rsplit(" (", 1)
        rows.append((float(start), float(end), label, float(score.rstrip(")"))))
    assert_same_events(rows, events)


def test_tabs_and_newlines_in_labels_do_not_break_rows(tmp_path):
    events = [Event(1.0, 2.0, "bad\tlabel\nhere", 0.5)]
    for fmt in ("raven", "audacity"):
        lines = write(tmp_path, events, fmt).read_text(encoding="utf-8").splitlines()
        assert len(lines[-1].split("\t")) == (len(RAVEN_HEADER) if fmt == "raven" else 3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_events_still_writes_a_file(tmp_path, fmt):
    path = write(tmp_path, [], fmt)
    text = path.read_text(encoding="utf-8")
    if fmt == "raven":
        assert text.splitlines() == ["\t".join(RAVEN_HEADER)]
    elif fmt == "csv":
        assert text.splitlines() == ["file,start_s,end_s,label,score"]
    elif fmt == "json":
        assert json.loads(text)["events"] == []
    else:
        assert text == ""


def test_output_path(tmp_path):
    recording = Path("/data/site 3/REC_0001.WAV")
    assert output_path(recording, None, "raven") == \
        Path("/data/site 3/REC_0001.bmamba.selection.table.txt")
    assert output_path(recording, tmp_path, "csv") == tmp_path / "REC_0001.bmamba.csv"
    assert output_path(recording, tmp_path, "json").name == "REC_0001.bmamba.json"
    assert output_path(recording, tmp_path, "audacity").name == "REC_0001.bmamba.labels.txt"
    with pytest.raises(ValueError, match="raven, csv, json, audacity"):
        output_path(recording, None, "parquet")
    with pytest.raises(ValueError, match="raven"):
        write_events(tmp_path / "x", [], "txt", recording=recording, **META)


@pytest.mark.parametrize("broken", ["write", "fsync", "replace"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, broken):
    path = tmp_path / "out.csv"
    path.write_text("old contents\n")
    before = sorted(os.listdir(tmp_path))

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if broken == "write":
        # The failure comes from inside the writing of the text, half of it written.
        real_open = open

        def open_that_fails_mid_write(*args, **kwargs):
            file = real_open(*args, **kwargs)
            real_write = file.write

            def write_half(text):
                real_write(text[: len(text) // 2])
                file.flush()
                raise OSError(5, "Input/output error")

            file.write = write_half
            return file

        monkeypatch.setattr(writers, "open", open_that_fails_mid_write, raising=False)
    else:
        monkeypatch.setattr(writers.os, broken, fail)

    with pytest.raises(OutputError, match="out.csv"):
        write_events(path, random_events(1), "csv", recording=Path("r.wav"), **META)
    assert path.read_text() == "old contents\n"
    assert sorted(os.listdir(tmp_path)) == before


def test_other_exceptions_propagate_and_clean_up(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "text")
    assert os.listdir(tmp_path) == []


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(OutputError, match="nowhere"):
        atomic_write_text(tmp_path / "nowhere" / "x.csv", "text")


def test_atomic_write_replaces_and_keeps_text_exact(tmp_path):
    path = tmp_path / "x.txt"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\r\nline\n")
    assert path.read_bytes() == b"second\r\nline\n"
    assert os.listdir(tmp_path) == ["x.txt"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("seed", range(3))
def test_events_added_piece_by_piece_give_the_same_file(tmp_path, fmt, seed):
    """bmamba detect adds events as they become final: any split of the list into pieces (empty
    pieces included) gives the bytes of the one-call writer, and nothing but the file is left."""
    events = random_events(seed, count=int(np.random.default_rng(seed).integers(0, 40)))
    recording = tmp_path / "site A" / "rec_20240501.wav"
    (tmp_path / "whole").mkdir()
    whole = write(tmp_path / "whole", events, fmt, recording)
    path = output_path(recording, tmp_path / "pieces", fmt)
    path.parent.mkdir()
    cuts = np.sort(np.random.default_rng(seed + 10).integers(0, len(events) + 1, size=4))
    with EventFile(path, fmt, recording=recording, sample_rate=META["sample_rate"], backend=META["backend"],
                   model=META["model"]) as file:
        for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True):
            file.add(events[lo:hi])
        assert not path.exists()                      # nothing visible before the commit
        file.commit(META["duration_s"])
    assert path.read_bytes() == whole.read_bytes()
    assert os.listdir(path.parent) == [path.name]
    if fmt == "json":
        assert json.loads(path.read_text())["duration_s"] == META["duration_s"]


def test_an_uncommitted_event_file_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old contents\n")
    with pytest.raises(RuntimeError):
        with EventFile(path, "csv", recording=Path("r.wav"), sample_rate=16000, backend="b", model="m") as file:
            file.add(random_events(0, 5))
            raise RuntimeError("the model failed mid-recording")
    assert path.read_text() == "old contents\n" and os.listdir(tmp_path) == ["out.csv"]
