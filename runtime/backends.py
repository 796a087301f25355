"""Choosing and opening a backend for an exported model folder.

Every backend keeps the contract written in ``biomamba.runtime.backend_api`` (``Backend``:
name, max_frames, initial_state, run_chunk, peak_gpu_mb, close; the state a dict of named arrays).

``auto`` picks TensorRT when the folder holds engines and TensorRT and a GPU are usable, else
onnxruntime with its CUDA provider when that is installed and sees a GPU, else onnxruntime on the
CPU. The torch backend (the PyTorch reference, for ``--parity``) is imported only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

from .backend_api import Backend, BackendError

__all__ = ["BACKENDS", "Backend", "BackendError", "open_backend"]

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


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
                 plugin_lib: str | os.PathLike | None = None) -> Backend:
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
        from .backend_torch import TorchBackend

        return TorchBackend(model_dir)
    if name == "tensorrt":
        from .backend_trt import TensorRTBackend

        return TensorRTBackend(model_dir, plugin_lib=plugin_lib)
    from .backend_onnx import OnnxBackend

    providers = "cuda" if _onnxruntime_has_cuda() else "cpu"
    return OnnxBackend(model_dir, providers=providers, threads=threads)
