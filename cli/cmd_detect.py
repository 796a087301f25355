"""`bmamba detect`: long recordings in, event tables out (DESIGN.md, Command-line contract)."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
from pathlib import Path

import typer

from .common import fail


def register(app: typer.Typer) -> None:
    @app.command()
    def detect(
        inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="Recordings, folders or globs."),
        model: Path = typer.Option(None, help="Exported model folder (default: the model shipped with bmamba)."),
        chunk: str = typer.Option("30s", help="Audio per model call: 30s, 2m, or plain seconds."),
        backend: str = typer.Option("auto", help="auto, onnxruntime, tensorrt or torch."),
        threshold: float = typer.Option(None, help="Detection threshold (default: the model's, usually 0.5)."),
        fmt: str = typer.Option("raven", "--format", help="raven, csv, json or audacity."),
        out: Path = typer.Option(None, help="Output folder (default: next to each recording)."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip recordings a previous run finished."),
        parity: bool = typer.Option(False, help="Also run the PyTorch model and report the agreement."),
        report: Path = typer.Option(None, help="Write a JSON summary of the run."),
        channel: int = typer.Option(None, min=1, help="Use only this channel (1 = first; default: mix to mono)."),
        min_duration: float = typer.Option(0.1, min=0.0, help="Drop events shorter than this (s)."),
        merge_gap: float = typer.Option(0.2, min=0.0, help="Merge events of a class closer than this (s)."),
        threshold_off: float = typer.Option(None, help="Hysteresis: an event ends below this (default 0.8 x threshold)."),
        window: str = typer.Option("3s", help="Window for clip-classification models."),
        threads: int = typer.Option(None, min=1, help="CPU threads for onnxruntime (default: all cores)."),
        plugin_lib: Path = typer.Option(None, "--plugin-lib", help="TensorRT plugin library (default: "
                                        "$BMAMBA_TRT_PLUGIN, else the one installed with bmamba)."),
        batch: int = typer.Option(None, min=1, help="Recordings run together, their chunks batched "
                                                    "(default: 8 on a GPU backend, 1 on a CPU)."),
        journal: Path = typer.Option(None, help="Resume journal (default: OUT/.bmamba-journal.jsonl or ./ without --out)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Detect events in recordings of any length, chunk by chunk with carried state.

        Writes <stem>.bmamba.<ext> per recording (under --out: mirroring the input folders' layout);
        a recording with nothing found still gets an (empty) table. Each failure is printed when it
        happens. SIGINT/SIGTERM: the current recording's output is dropped, the journal and the
        summary (and --report) are written. Exit status: 0 all processed, 1 some failed,
        2 bad usage, 130/143 stopped by SIGINT/SIGTERM.
        """
        from biomamba.audio import find_audio_with_roots
        from biomamba.runtime.backends import BackendError, open_backend
        from biomamba.runtime.detect import (
            JOURNAL_NAME,
            DetectConfig,
            Detector,
            RunSummary,
            chunk_memory_problem,
            default_batch,
            plan_outputs,
            run,
        )
        from biomamba.runtime.durations import DurationError, parse_duration
        from biomamba.runtime.journal import Journal, JournalError
        from biomamba.runtime.manifest import ManifestError
        from biomamba.runtime.models import describe_model
        from biomamba.runtime.writers import FORMATS, remove_stale_temps

        try:
            chunk_s = parse_duration(chunk, name="--chunk")
            window_s = parse_duration(window, name="--window")
        except DurationError as e:
            fail(str(e), usage=True)
        if fmt not in FORMATS:
            fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}", usage=True)
        config = DetectConfig(chunk_s=chunk_s, threshold=threshold, threshold_off=threshold_off,
                              min_duration_s=min_duration, merge_gap_s=merge_gap, window_s=window_s,
                              fmt=fmt, out_dir=out, channel=channel)
        try:
            config.check()
        except ValueError as e:
            fail(str(e), usage=True)
        memory = chunk_memory_problem(chunk_s, _available_mb())
        if memory:
            fail(memory, usage=True)
        cores = _cpu_count()
        if threads is not None and threads > cores:
            fail(f"--threads {threads}: this machine has {cores} CPU cores; use at most {cores}", usage=True)
        _check_report_path(report)

        found, problems = find_audio_with_roots(inputs)
        if not found:
            _write_report(report, RunSummary(problems=list(problems)).to_dict())
            fail("no recordings found: " + "; ".join(f"{i}: {why}" for i, why in problems), usage=True)
        for item, why in problems:   # named now, counted as failures in the summary
            typer.secho(f"bmamba: failed: {item}: {why}", err=True, fg=typer.colors.RED)
        try:
            outputs = plan_outputs(found, out, fmt)
        except ValueError as e:
            fail(str(e), usage=True)
        files = [path for path, _ in found]
        if out is not None:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                fail(f"--out {out}: cannot create the folder ({e.strerror})", usage=True)

        try:
            manifest, folder, name = describe_model(model, backend)
            engine = open_backend(folder, backend, threads=threads, plugin_lib=plugin_lib)
            reference = open_backend(folder, "torch") if parity else None
            batch = batch or (1 if parity else default_batch(engine))
            detector = Detector(engine, manifest, config, reference=reference, model_name=name, batch=batch)
            detector.check()   # model and option problems: once, before the first recording
        except (ManifestError, BackendError, ValueError) as e:
            fail(str(e), usage=True)

        journal_obj = None
        if resume:
            from biomamba.runtime.detect import journal_settings

            path = journal or (out or Path.cwd()) / JOURNAL_NAME
            try:
                journal_obj = Journal(path, journal_settings(manifest, config))
            except JournalError as e:
                fail(str(e), usage=True)
        removed = remove_stale_temps(outputs.values())
        if removed:
            typer.echo(f"bmamba: removed {len(removed)} unfinished temporary file(s) left by a stopped "
                       f"run, e.g. {removed[0]}", err=True)

        def on_done(result) -> None:   # each failure named when it happens, not only at the end
            if result.status == "failed":
                typer.secho(f"bmamba: failed: {result.reason}", err=True, fg=typer.colors.RED)

        def on_warning(path, message) -> None:
            typer.secho(f"bmamba: warning: {message}", err=True, fg=typer.colors.YELLOW)

        stopped = _StopOnSignal(detector.stop)
        try:
            with stopped:
                summary = _run_with_progress(
                    detector, files, journal_obj, quiet or not sys.stderr.isatty(),
                    functools.partial(run, outputs=outputs, on_warning=on_warning), on_done)
        finally:
            if journal_obj is not None:
                journal_obj.close()
        summary.problems = list(problems)
        summary.interrupted = stopped.name
        result = summary.to_dict()
        if summary.aborted:
            typer.secho(f"bmamba: error: {summary.aborted}", err=True, fg=typer.colors.RED)
        _print_summary(result)
        _write_report(report, result)
        if stopped.signum is not None:
            raise typer.Exit(128 + stopped.signum)
        raise typer.Exit(1 if result["failed"] or summary.aborted else 0)


