"""What a BirdNET-Analyzer user expects from `bmamba detect` (issue 11, items 1-7): the model named
at the start, combined tables, chosen classes and thresholds, a summary per class, Raven columns,
the journal beside the outputs, carried state; and the background class left out.

Oracles: the per-recording tables of a plain run (read with csv, independently of the code's
reader), runs with a single global threshold, and the model's own model.json."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from biomamba.cli.app import app
from conftest import detect, export_tiny

RAVEN = "bmamba.selection.table.txt"


@pytest.fixture(scope="module")
def with_background(tmp_path_factory) -> Path:
    """A tiny clip classifier with BirdNET-style `background` class (biomamba.data.layout)."""
    from biomamba.data.layout import BACKGROUND_CLASS

    return export_tiny(tmp_path_factory, "classify", ["frog", "bird", BACKGROUND_CLASS])


def cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(map(str, args)))
    return result.exit_code, result.output


def noise(path: Path, seconds: float, seed: int, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((int(16000 * seconds), channels)) * 0.3).astype(np.float32)
    sf.write(path, data[:, 0] if channels == 1 else data, 16000)
    return path


def raven_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def events_of(path: Path) -> list[tuple]:
    return [(r["start_s"], r["end_s"], r["label"], r["score"]) for r in csv_rows(path)]


@pytest.fixture
def recordings(tmp_path) -> list[Path]:
    """Three recordings of different lengths, two in sub-folders."""
    data = tmp_path / "data"
    return [noise(data / "a.wav", 7, 1), noise(data / "siteB" / "b.wav", 4, 2),
            noise(data / "siteC" / "c.wav", 9, 3)]


# --- 1: say what the model is -------------------------------------------------------------------


def test_detect_names_the_model_and_marks_a_demonstration(exported, tmp_path):
    rec = noise(tmp_path / "r.wav", 2, 0)
    code, text = detect(rec, "--out", tmp_path / "default", "--no-resume")
    classes = json.loads((Path(__file__).parents[1] / "biomamba/models/default/model.json").read_text())["classes"]
    assert code == 0, text
    first = text.splitlines()[0]
    assert first.startswith("bmamba: model default (built-in): detect, ") and f"{len(classes)} classes" in first
    assert "DEMONSTRATION MODEL, its detections are not field-grade" in first
    code, text = detect(rec, "--model", exported, "--out", tmp_path / "own", "--no-resume")
    assert code == 0, text
    assert text.splitlines()[0] == f"bmamba: model export ({exported}): detect, 3 classes"
    assert "DEMONSTRATION" not in text
    code, text = detect(rec, "--model", "default", "--out", tmp_path / "named", "--no-resume")
    assert code == 0 and "model default (built-in)" in text


def test_info_and_models_list_the_builtin_models_and_classes(exported):
    from biomamba.runtime.models import builtin_models

    folder = builtin_models()["default"]
    classes = json.loads((folder / "model.json").read_text())["classes"]
    code, text = cli("info", "default")
    assert code == 0, text
    assert all(name in text for name in classes) and f"{len(classes)} classes" in text
    assert "DEMONSTRATION MODEL" in text
    code, text = cli("info", exported)
    assert code == 0 and "3 classes" in text and all(c in text for c in ("frog", "bird", "insect"))
    assert "DEMONSTRATION" not in text
    for args in (["models"], ["info", "--list"]):
        code, text = cli(*args)
        assert code == 0 and "default" in text and "DEMONSTRATION" in text, text
    code, text = cli("models", "--json")
    assert [m["name"] for m in json.loads(text)] == sorted(builtin_models())
    code, text = cli("info", "insectset32-nowhere")
    assert code == 2 and "no such file, folder or built-in model" in text and "default" in text


# --- 2: combined tables, several formats ------------------------------------------------------------


def test_combine_raven_csv_json(exported, recordings, tmp_path):
    out = tmp_path / "out"
    code, text = detect(tmp_path / "data", "--model", exported, "--out", out, "--format", "raven,csv,json",
                        "--combine", "--threshold", "0.3")
    assert code == 0, text
    per_file = [out / "a", out / "siteB" / "b", out / "siteC" / "c"]   # run order: sorted paths
    for stem in per_file:
        for ext in (RAVEN, "bmamba.csv", "bmamba.json"):
            assert Path(f"{stem}.{ext}").is_file()
    # csv: the per-recording tables, one header
    combined_csv = csv_rows(out / "bmamba.combined.csv")
    expected = [row for stem in per_file for row in csv_rows(Path(f"{stem}.bmamba.csv"))]
    assert combined_csv == expected and len(expected) > 3
    assert {r["file"] for r in combined_csv} == {str(r) for r in recordings}
    # raven: Selection unique 1..n, Begin Path, File Offset the time in the recording, Begin Time
    # on the recordings' sequence (offset by the lengths of the recordings before)
    combined = raven_rows(out / "bmamba.combined.selection.table.txt")
    assert [int(r["Selection"]) for r in combined] == list(range(1, len(expected) + 1))
    offset, i = 0.0, 0
    for rec, stem, seconds in zip(recordings, per_file, (7, 4, 9)):
        for row in raven_rows(Path(f"{stem}.{RAVEN}")):
            c = combined[i]
            assert c["Begin Path"] == os.path.abspath(rec) and c["Begin File"] == rec.name
            assert c["File Offset (s)"] == row["Begin Time (s)"]
            assert float(c["Begin Time (s)"]) == pytest.approx(float(row["Begin Time (s)"]) + offset, abs=2e-6)
            assert float(c["End Time (s)"]) == pytest.approx(float(row["End Time (s)"]) + offset, abs=2e-6)
            assert (c["Label"], c["Score"], c["Channel"]) == (row["Label"], row["Score"], row["Channel"])
            i += 1
        offset += seconds
    assert i == len(combined)
    document = json.loads((out / "bmamba.combined.json").read_text())
    assert [(e["file"], f"{e['start_s']:.6f}", e["label"]) for e in document["events"]] == \
        [(r["file"], r["start_s"], r["label"]) for r in expected]


def test_combined_table_of_a_resumed_run_holds_every_recording(exported, recordings, tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    args = ["--model", exported, "--out", out, "--format", "csv", "--combine", "--threshold", "0.3"]
    (data / "siteC").rename(tmp_path / "later")           # c.wav arrives after the first run
    code, text = detect(data, *args)
    assert code == 0, text
    first = csv_rows(out / "bmamba.combined.csv")
    (tmp_path / "later").rename(data / "siteC")
    report = tmp_path / "run.json"
    code, text = detect(data, *args, "--report", report)   # a.wav and b.wav are done: skipped
    assert code == 0, text
    r = json.loads(report.read_text())
    assert r["skipped"] == 2 and r["processed"] == 1
    assert r["combined"] == {"csv": str(out / "bmamba.combined.csv")}
    fresh = tmp_path / "fresh"
    code, text = detect(data, "--model", exported, "--out", fresh, "--format", "csv", "--combine",
                        "--threshold", "0.3", "--no-resume")
    assert code == 0, text
    resumed = csv_rows(out / "bmamba.combined.csv")
    assert resumed == csv_rows(fresh / "bmamba.combined.csv") and len(resumed) > len(first)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_combined_table_that_cannot_be_written_fails_the_run(exported, recordings, tmp_path):
    out = tmp_path / "out"
    (out / "bmamba.combined.csv").mkdir(parents=True)   # a folder where the table should go
    code, text = detect(recordings[0], "--model", exported, "--out", out, "--format", "csv,raven",
                        "--combine")
    assert code == 1 and "--combine" in text and "bmamba.combined.csv" in text, text
    assert (out / "bmamba.combined.selection.table.txt").is_file()


def test_format_list_is_checked(exported, recordings, tmp_path):
    for value, message in (("raven,xml", "--format 'xml'"), ("csv,csv", "names a format twice")):
        code, text = detect(recordings[0], "--model", exported, "--format", value)
        assert code == 2 and message in text, text


# --- 3: classes and thresholds -----------------------------------------------------------------------


def test_classes_file_reports_only_those(exported, recordings, tmp_path):
    args = ["--model", exported, "--format", "csv", "--threshold", "0.3", "--no-resume"]
    code, text = detect(recordings[0], *args, "--out", tmp_path / "all")
    assert code == 0, text
    everything = events_of(tmp_path / "all" / "a.bmamba.csv")
    assert {e[2] for e in everything} >= {"frog", "bird"}, "the test needs events of two classes"
    (tmp_path / "classes.txt").write_text("bird\n\n# a comment\ninsect\n")
    code, text = detect(recordings[0], *args, "--out", tmp_path / "some", "--classes", tmp_path / "classes.txt")
    assert code == 0, text
    assert events_of(tmp_path / "some" / "a.bmamba.csv") == [e for e in everything if e[2] in ("bird", "insect")]
    assert "reporting 2 of 3 classes (not frog)" in text.splitlines()[0]


def test_unknown_class_is_a_usage_error_listing_the_model_classes(exported, recordings, tmp_path):
    (tmp_path / "classes.txt").write_text("bird\nPoecile rufescens\n")
    code, text = detect(recordings[0], "--model", exported, "--classes", tmp_path / "classes.txt")
    assert code == 2 and "'Poecile rufescens'" in text and "frog, bird, insect" in text, text
    code, text = detect(recordings[0], "--model", exported, "--threshold", "owl=0.7")
    assert code == 2 and "'owl'" in text and "frog, bird, insect" in text, text
    code, text = detect(recordings[0], "--model", exported, "--classes", tmp_path / "none.txt")
    assert code == 2 and "no such file" in text
    code, text = detect(recordings[0], "--model", exported, "--threshold", "bird=1.5")
    assert code == 2 and "between 0 and 1" in text
    code, text = detect(recordings[0], "--model", exported, "--threshold", "high")
    assert code == 2 and "--threshold 'high'" in text


@pytest.mark.parametrize("form", ["options", "file"])
def test_per_class_thresholds(exported, recordings, tmp_path, form):
    """frog at 0.3 and bird at 0.6 give, per class, what a run at that single threshold gives."""
    base = ["--model", exported, "--format", "csv", "--no-resume"]
    runs = {}
    for t in ("0.3", "0.6"):
        code, text = detect(recordings[2], *base, "--threshold", t, "--out", tmp_path / t)
        assert code == 0, text
        runs[t] = events_of(tmp_path / t / "c.bmamba.csv")
    if form == "options":
        thresholds = ["--threshold", "0.3", "--threshold", "bird=0.6"]
    else:
        (tmp_path / "t.tsv").write_text("bird\t0.6\nfrog,0.3\ninsect\t0.3\n")
        thresholds = ["--threshold", tmp_path / "t.tsv"]
    code, text = detect(recordings[2], *base, *thresholds, "--out", tmp_path / "mixed")
    assert code == 0, text
    mixed = events_of(tmp_path / "mixed" / "c.bmamba.csv")
    for label, t in (("frog", "0.3"), ("bird", "0.6"), ("insect", "0.3")):
        assert [e for e in mixed if e[2] == label] == [e for e in runs[t] if e[2] == label]
    assert any(e[2] == "bird" for e in runs["0.3"]) and runs["0.3"] != runs["0.6"]


def test_min_score(exported, recordings, tmp_path):
    base = ["--model", exported, "--format", "csv", "--no-resume", "--threshold", "0.3"]
    code, _ = detect(recordings[2], *base, "--out", tmp_path / "all")
    everything = events_of(tmp_path / "all" / "c.bmamba.csv")
    scores = sorted({float(e[3]) for e in everything})
    assert len(scores) >= 2, "the test needs events of different scores"
    cut = (scores[0] + scores[1]) / 2    # between the two lowest: leaves out the lowest only
    code, text = detect(recordings[2], *base, "--min-score", cut, "--out", tmp_path / "high")
    assert code == 0, text
    high = events_of(tmp_path / "high" / "c.bmamba.csv")
    assert high == [e for e in everything if float(e[3]) >= cut] and 0 < len(high) < len(everything)
    code, text = detect(recordings[2], *base, "--min-score", "nan")
    assert code == 2 and "--min-score" in text


def test_class_settings_go_into_the_journal(exported, recordings, tmp_path):
    """A run with other classes or thresholds does not skip what a run with others did."""
    (tmp_path / "classes.txt").write_text("bird\n")
    out, report = tmp_path / "out", tmp_path / "run.json"
    base = ["--model", exported, "--out", out, "--report", report, "--format", "csv"]
    for extra in ([], ["--classes", tmp_path / "classes.txt"], ["--threshold", "bird=0.7"],
                  ["--min-score", "0.7"], ["--format", "csv,json"]):
        code, text = detect(recordings[0], *base, *extra)
        assert code == 0, text
        assert json.loads(report.read_text())["processed"] == 1, extra
    code, text = detect(recordings[0], *base, "--format", "csv,json")   # the same again: skipped
    assert json.loads(report.read_text())["skipped"] == 1


# --- 4: summary per class ----------------------------------------------------------------------------


def test_summary_per_class_on_console_and_in_the_report(exported, recordings, tmp_path):
    out, report = tmp_path / "out", tmp_path / "run.json"
    args = [tmp_path / "data", "--model", exported, "--out", out, "--format", "csv",
            "--threshold", "0.3", "--report", report]
    code, text = detect(*args)
    assert code == 0, text
    expected = {}
    for table in out.rglob("*.bmamba.csv"):
        rows = csv_rows(table)
        for label in {r["label"] for r in rows}:
            mine = [r for r in rows if r["label"] == label]
            n, seconds, files = expected.get(label, (0, 0.0, 0))
            expected[label] = (n + len(mine), seconds + sum(float(r["end_s"]) - float(r["start_s"]) for r in mine),
                               files + 1)
    r = json.loads(report.read_text())
    got = {c["class"]: (c["events"], c["duration_s"], c["recordings"]) for c in r["classes"]}
    assert set(got) == set(expected) and len(got) >= 2
    for label, (n, seconds, files) in expected.items():
        assert got[label][0] == n and got[label][2] == files
        assert got[label][1] == pytest.approx(seconds, abs=1e-3)
    assert "events per class, 3 recording(s)" in text
    for label, (n, _, _) in expected.items():
        assert any(label in line and str(n) in line for line in text.splitlines())
    assert [x["status"] for x in r["recordings"]] == ["ok"] * 3
    code, text = detect(*args)    # all skipped: the same summary, read from the tables
    assert json.loads(report.read_text())["classes"] == r["classes"]


# --- 5: Raven columns ---------------------------------------------------------------------------------


def test_raven_channel_is_the_channel_analysed_and_begin_path(exported, tmp_path):
    rec = noise(tmp_path / "stereo.wav", 5, 4, channels=2)
    for channel, expected in ((["--channel", "2"], "2"), ([], "1")):
        out = tmp_path / f"out{expected}"
        code, text = detect(rec, "--model", exported, "--out", out, "--threshold", "0.3", *channel)
        assert code == 0, text
        rows = raven_rows(out / f"stereo.{RAVEN}")
        assert rows and {r["Channel"] for r in rows} == {expected}
        assert {r["Begin Path"] for r in rows} == {str(rec.resolve())}


def test_empty_audacity_label_file(exported, tmp_path):
    rec = noise(tmp_path / "r.wav", 1, 0)
    code, text = detect(rec, "--model", exported, "--format", "audacity", "--threshold", "0.9999",
                        "--out", tmp_path)
    assert code == 0, text
    assert (tmp_path / "r.bmamba.labels.txt").read_bytes() == b""


# --- 6: journal beside the outputs ---------------------------------------------------------------------


def test_without_out_the_journal_is_beside_the_outputs(exported, recordings, tmp_path, monkeypatch):
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(data)
    code, text = detect(".", "--model", exported)
    assert code == 0, text
    assert (data / ".bmamba-journal.jsonl").is_file() and not (elsewhere / ".bmamba-journal.jsonl").exists()
    monkeypatch.chdir(elsewhere)
    report = tmp_path / "run.json"
    code, text = detect(data, "--model", exported, "--report", report)
    assert code == 0, text
    assert json.loads(report.read_text())["skipped"] == 3
    assert not (elsewhere / ".bmamba-journal.jsonl").exists()


# --- 7: carried state ------------------------------------------------------------------------------------


def test_a_clip_cut_from_a_long_recording_is_not_the_same_span_of_the_whole_run(exported, tmp_path):
    """What README says: the model carries state from the start of the recording, so a clip cut
    out scores differently from the same seconds inside the whole run (and chunking does not)."""
    from biomamba.runtime.backends import open_backend
    from biomamba.runtime.detect import sigmoid
    from biomamba.streaming import StreamRunner

    backend = open_backend(exported, "onnxruntime")
    audio = sf.read(noise(tmp_path / "long.wav", 12, 7), dtype="float32")[0]

    def probs(x, chunk_frames=1500):
        runner = StreamRunner(backend.run_chunk, backend.initial_state(1), chunk_frames)
        outs = [runner.push(x), runner.flush()]
        return sigmoid(np.concatenate([o["logits"] for o in outs]))

    whole, chunked = probs(audio), probs(audio, 37)
    clip = probs(audio[16000 * 6:])
    assert np.abs(whole - chunked).max() < 1e-4
    assert np.abs(whole[300:600] - clip[:300]).max() > 1e-3


# --- background class and exit status ---------------------------------------------------------------


def test_background_class_is_not_reported(with_background, tmp_path):
    rec = noise(tmp_path / "r.wav", 12, 5)
    base = ["--model", with_background, "--format", "csv", "--no-resume", "--threshold", "0.05"]
    (tmp_path / "all.txt").write_text("frog\nbird\nbackground\n")
    code, text = detect(rec, *base, "--out", tmp_path / "all", "--classes", tmp_path / "all.txt")
    assert code == 0, text
    everything = events_of(tmp_path / "all" / "r.bmamba.csv")
    assert any(e[2] == "background" for e in everything), "the test needs background events"
    code, text = detect(rec, *base, "--out", tmp_path / "default")
    assert code == 0, text
    assert events_of(tmp_path / "default" / "r.bmamba.csv") == [e for e in everything if e[2] != "background"]
    assert "reporting 2 of 3 classes (not background)" in text.splitlines()[0]
    assert "'background' class is never reported unless --classes names it" in text.splitlines()[0]


def test_model_that_exists_but_cannot_be_used_exits_1(tmp_path):
    rec = noise(tmp_path / "r.wav", 1, 0)
    (tmp_path / "empty").mkdir()
    code, text = detect(rec, "--model", tmp_path / "empty")
    assert code == 1 and "empty" in text and "Traceback" not in text
    code, text = detect(rec, "--model", tmp_path / "nowhere")
    assert code == 2 and "no such model folder" in text


def test_resume_makes_again_the_tables_of_a_version_with_other_columns(exported, recordings, tmp_path, monkeypatch):
    from biomamba.runtime import writers

    out, report = tmp_path / "out", tmp_path / "run.json"
    args = ["--model", exported, "--out", out, "--format", "raven", "--threshold", "0.3", "--report", report]
    code, text = detect(recordings[0], *args)
    assert code == 0, text
    code, text = detect(recordings[0], *args)                 # same columns: the journal's entry counts
    assert code == 0 and json.loads(report.read_text())["skipped"] == 1, text
    monkeypatch.setattr(writers, "RAVEN_COLUMNS", writers.RAVEN_COLUMNS[:-1])   # as an older version wrote
    code, text = detect(recordings[0], *args)
    r = json.loads(report.read_text())
    assert code == 0 and r["skipped"] == 0 and r["processed"] == 1, text
