"""Files a run writes at its end or appends to (--report, --plot, the journal) never replace or
damage a file that is not theirs: a recording, a data CSV, another output of the run. Each slip is
refused before the run with exit status 2, naming the option, the file and why, and the file is
left byte for byte as it was."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from biomamba.cli.app import app
from biomamba.runtime.journal import Journal, JournalError
from conftest import detect


def recording(path: Path, seed: int = 0) -> Path:
    """Two seconds of fresh noise at 16 kHz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).normal(0, 0.1, 32000).astype(np.float32), 16000)
    return path


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*map(str, args)])
    return result.exit_code, result.output


@pytest.mark.parametrize("link", [False, True], ids=["the-recording", "a-hard-link-to-it"])
def test_detect_report_naming_a_recording_is_refused_and_the_recording_kept(exported, tmp_path, link):
    rec = recording(tmp_path / "rec.wav")
    before = rec.read_bytes()
    target = rec
    if link:   # another name for the same file: only what it holds tells
        target = tmp_path / "other.wav"
        os.link(rec, target)
    code, text = detect(rec, "--model", exported, "--report", target)
    assert code == 2, text
    assert f"--report {target}: the file exists and is not a JSON object" in text, text
    assert rec.read_bytes() == before
    assert not (tmp_path / "rec.bmamba.selection.table.txt").exists(), "the run went ahead"


@pytest.mark.parametrize("option, name, extra, what", [
    ("--report", "rec.bmamba.selection.table.txt", [], "the output"),
    ("--report", "rec.bmamba.csv", ["--format", "raven,csv"], "the output"),     # a second format's
    ("--journal", "rec.bmamba.selection.table.txt", [], "the output"),
    ("--report", "j.jsonl", ["--journal", "{d}/j.jsonl"], "the journal"),
    ("--report", "bmamba.combined.json", ["--combine", "--format", "raven,json"], "the combined table"),
])
def test_detect_report_or_journal_naming_another_file_of_the_run_is_refused(exported, tmp_path, option, name,
                                                                          extra, what):
    # None of these files exists yet: the clash is with what the run would write, found by name.
    rec = recording(tmp_path / "rec.wav")
    out = tmp_path / "out"
    out.mkdir()
    path = out / name
    extra = [a.replace("{d}", str(out)) for a in extra]
    code, text = detect(rec, "--model", exported, "--out", out, option, path, *extra)
    assert code == 2, text
    assert f"{option} {path}: that is {what} {path} of this run" in text, text
    assert sorted(p.name for p in out.iterdir()) == [], "the run wrote something"


def test_detect_report_names_resolved_and_an_earlier_report_is_replaced(exported, tmp_path, monkeypatch):
    rec = recording(tmp_path / "rec.wav")
    monkeypatch.chdir(tmp_path)
    code, text = detect(rec, "--model", exported, "--report", "./rec.bmamba.selection.table.txt")
    assert code == 2 and "that is the output" in text, text
    report = tmp_path / "run.json"
    for _ in range(2):   # the second run overwrites the first one's report: that is what it is for
        code, text = detect(rec, "--model", exported, "--report", report, "--no-resume")
        assert code == 0, text
    assert '"processed": 1' in report.read_text()


def test_journal_refuses_a_file_that_is_not_a_journal_and_leaves_it_alone(tmp_path):
    rec = recording(tmp_path / "rec.wav")
    table = tmp_path / "table.csv"
    table.write_text("begin,end,label\n1,2,frog\n")
    for path in (rec, table):
        before = path.read_bytes()
        with pytest.raises(JournalError, match=f"{path}: the file exists and is not a bmamba journal"):
            Journal(path, {"model": "m"})
        assert path.read_bytes() == before


def test_journal_with_its_first_line_torn_is_still_a_journal(tmp_path):
    # A run killed while writing its very first line leaves a prefix of the settings line.
    path = tmp_path / "j.jsonl"
    Journal(path, {"model": "m"}).record(recording(tmp_path / "rec.wav"), "ok")
    whole = path.read_bytes()
    for cut in (3, 20, whole.index(b"\n")):
        path.write_bytes(whole[:cut])
        with Journal(path, {"model": "m"}) as journal:
            assert not journal.is_done(tmp_path / "rec.wav")


def test_detect_journal_naming_a_recording_is_refused(exported, tmp_path):
    rec = recording(tmp_path / "rec.wav")
    other = recording(tmp_path / "keep" / "other.wav", seed=1)
    before = other.read_bytes()
    code, text = detect(rec, "--model", exported, "--journal", other)
    assert code == 2, text
    assert f"cannot use journal {other}: the file exists and is not a bmamba journal" in text, text
    assert other.read_bytes() == before


def test_eval_and_bench_refuse_report_and_plot_over_other_files(tmp_path):
    # Refused before any model is loaded or measured: the checkpoint need not even be a model.
    data = tmp_path / "files.csv"
    data.write_text("path,label\nrec.wav,frog\n")
    rec = recording(tmp_path / "rec.wav")
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    keep = {p: p.read_bytes() for p in (data, rec)}
    cases = [
        (["eval", checkpoint, data, "--report", data], f"--report {data}: the file exists and is not a JSON"),
        (["eval", checkpoint, data, "--plot", data], f"--plot {data}: the file exists and is not an image"),
        (["eval", checkpoint, data, "--report", tmp_path], f"--report {tmp_path} is a folder"),
        (["bench", "--lengths", "1", "--report", rec], f"--report {rec}: the file exists and is not a JSON"),
        (["bench", "--lengths", "1", "--plot", tmp_path / "no" / "p.png"], "the folder"),
    ]
    for args, message in cases:
        code, text = invoke(*args)
        assert code == 2, (args, text)
        assert message in " ".join(text.split()), (args, text)
    assert all(p.read_bytes() == b for p, b in keep.items())


def test_an_earlier_plot_or_report_may_be_replaced(tmp_path):
    from biomamba.cli.common import check_result_path

    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    pdf = tmp_path / "p.pdf"
    pdf.write_bytes(b"%PDF-1.4\n")
    report = tmp_path / "r.json"
    report.write_text(' \n{"accuracy": 0.5}\n')
    for path, kind in ((png, "figure"), (pdf, "figure"), (report, "json"), (tmp_path / "new.json", "json")):
        check_result_path(path, "--x", kind)   # returns: nothing to refuse
    listing = tmp_path / "l.json"
    listing.write_text("[1, 2]\n")   # JSON, but not a report
    with pytest.raises(typer.Exit) as refused:
        check_result_path(listing, "--report", "json")
    assert refused.value.exit_code == 2
