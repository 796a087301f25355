"""`bmamba detect` under the conditions of a long unattended run (issue 8): nothing lost silently,
no traceback, nothing unbounded. One test (or a few) per item; each builds the case it needs.

Permission cases need a user that folder permissions apply to: as root (which reads every
folder) they run in a subprocess as `nobody` (`unprivileged`), elsewhere as they are.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from biomamba.runtime import journal as journal_module
from biomamba.runtime import writers as writers_module
from biomamba.runtime.backends import open_backend
from biomamba.runtime.detect import DetectConfig, Detector, run
from biomamba.runtime.events import Event
from biomamba.runtime.journal import Journal, JournalError
from biomamba.runtime.manifest import read_manifest
from conftest import detect

RAVEN = "bmamba.selection.table.txt"
NOBODY = 65534


def noise(path: Path, seconds: float, seed: int, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (rng.standard_normal(int(rate * seconds)) * 0.3).astype(np.float32), rate)
    return path


def detector_for(exported: Path, out: Path, **config) -> Detector:
    config = DetectConfig(out_dir=out, threshold=0.5, **config)
    out.mkdir(parents=True, exist_ok=True)
    return Detector(open_backend(exported, "onnxruntime"), read_manifest(exported), config)


# --- privileges ---------------------------------------------------------------------------------


_SITE = f"import site, sys\nsite.addsitedir({sysconfig.get_paths()['purelib']!r})\n"


@functools.cache
def _python_for_nobody() -> str | None:
    """An interpreter `nobody` can run with this environment's packages: this one, or the system's
    of the same version (this one may live in root's home, which nobody can enter)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in dict.fromkeys([sys.executable, getattr(sys, "_base_executable", ""),
                                 f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]):
        if python and os.path.exists(python):
            try:
                probe = subprocess.run([python, "-c", _SITE + "import numpy, soundfile, biomamba.runtime.detect"],
                                       user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", capture_output=True)
            except OSError:   # not executable by nobody
                continue
            if probe.returncode == 0:
                return python
    return None


def unprivileged(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs python code as a user that folder permissions apply to: this user when not root; as
    root (which reads every folder), `nobody` (skips where no interpreter can run as nobody)."""
    if os.geteuid() != 0:
        return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    python = _python_for_nobody()
    if python is None:
        pytest.skip("running as root, and no Python interpreter that 'nobody' can run was found")
    return subprocess.run([python, "-c", _SITE + code], user=NOBODY, group=NOBODY, extra_groups=[], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def shared_tmp():
    """A folder the unprivileged user can use (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="bmamba-detect-"))
    folder.chmod(0o777)
    yield folder
    for root, dirs, _ in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777)
    shutil.rmtree(folder)


def world_readable(path: Path) -> None:
    for root, _, files in os.walk(path):
        os.chmod(root, 0o777)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666)


# --- 1: two inputs never share one output --------------------------------------------------------


def test_same_name_in_two_site_folders_gets_two_mirrored_tables(exported, tmp_path):
    """siteA/x.wav and siteB/x.wav (recorders name files by time) under one input folder: each gets
    its own table, at its place under --out, equal to the table of that recording run alone."""
    data = tmp_path / "data"
    noise(data / "siteA" / "20190522_000000.wav", 4, 1)
    noise(data / "siteB" / "20190522_000000.wav", 4, 2)
    code, text = detect(data, "--model", exported, "--out", tmp_path / "out", "--threshold", "0.5")
    assert code == 0, text
    for site in ("siteA", "siteB"):
        code, text = detect(data / site / "20190522_000000.wav", "--model", exported, "--out",
                            tmp_path / f"alone{site}", "--threshold", "0.5")
        assert code == 0, text
        mirrored = tmp_path / "out" / site / f"20190522_000000.{RAVEN}"
        assert mirrored.read_bytes() == (tmp_path / f"alone{site}" / f"20190522_000000.{RAVEN}").read_bytes()
    assert (tmp_path / "out" / "siteA" / f"20190522_000000.{RAVEN}").read_bytes() != \
        (tmp_path / "out" / "siteB" / f"20190522_000000.{RAVEN}").read_bytes()
    # A glob mirrors the layout below its literal folders, too.
    code, text = detect(str(data / "*" / "*.wav"), "--model", exported, "--out", tmp_path / "g")
    assert code == 0, text
    assert sorted(p.relative_to(tmp_path / "g").as_posix() for p in (tmp_path / "g").rglob("*.txt")) == \
        [f"siteA/20190522_000000.{RAVEN}", f"siteB/20190522_000000.{RAVEN}"]


