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

    monkeypatch.setattr(np.lib.format, "open_memmap", full_disk)
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "a.wav"), "--model", str(folder),
                                      "--out", str(tmp_path / "emb")])
    assert result.exit_code == 1, result.output
    assert f"cannot write {tmp_path / 'emb' / 'embeddings.npy'}: No space left on device" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# Resuming. The oracle of every resumed run is a whole run of the same command with --no-resume
# into a fresh folder: the same rows, bit for bit, in the same order.

def _recordings(folder: Path, seed: int, n: int = 3) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(folder / f"r{i}.wav")
        sf.write(paths[-1], (rng.standard_normal(16000 * (2 + i)) * 0.3).astype(np.float32), 16000)
    return paths


def _embed(model_folder, inputs, out, *more):
    return CliRunner().invoke(app, ["embed", *map(str, inputs), "--model", str(model_folder), "--window", "1s",
                                    "--hop", "0.5s", "--out", str(out), *more])


def _read(out: Path):
    with open(out / "index.csv") as f:
        return np.load(out / "embeddings.npy"), [(Path(r["file"]).name, r["start_s"], r["end_s"]) for r in csv.DictReader(f)]


@pytest.fixture
def embedded_calls(monkeypatch):
    """The names of the recordings `embed_file` embeds (not those reused), in order."""
    import biomamba.runtime.embed as embed

    calls, real = [], embed.embed_file

    def spy(backend, path, **kwargs):
        calls.append(Path(path).name)
        return real(backend, path, **kwargs)

    monkeypatch.setattr(embed, "embed_file", spy)
    return calls


def test_a_stopped_run_keeps_what_it_did_and_the_rerun_embeds_only_the_rest(exported, tmp_path, monkeypatch,
                                                                             embedded_calls):
    import biomamba.runtime.embed as embed

    _, folder = exported
    recs = _recordings(tmp_path, 5)
    spy = embed.embed_file

    def ctrl_c_at_the_third(backend, path, **kwargs):
        if Path(path).name == "r2.wav":
            raise KeyboardInterrupt
        return spy(backend, path, **kwargs)

    monkeypatch.setattr(embed, "embed_file", ctrl_c_at_the_third)
    stopped = _embed(folder, recs, tmp_path / "out")
    assert stopped.exit_code == 130 and "run the same command again" in stopped.output, stopped.output
    assert not (tmp_path / "out" / "embeddings.npy").exists()

    # what a killed run was writing is swept at the next start; nothing else is
    stale, foreign = tmp_path / "out" / ".embeddings.npy.0123456789ab.tmp", tmp_path / "out" / ".mine.tmp"
    stale.write_bytes(b"half")
    foreign.write_bytes(b"mine")
    monkeypatch.setattr(embed, "embed_file", spy)
    embedded_calls.clear()
    resumed = _embed(folder, recs, tmp_path / "out")
    assert resumed.exit_code == 0, resumed.output
    assert embedded_calls == ["r2.wav"] and "2 of them from an earlier run" in resumed.output
    assert not stale.exists() and foreign.read_bytes() == b"mine"

    whole = _embed(folder, recs, tmp_path / "whole", "--no-resume")
    assert whole.exit_code == 0, whole.output
    (got, got_index), (want, want_index) = _read(tmp_path / "out"), _read(tmp_path / "whole")
    assert got_index == want_index and len(want_index) > 3
    assert np.array_equal(got, want)


def test_what_changed_is_embedded_again(exported, tmp_path, embedded_calls):
    # other settings, a recording rewritten since, a damaged part: none of them is reused
    from biomamba.runtime.embed import PARTS_NAME

    _, folder = exported
    recs = _recordings(tmp_path, 6)
    out = tmp_path / "out"
    assert _embed(folder, recs, out).exit_code == 0
    embedded_calls.clear()
    assert _embed(folder, recs, out, "--hop", "1s").exit_code == 0
    assert embedded_calls == ["r0.wav", "r1.wav", "r2.wav"]

    sf.write(recs[1], np.random.default_rng(7).standard_normal(16000 * 4).astype(np.float32) * 0.3, 16000)
    of_r0 = [p for p in (out / PARTS_NAME).glob("*.npz") if str(np.load(p)["recording"]) == str(recs[0])]
    assert len(of_r0) == 2   # one for each --hop
    max(of_r0, key=lambda p: p.stat().st_mtime_ns).write_bytes(b"torn")   # the --hop 1s run's
    embedded_calls.clear()
    assert _embed(folder, recs, out, "--hop", "1s").exit_code == 0
    assert sorted(embedded_calls) == sorted({"r1.wav", "r0.wav"})
    assert _embed(folder, recs, tmp_path / "whole", "--hop", "1s", "--no-resume").exit_code == 0
    (got, got_index), (want, want_index) = _read(out), _read(tmp_path / "whole")
    assert got_index == want_index and np.array_equal(got, want)


def test_a_recording_that_changes_while_it_is_read_fails_and_is_embedded_next_time(exported, tmp_path, monkeypatch,
                                                                                   embedded_calls):
    import os

    import biomamba.runtime.embed as embed

    _, folder = exported
    recs = _recordings(tmp_path, 8, n=2)
    spy = embed.embed_file

    def grows_meanwhile(backend, path, **kwargs):
        rows = spy(backend, path, **kwargs)
        if Path(path).name == "r1.wav":
            with open(path, "ab") as f:
                f.write(b"\0" * 64)
        return rows

    monkeypatch.setattr(embed, "embed_file", grows_meanwhile)
    first = _embed(folder, recs, tmp_path / "out")
    assert first.exit_code == 1 and "r1.wav: changed while it was processed" in first.output, first.output
    assert {name for name, *_ in _read(tmp_path / "out")[1]} == {"r0.wav"}   # only what was read whole
    monkeypatch.setattr(embed, "embed_file", spy)
    embedded_calls.clear()
    second = _embed(folder, recs, tmp_path / "out")
    assert embedded_calls == ["r1.wav"] and second.exit_code == 0, second.output
    assert os.path.exists(tmp_path / "out" / "embeddings.npy")


def test_two_runs_into_one_folder_the_second_is_refused(exported, tmp_path):
    from biomamba.runtime.folder_lock import FolderLocks

    _, folder = exported
    recs = _recordings(tmp_path, 9, n=1)
    (tmp_path / "out").mkdir()
    with FolderLocks([tmp_path / "out"]):
        busy = _embed(folder, recs, tmp_path / "out")
    assert busy.exit_code == 2 and "another bmamba run" in busy.output, busy.output
    assert not (tmp_path / "out" / "embeddings.npy").exists()


def test_a_built_in_model_is_named_as_detect_names_it(tmp_path):
    # Before: `bmamba embed rec.wav --model insectset32` said "no such model folder".
    from biomamba.runtime.manifest import read_manifest
    from biomamba.runtime.models import builtin_models, model_folder

    if "insectset32" not in builtin_models():
        pytest.skip("this install ships no insectset32 model")
    rec = _recordings(tmp_path, 10, n=1)[0]
    result = _embed("insectset32", [rec], tmp_path / "out")
    assert result.exit_code == 0, result.output
    vectors, index = _read(tmp_path / "out")
    rate = read_manifest(model_folder("insectset32")).sample_rate
    assert len(index) == len(vectors) > 0 and rate == 32000   # the recording was read at the model's rate
    missing = _embed("no-such-model", [rec], tmp_path / "other")
    assert missing.exit_code == 2 and "built-in models:" in missing.output and "insectset32" in missing.output
