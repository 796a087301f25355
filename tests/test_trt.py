"""TensorRT: the engine builder and backend where TensorRT exists; the clear errors where it does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomamba import BioMamba
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
    build_engine(plugin_export, fp16=False, max_batch=2)
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
