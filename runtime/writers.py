"""Event files for `bmamba detect`: Raven selection table, CSV, JSON, Audacity labels.

One file per recording, `<stem>.bmamba.<ext>`, written atomically (a temporary file
`.<name>.<12 hex>.tmp` in the same folder, flushed to disk, then renamed over the target), so a
reader never sees half a file and a crash leaves either the old file or the new one (and at most a
temporary file, which `remove_stale_temps` clears at the next start). Under an output folder the
outputs mirror the recordings' folders, so two recordings never share an output. A recording with no events still gets a file
(a header, an empty "events" list, or an empty label file), so "processed, nothing found" differs
from "not processed". Several formats of one recording are written together (`EventFiles`); the
table of a whole run (`write_combined`, ``bmamba detect --combine``) is built from the
per-recording files at the end, so a resumed run's table holds what earlier runs did.

Number formats, the same in every format: times in seconds with 6 decimals (microseconds: finer
than one sample at 16 kHz, and what Audacity itself writes), scores with 4 decimals (what
BirdNET-Analyzer writes for its Confidence column).

- raven: tab-separated, "\\n" line ends. Raven's own columns first, in Raven's order, as
  BirdNET-Analyzer does: Selection (1..n), View ("Spectrogram 1"), Channel (the channel analysed:
  N with --channel N, else 1, the mix), Begin Time (s), End Time (s), Low Freq (Hz) (0), High
  Freq (Hz) (Nyquist of the recording); then Label, Score (the event's largest frame probability),
  and Raven's measurements Begin File (the recording's file name), File Offset (s) (= Begin Time,
  since each table covers one file) and Begin Path (the recording's absolute path), which let
  Raven open tables of many files (`write_combined`).
- csv: `file,start_s,end_s,label,score` (file = the recording path as given), "\\n" line ends.
- json: {"file", "duration_s", "sample_rate", "backend", "model", "events": [{"start_s", "end_s",
  "label", "score"}]}.
- audacity: one `start<TAB>end<TAB>label (score)` line per event. Audacity reads only the third
  tab-separated field as the label text and ignores further fields, so the score goes inside the
  label text, e.g. `owl (0.8731)`.

Torch-free: the standard library (and the Event type of events.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
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
    "Begin Path",
)
CSV_COLUMNS = ("file", "start_s", "end_s", "label", "score")


def table_columns(formats) -> dict[str, list[str]]:
    """The columns of the tables among ``formats`` (Raven, CSV): a journal keeps them with its
    settings, so that tables written by a version with other columns are made again on resume."""
    return {fmt: list(cols) for fmt, cols in (("raven", RAVEN_COLUMNS), ("csv", CSV_COLUMNS)) if fmt in formats}


class OutputError(ValueError):
    """An output file cannot be written (names the file and the reason)."""


def output_path(recording: Path, out_dir: Path | None, fmt: str, root: Path | None = None) -> Path:
    """Where the events of recording go, for the format fmt: <stem>.bmamba.<ext>

    - without out_dir: beside the recording;
    - with out_dir: at the recording's place relative to root (the input folder it was found in),
      under out_dir: root ``data``, recording ``data/siteA/x.wav`` -> ``out_dir/siteA/x.bmamba.<ext>``;
      without root (a file named directly), ``out_dir/x.bmamba.<ext>``.
    """
    _check_format(fmt)
    recording = Path(recording)
    name = f"{recording.stem}.bmamba.{EXTENSIONS[fmt]}"
    if out_dir is None:
        return recording.parent / name
    relative = recording.relative_to(root) if root is not None else Path(recording.name)
    return Path(out_dir) / relative.parent / name


def write_events(
    path: Path,
    events: Iterable[Event],
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
    with EventFile(path, fmt, recording=recording, sample_rate=sample_rate, backend=backend,
                   model=model) as file:
        file.add(events)
        file.commit(duration_s)


class EventFile:
    """The event file of one recording, written while the recording is processed.

    Rows go to a temporary file in the target's folder as events arrive, so memory does not grow
    with their number (a randomly initialised edge model gave 34,000 events on 8 h of audio);
    `commit(duration_s)` makes the file durable and renames it over the target, so readers and
    crashes see either the old file or the whole new one. Leaving a ``with`` block without a
    commit (an exception, a failed recording) removes the temporary file. Every OSError becomes
    an OutputError naming the target.
    """

    def __init__(self, path: Path, fmt: str, *, recording: Path, sample_rate: int, backend: str, model: str,
                 channel: int = 1):
        _check_format(fmt)
        self.path, self.fmt, self.recording = Path(path), fmt, Path(recording)
        self.channel = str(int(channel))   # Raven's Channel: the one analysed (1 for the mono mix)
        self.meta = {"file": str(self.recording), "sample_rate": int(sample_rate), "backend": backend,
                     "model": model}
        self.nyquist = _plain_number(sample_rate / 2)
        self.count = 0
        self._temps: list[Path] = []
        with self._guard():
            self._file = self._create()
            self._file.write({"raven": "\t".join(RAVEN_COLUMNS) + "\n", "csv": _csv_line(CSV_COLUMNS)}.get(fmt, ""))

    def add(self, events: Iterable[Event]) -> None:
        """Appends events (in order) to the file."""
        with self._guard():
            for event in events:   # row by row: the file object buffers, no text of all rows
                self.count += 1
                self._file.write(self._row(event))

    def commit(self, duration_s: float) -> None:
        """Finishes the file (duration_s: the recording's length) and renames it over the target."""
        with self._guard():
            if self.fmt == "json":
                self._file = self._json_document(duration_s)
            _finish(self._file, self._temps[-1], self.path)
            self._temps.pop()   # renamed: nothing left to remove but the JSON rows
            self._discard()
        _sync_folder(self.path.parent)

    def discard(self) -> None:
        """Removes the unfinished file (a no-op after commit)."""
        self._file.close()
        self._discard()

    def __enter__(self) -> EventFile:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    # -- internals

    def _row(self, e: Event) -> str:
        begin, end = _time(e.start_s), _time(e.end_s)
        if self.fmt == "raven":
            return "\t".join((str(self.count), "Spectrogram 1", self.channel, begin, end, "0", self.nyquist,
                              _text(e.label), _score(e.score), _text(self.recording.name), begin,
                              _text(os.path.abspath(self.recording)))) + "\n"
        if self.fmt == "csv":
            return _csv_line((str(self.recording), begin, end, e.label, _score(e.score)))
        if self.fmt == "json":   # one event per line, after the list's opening bracket
            event = {"start_s": round(e.start_s, 6), "end_s": round(e.end_s, 6), "label": e.label,
                     "score": round(e.score, 4)}
            return ("\n  " if self.count == 1 else ",\n  ") + json.dumps(event, ensure_ascii=False)
        return f"{begin}\t{end}\t{_text(e.label)} ({_score(e.score)})\n"

    def _json_document(self, duration_s: float):
        """The JSON header holds the duration, known only at the end: header, the rows written so
        far (copied, not read into memory), footer, into a second temporary file."""
        rows = self._temps[-1]
        self._file.close()
        meta = {"file": self.meta["file"], "duration_s": round(float(duration_s), 6),
                **{k: v for k, v in self.meta.items() if k != "file"}}
        document = self._create()
        document.write("{\n" + "".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},\n"
                                        for k, v in meta.items()) + ' "events": [')
        with open(rows, encoding="utf-8", newline="") as body:
            shutil.copyfileobj(body, document)
        document.write(("\n ]" if self.count else "]") + "\n}\n")
        return document

    def _create(self):
        temp, file = _create_temp(self.path)
        self._temps.append(temp)
        return file

    def _discard(self) -> None:
        while self._temps:
            self._temps.pop().unlink(missing_ok=True)

    @contextlib.contextmanager
    def _guard(self):
        try:
            yield
        except BaseException as error:
            if hasattr(self, "_file"):
                self._file.close()
            self._discard()
            if isinstance(error, OSError):
                raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error
            raise


