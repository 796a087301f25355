"""``model.json``: the manifest of an exported model folder (``bmamba export``), read torch-free.

An export folder holds::

    model.json          this manifest
    frontend.onnx       audio [B, 320*T + 80] float32 -> frames [B, T, d_model]
    mamba.onnx          frames + per-layer states -> logits, embeddings, new states
    frontend.engine     (optional) TensorRT engines built from the plugin variant
    mamba.engine
    model.safetensors   the source weights + config.json, so ``BioMamba.load(folder)`` works
    config.json

The state of layer i is ``conv_state_{i}`` [batch, conv_dim, d_conv - 1] and ``ssm_state_{i}``
[batch, H, P, N], always float32; the graph returns its next value as ``<name>_out``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from biomamba.checkpoint import file_sha256, read_json
from biomamba.presets import LIMITS
from biomamba.streaming import CONTEXT, HOP, check_sample_rate

FORMAT = "bmamba-export"
FORMAT_VERSION = 1
MANIFEST = "model.json"
GRAPH_NAMES = ("frontend", "mamba")
VARIANTS = ("portable", "plugin")
PRECISIONS = ("fp32", "fp16")
BATCH_DIM = "batch"          # the symbolic batch axis in state shapes
STATE_OUTPUT_SUFFIX = "_out"

# Bounds on the numbers of model.json, checked before anything is built or allocated.
MAX_CHUNK_FRAMES = 180_000          # 1 hour of 20 ms frames
MAX_STATE_VALUES = 1 << 28          # all states of one stream together: 1 GiB of float32
MAX_CLASSES = 10_000
MAX_TRT_FRAMES = 180_000
MAX_TRT_BATCH = 1024


class ManifestError(ValueError):
    """A model folder that cannot be used; the message names the path and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass(frozen=True)
