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
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from biomamba.checkpoint import file_sha256

FORMAT = "bmamba-export"
FORMAT_VERSION = 1
MANIFEST = "model.json"
GRAPH_NAMES = ("frontend", "mamba")
VARIANTS = ("portable", "plugin")
PRECISIONS = ("fp32", "fp16")
BATCH_DIM = "batch"          # the symbolic batch axis in state shapes
STATE_OUTPUT_SUFFIX = "_out"


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
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(path, f"unreadable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(path, f"not a bmamba export manifest (format is not {FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise ManifestError(path, "format_version is missing")
    if version > FORMAT_VERSION:
        raise ManifestError(path, f"written by a newer bmamba (format_version {version} > "
                                  f"{FORMAT_VERSION}); upgrade bmamba")
    manifest = _parse(path, data).with_changes(folder=folder)
    for name in GRAPH_NAMES:
        file = manifest.graph_path(name)
        if not file.is_file():
            raise ManifestError(folder, f"graph file {manifest.graphs[name].file} is missing")
        if verify_hashes and file_sha256(file) != manifest.graphs[name].sha256:
            raise ManifestError(file, "SHA-256 does not match model.json (file changed or corrupt)")
    return manifest


def _parse(path: Path, d: dict) -> Manifest:
    try:
        states = tuple(StateSpec(s["name"], tuple(s["shape"]), s.get("dtype", "float32"))
                       for s in d["states"])
        manifest = Manifest(
            preset=d.get("preset"), task=str(d["task"]), classes=tuple(d["classes"]),
            sample_rate=int(d["sample_rate"]), hop=int(d["hop"]), context=int(d["context"]),
            chunk_frames=int(d["chunk_frames"]),
            thresholds={str(k): float(v) for k, v in d.get("thresholds", {}).items()},
            variant=str(d["variant"]), precision=str(d["precision"]), opset=int(d["opset"]),
            d_model=int(d["d_model"]), n_layers=int(d["n_layers"]),
            graphs={k: FileEntry(v["file"], v["sha256"]) for k, v in d["graphs"].items()},
            states=states, outputs=tuple(d["outputs"]), source_sha256=str(d["source_sha256"]),
            bmamba_version=str(d["bmamba_version"]), created=str(d["created"]),
            engines={k: FileEntry(v["file"], v["sha256"]) for k, v in d.get("engines", {}).items()},
            tensorrt=dict(d.get("tensorrt", {})), format_version=int(d["format_version"]),
        )
    except KeyError as e:
        raise ManifestError(path, f"invalid manifest (missing key {e.args[0]!r})") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ManifestError(path, f"invalid manifest ({e})") from None
    problems = _problems(manifest)
    if problems:
        raise ManifestError(path, "invalid manifest (" + "; ".join(problems) + ")")
    return manifest


def _problems(m: Manifest) -> list[str]:
    out = []
    if m.variant not in VARIANTS:
        out.append(f"unknown variant {m.variant!r}")
    if m.precision not in PRECISIONS:
        out.append(f"unknown precision {m.precision!r}")
    if m.chunk_frames < 1:
        out.append("chunk_frames must be >= 1")
    missing = [g for g in GRAPH_NAMES if g not in m.graphs]
    if missing:
        out.append(f"graphs {missing} not listed")
    expected = [f"{kind}_state_{i}" for i in range(m.n_layers) for kind in ("conv", "ssm")]
    if [s.name for s in m.states] != expected:
        out.append(f"states must be {expected[:4]}... for {m.n_layers} layers")
    for s in m.states:
        if not s.shape or s.shape[0] != BATCH_DIM or not all(isinstance(d, int) and d > 0 for d in s.shape[1:]):
            out.append(f"state {s.name} has a bad shape {list(s.shape)}")
        if s.dtype != "float32":
            out.append(f"state {s.name} must be float32, not {s.dtype}")
    if m.task != "embed" and not m.classes:
        out.append(f"task {m.task!r} needs class names")
    unknown = set(m.thresholds) - set(m.classes)
    if unknown:
        out.append(f"thresholds for unknown classes {sorted(unknown)}")
    return out
