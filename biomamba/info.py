"""What a checkpoint or exported folder holds, read without torch (JSON + the safetensors header)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import CONFIG, WEIGHTS, CheckpointError, read_config

MANIFEST = "model.json"


class InfoError(ValueError):
    pass


def safetensors_parameter_count(path: Path) -> tuple[int, dict[str, int]]:
    """(number of parameters, count per dtype) from a safetensors file's header only."""
    from safetensors import safe_open

    total, by_dtype = 0, {}
    with safe_open(str(path), framework="numpy") as f:
        for name in f.keys():
            sl = f.get_slice(name)
            n = 1
            for d in sl.get_shape():
                n *= d
            total += n
            by_dtype[sl.get_dtype()] = by_dtype.get(sl.get_dtype(), 0) + n
    return total, by_dtype


def describe(path: str | os.PathLike) -> dict:
    """Metadata of a checkpoint folder (config.json + model.safetensors) or an export (model.json)."""
    path = Path(path)
    if not path.exists():
        raise InfoError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    meta: dict = {}
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise InfoError(f"{manifest}: unreadable JSON ({e})") from None
        meta["kind"] = "export"
        meta.update({f"export.{k}": v for k, v in m.items()})
    if (folder / CONFIG).is_file():
        try:
            config = read_config(folder)
        except CheckpointError as e:
            raise InfoError(str(e)) from None
        meta.setdefault("kind", "checkpoint")
        for key in ("architecture", "preset", "task", "classes", "pooling", "sample_rate", "bmamba_version"):
            if key in config:
                meta[key] = config[key]
        meta["model"] = config.get("model")
        for key, value in config.items():
            if key not in meta and key not in ("format", "format_version"):
                meta[key] = value
        total, by_dtype = safetensors_parameter_count(folder / WEIGHTS)
        meta["parameters"] = total
        meta["parameter_dtypes"] = by_dtype
        meta["weights_mb"] = round((folder / WEIGHTS).stat().st_size / 2**20, 2)
    if not meta:
        raise InfoError(f"{path}: neither a bmamba checkpoint ({CONFIG}) nor an export ({MANIFEST})")
    return meta
