"""Models that read their audio faster than 16 kHz (`--sample-rate`, the `sample_rate` of config.json
and model.json).

The oracle is the time-expanded recording. A 32 kHz model reading recording X sees exactly the
samples that a 16 kHz model with the same weights sees in X2, the same samples labelled 16 kHz (X
played at half speed). So every number must agree, and every time the user gets from the 32 kHz
run must be half the time the 16 kHz run gives on X2. A path that still counts 16 kHz somewhere
(decoding, frames to seconds, crops, windows, targets) breaks one of these equalities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from biomamba import BioMamba
from biomamba.streaming import check_sample_rate
from conftest import detect, perturb_

CLASSES = ["frog", "bird", "insect"]


def _models(root: Path, task: str = "detect", classes=CLASSES) -> tuple[Path, Path]:
    """(checkpoint at 32 kHz, checkpoint at 16 kHz): one set of random weights, two input rates."""
    torch.manual_seed(0)
    m32 = perturb_(BioMamba.from_preset("tiny", task=task, classes=classes, sample_rate=32000), 0.2)
    m16 = BioMamba.from_preset("tiny", task=task, classes=classes)
    m16.load_state_dict(m32.state_dict())
    m32.save(root / "ck32")
    m16.save(root / "ck16")
    return root / "ck32", root / "ck16"


def _recordings(root: Path, seconds: float = 7.3, seed: int = 0) -> tuple[Path, Path]:
    """(X at 32 kHz, X2: the same float samples with a 16 kHz header). Noise with loud bursts, so
    that a random model finds events."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 32000)
    x = rng.standard_normal(n).astype(np.float32) * 0.05
    for start in rng.integers(0, n - 8000, 6):
        x[start:start + 8000] += np.sin(np.arange(8000) * rng.uniform(0.1, 2.5)).astype(np.float32) * 0.6
    root.mkdir(parents=True, exist_ok=True)
    sf.write(root / "x.wav", x, 32000, subtype="FLOAT")
    sf.write(root / "x2.wav", x, 16000, subtype="FLOAT")
    return root / "x.wav", root / "x2.wav"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from biomamba.export import export_model

    root = tmp_path_factory.mktemp("rates")
    ck32, ck16 = _models(root)
    x, x2 = _recordings(root / "audio")
    return {"ck32": ck32, "ck16": ck16, "x": x, "x2": x2,
            "ex32": Path(export_model(ck32, root / "ex32")), "ex16": Path(export_model(ck16, root / "ex16"))}


def _events(folder: Path) -> tuple[list[dict], dict]:
    (doc,) = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return doc["events"], doc


def test_detect_at_32khz_gives_the_events_of_the_time_expanded_recording_at_half_the_times(pair, tmp_path):
    """Durations given in seconds (--min-duration, --merge-gap) are stretched x2 for X2 too."""
    out32, out16 = tmp_path / "32", tmp_path / "16"
    code, text = detect(pair["x"], "--model", pair["ex32"], "--format", "json", "--out", out32,
                        "--threshold", "0.97", "--no-resume", "--chunk", "1.3s", "--min-duration", "0.05",
                        "--merge-gap", "0.1")
    assert code == 0, text
    assert "reads audio at 32 kHz" in text   # the user is told what the model hears
    code, text = detect(pair["x2"], "--model", pair["ex16"], "--format", "json", "--out", out16,
                        "--threshold", "0.97", "--no-resume", "--min-duration", "0.1", "--merge-gap", "0.2")
    assert code == 0, text
    (e32, doc32), (e16, doc16) = _events(out32), _events(out16)
    assert len(e32) == len(e16) > 3, "the random model should find events, or the comparison is empty"
    for a, b in zip(e32, e16):
        assert a["label"] == b["label"]
        assert a["start_s"] == pytest.approx(b["start_s"] / 2, abs=1e-6)
        assert a["end_s"] == pytest.approx(b["end_s"] / 2, abs=1e-6)
        assert abs(a["score"] - b["score"]) <= 1e-4
    assert doc32["duration_s"] == pytest.approx(7.3, abs=1e-6)
    assert doc16["duration_s"] == pytest.approx(14.6, abs=1e-6)


