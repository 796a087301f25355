"""Datasets on tiny recordings written here (and the real spinetail recording when present)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from biomamba.audio import read_audio
from biomamba.data import (
    Annotation,
    ClassificationDataset,
    DetectionDataset,
    collate_padded,
    frame_targets,
    window_targets,
)
from biomamba.data import datasets as datasets_module

SR = 16000


def real_data_dir() -> Path:
    d = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    if not d.is_dir():
        pytest.skip(f"real-data folder {d} absent")
    return d


def ramp(seconds: float, rng) -> np.ndarray:
    """Distinct, increasing samples: any crop tells where it came from."""
    n = int(round(seconds * SR))
    start = rng.uniform(-0.9, -0.5)
    return np.linspace(start, start + 1.2, n, dtype=np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype="FLOAT")
    return path


def locate(crop: torch.Tensor, whole: np.ndarray) -> int:
    k = int(np.argmin(np.abs(whole - float(crop[0]))))
    np.testing.assert_array_equal(crop.numpy(), whole[k : k + len(crop)])
    return k


# --------------------------------------------------------------------------- classification


@pytest.fixture
def class_folder(tmp_path):
    rng = np.random.default_rng()
    write_wav(tmp_path / "dog" / "a.wav", ramp(3.0, rng))
    write_wav(tmp_path / "cat" / "c.wav", ramp(1.0, rng))
    write_wav(tmp_path / "cat" / "d.wav", (rng.standard_normal(8000) * 0.1).astype(np.float32), rate=8000)
    (tmp_path / "cat" / "notes.txt").write_text("not audio")
    return tmp_path


def test_folder_per_class_whole_recordings(class_folder):
    ds = ClassificationDataset(class_folder)
    assert ds.classes == ["cat", "dog"]
    assert [(p.relative_to(class_folder).as_posix(), y) for p, y in ds.items] == [
        ("cat/c.wav", 0), ("cat/d.wav", 0), ("dog/a.wav", 1)]
    for i, (path, label) in enumerate(ds.items):
        audio, y = ds[i]
        assert audio.dtype == torch.float32 and y == label
        np.testing.assert_array_equal(audio.numpy(), read_audio(path))  # 8 kHz file resampled too


def test_train_crops_are_slices_reproducible_and_change_with_epoch(class_folder):
    whole = read_audio(class_folder / "dog" / "a.wav")
    ds = ClassificationDataset(class_folder, crop_s=0.5, train=True, seed=7)
    index = 2
    first = ds[index][0]
    assert len(first) == 8000
    k1 = locate(first, whole)
    again = ClassificationDataset(class_folder, crop_s=0.5, train=True, seed=7)[index][0]
    torch.testing.assert_close(first, again)
    offsets = set()
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        offsets.add(locate(ds[index][0], whole))
    assert len(offsets | {k1}) > 1


def test_eval_crop_is_centred_and_short_clips_padded(class_folder):
    ds = ClassificationDataset(class_folder, crop_s=2.0)
    whole = read_audio(class_folder / "dog" / "a.wav")
    assert locate(ds[2][0], whole) == round((3.0 - 2.0) / 2 * SR)
    short = ds[0][0]  # 1 s recording in a 2 s crop
    assert len(short) == 2 * SR
    np.testing.assert_array_equal(short[:SR].numpy(), read_audio(class_folder / "cat" / "c.wav"))
    assert not short[SR:].any()


def test_only_the_crop_is_read(class_folder, monkeypatch):
    calls = []

    def spy(path, **kw):
        calls.append(kw)
        return read_audio(path, **kw)

    monkeypatch.setattr(datasets_module, "read_audio", spy)
    ClassificationDataset(class_folder, crop_s=0.25, train=True)[2]
    assert len(calls) == 1 and calls[0]["duration_s"] == 0.25 and calls[0]["offset_s"] >= 0


def test_gain_and_background_mixing(class_folder, tmp_path_factory):
    rng = np.random.default_rng()
    noise_file = write_wav(tmp_path_factory.mktemp("bg") / "noise.wav",
                           (rng.standard_normal(SR * 2) * 0.3).astype(np.float32))
    plain = ClassificationDataset(class_folder, crop_s=0.5, train=True, seed=3)
    gained = ClassificationDataset(class_folder, crop_s=0.5, train=True, seed=3, gain_db=(6.0, 6.0))
    np.testing.assert_allclose(gained[2][0].numpy(), plain[2][0].numpy() * 10 ** (6 / 20), rtol=1e-6)

    mixed = ClassificationDataset(class_folder, crop_s=0.5, train=True, seed=3, backgrounds=[noise_file],
                                  snr_db=(10.0, 10.0), background_prob=1.0)
    clean = plain[2][0].numpy().astype(np.float64)
    added = mixed[2][0].numpy().astype(np.float64) - clean
    snr = 10 * np.log10(np.mean(clean**2) / np.mean(added**2))
    assert snr == pytest.approx(10.0, abs=0.01)
    # the added noise is a scaled piece of the background recording: normalised correlation 1
    noise = read_audio(noise_file).astype(np.float64)
    dots = np.correlate(noise, added, mode="valid")
    energy = np.convolve(noise**2, np.ones(len(added)), mode="valid")
    best = np.max(dots / np.sqrt(energy * np.dot(added, added)))
    assert best == pytest.approx(1.0, abs=1e-5)


def test_beans_csv_and_unknown_label(tmp_path):
    rng = np.random.default_rng()
    write_wav(tmp_path / "wav" / "x.wav", ramp(0.5, rng))
    write_wav(tmp_path / "wav" / "y.wav", ramp(0.5, rng))
    (tmp_path / "train.csv").write_text("path,label\nwav/x.wav,owl\nwav/y.wav,bat\n")
    ds = ClassificationDataset(tmp_path / "train.csv")
    assert ds.classes == ["bat", "owl"] and [y for _, y in ds.items] == [1, 0]
    ds = ClassificationDataset(tmp_path / "train.csv", classes=["owl"], unknown_label="OTHR")
    assert ds.classes == ["OTHR", "owl"] and [y for _, y in ds.items] == [1, 0]
    with pytest.raises(ValueError, match="bat"):
        ClassificationDataset(tmp_path / "train.csv", classes=["owl"])


# --------------------------------------------------------------------------- detection


def test_detection_from_beans_jsonl(tmp_path):
    rng = np.random.default_rng()
    long_audio = ramp(5.5, rng)
    write_wav(tmp_path / "wav" / "long.wav", long_audio)
    write_wav(tmp_path / "wav" / "short.wav", ramp(1.5, rng))
    events = [{"st": 0.5, "ed": 1.1, "label": "b"}, {"st": 3.9, "ed": 5.5, "label": "a"},
              {"st": 2.0, "ed": 2.2, "label": "zz"}]
    rows = [{"path": "wav/long.wav", "length": 5.5, "annotations": events},
            {"path": "wav/short.wav", "length": 1.5, "annotations": []}]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = DetectionDataset(tmp_path / "test.jsonl", window_s=2.0, hop_s=1.0, classes=["a", "b"],
                          unknown_label="OTHR")
    assert ds.classes == ["OTHR", "a", "b"]
    assert len(ds) == 4 + 1  # int((5.5 - 2) / 1) + 1 and int((1.5 - 2) / 1) + 1
    annotations = [Annotation(e["st"], e["ed"], e["label"]) for e in events]
    for i in range(4):
        audio, frames, window = ds[i]
        assert audio.shape == (32000,) and frames.shape == (100, 3) and window.shape == (3,)
        np.testing.assert_array_equal(audio.numpy(), long_audio[i * SR : i * SR + 32000])
        np.testing.assert_array_equal(
            window.numpy(), window_targets(annotations, np.array([float(i)]), 2.0, ds.classes, unknown_label="OTHR")[0])
        np.testing.assert_array_equal(
            frames.numpy(), frame_targets(annotations, 100, ds.classes, offset_s=float(i), unknown_label="OTHR"))
    # spot checks by hand: window 0 holds event b (0.5-1.1 s): frames 25..54
    _, frames, window = ds[0]
    assert window.tolist() == [0, 0, 1]
    assert np.flatnonzero(frames[:, 2].numpy()).tolist() == list(range(25, 55))
    assert ds[2][2].tolist() == [1, 0, 0]  # window [2, 4]: "zz" -> OTHR (0.2 s of 0.2 s)
    short_audio, short_frames, _ = ds[4]
    np.testing.assert_array_equal(short_audio[: int(1.5 * SR)].numpy(), read_audio(tmp_path / "wav" / "short.wav"))
    assert not short_audio[int(1.5 * SR):].any() and not short_frames.any()


def test_detection_training_windows_take_backgrounds_targets_unchanged(tmp_path):
    rng = np.random.default_rng()
    write_wav(tmp_path / "rec.wav", ramp(4.0, rng))
    noise_file = write_wav(tmp_path / "noise.wav", (rng.standard_normal(SR * 3) * 0.3).astype(np.float32))
    rows = [{"path": "rec.wav", "length": 4.0, "annotations": [{"st": 0.5, "ed": 1.5, "label": "a"}]}]
    (tmp_path / "d.jsonl").write_text(json.dumps(rows[0]) + "\n")
    plain = DetectionDataset(tmp_path / "d.jsonl", train=True, seed=1)
    mixed = DetectionDataset(tmp_path / "d.jsonl", train=True, seed=1, backgrounds=[noise_file],
                             snr_db=(5.0, 5.0), background_prob=1.0)
    for i in range(len(plain)):
        (clean, frames, window), (noisy, frames2, window2) = plain[i], mixed[i]
        added = noisy.numpy().astype(np.float64) - clean.numpy()
        assert 10 * np.log10(np.mean(clean.numpy().astype(np.float64) ** 2) / np.mean(added**2)) == pytest.approx(5.0, abs=0.01)
        assert torch.equal(frames, frames2) and torch.equal(window, window2)
    assert torch.equal(mixed[1][0], mixed[1][0])   # the same item twice: the same draw
    evaluation = DetectionDataset(tmp_path / "d.jsonl", backgrounds=[noise_file], background_prob=1.0)
    assert torch.equal(evaluation[0][0], plain[0][0])   # never on evaluation windows


def test_detection_from_folder_with_tables(tmp_path):
    rng = np.random.default_rng()
    write_wav(tmp_path / "site1" / "r1.wav", ramp(4.0, rng))
    (tmp_path / "site1" / "r1.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tSpecies\n"
        "1\tWaveform 1\t1\t1.0\t1.5\towl\n1\tSpectrogram 1\t1\t1.0\t1.5\towl\n")
    write_wav(tmp_path / "site1" / "r2.wav", ramp(3.0, rng))
    (tmp_path / "site1" / "r2.txt").write_text("0.2\t0.6\tfrog\n\\\t100\t900\n")
    write_wav(tmp_path / "r3.wav", ramp(3.0, rng))  # no table: skipped
    ds = DetectionDataset(tmp_path, window_s=2.0, hop_s=1.0)
    assert ds.classes == ["frog", "owl"]
    assert ds.skipped == [tmp_path / "r3.wav"]
    assert [(w.path.name, w.start_s) for w in ds.windows] == [
        ("r1.wav", 0.0), ("r1.wav", 1.0), ("r1.wav", 2.0), ("r2.wav", 0.0), ("r2.wav", 1.0)]
    assert ds[0][2].tolist() == [0, 1] and ds[2][2].tolist() == [0, 0]
    assert ds[3][2].tolist() == [1, 0]
    (tmp_path / "empty").mkdir()
    write_wav(tmp_path / "empty" / "lonely.wav", ramp(3.0, rng))
    with pytest.raises(ValueError, match="found 1 recording.* but no annotation table beside any"):
        DetectionDataset(tmp_path / "empty")


def test_collate_padded_and_dataloader(tmp_path):
    rng = np.random.default_rng()
    batch = [(torch.ones(5), 1), (torch.ones(3) * 2, 0)]
    out = collate_padded(batch)
    assert out["audio"].tolist() == [[1, 1, 1, 1, 1], [2, 2, 2, 0, 0]]
    assert out["lengths"].tolist() == [5, 3] and out["labels"].tolist() == [1, 0]
    det = [(torch.ones(640), torch.ones(2, 3), torch.ones(3)), (torch.ones(320), torch.ones(1, 3), torch.zeros(3))]
    out = collate_padded(det)
    assert out["frame_targets"].shape == (2, 2, 3) and not out["frame_targets"][1, 1].any()
    assert out["frame_lengths"].tolist() == [2, 1] and out["window_targets"].shape == (2, 3)

    write_wav(tmp_path / "a" / "x.wav", ramp(1.0, rng))
    write_wav(tmp_path / "b" / "y.wav", ramp(0.5, rng))
    loader = DataLoader(ClassificationDataset(tmp_path), batch_size=2, collate_fn=collate_padded)
    (batch,) = list(loader)
    assert batch["audio"].shape == (2, SR) and batch["lengths"].tolist() == [SR, SR // 2]


def test_real_spinetail_folder():
    folder = real_data_dir() / "maad" / "data"
    ds = DetectionDataset(folder, window_s=2.0, hop_s=1.0)
    assert ds.classes == ["CRER", "SP"]
    assert {w.path.name for w in ds.windows} == {"spinetail.wav"}
    assert len(ds) == 18  # 19.5 s: int((19.5 - 2) / 1) + 1
    audio, frames, window = ds[0]
    np.testing.assert_allclose(
        audio.numpy(), read_audio(folder / "spinetail.wav", offset_s=0.0, duration_s=2.0), atol=1e-6)
    # first event SP 0.101-0.368 s covers frames 5..17 (half-frame rule), CRER 0.507-3.04 s from frame 25
    assert frames[5:18, 1].all() and not frames[:5, 1].any() and not frames[18:60, 1].any()
    assert frames[25:, 0].all() and window.tolist() == [1, 1]


@pytest.mark.parametrize("window_s, hop_s", [(2.0, 1.0), (0.35, 0.1), (10.0, 5.0)])
def test_detection_targets_from_time_index_equal_naive_loop(tmp_path, window_s, hop_s):
    """Issue 10 item 4: a window's targets come from the annotations indexed by time; oracle: the
    naive loop over all of the recording's annotations, on random annotations with awkward ones
    added (on window edges, zero-length, shorter than half a frame, covering the whole recording,
    an unknown label)."""
    rng = np.random.default_rng(int(window_s * 100 + hop_s * 10))
    rows = []
    for r in range(3):
        length = float(rng.uniform(20, 60))
        starts = rng.uniform(0, length, 150)
        ends = np.minimum(length, starts + rng.exponential(1.0, 150))
        events = [(float(a), float(b), str(rng.choice(["a", "b", "c", "x"]))) for a, b in zip(starts, ends)]
        events += [(k * hop_s, k * hop_s + window_s, "a") for k in range(3)]        # on window edges
        events += [(hop_s, hop_s, "b"), (window_s, window_s + 0.004, "c"),        # zero / tiny
                   (0.0, length, "b"), (length - 0.5, length, "a")]
        rows.append({"path": f"rec{r}.wav", "length": length,
                     "annotations": [{"st": a, "ed": b, "label": lab} for a, b, lab in events]})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = DetectionDataset(tmp_path / "d.jsonl", window_s=window_s, hop_s=hop_s, classes=["a", "b", "c"],
                          unknown_label="OTHR")
    assert len(ds) >= 3 * int((20 - window_s) / hop_s)
    for i, w in enumerate(ds.windows):
        frames, window = ds.targets(i)
        naive_frames = frame_targets(w.annotations, ds.n_frames, ds.classes, offset_s=w.start_s,
                                     unknown_label="OTHR")
        naive_window = window_targets(w.annotations, np.array([w.start_s]), window_s, ds.classes,
                                      unknown_label="OTHR")[0]
        np.testing.assert_array_equal(frames, naive_frames)
        np.testing.assert_array_equal(window, naive_window)
        # the index holds every annotation that overlaps the window, and only ones near it
        overlapping = {id(e) for e in w.annotations if e.end_s > w.start_s and e.start_s < w.start_s + window_s}
        picked = ds.window_annotations(i)
        assert overlapping <= {id(e) for e in picked}
        assert all(e.end_s >= w.start_s - 1e-6 and e.start_s <= w.start_s + ds.n_frames * 0.02 + 1e-6
                   for e in picked)
    assert len({id(w.annotations) for w in ds.windows}) == 3   # one tuple per recording, not per window
