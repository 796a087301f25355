"""Reading annotation files: Raven selection tables, Audacity label tracks, BEANS JSONL / CSV.

Every reader returns plain data (`Annotation`, `DetectionItem`) and raises `AnnotationError`
naming the file and line of the first bad entry. No audio is read here.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

# Times may exceed the recording's duration by this much before they count as outside it
# (tables store times rounded to a few decimals, durations come from sample counts).
TIME_TOLERANCE_S = 0.01

RAVEN_BEGIN = "Begin Time (s)"
RAVEN_END = "End Time (s)"
RAVEN_LOW = "Low Freq (Hz)"
RAVEN_HIGH = "High Freq (Hz)"
# Tried in this order when no label column is named.
RAVEN_LABEL_COLUMNS = (
    "Annotation",
    "Label",
    "Species",
    "Class",
    "Common Name",
    "Species Code",
    "Call Type",
)


class AnnotationError(ValueError):
    """A bad annotation file: `path`, `line` (1-based, None for the file as a whole), `reason`."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Annotation:
    """One labelled event. Times in seconds from the start of the recording; frequencies in Hz
    (None when the file has none); channel is Raven's 1-based channel (None when absent)."""

    start_s: float
    end_s: float
    label: str
    low_hz: float | None = None
    high_hz: float | None = None
    channel: int | None = None


