"""Crash-safe resume journal for `bmamba detect` over many recordings.

An append-only JSON-lines file with one line per finished recording, written and fsync'ed before
the next recording starts, so a run killed at any moment loses at most the recording in progress.
On restart, a recording counts as done when the journal holds an "ok" line for the same absolute
path, size, modification time (ns) and settings hash; so a recording that changed since, a run with
other settings (model, threshold, format, chunk, ...), or a recording that failed is processed
again. When a recording has several lines, the last one wins.

Lines look like
    {"path": "/abs/rec.wav", "size": 123, "mtime_ns": 170..., "settings": "3f2a...", "status": "ok",
     "time": "2024-05-01T12:00:00+00:00", ...info}
and, once per settings hash, {"settings_hash": "3f2a...", "settings": {...}} so that a person can
read which settings a hash stands for. Lines that cannot be read (a line torn by a kill mid-write)
are skipped.

Torch-free: the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

STATUSES = ("ok", "failed")
_ENTRY_KEYS = ("path", "size", "mtime_ns", "settings", "status", "time")


class JournalError(ValueError):
    """The journal cannot be read or written (names the file and the reason)."""


def settings_hash(settings: dict) -> str:
    """A short stable hash of the settings that change results (key order does not matter)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class Journal:
    """Which recordings are done, kept in an append-only JSONL file.

    Args:
        path: the journal file; created if absent (its folder must exist and be writable).
        settings: everything that changes the results (model hash, thresholds, output format,
            chunk length, ...), JSON-like; entries recorded under other settings do not count.

    Use as a context manager, or call close().
    """

    def __init__(self, path: Path, settings: dict):
        self.path = Path(path)
        self.settings = settings
        self.settings_hash = settings_hash(settings)
        self.skipped_lines = 0  # unreadable lines met on load (a torn last line, typically)
        self._status: dict[tuple[str, int, int, str], str] = {}
        self._known_settings: set[str] = set()

        folder = self.path.parent
        if not folder.is_dir():
            raise JournalError(f"cannot use journal {self.path}: folder {folder} does not exist")
        if self.path.is_dir():
            raise JournalError(f"cannot use journal {self.path}: it is a folder")
        ends_with_newline = self._load()
        try:
            self._file = open(self.path, "a", encoding="utf-8", newline="")
        except OSError as error:
            raise JournalError(f"cannot write journal {self.path}: {error.strerror}") from error
        if not ends_with_newline:
            # A torn line without its newline: end it, so the next entry starts on a line of its own.
            self._append("\n")

    def is_done(self, recording: Path) -> bool:
        """True when recording, as it is now on disk, was processed ("ok") with these settings."""
        try:
            key = self._key(recording)
        except OSError:
            return False
        return self._status.get(key) == "ok"

    def record(self, recording: Path, status: str, **info) -> None:
        """Appends the outcome of one recording ("ok" or "failed") and forces it to disk.

        info: extra JSON-able fields kept on the line (events found, seconds taken, error, ...).
        The recording's size and modification time are read now, so call this after its outputs
        are written. A "failed" recording that no longer exists is recorded with size -1.
        """
        if status not in STATUSES:
            raise ValueError(f"journal status must be one of {STATUSES}, got {status!r}")
        clashes = set(info) & {*_ENTRY_KEYS, "settings_hash"}
        if clashes:
            raise ValueError(f"journal info may not use the reserved keys {sorted(clashes)}")
        if self._file.closed:
            raise JournalError(f"journal {self.path} is closed")
        try:
            key = self._key(recording)
        except OSError as error:
            if status == "ok":
                raise JournalError(
                    f"cannot record {recording} as done: {error.strerror}"
                ) from error
            key = (str(Path(recording).absolute()), -1, -1, self.settings_hash)

        if self.settings_hash not in self._known_settings:
            self._write_line({"settings_hash": self.settings_hash, "settings": self.settings})
            self._known_settings.add(self.settings_hash)
        path, size, mtime_ns, settings = key
        entry = {
            "path": path,
            "size": size,
            "mtime_ns": mtime_ns,
            "settings": settings,
            "status": status,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **info,
        }
        self._write_line(entry)
        self._status[key] = status

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------

    def _key(self, recording: Path) -> tuple[str, int, int, str]:
        """(absolute path, size, mtime_ns, settings hash); raises OSError if it cannot be stat'ed."""
        path = Path(recording).resolve()
        stat = path.stat()
        return (str(path), stat.st_size, stat.st_mtime_ns, self.settings_hash)

    def _load(self) -> bool:
        """Reads earlier entries. Returns whether the file is absent/empty or ends with a newline."""
        try:
            with open(self.path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return True
        except OSError as error:
            raise JournalError(f"cannot read journal {self.path}: {error.strerror}") from error
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if "settings_hash" in line:
                    self._known_settings.add(str(line["settings_hash"]))
                    continue
                key = (str(line["path"]), int(line["size"]), int(line["mtime_ns"]),
                       str(line["settings"]))
                status = str(line["status"])
            except (ValueError, TypeError, KeyError):
                self.skipped_lines += 1
                continue
            self._status[key] = status
        return data == b"" or data.endswith(b"\n")

    def _write_line(self, line: dict) -> None:
        self._append(json.dumps(line, ensure_ascii=False, default=str) + "\n")

    def _append(self, text: str) -> None:
        try:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:
            raise JournalError(f"cannot write journal {self.path}: {error.strerror}") from error
