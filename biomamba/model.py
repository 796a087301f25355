"""BioMamba: the wav2vec2-style front end, stacked Mamba2 blocks, and the task heads.

Shapes: audio [B, S] at the model's ``sample_rate`` (16 kHz unless its config says another, see
``biomamba.streaming.check_sample_rate``); frames T = ceil(S / 320) (20 ms each at 16 kHz);
hidden [B, T, d_model].

Tasks and heads (``task``):
- ``detect``: frame-level multi-label detection, per-frame logits [B, T, C], sigmoid.
- ``classify``: clip classification, frame logits pooled over the clip (mean, as in the paper, or
  attention) [B, C], softmax. Pooling per-frame logits equals pooling hidden states then applying
  the linear head, and it can be done incrementally while streaming.
- ``embed``: no head; the hidden states are the embeddings.

The model state for streaming is a list over layers of (conv_state, ssm_state) (see ``Mamba2``);
the 80-sample front-end context is carried by ``biomamba.streaming.FrameBuffer``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .checkpoint import CheckpointError, load_weights, read_config, save_checkpoint
from .frontend import ConvFrontEnd
from .mamba2 import Mamba2, MixerState
from .presets import ModelConfig, get_preset
from .scoring import RunningPool, frames_for, sigmoid, softmax
from .streaming import (
    CONTEXT,
    HOP,
    SAMPLE_RATE,
    StreamRunner,
    block_pieces,
    check_audio,
    check_sample_rate,
    keep_resident_memory_flat,
)

TASKS = ("detect", "classify", "embed")
POOLINGS = ("mean", "attention")


def n_frames(n_samples: int) -> int:
    """Frames a recording of n_samples gives: ceil(S / 320)."""
    return -(-n_samples // HOP)


def pad_for_frontend(audio: torch.Tensor) -> torch.Tensor:
    """[B, S] -> [B, 320*T + 80]: 80 zeros of left context, the last partial frame zero-padded."""
    right = n_frames(audio.shape[-1]) * HOP - audio.shape[-1]
    return F.pad(audio, (CONTEXT, right))


def frame_mask(lengths: torch.Tensor, n_total: int) -> torch.Tensor:
    """lengths [B] in samples -> [B, T] True where the frame holds audio of the recording."""
    frames = (lengths + HOP - 1) // HOP
    return torch.arange(n_total, device=lengths.device)[None, :] < frames[:, None]


class AudioModel(nn.Module):
    """What BioMamba and the Transformer baseline share: front end, heads, predict, save and load.

    Subclasses set ``architecture`` and implement ``encode(frames [B, T, D], mask) -> hidden``.
    """

    architecture = "abstract"

    def __init__(self, config: ModelConfig, task: str = "detect", classes: Sequence[str] = (),
                 pooling: str = "mean", preset: str | None = None, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        self.sample_rate = check_sample_rate(sample_rate)   # the rate its audio is decoded at
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        classes = list(classes)
        if task != "embed" and not classes:
            raise ValueError(f"task {task!r} needs at least one class name")
        if len(set(classes)) != len(classes):
            raise ValueError("class names must be unique")
        self.config, self.task, self.classes, self.pooling, self.preset = config, task, classes, pooling, preset
        self.frontend = ConvFrontEnd(config.frontend_channels, config.d_model, config.dropout)
        self.head = nn.Linear(config.d_model, len(classes)) if classes else None
        self.attention = nn.Linear(config.d_model, 1) if task == "classify" and pooling == "attention" else None

    # -- construction, saving, loading -------------------------------------------------------

    @classmethod
    def from_preset(cls, preset: str, task: str = "detect", classes: Sequence[str] = (),
                    pooling: str = "mean", sample_rate: int = SAMPLE_RATE, **overrides):
        """A randomly initialised model of a named preset (``tiny``, ``edge``, ``base``)."""
        return cls(get_preset(preset).with_overrides(**overrides), task, classes, pooling, preset=preset,
                   sample_rate=sample_rate)

    def config_dict(self) -> dict:
        return {
            "architecture": self.architecture, "preset": self.preset, "model": self.config.to_dict(),
            "task": self.task, "classes": self.classes, "pooling": self.pooling,
            "sample_rate": self.sample_rate, "hop": HOP, "context": CONTEXT, "bmamba_version": __version__,
        }

    def save(self, path: str | os.PathLike, **extra) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into folder ``path``; extra keys go in the config."""
        return save_checkpoint(path, self.state_dict(), {**self.config_dict(), **extra})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu"):
        """Load a checkpoint or exported folder of this architecture. Never unpickles.

        A folder of another architecture raises CheckpointError; `biomamba.load_model` loads any.
        """
        if cls is AudioModel:
            raise TypeError("AudioModel is abstract: load with biomamba.load_model(path)")
        config = read_config(path)
        arch = config.get("architecture")
        if arch != cls.architecture:
            raise CheckpointError(path, f"holds a {arch!r} model, not {cls.architecture!r}; use biomamba.load_model")
        try:
            if (config.get("hop", HOP), config.get("context", CONTEXT)) != (HOP, CONTEXT):
                raise ValueError(f"hop/context {config.get('hop')}/{config.get('context')}, not {HOP}/{CONTEXT}")
            model = cls(ModelConfig.from_dict(config["model"]), config["task"], config.get("classes", []),
                        config.get("pooling", "mean"), preset=config.get("preset"),
                        sample_rate=config.get("sample_rate", SAMPLE_RATE))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"invalid config ({e})") from None
        weights = load_weights(Path(path) if Path(path).is_dir() else Path(path).parent)
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(path, "weights do not fit the config: " + str(e).splitlines()[-1].strip()) from None
        if missing or unexpected:
            raise CheckpointError(path, f"weights do not fit the config (missing {missing[:5]}, "
                                        f"unexpected {unexpected[:5]})")
        return model.to(device).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- forward -------------------------------------------------------------------------------

    def encode(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def encode_layers(self, frames: torch.Tensor, mask: torch.Tensor | None = None):
        """frames [B, T, D] -> (hidden [B, T, D], each layer's output [B, T, D] before the final
        norm); pre-training clusters a layer's output for its phase-2 labels."""
        raise NotImplementedError

    def frame_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, D] -> per-frame class logits [B, T, C]."""
        if self.head is None:
            raise ValueError("an embedding model has no class head")
        return self.head(hidden)

    def pool(self, frame_logits: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Clip logits [B, C] from frame logits [B, T, C] over the valid frames (mask [B, T])."""
        if self.attention is not None:
            scores = self.attention(hidden).squeeze(-1).masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
        else:
            weights = mask.to(frame_logits.dtype) / mask.sum(-1, keepdim=True).clamp(min=1)
        return (weights[..., None] * frame_logits).sum(1)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Whole recordings. audio [B, S] (zero-padded), lengths [B] in samples (default: all S).

        Returns ``hidden`` [B, T, D], ``mask`` [B, T] and, with a head, ``frame_logits`` [B, T, C]
        and (task ``classify``) ``clip_logits`` [B, C].
        """
        if lengths is None:
            lengths = torch.full((audio.shape[0],), audio.shape[-1], device=audio.device)
        frames = self.frontend(pad_for_frontend(audio))
        mask = frame_mask(lengths, frames.shape[1])
        hidden = self.encode(frames, mask)
        out = {"hidden": hidden, "mask": mask}
        if self.head is not None:
            out["frame_logits"] = self.frame_logits(hidden)
            if self.task == "classify":
                out["clip_logits"] = self.pool(out["frame_logits"], hidden, mask)
        return out

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def predict(self, audio: np.ndarray) -> np.ndarray:
        """One whole recording, 1-D float numpy at ``sample_rate``, in one pass.

        Returns detect: frame probabilities [T, C]; classify: class probabilities [C];
        embed: frame embeddings [T, D]. Raises ValueError on bad input (dtype, rank, NaN, empty).
        """
        audio = check_audio(audio, sample_rate=self.sample_rate)
        was_training = self.training
        self.eval()
        try:
            out = self(torch.from_numpy(audio).to(self._device())[None])
        finally:
            self.train(was_training)
        if self.task == "detect":   # probabilities as every consumer makes them (biomamba.scoring)
            return sigmoid(out["frame_logits"][0].float().cpu().numpy())
        if self.task == "classify":
            return softmax(out["clip_logits"][0].float().cpu().numpy())
        return out["hidden"][0].float().cpu().numpy()


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + Mamba2(RMSNorm(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model, eps=1e-5)
        self.mixer = Mamba2(config.d_model, d_state=config.d_state, d_conv=config.d_conv,
                            expand=config.expand, headdim=config.headdim, ngroups=config.ngroups,
                            chunk_size=config.chunk_size)

    def forward(self, x: torch.Tensor, state: MixerState | None = None):
        y, state = self.mixer(self.norm(x), state)
        return x + y, state


class BioMamba(AudioModel):
    """The BioMamba model: ConvFrontEnd -> n_layers x MambaBlock -> RMSNorm -> head.

    Causal end to end, so it streams: ``stream()`` gives the same numbers as ``predict``.
    """

    architecture = "biomamba"
    # The blocking of ``step_chunk`` (the exact long-recording mode): frames per front-end call and
    # per Mamba-stack call. Any sizes give the same numbers; these bound a call's activations
    # (measured with `bmamba bench`, see the README's memory table). The stack's size is a
    # multiple of every preset's SSD chunk (16, 32, 64), so no piece but the last is padded.
    frontend_block_frames = 64
    mamba_block_frames = 256

    def __init__(self, config: ModelConfig, task: str = "detect", classes: Sequence[str] = (),
                 pooling: str = "mean", preset: str | None = None, sample_rate: int = SAMPLE_RATE):
        super().__init__(config, task, classes, pooling, preset, sample_rate)
        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layers))
        self.norm_f = nn.RMSNorm(config.d_model, eps=1e-5)

    def initial_state(self, batch: int = 1) -> list[MixerState]:
        """Zero state of every layer: [(conv_state [B, conv_dim, 3], ssm_state [B, H, P, N])]."""
        return [layer.mixer.initial_state(batch, self._device()) for layer in self.layers]

    def encode_with_state(self, frames: torch.Tensor, state: list[MixerState] | None = None,
                          return_layers: bool = False):
        """frames [B, T, D] -> (hidden [B, T, D], new state[, per-layer outputs before norm_f])."""
        state = state if state is not None else [None] * len(self.layers)
        new_state, layer_outputs, x = [], [], frames
        for layer, s in zip(self.layers, state):
            x, s = layer(x, s)
            new_state.append(s)
            if return_layers:  # kept only when asked: T x D per layer adds up on long recordings
                layer_outputs.append(x)
        hidden = self.norm_f(x)
        return (hidden, new_state, layer_outputs) if return_layers else (hidden, new_state)

    def encode(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # Causal: frames past the end of a shorter clip cannot affect its valid frames; mask unused.
        return self.encode_with_state(frames)[0]

    def encode_layers(self, frames: torch.Tensor, mask: torch.Tensor | None = None):
        hidden, _, layers = self.encode_with_state(frames, return_layers=True)
        return hidden, layers

    def step_chunk(self, block: torch.Tensor, state: list[MixerState]):
        """The streaming step: block [B, 320*n + 80] (context + n frames) -> (hidden [B, n, D], state).

        Blocked, so that a call's memory does not grow with n: the Mamba stack runs over pieces of
        ``mamba_block_frames`` frames with the state carried from piece to piece, and the front
        end makes each piece's frames ``frontend_block_frames`` at a time. Both are exact (the
        front end is causal with a fixed 400-sample context; the stack is the streaming contract
        itself), so the result is that of one pass within float32 rounding.
        """
        hidden = []
        for piece in block_pieces(block, self.mamba_block_frames):
            h, state = self.encode_with_state(self.frontend(piece, self.frontend_block_frames), state)
            hidden.append(h)
        return (hidden[0] if len(hidden) == 1 else torch.cat(hidden, 1)), state

    def output_names(self) -> list[str]:
        """The named outputs of a chunk, in the exported ``mamba.onnx``'s order: ``logits`` (with a
        head), ``embeddings``, ``attention`` (attention pooling)."""
        return [*(["logits"] if self.head is not None else []), "embeddings",
                *(["attention"] if self.attention is not None else [])]

    def chunk_outputs(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """hidden [B, n, D] -> {"logits": [B, n, C], "embeddings": [B, n, D], "attention": [B, n]}
        (as ``output_names``): the one place the outputs are built, for ``run_chunk`` and the
        ONNX export alike."""
        out = {"embeddings": hidden}
        if self.head is not None:
            out["logits"] = self.frame_logits(hidden)
        if self.attention is not None:
            out["attention"] = self.attention(hidden)[..., 0]
        return {name: out[name] for name in self.output_names()}

    @torch.no_grad()
    def run_chunk(self, block: np.ndarray, state: list[MixerState]):
        """The backend interface of ``biomamba.streaming.StreamRunner`` (numpy in, numpy out).

        block [B, 320*n + 80] float32 -> (``chunk_outputs`` as float32 numpy, new state) -- the
        output names of the exported ``mamba.onnx``, so every backend returns the same dictionary.
        """
        hidden, state = self.step_chunk(torch.from_numpy(np.ascontiguousarray(block)).to(self._device()), state)
        return {k: v.float().cpu().numpy() for k, v in self.chunk_outputs(hidden).items()}, state

    def stream(self, max_chunk_s: float = 30.0) -> ModelStream:
        """A stream over one recording; push pieces of any length, then flush."""
        return ModelStream(self, max_frames=frames_for(max_chunk_s, self.sample_rate))

    @torch.no_grad()
    def predict(self, audio: np.ndarray) -> np.ndarray:
        """One whole recording, 1-D float numpy at ``sample_rate``, in the exact long-recording mode.

        The recording goes through ``stream()`` (30 s chunks, carried state, each chunk blocked as
        in ``step_chunk``), as ``bmamba detect`` runs it: the same numbers as one whole pass
        (``forward``) within 1e-5, in memory that does not grow with the recording's length.
        Returns detect: frame probabilities [T, C]; classify: class probabilities [C]; embed: frame
        embeddings [T, D]. Raises ValueError on bad input (dtype, rank, NaN, empty).
        """
        audio = check_audio(audio, sample_rate=self.sample_rate)
        was_training = self.training
        try:
            stream = self.stream()
            step = stream.max_frames * HOP    # whole chunks: the stream's buffer never holds more
            parts = [stream.push(audio[a: a + step]) for a in range(0, len(audio), step)]
            parts.append(stream.flush())
        finally:
            self.train(was_training)
        return stream.clip_probs() if self.task == "classify" else np.concatenate(parts)


class ModelStream:
    """A recording pushed piece by piece through a BioMamba model, with carried state.

    ``push(piece)`` / ``flush()`` return, for the frames completed: detect -> probabilities [n, C];
    classify -> per-frame class probabilities [n, C] (``clip_probs()`` gives the clip's, equal to
    ``predict``); embed -> embeddings [n, D]. Same numbers as ``BioMamba.predict`` on the whole.
    """

    def __init__(self, model: BioMamba, max_frames: int = 1500):
        keep_resident_memory_flat()
        self.model, self.max_frames = model.eval(), max_frames
        self._runner = StreamRunner(model.run_chunk, model.initial_state(1), max_frames)
        self._clip = RunningPool()    # the clip's pooled logits (classify)

    @property
    def frames(self) -> int:
        return self._runner.frames

    def push(self, piece: np.ndarray) -> np.ndarray:
        if not len(piece):
            return self._finish(self._runner.push(np.zeros(0, np.float32)))
        return self._finish(self._runner.push(check_audio(piece, sample_rate=self.model.sample_rate)))

    def flush(self) -> np.ndarray:
        return self._finish(self._runner.flush())

    def _finish(self, out: dict[str, np.ndarray]) -> np.ndarray:
        task = self.model.task
        if not out:  # no frame completed yet
            width = self.model.config.d_model if task == "embed" else len(self.model.classes)
            return np.zeros((0, width), np.float32)
        if task == "embed":
            return out["embeddings"]
        logits = out["logits"]
        if task == "detect":
            return sigmoid(logits)
        self._clip.push(logits, out.get("attention"))
        return softmax(logits)

    def clip_probs(self) -> np.ndarray:
        """Class probabilities [C] of everything pushed so far (task ``classify``)."""
        if self.model.task != "classify":
            raise ValueError("clip_probs() is for classification models")
        return softmax(self._clip.result())
