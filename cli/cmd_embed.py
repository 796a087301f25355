"""`bmamba embed`: one embedding per window, to embeddings.npy + index.csv; resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail


def register(app: typer.Typer) -> None:
    @app.command()
    def embed(
        ctx: typer.Context,
        inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="Recordings, folders or globs."),
        model: Path = typer.Option(None, help="Exported model folder (default: the model shipped with bmamba)."),
        window: str = typer.Option("5s", help="Window length: 5s, 1m, or plain seconds."),
        hop: str = typer.Option("5s", help="Step between windows."),
        chunk: str = typer.Option("30s", help="Audio per model call."),
        backend: str = typer.Option("auto", help="auto, onnxruntime, tensorrt or torch."),
        out: Path = typer.Option(Path("embeddings"), help="Output folder for embeddings.npy and index.csv."),
        channel: int = typer.Option(None, min=1, help="Use only this channel (1 = first)."),
        threads: int = typer.Option(None, min=1, help="CPU threads for onnxruntime."),
        resume: bool = typer.Option(True, "--resume/--no-resume",
                                    help="Reuse what an earlier run with the same settings embedded into --out."),
    ) -> None:
        """Embed recordings: the mean of the encoder's frame embeddings over each window.

        Each recording's rows are kept in OUT as soon as it is done, so a stopped run loses at
        most the recording in progress: run the same command again to go on.

        Exit status: 0 all processed, 1 some failed, 2 bad usage, 130 stopped (Ctrl-C).
        """
        from biomamba.audio import find_audio
        from biomamba.runtime.backends import BackendError, open_backend
        from biomamba.runtime.durations import DurationError, parse_duration
        from biomamba.runtime.embed import (
            JOURNAL_NAME,
            PARTS_NAME,
            embed_files,
            embed_settings,
            part_path,
            write_embeddings,
        )
        from biomamba.runtime.folder_lock import FolderBusy, FolderLocks
        from biomamba.runtime.journal import Journal, JournalError
        from biomamba.runtime.manifest import ManifestError
        from biomamba.runtime.models import builtin_models, describe_model, model_folder
        from biomamba.runtime.writers import OutputError, remove_stale_temps

        try:
            window_s, hop_s = parse_duration(window, name="--window"), parse_duration(hop, name="--hop")
            chunk_s = parse_duration(chunk, name="--chunk")
        except DurationError as e:
            fail(str(e), usage=True)
        files, problems = find_audio(inputs)
        if not files:
            fail("no recordings found: " + "; ".join(f"{i}: {why}" for i, why in problems), usage=True)
        if model is not None and not model_folder(model).exists():   # a folder, or a built-in model's name
            fail(f"--model {model}: no such model folder (built-in models: {', '.join(builtin_models())})",
                 usage=True)
        try:   # now, not after hours of work that could then not be written
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            fail(f"--out {out}: cannot make the folder ({e.strerror})", usage=True)
        try:   # held until the command ends: one run at a time writes its parts and journal
            ctx.with_resource(FolderLocks([out]))
        except FolderBusy as e:
            fail(f"--out {out}: another bmamba run ({e.holder}) is writing there; wait for it or choose another "
                 "--out", usage=True)
        try:  # the folder is there but is no usable model, or the backend cannot run here: a failed run
            described, folder, _ = describe_model(model, backend)
            engine = open_backend(folder, backend, threads=threads)
        except (ManifestError, BackendError, ValueError) as e:
            fail(str(e))
        settings = embed_settings(described, engine.name, window_s=window_s, hop_s=hop_s, chunk_s=chunk_s,
                                  channel=channel)
        # what a killed run was writing (the folder is ours now: locked)
        remove_stale_temps([out / "embeddings.npy", out / "index.csv",
                            *(part_path(out / PARTS_NAME, f, settings) for f in files)])
        try:
            journal = ctx.with_resource(Journal(out / JOURNAL_NAME, settings)) if resume else None
        except JournalError as e:
            fail(str(e))
        try:
            result = embed_files(engine, files, parts=out / PARTS_NAME, settings=settings, journal=journal,
                                 window_s=window_s, hop_s=hop_s, chunk_s=chunk_s, channel=channel,
                                 sample_rate=described.sample_rate)
        except KeyboardInterrupt:
            typer.secho(f"bmamba: stopped; the recordings done are kept in {out}: run the same command again to "
                        "go on", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(130) from None
        except OSError as e:   # the parts folder cannot be made
            fail(f"--out {out}: cannot write the embeddings ({e.strerror}: {e.filename})")
        for _path, why in result.failures:
            typer.secho(f"bmamba: failed: {why}", err=True, fg=typer.colors.RED)
        for i, why in problems:
            typer.secho(f"bmamba: {i}: {why}", err=True, fg=typer.colors.YELLOW)
        if result.stopped:
            fail(result.stopped)
        try:
            npy, index, rows = write_embeddings(out, result)
        except OutputError as e:
            fail(f"--out {out}: {e}")
        reused = f", {result.reused} of them from an earlier run" if result.reused else ""
        typer.echo(f"bmamba embed: {rows} windows from {len(result.parts)} recordings"
                   f"{reused} ({result.audio_s / 3600:.2f} h) -> {npy}, {index}", err=True)
        raise typer.Exit(1 if result.failures or problems else 0)