@pytest.mark.parametrize("case", ["two folders", "wav and flac, --out", "wav and flac, no --out"])
def test_two_recordings_for_one_output_are_refused_before_the_start(exported, tmp_path, case):
    if case == "two folders":
        a, b = noise(tmp_path / "siteA" / "x.wav", 1, 1), noise(tmp_path / "siteB" / "x.wav", 1, 2)
        inputs = [tmp_path / "siteA", tmp_path / "siteB"]
    else:
        a = noise(tmp_path / "in" / "rec.wav", 1, 1)
        b = tmp_path / "in" / "rec.flac"
        sf.write(b, np.zeros(1600, np.float32), 16000)
        inputs = [tmp_path / "in"]
    out = ["--out", tmp_path / "out"] if "no --out" not in case else []
    code, text = detect(*inputs, "--model", exported, *out)
    assert code == 2, text
    assert "would write the same output" in text and str(a) in text and str(b) in text
    assert not list(tmp_path.rglob(f"*.{RAVEN}"))   # refused before anything was written


# --- 2, 7: unreadable folders, link loops -------------------------------------------------------


def test_unreadable_sub_folder_is_a_named_failure(exported, shared_tmp):
    data = shared_tmp / "data"
    noise(data / "ok" / "a.wav", 1, 1)
    noise(data / "locked" / "b.wav", 1, 2)
    model = shared_tmp / "model"
    shutil.copytree(exported, model)
    world_readable(shared_tmp)
    (data / "locked").chmod(0o000)
    report = shared_tmp / "run.json"
    argv = ["bmamba", "detect", str(data), "--model", str(model), "--out", str(shared_tmp / "out"),
            "--report", str(report), "-q"]
    done = unprivileged(f"from biomamba.cli.app import main\nsys.argv = {argv!r}\nmain()", shared_tmp)
    assert done.returncode == 1, done.stderr
    locked = str(data / "locked")
    assert f"{locked}: cannot read this folder: Permission denied" in done.stderr
    r = json.loads(report.read_text())
    assert {"file": locked, "reason": "cannot read this folder: Permission denied"} in r["failures"]
    assert r["processed"] == 1 and r["failed"] == 1


def test_paths_and_globs_inside_an_unreadable_folder_are_named(shared_tmp):
    noise(shared_tmp / "locked" / "c.wav", 0.1, 0)
    world_readable(shared_tmp)
    (shared_tmp / "locked").chmod(0o000)
    locked = shared_tmp / "locked"
    inputs = [str(locked / "c.wav"), str(locked / "*.wav"), str(shared_tmp / "**" / "*.wav")]
    done = unprivileged("import json\nfrom biomamba.audio import find_audio_with_roots\n"
                        f"found, problems = find_audio_with_roots({inputs!r})\n"
                        "print(json.dumps([[str(p) for p, _ in found], problems]))", shared_tmp)
    found, problems = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == []
    assert [str(locked / "c.wav"), "cannot be read: Permission denied"] in problems
    assert [str(locked), "cannot read this folder: Permission denied"] in problems


def test_symlink_loops_among_inputs_are_named_and_do_not_multiply(exported, tmp_path):
    data = tmp_path / "data"
    noise(data / "good.wav", 1, 0)
    os.symlink("loop2.wav", data / "loop1.wav")
    os.symlink("loop1.wav", data / "loop2.wav")
    os.symlink("..", data / "up")      # a folder loop: data/up/data/up/...
    os.symlink(".", data / "here")
    report = tmp_path / "run.json"
    code, text = detect(data, str(data / "**" / "*.wav"), data / "loop1.wav", "--model", exported,
                        "--out", tmp_path / "out", "--report", report)
    assert code == 1 and "Traceback" not in text
    r = json.loads(report.read_text())
    assert r["processed"] == 1   # good.wav once, however many ways the links reach it
    reasons = {f["file"]: f["reason"] for f in r["failures"]}
    assert reasons[str(data / "loop1.wav")] == "cannot be read: Too many levels of symbolic links"
    assert str(data / "loop2.wav") in reasons


