"""HuBERT pre-training of the Transformer baseline, for the cross-validation's "same recipe" cell.

`bmamba pretrain` builds only BioMamba encoders (causal, or the bidirectional teacher): its
``_build_encoder`` makes a BioMamba, ``encoder_layers`` asks for ``encode_with_state`` (which the
Transformer does not have) and ``layer_features`` streams with carried state. This script runs
the same `biomamba.pretrain.pretrain` (same masking, loss, heads, optimiser, k-means, run
folder) with those three functions swapped for Transformer-aware ones, so that the baseline gets
the identical recipe and budget. It is a recipe-side workaround, reported to the lead; the
clean fix is an ``--architecture`` option in `bmamba pretrain`.

Usage: the options of `bmamba pretrain` that the recipe uses, e.g.
  python recipes/pretrain_transformer.py AUDIO... --preset edge --phase 1 --steps 600 --out DIR
  python recipes/pretrain_transformer.py AUDIO... --phase 2 --init DIR/last --steps 600 --out DIR2
Phase 2 labels come from the middle layer of ``--init`` (or ``--labels-from``), run on pieces of
``--teacher-chunk`` seconds each seen whole (self-attention cannot stream).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

import biomamba.pretrain as P
from biomamba.audio import SAMPLE_RATE, iter_audio
from biomamba.model import pad_for_frontend
from biomamba.streaming import HOP
from biomamba.train import model_from_init
from biomamba.transformer import TransformerBaseline


def transformer_layers(model: TransformerBaseline, frames: torch.Tensor, mask: torch.Tensor | None = None):
    """(hidden [B, T, D], per-layer outputs [B, T, D] each) of the Transformer, through its own
    ``encode`` (forward hooks collect the layer outputs, so the computation is exactly the model's)."""
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for layer in model.layers]
    try:
        hidden = model.encode(frames, mask)
    finally:
        for hook in hooks:
            hook.remove()
    return hidden, outputs


_encoder_layers = P.encoder_layers
_layer_features = P.layer_features


def encoder_layers(encoder, frames, mask=None):
    if isinstance(encoder, TransformerBaseline):
        return transformer_layers(encoder, frames, mask)
    return _encoder_layers(encoder, frames, mask)


@torch.no_grad()
def layer_features(model, layer: int, path, chunk_s: float = 30.0) -> Iterator[np.ndarray]:
    """As `biomamba.pretrain.layer_features`; the Transformer runs on pieces of chunk_s seconds."""
    if not isinstance(model, TransformerBaseline):
        yield from _layer_features(model, layer, path, chunk_s)
        return
    if round(chunk_s * SAMPLE_RATE) % HOP:
        raise ValueError(f"chunk_s {chunk_s} is not a whole number of 20 ms frames")
    model.eval()
    device = next(model.parameters()).device
    for block in iter_audio(path, block_s=chunk_s):
        frames = model.frontend(pad_for_frontend(torch.from_numpy(block).to(device)[None]))
        _, outputs = transformer_layers(model, frames)
        yield P._rms_normalise(outputs[layer - 1][0].float().cpu().numpy())


def build_encoder(cfg: P.PretrainConfig):
    if cfg.init is None or (cfg.phase == 2 and cfg.from_scratch):
        return TransformerBaseline.from_preset(cfg.preset, task="embed")
    return model_from_init(cfg.init, "embed", [], architecture="transformer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audio", nargs="+")
    parser.add_argument("--phase", type=int, default=1)
    parser.add_argument("--clusters", type=int)
    parser.add_argument("--init", type=Path)
    parser.add_argument("--labels-from", type=Path)
    parser.add_argument("--layer", type=int)
    parser.add_argument("--preset", default="edge")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--crop", type=float, default=5.0, help="seconds")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--kmeans-fraction", type=float, default=0.1)
    parser.add_argument("--kmeans-init", type=int, default=20)
    parser.add_argument("--teacher-chunk", type=float, default=30.0, help="seconds")
    parser.add_argument("--save-every", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    P.encoder_layers, P.layer_features, P._build_encoder = encoder_layers, layer_features, build_encoder
    cfg = P.PretrainConfig(audio=a.audio, out=a.out, phase=a.phase, clusters=a.clusters, init=a.init,
                           labels_from=a.labels_from, layer=a.layer, preset=a.preset, steps=a.steps,
                           crop_s=a.crop, batch_size=a.batch_size, lr=a.lr, kmeans_fraction=a.kmeans_fraction,
                           kmeans_init=a.kmeans_init, teacher_chunk_s=a.teacher_chunk,
                           save_every=a.save_every, device=a.device, seed=a.seed)
    print(json.dumps(P.pretrain(cfg), default=str))


if __name__ == "__main__":
    main()
