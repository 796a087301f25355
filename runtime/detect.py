"""`bmamba detect`: recordings in, one event table per recording out, torch-free.

Per recording: the streaming reader (``biomamba.audio.iter_audio``, blocks of ``chunk_s``) feeds the
one chunk loop (``biomamba.streaming.StreamRunner``) of a backend; frame probabilities become events
incrementally (``EventTracker``); the table is written atomically; the resume journal records the
file. Nothing here holds more than one chunk of audio or probabilities, so memory does not grow
with recording length.

What a long unattended run must not do, and how it is kept from it: two recordings never share
an output (`plan_outputs` refuses before the start); model and option problems are found once,
before the first recording (`Detector.check`); a recording that changed while it was processed,
or a model that gave NaN/inf, is a failure with a reason, never a silent "done" or an empty
table; a short read by the decoder is a warning; `stop` (a signal) ends the current recording
without an output, and a journal that cannot be written ends the run, both with a summary.

Detection models (task ``detect``) give per-frame sigmoid probabilities. Clip classifiers (task
``classify``) are applied to consecutive windows of ``window_s`` (their frame logits pooled as the
model pools a clip -- mean, or attention-weighted -- then softmax; ``biomamba.scoring``), like
BirdNET's 3 s windows; each window is then one "frame" for the event tracker.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomamba.audio import AudioError, audio_info, iter_audio
from biomamba.data.layout import BACKGROUND_CLASS
from biomamba.metrics import prf_from_counts
from biomamba.scoring import WindowPooler, frame_seconds, frames_for, sigmoid, softmax
from biomamba.streaming import SAMPLE_RATE, StreamRunner

from .backend_api import Backend
from .batching import BatchingBackend
from .events import Event, EventTracker
from .journal import Journal, JournalError, changed_since, fingerprint
from .writers import EventFiles, OutputError, output_path, sibling_path, table_columns

JOURNAL_NAME = ".bmamba-journal.jsonl"
GPU_BATCH = 8          # recordings per call on a GPU backend when --batch is left to choose
PARITY_ONSET_TOLERANCE_S = 0.2


@dataclass
class DetectConfig:
    """What shapes the results (all of it goes into the resume journal's settings)."""

    chunk_s: float = 30.0
    threshold: float | None = None          # None: the model's per-class thresholds (manifest)
    threshold_off: float | None = None      # hysteresis; None: 0.8 x threshold
    min_duration_s: float = 0.1
    merge_gap_s: float = 0.2
    window_s: float = 3.0                   # classification models only
    fmt: str = "raven"
    out_dir: Path | None = None
    channel: int | None = None
    more_formats: tuple[str, ...] = ()      # written beside the fmt output (--format raven,csv)
    class_thresholds: dict[str, float] = field(default_factory=dict)   # over threshold, per class
    classes: tuple[str, ...] | None = None  # reported; None: all but BACKGROUND_CLASS
    min_score: float | None = None          # events whose score is below it are not reported

    @property
    def formats(self) -> tuple[str, ...]:
        return (self.fmt, *self.more_formats)

    def class_problem(self, model_classes) -> str | None:
        """Why --classes or a per-class --threshold names no class of the model, or None."""
        named = list(self.classes or ()) + list(self.class_thresholds)
        unknown = [c for c in dict.fromkeys(named) if c not in model_classes]
        if not unknown:
            return None
        return (f"the model has no class {', '.join(map(repr, unknown))}; its {len(model_classes)} "
                f"classes: {', '.join(model_classes)}")

    def check(self) -> None:
        """Raises ValueError naming the option for a value no recording can be run with."""
        for name, value in (("--threshold", self.threshold), ("--threshold-off", self.threshold_off),
                            *((f"--threshold {c}=", t) for c, t in self.class_thresholds.items())):
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise ValueError(f"--min-score must be between 0 and 1, not {self.min_score}")
        for name, value in (("--min-duration", self.min_duration_s), ("--merge-gap", self.merge_gap_s)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value}")
        for name, value in (("--chunk", self.chunk_s), ("--window", self.window_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive duration, not {value}")


@dataclass
class ParityCounts:
    """PyTorch-vs-backend agreement accumulated over files. ``frames`` counts the rows of
    probabilities compared, which are ``unit``: 20 ms frames, or windows for a clip classifier
    (the report keeps the key "frames" for both)."""

    unit: str = "frames"
    max_abs_diff: float = 0.0
    frames: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add_events(self, ours: list[Event], reference: list[Event]) -> None:
        from biomamba.metrics import event_prf

        r = event_prf(ours, reference, onset_tolerance_s=PARITY_ONSET_TOLERANCE_S)
        self.tp, self.fp, self.fn = self.tp + r["tp"], self.fp + r["fp"], self.fn + r["fn"]

    def summary(self) -> dict:
        if self.tp + self.fp + self.fn == 0:
            f1 = 1.0  # both found nothing: full agreement
        else:
            f1 = float(prf_from_counts(self.tp, self.fp, self.fn)["f1"])
        return {"max_abs_diff": self.max_abs_diff, "frames": self.frames, "unit": self.unit, "event_f1": f1,
                "events_backend": self.tp + self.fp, "events_torch": self.tp + self.fn,
                "onset_tolerance_s": PARITY_ONSET_TOLERANCE_S}


@dataclass
class FileResult:
    path: Path
    status: str      # "ok", "failed", "skipped" (done in an earlier run), "interrupted" (a signal)
    reason: str = ""
    audio_s: float = 0.0
    wall_s: float = 0.0
    events: int = 0
    output: Path | None = None
    warnings: list[str] = field(default_factory=list)   # e.g. the decoder's short read


class ModelOutputError(ValueError):
    """The model gave outputs no table can be made from (NaN/inf); names the file and the time."""


class Interrupted(Exception):
    """`Detector.stop` was set (a signal) while a recording was processed."""


def plan_outputs(found: Iterable[tuple[Path, Path | None]], out_dir: Path | None, fmt: str) -> dict[Path, Path]:
    """{recording: output} for (recording, root) pairs (root: the input folder it was found in, see
    `biomamba.audio.find_audio_with_roots`; None for a file named directly).

    Raises ValueError naming every pair of recordings that would write the same output
    (``siteA/x.wav`` and ``siteB/x.wav`` given as two folders, or ``x.wav`` and ``x.flac`` side
    by side): refused before the start, never "the last one wins".
    """
    outputs: dict[Path, Path] = {}
    owner: dict[str, Path] = {}
    clashes = []
    for recording, root in found:
        out = output_path(recording, out_dir, fmt, root)
        key = os.path.normpath(os.path.abspath(out))
        if key in owner:
            clashes.append(f"{owner[key]} and {recording} -> {out}")
        else:
            owner[key] = recording
        outputs[recording] = out
    if clashes:
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise ValueError(
            "two recordings would write the same output, and one table would overwrite the other: "
            + "; ".join(clashes[:3]) + more + ". Give their common parent folder as the input (the "
            "outputs then mirror its sub-folders under --out), or rename or move one of them")
    return outputs


class Scorer:
    """Backend outputs -> probabilities per scoring unit (frames of 320 samples at the model's
    ``sample_rate``, or windows for classifiers), with ``biomamba.scoring``: detect -> sigmoid per
    frame; classify -> each window's frame logits pooled as the model pools a clip (mean, or
    weighted by softmax of its ``attention`` output), then softmax. ``unit_s``: seconds per unit."""

    def __init__(self, task: str, window_s: float, sample_rate: int):
        self.task = task
        if task == "classify":
            frames = frames_for(window_s, sample_rate)
            self.pooler = WindowPooler(frames, frames)
            self.unit_s = frames * frame_seconds(sample_rate)
        elif task == "detect":
            self.pooler, self.unit_s = None, frame_seconds(sample_rate)
        else:
            raise ValueError(f"a {task!r} model gives no detections; use `bmamba embed`")

    def __call__(self, outputs: dict[str, np.ndarray], final: bool = False) -> np.ndarray:
        logits = outputs.get("logits")
        if self.pooler is None:
            return sigmoid(logits) if logits is not None else np.zeros((0, 0), np.float32)
        parts = [self.pooler.push(logits, outputs.get("attention"))[1]] if logits is not None else []
        if final:
            parts.append(self.pooler.flush()[1])
        parts = [p for p in parts if len(p)]
        return softmax(np.concatenate(parts)) if parts else np.zeros((0, 0), np.float32)


class Detector:
    """Runs recordings through a backend (and, with ``reference``, the PyTorch model beside it)."""

    def __init__(self, backend: Backend, manifest, config: DetectConfig, reference: Backend | None = None,
                 model_name: str = "model", batch: int = 1):
        """batch > 1: that many recordings run at a time (`run`), their chunks stacked into one
        call of ``backend`` by a ``BatchingBackend`` made here; ValueError with --parity."""
        if batch < 1:
            raise ValueError(f"--batch must be at least 1, not {batch}")
        if batch > 1 and reference is not None:
            raise ValueError("--parity runs recordings one at a time; leave --batch at 1")
        self.batch = batch
        self.backend = BatchingBackend(backend, batch) if batch > 1 else backend
        self.manifest, self.config, self.reference = manifest, config, reference
        self.model_name = model_name
        self.classes = list(manifest.classes)
        self.sample_rate = manifest.sample_rate   # recordings are decoded at the model's rate
        self.max_frames = frames_for(config.chunk_s, self.sample_rate)
        # TensorRT engines take at most the frames of their optimisation profile.
        self.max_frames = min(self.max_frames, backend.max_frames or self.max_frames)
        if config.threshold is not None:
            self.thresholds = np.full(len(self.classes), config.threshold, np.float32)
        else:
            self.thresholds = np.array([manifest.thresholds.get(c, 0.5) for c in self.classes], np.float32)
        for i, c in enumerate(self.classes):
            self.thresholds[i] = config.class_thresholds.get(c, self.thresholds[i])
        self.reported = reported_classes(self.classes, config.classes)
        unit = "windows" if manifest.task == "classify" else "frames"   # what `Scorer` gives
        self.parity = ParityCounts(unit) if reference is not None else None
        self.stop = threading.Event()   # set (by a signal handler) to end the current recording
        Scorer(manifest.task, config.window_s, self.sample_rate)   # fails early for an embedding model
        if reference is not None:   # and for a folder whose PyTorch model reads another rate
            reference.scorer(manifest.task, config.window_s, self.sample_rate)

    def check(self) -> None:
        """Finds model and option problems once, before the first recording (ValueError, naming
        the model): thresholds outside (0, 1), and a model whose outputs on one second of silence
        do not have one column per class of its manifest or are not finite."""
        config = self.config
        config.check()
        bad = [f"{c}={t}" for c, t in zip(self.classes, self.thresholds) if not 0 < t < 1]
        if bad:
            raise ValueError(f"model {self.model_name}: thresholds must be between 0 and 1: {', '.join(bad)}")
        runner = StreamRunner(self.backend.run_chunk, self.backend.initial_state(1), self.max_frames)
        outputs = [runner.push(np.zeros(self.sample_rate, np.float32)), runner.flush()]
        logits = [o["logits"] for o in outputs if "logits" in o]
        if not logits:
            raise ValueError(f"model {self.model_name}: the backend gives no 'logits' output")
        logits = np.concatenate(logits)
        if logits.ndim != 2 or logits.shape[-1] != len(self.classes):
            raise ValueError(
                f"model {self.model_name}: the model gives {logits.shape[-1] if logits.ndim else 0} "
                f"scores per frame but its manifest lists {len(self.classes)} classes "
                f"({', '.join(self.classes)}): the model folder is inconsistent")
        if not np.isfinite(logits).all():
            raise ValueError(f"model {self.model_name}: the model gives NaN or infinite scores on "
                             "silence; it is broken (re-export it)")

    def _tracker(self, unit_s: float) -> EventTracker:
        c = self.config
        off = None if c.threshold_off is None else np.minimum(c.threshold_off, self.thresholds)
        return EventTracker(self.classes, frame_s=unit_s, threshold=self.thresholds, threshold_off=off,
                            min_duration_s=c.min_duration_s, merge_gap_s=c.merge_gap_s)

    def process(self, path: Path, on_audio: Callable[[float], None] | None = None, out: Path | None = None,
                on_warning: Callable[[Path, str], None] | None = None) -> FileResult:
        """One recording into out (default: `output_path` without a root). Reader, model and
        writer errors become a failed result, never an exception; a set `stop` gives an
        "interrupted" result and no output. Reader warnings go to on_warning as they happen."""
        start = time.perf_counter()
        warnings: list[str] = []
        try:
            info = audio_info(path)
            out = out or output_path(path, self.config.out_dir, self.config.fmt)
            if self.config.out_dir is not None:
                out.parent.mkdir(parents=True, exist_ok=True)   # the mirrored sub-folder
            with EventFiles(out, self.config.formats, recording=path, sample_rate=info.sample_rate,
                            backend=self.backend.name, model=self.model_name,
                            channel=self.config.channel or 1) as file:
                audio_s = self._run(path, file, on_audio, warnings, on_warning)
                file.commit(audio_s)
        except Interrupted:
            return FileResult(path, "interrupted", f"{path}: interrupted; no output written",
                              wall_s=time.perf_counter() - start, warnings=warnings)
        except (AudioError, OutputError, ModelOutputError) as e:
            return FileResult(path, "failed", str(e), wall_s=time.perf_counter() - start, warnings=warnings)
        except OSError as e:
            return FileResult(path, "failed", f"{e.filename or path}: {e.strerror or e}",
                              wall_s=time.perf_counter() - start, warnings=warnings)
        except Exception as e:  # a backend failure on one file must not end a run of thousands
            return FileResult(path, "failed", f"{path}: {type(e).__name__}: {e}",
                              wall_s=time.perf_counter() - start, warnings=warnings)
        return FileResult(path, "ok", audio_s=audio_s, wall_s=time.perf_counter() - start,
                          events=file.count, output=out, warnings=warnings)

    def _run(self, path: Path, file: EventFiles, on_audio, warnings: list[str], on_warning) -> float:
        """Streams the recording through the model into file; returns its duration in seconds.
        Events go to the file as they become final: memory does not grow with their number
        (with --parity both event lists are kept, for the F1)."""
        runner = StreamRunner(self.backend.run_chunk, self.backend.initial_state(1), self.max_frames)
        rate = self.sample_rate
        scorer = Scorer(self.manifest.task, self.config.window_s, rate)
        tracker = self._tracker(scorer.unit_s)
        events: list[Event] = []

        min_score = self.config.min_score or 0.0

        def clipped(final: list[Event]) -> list[Event]:
            # Only the zero-padded last frame reaches past the audio read so far: clip to it.
            # Classes not reported, and scores under --min-score, are left out here.
            return [_clip(e, runner.buffer.samples_in / rate) for e in final
                    if e.label in self.reported and e.score >= min_score]

        def emit(final: list[Event]) -> None:
            final = clipped(final)
            file.add(final)
            if self.reference is not None:
                events.extend(final)

        if self.reference is not None:
            ref_runner = StreamRunner(self.reference.run_chunk, self.reference.initial_state(1), self.max_frames)
            # PyTorch's own probabilities (its pooling, its sigmoid): what the user of the model gets
            ref_scorer = self.reference.scorer(self.manifest.task, self.config.window_s, rate)
            ref_tracker, ref_events = self._tracker(scorer.unit_s), []

        def consume(out, ref_out, final=False):
            for name, value in out.items():
                if value.size == 0:
                    continue
                bad = ~np.isfinite(value).reshape(len(value), -1).all(axis=1)
                if bad.any():   # NaN compares below every threshold: it would read as "nothing found"
                    t = (runner.frames - len(value) + int(np.argmax(bad))) * frame_seconds(rate)
                    raise ModelOutputError(
                        f"{path}: the model gave NaN or infinite {name!r} at {t:.1f} s; no table was "
                        f"written (the model or its backend is broken; try --backend onnxruntime or --parity)")
            probs = scorer(out, final)
            if len(probs):
                emit(tracker.push(probs))
            if self.reference is not None:
                ref_probs = ref_scorer(ref_out, final)
                if len(ref_probs):
                    ref_events.extend(clipped(ref_tracker.push(ref_probs)))
                    self.parity.max_abs_diff = max(self.parity.max_abs_diff,
                                                   float(np.abs(probs - ref_probs).max()))
                    self.parity.frames += len(probs)

        told = 0

        def tell() -> None:   # reader warnings are said when they happen, not only at the end
            nonlocal told
            for message in warnings[told:]:
                if on_warning:
                    on_warning(path, message)
            told = len(warnings)

        for block in iter_audio(path, block_s=self.config.chunk_s, channel=self.config.channel,
                                warnings=warnings, sample_rate=rate):
            if self.stop.is_set():
                raise Interrupted
            consume(runner.push(block), self.reference and ref_runner.push(block))
            if on_audio:
                on_audio(len(block) / rate)
            tell()
        tell()
        if self.stop.is_set():
            raise Interrupted
        consume(runner.flush(), self.reference and ref_runner.flush(), final=True)
        emit(tracker.flush())
        if self.reference is not None:
            ref_events.extend(clipped(ref_tracker.flush()))
            self.parity.add_events(events, ref_events)
        return runner.buffer.samples_in / rate


def _clip(e: Event, duration_s: float) -> Event:
    """The last frame is zero-padded past the end of the recording; events end at the end."""
    if e.end_s <= duration_s:
        return e
    return Event(e.start_s, max(e.start_s, duration_s), e.label, e.score)


@dataclass
class RunSummary:
    """The `--report` of a run (DESIGN.md, Command-line contract)."""

    results: list[FileResult] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)   # inputs that gave no recording
    wall_s: float = 0.0
    backend: str = ""
    chunk_s: float = 0.0
    peak_gpu_mb: float | None = None
    parity: dict | None = None
    not_started: int = 0                 # recordings a stop (signal, journal error) left alone
    interrupted: str | None = None       # the signal that stopped the run, e.g. "SIGTERM"
    aborted: str | None = None           # why the run stopped early otherwise (the journal's error)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict:
        audio_s = sum(r.audio_s for r in self.results if r.status == "ok")
        busy = sum(r.wall_s for r in self.results if r.status != "skipped")
        return {
            "files": len(self.results) + self.not_started,
            "processed": sum(r.status == "ok" for r in self.results),
            "skipped": sum(r.status == "skipped" for r in self.results),
            "failed": len(self.failed) + len(self.problems),
            "failures": [{"file": str(r.path), "reason": r.reason} for r in self.failed]
                        + [{"file": i, "reason": why} for i, why in self.problems],
            "audio_s": round(audio_s, 3),
            "wall_s": round(self.wall_s, 3),
            # real-time factor as this project quotes it: seconds of audio per second of work
            "rtf": round(audio_s / busy, 1) if busy > 0 else None,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_gpu_mb": None if self.peak_gpu_mb is None else round(self.peak_gpu_mb, 1),
            "backend": self.backend,
            "chunk_s": self.chunk_s,
            "parity": self.parity,
            "warnings": [{"file": str(r.path), "message": m} for r in self.results for m in r.warnings],
            "not_processed": self.not_started + sum(r.status == "interrupted" for r in self.results),
            "interrupted": self.interrupted,
            "aborted": self.aborted,
            "recordings": [{"file": str(r.path), "status": r.status,
                            "output": None if r.output is None else str(r.output),
                            "audio_s": round(r.audio_s, 3), "events": r.events, "reason": r.reason,
                            "warnings": r.warnings} for r in self.results],
        }


# Peak memory grows with --chunk: measured 1.3 MB per second of chunk with the shipped model
# (peak RSS 183 MB at --chunk 60s, 898 MB at 600s, 2-core AMD EPYC, onnxruntime CPU); 1.5 leaves room.
# It is per 16 kHz of input: a 32 kHz model has twice the samples and frames per second.
MB_PER_CHUNK_S = 1.5


def chunk_memory_problem(chunk_s: float, available_mb: float, sample_rate: int = SAMPLE_RATE) -> str | None:
    """Why --chunk cannot run in available_mb of memory, or None. An estimate for models like the
    shipped one (wider models need more); results do not depend on --chunk, so a smaller one
    loses nothing."""
    per_s = MB_PER_CHUNK_S * sample_rate / SAMPLE_RATE
    need_mb = chunk_s * per_s
    if need_mb <= available_mb:
        return None
    fits = max(1, int(available_mb / per_s))
    return (f"--chunk {chunk_s:.0f}s needs about {need_mb / 1024:.1f} GB of memory for one chunk "
            f"({per_s:g} MB per second of chunk) but {available_mb / 1024:.1f} GB is available; "
            f"use --chunk {min(fits, 600)}s or less (results do not depend on --chunk)")


def default_batch(backend) -> int:
    """Batching helps a GPU (bigger calls); on a CPU one recording at a time is as fast (measured
    on this project's 2-core machine) and keeps memory lowest."""
    return GPU_BATCH if backend.name in ("onnxruntime-cuda", "tensorrt") else 1


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reported_classes(model_classes, chosen=None) -> frozenset[str]:
    """The classes detect reports: chosen (--classes), else all but BACKGROUND_CLASS (a
    classifier's "none of them" class, trained from BirdNET-style non-event folders)."""
    return frozenset(chosen) if chosen else frozenset(c for c in model_classes if c != BACKGROUND_CLASS)


def journal_settings(manifest, config: DetectConfig) -> dict:
    """What changes the output files; an entry recorded under other settings does not count.
    Settings added since the journal's first version appear only when they change something, so
    the journals of runs that do not use them stay valid; except the table columns, there to make
    again the tables that a version writing other columns left."""
    settings = {
        "model": manifest.source_sha256, "variant": manifest.variant, "precision": manifest.precision,
        "threshold": config.threshold, "threshold_off": config.threshold_off,
        "min_duration_s": config.min_duration_s, "merge_gap_s": config.merge_gap_s,
        "window_s": config.window_s, "format": config.fmt, "channel": config.channel,
        "out_dir": None if config.out_dir is None else str(Path(config.out_dir).resolve()),
    }
    if config.more_formats:
        settings["format"] = ",".join(config.formats)
    columns = table_columns(config.formats)
    if columns:
        settings["columns"] = columns
    if config.class_thresholds:
        settings["class_thresholds"] = dict(sorted(config.class_thresholds.items()))
    if config.min_score is not None:
        settings["min_score"] = config.min_score
    reported = reported_classes(manifest.classes, config.classes)
    if reported != set(manifest.classes):
        settings["classes"] = sorted(reported)
    return settings


def run(detector: Detector, files: Iterable[Path], journal: Journal | None = None,
        on_file_start: Callable[[Path], None] | None = None,
        on_file_done: Callable[[FileResult], None] | None = None,
        on_audio: Callable[[float], None] | None = None,
        outputs: dict[Path, Path] | None = None,
        on_warning: Callable[[Path, str], None] | None = None) -> RunSummary:
    """Process files; skip those the journal has; record each as it finishes.

    outputs: {recording: output} from `plan_outputs` (default: `output_path` without a root).
    A recording's size and modification time are taken before it is processed and compared after:
    one that changed (still growing, replaced, deleted) fails with the reason and is journaled
    under its old state, so a rerun processes it again. `detector.stop` (a signal) ends the current
    recording(s) without output and starts no other; a journal that cannot be written ends the run
    the same way (`summary.aborted`), since nothing done after it could be resumed.

    A detector built with batch > 1 runs that many recordings at a time, each in its own thread,
    their chunks run as one backend call (its ``BatchingBackend``); results are the same, in the
    same order.
    """
    summary = RunSummary(backend=detector.backend.name, chunk_s=detector.config.chunk_s)
    start = time.perf_counter()
    files = list(files)
    lock = threading.Lock()
    halt = threading.Event()

    def one(path: Path) -> FileResult | None:
        if halt.is_set() or detector.stop.is_set():
            return None
        if on_file_start:
            on_file_start(path)
        out = (outputs or {}).get(path) or output_path(path, detector.config.out_dir, detector.config.fmt)
        done = all(sibling_path(out, detector.config.fmt, f).exists() for f in detector.config.formats)
        if journal is not None and journal.is_done(path) and done:
            result = FileResult(path, "skipped", output=out)
        else:
            try:
                before = fingerprint(path)
            except OSError:
                before = None   # reading it says why
            result = _unchanged(detector.process(path, on_audio, out, on_warning), before)
            if journal is not None and result.status in ("ok", "failed"):
                with lock:
                    try:
                        journal.record(path, result.status, fingerprint=before or (-1, -1),
                                       reason=result.reason, audio_s=result.audio_s, events=result.events)
                    except JournalError as error:
                        summary.aborted = f"{error}; the run stopped, as what it did could not be resumed"
                        halt.set()
        if on_file_done:
            on_file_done(result)
        return result

    if detector.batch <= 1 or len(files) <= 1:
        results = [one(path) for path in files]
    else:
        results = _run_batched(detector.backend, files, one, detector.batch)
    summary.results = [r for r in results if r is not None]
    summary.not_started = len(results) - len(summary.results)
    summary.wall_s = time.perf_counter() - start
    if detector.parity is not None:
        summary.parity = detector.parity.summary()
    summary.peak_gpu_mb = detector.backend.peak_gpu_mb()
    return summary


def _unchanged(result: FileResult, before: tuple[int, int] | None) -> FileResult:
    """result, or a failure when the recording is no longer what was read (its table stays: it is
    right for what was read; the journal does not count it as done)."""
    why = changed_since(result.path, before) if result.status == "ok" else None
    if why is None:
        return result
    result.status = "failed"
    result.reason = (f"{result.path}: {why}; the table {result.output} holds what was read, but the recording is "
                     "not recorded as done, so the next run processes it again")
    return result


def _run_batched(batching: BatchingBackend, files: list[Path], one, batch: int) -> list[FileResult]:
    """`one(path)` for every file in `batch` threads, each a stream of the detector's batching
    backend."""
    from concurrent.futures import ThreadPoolExecutor

    def worker(path: Path) -> FileResult:
        batching.open_stream()
        try:
            return one(path)
        finally:
            batching.close_stream()

    with ThreadPoolExecutor(max_workers=batch) as pool:
        return list(pool.map(worker, files))
