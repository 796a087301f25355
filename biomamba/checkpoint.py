"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``config.json`` (everything else).

Loading never unpickles: safetensors holds tensors only, JSON holds the rest. An exported folder
(``bmamba export``) carries the same two files, so it loads here too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "bmamba-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the path and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def read_config(path: str | os.PathLike) -> dict:
    """The config.json of a checkpoint folder, checked for the bmamba format."""
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS, CONFIG):
        path = path.parent
    if not path.exists():
        raise CheckpointError(path, "no such checkpoint folder")
    config_path = path / CONFIG
    if not config_path.is_file():
        raise CheckpointError(path, f"not a bmamba checkpoint (no {CONFIG} in the folder)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(config_path, f"unreadable JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(config_path, f"not a bmamba checkpoint (format is not {FORMAT!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(config_path, f"written by a newer bmamba (format_version "
                                           f"{config['format_version']} > {FORMAT_VERSION})")
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(path, f"{WEIGHTS} is missing")
    return config


def save_checkpoint(path: str | os.PathLike, state_dict: dict, config: dict) -> Path:
    """Write weights and config into folder ``path`` (created), each file atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    tmp = path / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, path / WEIGHTS)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    tmp = path / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path / CONFIG)
    return path


def load_weights(path: str | os.PathLike, device: str = "cpu") -> dict:
    """The tensors of ``model.safetensors`` in checkpoint folder ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS
    try:
        return load_file(str(file), device=device)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(file, f"unreadable weights ({e})") from None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
