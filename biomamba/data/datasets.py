"""torch Datasets for fine-tuning: clip classification and frame-level detection.

Audio comes only through `biomamba.audio.read_audio`, and only the segment an item needs is
read (a crop or a window), never a whole long recording per item. Randomness (crops, gain,
background mixing) comes from a generator seeded by (seed, epoch, item index), so an item is
the same whichever DataLoader worker makes it; call `set_epoch` to get new crops each epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..audio import SAMPLE_RATE, audio_info, read_audio
from ..streaming import HOP, check_sample_rate, frame_seconds
from .annotations import (
    Annotation,
    find_annotation_table,
    read_annotations,
    read_beans_csv,
    read_beans_jsonl,
)
from .layout import (
    BACKGROUND_CLASS,
    NON_EVENT_FOLDERS,
    check_detection_source,
    class_folder_items,
    is_audio,
)
from .windows import class_index, events_by_window, frame_targets, window_starts, window_targets


def _samples(seconds: float, sample_rate: int) -> int:
    return int(round(seconds * sample_rate))


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad at the end or trim to n samples."""
    if len(audio) >= n:
        return audio[:n]
    return np.concatenate([audio, np.zeros(n - len(audio), dtype=np.float32)])


class _Durations:
    """Recording durations from the header, read once per file."""

    def __init__(self):
        self._cache: dict[Path, float] = {}

    def __call__(self, path: Path) -> float:
        if path not in self._cache:
            self._cache[path] = audio_info(path).duration_s
        return self._cache[path]


def _apply_gain(audio: np.ndarray, gain_db: tuple[float, float] | None, rng: np.random.Generator) -> np.ndarray:
    if gain_db is None:
        return audio
    return audio * np.float32(10.0 ** (rng.uniform(*gain_db) / 20.0))


# --------------------------------------------------------------------------- classification


