"""`bmamba embed`: window embeddings from the exported model == the PyTorch model's hidden states
mean-pooled over the same windows; index rows name file and times."""

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from biomamba import BioMamba
from biomamba.audio import read_audio
from biomamba.cli.app import app
from conftest import perturb_


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from biomamba.export import export_model

    torch.manual_seed(3)
    model = perturb_(BioMamba.from_preset("tiny", task="detect", classes=["a", "b"]), 0.1).eval()
    root = tmp_path_factory.mktemp("embed")
    model.save(root / "ckpt")
    return model, Path(export_model(root / "ckpt", root / "export"))


def pooled(hidden: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Oracle: full windows every hop frames, then the leftover frames as a last partial window."""
    rows, start, covered = [], 0, 0
    while start + window <= len(hidden):
        rows.append(hidden[start: start + window].mean(0))
        covered, start = start + window, start + hop
    if start < len(hidden) and covered < len(hidden):
        rows.append(hidden[start:].mean(0))
    return np.array(rows)


def test_embed_matches_pytorch_windows(exported, tmp_path):
    model, folder = exported
    rng = np.random.default_rng(0)
    clips = {"a.wav": rng.standard_normal(16000 * 7 + 123) * 0.3, "b.flac": rng.standard_normal(16000 * 3) * 0.3}
    for name, audio in clips.items():
        sf.write(tmp_path / name, audio.astype(np.float32), 16000)
    (tmp_path / "broken.wav").write_text("not audio")
    out = tmp_path / "emb"
    result = CliRunner().invoke(app, ["embed", str(tmp_path), "--model", str(folder), "--window", "2s",
                                      "--hop", "1s", "--chunk", "1.3s", "--out", str(out)])
    assert result.exit_code == 1 and "broken.wav" in result.output   # one bad file, the rest embedded
    vectors = np.load(out / "embeddings.npy")
    with open(out / "index.csv") as f:
        index = list(csv.DictReader(f))
    assert len(index) == len(vectors)
    expected = []
    for name in sorted(clips):
        audio = read_audio(tmp_path / name)   # as stored (16-bit), not the float signal written
        with torch.no_grad():
            hidden = model(torch.from_numpy(audio)[None])["hidden"][0].numpy()
        expected.append(pooled(hidden, 100, 50))
        rows = [r for r in index if Path(r["file"]).name == name]
        assert len(rows) == len(expected[-1])
        assert float(rows[0]["start_s"]) == 0.0 and float(rows[1]["start_s"]) == 1.0
        assert float(rows[-1]["end_s"]) == pytest.approx(len(clips[name]) / 16000, abs=1e-3)
    assert np.abs(vectors - np.concatenate(expected)).max() <= 1e-4


def test_embed_out_that_cannot_be_a_folder_is_refused_before_the_run(exported, tmp_path):
    # Before: the run embedded everything, then died with a traceback making the folder.
    _, folder = exported
    sf.write(tmp_path / "a.wav", np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.3, 16000)
    taken = tmp_path / "taken"
    taken.write_text("someone's file\n")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "a.wav"), "--model", str(folder), "--out", str(taken)])
    assert result.exit_code == 2, result.output
    assert f"--out {taken}: cannot make the folder" in result.output and "Traceback" not in result.output
    assert taken.read_text() == "someone's file\n"


def test_embed_that_cannot_write_its_results_fails_with_one_line(exported, tmp_path, monkeypatch):
    _, folder = exported
    sf.write(tmp_path / "a.wav", np.random.default_rng(2).standard_normal(16000).astype(np.float32) * 0.3, 16000)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "emb" / ".embeddings.npy.tmp"))

    monkeypatch.setattr(np, "save", full_disk)
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "a.wav"), "--model", str(folder),
                                      "--out", str(tmp_path / "emb")])
    assert result.exit_code == 1, result.output
    assert "cannot write the embeddings (No space left on device" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