# --- 3, 7: a recording that changes, or goes, while it is processed -----------------------------


@pytest.mark.parametrize("change", ["grows", "deleted"])
def test_recording_changed_while_processed_is_not_done(exported, tmp_path, change):
    recording = noise(tmp_path / "in" / "rec.wav", 6, 0)
    original = recording.read_bytes()
    detector = detector_for(exported, tmp_path / "out", chunk_s=1.0)
    calls = []
    real = detector.backend.run_chunk

    def meddling(block, state):   # the recorder writes on, or someone moves the file, mid-run
        calls.append(1)
        if len(calls) == 3:
            if change == "grows":
                with open(recording, "ab") as f:
                    f.write(b"\0" * 3200)
            else:
                recording.unlink()
        return real(block, state)

    detector.backend.run_chunk = meddling
    with Journal(tmp_path / "journal.jsonl", {"s": 1}) as journal:
        result = run(detector, [recording], journal).results[0]
    assert result.status == "failed"
    expected = "changed while it was processed (size" if change == "grows" else "was moved or deleted"
    assert expected in result.reason and "not recorded as done" in result.reason and str(recording) in result.reason
    recording.write_bytes(original)   # the same bytes again; the journal still says "not done"
    with Journal(tmp_path / "journal.jsonl", {"s": 1}) as journal:
        assert not journal.is_done(recording)


def test_journal_keeps_the_state_from_before_processing(tmp_path):
    recording = tmp_path / "rec.wav"
    recording.write_bytes(b"x" * 100)
    before = journal_module.fingerprint(recording)
    recording.write_bytes(b"x" * 200)
    with Journal(tmp_path / "j.jsonl", {"s": 1}) as journal:
        journal.record(recording, "ok", fingerprint=before)
        assert not journal.is_done(recording)          # the file on disk is not what was processed
        recording.write_bytes(b"x" * 100)
        os.utime(recording, ns=(before[1], before[1]))
        assert journal.is_done(recording)


# --- 4: reader warnings reach the console and the report -----------------------------------------


