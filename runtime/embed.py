"""`bmamba embed`: one embedding per window of each recording, streamed like detect.

The backend's per-frame embeddings (the encoder's final hidden states) are mean-pooled over
windows of ``window_s`` every ``hop_s`` (``biomamba.scoring.WindowPooler``); rows go to one
``embeddings.npy`` [rows, D] and ``index.csv`` (row, file, start_s, end_s) for the run.

A run over thousands of hours must not lose its work to a crash or a Ctrl-C at 90 %: each
recording's rows are written to a part file in ``OUT/.bmamba-embed-parts/`` as soon as it is done
(atomically), and recorded in the resume journal (``runtime.journal``, the one `bmamba detect`
uses). A rerun with the same settings (`embed_settings`) reuses the parts of recordings that are
unchanged on disk and embeds only the others; ``embeddings.npy`` is then assembled from the parts,
one at a time. Memory holds one chunk of frames and one recording's rows. Parts made under other
settings stay in the folder (their own names) until it is deleted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomamba.audio import AudioError, iter_audio
from biomamba.scoring import WindowPooler, frame_seconds, frames_for
from biomamba.streaming import StreamRunner

from .journal import Journal, JournalError, changed_since, fingerprint, settings_hash
from .writers import OutputError, atomic_write_text

PARTS_NAME = ".bmamba-embed-parts"
JOURNAL_NAME = ".bmamba-embed-journal.jsonl"


@dataclass
class EmbedResult:
    parts: list[tuple[Path, Path]] = field(default_factory=list)   # (recording, its part file), in order
    failures: list[tuple[Path, str]] = field(default_factory=list)
    reused: int = 0          # recordings whose part an earlier run left
    audio_s: float = 0.0
    stopped: str | None = None   # why the run ended early (the journal could not be written)


def embed_settings(model, backend_name: str, *, window_s: float, hop_s: float, chunk_s: float,
                   channel: int | None) -> dict:
    """What changes the rows: a part made under other settings is not reused."""
    return {"model": model.source_sha256, "variant": getattr(model, "variant", None),
            "precision": getattr(model, "precision", None), "sample_rate": model.sample_rate,
            "backend": backend_name, "window_s": window_s, "hop_s": hop_s, "chunk_s": chunk_s,
            "channel": channel}


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


def part_path(parts: Path, recording: Path, settings: dict) -> Path:
    """The part file of recording under settings: both in the name, so that runs with other
    settings, or of other recordings, never share one."""
    where = hashlib.sha256(os.fsencode(os.path.abspath(recording))).hexdigest()[:24]
    return parts / f"{settings_hash(settings)}-{where}.npz"


def embed_files(backend, files: Iterable[Path], *, parts: Path, settings: dict, window_s: float, hop_s: float,
                sample_rate: int, chunk_s: float = 30.0, channel: int | None = None,
                journal: Journal | None = None, on_file_start=None, on_audio=None) -> EmbedResult:
    """Embeds each recording into its part file under ``parts`` (made if absent); with a journal,
    a recording it holds as done under these settings, with its part intact, is not embedded
    again. A recording that fails (unreadable, or changed while it was read) is reported and the
    run goes on; it is journaled as failed, so the next run tries it again."""
    result = EmbedResult()
    parts.mkdir(parents=True, exist_ok=True)
    for path in files:
        part = part_path(parts, path, settings)
        earlier = _load_part(part, path) if journal is not None and journal.is_done(path) else None
        if earlier is not None:
            result.parts.append((path, part))
            result.reused += 1
            result.audio_s += earlier["audio_s"]
            continue
        if on_file_start:
            on_file_start(path)
        try:
            before = fingerprint(path)
        except OSError:
            before = None   # reading it says why
        try:
            starts, ends, vecs, duration = embed_file(backend, path, window_s=window_s, hop_s=hop_s,
                                                      sample_rate=sample_rate, chunk_s=chunk_s, channel=channel,
                                                      on_audio=on_audio)
            why = changed_since(path, before)
            if why is not None:
                raise AudioError(path, f"{why}; not kept, so the next run embeds it again")
            _save_part(part, path, starts, ends, vecs, duration)
        except AudioError as e:
            failure = str(e)
        except OutputError as e:
            failure = f"{path}: {e}"
        except Exception as e:  # one bad file must not end the run
            failure = f"{path}: {type(e).__name__}: {e}"
        else:
            failure = None
            result.parts.append((path, part))
            result.audio_s += duration
        if failure is not None:
            result.failures.append((path, failure))
        if journal is not None:
            info = {"reason": failure} if failure else {"rows": len(starts), "audio_s": duration}
            try:
                journal.record(path, "failed" if failure else "ok", fingerprint=before or (-1, -1), **info)
            except JournalError as error:   # nothing done after this could be resumed
                result.stopped = f"{error}; the run stopped, as what it did could not be resumed"
                break
    return result


def _save_part(part: Path, recording: Path, starts, ends, vectors, duration: float) -> None:
    """One recording's rows, atomically (a killed run leaves the old part or none, never half)."""
    temp = part.with_name(f".{part.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temp, "xb") as f:
            np.savez(f, starts=np.asarray(starts, np.float64), ends=np.asarray(ends, np.float64),
                     vectors=np.asarray(vectors, np.float32), audio_s=np.float64(duration),
                     recording=np.str_(os.path.abspath(recording)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, part)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {part}: {error.strerror or error}") from error


def _load_part(part: Path, recording: Path) -> dict | None:
    """The part's arrays, or None when it is missing, unreadable, of another recording, or
    inconsistent (then the recording is embedded again)."""
    try:
        with np.load(part, allow_pickle=False) as z:
            rows = {k: z[k] for k in ("starts", "ends", "vectors", "audio_s", "recording")}
    except Exception:   # missing, torn, not an npz, a field missing: all mean "embed it again"
        return None
    k = len(rows["starts"])
    if str(rows["recording"]) != os.path.abspath(recording) or rows["ends"].shape != (k,) \
            or rows["vectors"].ndim != 2 or (k and len(rows["vectors"]) != k):
        return None
    rows["audio_s"] = float(rows["audio_s"])
    return rows


def _read_back(part: Path, recording: Path) -> dict:
    rows = _load_part(part, recording)
    if rows is None:
        raise OutputError(f"cannot read {part} back (the rows of {recording})")
    return rows


def write_embeddings(out_dir: Path, result: EmbedResult) -> tuple[Path, Path, int]:
    """(embeddings.npy [rows, D] float32, index.csv (row, file, start_s, end_s), rows) from the
    run's parts, in the order of its recordings, each file written atomically; one part in memory
    at a time."""
    sizes, width = [], 0
    for recording, part in result.parts:
        rows = _read_back(part, recording)
        sizes.append(len(rows["starts"]))
        if len(rows["starts"]):
            if width and rows["vectors"].shape[1] != width:
                raise OutputError(f"{part}: {rows['vectors'].shape[1]} values a row, the others {width}")
            width = rows["vectors"].shape[1]
    npy = out_dir / "embeddings.npy"
    temp = out_dir / f".embeddings.npy.{uuid.uuid4().hex[:12]}.tmp"
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["row", "file", "start_s", "end_s"])
    try:
        if width:   # filled in place, part by part
            matrix = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=(sum(sizes), width))
            row = 0
            for (recording, part), k in zip(result.parts, sizes):
                if k:
                    rows = _read_back(part, recording)
                    matrix[row: row + k] = rows["vectors"]
                    for a, b in zip(rows["starts"], rows["ends"]):
                        w.writerow([row, str(recording), f"{a:.3f}", f"{b:.3f}"])
                        row += 1
            matrix.flush()
            del matrix
        else:   # no rows (a memory map cannot be empty)
            with open(temp, "xb") as f:
                np.save(f, np.zeros((0, 0), np.float32), allow_pickle=False)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, npy)
    except BaseException as error:   # a part that cannot be read back, a full disk, Ctrl-C
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {npy}: {error.strerror or error}") from error
        raise
    index = out_dir / "index.csv"
    atomic_write_text(index, text.getvalue())
    return npy, index, sum(sizes)