def parse_formats(text: str) -> tuple[str, ...]:
    """"raven,csv" -> ("raven", "csv"): the formats of one run, the first one the main one (its
    outputs are planned, journaled and summarised). Raises ValueError naming a bad or repeated one."""
    fmts = tuple(f.strip() for f in str(text).split(","))
    for fmt in fmts:
        if fmt not in FORMATS:
            raise ValueError(f"--format {fmt!r}: choose one or more of {', '.join(FORMATS)} "
                             "(several: --format raven,csv)")
    if len(set(fmts)) != len(fmts):
        raise ValueError(f"--format {text!r} names a format twice")
    return fmts


def sibling_path(path: Path, fmt: str, other: str) -> Path:
    """The output for format other beside path, the output of format fmt of the same recording:
    ``x.bmamba.selection.table.txt`` -> ``x.bmamba.csv``."""
    suffix = "." + EXTENSIONS[fmt]
    if not path.name.endswith(suffix):
        raise ValueError(f"{path} is not a {fmt} output")
    return path.with_name(path.name[: -len(suffix)] + "." + EXTENSIONS[other])


class EventFiles:
    """The event files of one recording in several formats (`EventFile` each), written together:
    the first format's path is given, the others go beside it (`sibling_path`)."""

    def __init__(self, path: Path, fmts: tuple[str, ...], **meta):
        self.paths = [Path(path)] + [sibling_path(Path(path), fmts[0], f) for f in fmts[1:]]
        self.files: list[EventFile] = []
        try:
            for p, fmt in zip(self.paths, fmts):
                self.files.append(EventFile(p, fmt, **meta))
        except BaseException:
            self.discard()
            raise

    @property
    def count(self) -> int:
        return self.files[0].count

    def add(self, events: Iterable[Event]) -> None:
        events = list(events)
        for file in self.files:
            file.add(events)

    def commit(self, duration_s: float) -> None:
        for file in self.files:
            file.commit(duration_s)

    def discard(self) -> None:
        for file in self.files:
            file.discard()

    def __enter__(self) -> EventFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def read_events(path: Path, fmt: str) -> Iterator[Event]:
    """The events of one of our own per-recording outputs (any format), in file order. Raven
    tables are read by column name (a table from before a column was added reads too)."""
    _check_format(fmt)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
        if fmt == "json":
            for e in json.load(file)["events"]:
                yield Event(float(e["start_s"]), float(e["end_s"]), e["label"], float(e["score"]))
        elif fmt == "csv":
            for row in csv.DictReader(file):
                yield Event(float(row["start_s"]), float(row["end_s"]), row["label"], float(row["score"]))
        elif fmt == "raven":
            for row in _raven_rows(file):
                yield Event(float(row["Begin Time (s)"]), float(row["End Time (s)"]), row["Label"],
                            float(row["Score"]))
        else:
            for line in file:
                begin, end, text = line.rstrip("\n").split("\t")[:3]
                label, _, score = text.rpartition(" (")
                yield Event(float(begin), float(end), label, float(score.rstrip(")")))


