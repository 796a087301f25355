"""Pre-training data: crops of recordings with their frame labels, and their batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...audio import SAMPLE_RATE, audio_info, read_audio
from ...streaming import CONTEXT, HOP

IGNORE = -100  # label of padded frames


class PretrainDataset(Dataset):
    """Crops of recordings with their frame labels.

    A recording of F label frames gives max(1, F // crop_frames) items; each item is a random
    crop of crop_frames frames (the whole recording when shorter), drawn from (seed, epoch, item).
    With ``min_crop_s`` the crop's length is drawn too, uniformly between min_crop_s and crop_s
    (HuBERT crops 2-15.6 s), so that the encoder sees contexts of many lengths.
    Items: (audio float32 [80 + 320 T]: the crop with its 80 samples of left context, zeros at the
    recording's start and past its end; labels int64 [T]).
    Without label files (``label_files=None``: a recipe that needs none, the distillation) the
    recordings' frame counts are given as ``frames`` and every label is IGNORE.
    """

    def __init__(self, files: Sequence[Path], label_files: Sequence[Path] | None, crop_s: float, seed: int = 0,
                 min_crop_s: float | None = None, frames: Sequence[int] | None = None,
                 sample_rate: int = SAMPLE_RATE):
        self.sample_rate = rate = sample_rate   # the model's: recordings are decoded at it
        self.files = list(files)
        self.label_files = None if label_files is None else list(label_files)
        if self.label_files is not None:
            frames = [int(np.load(p, mmap_mode="r").shape[0]) for p in self.label_files]
        if frames is None or len(frames) != len(self.files):
            raise ValueError("PretrainDataset needs a label file or a frame count per recording")
        self.frames = [int(n) for n in frames]
        self.durations = [audio_info(f).duration_s for f in self.files]
        self.crop = max(1, int(round(crop_s * rate / HOP)))
        self.min_crop = self.crop if min_crop_s is None else max(1, int(round(min_crop_s * rate / HOP)))
        if self.min_crop > self.crop:
            raise ValueError(f"the shortest crop ({min_crop_s} s) is longer than the crop ({crop_s} s)")
        self.items = [i for i, n in enumerate(self.frames) for _ in range(max(1, n // self.crop))]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.items[index]
        total = self.frames[f]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        length = int(rng.integers(self.min_crop, self.crop + 1)) if self.min_crop < self.crop else self.crop
        n = min(total, length)
        start = int(rng.integers(0, total - n + 1))
        begin, end = start * HOP - CONTEXT, (start + n) * HOP
        rate = self.sample_rate
        offset = max(begin, 0) / rate
        duration = None if end / rate >= self.durations[f] else end / rate - offset
        audio = read_audio(self.files[f], offset_s=offset, duration_s=duration, sample_rate=rate)[: end - max(begin, 0)]
        out = np.zeros(CONTEXT + n * HOP, np.float32)
        out[max(0, -begin) : max(0, -begin) + len(audio)] = audio
        if self.label_files is None:
            labels = np.full(n, IGNORE, np.int64)
        else:
            labels = np.asarray(np.load(self.label_files[f], mmap_mode="r")[start : start + n], dtype=np.int64)
        return torch.from_numpy(out), torch.from_numpy(labels)


def collate_pretrain(batch) -> dict[str, torch.Tensor]:
    """-> {"audio" [B, 80 + 320 T_max], "labels" [B, T_max] (IGNORE past each end), "frame_lengths" [B]}."""
    t_max = max(len(labels) for _, labels in batch)
    audio = torch.zeros(len(batch), CONTEXT + t_max * HOP)
    labels = torch.full((len(batch), t_max), IGNORE, dtype=torch.int64)
    for b, (a, y) in enumerate(batch):
        audio[b, : len(a)] = a
        labels[b, : len(y)] = y
    return {"audio": audio, "labels": labels,
            "frame_lengths": torch.tensor([len(y) for _, y in batch], dtype=torch.int64)}
