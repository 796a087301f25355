"""Data formats and datasets: annotation readers, BEANS windowing, torch Datasets.

The readers and the windowing are numpy-only and load eagerly; the torch Datasets
(`ClassificationDataset`, `DetectionDataset`, `collate_padded`) load on first use, so that
`import biomamba.data.annotations` stays torch-free for the field runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .annotations import (
    Annotation,
    AnnotationError,
    DetectionItem,
    find_annotation_table,
    read_annotations,
    read_audacity,
    read_beans_csv,
    read_beans_jsonl,
    read_raven,
)
from .windows import class_index, events_by_window, frame_targets, window_starts, window_targets

if TYPE_CHECKING:
    from .datasets import ClassificationDataset, DetectionDataset, DetectionWindow, collate_padded

_TORCH_NAMES = ("ClassificationDataset", "DetectionDataset", "DetectionWindow", "collate_padded")

__all__ = [
    "Annotation",
    "AnnotationError",
    "DetectionItem",
    "find_annotation_table",
    "read_annotations",
    "read_audacity",
    "read_beans_csv",
    "read_beans_jsonl",
    "read_raven",
    "class_index",
    "events_by_window",
    "frame_targets",
    "window_starts",
    "window_targets",
    "ClassificationDataset",
    "DetectionDataset",
    "DetectionWindow",
    "collate_padded",
]


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from . import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
