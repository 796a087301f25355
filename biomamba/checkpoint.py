"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``config.json`` (everything else).

Loading never unpickles: safetensors holds tensors only, JSON holds the rest. An exported folder
(``bmamba export``) carries the same two files, so it loads here too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MAX_JSON_BYTES = 1 << 20
"""The largest config.json / model.json read (they are a few kilobytes; a class list of 10,000
names is about 300 KB)."""
_MAX_INT_DIGITS = 18  # every whole number in them fits in 64 bits

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
    config = read_json(config_path, CheckpointError)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(config_path, f"not a bmamba checkpoint (format is not {FORMAT!r})")
    version = config.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(config_path, f"format_version = {version!r} is not a whole number")
    if version > FORMAT_VERSION:
        raise CheckpointError(config_path, f"written by a newer bmamba (format_version "
                                           f"{version} > {FORMAT_VERSION})")
    problem = _config_problem(config)
    if problem:
        raise CheckpointError(config_path, f"invalid config: {problem}")
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(path, f"{WEIGHTS} is missing")
    return config


def _config_problem(config: dict) -> str | None:
    """The first thing wrong in a config's fields, naming the key, or None. The model sizes are
    checked against presets.LIMITS here, before anything is built."""
    from .presets import ModelConfig

    if "model" in config:
        if not isinstance(config["model"], dict):
            return "'model' must be an object of model sizes"
        try:
            ModelConfig.from_dict(config["model"])
        except (TypeError, ValueError) as e:
            return f"'model': {e}"
    if "task" in config and not isinstance(config["task"], str):
        return f"task = {config['task']!r} is not a name"
    classes = config.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return "'classes' must be a list of names"
    return None


def read_json(path: Path, error: type[ValueError]) -> object:
    """Parse a small JSON file of ours (config.json, model.json) defensively.

    Raises ``error(path, reason)`` for a file over MAX_JSON_BYTES, text that is not UTF-8 JSON,
    nesting too deep for the parser, whole numbers of more than 18 digits, and NaN/Infinity or
    floats that overflow (1e999): a number no bmamba file holds is refused before it is used.
    """
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise error(path, f"is {size:,} bytes; a bmamba {path.name} is a few kilobytes "
                              f"(refused above {MAX_JSON_BYTES:,})")
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise error(path, f"cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise error(path, "unreadable JSON (not UTF-8 text)") from None
    try:
        return json.loads(text, parse_int=_whole_number, parse_float=_finite_float,
                          parse_constant=_no_constant)
    except RecursionError:
        raise error(path, "unreadable JSON (nested too deeply)") from None
    except ValueError as e:  # json.JSONDecodeError and the refusals below
        raise error(path, f"unreadable JSON ({e})") from None


def _whole_number(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _MAX_INT_DIGITS:
        raise ValueError(f"a whole number of {digits} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:30]} is too large for a number")
    return value


def _no_constant(text: str):
    raise ValueError(f"{text} is not a number bmamba writes")


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
