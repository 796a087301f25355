"""Loading models: the one architecture registry, checkpoint and run-folder resolution, ``--init``.

The top of the model side: it imports every architecture (`biomamba.model`,
`biomamba.transformer`, `biomamba.bidirectional`) and nothing imports it from below. Training
(`biomamba.training`), export and the CLI load models through it.

- A *checkpoint* is a folder with ``model.safetensors`` + ``config.json`` (`biomamba.checkpoint`);
  its config's ``architecture`` names the class in `ARCHITECTURES`.
- A *run folder* (``--out`` of ``bmamba train`` / ``bmamba pretrain``) holds checkpoints named
  `BEST` (best validation metric, train only) and `LAST` (latest); `resolve_checkpoint` picks one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .bidirectional import BidirectionalBioMamba
from .checkpoint import CONFIG, CheckpointError, read_config
from .model import AudioModel, BioMamba
from .streaming import SAMPLE_RATE, check_sample_rate
from .transformer import TransformerBaseline

# config.json "architecture" -> class. These names are written into every checkpoint: never rename.
# biomamba-bidirectional is the pre-training teacher: not streamable, for offline use only.
ARCHITECTURES: dict[str, type[AudioModel]] = {
    BioMamba.architecture: BioMamba,
    TransformerBaseline.architecture: TransformerBaseline,
    BidirectionalBioMamba.architecture: BidirectionalBioMamba,
}

LAST, BEST = "last", "best"             # checkpoint folders inside a run folder
HEAD_PREFIXES = ("head.", "attention.")  # weights of the task head (not the encoder)


def architecture(name: str) -> type[AudioModel]:
    """The model class of an architecture name. Raises ValueError naming the choices."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> AudioModel:
    """Load any bmamba checkpoint or exported folder (BioMamba, the Transformer baseline, the
    pre-training teacher), by the ``architecture`` of its config. Never unpickles.
    Raises CheckpointError (a ValueError) naming the path and the reason."""
    arch = read_config(path).get("architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(path, f"holds a {arch!r} model, which this bmamba does not know "
                                    f"(known: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch].load(path, device)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or a run folder (``--out`` of train/pretrain): its best/, else last/."""
    path = Path(path)
    if path.is_file() and path.name == CONFIG:
        path = path.parent
    if (path / CONFIG).is_file():
        return path
    for name in (BEST, LAST):
        if (path / name / CONFIG).is_file():
            return path / name
    if not path.exists():
        raise CheckpointError(path, "no such checkpoint folder")
    raise CheckpointError(path, f"not a bmamba checkpoint (no {CONFIG}, nor a run folder with {BEST}/ or {LAST}/)")


def load_model_from(path: str | os.PathLike, device: str | torch.device = "cpu") -> AudioModel:
    """`load_model` of a checkpoint folder or a run folder (`resolve_checkpoint`).
    ``model.training_info`` holds the "training" entry of its config (windows, crop, unknown
    label) or {}."""
    folder = resolve_checkpoint(path)
    model = load_model(folder, device)
    model.training_info = read_config(folder).get("training", {})
    return model


def init_sample_rate(init: str | os.PathLike | None, requested: int | None) -> int:
    """The input rate of a model being made: ``requested`` (``--sample-rate``), else the rate of
    checkpoint ``init``, else 16 kHz. A requested rate other than the checkpoint's is refused
    (ValueError): its front end learnt the sounds of its own rate. Raises CheckpointError for a
    bad ``init``."""
    if init is None:
        return check_sample_rate(SAMPLE_RATE if requested is None else requested)
    rate = read_config(resolve_checkpoint(init)).get("sample_rate", SAMPLE_RATE)
    if requested is not None and requested != rate:
        raise ValueError(f"--sample-rate {requested}: the --init checkpoint {init} reads {rate} Hz audio; "
                         "leave --sample-rate out, or start from a checkpoint of that rate")
    return check_sample_rate(rate)


def model_from_init(path: str | os.PathLike, task: str, classes: Sequence[str], pooling: str = "mean",
                    architecture: str | None = None) -> AudioModel:
    """``--init``: a model for ``task``/``classes`` whose encoder (front end and layers) comes from
    checkpoint ``path`` (a checkpoint or run folder; a pre-training run's encoder included). The
    head is kept when task, classes and pooling are the same, else made new. A bidirectional
    pre-training teacher initialises a causal BioMamba from its forward branch. Raises
    CheckpointError."""
    source = load_model_from(path)
    folder = resolve_checkpoint(path)
    arch = architecture or (BioMamba.architecture if isinstance(source, BidirectionalBioMamba)
                            else source.architecture)
    if arch not in ARCHITECTURES:
        raise CheckpointError(folder, f"cannot fine-tune a {arch!r} model")
    model = ARCHITECTURES[arch](source.config, task, classes, pooling, preset=source.preset,
                                sample_rate=source.sample_rate)
    same_head = (source.task, source.classes, source.pooling) == (task, list(classes), pooling)
    weights = {k: v for k, v in source.state_dict().items() if same_head or not k.startswith(HEAD_PREFIXES)}
    own = model.state_dict()
    wrong = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in weights and not k.startswith(HEAD_PREFIXES)]
    if wrong or missing:
        raise CheckpointError(folder, f"its {source.architecture} encoder does not fit a {arch} model "
                                      f"(missing {missing[:3]}, other shapes {wrong[:3]})")
    model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    return model
