"""Small helpers shared by the commands: one-line errors and list options."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str, usage: bool = False) -> NoReturn:
    """Print one clear line to stderr and exit: 2 for bad usage, 1 for a failed run."""
    typer.secho(f"bmamba: error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2 if usage else 1)


def parse_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; empty items are dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]