class _StopOnSignal:
    """While active, SIGINT and SIGTERM set `stop` (the run ends the current recording without
    its output, then writes the journal and the summary); a second one stops at once."""

    def __init__(self, stop):
        self.stop, self.signum, self.name, self._previous = stop, None, None, {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:   # asked twice: do what the signal does by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum, self.name = signum, signal.Signals(signum).name
        self.stop.set()
        typer.echo(f"bmamba: {self.name}: stopping; the recording in progress gets no output, the journal "
                   "and the summary are written (send it again to stop at once)", err=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # signals reach the main thread only
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def _available_mb() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**20


def _check_report_path(report: Path | None) -> None:
    """--report must be a file in an existing folder: said before the run, not after hours."""
    if report is None:
        return
    if report.is_dir():
        fail(f"--report {report} is a folder; name a file, e.g. {report / 'run.json'}", usage=True)
    if not report.parent.is_dir():
        fail(f"--report {report}: the folder {report.parent} does not exist", usage=True)


def _write_report(report: Path | None, result: dict) -> None:
    if report is None:
        return
    from biomamba.runtime.writers import OutputError, atomic_write_text

    try:
        atomic_write_text(report, json.dumps(result, indent=2) + "\n")
    except OutputError as e:
        typer.secho(f"bmamba: error: --report: {e}", err=True, fg=typer.colors.RED)


def _run_with_progress(detector, files, journal, quiet: bool, run, on_done):
    if quiet:
        return run(detector, files, journal, on_file_done=on_done)
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from biomamba.audio import AudioError, audio_info

    durations = {}
    for f in files:
        try:
            durations[f] = audio_info(f).duration_s
        except AudioError:
            durations[f] = 0.0
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[speed]}"), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        total = progress.add_task(f"{len(files)} recordings", total=sum(durations.values()) or 1, speed="")
        current = progress.add_task("", total=1, speed="")
        elapsed = {"audio": 0.0}

        def on_start(path):
            progress.reset(current, total=durations.get(path) or 1, description=path.name[:40])

        def on_audio(seconds):
            elapsed["audio"] += seconds
            progress.advance(current, seconds)
            progress.advance(total, seconds)
            t = progress.tasks[total].elapsed or 1e-9
            progress.update(total, speed=f"{elapsed['audio'] / t:.0f}x real time, "
                                         f"{elapsed['audio'] / 3600 / t:.3f} audio h/s")

        def on_file_done(result):
            if result.status == "skipped":
                progress.advance(total, durations.get(result.path, 0.0))
            on_done(result)

        return run(detector, files, journal, on_file_start=on_start, on_file_done=on_file_done,
                   on_audio=on_audio)


def _print_summary(r: dict) -> None:
    parts = [f"{r['processed']} processed", f"{r['skipped']} skipped (done before)",
             f"{r['failed']} failed" + (" (named above)" if r["failed"] else "")]
    if r["not_processed"]:
        parts.append(f"{r['not_processed']} not processed ({r['interrupted'] or 'run stopped'}; a rerun does them)")
    if r["warnings"]:
        parts.append(f"{len(r['warnings'])} warning(s)")
    parts.append(f"{r['audio_s'] / 3600:.2f} h of audio in {r['wall_s']:.1f} s")
    if r["rtf"]:
        parts.append(f"{r['rtf']:g}x real time")
    parts.append(f"peak memory {r['peak_rss_mb']:.0f} MB")
    parts.append(f"backend {r['backend']}")
    typer.echo("bmamba detect: " + ", ".join(parts), err=True)
    if r["parity"]:
        p = r["parity"]
        typer.echo(f"parity vs PyTorch: max |dp| = {p['max_abs_diff']:.2e} over {p['frames']} frames, "
                   f"event F1 = {p['event_f1']:.3f} ({p['events_backend']} vs {p['events_torch']} events)",
                   err=True)