def _raven_rows(file) -> Iterator[dict[str, str]]:
    header = file.readline().rstrip("\n").split("\t")
    for line in file:
        if line.strip():
            yield dict(zip(header, line.rstrip("\n").split("\t")))


COMBINED_STEM = "bmamba.combined"
COMBINED_FORMATS = ("raven", "csv", "json")   # an Audacity label track belongs to one recording


def combined_path(folder: Path, fmt: str) -> Path:
    """``folder/bmamba.combined.<ext>``: the table of a whole run (`write_combined`)."""
    return Path(folder) / f"{COMBINED_STEM}.{EXTENSIONS[fmt]}"


def write_combined(path: Path, fmt: str, tables: Iterable[tuple[Path, Path, float]]) -> int:
    """One table for a whole run, built from the per-recording outputs (so a resumed run's table
    holds the recordings an earlier run did), written atomically. Returns the number of events.

    tables: (recording, its output in format fmt, its duration in seconds), in run order.
    - raven: every row of every table, Selection numbered 1..n across the table, Begin Path the
      recording's absolute path, File Offset (s) the time in that recording, and Begin Time /
      End Time on the timeline of the recordings one after another (Raven's file sequence, as
      BirdNET-Analyzer's combined table); the other columns as in the recording's table.
    - csv: one header, then every recording's rows (their `file` column names the recording).
    - json: {"events": [{"file", "start_s", "end_s", "label", "score"}, ...]}.
    Memory holds one recording's table at most (rows are copied line by line).
    """
    if fmt not in COMBINED_FORMATS:
        raise ValueError(f"no combined table for {fmt!r} (one of {', '.join(COMBINED_FORMATS)})")
    count = 0
    with _atomic_output(Path(path)) as out:
        out.write({"raven": "\t".join(RAVEN_COLUMNS) + "\n", "csv": _csv_line(CSV_COLUMNS),
                   "json": '{\n "events": ['}[fmt])
        offset = 0.0
        for recording, table, duration_s in tables:
            with open(table, encoding="utf-8", errors="surrogateescape", newline="") as file:
                if fmt == "raven":
                    for row in _raven_rows(file):
                        count += 1
                        begin = float(row["Begin Time (s)"])
                        row.update({"Selection": str(count),
                                    "Begin Time (s)": _time(begin + offset),
                                    "End Time (s)": _time(float(row["End Time (s)"]) + offset),
                                    "File Offset (s)": _time(begin),
                                    "Begin File": _text(Path(recording).name),
                                    "Begin Path": _text(os.path.abspath(recording))})
                        out.write("\t".join(row.get(c, "") for c in RAVEN_COLUMNS) + "\n")
                elif fmt == "csv":
                    file.readline()   # the header
                    for line in file:
                        count += 1
                        out.write(line)
                else:
                    for e in json.load(file)["events"]:
                        count += 1
                        out.write(("\n  " if count == 1 else ",\n  ")
                                  + json.dumps({"file": str(recording), **e}, ensure_ascii=False))
            offset += float(duration_s)
        if fmt == "json":
            out.write(("\n ]" if count else "]") + "\n}\n")
    return count


