"""What a checkpoint or exported folder holds, read without torch (JSON + the safetensors header)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import CONFIG, WEIGHTS, CheckpointError, read_config

MANIFEST = "model.json"
# A run folder (--out of bmamba train / pretrain) holds these checkpoints; like `bmamba eval`,
# the first present is the run's model.
RUN_CHECKPOINTS = ("best", "last")
RUN_ARGS = "args.json"


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


def run_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint of a run folder: its best/, else last/; None when `path` is not a run
    folder (a checkpoint or export itself, a file, anything else)."""
    path = Path(path)
    if not path.is_dir() or (path / CONFIG).is_file() or (path / MANIFEST).is_file():
        return None
    return next((path / name for name in RUN_CHECKPOINTS if (path / name / CONFIG).is_file()), None)


def describe(path: str | os.PathLike) -> dict:
    """Metadata of a checkpoint folder (config.json + model.safetensors), an export (model.json),
    or a run folder (its best/ else last/ checkpoint, as `bmamba eval` takes, under "checkpoint",
    and the run's arguments under "run_args")."""
    path = Path(path)
    if not path.exists():
        raise InfoError(f"{path}: no such file or folder")
    checkpoint = run_checkpoint(path)
    if checkpoint is not None:
        meta = {"kind": "run", "checkpoint": str(checkpoint)}
        meta.update({k: v for k, v in describe(checkpoint).items() if k != "kind"})
        if (path / RUN_ARGS).is_file():
            try:
                meta["run_args"] = json.loads((path / RUN_ARGS).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InfoError(f"{path / RUN_ARGS}: unreadable JSON ({e})") from None
        return meta
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
        raise InfoError(f"{path}: neither a bmamba checkpoint ({CONFIG}), an export ({MANIFEST}), nor a "
                        f"run folder ({' or '.join(n + '/' for n in RUN_CHECKPOINTS)})")
    return meta
