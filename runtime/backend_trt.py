"""The TensorRT backend: the engines of an export folder, with the carried-state interface.

    backend = TensorRTBackend("exported/run1")       # after `bmamba export CHECKPOINT --trt`
    runner = StreamRunner(backend.run_chunk, backend.initial_state(1), backend.max_frames)

Same ``initial_state`` / ``run_chunk`` as ``OnnxBackend``: numpy float32 in and out, the state a dict
of float32 arrays named as the graph inputs. Runs TensorRT 10's ``execute_async_v3`` with tensor
addresses.

Device memory and copies go through cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` in
older releases): NVIDIA's own TensorRT samples use it, it is a thin binding with no CUDA toolkit of
its own, and it installs on Jetson from pip, where torch or cupy would add gigabytes. The state is
copied in and out on every call (19 MB per call at the ``base`` preset, under a millisecond of PCIe
time per 30 s chunk), which keeps the interface identical to the other backends.

Nothing here imports tensorrt at module import time: a missing TensorRT raises
``TensorRTUnavailable`` with the install line for desktops and Jetsons.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import native
from .backend_api import BackendError
from .manifest import Manifest, read_manifest

PLUGIN_LIBRARY = "libbmamba_trt_plugin.so"
PLUGIN_ENV = "BMAMBA_TRT_PLUGIN"
TRT_INSTALL_HINT = ("TensorRT is not installed for this Python. On a desktop: pip install tensorrt "
                    "(or pip install 'bmamba[trt]'). On a Jetson it comes with JetPack: "
                    "sudo apt install nvidia-jetpack (or python3-libnvinfer for the Python bindings)")
CUDA_INSTALL_HINT = "the TensorRT backend needs cuda-python for device memory: pip install cuda-python"


class TensorRTUnavailable(BackendError):
    """TensorRT, cuda-python or the bmamba plugin library is missing; the message says what to do."""


def import_tensorrt():
    """The tensorrt module, or TensorRTUnavailable with the install line (never an ImportError)."""
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(TRT_INSTALL_HINT) from None
    except OSError as e:      # the Python package is there but libnvinfer is not loadable
        raise TensorRTUnavailable(f"TensorRT's libraries cannot be loaded ({e}); {TRT_INSTALL_HINT}") from None
    return tensorrt


def plugin_library_candidates() -> list[Path]:
    """Where the plugin library is looked for without --plugin-lib, in order (see
    ``find_plugin_library``): $BMAMBA_TRT_PLUGIN when set, else the package's own folder, and in a
    source checkout its build/ folder. Never the current directory, never a model folder: a native
    library runs with the user's rights, so only the user or the installation chooses it."""
    named = native.library_candidates(PLUGIN_LIBRARY, PLUGIN_ENV)
    return named[:1] if os.environ.get(PLUGIN_ENV) else named


def find_plugin_library(explicit: str | os.PathLike | None = None) -> Path:
    """The SSDChunkScan plugin library: ``explicit`` (--plugin-lib), else $BMAMBA_TRT_PLUGIN, else
    the package's folder, else (source checkout only) the checkout's build/
    (``biomamba.runtime.native``). Raises TensorRTUnavailable if absent. Nothing in a model folder
    takes part (model.json's ``tensorrt.plugin_lib`` only records what the engines were built with)."""
    return native.find_library(
        PLUGIN_LIBRARY, PLUGIN_ENV, explicit=explicit, error=TensorRTUnavailable, what="plugin library",
        hint=f"build it with CMake (cmake -B build && cmake --build build) and pass --plugin-lib PATH "
             f"or set {PLUGIN_ENV}=PATH")


_LOADED_PLUGINS: dict[str, object] = {}


def load_plugin_library(trt, path: Path) -> None:
    """Register the plugin creators of ``path`` with TensorRT (once per process)."""
    key = str(Path(path).resolve())
    if key not in _LOADED_PLUGINS:
        _LOADED_PLUGINS[key] = trt.get_plugin_registry().load_library(key)


class _Cuda:
    """The few CUDA runtime calls the backend needs, through cuda-python."""

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart
            except ImportError:
                raise TensorRTUnavailable(CUDA_INSTALL_HINT) from None
        self.rt = cudart
        self.stream = self.check(cudart.cudaStreamCreate())

    def check(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.rt.cudaGetErrorName(err)[1]
            raise RuntimeError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
        return values[0] if len(values) == 1 else values or None

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self.stream))

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, self.stream))

    def synchronize(self) -> None:
        self.check(self.rt.cudaStreamSynchronize(self.stream))


