"""One `bmamba detect` or `embed` at a time per output folder: an exclusive advisory lock on a
file in it.

Two runs writing into one folder at once would break each other: a run's start-up sweep
(`writers.remove_stale_temps`) deletes the temporary file the other is writing, and both append
to one journal. So a run locks every folder it will write to, ``<folder>/.bmamba-detect.lock``,
for as long as it runs (`FolderLocks`, a context manager), and a second run fails at once with
`FolderBusy`, which names the holder (its pid and start time, written into the lock file).

POSIX: ``fcntl.flock``, non-blocking. The operating system drops the lock when the process ends,
killed or not, so a dead run never leaves a stale lock (a file merely left behind means
nothing). The lock file is removed when the run ends (while still locked, so no run ever holds
a lock on a file the next one cannot find: a run whose lock file was removed under it starts
again with the new one). Folders are locked in sorted order. A folder where the lock file cannot
be made (read-only, missing, a file system without locks) is not locked: the run goes on as
before, and writing there reports its own error. Each lock keeps its file open: the soft limit of
open files is raised (up to the hard one) for a run over thousands of folders, and folders past
what it allows are not locked rather than leaving the run no files to open. Windows: not locked
(``msvcrt.locking`` would do, but it is not tested here).

Torch-free: the standard library only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None

LOCK_NAME = ".bmamba-detect.lock"
_SPARE_FILES = 512   # open files left for the run itself (recordings, model, libraries)


class FolderBusy(Exception):
    """Someone else (another process, or another `FolderLocks` of this one) holds the lock of
    ``folder``; ``holder`` says who, as its lock file does ("pid 1234, started ...")."""

    def __init__(self, folder: Path, holder: str):
        super().__init__(f"{folder}: locked ({holder})")
        self.folder, self.holder = folder, holder


class FolderLocks:
    """Exclusive locks on ``folders`` (each ``folder/LOCK_NAME``) while the ``with`` block runs.

    ``__enter__`` raises `FolderBusy` (and holds nothing) when one of them is locked already.
    ``held``: the folders locked, sorted; those that cannot be locked are left out."""

    def __init__(self, folders: Iterable[Path]):
        self.folders = _distinct(folders)
        self.held: list[Path] = []
        self._fds: list[int] = []

    def __enter__(self) -> FolderLocks:
        if fcntl is None:
            return self
        room = _make_room_for(len(self.folders))
        try:
            for folder in self.folders[:room]:   # each lock stays open: the rest are not locked
                fd = _lock(folder)
                if fd is not None:
                    self.held.append(folder)
                    self._fds.append(fd)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        for folder, fd in zip(self.held, self._fds):
            try:
                os.unlink(folder / LOCK_NAME)   # still locked: see the module docstring
            except OSError:
                pass
            os.close(fd)
        self.held, self._fds = [], []


def _distinct(folders: Iterable[Path]) -> list[Path]:
    """The folders, sorted, each once (two names of one folder would lock it twice, and a
    process's second flock on its own locked file fails)."""
    by_real: dict[str, Path] = {}
    for folder in folders:
        by_real.setdefault(os.path.realpath(folder), Path(folder))
    return [by_real[real] for real in sorted(by_real)]


def _lock(folder: Path) -> int | None:
    """The open, locked lock file of folder (holder info written), or None if it cannot be made."""
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusy(folder, holder) from None
        except OSError:   # no locks on this file system
            os.close(fd)
            return None
        if _names(path, fd):
            break
        os.close(fd)   # the holder before removed it between our open and our lock: again
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    return fd


def _names(path: Path, fd: int) -> bool:
    """Whether path is (still) the file open as fd."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _holder(fd: int) -> str:
    """The holder's "pid N, started T" line from its lock file (it may not have written it yet)."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "pid unknown"


def _make_room_for(locks: int) -> int:
    """How many lock files may stay open (at most ``locks``) with `_SPARE_FILES` left for the run;
    raises the soft limit of open files towards the hard one first, so that a run over thousands
    of folders locks them all."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = locks + _SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        except (ValueError, OSError):
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return locks if soft == resource.RLIM_INFINITY else max(0, min(locks, soft - _SPARE_FILES))