def test_parity_at_32khz_counts_the_frames_of_the_32khz_audio(pair, tmp_path):
    report = tmp_path / "run.json"
    code, text = detect(pair["x"], "--model", pair["ex32"], "--out", tmp_path / "o", "--parity",
                        "--report", report, "--no-resume")
    assert code == 0, text
    parity = json.loads(report.read_text())["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["frames"] == -(-int(7.3 * 32000) // 320)


def test_embed_at_32khz_gives_the_rows_of_the_time_expanded_recording_at_half_the_times(tmp_path):
    from biomamba.cli.app import app
    from biomamba.export import export_model

    ck32, ck16 = _models(tmp_path, task="embed", classes=[])
    x, x2 = _recordings(tmp_path / "audio", seconds=5.1, seed=1)
    runs = {}
    for name, ck, audio, window, hop in (("32", ck32, x, "1s", "0.5s"), ("16", ck16, x2, "2s", "1s")):
        model = export_model(ck, tmp_path / f"ex{name}")
        result = CliRunner().invoke(app, ["embed", str(audio), "--model", str(model), "--out",
                                          str(tmp_path / f"emb{name}"), "--window", window, "--hop", hop])
        assert result.exit_code == 0, result.output
        rows = (tmp_path / f"emb{name}" / "index.csv").read_text().splitlines()[1:]
        runs[name] = (np.load(tmp_path / f"emb{name}" / "embeddings.npy"),
                      np.array([[float(v) for v in r.split(",")[2:]] for r in rows]))
    (v32, t32), (v16, t16) = runs["32"], runs["16"]
    assert v32.shape == v16.shape and len(v32) > 5
    np.testing.assert_allclose(v32, v16, atol=1e-5)
    np.testing.assert_allclose(t32, t16 / 2, atol=1e-3)   # index.csv has 3 decimals


def test_eval_decodes_at_the_model_rate(pair, tmp_path):
    """The classify datasets of train and eval read at the model's rate: the same losses and
    probabilities as the 16 kHz model on the time-expanded copies (and not those of X resampled)."""
    from biomamba.training.evaluate import evaluate

    ck32, ck16 = _models(tmp_path, task="classify", classes=["a", "b"])
    rows32, rows16 = ["path,label"], ["path,label"]
    for i, label in enumerate("abab"):
        x, x2 = _recordings(tmp_path / f"r{i}", seconds=2.0 + i, seed=i)
        rows32.append(f"{x},{label}")
        rows16.append(f"{x2},{label}")
    (tmp_path / "32.csv").write_text("\n".join(rows32) + "\n")
    (tmp_path / "16.csv").write_text("\n".join(rows16) + "\n")
    for crop32, crop16 in ((None, None), (1.5, 3.0)):
        r32 = evaluate(ck32, tmp_path / "32.csv", device="cpu", crop_s=crop32)
        r16 = evaluate(ck16, tmp_path / "16.csv", device="cpu", crop_s=crop16)
        assert r32["sample_rate"] == 32000 and r16["sample_rate"] == 16000
        assert r32["loss"] == pytest.approx(r16["loss"], abs=1e-5)
        assert r32["confusion_matrix"] == r16["confusion_matrix"]


def test_detection_windows_and_frame_targets_at_32khz(tmp_path):
    """A 32 kHz detection dataset of X with annotations A equals the 16 kHz one of X2 with A
    stretched x2 (window and hop too): the same audio and frame targets, window for window."""
    from biomamba.data import DetectionDataset

    items = {}
    for name, rate, stretch in (("32", 32000, 1.0), ("16", 16000, 2.0)):
        folder = tmp_path / name
        x, x2 = _recordings(folder, seconds=9.0, seed=3)
        audio = x if rate == 32000 else x2
        table = ["Selection\tBegin Time (s)\tEnd Time (s)\tAnnotation"]
        for i, (a, b, label) in enumerate([(0.51, 1.333, "frog"), (2.0, 2.05, "bird"), (4.1, 6.0, "frog")]):
            table.append(f"{i + 1}\t{a * stretch:.6f}\t{b * stretch:.6f}\t{label}")
        (folder / "x.wav").unlink() if rate == 16000 else (folder / "x2.wav").unlink()
        audio.with_suffix(".Table.1.selections.txt").write_text("\n".join(table) + "\n")
        ds = DetectionDataset(folder, window_s=2.0 * stretch, hop_s=1.0 * stretch, sample_rate=rate)
        items[name] = [ds[i] for i in range(len(ds))]
    assert len(items["32"]) == len(items["16"]) > 3
    for (a32, f32, w32), (a16, f16, w16) in zip(items["32"], items["16"]):
        assert torch.equal(a32, a16) and len(a32) == 64000
        assert torch.equal(f32, f16) and torch.equal(w32, w16)
    assert sum(float(f.sum()) for _, f, _ in items["32"]) > 0


def test_pretraining_features_and_crops_at_32khz(tmp_path):
    from biomamba.training.pretrain.data import PretrainDataset
    from biomamba.training.pretrain.labels import mfcc_features

    x, x2 = _recordings(tmp_path, seconds=6.0, seed=4)
    np.testing.assert_array_equal(np.concatenate(list(mfcc_features(x, 1.3, sample_rate=32000))),
                                  np.concatenate(list(mfcc_features(x2, 2.6))))
    frames = [-(-int(6.0 * 32000) // 320)]
    d32 = PretrainDataset([x], None, crop_s=1.0, seed=5, frames=frames, sample_rate=32000)
    d16 = PretrainDataset([x2], None, crop_s=2.0, seed=5, frames=frames)
    assert len(d32) == len(d16) > 1
    for i in range(len(d32)):
        assert torch.equal(d32[i][0], d16[i][0])


def test_model_rates_are_checked_wherever_they_are_read(pair, tmp_path):
    from biomamba.checkpoint import CheckpointError
    from biomamba.cli.app import app
    from biomamba.runtime.manifest import ManifestError, read_manifest

    for bad in (8000, 44100, 16001, 400000, True, "32000", 32000.0):
        with pytest.raises(ValueError, match="multiple of 16000"):
            check_sample_rate(bad)
    assert [check_sample_rate(r) for r in (16000, 32000, 48000, 384000)] == [16000, 32000, 48000, 384000]
    assert BioMamba.load(pair["ck32"]).sample_rate == 32000

    ck = tmp_path / "ck"
    BioMamba.load(pair["ck32"]).save(ck)
    config = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**config, "sample_rate": 44100}))
    with pytest.raises(CheckpointError, match="44100"):
        BioMamba.load(ck)
    del config["sample_rate"]   # checkpoints of earlier versions: 16 kHz
    (ck / "config.json").write_text(json.dumps(config))
    assert BioMamba.load(ck).sample_rate == 16000

    ex = tmp_path / "ex"
    ex.mkdir()
    for f in pair["ex32"].iterdir():
        (ex / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((ex / "model.json").read_text())
    assert manifest["sample_rate"] == 32000
    (ex / "model.json").write_text(json.dumps({**manifest, "sample_rate": 22050}))
    with pytest.raises(ManifestError, match="22050"):
        read_manifest(ex)
    # model.json edited to another valid rate: the graphs say what they were exported for
    (ex / "model.json").write_text(json.dumps({**manifest, "sample_rate": 16000}))
    code, text = detect(pair["x"], "--model", ex, "--out", tmp_path / "o", "--no-resume")
    assert code == 1 and "exported for 32000 Hz audio but model.json says 16000 Hz" in text
    # a folder whose PyTorch model (config.json) reads another rate than its model.json says
    (ex / "model.json").write_text(json.dumps(manifest))
    (ex / "config.json").write_text(json.dumps({**json.loads((ex / "config.json").read_text()), "sample_rate": 16000}))
    code, text = detect(pair["x"], "--model", ex, "--parity", "--out", tmp_path / "o", "--no-resume")
    assert code == 1 and "inconsistent" in text and not list((tmp_path / "o").glob("*.txt"))

    # fine-tuning keeps the --init checkpoint's rate; another one is refused before any work
    rows = ["path,label"] + [f"{pair['x']},{label}" for label in "ab"]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "d.csv"), "--init", str(pair["ck32"]),
                                      "--sample-rate", "16000", "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "reads 32000 Hz" in result.output
    result = CliRunner().invoke(app, ["train", str(tmp_path / "d.csv"), "--sample-rate", "44100",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--sample-rate" in result.output
    # phase-2 labels from a model of another rate would be labels of other sounds
    result = CliRunner().invoke(app, ["pretrain", str(pair["x"]), "--phase", "2", "--init", str(pair["ck32"]),
                                      "--labels-from", str(pair["ck16"]), "--steps", "1", "--device", "cpu",
                                      "--out", str(tmp_path / "pt")])
    assert result.exit_code != 0 and "reads 16000 Hz audio" in result.output
