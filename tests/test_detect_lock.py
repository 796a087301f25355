"""One `bmamba detect` per output folder (runtime/folder_lock.py): a second run into a folder that
another process is writing to stops at once with exit status 2, naming the folder and the other
run's pid, and leaves the other run's temporary file alone; a killed run leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from biomamba.runtime.folder_lock import LOCK_NAME, FolderBusy, FolderLocks
from conftest import detect

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="folders are locked with fcntl.flock (POSIX); "
                                                                "Windows runs are not locked")

# Another process: locks the folders given as arguments, says how many it holds, waits on stdin.
HOLD = """
import sys
from pathlib import Path
from biomamba.runtime.folder_lock import FolderLocks
with FolderLocks([Path(a) for a in sys.argv[1:]]) as locks:
    print(len(locks.held), flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder():
    """Starts a process that holds the locks of the folders given; yields a function that starts it
    and returns the process (killed at the end of the test)."""
    started = []

    def start(*folders: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, folders)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == str(len(folders)), "the other process took no lock"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def recording(folder: Path) -> Path:
    """Two seconds of noise at 16 kHz."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rec.wav"
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32), 16000)
    return path


def test_second_run_into_a_locked_folder_stops_and_a_killed_holder_leaves_no_lock(exported, holder, tmp_path):
    rec, out = recording(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    # the other run's table in progress: the name `remove_stale_temps` sweeps for out/rec.bmamba.json
    temp = out / ".rec.bmamba.json.0123456789ab.tmp"
    temp.write_text("{")
    other = holder(out)

    code, text = detect(rec, "--model", exported, "--out", out, "--format", "json")
    assert code == 2, text
    assert f"--out {out}: another bmamba detect (pid {other.pid}, started " in text, text
    assert temp.exists(), "the other run's temporary file was swept while it was writing it"
    assert not (out / "rec.bmamba.json").exists() and not (out / ".bmamba-journal.jsonl").exists()

    other.send_signal(signal.SIGKILL)   # no clean-up: the OS drops its lock
    other.wait()
    code, text = detect(rec, "--model", exported, "--out", out, "--format", "json")
    assert code == 0, text
    assert (out / "rec.bmamba.json").exists()
    assert not temp.exists(), "a dead run's temporary file is swept"   # so the name above was the right one
    assert not (out / LOCK_NAME).exists(), "the lock file is removed when the run ends"


def test_run_beside_the_recordings_stops_when_their_folder_is_locked(exported, holder, tmp_path):
    rec = recording(tmp_path / "site")
    other = holder(rec.parent)
    code, text = detect(rec, "--model", exported)
    assert code == 2, text
    assert f"{rec.parent}: another bmamba detect (pid {other.pid}, " in text, text
    assert not (rec.parent / "rec.bmamba.selection.table.txt").exists()


def test_a_run_locks_the_sub_folders_it_will_make_so_a_nested_out_is_refused(exported, monkeypatch, tmp_path):
    # --out OUT over a tree with site/: OUT/site does not exist when the run starts. It must be made
    # and locked then, or a second run with --out OUT/site could write (and sweep temporary files)
    # there meanwhile. The locks held are read from inside the run, while it holds them.
    recording(tmp_path / "tree")
    recording(tmp_path / "tree" / "site")
    out = tmp_path / "out"
    held, probes = [], []
    enter = FolderLocks.__enter__

    def spy(self):
        locks = enter(self)
        held.extend(locks.held)
        probes.append(holder_probe(out / "site"))   # another process, trying the nested folder now
        return locks

    monkeypatch.setattr(FolderLocks, "__enter__", spy)
    code, text = detect(tmp_path / "tree", "--model", exported, "--out", out)
    assert code == 0, text
    assert {out, out / "site"} <= set(held), held
    assert probes == ["busy"], "another process could lock OUT/site while this run wrote there"
    assert (out / "site" / "rec.bmamba.selection.table.txt").exists()


def holder_probe(folder: Path) -> str:
    """Whether another process can lock ``folder`` now: "busy", "locked" or "not locked"."""
    code = ("import sys; from pathlib import Path\n"
            "from biomamba.runtime.folder_lock import FolderBusy, FolderLocks\n"
            "try:\n"
            "    with FolderLocks([Path(sys.argv[1])]) as locks: print('locked' if locks.held else 'not locked')\n"
            "except FolderBusy: print('busy')\n")
    return subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_locks_on_two_folders_in_one_process_and_release_on_an_exception(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with FolderLocks([b, a, a / ".." / "a"]) as locks:   # one folder under two names is locked once
        assert locks.held == [a, b]
        for folder in (a, b):
            assert (folder / LOCK_NAME).read_text().startswith(f"pid {os.getpid()}, started ")
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):   # flock: per open file, not per process
            FolderLocks([b]).__enter__()
    with pytest.raises(RuntimeError):
        with FolderLocks([a, b]):
            raise RuntimeError("stop")
    assert not (a / LOCK_NAME).exists() and not (b / LOCK_NAME).exists()
    with FolderLocks([a, b]) as locks:   # released: they can be taken again
        assert locks.held == [a, b]


def test_a_busy_folder_leaves_none_of_the_others_locked(holder, tmp_path):
    a, z = tmp_path / "a", tmp_path / "z"
    a.mkdir()
    z.mkdir()
    holder(z)
    with pytest.raises(FolderBusy) as busy:
        FolderLocks([a, z]).__enter__()   # a (sorted first) is taken, then z is busy
    assert busy.value.folder == z
    with FolderLocks([a]) as locks:
        assert locks.held == [a]


def test_a_folder_where_no_lock_file_can_be_made_is_not_locked(tmp_path):
    """Writing there reports its own error, as before; locking adds no new failure."""
    missing, a_file, read_only = tmp_path / "missing", tmp_path / "file", tmp_path / "ro"
    a_file.write_text("")
    read_only.mkdir()
    read_only.chmod(0o555)
    root = hasattr(os, "geteuid") and os.geteuid() == 0   # root writes into read-only folders
    try:
        with FolderLocks([missing, a_file] + ([] if root else [read_only])) as locks:
            assert locks.held == []
    finally:
        read_only.chmod(0o755)


@pytest.mark.parametrize("soft, hard, held", [(552, 552, 40), (520, 700, 100)])
def test_no_more_locks_than_open_files_allow(tmp_path, soft, hard, held):
    """100 folders with 512 open files kept for the run: a hard limit of 552 leaves room for 40
    locks (the first 40 in sorted order); a soft limit of 520 is raised to take all 100."""
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip("the hard limit of open files is lower than this case needs")
    folders = [tmp_path / f"f{i:03}" for i in range(100)]
    for folder in folders:
        folder.mkdir()
    code = f"""
import resource, sys
from pathlib import Path
from biomamba.runtime.folder_lock import FolderLocks
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
with FolderLocks([Path(a) for a in sys.argv[1:]]) as locks:
    print(" ".join(p.name for p in locks.held))
"""
    out = subprocess.run([sys.executable, "-c", code, *map(str, reversed(folders))], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [f.name for f in folders[:held]]
