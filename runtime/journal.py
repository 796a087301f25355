"""Crash-safe resume journal for `bmamba detect` over many recordings.

An append-only JSON-lines file with one line per finished recording, written and fsync'ed before
the next recording starts, so a run killed at any moment loses at most the recording in progress.
On restart, a recording counts as done when the journal holds an "ok" line for the same absolute
path, size, modification time (ns) and settings hash; so a recording that changed since, a run with
other settings (model, threshold, format, chunk, ...), or a recording that failed is processed
again. When a recording has several lines, the last one wins. The size and time recorded are the
ones taken before the recording was processed (`fingerprint`), so a file replaced or still growing
meanwhile does not count as done in its new state.

Lines look like
    {"path": "/abs/rec.wav", "size": 123, "mtime_ns": 170..., "settings": "3f2a...", "status": "ok",
     "time": "2024-05-01T12:00:00+00:00", ...info}
and, once per settings hash, {"settings_hash": "3f2a...", "settings": {...}} so that a person can
read which settings a hash stands for. Lines that cannot be read (a line torn by a kill mid-write,
or anything else that is not such an entry: ``1e999``, deeply nested JSON) are skipped. Lines are
ASCII (JSON escapes), so a file name that is not valid UTF-8 is kept exactly and found again.
The journal must be a regular file (or not exist yet): a device or FIFO is refused. A file that
exists must be a journal: its first line is always a settings line, so a file that does not
start as one (a recording, a table, a report named by a slip) is refused, not appended to.

Torch-free: the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

STATUSES = ("ok", "failed")
_ENTRY_KEYS = ("path", "size", "mtime_ns", "settings", "status", "time")
# How every journal starts: its first line is the settings line (`Journal.record` writes it first).
_FIRST_BYTES = b'{"settings_hash": '


class JournalError(ValueError):
    """The journal cannot be read or written (names the file and the reason)."""


def fingerprint(recording: Path) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of recording now; raises OSError if it cannot be
    stat'ed. Take it before processing and pass it to `Journal.record`."""
    st = os.stat(Path(recording).resolve())
    return st.st_size, st.st_mtime_ns


def changed_since(recording: Path, before: tuple[int, int] | None) -> str | None:
    """Why recording is no longer what was read, or None: its size and modification time are
    still ``before`` (`fingerprint` taken before it was read; None when that failed)."""
    try:
        now = fingerprint(recording)
    except OSError as error:
        return f"was moved or deleted while it was processed ({error.strerror})"
    if now == before:
        return None
    if before is None:
        return "changed while it was processed"
    return (f"changed while it was processed (size {before[0]} -> {now[0]} bytes, "
            f"modified {'again' if now[1] != before[1] else 'no'})")


def journal_folder(outputs) -> Path:
    """Where a run without --out keeps its journal: beside its outputs, in the deepest folder
    that holds them all (absolute), so that the same run started from another folder finds it.
    outputs: the output paths of the run (at least one)."""
    folders = {os.path.abspath(Path(o).parent) for o in outputs}
    try:
        return Path(os.path.commonpath(sorted(folders)))
    except ValueError:   # on different drives (Windows): no common folder
        return Path(sorted(folders)[0])


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
        self._check_kind()
        # A torn line without its newline is ended before the next entry, so that starts a line.
        self._torn = not self._load()
        try:
            # Unbuffered appends: a failed write (a full disk) leaves nothing in a buffer for a
            # later write or the close to fail on again.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as error:
            raise JournalError(f"cannot write journal {self.path}: {error.strerror}") from error

    def is_done(self, recording: Path) -> bool:
        """True when recording, as it is now on disk, was processed ("ok") with these settings."""
        try:
            key = self._key(recording)
        except OSError:
            return False
        return self._status.get(key) == "ok"

    def record(self, recording: Path, status: str, fingerprint: tuple[int, int] | None = None,
               **info) -> None:
        """Appends the outcome of one recording ("ok" or "failed") and forces it to disk.

        fingerprint: (size, mtime_ns) of the recording as it was processed (`fingerprint()` taken
        before); None reads them now. info: extra JSON-able fields kept on the line (events found,
        seconds taken, error, ...). A "failed" recording that no longer exists is recorded with
        size -1.
        """
        if status not in STATUSES:
            raise ValueError(f"journal status must be one of {STATUSES}, got {status!r}")
        clashes = set(info) & {*_ENTRY_KEYS, "settings_hash"}
        if clashes:
            raise ValueError(f"journal info may not use the reserved keys {sorted(clashes)}")
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        try:
            key = self._key(recording, fingerprint)
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
        """Closes the file. Never raises: every line was written and fsync'ed when recorded, so a
        close that fails (a full disk) has nothing left to lose."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------

    def _key(self, recording: Path, known: tuple[int, int] | None = None) -> tuple[str, int, int, str]:
        """(absolute path, size, mtime_ns, settings hash); raises OSError if it cannot be stat'ed
        (unless known gives size and mtime_ns)."""
        size, mtime_ns = known if known is not None else fingerprint(recording)
        return (str(Path(recording).resolve()), size, mtime_ns, self.settings_hash)

    def _check_kind(self) -> None:
        """A journal or nothing: reading a FIFO would wait for ever, a device is not a log, and
        lines appended to another file (a recording) would damage it."""
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as error:
            raise JournalError(f"cannot use journal {self.path}: {error.strerror}") from error
        if stat.S_ISDIR(mode):
            raise JournalError(f"cannot use journal {self.path}: it is a folder")
        if not stat.S_ISREG(mode):
            raise JournalError(f"cannot use journal {self.path}: it is not a regular file "
                               "(a device, FIFO or socket); name a file")
        try:
            with open(self.path, "rb") as file:
                head = file.read(len(_FIRST_BYTES))
        except OSError as error:
            raise JournalError(f"cannot read journal {self.path}: {error.strerror}") from error
        if head != _FIRST_BYTES[: len(head)]:   # a shorter head: a first line torn by a kill
            raise JournalError(f"cannot use journal {self.path}: the file exists and is not a bmamba "
                               "journal; name another file (or delete this one)")

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
            except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
                self.skipped_lines += 1
                continue
            self._status[key] = status
        return data == b"" or data.endswith(b"\n")

    def _write_line(self, line: dict) -> None:
        # ASCII: a name that is not valid UTF-8 becomes "\udcff" escapes, read back as the same name.
        self._append(json.dumps(line, ensure_ascii=True, default=str) + "\n")

    def _append(self, text: str) -> None:
        data = (b"\n" if self._torn else b"") + text.encode("ascii")
        try:
            while data:
                data = data[os.write(self._fd, data):]
            os.fsync(self._fd)
        except OSError as error:
            self._torn = True   # part of the line may be on disk: the next one starts a new line
            raise JournalError(f"cannot write journal {self.path}: {error.strerror}") from error
        self._torn = False
