"""The training data a BirdNET-Analyzer user has (issue 11, items 8 and 9): class folders with a
non-event folder, annotation tables beside recordings (bmamba's own detect output included), and
one clear line for data in another shape; a one-class classifier refused; `bmamba info` of a
run folder; `bmamba export` of a file that is not a checkpoint."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from biomamba.cli import cmd_train
from biomamba.cli.app import app
from biomamba.data import ClassificationDataset, DetectionDataset, find_annotation_table
from biomamba.data.annotations import TABLE_NAMES
from biomamba.data.layout import BACKGROUND_CLASS, NON_EVENT_FOLDERS

SR = 16000


def tone(path: Path, freq: float, seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    return path


def bmamba(*args: str):
    """Run the real command line; returns (exit code, stdout + stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def phoebe_clips(real: Path, n_species: int, per_species: int) -> dict[str, list[Path]]:
    """Real xeno-canto clips by species (phoebe/analysis.csv lists more ids than are stored)."""
    audio = real / "phoebe" / "audio" / "data" / "processed"
    by_species: dict[str, list[Path]] = {}
    with open(real / "phoebe" / "audio" / "data" / "analysis.csv", newline="") as f:
        for row in csv.DictReader(f):
            clip = audio / f"{row['id']}.mp3"
            if clip.is_file():
                by_species.setdefault(row["scientific_name"], []).append(clip)
    names = sorted(by_species)[:n_species]
    return {name: by_species[name][:per_species] for name in names}


# --------------------------------------------------------------------------- item 8: classify


def test_birdnet_non_event_folders_train_one_background_class(tmp_path):
    tone(tmp_path / "owl" / "a.wav", 500)
    tone(tmp_path / "owl" / "sub" / "b.wav", 550)
    tone(tmp_path / "Noise" / "n.wav", 3000)        # BirdNET-Analyzer's names, any case
    tone(tmp_path / "background" / "m.wav", 3500)
    tone(tmp_path / "SILENCE" / "s.wav", 4000)
    ds = ClassificationDataset(tmp_path)
    assert ds.classes == [BACKGROUND_CLASS, "owl"]
    labels = {path.relative_to(tmp_path).as_posix(): ds.classes[y] for path, y in ds.items}
    assert labels == {"owl/a.wav": "owl", "owl/sub/b.wav": "owl", "Noise/n.wav": "background",
                      "background/m.wav": "background", "SILENCE/s.wav": "background"}
    assert set(NON_EVENT_FOLDERS) == {"noise", "other", "background", "silence"}


@pytest.mark.parametrize("folder, reason", [("-owl", "negative for one class"), ("owl,frog", "multi-label")])
def test_birdnet_multi_label_folders_are_refused(tmp_path, folder, reason):
    tone(tmp_path / "owl" / "a.wav", 500)
    tone(tmp_path / "frog" / "a.wav", 900)
    tone(tmp_path / folder / "x.wav", 700)
    with pytest.raises(ValueError, match=reason):
        ClassificationDataset(tmp_path)


def test_one_class_classifier_is_refused_and_trains_against_noise(tmp_path, real_data):
    """One species alone would train at loss 0; with a noise folder it trains two classes."""
    ((species, clips),) = phoebe_clips(real_data, 1, 3).items()
    data = tmp_path / "data"
    for clip in clips:
        (data / species).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, data / species / clip.name)
    code, out = bmamba("train", data, "--task", "classify", "--preset", "tiny", "--epochs", "1",
                       "--out", tmp_path / "one", "--device", "cpu")
    assert code == 1 and "one class" in out and "named noise" in out and "Traceback" not in out, out
    for clip in sorted((real_data / "maad" / "data" / "indices").glob("*.wav"))[:3]:
        (data / "noise").mkdir(exist_ok=True)
        shutil.copy(clip, data / "noise" / clip.name)
    code, out = bmamba("train", data, "--preset", "tiny", "--epochs", "1", "--crop", "2s",
                       "--out", tmp_path / "two", "--device", "cpu")
    assert code == 0, out
    config = json.loads((tmp_path / "two" / "best" / "config.json").read_text())
    assert config["classes"] == [species, BACKGROUND_CLASS]
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert log[0]["train_loss"] > 0.1   # two classes: cross-entropy starts near log 2, not at 0


