"""Event files for `bmamba detect`: Raven selection table, CSV, JSON, Audacity labels.

One file per recording, `<stem>.bmamba.<ext>`, written atomically (a temporary file in the same
folder, flushed to disk, then renamed over the target), so a reader never sees half a file and a
crash leaves either the old file or the new one. A recording with no events still gets a file
(a header, an empty "events" list, or an empty label file), so "processed, nothing found" differs
from "not processed".

Number formats, the same in every format: times in seconds with 6 decimals (microseconds: finer
than one sample at 16 kHz, and what Audacity itself writes), scores with 4 decimals (what
BirdNET-Analyzer writes for its Confidence column).

- raven: tab-separated, "\\n" line ends. Raven's own columns first, in Raven's order, as
  BirdNET-Analyzer does: Selection (1..n), View ("Spectrogram 1"), Channel (1), Begin Time (s),
  End Time (s), Low Freq (Hz) (0), High Freq (Hz) (Nyquist of the recording); then Label, Score,
  and Raven's measurements Begin File (the recording's file name) and File Offset (s) (= Begin
  Time, since each table covers one file), which let tables of many files be combined.
- csv: `file,start_s,end_s,label,score` (file = the recording path as given), "\\n" line ends.
- json: {"file", "duration_s", "sample_rate", "backend", "model", "events": [{"start_s", "end_s",
  "label", "score"}]}.
- audacity: one `start<TAB>end<TAB>label (score)` line per event. Audacity reads only the third
  tab-separated field as the label text and ignores further fields, so the score goes inside the
  label text, e.g. `owl (0.8731)`.

Torch-free: the standard library (and the Event type of events.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from biomamba.runtime.events import Event

FORMATS = ("raven", "csv", "json", "audacity")
EXTENSIONS = {
    "raven": "selection.table.txt",
    "csv": "csv",
    "json": "json",
    "audacity": "labels.txt",
}
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Label",
    "Score",
    "Begin File",
    "File Offset (s)",
)
CSV_COLUMNS = ("file", "start_s", "end_s", "label", "score")


class OutputError(ValueError):
    """An output file cannot be written (names the file and the reason)."""


def output_path(recording: Path, out_dir: Path | None, fmt: str) -> Path:
    """<out_dir, or the recording's folder>/<stem>.bmamba.<ext> for the format fmt."""
    _check_format(fmt)
    recording = Path(recording)
    folder = recording.parent if out_dir is None else Path(out_dir)
    return folder / f"{recording.stem}.bmamba.{EXTENSIONS[fmt]}"


def write_events(
    path: Path,
    events: Sequence[Event],
    fmt: str,
    *,
    recording: Path,
    duration_s: float,
    sample_rate: int,
    backend: str,
    model: str,
) -> None:
    """Writes the events of one recording to path, atomically, in the format fmt.

    recording: the audio file the events come from; duration_s: its length in seconds;
    sample_rate: its native sample rate in Hz (Raven's High Freq is its Nyquist); backend and
    model: what produced the events (written into the JSON file).
    """
    _check_format(fmt)
    recording = Path(recording)
    if fmt == "raven":
        text = _raven_table(events, recording, sample_rate)
    elif fmt == "csv":
        text = _csv_table(events, recording)
    elif fmt == "json":
        text = _json_document(events, recording, duration_s, sample_rate, backend, model)
    else:
        text = _audacity_labels(events)
    atomic_write_text(Path(path), text)


def atomic_write_text(path: Path, text: str) -> None:
    """Replaces path with text (UTF-8, line ends kept as given) so that readers and crashes see
    either the old file or the whole new one: temp file in the same folder, fsync, os.replace."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # os.open with 0o666 lets the umask decide the permissions, as for an ordinary file.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror}") from error
    try:
        with open(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
        raise
    _sync_folder(path.parent)


# --- formats -------------------------------------------------------------------------------------


def _raven_table(events: Sequence[Event], recording: Path, sample_rate: int) -> str:
    nyquist = _plain_number(sample_rate / 2)
    lines = ["\t".join(RAVEN_COLUMNS)]
    for number, event in enumerate(events, start=1):
        begin = _time(event.start_s)
        row = (str(number), "Spectrogram 1", "1", begin, _time(event.end_s), "0", nyquist,
               _text(event.label), _score(event.score), _text(recording.name), begin)
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def _csv_table(events: Sequence[Event], recording: Path) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for event in events:
        writer.writerow((str(recording), _time(event.start_s), _time(event.end_s), event.label,
                         _score(event.score)))
    return buffer.getvalue()


def _json_document(events: Sequence[Event], recording: Path, duration_s: float,
                   sample_rate: int, backend: str, model: str) -> str:
    document = {
        "file": str(recording),
        "duration_s": round(float(duration_s), 6),
        "sample_rate": int(sample_rate),
        "backend": backend,
        "model": model,
        "events": [
            {
                "start_s": round(event.start_s, 6),
                "end_s": round(event.end_s, 6),
                "label": event.label,
                "score": round(event.score, 4),
            }
            for event in events
        ],
    }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def _audacity_labels(events: Sequence[Event]) -> str:
    return "".join(
        f"{_time(e.start_s)}\t{_time(e.end_s)}\t{_text(e.label)} ({_score(e.score)})\n"
        for e in events
    )


# --- helpers -------------------------------------------------------------------------------------


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _time(seconds: float) -> str:
    return f"{seconds:.6f}"


def _score(score: float) -> str:
    return f"{score:.4f}"


def _plain_number(value: float) -> str:
    """22050.0 -> "22050", 4000.5 -> "4000.5"."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _text(value: str) -> str:
    """Tabs and line breaks would split a field or a row of the tab-separated formats."""
    return " ".join(str(value).split("\t")).replace("\r", " ").replace("\n", " ")


def _sync_folder(folder: Path) -> None:
    """Makes the rename itself durable (POSIX); not possible, and not needed, on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
