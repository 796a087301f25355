"""Choosing and opening a backend for an exported model folder.

Every backend has the interface ``biomamba.streaming.StreamRunner`` drives:

    backend.name                               "onnxruntime", "onnxruntime-cuda", "tensorrt", "torch"
    backend.initial_state(batch=1)             the zero state of every layer
    backend.run_chunk(block, state)            block [B, 320*n + 80] float32 ->
                                               ({"logits": [B, n, C], "embeddings": [B, n, D]}, state)

``auto`` picks TensorRT when the folder holds engines and TensorRT and a GPU are usable, else
onnxruntime with its CUDA provider when that is installed and sees a GPU, else onnxruntime on the
CPU. The torch backend (the PyTorch reference, for ``--parity``) is imported only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


class BackendError(RuntimeError):
    """A backend that cannot run here; the message says what to install or do."""


class TorchBackend:
    """The PyTorch model of an export folder (its model.safetensors), for parity checks."""

    name = "torch"

    def __init__(self, model_dir: str | os.PathLike, device: str = "cpu"):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise BackendError("the PyTorch reference needs torch: pip install 'bmamba[train]'") from None
        from biomamba.model import BioMamba
        from biomamba.streaming import keep_resident_memory_flat

        keep_resident_memory_flat()
        self.model = BioMamba.load(model_dir, device=device)
        self.device = device

    def initial_state(self, batch: int = 1):
        return self.model.initial_state(batch)

    def run_chunk(self, block, state):
        return self.model.run_chunk(block, state)

    def peak_gpu_mb(self) -> float | None:
        import torch

        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated() / 2**20
        return None


def _onnxruntime_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _tensorrt_usable(model_dir: Path) -> bool:
    if not any(model_dir.glob("*.engine")):
        return False
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def open_backend(model_dir: str | os.PathLike, name: str = "auto", threads: int | None = None,
                 plugin_lib: str | os.PathLike | None = None):
    """Open backend ``name`` (see BACKENDS) on an exported model folder.

    plugin_lib: the TensorRT plugin library (``--plugin-lib``); None takes $BMAMBA_TRT_PLUGIN or
    the one installed with bmamba. A model folder never names a native library to load.
    """
    model_dir = Path(model_dir)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = "tensorrt" if _tensorrt_usable(model_dir) else "onnxruntime"
    if name == "torch":
        return TorchBackend(model_dir)
    if name == "tensorrt":
        from .backend_trt import TensorRTBackend

        return TensorRTBackend(model_dir, plugin_lib=plugin_lib)
    from .backend_onnx import OnnxBackend

    providers = "cuda" if _onnxruntime_has_cuda() else "cpu"
    return OnnxBackend(model_dir, providers=providers, threads=threads)