def test_flat_folder_says_it_found_recordings_but_no_class_folders(tmp_path):
    for i in range(3):
        tone(tmp_path / "flat" / f"r{i}.wav", 500 + 100 * i)
    code, out = bmamba("train", tmp_path / "flat", "--out", tmp_path / "o")
    assert code == 1 and "found 3 recording(s) but no class folders" in out and "noise" in out, out
    (tmp_path / "flat" / "r0.txt").write_text("0.1\t0.5\towl\n")   # an Audacity label track
    code, out = bmamba("train", tmp_path / "flat", "--task", "classify", "--out", tmp_path / "o2")
    assert code == 1 and "no class folders" in out and "--task detect" in out, out


def test_jsonl_given_to_classify_says_it_is_for_detect(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"path": "x.wav", "length": 1, "annotations": []}\n')
    code, out = bmamba("train", tmp_path / "d.jsonl", "--task", "classify", "--out", tmp_path / "o")
    assert code == 1 and "for detection (--task detect)" in out, out


# --------------------------------------------------------------------------- item 8: detect


def test_class_folders_given_to_detect_say_what_to_do(tmp_path):
    tone(tmp_path / "owl" / "a.wav", 500)
    tone(tmp_path / "frog" / "b.wav", 900)
    code, out = bmamba("train", tmp_path, "--task", "detect", "--out", tmp_path / "o")
    assert code == 1 and "--task classify" in out and "<stem>.Table.1.selections.txt" in out, out


def test_csv_given_to_detect_says_it_expects_jsonl(tmp_path):
    tone(tmp_path / "a.wav", 500)
    (tmp_path / "list.csv").write_text("path,label\na.wav,owl\n")
    code, out = bmamba("train", tmp_path / "list.csv", "--task", "detect", "--out", tmp_path / "o")
    assert code == 1 and "CSV" in out and "JSONL" in out and "Traceback" not in out, out
    with pytest.raises(ValueError, match="JSONL"):
        DetectionDataset(tmp_path / "list.csv")


def test_flat_folder_without_tables_given_to_detect_names_the_files_looked_for(tmp_path):
    tone(tmp_path / "a.wav", 500, 3.0)
    code, out = bmamba("train", tmp_path, "--task", "detect", "--out", tmp_path / "o")
    assert code == 1 and "found 1 recording(s) but no annotation table" in out, out
    for name in TABLE_NAMES:
        assert name.format(stem="<stem>") in out


def test_table_naming_rule_order(tmp_path):
    rec = tmp_path / "site.rec1.wav"
    expected = [tmp_path / name.format(stem="site.rec1") for name in TABLE_NAMES]
    assert [p.name for p in expected] == ["site.rec1.Table.1.selections.txt", "site.rec1.selections.txt",
                                          "site.rec1.bmamba.selection.table.txt", "site.rec1.txt"]
    assert find_annotation_table(rec) is None
    for path in reversed(expected):   # each name written wins over those after it in the rule
        path.write_text("")
        assert find_annotation_table(rec) == path


def test_help_and_readme_state_the_rule_and_the_non_event_folders():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in TABLE_NAMES:
        assert name.format(stem="<stem>") in cmd_train.DATA_HELP
        assert name.format(stem="rec1") in readme
    for folder in NON_EVENT_FOLDERS:
        assert f"{folder}/" in cmd_train.DATA_HELP or f"DATA/{folder}/" in cmd_train.DATA_HELP
        assert f"`{folder}`" in readme