class StateSpec:
    """One carried state tensor: its graph input name, shape (``"batch"`` first) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    @property
    def output_name(self) -> str:
        """The graph output holding the next value of this state."""
        return self.name + STATE_OUTPUT_SUFFIX

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH_DIM else int(d) for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class FileEntry:
    """A file of the export and its SHA-256 (hex)."""

    file: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The contents of ``model.json``; ``folder`` is where it was read from (not stored)."""

    preset: str | None
    task: str
    classes: tuple[str, ...]
    sample_rate: int
    hop: int
    context: int
    chunk_frames: int
    thresholds: dict[str, float]
    variant: str
    precision: str
    opset: int
    d_model: int
    n_layers: int
    graphs: dict[str, FileEntry]
    states: tuple[StateSpec, ...]
    outputs: tuple[str, ...]
    source_sha256: str
    bmamba_version: str
    created: str
    engines: dict[str, FileEntry] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    folder: Path | None = field(default=None, compare=False)

    @property
    def chunk_s(self) -> float:
        """The default chunk length in seconds."""
        return self.chunk_frames * self.hop / self.sample_rate

    def graph_path(self, name: str) -> Path:
        return self._folder() / self.graphs[name].file

    def engine_path(self, name: str) -> Path:
        if name not in self.engines:
            raise ManifestError(self._folder(), "holds no TensorRT engines; build them with "
                                                "`bmamba export CHECKPOINT --trt`")
        return self._folder() / self.engines[name].file

    def _folder(self) -> Path:
        if self.folder is None:
            raise ValueError("this manifest was not read from a folder")
        return self.folder

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "folder"}
        d["classes"] = list(self.classes)
        d["outputs"] = list(self.outputs)
        d["states"] = [s.to_dict() for s in self.states]
        d["graphs"] = {k: asdict(v) for k, v in self.graphs.items()}
        d["engines"] = {k: asdict(v) for k, v in self.engines.items()}
        # Put the identification first so a human reading model.json sees it at once.
        return {"format": self.format, "format_version": self.format_version,
                **{k: v for k, v in d.items() if k not in ("format", "format_version")}}

    def with_changes(self, **changes) -> Manifest:
        return replace(self, **changes)


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``model.json`` into folder, atomically (a reader never sees half a file)."""
    path = Path(folder) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(model_dir: str | os.PathLike, *, verify_hashes: bool = False) -> Manifest:
    """Read and check ``model_dir/model.json``. Raises ManifestError naming the folder and the reason.

    Checks the format name and version, the fields, the state layout, and that the graph files exist;
    with ``verify_hashes`` also their SHA-256 (slow for large graphs: reads every byte).
    """
    folder = Path(model_dir)
    if folder.is_file() and folder.name == MANIFEST:
        folder = folder.parent
    if not folder.exists():
        raise ManifestError(folder, "no such model folder")
    if not folder.is_dir():
        raise ManifestError(folder, "not a folder; give the folder written by `bmamba export`")
    path = folder / MANIFEST
    if not path.is_file():
        hint = ("it is a checkpoint, not an export: run `bmamba export` on it first"
                if (folder / "config.json").is_file() else "run `bmamba export CHECKPOINT --out FOLDER`")
        raise ManifestError(folder, f"not a bmamba export (no {MANIFEST}); {hint}")
    data = read_json(path, ManifestError)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(path, f"not a bmamba export manifest (format is not {FORMAT!r})")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ManifestError(path, "format_version is missing")
    if version > FORMAT_VERSION:
        raise ManifestError(path, f"written by a newer bmamba (format_version {version} > "
                                  f"{FORMAT_VERSION}); upgrade bmamba")
    manifest = _parse(path, data).with_changes(folder=folder)
    for name in GRAPH_NAMES:
        file = manifest.graph_path(name)
        if not file.is_file():
            raise ManifestError(folder, f"graph file {manifest.graphs[name].file} is missing")
        if file.stat().st_size == 0:
            raise ManifestError(file, "the graph file is empty (0 bytes); export the model again")
        if verify_hashes and file_sha256(file) != manifest.graphs[name].sha256:
            raise ManifestError(file, "SHA-256 does not match model.json (file changed or corrupt)")
    return manifest


def _parse(path: Path, d: dict) -> Manifest:
    """The Manifest of model.json's dict ``d``; every field's type and bounds are checked first,
    and a problem is a ManifestError naming model.json and the key."""
    def bad(reason: str):
        return ManifestError(path, f"invalid manifest: {reason}")

    def whole(key: str, low: int, high: int, where: dict = d, name: str | None = None) -> int:
        name = name or key
        if key not in where:
            raise bad(f"missing key {name!r}")
        value = where[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"{name} = {value!r} is not a whole number")
        if not low <= value <= high:
            raise bad(f"{name} = {value} is outside {low}..{high}")
        return value

    def text(key: str, where: dict = d, name: str | None = None, optional: bool = False) -> str | None:
        name = name or key
        if key not in where:
            if optional:
                return None
            raise bad(f"missing key {name!r}")
        if not isinstance(where[key], str):
            raise bad(f"{name} = {where[key]!r} is not text")
        return where[key]

    def obj(key: str, default=None) -> dict:
        value = d.get(key, default)
        if value is None:
            raise bad(f"missing key {key!r}")
        if not isinstance(value, dict):
            raise bad(f"{key} must be an object")
        return value

    def names(key: str) -> list[str]:
        if key not in d:
            raise bad(f"missing key {key!r}")
        if not isinstance(d[key], list) or not all(isinstance(v, str) for v in d[key]):
            raise bad(f"{key} must be a list of names")
        return d[key]

    def files(key: str, suffix: str, default=None) -> dict[str, FileEntry]:
        out = {}
        for name, entry in obj(key, default).items():
            where = f"{key}.{name}"
            if not isinstance(entry, dict):
                raise bad(f"{where} must be an object with 'file' and 'sha256'")
            file = text("file", entry, f"{where}.file")
            # A plain file name in the model folder: never a path that reaches outside it.
            if file != Path(file).name or file in ("", ".", "..") or "\\" in file \
                    or not file.endswith(suffix):
                raise bad(f"{where}.file = {file!r} must be a plain *{suffix} file name in the model folder")
            out[name] = FileEntry(file, text("sha256", entry, f"{where}.sha256"))
        return out

    sample_rate = whole("sample_rate", 1, 10**7)
    hop, context = whole("hop", 1, 10**6), whole("context", 0, 10**6)
    if (hop, context) != (HOP, CONTEXT):
        raise bad(f"hop/context are {hop}/{context}; this runtime's models have a {HOP}-sample hop "
                  f"and {CONTEXT} samples of context")
    try:
        check_sample_rate(sample_rate)
    except ValueError as e:
        raise bad(str(e)) from None
    classes = names("classes")
    if len(classes) > MAX_CLASSES:
        raise bad(f"{len(classes)} classes, more than the {MAX_CLASSES} accepted")
    thresholds = {}
    for name, value in obj("thresholds", {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not 0 < value < 1:
            raise bad(f"thresholds[{name!r}] = {value!r} is not a number between 0 and 1 (exclusive)")
        thresholds[name] = float(value)
    if "states" not in d:
        raise bad("missing key 'states'")
    raw_states = d["states"]
    if not isinstance(raw_states, list):
        raise bad("states must be a list")
    states = []
    for i, s in enumerate(raw_states):
        if not isinstance(s, dict) or not isinstance(s.get("shape"), list):
            raise bad(f"states[{i}] must be an object with a name and a shape")
        for dim in s["shape"][1:]:
            if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_STATE_VALUES:
                raise bad(f"states[{i}].shape holds {dim!r}, not a size from 1 to {MAX_STATE_VALUES}")
        states.append(StateSpec(text("name", s, f"states[{i}].name"), tuple(s["shape"]),
                                text("dtype", s, f"states[{i}].dtype", optional=True) or "float32"))
    values = sum(math.prod(s.shape[1:]) for s in states)
    if values > MAX_STATE_VALUES:
        raise bad(f"the states hold {values:,} values per stream, more than the "
                  f"{MAX_STATE_VALUES:,} accepted")
    tensorrt = obj("tensorrt", {})
    for key, high in (("max_frames", MAX_TRT_FRAMES), ("max_batch", MAX_TRT_BATCH)):
        if key in tensorrt:
            whole(key, 1, high, tensorrt, f"tensorrt.{key}")
    outputs = names("outputs")
    preset = d.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise bad(f"preset = {preset!r} is not a name")
    manifest = Manifest(
        preset=preset, task=text("task"), classes=tuple(classes),
        sample_rate=sample_rate, hop=hop, context=context,
        chunk_frames=whole("chunk_frames", 1, MAX_CHUNK_FRAMES), thresholds=thresholds,
        variant=text("variant"), precision=text("precision"), opset=whole("opset", 1, 100),
        d_model=whole("d_model", *LIMITS["d_model"]), n_layers=whole("n_layers", *LIMITS["n_layers"]),
        graphs=files("graphs", ".onnx"), states=tuple(states), outputs=tuple(outputs),
        source_sha256=text("source_sha256"), bmamba_version=text("bmamba_version"),
        created=text("created"), engines=files("engines", ".engine", {}), tensorrt=dict(tensorrt),
        format_version=whole("format_version", 1, FORMAT_VERSION),
    )
    problems = _problems(manifest)
    if problems:
        raise bad("; ".join(problems))
    return manifest


def _problems(m: Manifest) -> list[str]:
    out = []
    if m.variant not in VARIANTS:
        out.append(f"unknown variant {m.variant!r}")
    if m.precision not in PRECISIONS:
        out.append(f"unknown precision {m.precision!r}")
    missing = [g for g in GRAPH_NAMES if g not in m.graphs]
    if missing:
        out.append(f"graphs {missing} not listed")
    expected = [f"{kind}_state_{i}" for i in range(m.n_layers) for kind in ("conv", "ssm")]
    if [s.name for s in m.states] != expected:
        out.append(f"states must be {expected[:4]}... for {m.n_layers} layers")
    for s in m.states:
        if not s.shape or s.shape[0] != BATCH_DIM:
            out.append(f"state {s.name} has a bad shape {list(s.shape)}")
        if s.dtype != "float32":
            out.append(f"state {s.name} must be float32, not {s.dtype}")
    if m.task != "embed" and not m.classes:
        out.append(f"task {m.task!r} needs class names")
    if len(set(m.classes)) != len(m.classes):
        out.append("class names must be unique")
    unknown = set(m.thresholds) - set(m.classes)
    if unknown:
        out.append(f"thresholds for unknown classes {sorted(unknown)}")
    return out
