"""`bmamba detect` end to end on an exported model: chunk invariance, bad files, resume after a kill,
writers, exit codes, and a run without torch."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import detect

REPO = Path(__file__).resolve().parents[1]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_chunk_length_does_not_change_events(exported, real_data, tmp_path):
    """Chunks of 1 s, 7.3 s and 30 s (carried state) give the same events on real recordings."""
    inputs = [real_data / "oss/tests/audio/great_plains_toad.wav", real_data / "maad/data/spinetail.wav"]
    results = {}
    for chunk in ["1s", "7.3s", "30s"]:
        out = tmp_path / chunk
        code, text = detect(*inputs, "--model", exported, "--chunk", chunk, "--format", "json",
                            "--out", out, "--threshold", "0.5", "--no-resume")
        assert code == 0, text
        results[chunk] = {p.name: read_json(p) for p in sorted(out.glob("*.json"))}
    assert len(results["30s"]) == 2
    n_events = 0
    for name, doc in results["30s"].items():
        for chunk in ["1s", "7.3s"]:
            other = results[chunk][name]["events"]
            assert len(other) == len(doc["events"]), (chunk, name)
            for a, b in zip(other, doc["events"]):
                assert (a["label"], a["start_s"], a["end_s"]) == (b["label"], b["start_s"], b["end_s"])
                assert abs(a["score"] - b["score"]) <= 1e-4
        n_events += len(doc["events"])
    assert n_events > 0, "the test model should find something, or the comparison is empty"


def test_parity_against_pytorch(exported, real_data, tmp_path):
    report = tmp_path / "run.json"
    code, text = detect(real_data / "maad/data/spinetail.wav", "--model", exported, "--out", tmp_path,
                        "--parity", "--report", report, "--no-resume")
    assert code == 0, text
    parity = read_json(report)["parity"]
    from biomamba.audio import read_audio

    frames = -(-len(read_audio(real_data / "maad/data/spinetail.wav")) // 320)
    assert parity["max_abs_diff"] <= 1e-4 and parity["event_f1"] == 1.0 and parity["frames"] == frames
    assert parity["unit"] == "frames" and f"over {frames} frames," in text, text


def make_bad_files(folder: Path) -> dict[str, str]:
    """Awkward recordings; value: 'ok' if it must be processed, 'warn:WORD' if it must be processed
    with a warning containing WORD (the reader reads past what it can), else a word the error must
    contain."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    sf.write(folder / "zeros.wav", np.zeros(16000, np.float32), 16000)
    sf.write(folder / "one_sample.wav", np.zeros(1, np.float32), 44100)
    sf.write(folder / "rate8k.wav", rng.standard_normal(8000 * 3).astype(np.float32) * 0.1, 8000)
    sf.write(folder / "stereo96k.flac", rng.standard_normal((96000 * 2, 2)).astype(np.float32) * 0.1, 96000)
    nan = rng.standard_normal(16000 * 3).astype(np.float32) * 0.1
    nan[16000 * 2 + 5] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(folder / "truncated.flac", rng.standard_normal(16000 * 20).astype(np.float32) * 0.1, 16000)
    data = (folder / "truncated.flac").read_bytes()
    (folder / "truncated.flac").write_bytes(data[: len(data) // 2])
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), 16000)
    (folder / "notes.txt").write_text("not audio; a folder scan skips it\n")
    (folder / "fake.wav").write_text("a text file with an audio name")
    return {"zeros": "ok", "one_sample": "ok", "rate8k": "ok", "stereo96k": "ok", "nan": "warn:NaN",
            "truncated": "warn:short read", "empty": "empty", "fake": "not an audio file"}


def test_bad_recordings_are_reported_and_the_run_goes_on(exported, tmp_path):
    expect = make_bad_files(tmp_path / "in")
    report = tmp_path / "run.json"
    code, text = detect(tmp_path / "in", "--model", exported, "--out", tmp_path / "out", "--report", report)
    assert code == 1, text
    r = read_json(report)
    failed = {Path(f["file"]).stem: f["reason"] for f in r["failures"]}
    warned = {Path(w["file"]).stem: w["message"] for w in r["warnings"]}
    for stem, what in expect.items():
        if what == "ok" or what.startswith("warn:"):
            assert (tmp_path / "out" / f"{stem}.bmamba.selection.table.txt").exists(), stem
            if what.startswith("warn:"):
                assert what[5:].lower() in warned[stem].lower(), (stem, warned.get(stem))
                assert stem in text  # named on stderr
        else:
            assert what.lower() in failed[stem].lower(), (stem, failed.get(stem))
            assert stem in text  # named on stderr
    assert r["processed"] == 6 and r["failed"] == 2 and "notes" not in failed
    assert "Traceback" not in text


