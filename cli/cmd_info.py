"""`bmamba info`: what a checkpoint or an exported folder holds, without loading torch;
`bmamba models` (= `bmamba info --list`): the models shipped with bmamba."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import fail


def register(app: typer.Typer) -> None:
    @app.command()
    def info(
        model: Path = typer.Argument(None, help="A checkpoint folder, an exported folder, a run folder, "
                                                "or the name of a built-in model (`bmamba models`)."),
        as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON."),
        list_models: bool = typer.Option(False, "--list", help="List the built-in models (= `bmamba models`)."),
    ) -> None:
        """Print the metadata and the classes of a model: a checkpoint, an exported folder, or a
        built-in model by name (`bmamba info default`)."""
        if list_models:
            _list_models(as_json)
            return
        if model is None:
            fail("name a model: a folder, or a built-in model (`bmamba models` lists them)", usage=True)
        from biomamba.info import InfoError, describe
        from biomamba.runtime.models import builtin_models, demonstration_note, model_folder

        folder = model_folder(model)
        if not folder.exists():
            fail(f"{model}: no such file, folder or built-in model (built-in: "
                 f"{', '.join(builtin_models()) or 'none'})", usage=True)
        try:
            meta = describe(folder)
        except InfoError as e:
            fail(str(e))
        note = demonstration_note(folder if folder.is_dir() else folder.parent)
        if as_json:
            typer.echo(json.dumps(meta, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        console = Console()
        table = Table(title=str(model), show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in meta.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value) if len(json.dumps(value)) < 120 else json.dumps(value)[:117] + "..."
            table.add_row(key, str(value))
        console.print(table)
        classes = meta.get("export.classes") or meta.get("classes") or []
        if classes:
            thresholds = meta.get("export.thresholds") or {}
            listing = Table(title=f"{len(classes)} classes", show_header=True)
            listing.add_column("#", justify="right")
            listing.add_column("class")
            if thresholds:
                listing.add_column("threshold", justify="right")
            for i, name in enumerate(classes, 1):
                row = [str(i), name] + ([f"{thresholds.get(name, 0.5):g}"] if thresholds else [])
                listing.add_row(*row)
            console.print(listing)
        if note:
            console.print(f"DEMONSTRATION MODEL, its detections are not field-grade: {note}")

    @app.command()
    def models(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
        """List the models shipped with bmamba (use one with `--model NAME`; `bmamba info NAME`)."""
        _list_models(as_json)


def _list_models(as_json: bool) -> None:
    from biomamba.runtime.manifest import ManifestError, read_manifest
    from biomamba.runtime.models import DEFAULT_MODEL, builtin_models, demonstration_note

    rows = []
    for name, folder in builtin_models().items():
        try:
            m = read_manifest(folder)
            task, classes = m.task, len(m.classes)
        except ManifestError as e:
            task, classes = f"unusable: {e.reason}", 0
        rows.append({"name": name, "default": name == DEFAULT_MODEL, "task": task, "classes": classes,
                     "demonstration": demonstration_note(folder), "folder": str(folder)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no built-in models in this install; pass --model EXPORT_FOLDER")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="built-in models (bmamba detect --model NAME; bmamba info NAME)")
    for column in ("name", "task", "classes", "note"):
        table.add_column(column)
    for r in rows:
        note = ("default; " if r["default"] else "") + (
            "DEMONSTRATION, not field-grade" if r["demonstration"] else "")
        table.add_row(r["name"], r["task"], str(r["classes"]), note.rstrip("; "))
    Console(width=120).print(table)