def test_reader_warnings_are_printed_and_reported(exported, tmp_path):
    """A WAV cut to half its bytes: the reader reads what is there and says so; detect prints the
    warning, naming the file, and puts it in the report, and the recording counts as processed."""
    noise(tmp_path / "in" / "fine.wav", 1, 0)
    short = noise(tmp_path / "in" / "short.wav", 4, 1)
    data = short.read_bytes()
    short.write_bytes(data[: len(data) // 2])
    report = tmp_path / "run.json"
    code, text = detect(tmp_path / "in", "--model", exported, "--out", tmp_path / "out", "--report", report)
    assert code == 0, text
    assert f"bmamba: warning: {short}: short read: decoded 2.0 s of 4.0 s" in text
    r = json.loads(report.read_text())
    assert [w["file"] for w in r["warnings"]] == [str(short)]
    assert "short read: decoded 2.0 s of 4.0 s" in r["warnings"][0]["message"]
    per_file = {Path(x["file"]).name: x for x in r["recordings"]}
    assert per_file["short.wav"]["status"] == "ok" and len(per_file["short.wav"]["warnings"]) == 1
    assert per_file["fine.wav"]["warnings"] == []


# --- 5: NaN/inf model outputs ---------------------------------------------------------------------


def test_nan_model_output_is_a_failure_not_a_quiet_recording(exported, tmp_path):
    recording = noise(tmp_path / "rec.wav", 5, 0)
    detector = detector_for(exported, tmp_path / "out", chunk_s=1.0)
    real = detector.backend.run_chunk
    calls = []

    def broken(block, state):
        outputs, state = real(block, state)
        calls.append(1)
        if len(calls) == 3:
            outputs = {k: np.full_like(v, np.nan) for k, v in outputs.items()}
        return outputs, state

    detector.backend.run_chunk = broken
    result = run(detector, [recording]).results[0]
    assert result.status == "failed"
    assert f"{recording}: the model gave NaN or infinite" in result.reason and "at 2.0 s" in result.reason
    assert not list((tmp_path / "out").iterdir())   # no table, and no temporary file left


# --- 7: journal and report ----------------------------------------------------------------------


def test_non_utf8_file_name_is_journaled_and_found_again(tmp_path):
    recording = tmp_path / os.fsdecode(b"rec_\xff\xfe.wav")   # surrogate escapes in Python
    recording.write_bytes(b"x" * 10)
    with Journal(tmp_path / "j.jsonl", {"s": 1}) as journal:
        journal.record(recording, "ok")
    (tmp_path / "j.jsonl").read_text(encoding="ascii")
    with Journal(tmp_path / "j.jsonl", {"s": 1}) as journal:
        assert journal.is_done(recording)


def test_non_utf8_file_name_in_a_run_and_a_rerun(exported, tmp_path):
    """The recording is processed, the rerun skips it, and the journal names the file exactly."""
    (tmp_path / "in").mkdir()
    noise(tmp_path / "x.wav", 1, 0).rename(tmp_path / "in" / os.fsdecode(b"rec_\xff\xfe.wav"))
    recording = tmp_path / "in" / os.fsdecode(b"rec_\xff\xfe.wav")
    report = tmp_path / "run.json"
    args = [tmp_path / "in", "--model", exported, "--out", tmp_path / "out", "--format", "json", "--report", report]
    code, text = detect(*args)
    assert code == 0 and "Traceback" not in text, text
    first = json.loads(report.read_text())["recordings"][0]
    assert first["status"] == "ok", first
    entries = [json.loads(line) for line in (tmp_path / "out" / ".bmamba-journal.jsonl").read_text().splitlines()]
    assert [e["path"] for e in entries if "path" in e] == [str(recording.resolve())]
    code, text = detect(*args)
    assert code == 0 and "Traceback" not in text, text
    assert json.loads(report.read_text())["skipped"] == 1
    doc = json.loads((tmp_path / "out" / os.fsdecode(b"rec_\xff\xfe.bmamba.json")).read_text())
    assert doc["file"] == str(recording)      # the JSON gives the name back exactly


def test_full_disk_under_the_journal_stops_the_run_with_a_report(exported, tmp_path, monkeypatch):
    for i in range(3):
        noise(tmp_path / "in" / f"r{i}.wav", 1, i)
    real_write = os.write

    def full_for_the_journal(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".bmamba-journal.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(journal_module.os, "write", full_for_the_journal)
    report = tmp_path / "run.json"
    code, text = detect(tmp_path / "in", "--model", exported, "--out", tmp_path / "out", "--report", report)
    assert code == 1 and "Traceback" not in text
    journal = tmp_path / "out" / ".bmamba-journal.jsonl"
    assert f"cannot write journal {journal}: No space left on device" in text and "the run stopped" in text
    r = json.loads(report.read_text())
    assert r["aborted"] and r["processed"] == 1 and r["not_processed"] == 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_journal_write_and_close_on_a_full_disk_raise_no_traceback(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", {"s": 1})
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, journal._fd)      # the journal's file now answers every write with ENOSPC
    os.close(full)
    recording = tmp_path / "a.wav"
    recording.write_bytes(b"x")
    with pytest.raises(JournalError, match="No space left on device"):
        journal.record(recording, "ok")
    journal.close()                 # nothing raised


def test_odd_journal_lines_are_skipped(tmp_path):
    recording = tmp_path / "a.wav"
    recording.write_bytes(b"x")
    path = tmp_path / "j.jsonl"
    with Journal(path, {"s": 1}) as journal:
        journal.record(recording, "ok")
    with open(path, "a") as f:
        f.write('{"path": "/x.wav", "size": 1e999, "mtime_ns": 1, "settings": "s", "status": "ok"}\n')
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
        f.write('"settings_hash"\n')
    with Journal(path, {"s": 1}) as journal:
        assert journal.skipped_lines == 3 and journal.is_done(recording)


def test_event_file_keeps_a_non_utf8_recording_name(tmp_path):
    recording = tmp_path / os.fsdecode(b"rec_\xff.wav")
    for fmt in ("json", "csv", "raven"):
        path = writers_module.output_path(recording, tmp_path, fmt)
        writers_module.write_events(path, [Event(0.1, 0.5, "frog", 0.9)], fmt, recording=recording,
                                    duration_s=1.0, sample_rate=16000, backend="b", model="m")
    assert json.loads((tmp_path / os.fsdecode(b"rec_\xff.bmamba.json")).read_text())["file"] == str(recording)
    assert "rec_\\udcff.wav" in (tmp_path / os.fsdecode(b"rec_\xff.bmamba.csv")).read_text()


def test_report_path_problems_are_usage_errors(exported, tmp_path):
    noise(tmp_path / "a.wav", 1, 0)
    code, text = detect(tmp_path / "a.wav", "--model", exported, "--report", tmp_path / "nowhere" / "r.json")
    assert code == 2 and f"the folder {tmp_path / 'nowhere'} does not exist" in text
    code, text = detect(tmp_path / "a.wav", "--model", exported, "--report", tmp_path)
    assert code == 2 and "is a folder" in text


# --- 10: journal on a device or FIFO, --threads, --chunk ----------------------------------------


@pytest.mark.timeout(120)   # before the fix, reading the FIFO waited for ever
def test_journal_on_a_device_or_fifo_is_refused(exported, tmp_path):
    noise(tmp_path / "a.wav", 1, 0)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (Path("/dev/null"), fifo):
        code, text = detect(tmp_path / "a.wav", "--model", exported, "--journal", target)   # no hang
        assert code == 2 and f"cannot use journal {target}: it is not a regular file" in text


@pytest.mark.parametrize("args, message", [
    (["--threads", "100000"], "--threads 100000: this machine has"),
    (["--chunk", "100000m"], "--chunk 6000000s needs about"),
    (["--threshold", "nan"], "--threshold must be between 0 and 1"),
    (["--threshold-off", "nan"], "--threshold-off must be between 0 and 1"),
    (["--min-duration", "nan"], "--min-duration"),
    (["--merge-gap", "inf"], "--merge-gap must be a finite number"),
])
def test_unbounded_or_meaningless_options_are_usage_errors(exported, tmp_path, args, message):
    noise(tmp_path / "a.wav", 1, 0)
    code, text = detect(tmp_path / "a.wav", "--model", exported, "--out", tmp_path / "out", *args)
    assert code == 2 and message in text, text
    assert not list(tmp_path.rglob(f"*.{RAVEN}"))


# --- 11: temporary files ------------------------------------------------------------------------


def test_leftover_temporary_files_are_removed_only_ours_only_there(exported, tmp_path):
    noise(tmp_path / "in" / "rec.wav", 1, 0)
    out = tmp_path / "out"
    out.mkdir()
    ours = out / f".rec.{RAVEN}.0123456789ab.tmp"
    others = [out / ".notes.txt.0123456789ab.tmp", out / f".rec.{RAVEN}.tmp", out / "keep.tmp",
              tmp_path / "in" / f".rec.{RAVEN}.0123456789ab.tmp"]
    for path in [ours, *others]:
        path.write_text("left by a kill")
    code, text = detect(tmp_path / "in", "--model", exported, "--out", out)
    assert code == 0, text
    assert not ours.exists() and all(p.exists() for p in others)
    assert "removed 1 unfinished temporary file" in text


def test_longest_legal_output_name_is_written(exported, tmp_path):
    stem = "r" * (255 - len(f".{RAVEN}"))         # the output name is exactly 255 bytes
    noise(tmp_path / "in" / f"{stem}.wav", 1, 0)
    code, text = detect(tmp_path / "in", "--model", exported, "--out", tmp_path / "out")
    assert code == 0, text
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".bmamba")] == [f"{stem}.{RAVEN}"]
    # A temporary file of such a name is found and removed at the next start.
    temp = (tmp_path / "out") / f".{writers_module._temp_prefix(tmp_path / 'out' / f'{stem}.{RAVEN}')}.0123456789ab.tmp"
    temp.write_text("x")
    assert writers_module.remove_stale_temps([tmp_path / "out" / f"{stem}.{RAVEN}"]) == [temp]


# --- 12: model problems found once, before the first recording ----------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["classes"].append("owl"), "scores per frame but its manifest lists 4 classes"),
    (lambda m: m.update(thresholds={"frog": 1.5}), "threshold"),
    (lambda m: m.update(thresholds={"frog": float("nan")}), "NaN"),
])
def test_model_problems_are_one_error_exit_1(exported, tmp_path, edit, message):
    model = tmp_path / "model"
    shutil.copytree(exported, model)
    manifest = json.loads((model / "model.json").read_text())
    edit(manifest)
    (model / "model.json").write_text(json.dumps(manifest))
    for i in range(3):
        noise(tmp_path / "in" / f"r{i}.wav", 1, i)
    code, text = detect(tmp_path / "in", "--model", model, "--out", tmp_path / "out")
    assert code == 1 and message in text and text.count("error") == 1, text
    assert not list((tmp_path / "out").glob(f"*.{RAVEN}"))


