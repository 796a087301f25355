"""The onnxruntime backend: an export folder run chunk by chunk with carried state (numpy only).

    backend = OnnxBackend("exported/run1")                 # CPU; providers="cuda" for onnxruntime-gpu
    runner = StreamRunner(backend.run_chunk, backend.initial_state(1), backend.manifest.chunk_frames)

``run_chunk(block [B, 320*n + 80] float32, state) -> ({"logits": [B, n, C], "embeddings": [B, n, D]},
new_state)`` is the interface every backend shares (``biomamba.streaming.StreamRunner``); the state
is a dict of float32 arrays named as the graph inputs (``conv_state_0``, ``ssm_state_0``, ...).
float16 exports take and return the same float32 arrays: the graphs cast inside, and outputs are
returned as float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .backend_api import BackendError
from .manifest import Manifest, read_manifest

State = dict[str, np.ndarray]
FRONTEND_PIECE_FRAMES = 250   # 5 s of audio per front-end call (see OnnxBackend._frontend)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError("onnxruntime is not installed: pip install onnxruntime "
                           "(or onnxruntime-gpu, via bmamba[gpu])") from None
    return onnxruntime


def resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    """None/"cpu" -> CPU; "cuda" -> CUDA then CPU (error if onnxruntime has no CUDA); lists pass."""
    ort = _onnxruntime()
    if providers is None or providers == "cpu":
        return ["CPUExecutionProvider"]
    if providers == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError("onnxruntime here has no CUDA support (CUDAExecutionProvider); "
                               "install bmamba[gpu] (onnxruntime-gpu) in place of onnxruntime")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if isinstance(providers, str):
        raise BackendError(f"unknown providers {providers!r}; use 'cpu', 'cuda' or a list of "
                           "onnxruntime provider names")
    return list(providers)


def session_options(threads: int | None = None, spinning: bool = False):
    """Options for a chunked run: all graph optimisations, sequential execution, ``threads`` intra-op.

    Spinning is off by default: a chunk is one long call, so waking threads costs nothing
    measurable, and idle spinning burns a field device's battery (and other processes' CPU).
    """
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Memory patterns pre-plan one block per input shape seen; chunks vary in length (the last one
    # of every recording is shorter), so patterns pile up. Off: same speed, peak resident memory of
    # `bmamba detect` (edge, 30 s chunks) 167 MB instead of 225 MB on this project's 2-core machine.
    options.enable_mem_pattern = False
    options.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise BackendError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3          # errors only: no warnings about unused initializers
    return options


class OnnxBackend:
    """Both graphs of an export folder on onnxruntime, with the carried-state interface."""

    name = "onnxruntime"
    max_frames = None          # any chunk length

    def __init__(self, model_dir: str | os.PathLike, *, providers: str | Sequence[str] | None = None,
                 threads: int | None = None, spinning: bool = False):
        self.manifest: Manifest = read_manifest(model_dir)
        self.providers = resolve_providers(providers)
        if self.providers[0] == "CUDAExecutionProvider":
            self.name = "onnxruntime-cuda"
        options = session_options(threads, spinning)
        self.frontend = self._load("frontend", options)
        self.mamba = self._load("mamba", options)
        self._outputs = list(self.manifest.outputs)
        self._fetch = self._outputs + [s.output_name for s in self.manifest.states]
        self._check_io("frontend", self.frontend, {"audio"}, ["frames"])
        self._check_io("mamba", self.mamba, {"frames", *(s.name for s in self.manifest.states)},
                       self._fetch)
        self._check_rate()

    def _check_rate(self) -> None:
        """The graphs carry the rate they were exported for (metadata ``sample_rate``); a model.json
        edited to another rate would make every recording be read at the wrong speed, silently."""
        for name, session in (("frontend", self.frontend), ("mamba", self.mamba)):
            exported = session.get_modelmeta().custom_metadata_map.get("sample_rate")
            if exported is not None and exported != str(self.manifest.sample_rate):
                raise BackendError(f"{self.manifest.graph_path(name)}: exported for {exported} Hz audio but "
                                   f"model.json says {self.manifest.sample_rate} Hz; the folder is "
                                   "inconsistent (export it again)")

    def _load(self, name: str, options):
        """An onnxruntime session for graph ``name``; a file that is not a loadable ONNX graph
        (corrupt, truncated, another file renamed) is a BackendError naming the file."""
        ort = _onnxruntime()
        path = self.manifest.graph_path(name)
        try:
            if name == "mamba" and self.manifest.variant == "plugin":
                from .ort_custom_op import CustomOpUnavailable, plugin_session

                try:
                    return plugin_session(path, options, self.providers,
                                          fp16=self.manifest.precision == "fp16")
                except CustomOpUnavailable as e:
                    raise BackendError(f"{self.manifest.folder}: {e}") from None
            return ort.InferenceSession(str(path), options, providers=self.providers)
        except BackendError:
            raise
        except Exception as e:  # onnxruntime's and onnx's errors share no base class but Exception
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            raise BackendError(f"{path}: not a usable ONNX graph ({reason}); the model folder is "
                               "damaged or incomplete: export the model again") from None

    def _check_io(self, name: str, session, inputs: set[str], outputs: list[str]) -> None:
        got_in = {i.name for i in session.get_inputs()}
        got_out = {o.name for o in session.get_outputs()}
        if got_in != inputs or not set(outputs) <= got_out:
            raise BackendError(f"{self.manifest.graph_path(name)}: the graph takes {sorted(got_in)} and "
                               f"gives {sorted(got_out)}, not the {name} graph model.json describes "
                               f"({sorted(inputs)} -> {outputs[:4]}...)")

    def initial_state(self, batch: int = 1) -> State:
        """Zero state for ``batch`` streams: float32 arrays shaped as in the manifest."""
        return {s.name: np.zeros(s.concrete_shape(batch), np.float32) for s in self.manifest.states}

    def _frontend(self, block: np.ndarray) -> np.ndarray:
        """frames [B, n, D] of block [B, 320*n + 80], the front end run on pieces of at most
        FRONTEND_PIECE_FRAMES frames. Each frame reads only its own 400 samples, so pieces that
        overlap by the 80 context samples give exactly the frames of one call; the front end's
        16 kHz activations are the bulk of the memory, and this keeps them flat whatever the chunk."""
        hop, context = self.manifest.hop, self.manifest.context
        n = (block.shape[1] - context) // hop
        step = FRONTEND_PIECE_FRAMES
        pieces = [self.frontend.run(["frames"], {"audio": block[:, a * hop: (min(n, a + step)) * hop + context]})[0]
                  for a in range(0, n, step)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)

    def run_chunk(self, block: np.ndarray, state: State) -> tuple[dict[str, np.ndarray], State]:
        """block [B, 320*n + 80] float32 (n >= 1) -> ({"logits", "embeddings"...: [B, n, ...]}, state)."""
        block = np.ascontiguousarray(block, dtype=np.float32)
        hop, context = self.manifest.hop, self.manifest.context
        if block.ndim != 2 or block.shape[1] < hop + context or (block.shape[1] - context) % hop:
            raise ValueError(f"block must be [batch, 320*n + 80] samples with n >= 1, got {block.shape}")
        frames = self._frontend(block)
        results = self.mamba.run(self._fetch, {"frames": frames, **state})
        n_out = len(self._outputs)
        outputs = {name: np.asarray(v, np.float32) for name, v in zip(self._outputs, results[:n_out])}
        new_state = {s.name: v for s, v in zip(self.manifest.states, results[n_out:])}
        return outputs, new_state

    def peak_gpu_mb(self) -> float | None:
        """None: onnxruntime does not report its device memory."""
        return None

    def close(self) -> None:
        """Drop the sessions (onnxruntime frees their memory when they are collected)."""
        self.frontend = self.mamba = None
