"""How much do an encoder's outputs change over time? A check for collapsed pre-training.

For each checkpoint and each recording: the encoder's last hidden states [T, D] and the front
end's conv features [T, C]; per channel the standard deviation over time, averaged over channels,
then averaged over recordings. A randomly initialised encoder is the reference. An encoder whose
outputs barely change from frame to frame has little left to tell clips apart with.

Usage: python recipes/diagnose_pretraining.py CSV_LISTING CHECKPOINT... [--report OUT.json]
(a checkpoint "random:biomamba" or "random:transformer" is a fresh edge model, seed 0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from biomamba.audio import read_audio
from biomamba.data import read_beans_csv
from biomamba.loading import load_model
from biomamba.model import BioMamba, pad_for_frontend
from biomamba.transformer import TransformerBaseline


def load(name: str):
    if name.startswith("random:"):
        torch.manual_seed(0)
        cls = TransformerBaseline if name.endswith("transformer") else BioMamba
        return cls.from_preset("edge", task="embed")
    return load_model(name)


@torch.no_grad()
def temporal_spread(model, paths: list[Path]) -> dict:
    model.eval()
    conv, hidden = [], []
    for path in paths:
        audio = pad_for_frontend(torch.from_numpy(read_audio(path))[None])
        features = model.frontend.conv_features(audio)
        h = model.encode(model.frontend.project(features))
        conv.append(float(features[0].std(0).mean()))
        hidden.append(float(h[0].std(0).mean()))
    return {"conv_std_over_time": float(np.mean(conv)), "hidden_std_over_time": float(np.mean(hidden))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listing", type=Path)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    paths = [p for p, _ in read_beans_csv(args.listing)]
    result = {name: temporal_spread(load(name), paths) for name in args.checkpoints}
    for name, r in result.items():
        print(f"{name}: conv {r['conv_std_over_time']:.4f}  hidden {r['hidden_std_over_time']:.4f}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({"listing": str(args.listing), "n": len(paths), "checkpoints": result},
                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
