"""`bmamba detect`: long recordings in, event tables out (DESIGN.md, Command-line contract)."""

from __future__ import annotations

import functools
import json
import sys
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

        Writes <stem>.bmamba.<ext> per recording; a recording with nothing found still gets an (empty) table.
        Exit status: 0 all processed, 1 some failed, 2 bad usage.
        """
        from biomamba.audio import find_audio
        from biomamba.runtime.backends import BackendError, open_backend
        from biomamba.runtime.detect import JOURNAL_NAME, DetectConfig, Detector, default_batch, run
        from biomamba.runtime.durations import DurationError, parse_duration
        from biomamba.runtime.journal import Journal, JournalError
        from biomamba.runtime.manifest import ManifestError
        from biomamba.runtime.models import describe_model
        from biomamba.runtime.writers import FORMATS

        try:
            chunk_s = parse_duration(chunk, name="--chunk")
            window_s = parse_duration(window, name="--window")
        except DurationError as e:
            fail(str(e), usage=True)
        if fmt not in FORMATS:
            fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}", usage=True)
        if threshold is not None and not 0 < threshold < 1:
            fail("--threshold must be between 0 and 1", usage=True)
        files, problems = find_audio(inputs)
        if not files:
            fail("no recordings found: " + "; ".join(f"{i}: {why}" for i, why in problems), usage=True)
        if out is not None:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                fail(f"--out {out}: cannot create the folder ({e.strerror})", usage=True)

        try:
            manifest, folder, name = describe_model(model, backend)
            engine = open_backend(folder, backend, threads=threads, plugin_lib=plugin_lib)
            reference = open_backend(folder, "torch") if parity else None
            config = DetectConfig(chunk_s=chunk_s, threshold=threshold, threshold_off=threshold_off,
                                  min_duration_s=min_duration, merge_gap_s=merge_gap, window_s=window_s,
                                  fmt=fmt, out_dir=out, channel=channel)
            detector = Detector(engine, manifest, config, reference=reference, model_name=name)
        except (ManifestError, BackendError, ValueError) as e:
            fail(str(e), usage=True)
        batch = batch or default_batch(engine)
        if batch > 1 and (parity or backend == "torch"):
            fail("--batch needs the onnxruntime or tensorrt backend and no --parity", usage=True)

        journal_obj = None
        if resume:
            from biomamba.runtime.detect import journal_settings

            path = journal or (out or Path.cwd()) / JOURNAL_NAME
            try:
                journal_obj = Journal(path, journal_settings(manifest, config))
            except JournalError as e:
                fail(str(e), usage=True)

        try:
            summary = _run_with_progress(detector, files, journal_obj, quiet or not sys.stderr.isatty(),
                                         functools.partial(run, batch=batch))
        finally:
            if journal_obj is not None:
                journal_obj.close()
        summary.problems = list(problems)
        result = summary.to_dict()
        for failure in result["failures"]:
            typer.secho(f"bmamba: failed: {failure['reason']}", err=True, fg=typer.colors.RED)
        _print_summary(result)
        if report:
            report.write_text(json.dumps(result, indent=2) + "\n")
        raise typer.Exit(1 if result["failed"] else 0)


def _run_with_progress(detector, files, journal, quiet: bool, run):
    if quiet:
        return run(detector, files, journal)
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

        def on_done(result):
            if result.status == "skipped":
                progress.advance(total, durations.get(result.path, 0.0))

        return run(detector, files, journal, on_file_start=on_start, on_file_done=on_done, on_audio=on_audio)


def _print_summary(r: dict) -> None:
    parts = [f"{r['processed']} processed", f"{r['skipped']} skipped (done before)", f"{r['failed']} failed",
             f"{r['audio_s'] / 3600:.2f} h of audio in {r['wall_s']:.1f} s"]
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
