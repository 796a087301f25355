"""Training data folders: the two layouts, and a message that says what to do for anything else.

- classify: a folder per class, `ROOT/<class>/**/<recording>`, as BirdNET-Analyzer's trainer
  takes. Folders named as BirdNET-Analyzer's non-event classes (`NON_EVENT_FOLDERS`, any case)
  hold recordings with none of the classes; all of them train one class, `BACKGROUND_CLASS`, so
  that a single species can be trained against it.
- detect: recordings (searched recursively) with an annotation file beside each, named by
  `annotations.TABLE_NAMES`.

BirdNET-Analyzer's multi-label folders (`A,B`) and per-class negatives (`-A`) need multi-label
training, which a one-label-per-clip classifier does not do: they are refused with the reason.
Torch-free (the standard library only), so the command line can use it before loading torch.
"""

from __future__ import annotations

from pathlib import Path

from ..audio import AUDIO_EXTENSIONS
from .annotations import find_annotation_table, table_naming_rule

# BirdNET-Analyzer's NON_EVENT_CLASSES (birdnet_analyzer/config.py), compared in lower case.
NON_EVENT_FOLDERS = ("noise", "other", "background", "silence")
BACKGROUND_CLASS = "background"


def is_audio(path: Path) -> bool:
    """A visible file with an audio extension (macOS's `._x.wav` files start with a dot)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in AUDIO_EXTENSIONS


def find_recordings(root: Path) -> list[Path]:
    """The audio files under `root`, searched recursively, sorted."""
    return sorted(f for f in Path(root).rglob("*") if is_audio(f))


def folder_label(folder: Path) -> str:
    """The class of the recordings in a class folder: its name, or `BACKGROUND_CLASS` for a
    non-event folder. Raises ValueError for BirdNET-Analyzer's multi-label folder names."""
    name = folder.name
    if name.lower() in NON_EVENT_FOLDERS:
        return BACKGROUND_CLASS
    if name.startswith("-"):
        raise ValueError(
            f"{folder}: a '-<class>' folder is BirdNET-Analyzer's negative for one class, which needs "
            "multi-label training; bmamba gives each clip one label: put recordings that hold none "
            f"of the classes in {folder.parent / 'noise'}")
    if "," in name:
        raise ValueError(
            f"{folder}: a folder named for several classes is BirdNET-Analyzer's multi-label layout; "
            "bmamba gives each clip one label: use one folder per class")
    return name


def class_folder_items(root: Path) -> list[tuple[Path, str]]:
    """(recording, label) of every recording in `root`'s class folders (searched recursively),
    in folder then file order. Raises ValueError saying what was found instead when there is
    no class folder with recordings."""
    root = Path(root)
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = find_recordings(folder)
        if files:
            label = folder_label(folder)
            items += [(f, label) for f in files]
    if not items:
        raise ValueError(_no_class_folders(root))
    return items


def _no_class_folders(root: Path) -> str:
    found = find_recordings(root)
    if not found:
        return f"{root}: no recordings found (looked for {', '.join(sorted(AUDIO_EXTENSIONS))} files)"
    message = (f"{root}: found {len(found)} recording(s) but no class folders; to train a classifier, "
               f"put each class's recordings in a folder named after the class ({root / '<class>'}), "
               f"and recordings holding none of the classes in {root / 'noise'} (BirdNET-Analyzer's layout)")
    tables = sum(find_annotation_table(f) is not None for f in found)
    if tables:
        message += f"; {tables} of them have an annotation table beside them: train a detector with --task detect"
    return message


def check_detection_source(source: Path) -> None:
    """Raise ValueError, saying what to do, when `source` cannot hold detection data: a CSV
    listing, or a folder where no recording has an annotation file beside it."""
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() == ".csv":
            raise ValueError(
                f"{source}: a CSV listing (path,label) is for clip classification (--task classify); "
                'detection takes a BEANS JSONL listing (one object a line: {"path", "length", '
                '"annotations": [{"st", "ed", "label"}]}) or a folder of recordings with annotation '
                "tables beside them")
        return
    if not source.is_dir():
        return
    found = find_recordings(source)
    if any(find_annotation_table(f) is not None for f in found):
        return
    rule = (f"put a Raven selection table or an Audacity label track beside each recording, named "
            f"{table_naming_rule()}")
    if not found:
        raise ValueError(f"{source}: no recordings found")
    classes = sorted({f.relative_to(source).parts[0] for f in found if len(f.relative_to(source).parts) > 1})
    if classes:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise ValueError(
            f"{source}: {len(found)} recording(s) in folders ({shown}) but no annotation table beside "
            "any. To train on whole clips, one label each, use --task classify (as BirdNET-Analyzer "
            "does; bmamba detect runs a classifier over consecutive windows). To train a detector, "
            f"{rule}")
    raise ValueError(f"{source}: found {len(found)} recording(s) but no annotation table beside any; {rule}")