class BackgroundMixer:
    """Training augmentation: with probability `prob`, add a random piece of a random background
    recording (tiled when shorter) at an SNR drawn from `snr_db` (lo, hi) dB. Backgrounds are read
    only for the piece needed, at ``sample_rate`` (the model's)."""

    def __init__(self, backgrounds: Sequence[str | Path] = (), snr_db: tuple[float, float] = (0.0, 20.0),
                 prob: float = 0.5, sample_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        self.backgrounds = [Path(b) for b in backgrounds]
        self.snr_db, self.prob = tuple(snr_db), prob
        self._duration = _Durations()

    def _piece(self, n: int, rng: np.random.Generator) -> np.ndarray:
        path = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        duration = self._duration(path)
        want_s = n / self.sample_rate
        if duration > want_s:
            noise = read_audio(path, offset_s=rng.uniform(0.0, duration - want_s), duration_s=want_s,
                               sample_rate=self.sample_rate)
        else:
            noise = read_audio(path, sample_rate=self.sample_rate)
        if len(noise) == 0:
            return np.zeros(n, dtype=np.float32)
        return np.resize(noise, n).astype(np.float32)  # np.resize tiles a short piece

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.backgrounds or rng.random() >= self.prob or len(audio) == 0:
            return audio
        noise = self._piece(len(audio), rng)
        p_signal = float(np.mean(audio.astype(np.float64) ** 2))
        p_noise = float(np.mean(noise.astype(np.float64) ** 2))
        if p_signal == 0.0 or p_noise == 0.0:
            return audio
        snr = rng.uniform(*self.snr_db)
        scale = np.sqrt(p_signal / (p_noise * 10.0 ** (snr / 10.0)))
        return (audio + scale * noise).astype(np.float32)


class ClassificationDataset(Dataset):
    """Clips with one label each. Items: (audio float32 tensor [S] at ``sample_rate``, class index int).

    source: a folder with one subfolder of recordings per class (`root/<label>/*.wav`, searched
    recursively; `layout.class_folder_items`: BirdNET-Analyzer's non-event folders `noise`,
    `other`, `background`, `silence` train the class `background`), a BEANS classification CSV
    (`path,label`), or a list of (path, label).
    classes: the class names in index order (default: the sorted labels found, which must be two
    or more: a one-class classifier has loss 0 and learns nothing); a label not among them maps
    to `unknown_label` (added to the classes if missing), else is an error.

    crop_s: None gives whole recordings; else every item holds exactly crop_s seconds: a random
    crop when `train`, the centred crop otherwise; shorter recordings are zero-padded at the end.
    Training-only augmentation: `gain_db` (lo, hi) random gain; `backgrounds` (recordings)
    mixed in with probability `background_prob` at an SNR drawn from `snr_db` (lo, hi), from a
    random piece of a random background (tiled when shorter than the clip): `BackgroundMixer`.
    """

    def __init__(
        self,
        source: str | Path | Sequence[tuple[str | Path, str]],
        *,
        classes: Sequence[str] | None = None,
        unknown_label: str | None = None,
        crop_s: float | None = None,
        train: bool = False,
        gain_db: tuple[float, float] | None = None,
        backgrounds: Sequence[str | Path] = (),
        snr_db: tuple[float, float] = (0.0, 20.0),
        background_prob: float = 0.5,
        channel: int | None = None,
        seed: int = 0,
        sample_rate: int = SAMPLE_RATE,
    ):
        self.sample_rate = check_sample_rate(sample_rate)   # the model's: audio is decoded at it
        items = self._load(source)
        if not items:
            raise ValueError(f"{source}: no recordings found")
        if classes is None:
            classes = sorted({label for _, label in items})
            _check_two_classes(classes)
        classes = list(classes)
        if unknown_label is not None and unknown_label not in classes:
            classes = sorted([*classes, unknown_label])
        self.classes: list[str] = classes
        self.items: list[tuple[Path, int]] = [
            (path, class_index(classes, label, unknown_label)) for path, label in items
        ]
        if crop_s is not None and crop_s <= 0:
            raise ValueError(f"crop_s must be > 0, got {crop_s}")
        self.crop_s = crop_s
        self.train = train
        self.gain_db = gain_db
        self.mix = BackgroundMixer(backgrounds, snr_db, background_prob, self.sample_rate)
        self.channel = channel
        self.seed = seed
        self.epoch = 0
        self._duration = _Durations()

    @staticmethod
    def _load(source, split: str | None = None) -> list[tuple[Path, str]]:
        """(path, label) items of a class folder, a BEANS CSV (only the rows of ``split`` when
        given: see `read_beans_csv`) or a list."""
        if isinstance(source, str | Path):
            source = Path(source)
            if source.is_dir():
                if split is not None:
                    raise ValueError(f"{source}: a split ({split!r}) selects rows of a CSV, not of a folder")
                return class_folder_items(source)
            if source.suffix.lower() == ".jsonl":
                raise ValueError(f"{source}: a JSONL listing is for detection (--task detect); clip "
                                 "classification takes a CSV listing (path,label) or a folder per class")
            return read_beans_csv(source, split=split)
        return [(Path(p), str(label)) for p, label in source]

    def set_epoch(self, epoch: int) -> None:
        """Draw new random crops and augmentations for this epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _crop(self, path: Path, rng: np.random.Generator) -> np.ndarray:
        rate = self.sample_rate
        if self.crop_s is None:
            return read_audio(path, channel=self.channel, sample_rate=rate)
        duration = self._duration(path)
        n = _samples(self.crop_s, rate)
        if duration <= self.crop_s:
            return _fit(read_audio(path, channel=self.channel, sample_rate=rate), n)
        spare = duration - self.crop_s
        offset = rng.uniform(0.0, spare) if self.train else spare / 2
        audio = read_audio(path, channel=self.channel, offset_s=offset, duration_s=self.crop_s, sample_rate=rate)
        return _fit(audio, n)  # MP3 headers may overstate the length by a few samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        audio = self._crop(path, rng)
        if self.train:
            audio = _apply_gain(audio, self.gain_db, rng)
            audio = self.mix(audio, rng)
        return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), label


def _check_two_classes(classes: list[str]) -> None:
    """A classifier needs two classes or more: with one, softmax gives it probability 1 whatever
    the audio, so the loss is 0 and nothing is learned."""
    if len(classes) >= 2:
        return
    names = ", ".join(NON_EVENT_FOLDERS)
    if classes == [BACKGROUND_CLASS]:
        raise ValueError(f"the training data holds only non-event recordings (folders named {names}): "
                         "add a folder of recordings per class")
    raise ValueError(
        f"the training data holds one class ({classes[0]!r}); a one-class classifier learns nothing "
        f"(its loss is 0). To train it against a background class, add a folder of recordings that "
        f"hold none of it, named {NON_EVENT_FOLDERS[0]} (BirdNET-Analyzer's names: {names}); or add a "
        "folder per other class")


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class DetectionWindow:
    """One window of a recording: where it starts (s) and the recording's events."""

    path: Path
    start_s: float
    length_s: float  # the recording's length as listed (BEANS "length" or the header's)
    annotations: tuple[Annotation, ...]  # all of the recording's (one tuple shared by its windows)


class DetectionDataset(Dataset):
    """Fixed windows of annotated recordings, BEANS style.

    Items: (audio float32 [S], frame targets float32 [T, C], window target float32 [C]) with
    S = window_s * sample_rate (the model's), T = ceil(S / 320) model frames (frame t covers
    [start + f t, start + f (t + 1)) s, f = 320 / sample_rate, labelled by `frame_targets`), the window target
    by BEANS's rule (`window_targets`). Windows per recording follow `window_starts` (BEANS:
    int((length - window) / hop) + 1); a window reaching past the end of the audio is
    zero-padded.

    source: a BEANS detection JSONL, or a folder of recordings (searched recursively) with an
    annotation file next to each (`find_annotation_table`: Raven table or Audacity labels,
    bmamba detect's own Raven table included). Recordings without one are skipped and listed in
    `skipped` (an empty table marks a recording without events); a CSV, or a folder where no
    recording has one, is a ValueError saying what to do (`layout.check_detection_source`). classes: default the sorted labels found; labels not among them
    map to `unknown_label` (BEANS's "OTHR"), added to the classes if missing. Training windows
    take the same augmentation as `ClassificationDataset` (gain, `BackgroundMixer`); backgrounds
    must hold none of the classes, since the targets stay as annotated.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        window_s: float = 2.0,
        hop_s: float = 1.0,
        classes: Sequence[str] | None = None,
        unknown_label: str | None = None,
        label_column: str | None = None,
        train: bool = False,
        gain_db: tuple[float, float] | None = None,
        backgrounds: Sequence[str | Path] = (),
        snr_db: tuple[float, float] = (0.0, 20.0),
        background_prob: float = 0.5,
        channel: int | None = None,
        seed: int = 0,
        sample_rate: int = SAMPLE_RATE,
    ):
        self.sample_rate = check_sample_rate(sample_rate)   # the model's: audio is decoded at it
        source = Path(source)
        check_detection_source(source)  # a CSV, or a folder without tables: say what to do
        self.skipped: list[Path] = []
        self._duration = _Durations()
        recordings = self._load(source, label_column)
        labels = sorted({a.label for _, _, events in recordings for a in events})
        if classes is None:
            classes = labels
        classes = list(classes)
        if unknown_label is not None and unknown_label not in classes:
            classes = sorted([*classes, unknown_label])
        if not classes:
            raise ValueError(f"{source}: no labelled events, so no classes (pass classes=...)")
        for label in labels:  # fail now, not in a worker
            class_index(classes, label, unknown_label)
        self.classes: list[str] = classes
        self.unknown_label = unknown_label
        self.window_s, self.hop_s = window_s, hop_s
        # Each window keeps its recording's annotations (one shared tuple per recording) and, in
        # the CSR arrays _offsets/_events, which of them can touch it (`events_by_window`), so a
        # window's targets cost its own annotations, not all of the recording's.
        self.windows: list[DetectionWindow] = []
        offsets, events_of_window = [np.zeros(1, dtype=np.int64)], []
        for path, length, events in recordings:
            events = tuple(events)
            starts = window_starts(length, window_s, hop_s)
            first, ids = events_by_window(events, starts, self._reach_s(window_s))
            offsets.append(first[1:] + offsets[-1][-1])
            events_of_window.append(ids)
            self.windows += [DetectionWindow(path, float(start), length, events) for start in starts]
        self._offsets = np.concatenate(offsets)
        self._events = np.concatenate(events_of_window) if events_of_window else np.zeros(0, dtype=np.int64)
        if not self.windows:
            raise ValueError(f"{source}: no window of {window_s} s fits any recording")
        self.train = train
        self.gain_db = gain_db
        self.mix = BackgroundMixer(backgrounds, snr_db, background_prob, self.sample_rate)
        self.channel = channel
        self.seed = seed
        self.epoch = 0

    def _load(self, source: Path, label_column: str | None) -> list[tuple[Path, float, list[Annotation]]]:
        if source.is_dir():
            out = []
            for recording in sorted(f for f in source.rglob("*") if is_audio(f)):
                table = find_annotation_table(recording)
                if table is None:
                    self.skipped.append(recording)
                    continue
                length = self._duration(recording)
                out.append((recording, length, read_annotations(table, label_column=label_column, duration_s=length)))
            if not out:
                raise ValueError(f"{source}: no recording with an annotation file next to it")
            return out
        return [(item.path, item.length_s, list(item.annotations)) for item in read_beans_jsonl(source)]

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations for this epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def n_frames(self) -> int:
        """Model frames per window: ceil(window samples / 320)."""
        return -(-_samples(self.window_s, self.sample_rate) // HOP)

    def _read(self, window: DetectionWindow) -> np.ndarray:
        n = _samples(self.window_s, self.sample_rate)
        # The listed length may differ a little from the decoded audio (BEANS lists lengths
        # of its resampled copies): read only what the file holds, pad the rest.
        available = min(self._duration(window.path), window.length_s) - window.start_s
        if available * self.sample_rate < 1:
            return np.zeros(n, dtype=np.float32)
        audio = read_audio(
            window.path, channel=self.channel, offset_s=window.start_s,
            duration_s=min(self.window_s, available), sample_rate=self.sample_rate,
        )
        return _fit(audio, n)

    def _reach_s(self, window_s: float) -> float:
        """How far past a window's start its targets look: the window, or its frames when
        ceil(window / frame) frames reach a little further."""
        return max(window_s, -(-_samples(window_s, self.sample_rate) // HOP) * frame_seconds(self.sample_rate))

    def window_annotations(self, index: int) -> list[Annotation]:
        """The annotations that overlap window ``index`` (from the time index, not a scan)."""
        w = self.windows[index]
        return [w.annotations[j] for j in self._events[self._offsets[index]:self._offsets[index + 1]]]

    def targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame targets [T, C], window target [C]) of a window, without reading audio."""
        w = self.windows[index]
        events = self.window_annotations(index)
        frames = frame_targets(events, self.n_frames, self.classes, offset_s=w.start_s,
                               frame_s=frame_seconds(self.sample_rate), unknown_label=self.unknown_label)
        window = window_targets(events, np.array([w.start_s]), self.window_s, self.classes,
                                unknown_label=self.unknown_label)[0]
        return frames, window

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        audio = self._read(self.windows[index])
        if self.train:  # targets are unchanged: a background adds none of the classes
            rng = np.random.default_rng((self.seed, self.epoch, index))
            audio = self.mix(_apply_gain(audio, self.gain_db, rng), rng)
        frames, window = self.targets(index)
        return (torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
                torch.from_numpy(frames), torch.from_numpy(window))


# --------------------------------------------------------------------------- batching


def collate_padded(batch: Sequence[tuple]) -> dict[str, torch.Tensor]:
    """Stack items of different lengths, zero-padding at the end.

    Classification items (audio [S], label) -> {"audio" [B, S_max], "lengths" [B] (samples),
    "labels" [B] int64}. Detection items (audio [S], frame targets [T, C], window target [C]) ->
    also {"frame_targets" [B, T_max, C], "frame_lengths" [B], "window_targets" [B, C]}.
    """
    if not batch:
        raise ValueError("empty batch")
    audio = [item[0] for item in batch]
    lengths = torch.tensor([len(a) for a in audio], dtype=torch.int64)
    out = {"audio": torch.nn.utils.rnn.pad_sequence(audio, batch_first=True), "lengths": lengths}
    if len(batch[0]) == 2:
        out["labels"] = torch.tensor([int(item[1]) for item in batch], dtype=torch.int64)
        return out
    frames = [item[1] for item in batch]
    out["frame_targets"] = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
    out["frame_lengths"] = torch.tensor([len(f) for f in frames], dtype=torch.int64)
    out["window_targets"] = torch.stack([item[2] for item in batch])
    return out
