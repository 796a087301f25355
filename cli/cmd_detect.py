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

from .common import check_result_path, fail


def register(app: typer.Typer) -> None:
    @app.command()
    def detect(
        ctx: typer.Context,
        inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="Recordings, folders or globs."),
        model: Path = typer.Option(None, help="Exported model folder (default: the model shipped with bmamba)."),
        chunk: str = typer.Option("30s", help="Audio per model call: 30s, 2m, or plain seconds."),
        backend: str = typer.Option("auto", help="auto, onnxruntime, tensorrt or torch."),
        threshold: list[str] = typer.Option(
            None, help="Detection threshold: 0.6 (every class), \"CLASS=0.8\" (one class), or a file of "
                       "CLASS<TAB>NUMBER lines; repeat it to combine (default: the model's, usually 0.5)."),
        classes: Path = typer.Option(None, "--classes", help="File of class names, one per line: report only "
                                                             "these (default: all but 'background')."),
        min_score: float = typer.Option(None, help="Leave out events whose score (largest frame "
                                                   "probability) is below this."),
        fmt: str = typer.Option("raven", "--format", help="raven, csv, json or audacity; several: raven,csv."),
        combine: bool = typer.Option(False, "--combine", help="Also write one table for the whole run: "
                                     "OUT/bmamba.combined.<ext> (raven, csv, json)."),
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
        journal: Path = typer.Option(None, help="Resume journal (default: OUT/.bmamba-journal.jsonl; without "
                                                "--out, in the folder holding all the outputs)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Detect events in recordings of any length, chunk by chunk with carried state.

        Writes <stem>.bmamba.<ext> per recording (under --out: mirroring the input folders' layout);
        a recording with nothing found still gets an (empty) table. Each failure is printed when it
        happens. Starts with one line naming the model and its classes (and whether it is a
        demonstration model); ends with events per class. Raven tables: Score is the event's largest
        frame probability. SIGINT/SIGTERM: the current recording's output is dropped, the journal
        and the summary (and --report) are written. One run at a time per output folder: a second
        one stops at once. Exit status: 0 all processed, 1 some failed (or the model cannot be
        used), 2 bad usage (or another run is writing into an output folder), 130/143 stopped by
        SIGINT/SIGTERM.
        """
        from biomamba.audio import find_audio_with_roots
        from biomamba.runtime.backends import BACKENDS, BackendError, open_backend
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
        from biomamba.runtime.journal import Journal, JournalError, journal_folder
        from biomamba.runtime.manifest import ManifestError
        from biomamba.runtime.models import describe_model, model_folder, model_line
        from biomamba.runtime.writers import (
            COMBINED_FORMATS,
            parse_formats,
            remove_stale_temps,
            sibling_path,
        )

        try:
            chunk_s = parse_duration(chunk, name="--chunk")
            window_s = parse_duration(window, name="--window")
        except DurationError as e:
            fail(str(e), usage=True)
        if backend not in BACKENDS:   # a bad choice is bad usage; a backend that cannot start, a failed run
            fail(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}", usage=True)
        try:
            fmts = parse_formats(fmt)
        except ValueError as e:
            fail(str(e), usage=True)
        overall, per_class = _parse_thresholds(threshold)
        chosen = _read_classes(classes) if classes is not None else None
        config = DetectConfig(chunk_s=chunk_s, threshold=overall, threshold_off=threshold_off,
                              min_duration_s=min_duration, merge_gap_s=merge_gap, window_s=window_s,
                              fmt=fmts[0], out_dir=out, channel=channel, more_formats=fmts[1:],
                              class_thresholds=per_class, classes=chosen, min_score=min_score)
        try:
            config.check()
        except ValueError as e:
            fail(str(e), usage=True)
        cores = _cpu_count()
        if threads is not None and threads > cores:
            fail(f"--threads {threads}: this machine has {cores} CPU cores; use at most {cores}", usage=True)
        check_result_path(report, "--report", "json")

        found, problems = find_audio_with_roots(inputs)
        if not found:
            _write_report(report, RunSummary(problems=list(problems)).to_dict())
            fail("no recordings found: " + "; ".join(f"{i}: {why}" for i, why in problems), usage=True)
        for item, why in problems:   # named now, counted as failures in the summary
            typer.secho(f"bmamba: failed: {item}: {why}", err=True, fg=typer.colors.RED)
        try:
            outputs = plan_outputs(found, out, fmts[0])
        except ValueError as e:
            fail(str(e), usage=True)
        files = [path for path, _ in found]
        if out is not None:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                fail(f"--out {out}: cannot create the folder ({e.strerror})", usage=True)
        home = out or journal_folder(outputs.values())   # the journal's and the combined tables' folder
        journal_path = (journal or home / JOURNAL_NAME) if resume else None
        written_to = [o.parent for o in outputs.values()]
        if out is not None or combine:
            written_to.append(home)
        if journal_path is not None:
            written_to.append(journal_path.parent)
        every_output = [sibling_path(o, fmts[0], f) for o in outputs.values() for f in fmts]
        _check_side_files(report, journal_path, files, every_output, home if combine else None, fmts)
        _make_folders(written_to)
        _lock_folders(ctx, out, written_to)   # before the sweep of temporary files and the journal

        try:
            manifest, folder, name = describe_model(model, backend)
        except ManifestError as e:   # bad usage if the named path does not exist; else a failed run
            fail(str(e), usage=model is not None and not model_folder(model).exists())
        memory = chunk_memory_problem(chunk_s, _available_mb(), manifest.sample_rate)
        if memory:
            fail(memory, usage=True)
        problem = config.class_problem(manifest.classes)
        if problem:
            fail(f"{'--classes ' + str(classes) if chosen else '--threshold'}: {problem}", usage=True)
        if parity and batch is not None and batch > 1:
            fail("--parity runs recordings one at a time; leave --batch at 1", usage=True)
        try:
            engine = open_backend(folder, backend, threads=threads, plugin_lib=plugin_lib)
            reference = open_backend(folder, "torch") if parity else None
            batch = batch or (1 if parity else default_batch(engine))
            detector = Detector(engine, manifest, config, reference=reference, model_name=name, batch=batch)
            detector.check()   # model and option problems: once, before the first recording
        except (ManifestError, BackendError, ValueError) as e:
            fail(str(e))
        typer.echo("bmamba: " + model_line(name, folder, manifest.task, manifest.classes, detector.reported,
                                        manifest.sample_rate),
                   err=True)

        journal_obj = None
        if resume:
            from biomamba.runtime.detect import journal_settings

            try:
                journal_obj = Journal(journal_path, journal_settings(manifest, config))
            except JournalError as e:
                fail(str(e), usage=True)
        removed = remove_stale_temps(every_output)
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
        done = [(r.path, r.output, r.audio_s) for r in summary.results if r.status in ("ok", "skipped")]
        result["classes"] = _class_summary(done, config.fmt)
        result["combined"] = _combine(done, config.formats, home) if combine else {}
        _print_summary(result)
        _print_classes(result["classes"], len(done))
        _write_report(report, result)
        if stopped.signum is not None:
            raise typer.Exit(128 + stopped.signum)
        combine_failed = combine and len(result["combined"]) < len(set(fmts) & set(COMBINED_FORMATS))
        raise typer.Exit(1 if result["failed"] or summary.aborted or combine_failed else 0)


def _lock_folders(ctx: typer.Context, out: Path | None, folders: list[Path]) -> None:
    """`FolderLocks` on the folders the run writes to, held until the command ends (the context
    releases them when it closes, also on an error or Ctrl-C), so that no other `bmamba detect`
    writes into them or sweeps their temporary files meanwhile. One holds one of them already: bad
    usage, said at once."""
    from biomamba.runtime.folder_lock import FolderBusy, FolderLocks

    try:
        ctx.with_resource(FolderLocks(folders))
    except FolderBusy as e:
        mine = out is not None and os.path.realpath(e.folder) == os.path.realpath(out)
        fail(f"{'--out ' if mine else ''}{e.folder}: another bmamba detect ({e.holder}) is writing there; "
             f"wait for it or {'choose another' if out is not None else 'give this run its own'} --out",
             usage=True)


def _parse_thresholds(values: list[str] | None) -> tuple[float | None, dict[str, float]]:
    """--threshold values -> (the threshold of every class or None, {class: threshold}).
    Each value: a number, CLASS=NUMBER, or a file of CLASS<TAB>NUMBER (or CLASS,NUMBER) lines;
    later values win. Bounds are checked with the other options (`DetectConfig.check`)."""
    overall, per_class = None, {}
    for value in values or []:
        if "=" in value:
            name, _, number = value.rpartition("=")
            per_class[name.strip()] = _number(number, f"--threshold {value!r}")
        elif _is_number(value):
            overall = float(value)
        elif Path(value).is_file():
            per_class.update(_read_threshold_file(Path(value)))
        else:
            fail(f"--threshold {value!r}: give a number (0.6), \"CLASS=NUMBER\", or a file of "
                 "CLASS<TAB>NUMBER lines (no such file)", usage=True)
    return overall, per_class


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(text: str, where: str) -> float:
    if not _is_number(text.strip()):
        fail(f"{where}: {text.strip()!r} is not a number", usage=True)
    return float(text)


def _read_lines(path: Path, option: str) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty lines of a small text file that are not # comments."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        fail(f"{option} {path}: no such file", usage=True)
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{option} {path}: cannot read it ({getattr(e, 'strerror', None) or e})")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def _read_threshold_file(path: Path) -> dict[str, float]:
    out = {}
    for number, line in _read_lines(path, "--threshold"):
        sep = "\t" if "\t" in line else ","
        name, found, value = line.rpartition(sep)
        if not found or not name.strip():
            fail(f"--threshold {path}, line {number}: {line!r} is not CLASS<TAB>NUMBER", usage=True)
        out[name.strip()] = _number(value, f"--threshold {path}, line {number}")
    return out


def _read_classes(path: Path) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(line for _, line in _read_lines(path, "--classes")))
    if not names:
        fail(f"--classes {path}: the file names no class (one class per line)", usage=True)
    return names


def _class_summary(done, fmt: str) -> list[dict]:
    """Per class over the recordings done (this run's and those an earlier run did), read back
    from their tables, so that a resumed run's summary counts every recording."""
    from biomamba.runtime.events import ClassSummary
    from biomamba.runtime.writers import read_events

    summary = ClassSummary()
    for _, table, _ in done:
        try:
            summary.add_recording(read_events(table, fmt))
        except (OSError, ValueError, KeyError) as e:
            typer.secho(f"bmamba: warning: {table}: not counted in the summary ({e})", err=True,
                        fg=typer.colors.YELLOW)
    return summary.rows()


def _combine(done, fmts: tuple[str, ...], folder: Path) -> dict[str, str]:
    """The run's combined tables (`write_combined`), one per format but audacity; {format: path}."""
    from biomamba.audio import AudioError, audio_info
    from biomamba.runtime.writers import (
        COMBINED_FORMATS,
        OutputError,
        combined_path,
        sibling_path,
        write_combined,
    )

    durations = []
    for recording, _, audio_s in done:
        try:
            durations.append(audio_info(recording).duration_s)
        except AudioError:
            durations.append(audio_s)
    written = {}
    for fmt in fmts:
        if fmt not in COMBINED_FORMATS:
            typer.echo(f"bmamba: --combine: no combined {fmt} file (an Audacity label track belongs to "
                       "one recording)", err=True)
            continue
        path = combined_path(folder, fmt)
        tables = [(rec, sibling_path(table, fmts[0], fmt), d) for (rec, table, _), d in zip(done, durations)]
        try:
            events = write_combined(path, fmt, tables)
        except (OutputError, OSError, ValueError, KeyError) as e:
            typer.secho(f"bmamba: error: --combine: {e}", err=True, fg=typer.colors.RED)
            continue
        typer.echo(f"bmamba: combined table: {path} ({events} events, {len(tables)} recordings)", err=True)
        written[fmt] = str(path)
    return written


def _print_classes(rows: list[dict], recordings: int) -> None:
    """Events per class, as a table on stderr (stdout stays free for pipes)."""
    if not rows:
        typer.echo(f"bmamba detect: no events in {recordings} recording(s)", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"events per class, {recordings} recording(s)")
    for name, justify in (("class", "left"), ("events", "right"), ("total duration", "right"),
                          ("recordings", "right")):
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(row["class"], str(row["events"]), f"{row['duration_s']:.1f} s", str(row["recordings"]))
    Console(stderr=True, width=max(100, len(max((r["class"] for r in rows), key=len)) + 50)).print(table)


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


def _check_side_files(report: Path | None, journal: Path | None, recordings: list[Path], outputs: list[Path],
                      combined_folder: Path | None, fmts: tuple[str, ...]) -> None:
    """--report and the journal must be files of their own: not one of the run's recordings, not
    one of its outputs (every format) or combined tables, not each other. Else one replaces the
    other: the report written over a recording at the end, a table written over the journal. Bad
    usage, said before the run. Names are compared resolved (``./x``, a symbolic link); a hard link
    to a recording is caught by what the file holds (`check_result_path`, `Journal`)."""
    from biomamba.runtime.writers import COMBINED_FORMATS, combined_path

    taken: dict[str, str] = {}
    for path in recordings:
        taken.setdefault(os.path.realpath(path), f"the recording {path}")
    for path in outputs:
        taken.setdefault(os.path.realpath(path), f"the output {path}")
    if combined_folder is not None:
        for fmt in set(fmts) & set(COMBINED_FORMATS):
            path = combined_path(combined_folder, fmt)
            taken.setdefault(os.path.realpath(path), f"the combined table {path}")
    if journal is not None:
        _refuse_clash("--journal", journal, taken)
        taken[os.path.realpath(journal)] = f"the journal {journal}"
    if report is not None:
        _refuse_clash("--report", report, taken)


def _refuse_clash(option: str, path: Path, taken: dict[str, str]) -> None:
    clash = taken.get(os.path.realpath(path))
    if clash:
        fail(f"{option} {path}: that is {clash} of this run, and one would overwrite the other; "
             "name another file", usage=True)


def _make_folders(folders: list[Path]) -> None:
    """Makes the output folders now, before they are locked: a folder made later, when its first
    table is written, would be unlocked meanwhile, open to a run whose --out is inside this run's
    (``--out X`` and ``--out X/site``). One that cannot be made is left to report its own error
    when written to."""
    for folder in dict.fromkeys(folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass


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
        typer.echo(f"parity vs PyTorch: max |dp| = {p['max_abs_diff']:.2e} over {p['frames']} {p['unit']}, "
                   f"event F1 = {p['event_f1']:.3f} ({p['events_backend']} vs {p['events_torch']} events)",
                   err=True)
