"""The backend contract: what ``StreamRunner``, ``Detector``, ``BatchingBackend`` and ``bmamba
embed`` may call on a backend, and the one error a backend raises when it cannot run here.

Every backend (onnxruntime, TensorRT, the PyTorch reference) takes and returns the same numpy
arrays, so the chunk loop, batching and scoring are written once:

- ``run_chunk(block [B, 320*n + 80] float32, state) -> (outputs, new_state)``; outputs are the
  named outputs of the exported ``mamba.onnx`` as float32 arrays [B, n, ...]: ``logits`` [B, n, C]
  (models with a head), ``embeddings`` [B, n, D], ``attention`` [B, n] (attention pooling).
- the state is a dict of float32 arrays named as the graph inputs, batch first:
  ``conv_state_i`` [B, conv_dim, d_conv - 1] and ``ssm_state_i`` [B, H, P, N] for layer i, so
  the states of several streams stack along axis 0 (``BatchingBackend``).

Torch-free: nothing here imports a backend library.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

State = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class BackendError(RuntimeError):
    """A backend that cannot run here; the message says what to install or do."""


@runtime_checkable
class Backend(Protocol):
    """A model that runs chunk by chunk with carried state (see the module docstring)."""

    name: str                   # "onnxruntime", "onnxruntime-cuda", "tensorrt", "torch"
    max_frames: int | None      # the most frames one call takes (TensorRT profiles); None: any

    def initial_state(self, batch: int = 1) -> State:
        """The zero state of ``batch`` streams."""
        ...

    def run_chunk(self, block: np.ndarray, state: State) -> tuple[Outputs, State]:
        """block [B, 320*n + 80] float32 -> (named outputs [B, n, ...], new state)."""
        ...

    def peak_gpu_mb(self) -> float | None:
        """Peak device memory of this process in MiB, or None on a CPU."""
        ...

    def close(self) -> None:
        """Free what the backend holds (device buffers, sessions); calling it twice is harmless."""
        ...
