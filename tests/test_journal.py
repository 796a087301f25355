"""Resume journal: what counts as done, torn lines, reopening, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from biomamba.runtime import journal as journal_module
from biomamba.runtime.journal import Journal, JournalError

SETTINGS = {"model": "sha256:abcd", "threshold": 0.5, "format": "raven", "chunk_s": 30.0}


def make_recording(folder: Path, name: str, size: int = 1000) -> Path:
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def journal_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_record_then_done_and_reopen_keeps_entries(tmp_path, monkeypatch):
    a, b = make_recording(tmp_path, "a.wav"), make_recording(tmp_path, "b.wav")
    path = tmp_path / ".bmamba-journal.jsonl"
    with Journal(path, SETTINGS) as journal:
        assert not journal.is_done(a)
        journal.record(a, "ok", events=3, wall_s=1.5)
        assert journal.is_done(a)
        assert not journal.is_done(b)
    # Same settings in another key order; the recording named by a relative path.
    monkeypatch.chdir(tmp_path)
    with Journal(path, dict(reversed(list(SETTINGS.items())))) as reopened:
        assert reopened.is_done(Path("a.wav"))
        assert not reopened.is_done(b)
    entries = [line for line in journal_lines(path) if "status" in line]
    assert len(entries) == 1
    assert entries[0]["path"] == str(a.resolve())
    assert entries[0]["events"] == 3 and entries[0]["wall_s"] == 1.5


def test_changed_recording_is_not_done(tmp_path):
    grown, touched = make_recording(tmp_path, "grown.wav"), make_recording(tmp_path, "touched.wav")
    path = tmp_path / "journal.jsonl"
    with Journal(path, SETTINGS) as journal:
        journal.record(grown, "ok")
        journal.record(touched, "ok")
    with grown.open("ab") as file:
        file.write(b"more audio")
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with Journal(path, SETTINGS) as journal:
        assert not journal.is_done(grown)
        assert not journal.is_done(touched)


def test_other_settings_are_not_done(tmp_path):
    recording = make_recording(tmp_path, "a.wav")
    path = tmp_path / "journal.jsonl"
    with Journal(path, SETTINGS) as journal:
        journal.record(recording, "ok")
    with Journal(path, {**SETTINGS, "threshold": 0.6}) as journal:
        assert not journal.is_done(recording)
        journal.record(recording, "ok")
    with Journal(path, SETTINGS) as journal:
        assert journal.is_done(recording)
    settings_lines = [line for line in journal_lines(path) if "settings_hash" in line]
    assert [line["settings"]["threshold"] for line in settings_lines] == [0.5, 0.6]


def test_failed_is_retried_and_last_entry_wins(tmp_path):
    recording = make_recording(tmp_path, "a.wav")
    path = tmp_path / "journal.jsonl"
    with Journal(path, SETTINGS) as journal:
        journal.record(recording, "failed", error="decoder error")
        assert not journal.is_done(recording)
        journal.record(recording, "ok")
        assert journal.is_done(recording)
    with Journal(path, SETTINGS) as journal:
        assert journal.is_done(recording)
        journal.record(recording, "failed", error="again")
    with Journal(path, SETTINGS) as journal:
        assert not journal.is_done(recording)


def test_torn_last_line_is_ignored_and_does_not_spoil_the_next(tmp_path):
    first, second = make_recording(tmp_path, "1.wav"), make_recording(tmp_path, "2.wav")
    path = tmp_path / "journal.jsonl"
    with Journal(path, SETTINGS) as journal:
        journal.record(first, "ok")
        journal.record(second, "ok")
    data = path.read_bytes()
    last_line_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_line_start + (len(data) - last_line_start) // 2])  # killed mid-write

    with Journal(path, SETTINGS) as journal:
        assert journal.skipped_lines == 1
        assert journal.is_done(first)
        assert not journal.is_done(second)
        journal.record(second, "ok")
    with Journal(path, SETTINGS) as journal:
        assert journal.skipped_lines == 1
        assert journal.is_done(first) and journal.is_done(second)


def test_killed_process_loses_nothing_recorded(tmp_path):
    """A process killed with SIGKILL right after record() keeps its entries (flushed and synced)."""
    recordings = [make_recording(tmp_path, f"{i}.wav") for i in range(3)]
    path = tmp_path / "journal.jsonl"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from biomamba.runtime.journal import Journal\n"
        f"journal = Journal(Path({str(path)!r}), {SETTINGS!r})\n"
        "for name in sys.argv[1:]:\n"
        "    journal.record(Path(name), 'ok')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *map(str, recordings[:2])], timeout=60)
    assert done.returncode == -signal.SIGKILL
    with Journal(path, SETTINGS) as journal:
        assert [journal.is_done(r) for r in recordings] == [True, True, False]


def test_every_record_is_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    recording = make_recording(tmp_path, "a.wav")
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, SETTINGS)
    journal.record(recording, "ok")
    journal.record(recording, "failed")
    # Visible to another reader before close; one fsync per line (settings line included).
    assert [line.get("status") for line in journal_lines(path)] == [None, "ok", "failed"]
    assert len(synced) == 3
    journal.close()
    journal.close()  # closing twice is harmless
    with pytest.raises(JournalError, match="closed"):
        journal.record(recording, "ok")


def test_missing_recording(tmp_path):
    with Journal(tmp_path / "journal.jsonl", SETTINGS) as journal:
        missing = tmp_path / "gone.wav"
        assert not journal.is_done(missing)
        journal.record(missing, "failed", error="no such file")
        with pytest.raises(JournalError, match="gone.wav"):
            journal.record(missing, "ok")


def test_bad_arguments(tmp_path):
    recording = make_recording(tmp_path, "a.wav")
    with Journal(tmp_path / "journal.jsonl", SETTINGS) as journal:
        with pytest.raises(ValueError, match="status"):
            journal.record(recording, "done")
        with pytest.raises(ValueError, match="reserved"):
            journal.record(recording, "ok", size=3)


def test_missing_folder_or_folder_path_is_a_clear_error(tmp_path):
    with pytest.raises(JournalError, match="does not exist"):
        Journal(tmp_path / "nowhere" / "journal.jsonl", SETTINGS)
    with pytest.raises(JournalError, match="is a folder"):
        Journal(tmp_path, SETTINGS)


def test_unwritable_journal_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "journal.jsonl"

    real_open = os.open

    def open_read_only(file, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied")
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(journal_module.os, "open", open_read_only)
    with pytest.raises(JournalError, match="journal.jsonl.*Permission denied"):
        Journal(path, SETTINGS)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_read_only_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(JournalError, match="cannot write journal"):
            Journal(folder / "journal.jsonl", SETTINGS)
    finally:
        folder.chmod(0o700)