class _Engine:
    """One deserialized engine with its context and grow-only device buffers per tensor."""

    def __init__(self, trt, runtime, path: Path, cuda: _Cuda):
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise TensorRTUnavailable(f"{path}: TensorRT cannot load this engine (built by another "
                                      "TensorRT version or for another GPU? rebuild with bmamba export --trt)")
        self.trt, self.engine, self.cuda = trt, engine, cuda
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.buffers: dict[str, tuple[int, int]] = {}      # name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self.buffers[name] = (ptr, size)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def run(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> dict[str, np.ndarray]:
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            self.context.set_input_shape(name, array.shape)
            self.cuda.to_device(self._buffer(name, array.nbytes), array)
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            results[name] = np.empty(shape, self.dtypes[name])
            self._buffer(name, results[name].nbytes)
        if not self.context.execute_async_v3(int(self.cuda.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        for name in fetch:
            self.cuda.to_host(results[name], self.buffers[name][0])
        self.cuda.synchronize()
        return {name: results[name] for name in fetch}

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cuda.free(ptr)
        self.buffers.clear()


class TensorRTBackend:
    """frontend.engine + mamba.engine of an export folder, run with the carried-state interface."""

    name = "tensorrt"

    def __init__(self, model_dir: str | os.PathLike, *, plugin_lib: str | os.PathLike | None = None):
        """plugin_lib: the plugin library (--plugin-lib); None looks as ``find_plugin_library`` says."""
        self.manifest: Manifest = read_manifest(model_dir)
        trt = import_tensorrt()
        engines = {name: self.manifest.engine_path(name) for name in ("frontend", "mamba")}
        # The plugin comes from the user or the installation, never from model.json.
        load_plugin_library(trt, find_plugin_library(plugin_lib))
        self.cuda = _Cuda()
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        if hasattr(runtime, "engine_host_code_allowed"):   # TensorRT >= 8.6; False is its default
            runtime.engine_host_code_allowed = False          # no host code embedded in an engine
        self.frontend = _Engine(trt, runtime, engines["frontend"], self.cuda)
        self.mamba = _Engine(trt, runtime, engines["mamba"], self.cuda)
        self.max_frames = int(self.manifest.tensorrt.get("max_frames", self.manifest.chunk_frames))
        self.max_batch = int(self.manifest.tensorrt.get("max_batch", 1))
        self._outputs = list(self.manifest.outputs)
        self._fetch = self._outputs + [s.output_name for s in self.manifest.states]

    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {s.name: np.zeros(s.concrete_shape(batch), np.float32) for s in self.manifest.states}

    def run_chunk(self, block: np.ndarray, state: dict[str, np.ndarray]):
        """block [B, 320*n + 80] float32 -> ({"logits", "embeddings"...: [B, n, ...]} float32, state)."""
        block = np.ascontiguousarray(block, dtype=np.float32)
        hop, context = self.manifest.hop, self.manifest.context
        if block.ndim != 2 or block.shape[1] < hop + context or (block.shape[1] - context) % hop:
            raise ValueError(f"block must be [batch, 320*n + 80] samples with n >= 1, got {block.shape}")
        n = (block.shape[1] - context) // hop
        if n > self.max_frames or block.shape[0] > self.max_batch:
            raise ValueError(f"the engines take at most {self.max_frames} frames and batch "
                             f"{self.max_batch} per call (got {n} frames, batch {block.shape[0]}); "
                             "use a shorter --chunk or rebuild with larger --max-frames")
        frames = self.frontend.run({"audio": block}, ["frames"])["frames"]
        results = self.mamba.run({"frames": frames, **state}, self._fetch)
        outputs = {name: results[name].astype(np.float32, copy=False) for name in self._outputs}
        new_state = {s.name: results[s.output_name] for s in self.manifest.states}
        return outputs, new_state

    def peak_gpu_mb(self) -> float | None:
        """None: not measured for TensorRT (the report leaves peak_gpu_mb empty, as before)."""
        return None

    def close(self) -> None:
        self.frontend.close()
        self.mamba.close()
