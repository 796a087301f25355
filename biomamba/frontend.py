"""The convolutional front end: 16 kHz audio -> one d_model vector per 20 ms frame.

wav2vec2's feature encoder in its "layer_norm" mode: 7 conv1d layers, kernels (10,3,3,3,3,2,2),
strides (5,2,2,2,2,2,2), C channels each, a per-frame LayerNorm over channels and a GELU after
every conv. GroupNorm mode (wav2vec2-base, HuBERT-base) is deliberately not offered: its
statistics span the whole utterance, so a chunked run could never equal a whole run.

Receptive field 400 samples, hop 320: T frames need exactly 320*T + 80 samples, frame t reading
samples [320*t, 320*t + 400). A stream prepends the last 80 samples of the previous chunk
(zeros at the start of a recording) -- see ``biomamba.streaming``.
"""

from __future__ import annotations

import torch
from torch import nn

from .streaming import CONTEXT, HOP, block_pieces

CONV_LAYERS = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))  # (kernel, stride)


def receptive_field_and_hop(layers=CONV_LAYERS) -> tuple[int, int]:
    """(receptive field, hop) in samples of a stack of valid convolutions."""
    field, hop = 1, 1
    for kernel, stride in layers:
        field += (kernel - 1) * hop
        hop *= stride
    return field, hop


assert receptive_field_and_hop() == (HOP + CONTEXT, HOP), "front end geometry and streaming constants disagree"


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, T] tensor, independently for every frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvFrontEnd(nn.Module):
    """audio [B, 320*T + 80] -> frames [B, T, d_model].

    ``conv_features`` exposes the raw CNN output [B, T, C] (HuBERT's feature penalty is taken on it).
    """

    def __init__(self, channels: int, d_model: int, dropout: float = 0.0):
        super().__init__()
        layers, in_ch = [], 1
        for kernel, stride in CONV_LAYERS:
            layers += [nn.Conv1d(in_ch, channels, kernel, stride, bias=False), ChannelLayerNorm(channels), nn.GELU()]
            in_ch = channels
        self.conv = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, d_model)
        self.dropout = nn.Dropout(dropout)

    def conv_features(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, 320*T + 80] -> raw CNN features [B, T, C]."""
        return self.conv(audio[:, None, :]).transpose(1, 2)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """CNN features [B, T, C] -> frames [B, T, d_model]."""
        return self.dropout(self.proj(self.norm(features)))

    def forward(self, audio: torch.Tensor, block_frames: int | None = None) -> torch.Tensor:
        """audio [B, 320*T + 80] -> frames [B, T, d_model].

        ``block_frames``: run over pieces of at most that many frames (``streaming.block_pieces``)
        and concatenate. The frames are those of one pass (each reads only its own 400 samples),
        but only one piece's activations are alive at a time; in the first layers they are C
        channels at 3,200 steps per second of audio (6.5 MB per second and tensor at C = 512), the
        bulk of a long pass's memory.
        """
        if block_frames is None:
            return self.project(self.conv_features(audio))
        return torch.cat([self.project(self.conv_features(piece)) for piece in block_pieces(audio, block_frames)], 1)
