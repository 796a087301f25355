"""TensorRT: the engine builder and backend where TensorRT exists; the clear errors where it does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomamba import BioMamba
from biomamba.export import trt_build
from biomamba.export.onnx_export import export_model
from biomamba.export.trt_build import EngineBuildError, _profile_shapes, build_engine
from biomamba.runtime.backend_trt import (
    PLUGIN_LIBRARY,
    TensorRTBackend,
    TensorRTUnavailable,
    find_plugin_library,
    import_tensorrt,
)
from biomamba.runtime.backends import BackendError
from biomamba.runtime.manifest import read_manifest
from conftest import perturb_


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


needs_trt = pytest.mark.skipif(not tensorrt_importable(), reason="tensorrt is not installed here "
                               "(its PyPI libraries cannot be fetched on the CI machines)")
without_trt = pytest.mark.skipif(tensorrt_importable(), reason="tensorrt is installed: the "
                                 "missing-TensorRT path cannot be shown")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return perturb_(BioMamba.from_preset("tiny", task="detect", classes=["a", "b"]), 0.05, seed=3).eval()


@pytest.fixture(scope="module")
def plugin_export(model, tmp_path_factory):
    return export_model(model, tmp_path_factory.mktemp("plugin"), variant="plugin", chunk_s=2.0)


# -- without TensorRT (runs here) -----------------------------------------------------------------------


@without_trt
def test_missing_tensorrt_message():
    with pytest.raises(TensorRTUnavailable) as info:
        import_tensorrt()
    message = str(info.value)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, BackendError)
    assert "pip install tensorrt" in message and "bmamba[trt]" in message
    assert "JetPack" in message and "nvidia-jetpack" in message and "python3-libnvinfer" in message


@without_trt
def test_build_and_backend_raise_the_clear_error(plugin_export):
    with pytest.raises(TensorRTUnavailable, match="pip install tensorrt"):
        build_engine(plugin_export)
    with pytest.raises(TensorRTUnavailable, match="pip install tensorrt"):
        TensorRTBackend(plugin_export)


def test_engines_come_from_the_plugin_variant(model, tmp_path):
    folder = export_model(model, tmp_path / "portable")
    with pytest.raises(EngineBuildError, match="plugin variant"):
        build_engine(folder)


def test_find_plugin_library(tmp_path, monkeypatch):
    with pytest.raises(TensorRTUnavailable, match="no such plugin library"):
        find_plugin_library(tmp_path / "missing.so")
    library = tmp_path / PLUGIN_LIBRARY
    library.write_bytes(b"")
    assert find_plugin_library(library) == library
    monkeypatch.setenv("BMAMBA_TRT_PLUGIN", str(library))
    assert find_plugin_library() == library
    # ./build/ is never searched: see tests/test_model_folder_safety.py (issue 8, item 6)


def test_optimization_profile_shapes(plugin_export):
    m = read_manifest(plugin_export)
    front = _profile_shapes(m, "frontend", (1, 100, 150), (1, 1, 8))
    assert front == {"audio": ((1, 400), (1, 32080), (8, 48080))}
    mamba = _profile_shapes(m, "mamba", (1, 100, 150), (1, 1, 8))
    assert mamba["frames"] == ((1, 1, m.d_model), (1, 100, m.d_model), (8, 150, m.d_model))
    assert set(mamba) == {"frames", *(s.name for s in m.states)}
    conv = m.states[0]
    assert mamba[conv.name] == tuple(conv.concrete_shape(b) for b in (1, 1, 8))


class FakeTensorRT:
    """Stands in for the tensorrt module (not installable here) and records what build_engine asks
    of it. Like TensorRT 11's, its BuilderFlag has no FP16 (any use raises AttributeError)."""

    __version__ = "11.0.0 (fake)"

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class BuilderFlag:
        TF32 = 7

    class MemoryPoolType:
        WORKSPACE = 0

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    def __init__(self):
        self.network_flags: list[int] = []
        self.builder_flags: list = []
        self.parsed: list[str] = []
        fake = self

        class Config:
            def set_memory_pool_limit(self, pool, size):
                pass

            def set_flag(self, flag):
                fake.builder_flags.append(flag)

            def create_timing_cache(self, data):
                return data

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def add_optimization_profile(self, profile):
                pass

            def get_timing_cache(self):
                return type("Cache", (), {"serialize": lambda self: b"cache"})()

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                pass

        class Builder:
            def __init__(self, logger):
                pass

            def create_builder_config(self):
                return Config()

            def create_network(self, flags):
                fake.network_flags.append(flags)
                return object()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.parsed.append(path)
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser

    def init_libnvinfer_plugins(self, logger, namespace):
        pass


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engines_are_strongly_typed_in_the_export_precision(model, tmp_path, monkeypatch, fp16):
    """Issue 12: no BuilderFlag.FP16 (gone in TensorRT 11); strongly typed networks, so TensorRT
    keeps the export's types (and cannot run the scan plugin in half for an fp32 export)."""
    folder = export_model(model, tmp_path / "export", variant="plugin", fp16=fp16, chunk_s=2.0)
    fake = FakeTensorRT()
    plugin = tmp_path / PLUGIN_LIBRARY
    plugin.write_bytes(b"")
    monkeypatch.setattr(trt_build, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(trt_build, "find_plugin_library", lambda path=None: plugin)
    monkeypatch.setattr(trt_build, "load_plugin_library", lambda trt, path: None)
    build_engine(folder, max_batch=2)
    assert fake.network_flags == [1 << 1, 1 << 1]           # both networks: 1 << STRONGLY_TYPED
    assert fake.builder_flags == []
    assert len(fake.parsed) == 2
    m = read_manifest(folder)
    assert m.precision == ("fp16" if fp16 else "fp32")
    assert m.tensorrt["precision"] == m.precision and m.tensorrt["strongly_typed"] is True
    assert (folder / "frontend.engine").read_bytes() == b"engine" == (folder / "mamba.engine").read_bytes()


def test_scan_nodes_carry_only_the_parser_attributes(plugin_export):
    """The plugin's creator lists no fields (plugin_selftest.cpp checks it), and the nodes carry
    only what TensorRT's ONNX parser consumes itself: no field the parser would miss (and warn
    about once per layer)."""
    import onnx

    graph = onnx.load(str(plugin_export / "mamba.onnx")).graph
    scans = [n for n in graph.node if n.op_type == "SSDChunkScan"]
    assert scans
    for node in scans:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes == {"plugin_version": b"1", "plugin_namespace": b"bmamba"}


# -- with TensorRT (skipped here) -----------------------------------------------------------------------


def _plugin_library_or_skip():
    try:
        return find_plugin_library()
    except TensorRTUnavailable as e:
        pytest.skip(str(e))


@needs_trt
@pytest.mark.gpu
def test_engine_parity_with_pytorch(model, plugin_export):
    from biomamba.streaming import StreamRunner

    _plugin_library_or_skip()
    build_engine(plugin_export, max_batch=2)
    m = read_manifest(plugin_export)
    assert set(m.engines) == {"frontend", "mamba"} and m.tensorrt["max_frames"] == 100
    backend = TensorRTBackend(plugin_export)
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(16000 * 5 + 123)).astype(np.float32)
    runner = StreamRunner(backend.run_chunk, backend.initial_state(1), 37)
    parts = [runner.push(audio[i:i + 4001]) for i in range(0, len(audio), 4001)] + [runner.flush()]
    logits = np.concatenate([p["logits"] for p in parts if p and len(p["logits"])])
    probs = 1 / (1 + np.exp(-logits))
    assert np.abs(probs - model.predict(audio)).max() <= 1e-3      # TF32 may be on for float32 engines
