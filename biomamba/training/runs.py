"""A run folder (``--out`` of `bmamba train` / `bmamba pretrain`) and what can stop a run.

A run folder holds:

- ``last/``: the latest checkpoint (written by the caller's ``save`` callback: weights via
  safetensors + config.json) plus ``training_state.pt`` (optimizer, scheduler, grad scaler, RNG
  states, loop counters), written each epoch, every ``save_every`` steps, and on interrupt;
- ``best/``: the checkpoint of the best validation metric so far (when there is validation);
- ``log.jsonl``: one JSON line per epoch (losses, metrics, learning rate, seconds);
- ``args.json``: the arguments of the run.

The folder names ``last``/``best`` are `biomamba.loading`'s (which resolves a run folder to its
checkpoint). A checkpoint folder is written beside its target and swapped in with two renames, so
a crash while saving leaves the previous checkpoint (``last.old`` if the crash fell between the
renames; `last_checkpoint` finds it). ``training_state.pt`` is written with ``torch.save`` and
read with ``torch.load(weights_only=True)`` only: it holds tensors, numbers, strings, lists and
dicts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..loading import BEST, LAST
from .devices import Distributed, barrier

STATE_FILE = "training_state.pt"
LOG_FILE = "log.jsonl"
ARGS_FILE = "args.json"


class TrainingError(RuntimeError):
    """A run that could not go on; the message says where and what to do."""


class NonFiniteLossError(TrainingError):
    """The loss (or the gradient) became NaN or infinite."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C or SIGTERM: the run saved ``last/`` and stopped; ``--resume`` continues it."""



def check_choice(option: str, value, choices) -> None:
    """Raise ValueError("--option 'x': choose one of a, b") unless value is None or one of choices."""
    if value is not None and value not in choices:
        raise ValueError(f"{option} {value!r}: choose one of {', '.join(map(str, choices))}")



# --------------------------------------------------------------------------- checkpoint folders


def write_folder_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh sibling folder, then swap it in for ``target``."""
    target = Path(target)
    tmp, old = target.with_name(target.name + ".partial"), target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def last_checkpoint(out: Path) -> Path | None:
    """``out/last`` (or ``out/last.old`` left by a crash between the two renames), or None."""
    for name in (LAST, LAST + ".old"):
        if (Path(out) / name / STATE_FILE).is_file():
            return Path(out) / name
    return None


def save_training_state(folder: Path, state: dict) -> None:
    torch.save(state, Path(folder) / STATE_FILE)


def load_training_state(folder: Path) -> dict:
    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable or not plain data: never fall back to unpickling
        raise TrainingError(f"{path}: cannot read the training state ({e})") from None

# --------------------------------------------------------------------------- run folders


def check_out(out: Path, resume: bool) -> None:
    """Raise ValueError unless ``out`` suits the run: with ``resume``, it holds a ``last/``
    checkpoint; without, it holds nothing the run would replace -- ``best/`` and ``last/`` are
    swapped in whole (an earlier run's, or someone's own folders of those names, would be lost)
    and ``log.jsonl`` is appended to. args.json and ``labels/`` may be there (a run stopped before
    its first checkpoint, a ``--labels-only`` run whose labels this one reuses)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder (new, or a run's to --resume)")
    if resume:
        if last_checkpoint(out) is None:
            raise ValueError(f"--resume: {out} holds no {LAST}/ checkpoint to resume from")
        return
    taken = [name for name in (LAST, LAST + ".old", BEST, BEST + ".old", LOG_FILE) if os.path.lexists(out / name)]
    if taken:
        raise ValueError(f"--out {out} already holds a run ({', '.join(taken)}), which this one would replace; "
                         "pass --resume to continue it, or choose another --out")


def prepare_out(out: Path, resume: bool, args: dict, dist: Distributed, keys: tuple[str, ...] = ()) -> None:
    """Create ``out`` after `check_out`; on resume, refuse when ``keys`` of the saved args.json
    differ from ``args``. Writes args.json (rank 0). `check_out` ran in the commands'
    `check_options` already, for a usage error before the data is read; it runs again here, where
    the folder is written, because reading the data can take minutes (and a library caller may
    come here directly)."""
    out = Path(out)
    previous = out / ARGS_FILE
    args = json.loads(json.dumps(args, default=str))  # as args.json holds them (paths as strings)
    check_out(out, resume)
    if resume:
        if previous.is_file():
            old = json.loads(previous.read_text())
            changed = [k for k in keys if k in old and old[k] != args.get(k)]
            if changed:
                raise ValueError("--resume with different settings than the run in "
                                 f"{out}: {', '.join(f'{k} ({old[k]!r} -> {args.get(k)!r})' for k in changed)}")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        previous.write_text(json.dumps(args, indent=2, default=str) + "\n")
    barrier(dist)

