"""Where models come from: the model shipped in the package, export folders, checkpoints.

Torch-free. ``bmamba detect`` takes an export folder (``bmamba export``); with ``--backend torch``
a training checkpoint folder works too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from biomamba.data.layout import BACKGROUND_CLASS
from biomamba.streaming import SAMPLE_RATE, check_sample_rate

from .manifest import MANIFEST, ManifestError, read_manifest

DEFAULT_MODEL = "default"


# model.json may carry "demonstration": a sentence saying why the model is not for field use.
# Its presence marks a demonstration model: `bmamba detect` says so when it starts, `bmamba info`
# and `bmamba models` show it. `bmamba export` never writes it; a model's author adds it by hand.
DEMONSTRATION_KEY = "demonstration"


def models_root() -> Path:
    """The folder of the models shipped in the package (``biomamba/models``)."""
    return Path(str(resources.files("biomamba"))) / "models"


def builtin_models() -> dict[str, Path]:
    """{name: folder} of the models shipped in the package: the folders of ``biomamba/models``
    that hold a model.json, by name."""
    root = models_root()
    if not root.is_dir():
        return {}
    return {f.name: f for f in sorted(root.iterdir()) if (f / MANIFEST).is_file()}


def demonstration_note(folder: Path) -> str | None:
    """The model card's "demonstration" note of model.json in folder, or None (not marked, or no
    readable model.json)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    note = data.get(DEMONSTRATION_KEY) if isinstance(data, dict) else None
    if note is None or note is False:
        return None
    return note if isinstance(note, str) and note.strip() else "a demonstration model"


def model_line(name: str, folder: Path, task: str, classes, reported, sample_rate: int = SAMPLE_RATE) -> str:
    """The one line `bmamba detect` starts with: which model, its classes, its input rate when not
    16 kHz, what is reported, and, for a demonstration model, that its detections are not field-grade."""
    classes = list(classes)
    builtin = builtin_models().get(name) == folder
    parts = [f"model {name} ({'built-in' if builtin else folder}): {task}, {len(classes)} classes"]
    if sample_rate != SAMPLE_RATE:
        parts.append(f"reads audio at {sample_rate / 1000:g} kHz (hears up to {sample_rate / 2000:g} kHz)")
    hidden = [c for c in classes if c not in reported]
    if hidden:
        parts.append(f"reporting {len(reported)} of {len(classes)} classes"
                     + (f" (not {', '.join(hidden)})" if len(hidden) <= 3 else ""))
    if BACKGROUND_CLASS in hidden:
        parts.append(f"the {BACKGROUND_CLASS!r} class is never reported unless --classes names it")
    note = demonstration_note(folder)
    if note:
        parts.append(f"DEMONSTRATION MODEL, its detections are not field-grade: {note}")
    return "; ".join(parts)


def model_folder(name_or_path: str | os.PathLike) -> Path:
    """The folder a ``--model``/checkpoint argument names: an existing path as given, else a model
    shipped in the package by name (``insectset32`` -> ``biomamba/models/insectset32``), else the
    path as given (for the caller to report as missing)."""
    path = Path(name_or_path)
    if path.exists() or len(path.parts) != 1:
        return path
    shipped = models_root() / path.name
    return shipped if (shipped / MANIFEST).is_file() else path


def default_model_dir() -> Path:
    """The export folder shipped inside the package (``biomamba/models/default``)."""
    folder = models_root() / DEFAULT_MODEL
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
    sample_rate: int = SAMPLE_RATE
    variant: str = "checkpoint"
    precision: str = "fp32"
    folder: Path | None = None


def describe_model(path: str | os.PathLike | None, backend: str):
    """(manifest-like description, folder, display name) of --model: a folder, a built-in model's
    name (`model_folder`), or None (the shipped default)."""
    folder = default_model_dir() if path is None else model_folder(path)
    if not folder.exists():
        known = ", ".join(builtin_models()) or "none"
        raise ManifestError(folder, f"no such model folder (built-in models: {known})")
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
        try:
            rate = check_sample_rate(cfg.get("sample_rate", SAMPLE_RATE))
        except ValueError as e:
            raise ManifestError(folder / "config.json", str(e)) from None
        return CheckpointModel(cfg.get("task", "detect"), classes, {c: 0.5 for c in classes},
                               file_sha256(folder / WEIGHTS), rate, folder=folder), folder, name
    hint = " (a training checkpoint: export it with `bmamba export`, or use --backend torch)" \
        if config.is_file() else ""
    raise ManifestError(folder, f"not an exported bmamba model (no {MANIFEST}){hint}")