def test_a_model_broken_on_silence_is_refused_before_the_first_recording(exported, tmp_path):
    detector = detector_for(exported, tmp_path / "out")
    real = detector.backend.run_chunk
    detector.backend.run_chunk = lambda block, state: (
        {k: np.full_like(v, np.inf) for k, v in real(block, state)[0].items()}, state)
    with pytest.raises(ValueError, match="NaN or infinite scores on silence"):
        detector.check()


# --- 13: failures said when they happen, signals, missing inputs, disk full ---------------------


def test_missing_input_and_full_disk_name_the_file(exported, tmp_path, monkeypatch):
    noise(tmp_path / "a.wav", 1, 0)

    def no_space(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writers_module, "_finish", no_space)
    code, text = detect(tmp_path / "gone.wav", tmp_path / "a.wav", "--model", exported, "--out", tmp_path / "o")
    assert code == 1
    assert f"{tmp_path / 'gone.wav'}: no such file or folder" in text
    assert f"cannot write {tmp_path / 'o' / ('a.' + RAVEN)}: No space left on device" in text


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_drops_the_current_output_writes_journal_summary_and_report(exported, tmp_path, signum, code):
    """A real run, a real signal: a failure is printed while the run goes on; on the signal the
    recording in progress gets no output (and no temporary file), the finished ones are journaled,
    the summary and the report are written, the exit status is 128 + the signal; a rerun does
    only what is left."""
    inputs = tmp_path / "in"
    (inputs).mkdir()
    (inputs / "a_broken.wav").write_text("not audio")
    for i in range(4):
        noise(inputs / f"rec{i}.wav", 120, i)
    out, report = tmp_path / "out", tmp_path / "run.json"
    cmd = [sys.executable, "-m", "biomamba.cli.app", "detect", str(inputs), "--model", str(exported),
           "--out", str(out), "--chunk", "2s", "-q", "--report", str(report)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(f"*.{RAVEN}")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the signal"
    assert any("a_broken.wav" in line and "failed" in line for line in lines), lines  # said already
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == code
    reader.join(timeout=10)
    text = "".join(lines)
    assert signal.Signals(signum).name in text and "bmamba detect:" in text and "Traceback" not in text
    r = json.loads(report.read_text())
    done = sorted(p.name for p in out.glob(f"*.{RAVEN}"))
    assert r["interrupted"] == signal.Signals(signum).name and r["processed"] == len(done) >= 1
    assert r["not_processed"] == 4 - len(done)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 1   # a_broken.wav still fails
    r = json.loads(report.read_text())
    assert r["skipped"] == len(done) and r["processed"] == 4 - len(done)
