"""The Transformer baseline: AVES / HuBERT-base's encoder on BioMamba's front end.

It exists for the paper's comparisons (memory and accuracy), not for streaming: self-attention
sees the whole recording, so it runs whole recordings only. At the ``base`` preset it is
HuBERT-base: a convolutional relative position embedding (kernel 128, 16 groups), LayerNorm,
12 post-norm layers of 768 wide, 12 heads, FFN 3072, attention by PyTorch's
``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import AudioModel
from .presets import ModelConfig
from .streaming import SAMPLE_RATE


class EncoderLayer(nn.Module):
    """Post-norm Transformer layer: x = LN(x + MHA(x)); x = LN(x + FFN(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ffn), nn.GELU(), nn.Linear(d_ffn, d_model))
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D], key_mask [B, T] (True = attend) -> [B, T, D]."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = self.norm1(x + self.out(a.transpose(1, 2).flatten(2)))
        return self.norm2(x + self.ffn(x))


class TransformerBaseline(AudioModel):
    """ConvFrontEnd -> conv position embedding -> LayerNorm -> tf_layers x EncoderLayer -> head."""

    architecture = "transformer"

    def __init__(self, config: ModelConfig, task: str = "detect", classes=(), pooling: str = "mean",
                 preset: str | None = None, sample_rate: int = SAMPLE_RATE):
        super().__init__(config, task, classes, pooling, preset, sample_rate)
        k = config.tf_pos_conv_kernel
        self.pos_conv = nn.Conv1d(config.d_model, config.d_model, k, padding=k // 2,
                                  groups=config.tf_pos_conv_groups)
        self.norm = nn.LayerNorm(config.d_model)
        self.layers = nn.ModuleList(EncoderLayer(config.d_model, config.tf_heads, config.tf_ffn, config.dropout)
                                    for _ in range(config.tf_layers))

    def encode(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._encode(frames, mask, keep_layers=False)[0]

    def encode_layers(self, frames: torch.Tensor, mask: torch.Tensor | None = None):
        return self._encode(frames, mask, keep_layers=True)

    def _encode(self, frames: torch.Tensor, mask: torch.Tensor | None, keep_layers: bool):
        pos = self.pos_conv(frames.transpose(1, 2))[..., : frames.shape[1]]   # even kernel: drop the extra frame
        x = self.norm(frames + F.gelu(pos).transpose(1, 2))
        key_mask = None if mask is None or bool(mask.all()) else mask
        outputs = []
        for layer in self.layers:
            x = layer(x, key_mask)
            if keep_layers:  # as BioMamba: T x D per layer adds up on long recordings (and in the bench)
                outputs.append(x)
        return x, outputs
