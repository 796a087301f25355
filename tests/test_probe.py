"""recipes/probe.py (linear probe of a frozen encoder) on tiny data written here."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def load_probe():
    spec = importlib.util.spec_from_file_location("probe", REPO / "recipes" / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tone_listing(folder: Path, name: str, per_class: int, rng) -> Path:
    """Two classes told apart by pitch (400 Hz vs 3 kHz), random length, phase, level and noise."""
    rows = []
    for label, freq in (("low", 400.0), ("high", 3000.0)):
        for i in range(per_class):
            t = np.arange(int(SR * rng.uniform(0.5, 1.5))) / SR
            audio = rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3))
            audio += 0.01 * rng.standard_normal(len(t))
            path = folder / f"{name}-{label}-{i}.wav"
            sf.write(path, audio.astype(np.float32), SR)
            rows.append((path, label))
    listing = folder / f"{name}.csv"
    with open(listing, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return listing


def test_probe_reads_pitch_off_a_random_tiny_encoder(tmp_path):
    import torch

    from biomamba.model import BioMamba

    rng = np.random.default_rng(0)
    train, valid = tone_listing(tmp_path, "train", 6, rng), tone_listing(tmp_path, "valid", 3, rng)
    torch.manual_seed(0)
    BioMamba.from_preset("tiny", task="embed").save(tmp_path / "run" / "last")
    report = tmp_path / "probe.json"
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "probe.py"), str(tmp_path / "run"),
                           "--train", str(train), "--valid", str(valid), "--report", str(report)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert (result["n_train"], result["n_valid"], result["dim"]) == (12, 6, 64)
    assert result["checkpoint"].endswith("last")
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0


def test_probe_cannot_score_above_chance_on_features_without_the_label():
    """Features identical for every recording: the probe can only predict one class everywhere."""
    probe = load_probe()
    y_train = ["a"] * 5 + ["b"] * 5
    y_valid = ["a"] * 3 + ["b"] * 3
    result = probe.fit_probe(np.ones((10, 4)), y_train, np.ones((6, 4)), y_valid)
    assert result["accuracy"] == 0.5
    assert result["macro_f1"] < 0.5
