"""Small helpers shared by the commands: one-line errors, list options, result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer


def fail(message: str, usage: bool = False) -> NoReturn:
    """Print one clear line to stderr and exit: 2 for bad usage, 1 for a failed run."""
    typer.secho(f"bmamba: error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2 if usage else 1)


def parse_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; empty items are dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


# Each kind of result file: what an existing file must be to be replaced, and an example name.
_RESULT_KINDS = {"json": ("a JSON object (an earlier report)", "run.json"),
                 "figure": ("an image (an earlier plot: PNG, PDF, SVG, PostScript or JPEG)", "plot.png")}
# The first bytes of the files matplotlib's savefig writes (the format follows the name's suffix).
_FIGURE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"%PDF", b"<?xml", b"<svg", b"%!PS", b"\xff\xd8\xff")


def check_result_path(path: Path | None, option: str, kind: str) -> None:
    """Refuse, before a run, a result file (``kind``: "json" or "figure") that the run could not
    write or must not overwrite: a folder, a file in a missing folder, or an existing file that
    is not of that kind. Results are written at the end, over whatever has the name: a slip of the
    shell (``--report rec.wav``, ``--plot files.csv``) would otherwise replace a recording or a
    data file. Exits 2 naming the option, the file and the reason."""
    if path is None:
        return
    if path.is_dir():
        fail(f"{option} {path} is a folder; name a file in it, e.g. {path / _RESULT_KINDS[kind][1]}", usage=True)
    if not path.parent.is_dir():
        fail(f"{option} {path}: the folder {path.parent} does not exist", usage=True)
    if not path.exists():
        return
    if not path.is_file():
        fail(f"{option} {path}: not a regular file; name a file", usage=True)
    try:
        ours = _looks_like(path, kind)
    except OSError as e:
        fail(f"{option} {path}: cannot read it to check what it is ({e.strerror})", usage=True)
    if not ours:
        fail(f"{option} {path}: the file exists and is not {_RESULT_KINDS[kind][0]}; it would be "
             "overwritten. Name a new file (or delete this one first)", usage=True)


def _looks_like(path: Path, kind: str) -> bool:
    """Whether the existing file ``path`` is a result of ``kind``. Reads a few bytes first, so a
    long recording is never read whole."""
    with open(path, "rb") as file:
        head = file.read(8)
        if kind == "figure":
            return head.startswith(_FIGURE_MAGIC)
        if not head.lstrip().startswith(b"{"):
            return False
        file.seek(0)
        try:
            return isinstance(json.load(file), dict)
        except (ValueError, RecursionError):
            return False
