"""ONNX (plugin variant) -> TensorRT engines, with the TensorRT Python API (10.3 and later).

    build_engine("exported/run1")     # writes frontend.engine, mamba.engine, updates model.json

The networks are strongly typed (TensorRT >= 10.0): every tensor keeps the type the ONNX graph
gives it, so the engine's precision is the export's (``model.json`` "precision"; ``bmamba export
--fp16`` writes float16 graphs). TensorRT picks no precision of its own: it cannot run the scan
plugin in half precision for a float32 export (rounding dt before the softplus), and no
BuilderFlag.FP16 is needed (TensorRT 11 removed it).

The mamba graph's scan nodes (``bmamba::SSDChunkScan``) are handed by TensorRT's ONNX parser to
the plugin registered by the library of runtime/csrc (``libbmamba_trt_plugin.so``, loaded
first). Both engines get one optimization profile: batch 1..max_batch and frames 1..max_frames, tuned for
(1, opt_frames). A timing cache file makes rebuilds fast. Engines are specific to the GPU and the
TensorRT version that built them, so build them on the device that will run them (e.g. the Jetson).
"""

from __future__ import annotations

import os
from pathlib import Path

from biomamba.checkpoint import file_sha256
from biomamba.runtime.backend_trt import (
    TensorRTUnavailable,
    find_plugin_library,
    import_tensorrt,
    load_plugin_library,
)
from biomamba.runtime.manifest import FileEntry, read_manifest, write_manifest

ENGINE_FILES = {"frontend": "frontend.engine", "mamba": "mamba.engine"}
TIMING_CACHE = "timing.cache"
WORKSPACE_BYTES = 1 << 30

__all__ = ["build_engine", "find_plugin_library", "TensorRTUnavailable"]


class EngineBuildError(RuntimeError):
    """TensorRT could not parse a graph or build an engine; the message carries TensorRT's errors."""


def _profile_shapes(manifest, name: str, frames: tuple[int, int, int], batch: tuple[int, int, int]):
    """{input: (min, opt, max)} shapes for one graph."""
    hop, context = manifest.hop, manifest.context
    lo, opt, hi = frames
    b_lo, b_opt, b_hi = batch
    if name == "frontend":
        return {"audio": ((b_lo, hop * lo + context), (b_opt, hop * opt + context),
                          (b_hi, hop * hi + context))}
    d = manifest.d_model
    shapes = {"frames": ((b_lo, lo, d), (b_opt, opt, d), (b_hi, hi, d))}
    for s in manifest.states:
        shapes[s.name] = tuple(s.concrete_shape(b) for b in batch)
    return shapes


def build_engine(export_dir: str | os.PathLike, *,
                 plugin_lib: str | os.PathLike | None = None,
                 timing_cache: str | os.PathLike | None = None, max_batch: int = 8,
                 opt_frames: int | None = None, max_frames: int | None = None,
                 workspace_bytes: int = WORKSPACE_BYTES) -> Path:
    """Build ``frontend.engine`` and ``mamba.engine`` in an export folder; returns the folder.

    The engines have the export's precision (strongly typed networks; see the module docstring).
    ``opt_frames`` defaults to the export's chunk_frames, ``max_frames`` to the same (the runtime
    never feeds more per call). ``timing_cache`` defaults to ``export_dir/timing.cache``.
    Raises TensorRTUnavailable (RuntimeError) when TensorRT or the plugin is missing.
    """
    folder = Path(export_dir)
    manifest = read_manifest(folder)
    if manifest.variant != "plugin":
        raise EngineBuildError(f"{folder}: TensorRT engines are built from the plugin variant; "
                               "export with --variant plugin")
    trt = import_tensorrt()
    plugin_path = find_plugin_library(plugin_lib)
    opt_frames = opt_frames or manifest.chunk_frames
    max_frames = max(max_frames or manifest.chunk_frames, opt_frames)
    if max_batch < 1 or opt_frames < 1:
        raise ValueError("max_batch and opt_frames must be >= 1")
    cache_path = Path(timing_cache) if timing_cache is not None else folder / TIMING_CACHE

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    load_plugin_library(trt, plugin_path)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot build strongly typed networks; "
                               "use TensorRT 10.0 or later")
    strongly_typed = 1 << int(flag)   # every tensor keeps the export's type
    builder = trt.Builder(logger)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    engines = {}
    for name, file in ENGINE_FILES.items():
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, False)   # False: reject a cache from another GPU or version

        network = builder.create_network(strongly_typed)
        parser = trt.OnnxParser(network, logger)
        onnx_path = manifest.graph_path(name)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"{onnx_path}: TensorRT cannot parse the graph ({errors})")
        profile = builder.create_optimization_profile()
        for tensor, (lo, opt, hi) in _profile_shapes(manifest, name, (1, opt_frames, max_frames),
                                                     (1, 1, max_batch)).items():
            profile.set_shape(tensor, lo, opt, hi)
        config.add_optimization_profile(profile)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
        engine_path = folder / file
        tmp = engine_path.with_name(file + ".tmp")
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, engine_path)
        engines[name] = FileEntry(file, file_sha256(engine_path))
        cache_bytes = bytes(config.get_timing_cache().serialize())
    cache_path.write_bytes(cache_bytes)

    info = {"version": trt.__version__, "precision": manifest.precision, "strongly_typed": True,
            "max_batch": max_batch, "opt_frames": opt_frames,
            "max_frames": max_frames, "plugin_lib": str(plugin_path.resolve()),
            "timing_cache": str(cache_path)}
    write_manifest(folder, manifest.with_changes(engines=engines, tensorrt=info))
    return folder
