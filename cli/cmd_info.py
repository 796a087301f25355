"""`bmamba info`: what a checkpoint or an exported folder holds, without loading torch."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import fail


def register(app: typer.Typer) -> None:
    @app.command()
    def info(
        model: Path = typer.Argument(..., help="A checkpoint folder or an exported folder."),
        as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON."),
    ) -> None:
        """Print the metadata of a checkpoint or an exported model folder."""
        from biomamba.info import InfoError, describe

        if not model.exists():
            fail(f"{model}: no such file or folder", usage=True)
        try:
            meta = describe(model)
        except InfoError as e:
            fail(str(e))
        if as_json:
            typer.echo(json.dumps(meta, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=str(model), show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in meta.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value) if len(json.dumps(value)) < 120 else json.dumps(value)[:117] + "..."
            table.add_row(key, str(value))
        Console().print(table)