@dataclass(frozen=True)
class DetectionItem:
    """One recording of a BEANS detection JSONL: its path, length in seconds, and events."""

    path: Path
    length_s: float
    annotations: list[Annotation] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _read_lines(path: Path) -> list[str]:
    """The file's lines without line ends. UTF-8 (with or without BOM), else Latin-1, which
    Raven on Windows may write."""
    if not path.is_file():
        raise AnnotationError(path, None, "no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.splitlines()


def _number(path: Path, line: int, text: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise AnnotationError(path, line, f"{what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise AnnotationError(path, line, f"{what} {text.strip()!r} is not a finite number")
    return value


def _check_times(path: Path, line: int, start: float, end: float, duration_s: float | None) -> None:
    if start < 0:
        raise AnnotationError(path, line, f"start time {start} s is negative")
    if end < start:
        raise AnnotationError(path, line, f"end time {end} s is before start time {start} s")
    if duration_s is not None and end > duration_s + TIME_TOLERANCE_S:
        raise AnnotationError(
            path, line, f"event {start}-{end} s ends after the recording ({duration_s:.3f} s)"
        )


def _label(path: Path, line: int, text: str) -> str:
    label = text.strip()
    if not label:
        raise AnnotationError(path, line, "empty label")
    return label


# --------------------------------------------------------------------------- Raven


def read_raven(
    path: str | Path, label_column: str | None = None, *, duration_s: float | None = None
) -> list[Annotation]:
    """Read a Raven selection table (tab-separated, one header row).

    Columns are found by name: "Begin Time (s)" and "End Time (s)" (required), "Low Freq (Hz)",
    "High Freq (Hz)", "Channel", "Selection" (optional). The label comes from `label_column`,
    else from the first present of `RAVEN_LABEL_COLUMNS`. Raven writes one row per view of a
    selection ("Waveform 1", "Spectrogram 1"): only the first row of each Selection number is
    kept. With `duration_s`, events ending after the recording are errors. Returns the
    annotations in file order.
    """
    path = Path(path)
    lines = _read_lines(path)
    if not lines or not lines[0].strip():
        raise AnnotationError(path, 1, "empty file: expected a Raven header row")
    header = [name.strip() for name in lines[0].split("\t")]
    columns = {name: i for i, name in reversed(list(enumerate(header)))}  # first wins
    for required in (RAVEN_BEGIN, RAVEN_END):
        if required not in columns:
            raise AnnotationError(
                path, 1, f"no {required!r} column (is this a Raven selection table?); columns: {header}"
            )
    if label_column is not None:
        if label_column not in columns:
            raise AnnotationError(path, 1, f"no label column {label_column!r}; columns: {header}")
    else:
        label_column = next((c for c in RAVEN_LABEL_COLUMNS if c in columns), None)
        if label_column is None:
            raise AnnotationError(
                path, 1,
                f"no label column (looked for {list(RAVEN_LABEL_COLUMNS)}); columns: {header}; "
                "name one with label_column",
            )

    def cell(fields: list[str], name: str) -> str | None:
        i = columns.get(name)
        return fields[i].strip() if i is not None and i < len(fields) else None

    seen_selections: set[str] = set()
    out = []
    for number, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) > len(header) and any(f.strip() for f in fields[len(header):]):
            raise AnnotationError(
                path, number, f"{len(fields)} fields but the header has {len(header)} columns"
            )
        selection = cell(fields, "Selection")
        if selection:
            if selection in seen_selections:
                continue  # another view of a selection already read
            seen_selections.add(selection)
        begin, end = cell(fields, RAVEN_BEGIN), cell(fields, RAVEN_END)
        if not begin or not end:
            raise AnnotationError(path, number, f"missing {RAVEN_BEGIN!r} or {RAVEN_END!r}")
        start_s = _number(path, number, begin, RAVEN_BEGIN)
        end_s = _number(path, number, end, RAVEN_END)
        _check_times(path, number, start_s, end_s, duration_s)
        low, high, channel = cell(fields, RAVEN_LOW), cell(fields, RAVEN_HIGH), cell(fields, "Channel")
        out.append(
            Annotation(
                start_s=start_s,
                end_s=end_s,
                label=_label(path, number, cell(fields, label_column) or ""),
                low_hz=_number(path, number, low, RAVEN_LOW) if low else None,
                high_hz=_number(path, number, high, RAVEN_HIGH) if high else None,
                channel=int(_number(path, number, channel, "Channel")) if channel else None,
            )
        )
    return out


# --------------------------------------------------------------------------- Audacity


def read_audacity(path: str | Path, *, duration_s: float | None = None) -> list[Annotation]:
    """Read an Audacity label track export: lines `start<TAB>end<TAB>label`, each optionally
    followed by a frequency line `\\<TAB>low<TAB>high` (a negative frequency is Audacity's
    "undefined" and reads as None). With `duration_s`, events ending after the recording are
    errors."""
    path = Path(path)
    out: list[Annotation] = []
    for number, text in enumerate(_read_lines(path), start=1):
        if not text.strip():
            continue
        fields = text.split("\t")
        if fields[0].strip() == "\\":
            if not out:
                raise AnnotationError(path, number, "frequency line before any label line")
            if len(fields) < 3:
                raise AnnotationError(path, number, "frequency line needs '\\<TAB>low<TAB>high'")
            low = _number(path, number, fields[1], "low frequency")
            high = _number(path, number, fields[2], "high frequency")
            previous = out[-1]
            out[-1] = Annotation(
                previous.start_s, previous.end_s, previous.label,
                low_hz=low if low >= 0 else None, high_hz=high if high >= 0 else None,
            )
            continue
        if len(fields) < 3:
            raise AnnotationError(path, number, "expected 'start<TAB>end<TAB>label'")
        start_s = _number(path, number, fields[0], "start time")
        end_s = _number(path, number, fields[1], "end time")
        _check_times(path, number, start_s, end_s, duration_s)
        out.append(Annotation(start_s, end_s, _label(path, number, "\t".join(fields[2:]))))
    return out


# --------------------------------------------------------------------------- either, by content


def read_annotations(
    path: str | Path, *, label_column: str | None = None, duration_s: float | None = None
) -> list[Annotation]:
    """Read a Raven table or an Audacity label track, told apart by content: a first line that
    holds the "Begin Time (s)" column is Raven, anything else Audacity."""
    path = Path(path)
    lines = _read_lines(path)
    if lines and RAVEN_BEGIN in lines[0].split("\t"):
        return read_raven(path, label_column, duration_s=duration_s)
    return read_audacity(path, duration_s=duration_s)


# The names an annotation file may have beside a recording `<stem>.<ext>`, tried in this order:
# Raven's default save name, a shorter Raven name, the Raven table `bmamba detect` writes (so
# that detect -> review in Raven -> retrain is a loop), and a plain `<stem>.txt` (Raven table or
# Audacity label track, told apart by content).
TABLE_NAMES = ("{stem}.Table.1.selections.txt", "{stem}.selections.txt",
               "{stem}.bmamba.selection.table.txt", "{stem}.txt")


def table_naming_rule() -> str:
    """The naming rule in words, for help texts and error messages."""
    return ", ".join(name.format(stem="<stem>") for name in TABLE_NAMES) + " (the first found)"


def find_annotation_table(recording: str | Path) -> Path | None:
    """The annotation file next to `recording`, or None: the first of `TABLE_NAMES` that exists
    in the recording's folder. `<stem>.txt` may be a Raven table or an Audacity label track;
    `read_annotations` tells them apart."""
    recording = Path(recording)
    for name in TABLE_NAMES:
        candidate = recording.with_name(name.format(stem=recording.stem))
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- BEANS


def _resolve(path_text: str, listing: Path) -> Path:
    """A path from a BEANS listing: absolute as is; relative against the listing's folder,
    else against the first of its ancestors where the file exists (BEANS writes paths
    relative to its repository root, e.g. `data/dcase/wav/x.wav` in `data/dcase/train.jsonl`)."""
    p = Path(path_text)
    if p.is_absolute():
        return p
    folder = listing.resolve().parent
    for base in (folder, *folder.parents):
        if (base / p).exists():
            return base / p
    return folder / p


def read_beans_jsonl(path: str | Path) -> list[DetectionItem]:
    """Read a BEANS detection listing: one JSON object a line,
    `{"path": str, "length": seconds, "annotations": [{"st": s, "ed": s, "label": str}]}`.
    Relative paths are resolved as `_resolve` says; events must lie inside `length`."""
    path = Path(path)
    items = []
    for number, text in enumerate(_read_lines(path), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise AnnotationError(path, number, f"not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not {"path", "length", "annotations"} <= row.keys():
            raise AnnotationError(path, number, 'expected {"path", "length", "annotations"}')
        if not isinstance(row["path"], str) or not row["path"]:
            raise AnnotationError(path, number, '"path" must be a non-empty string')
        length = _number(path, number, str(row["length"]), '"length"')
        if length < 0:
            raise AnnotationError(path, number, f'"length" {length} is negative')
        if not isinstance(row["annotations"], list):
            raise AnnotationError(path, number, '"annotations" must be a list')
        annotations = []
        for k, a in enumerate(row["annotations"]):
            if not isinstance(a, dict) or not {"st", "ed", "label"} <= a.keys():
                raise AnnotationError(path, number, f'annotation {k}: expected {{"st", "ed", "label"}}')
            st = _number(path, number, str(a["st"]), f'annotation {k} "st"')
            ed = _number(path, number, str(a["ed"]), f'annotation {k} "ed"')
            _check_times(path, number, st, ed, length)
            annotations.append(Annotation(st, ed, _label(path, number, str(a["label"]))))
        items.append(DetectionItem(_resolve(row["path"], path), length, annotations))
    return items


def read_beans_csv(path: str | Path, split: str | None = None) -> list[tuple[Path, str]]:
    """Read a BEANS classification listing: CSV with a header holding `path` and `label`
    (other columns are ignored). Relative paths are resolved as `_resolve` says.

    split: keep only the rows whose `split` column holds this value (e.g. InsectSet32's
    files.csv: train / validation); the file must then have a `split` column and at least one
    such row."""
    path = Path(path)
    lines = _read_lines(path)
    reader = csv.reader(lines)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise AnnotationError(path, 1, "empty file: expected a header 'path,label'") from None
    if "path" not in header or "label" not in header:
        raise AnnotationError(path, 1, f"header must hold 'path' and 'label'; found {header}")
    if split is not None and "split" not in header:
        raise AnnotationError(path, 1, f"no 'split' column to select split {split!r} from; found {header}")
    i_path, i_label = header.index("path"), header.index("label")
    i_split = header.index("split") if split is not None else None
    out, splits = [], set()
    for fields in reader:
        number = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if len(fields) <= max(i_path, i_label, i_split or 0):
            raise AnnotationError(path, number, f"{len(fields)} fields but the header has {len(header)}")
        if i_split is not None:
            splits.add(fields[i_split].strip())
            if fields[i_split].strip() != split:
                continue
        if not fields[i_path].strip():
            raise AnnotationError(path, number, "empty path")
        out.append((_resolve(fields[i_path].strip(), path), _label(path, number, fields[i_label])))
    if split is not None and not out:
        raise AnnotationError(path, None, f"no row of split {split!r}; its splits: {', '.join(sorted(splits)) or 'none'}")
    return out
