"""`bmamba embed`: one embedding per window of each recording, streamed like detect.

The backend's per-frame embeddings (the encoder's final hidden states) are mean-pooled over
windows of ``window_s`` every ``hop_s`` (``biomamba.scoring.WindowPooler``); rows go to one ``embeddings.npy`` and
``index.csv`` (file, start_s, end_s, row) for the run. Memory holds one chunk of frames plus the
pooled rows (one per window: 8 h at 5 s windows is 5,760 rows).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomamba.audio import AudioError, iter_audio
from biomamba.scoring import WindowPooler, frame_seconds, frames_for
from biomamba.streaming import StreamRunner

from .writers import atomic_write_text


@dataclass
class EmbedResult:
    rows: list[tuple[str, float, float]] = field(default_factory=list)   # (file, start_s, end_s)
    vectors: list[np.ndarray] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    audio_s: float = 0.0


def embed_file(backend, path: Path, *, window_s: float, hop_s: float, sample_rate: int, chunk_s: float = 30.0,
               channel: int | None = None, on_audio: Callable[[float], None] | None = None):
    """(starts_s [k], ends_s [k], embeddings [k, D], audio seconds) of one recording, decoded at
    the model's ``sample_rate``."""
    window, hop = frames_for(window_s, sample_rate), frames_for(hop_s, sample_rate)
    runner = StreamRunner(backend.run_chunk, backend.initial_state(1), frames_for(chunk_s, sample_rate))
    pooler = WindowPooler(window, hop)
    starts, means = [], []

    def take(s, m):
        if len(s):
            starts.append(s)
            means.append(m)

    for block in iter_audio(path, block_s=chunk_s, channel=channel, sample_rate=sample_rate):
        out = runner.push(block)
        if out:
            take(*pooler.push(out["embeddings"]))
        if on_audio:
            on_audio(len(block) / sample_rate)
    out = runner.flush()
    if out:
        take(*pooler.push(out["embeddings"]))
    take(*pooler.flush())
    duration = runner.buffer.samples_in / sample_rate
    if not starts:
        return np.zeros(0), np.zeros(0), np.zeros((0, 0), np.float32), duration
    s = np.concatenate(starts) * frame_seconds(sample_rate)
    return s, np.minimum(s + window * frame_seconds(sample_rate), duration), np.concatenate(means), duration


def embed_files(backend, files: Iterable[Path], *, window_s: float, hop_s: float, sample_rate: int,
                chunk_s: float = 30.0, channel: int | None = None, on_file_start=None, on_audio=None) -> EmbedResult:
    result = EmbedResult()
    for path in files:
        if on_file_start:
            on_file_start(path)
        try:
            starts, ends, vecs, duration = embed_file(backend, path, window_s=window_s, hop_s=hop_s,
                                                      sample_rate=sample_rate, chunk_s=chunk_s, channel=channel,
                                                      on_audio=on_audio)
        except AudioError as e:
            result.failures.append((path, str(e)))
            continue
        except Exception as e:  # one bad file must not end the run
            result.failures.append((path, f"{path}: {type(e).__name__}: {e}"))
            continue
        result.audio_s += duration
        result.rows += [(str(path), float(a), float(b)) for a, b in zip(starts, ends)]
        if len(vecs):
            result.vectors.append(vecs)
    return result


def write_embeddings(out_dir: Path, result: EmbedResult) -> tuple[Path, Path]:
    """embeddings.npy [rows, D] float32 and index.csv (row, file, start_s, end_s), atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = np.concatenate(result.vectors) if result.vectors else np.zeros((0, 0), np.float32)
    npy = out_dir / "embeddings.npy"
    tmp = out_dir / ".embeddings.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, matrix.astype(np.float32), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, npy)
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["row", "file", "start_s", "end_s"])
    for i, (file, a, b) in enumerate(result.rows):
        w.writerow([i, file, f"{a:.3f}", f"{b:.3f}"])
    index = out_dir / "index.csv"
    atomic_write_text(index, text.getvalue())
    return npy, index