def atomic_write_text(path: Path, text: str) -> None:
    """Replaces path with text (UTF-8, line ends kept as given) so that readers and crashes see
    either the old file or the whole new one (`_atomic_output`)."""
    with _atomic_output(Path(path)) as file:
        file.write(text)


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator:
    """A text file (UTF-8) that replaces ``path`` when the block ends without error: a temp file
    in the same folder, fsync, os.replace, then the folder synced. On any error the temp file is
    removed, ``path`` is left as it was, and an OSError becomes an OutputError naming ``path``."""
    temp = None
    try:
        temp, file = _create_temp(path)
        with file:
            yield file
            _finish(file, temp, path)
    except BaseException as error:
        if temp is not None:
            temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
        raise
    _sync_folder(path.parent)


_TEMP = re.compile(r"^\.(?P<prefix>.+)\.[0-9a-f]{12}\.tmp$", re.DOTALL)
_NAME_MAX = 255   # bytes in one file name on Linux, macOS and Windows file systems


def _temp_prefix(path: Path) -> str:
    """The part of path's name that its temporary files carry: the whole name, or, where
    ".<name>.<12 hex>.tmp" would pass the file system's limit, the longest start of it that fits
    (so a temporary name never makes a legal output name fail)."""
    name = os.fsencode(path.name)
    keep = _NAME_MAX - len(".") - len(".0123456789ab.tmp")
    return os.fsdecode(name[:keep]) if len(name) > keep else path.name


def _create_temp(path: Path):
    """(temporary path, text file open for writing) beside path, never an existing file.

    A file name that is not valid UTF-8 (it reaches Python as surrogate escapes) is written into
    the text as backslash escapes (``\\udcff``), which JSON reads back as the same name."""
    temp = path.with_name(f".{_temp_prefix(path)}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide the permissions, as for an ordinary file.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return temp, open(fd, "w", encoding="utf-8", errors="backslashreplace", newline="")


def remove_stale_temps(outputs: Iterable[Path]) -> list[Path]:
    """Removes the temporary files a killed run left for these outputs; returns what it removed.

    Only names of the form ``.<output name>.<12 hex>.tmp`` beside one of the given outputs are
    touched: nothing of anyone else's, nothing in other folders. Folders that cannot be listed, and
    files that cannot be removed, are left as they are (writing there will say why)."""
    wanted: dict[Path, set[str]] = {}
    for output in outputs:
        wanted.setdefault(Path(output).parent, set()).add(_temp_prefix(Path(output)))
    removed = []
    for folder, prefixes in wanted.items():
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            match = _TEMP.match(name)
            if match and match["prefix"] in prefixes:
                try:
                    os.unlink(folder / name)
                    removed.append(folder / name)
                except OSError:
                    pass
    return removed


def _finish(file, temp: Path, path: Path) -> None:
    """Makes the temporary file durable and renames it over path."""
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.replace(temp, path)


# --- helpers -------------------------------------------------------------------------------------


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _csv_line(fields) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue()


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
