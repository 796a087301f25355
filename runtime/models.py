"""Where models come from: the model shipped in the package, export folders, checkpoints.

Torch-free. ``bmamba detect`` takes an export folder (``bmamba export``); with ``--backend torch``
a training checkpoint folder works too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .manifest import MANIFEST, ManifestError, read_manifest

DEFAULT_MODEL = "default"


def model_folder(name_or_path: str | os.PathLike) -> Path:
    """The folder a ``--model``/checkpoint argument names: an existing path as given, else a model
    shipped in the package by name (``insectset32`` -> ``biomamba/models/insectset32``), else the
    path as given (for the caller to report as missing)."""
    path = Path(name_or_path)
    if path.exists() or len(path.parts) != 1:
        return path
    shipped = Path(str(resources.files("biomamba"))) / "models" / path.name
    return shipped if (shipped / MANIFEST).is_file() else path


def default_model_dir() -> Path:
    """The export folder shipped inside the package (``biomamba/models/default``)."""
    folder = Path(str(resources.files("biomamba"))) / "models" / DEFAULT_MODEL
    if not (folder / MANIFEST).is_file():
        raise ManifestError(folder, "this install ships no default model; pass --model EXPORT_FOLDER "
                                    "(made by `bmamba export CHECKPOINT`)")
    return folder


@dataclass(frozen=True)
class CheckpointModel:
    """The parts of a manifest that detect needs, for a training checkpoint run on torch."""

    task: str
    classes: tuple[str, ...]
    thresholds: dict[str, float]
    source_sha256: str
    variant: str = "checkpoint"
    precision: str = "fp32"
    folder: Path | None = None


def describe_model(path: str | os.PathLike | None, backend: str):
    """(manifest-like description, folder, display name) of --model (None = the shipped model)."""
    folder = default_model_dir() if path is None else model_folder(path)
    if not folder.exists():
        raise ManifestError(folder, "no such model folder")
    name = DEFAULT_MODEL if path is None else folder.name
    if (folder / MANIFEST).is_file():
        return read_manifest(folder), folder, name
    config = folder / "config.json"
    if backend == "torch" and config.is_file():
        from biomamba.checkpoint import WEIGHTS, CheckpointError, file_sha256, read_config

        try:  # format, fields and model sizes checked, and the weights file present
            cfg = read_config(folder)
        except CheckpointError as e:
            raise ManifestError(e.path, e.reason) from None
        classes = tuple(cfg.get("classes", ()))
        return CheckpointModel(cfg.get("task", "detect"), classes, {c: 0.5 for c in classes},
                               file_sha256(folder / WEIGHTS), folder=folder), folder, name
    hint = " (a training checkpoint: export it with `bmamba export`, or use --backend torch)" \
        if config.is_file() else ""
    raise ManifestError(folder, f"not an exported bmamba model (no {MANIFEST}){hint}")