def test_awkward_real_files(exported, real_data, tmp_path):
    """The reader cases of opensoundscape's test audio: each processes or fails with a reason."""
    report = tmp_path / "run.json"
    code, text = detect(real_data / "oss/tests/audio", "--model", exported, "--out", tmp_path, "--report", report)
    r = read_json(report)
    assert r["processed"] + r["failed"] == r["files"] and r["processed"] >= 20
    assert {Path(f["file"]).name for f in r["failures"]} == {"empty_2c.wav"}
    assert code == 1 and "Traceback" not in text


def test_every_format_reads_back(exported, tmp_path):
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "rec.wav", rng.standard_normal(16000 * 4).astype(np.float32) * 0.3, 16000)
    docs = {}
    for fmt in ["raven", "csv", "json", "audacity"]:
        code, text = detect(tmp_path / "rec.wav", "--model", exported, "--format", fmt, "--out",
                            tmp_path / "o", "--threshold", "0.5", "--no-resume")
        assert code == 0, text
        docs[fmt] = next((tmp_path / "o").glob(f"rec.bmamba.*{'selection.table.txt' if fmt == 'raven' else 'labels.txt' if fmt == 'audacity' else fmt}"))
    events = read_json(docs["json"])["events"]
    with open(docs["raven"]) as f:
        raven = list(csv.DictReader(f, delimiter="\t"))
    with open(docs["csv"]) as f:
        rows = list(csv.DictReader(f))
    audacity = [line.split("\t") for line in docs["audacity"].read_text().splitlines()]
    assert len(events) == len(raven) == len(rows) == len(audacity) > 0
    assert list(raven[0])[:7] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                                  "Low Freq (Hz)", "High Freq (Hz)"]
    for e, rv, row, au in zip(events, raven, rows, audacity):
        assert float(rv["Begin Time (s)"]) == pytest.approx(e["start_s"], abs=1e-6)
        assert float(row["end_s"]) == pytest.approx(e["end_s"], abs=1e-6)
        assert rv["Label"] == row["label"] == e["label"] and au[2].startswith(e["label"])


def test_nothing_found_still_writes_a_table(exported, tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros(16000 * 2, np.float32), 16000)
    code, text = detect(tmp_path / "quiet.wav", "--model", exported, "--threshold", "0.9999",
                        "--out", tmp_path, "--no-resume")
    assert code == 0, text
    lines = (tmp_path / "quiet.bmamba.selection.table.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Selection\t")


@pytest.mark.parametrize("args, message", [
    (["--chunk", "100frames"], "frames are not accepted"),
    (["--format", "xml"], "--format"),
    (["--backend", "cuda-magic"], "unknown backend"),
    (["--threshold", "1.5"], "between 0 and 1"),
])
def test_bad_usage_exits_2(exported, tmp_path, args, message):
    sf.write(tmp_path / "a.wav", np.zeros(3200, np.float32), 16000)
    code, text = detect(tmp_path / "a.wav", "--model", exported, *args)
    assert code == 2 and message in text


def test_missing_model_and_inputs(exported, tmp_path):
    code, text = detect(tmp_path / "nothing.wav", "--model", exported)
    assert code == 2 and "no recordings found" in text
    sf.write(tmp_path / "a.wav", np.zeros(3200, np.float32), 16000)
    code, text = detect(tmp_path / "a.wav", "--model", tmp_path / "no_model")
    assert code == 2 and "no such model folder" in text


