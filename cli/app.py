"""The `bmamba` command line (Typer). Thin: parse, call the library, print.

Each command lives in its own module ``cli/cmd_<name>.py`` with a ``register(app)`` function, so
that a command's heavy imports (torch, onnx) happen only when that command runs.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="bmamba",
    help="BioMamba for bioacoustics: train, export, and run a Mamba2 audio model over long recordings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ["detect", "embed", "train", "pretrain", "eval", "export", "info", "bench"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"biomamba.cli.cmd_{_name}").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
