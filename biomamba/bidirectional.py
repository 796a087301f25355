"""The bidirectional BioMamba: the pre-training teacher of the ``bidirectional-teacher`` recipe
(`biomamba.training.pretrain`). Architecture name ``biomamba-bidirectional`` (checkpoints carry it).

Shapes as in `biomamba.model`: frames [B, T, D] -> hidden [B, T, D]. It sees both directions, so
it runs whole recordings only (no streaming, no export).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .model import AudioModel, MambaBlock
from .presets import ModelConfig
from .streaming import SAMPLE_RATE


class BidirectionalBioMamba(AudioModel):
    """A non-causal BioMamba for the teacher recipe: every layer adds a forward and a time-reversed
    Mamba2 to the residual stream, x + fwd(norm(x)) + flip(bwd(norm'(flip(x)))) ("ExtBiMamba").
    ``layers`` (forward), ``norm_f`` and the front end have BioMamba's names and shapes, so a
    causal BioMamba can start from them. Whole recordings only: it cannot stream."""

    architecture = "biomamba-bidirectional"

    def __init__(self, config: ModelConfig, task: str = "embed", classes: Sequence[str] = (),
                 pooling: str = "mean", preset: str | None = None, sample_rate: int = SAMPLE_RATE):
        super().__init__(config, task, classes, pooling, preset, sample_rate)
        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layers))
        self.backward_layers = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layers))
        self.norm_f = nn.RMSNorm(config.d_model, eps=1e-5)

    def encode_layers(self, frames: torch.Tensor, mask: torch.Tensor | None = None):
        """frames [B, T, D], mask [B, T] (valid frames; each row reversed within its own length)
        -> (hidden [B, T, D], per-layer outputs before norm_f)."""
        lengths = (mask.sum(-1) if mask is not None
                   else torch.full((frames.shape[0],), frames.shape[1], device=frames.device))
        index = reverse_index(lengths, frames.shape[1])
        outputs, x = [], frames
        for fwd, bwd in zip(self.layers, self.backward_layers):
            y_fwd, _ = fwd.mixer(fwd.norm(x))
            y_bwd, _ = bwd.mixer(bwd.norm(_gather_time(x, index)))
            x = x + y_fwd + _gather_time(y_bwd, index)
            outputs.append(x)
        return self.norm_f(x), outputs

    def encode(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_layers(frames, mask)[0]


def reverse_index(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] time index reversing each row's first lengths[b] frames (padding stays in place)."""
    t = torch.arange(n, device=lengths.device)[None, :]
    return torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, index[..., None].expand_as(x))

