"""`bmamba embed`: one embedding per window, to embeddings.npy + index.csv."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail


def register(app: typer.Typer) -> None:
    @app.command()
    def embed(
        inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="Recordings, folders or globs."),
        model: Path = typer.Option(None, help="Exported model folder (default: the model shipped with bmamba)."),
        window: str = typer.Option("5s", help="Window length: 5s, 1m, or plain seconds."),
        hop: str = typer.Option("5s", help="Step between windows."),
        chunk: str = typer.Option("30s", help="Audio per model call."),
        backend: str = typer.Option("auto", help="auto, onnxruntime, tensorrt or torch."),
        out: Path = typer.Option(Path("embeddings"), help="Output folder for embeddings.npy and index.csv."),
        channel: int = typer.Option(None, min=1, help="Use only this channel (1 = first)."),
        threads: int = typer.Option(None, min=1, help="CPU threads for onnxruntime."),
    ) -> None:
        """Embed recordings: the mean of the encoder's frame embeddings over each window.

        Exit status: 0 all processed, 1 some failed, 2 bad usage.
        """
        from biomamba.audio import find_audio
        from biomamba.runtime.backends import BackendError, open_backend
        from biomamba.runtime.durations import DurationError, parse_duration
        from biomamba.runtime.embed import embed_files, write_embeddings
        from biomamba.runtime.manifest import ManifestError
        from biomamba.runtime.models import describe_model
        from biomamba.runtime.writers import OutputError

        try:
            window_s, hop_s = parse_duration(window, name="--window"), parse_duration(hop, name="--hop")
            chunk_s = parse_duration(chunk, name="--chunk")
        except DurationError as e:
            fail(str(e), usage=True)
        files, problems = find_audio(inputs)
        if not files:
            fail("no recordings found: " + "; ".join(f"{i}: {why}" for i, why in problems), usage=True)
        if model is not None and not model.exists():
            fail(f"--model {model}: no such model folder", usage=True)
        try:   # now, not after hours of work that could then not be written
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            fail(f"--out {out}: cannot make the folder ({e.strerror})", usage=True)
        try:  # the folder is there but is no usable model, or the backend cannot run here: a failed run
            described, folder, _ = describe_model(model, backend)
            engine = open_backend(folder, backend, threads=threads)
        except (ManifestError, BackendError, ValueError) as e:
            fail(str(e))
        result = embed_files(engine, files, window_s=window_s, hop_s=hop_s, chunk_s=chunk_s, channel=channel,
                             sample_rate=described.sample_rate)
        try:
            npy, index = write_embeddings(out, result)
        except OSError as e:
            fail(f"--out {out}: cannot write the embeddings ({e.strerror}: {e.filename})")
        except OutputError as e:
            fail(f"--out {out}: cannot write the embeddings ({e})")
        for _path, why in result.failures:
            typer.secho(f"bmamba: failed: {why}", err=True, fg=typer.colors.RED)
        for i, why in problems:
            typer.secho(f"bmamba: {i}: {why}", err=True, fg=typer.colors.YELLOW)
        typer.echo(f"bmamba embed: {len(result.rows)} windows from {len(files) - len(result.failures)} "
                   f"recordings ({result.audio_s / 3600:.2f} h) -> {npy}, {index}", err=True)
        raise typer.Exit(1 if result.failures or problems else 0)