def _write_long(path: Path, seconds: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sf.write(path, (rng.standard_normal(16000 * seconds) * 0.1).astype(np.float32), 16000)


def test_resume_after_kill(exported, tmp_path):
    """Kill a real run part-way (SIGKILL), start it again: finished files are skipped, not redone,
    and every recording ends up with its table."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(6):
        _write_long(inputs / f"rec{i}.wav", 120, i)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "biomamba.cli.app", "detect", str(inputs), "--model", str(exported),
           "--out", str(out), "--chunk", "2s", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.txt"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Done = recorded in the journal. A table whose journal line the kill pre-empted belongs to the
    # file in progress, which the rerun may redo (a crash loses at most that file).
    journal = [json.loads(line) for line in (out / ".bmamba-journal.jsonl").read_text().splitlines()]
    journaled = {Path(e["path"]).stem for e in journal if e.get("status") == "ok"}
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.txt")
                   if p.name.split(".")[0] in journaled}
    assert len(done_before) == len(journaled)
    assert 1 <= len(done_before) < 6, "the kill should land part-way through the run"
    report = tmp_path / "run.json"
    rerun = subprocess.run(cmd + ["--report", str(report)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    r = read_json(report)
    assert r["skipped"] == len(done_before) and r["processed"] == 6 - len(done_before)
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    assert len(list(out.glob("*.txt"))) == 6


BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


def test_runtime_and_detect_run_without_torch(exported, tmp_path):
    """Every module of biomamba.runtime imports, and a whole detect run works, with torch made
    unimportable; --parity without torch says which extra to install and does not start."""
    _write_long(tmp_path / "rec.wav", 3, 0)
    code = BLOCK_TORCH + f"""
import importlib, pkgutil, biomamba.runtime
modules = [m.name for m in pkgutil.iter_modules(biomamba.runtime.__path__, "biomamba.runtime.")]
assert "biomamba.runtime.detect" in modules and "biomamba.runtime.cuda_scan" in modules, modules
for name in modules:
    importlib.import_module(name)
from biomamba.cli.app import main
sys.argv = ["bmamba", "detect", {str(tmp_path / 'rec.wav')!r}, "--model", {str(exported)!r},
            "--out", {str(tmp_path)!r}, "--no-resume", "-q"]
try:
    main()
except SystemExit as e:
    assert e.code in (0, None), e.code
assert "torch" not in sys.modules
print("NO-TORCH-OK")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert "NO-TORCH-OK" in out.stdout, out.stderr
    assert (tmp_path / "rec.bmamba.selection.table.txt").exists()
    parity = BLOCK_TORCH + f"""
from biomamba.cli.app import main
sys.argv = ["bmamba", "detect", {str(tmp_path / 'rec.wav')!r}, "--model", {str(exported)!r}, "--parity"]
main()
"""
    out = subprocess.run([sys.executable, "-c", parity], capture_output=True, text=True)
    assert out.returncode == 1 and "bmamba[train]" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["onnxruntime", "torch"])
def test_batched_recordings_give_the_same_tables(exported, tmp_path, name):
    """--batch 3: recordings of different lengths run together, chunks stacked into shared calls;
    every table equals the one-at-a-time run. Every backend keeps the named-state contract, so
    the torch backend batches too (it was refused: its state was the model's own list)."""
    from biomamba.runtime.backends import open_backend
    from biomamba.runtime.detect import DetectConfig, Detector, run
    from biomamba.runtime.manifest import read_manifest

    for i, seconds in enumerate([9, 4, 7, 1, 6]):
        _write_long(tmp_path / f"r{i}.wav", seconds, 10 + i)
    files = sorted(tmp_path.glob("r*.wav"))
    tables = {}
    for batch in (1, 3):
        config = DetectConfig(chunk_s=2.0, fmt="json", out_dir=tmp_path / f"b{batch}", threshold=0.5)
        (tmp_path / f"b{batch}").mkdir()
        backend = open_backend(exported, name)
        calls = []
        original = backend.run_chunk
        def counting(block, state, calls=calls, original=original):
            calls.append(block.shape[0])
            return original(block, state)

        backend.run_chunk = counting
        detector = Detector(backend, read_manifest(exported), config, batch=batch)
        summary = run(detector, files)
        assert [r.status for r in summary.results] == ["ok"] * 5
        assert [r.path for r in summary.results] == files
        tables[batch] = {p.name: read_json(p)["events"] for p in (tmp_path / f"b{batch}").glob("*.json")}
        if batch == 3:
            assert max(calls) > 1, "no call carried several recordings"
    assert tables[1].keys() == tables[3].keys() and len(tables[1]) == 5
    for name in tables[1]:
        a, b = tables[1][name], tables[3][name]
        assert [(e["label"], e["start_s"], e["end_s"]) for e in a] == [(e["label"], e["start_s"], e["end_s"]) for e in b]
        assert all(abs(x["score"] - y["score"]) <= 1e-5 for x, y in zip(a, b))