def test_detect_review_retrain_loop(tmp_path, real_data):
    """`bmamba detect` without --out writes its Raven table beside the recording; training reads
    that table back as the recording's annotations (after a review in Raven it would be the
    corrected one)."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(real_data / "maad" / "data" / "spinetail.wav", folder / "spinetail.wav")
    detect = subprocess.run([sys.executable, "-m", "biomamba.cli.app", "detect", str(folder), "--no-resume"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert detect.returncode == 0, detect.stderr
    table = folder / "spinetail.bmamba.selection.table.txt"
    assert find_annotation_table(folder / "spinetail.wav") == table
    with open(table, newline="") as f:   # the oracle: the table's rows, read with the csv module
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows, "the shipped model finds events in spinetail.wav (model card)"
    ds = DetectionDataset(folder, window_s=2.0, hop_s=1.0)
    (annotations,) = {w.annotations for w in ds.windows}
    assert [(a.start_s, a.end_s, a.label) for a in annotations] == [
        (float(r["Begin Time (s)"]), float(r["End Time (s)"]), r["Label"]) for r in rows]
    assert ds.classes == sorted({r["Label"] for r in rows})
    code, out = bmamba("train", folder, "--preset", "tiny", "--epochs", "1", "--valid-fraction", "0",
                       "--out", tmp_path / "run", "--device", "cpu")
    assert code == 0, out
    assert json.loads((tmp_path / "run" / "args.json").read_text())["task"] == "detect"
    # the review, saved under Raven's name: it wins over detect's table, which stays as it was
    lines = table.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[lines[0].split("\t").index("Label")] = "reviewed"
    reviewed = folder / "spinetail.Table.1.selections.txt"
    reviewed.write_text(lines[0] + "\n" + "\t".join(fields) + "\n")
    assert find_annotation_table(folder / "spinetail.wav") == reviewed
    ds = DetectionDataset(folder, window_s=2.0, hop_s=1.0)
    assert ds.classes == ["reviewed"] and len(ds.windows[0].annotations) == 1


# --------------------------------------------------------------------------- item 9: info, export


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished tiny classify run (best/ and last/)."""
    root = tmp_path_factory.mktemp("run")
    tone(root / "data" / "owl" / "a.wav", 500)
    tone(root / "data" / "owl" / "b.wav", 520)
    tone(root / "data" / "noise" / "c.wav", 3000)
    tone(root / "data" / "noise" / "d.wav", 3100)
    code, out = bmamba("train", root / "data", "--preset", "tiny", "--epochs", "1", "--crop", "1s",
                       "--valid-fraction", "0.5", "--out", root / "run", "--device", "cpu")
    assert code == 0, out
    return root / "run"


def test_info_of_a_run_folder_describes_its_best_checkpoint(run_folder):
    code, out = bmamba("info", run_folder, "--json")
    assert code == 0, out
    meta = json.loads(out)
    assert meta["kind"] == "run" and meta["checkpoint"] == str(run_folder / "best")
    assert meta["classes"] == ["background", "owl"] and meta["task"] == "classify"
    assert meta["run_args"] == json.loads((run_folder / "args.json").read_text())
    assert json.loads(bmamba("info", run_folder / "best", "--json")[1])["classes"] == meta["classes"]
    shutil.rmtree(run_folder / "best")   # without best/, last/, as eval takes
    try:
        assert json.loads(bmamba("info", run_folder, "--json")[1])["checkpoint"] == str(run_folder / "last")
    finally:
        shutil.copytree(run_folder / "last", run_folder / "best")


def test_info_of_a_folder_that_is_no_run_says_so(tmp_path):
    (tmp_path / "args.json").write_text("{}")   # a run that failed before its first checkpoint
    code, out = bmamba("info", tmp_path)
    assert code == 1 and "nor a run folder (best/ or last/)" in out and "Traceback" not in out, out


def test_export_of_a_file_that_is_not_a_checkpoint_is_a_usage_error(tmp_path):
    for name in ("list.csv", "rec.wav"):
        (tmp_path / name).write_text("x")
        code, out = bmamba("export", tmp_path / name)
        assert code == 2 and "a file, not a checkpoint" in out and "Traceback" not in out, out


def test_export_of_a_run_folder_exports_its_best(run_folder, tmp_path):
    code, out = bmamba("export", run_folder, "--out", tmp_path / "exp")
    assert code == 0, out
    assert f"exported {run_folder / 'best'} -> {tmp_path / 'exp'}" in out
    exported = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert exported["classes"] == ["background", "owl"]
