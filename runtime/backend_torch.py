"""The PyTorch reference backend (``--backend torch``, and the reference of ``--parity``).

It runs the model.safetensors of an export folder with the backend contract
(``biomamba.runtime.backend_api``): numpy in and out, the state a dict named as the ONNX graph's
inputs, so batching and the chunk loop treat it like any other backend. Imported only when asked
for: it needs torch (the ``train`` extra).

``TorchScorer`` is the oracle of ``--parity``: what the PyTorch model itself gives for each
scoring unit, computed with the model's own torch code (``torch.sigmoid`` of frame logits, or
``AudioModel.pool`` over each window, then ``torch.softmax``), never with ``biomamba.scoring``.
"""

from __future__ import annotations

import os

import numpy as np

from .backend_api import BackendError, Outputs, State


def _torch():
    try:
        import torch
    except ImportError:
        raise BackendError("the PyTorch reference needs torch: pip install 'bmamba[train]'") from None
    return torch


class TorchBackend:
    """The PyTorch model of an export folder (its model.safetensors)."""

    name = "torch"
    max_frames = None

    def __init__(self, model_dir: str | os.PathLike, device: str = "cpu"):
        _torch()
        from biomamba.model import BioMamba
        from biomamba.streaming import keep_resident_memory_flat

        keep_resident_memory_flat()
        self.model = BioMamba.load(model_dir, device=device)
        self.device = device

    def initial_state(self, batch: int = 1) -> State:
        """{conv_state_i: [B, conv_dim, d_conv - 1], ssm_state_i: [B, H, P, N]} float32 zeros."""
        return self._to_dict(self.model.initial_state(batch))

    @staticmethod
    def _to_dict(state) -> State:
        named = {}
        for i, (conv, ssm) in enumerate(state):
            named[f"conv_state_{i}"] = conv.float().cpu().numpy()
            named[f"ssm_state_{i}"] = ssm.float().cpu().numpy()
        return named

    def _from_dict(self, state: State):
        torch = _torch()
        device = self.model._device()
        return [(torch.from_numpy(np.ascontiguousarray(state[f"conv_state_{i}"])).to(device),
                 torch.from_numpy(np.ascontiguousarray(state[f"ssm_state_{i}"])).to(device))
                for i in range(len(self.model.layers))]

    def run_chunk(self, block: np.ndarray, state: State) -> tuple[Outputs, State]:
        outputs, new_state = self.model.run_chunk(block, self._from_dict(state))
        return outputs, self._to_dict(new_state)

    def peak_gpu_mb(self) -> float | None:
        torch = _torch()
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated() / 2**20
        return None

    def close(self) -> None:
        pass

    def scorer(self, task: str, window_s: float, sample_rate: int) -> TorchScorer:
        return TorchScorer(self.model, task, window_s, sample_rate)


class TorchScorer:
    """PyTorch's own probabilities per scoring unit, from the torch backend's outputs.

    detect: ``torch.sigmoid(logits)`` per frame; classify: consecutive windows of
    ``frames_for(window_s, sample_rate)`` frames (the last one partial), each ``softmax(model.pool(...))`` --
    the pooling the classifier was trained with (mean, or attention recomputed from the
    embeddings). Called like ``runtime.detect.Scorer``: (outputs, final) -> [units, C].
    """

    def __init__(self, model, task: str, window_s: float, sample_rate: int):
        from biomamba.scoring import frames_for

        if model.sample_rate != sample_rate:   # the folder's config.json and model.json disagree
            raise BackendError(f"the PyTorch model reads {model.sample_rate} Hz audio but the model folder "
                               f"says {sample_rate} Hz: the folder is inconsistent (export it again)")
        self.model, self.task = model, task
        self.window = frames_for(window_s, sample_rate)
        self._logits: list = []
        self._hidden: list = []

    def __call__(self, outputs: Outputs, final: bool = False) -> np.ndarray:
        torch = _torch()
        logits = torch.from_numpy(outputs["logits"]) if "logits" in outputs else torch.zeros(0, 0)
        if self.task == "detect":
            return torch.sigmoid(logits).numpy()
        self._logits.append(logits)
        self._hidden.append(torch.from_numpy(outputs["embeddings"]))
        logits, hidden = torch.cat(self._logits), torch.cat(self._hidden)
        probs = []
        with torch.no_grad():
            while len(logits) >= self.window or (final and len(logits)):
                lw, hw = logits[: self.window], hidden[: self.window]
                device = self.model._device()
                mask = torch.ones(1, len(lw), dtype=torch.bool, device=device)
                clip = self.model.pool(lw[None].to(device), hw[None].to(device), mask)
                probs.append(torch.softmax(clip[0].float(), -1).cpu().numpy())
                logits, hidden = logits[self.window:], hidden[self.window:]
        self._logits, self._hidden = [logits], [hidden]
        return np.stack(probs) if probs else np.zeros((0, 0), np.float32)
