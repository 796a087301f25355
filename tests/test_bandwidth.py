"""What a 16 kHz model cannot hear: recipes/band_energy.py (the share of a recording's energy above
a cut-off, against the analytic share of two tones, a^2 / (a^2 + b^2)) and recipes/time_expand.py
(a time-expanded copy, against the pitch and length physics gives), on files written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def two_tones(path: Path, rate: int, high_hz: float, a: float, b: float, seconds: float, rng) -> float:
    """Writes a*sin(high) + b*sin(1 kHz) (random phases, float WAV); returns the analytic share above
    8 kHz."""
    t = np.arange(int(rate * seconds)) / rate
    x = a * np.sin(2 * np.pi * high_hz * t + rng.uniform(0, 6.3)) + b * np.sin(2 * np.pi * 1000.0 * t + rng.uniform(0, 6.3))
    sf.write(path, x.astype(np.float32), rate, subtype="FLOAT")
    return a * a / (a * a + b * b) if high_hz > 8000 else 0.0


@pytest.mark.parametrize("seed", range(3))
def test_share_above_cutoff_matches_two_tones(tmp_path, seed):
    rng = np.random.default_rng(seed)
    rows, expected = ["path,label,split"], {}
    for i in range(4):
        rate = int(rng.choice([32000, 44100, 48000]))
        high = float(rng.uniform(9000, 0.45 * rate))          # above the cut-off, below Nyquist
        a, b = rng.uniform(0.05, 0.5, size=2)
        label = f"c{i}"
        expected[label] = two_tones(tmp_path / f"{label}.wav", rate, high, a, b, rng.uniform(1.3, 3.7), rng)
        rows.append(f"{label}.wav,{label},train")
    two_tones(tmp_path / "narrow.wav", 16000, 3000.0, 0.3, 0.3, 1.0, rng)   # a 16 kHz file: nothing above 8 kHz
    rows.append("narrow.wav,narrow,train")
    rows.append("c0.wav,c0,validation")                                     # another split: not read
    (tmp_path / "files.csv").write_text("\n".join(rows) + "\n")
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "band_energy.py"), str(tmp_path / "files.csv"),
                           "--split", "train", "--report", str(report)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = json.loads(report.read_text())
    assert got["recordings"] == 5 and got["classes"]["narrow"]["median_share"] == 0.0
    for label, share in expected.items():
        assert got["classes"][label]["median_share"] == pytest.approx(share, abs=0.01)
    assert got["classes_mostly_above"] == sum(s > 0.5 for s in expected.values())


@pytest.mark.parametrize("seed", range(2))
def test_time_expansion_halves_pitch_and_doubles_length(tmp_path, seed):
    """recipes/time_expand.py: a tone of f Hz at a random rate comes back as a 16 kHz file F times
    as long whose spectral peak sits at f / F (physics, not the code, is the oracle)."""
    rng = np.random.default_rng(seed)
    rate, factor = int(rng.choice([32000, 44100, 48000])), int(rng.integers(2, 4))
    hz, seconds = float(rng.uniform(9000, 0.4 * rate)), float(rng.uniform(0.7, 1.9))
    (tmp_path / "src" / "a").mkdir(parents=True)
    t = np.arange(int(rate * seconds)) / rate
    sf.write(tmp_path / "src" / "a" / "tone.wav", (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)
    (tmp_path / "src" / "files.csv").write_text("path,label,split\na/tone.wav,a,train\na/gone.wav,a,train\n")
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "time_expand.py"), str(tmp_path / "src" / "files.csv"),
                           str(tmp_path / "out"), "--factor", str(factor)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 listed but absent" in done.stdout
    x, sr = sf.read(tmp_path / "out" / "a" / "tone.wav", dtype="float64")
    assert sr == 16000 and len(x) == pytest.approx(seconds * factor * 16000, abs=2)
    peak = np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(np.abs(np.fft.rfft(x)))]
    assert peak == pytest.approx(hz / factor, abs=2.0)
    assert (tmp_path / "out" / "files.csv").read_text() == (tmp_path / "src" / "files.csv").read_text()
