"""A model folder is data: what it may hold, and what it can never cause (issue 8, items 5-7, 9).

Every test here runs without torch (the field install) on a copy of the model shipped in the
package, changed one key or one file at a time; the one check that loads weights through
PyTorch skips without it. TensorRT is replaced by a stand-in that records which library it was
asked to load, so the plugin rules are checked on any machine.
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from biomamba.checkpoint import CheckpointError, read_config
from biomamba.cli.app import app
from biomamba.runtime import backend_trt
from biomamba.runtime.backend_onnx import OnnxBackend
from biomamba.runtime.backend_trt import (
    PLUGIN_ENV,
    PLUGIN_LIBRARY,
    TensorRTBackend,
    TensorRTUnavailable,
    find_plugin_library,
    plugin_library_candidates,
)
from biomamba.runtime.backends import BackendError, open_backend
from biomamba.runtime.manifest import ManifestError, read_manifest
from biomamba.runtime.models import default_model_dir, describe_model


@pytest.fixture
def folder(tmp_path) -> Path:
    """A fresh copy of the shipped model folder (an `edge` export with weights and config)."""
    return Path(shutil.copytree(default_model_dir(), tmp_path / "model"))


def edit_json(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def detect(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["detect", *map(str, args)])
    return result.exit_code, result.output


@pytest.fixture
def recording(tmp_path) -> Path:
    import soundfile as sf

    path = tmp_path / "rec.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    return path


# --------------------------------------------------------------------------------------------
# item 6: a model folder never chooses a native library


class FakeTensorRT(types.SimpleNamespace):
    """Stands in for the tensorrt module: records load_library calls."""

    def __init__(self):
        loaded: list[str] = []
        registry = types.SimpleNamespace(load_library=lambda path: loaded.append(path) or object())
        super().__init__(loaded=loaded, get_plugin_registry=lambda: registry)


@pytest.fixture
def fake_trt(monkeypatch):
    trt = FakeTensorRT()
    monkeypatch.setattr(backend_trt, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(backend_trt, "_LOADED_PLUGINS", {})
    monkeypatch.delenv(PLUGIN_ENV, raising=False)

    class NoCuda:  # stop right after the plugin is loaded: the rest needs a GPU
        def __init__(self):
            raise TensorRTUnavailable("no GPU in this test")

    monkeypatch.setattr(backend_trt, "_Cuda", NoCuda)
    return trt


@pytest.fixture
def folder_with_engines(folder, tmp_path) -> tuple[Path, Path]:
    """The model folder with (dummy) engines, and a model.json that names a library to load."""
    evil = tmp_path / "evil" / PLUGIN_LIBRARY
    evil.parent.mkdir()
    evil.write_bytes(b"\x7fELF not really")
    for name in ("frontend", "mamba"):
        (folder / f"{name}.engine").write_bytes(b"engine")
    edit_json(folder / "model.json", lambda d: d.update(
        engines={n: {"file": f"{n}.engine", "sha256": "0" * 64} for n in ("frontend", "mamba")},
        tensorrt={"plugin_lib": str(evil), "max_frames": 1500, "max_batch": 1}))
    return folder, evil


def test_model_json_plugin_lib_is_never_loaded(fake_trt, folder_with_engines, tmp_path, monkeypatch):
    folder, evil = folder_with_engines
    monkeypatch.chdir(tmp_path)  # and ./build/ holds one too
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / PLUGIN_LIBRARY).write_bytes(b"\x7fELF")
    with pytest.raises(TensorRTUnavailable):  # no plugin found, or (found) no GPU here
        TensorRTBackend(folder)
    own = {str(p.resolve()) for p in plugin_library_candidates()}  # the package's own places
    assert set(fake_trt.loaded) <= own, fake_trt.loaded
    assert str(evil.resolve()) not in fake_trt.loaded


def test_plugin_comes_from_the_option_or_the_environment(fake_trt, folder_with_engines, tmp_path, monkeypatch):
    folder, evil = folder_with_engines
    chosen = tmp_path / "mine" / PLUGIN_LIBRARY
    chosen.parent.mkdir()
    chosen.write_bytes(b"\x7fELF")
    with pytest.raises(TensorRTUnavailable, match="no GPU in this test"):
        open_backend(folder, "tensorrt", plugin_lib=chosen)  # --plugin-lib reaches the backend
    assert fake_trt.loaded == [str(chosen.resolve())]

    monkeypatch.setattr(backend_trt, "_LOADED_PLUGINS", {})
    fake_trt.loaded.clear()
    monkeypatch.setenv(PLUGIN_ENV, str(chosen))
    with pytest.raises(TensorRTUnavailable, match="no GPU in this test"):
        TensorRTBackend(folder)
    assert fake_trt.loaded == [str(chosen.resolve())]

    monkeypatch.setenv(PLUGIN_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(TensorRTUnavailable, match=f"{PLUGIN_ENV}=.*missing.so: no such plugin library"):
        find_plugin_library()


def test_plugin_lookup_never_uses_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(PLUGIN_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / PLUGIN_LIBRARY).write_bytes(b"")
    package = Path(backend_trt.__file__).resolve().parent
    for place in plugin_library_candidates():
        assert place.parent in (package, package.parent / "build"), place  # the package's own
    try:
        found = find_plugin_library()
    except TensorRTUnavailable as e:
        assert "--plugin-lib" in str(e) and PLUGIN_ENV in str(e)
    else:
        assert not found.resolve().is_relative_to(tmp_path.resolve())
    explicit = tmp_path / "build" / PLUGIN_LIBRARY
    assert find_plugin_library(explicit) == explicit  # asked for by name: fine
    with pytest.raises(TensorRTUnavailable, match="no such plugin library"):
        find_plugin_library(tmp_path / "missing.so")


def test_detect_has_a_plugin_lib_option():
    code, output = detect("--help")
    assert code == 0 and "--plugin-lib" in output


# --------------------------------------------------------------------------------------------
# item 7: damaged graph files and torch checkpoints are named errors


@pytest.mark.parametrize("graph", ["frontend.onnx", "mamba.onnx"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_graph_is_a_named_error(folder, graph, damage):
    path = folder / graph
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 20,
                      "empty": b""}[damage])
    with pytest.raises((BackendError, ManifestError)) as caught:
        OnnxBackend(folder)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert ("not a usable ONNX graph" in message) or ("empty (0 bytes)" in message)


def test_damaged_graph_through_the_cli(folder, recording):
    (folder / "mamba.onnx").write_bytes(b"\x08\x01garbage")
    code, output = detect(recording, "--model", folder, "--no-resume")
    assert code == 1 and "mamba.onnx: not a usable ONNX graph" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("file,reason", [
    ("config.json", "must be a plain \\*\\.onnx file name"),
    ("../outside.onnx", "must be a plain \\*\\.onnx file name"),
    ("/etc/passwd", "must be a plain \\*\\.onnx file name"),
])
def test_graph_entry_must_be_an_onnx_file_in_the_folder(folder, file, reason):
    edit_json(folder / "model.json", lambda d: d["graphs"]["mamba"].update(file=file))
    with pytest.raises(ManifestError, match=reason) as caught:
        read_manifest(folder)
    assert caught.value.path == str(folder / "model.json") and "graphs.mamba.file" in str(caught.value)


def test_graph_that_is_another_file_is_a_named_error(folder):
    (folder / "notes.onnx").write_text("these are my notes, not a graph")
    edit_json(folder / "model.json", lambda d: d["graphs"]["mamba"].update(file="notes.onnx"))
    with pytest.raises(BackendError, match="notes.onnx: not a usable ONNX graph"):
        OnnxBackend(folder)
    edit_json(folder / "model.json", lambda d: d["graphs"]["mamba"].update(file="frontend.onnx"))
    with pytest.raises(BackendError, match="frontend.onnx: the graph takes .* not the mamba graph"):
        OnnxBackend(folder)


def test_graph_data_outside_the_folder_is_refused(folder, tmp_path):
    """A graph may keep tensors in files beside it; one pointing outside the folder is refused."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("audio", "frames")]
    graph = helper.make_graph([helper.make_node("Add", ["audio", "W"], ["frames"])], "g",
                              io[:1], io[1:], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (folder / "frontend.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(BackendError) as caught:
        OnnxBackend(folder)
    assert str(caught.value).startswith(str(folder / "frontend.onnx"))
    assert "escapes model directory" in str(caught.value)


def test_torch_backend_on_a_folder_without_weights(folder, recording):
    (folder / "model.json").unlink()  # a checkpoint folder, as training writes it
    (folder / "model.safetensors").unlink()
    with pytest.raises(ManifestError, match="model.safetensors is missing"):
        describe_model(folder, "torch")
    code, output = detect(recording, "--model", folder, "--backend", "torch", "--no-resume")
    assert code == 1 and "model.safetensors is missing" in output and "Traceback" not in output


@pytest.mark.parametrize("text,reason", [
    ("{", "unreadable JSON"),
    ('{"format": "bmamba-checkpoint", "model": [1, 2]}', "'model' must be an object"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_torch_backend_on_a_malformed_config(folder, recording, text, reason):
    (folder / "model.json").unlink()
    (folder / "config.json").write_text(text)
    with pytest.raises(ManifestError, match=reason) as caught:
        describe_model(folder, "torch")
    assert caught.value.path == str(folder / "config.json")
    code, output = detect(recording, "--model", folder, "--backend", "torch", "--no-resume")
    assert code == 1 and "config.json" in output and "Traceback" not in output


def test_torch_backend_on_an_export_with_a_bad_config(folder):
    """With model.json present, --backend torch loads config.json through BioMamba.load."""
    pytest.importorskip("torch")
    edit_json(folder / "config.json", lambda d: d["model"].update(n_layers=10**9))
    with pytest.raises(ValueError, match=r"config.json: invalid config: 'model': n_layers = 1000000000"):
        open_backend(folder, "torch")
    shutil.copy(default_model_dir() / "config.json", folder / "config.json")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.safetensors: unreadable weights"):
        open_backend(folder, "torch")
    weights.unlink()
    with pytest.raises(ValueError, match="model.safetensors is missing"):
        open_backend(folder, "torch")


# --------------------------------------------------------------------------------------------
# items 5 and 9: every number in model.json / config.json is checked before anything is built


BIG = "9" * 5000  # as text: Python itself refuses to make it an int (over 4300 digits)


@pytest.mark.parametrize("change,key", [
    (lambda d: d.update(n_layers=1_000_000_000), "n_layers = 1000000000 is outside 1..256"),
    (lambda d: d.update(n_layers=-1), "n_layers = -1 is outside"),
    (lambda d: d.update(n_layers=4.0), "n_layers = 4.0 is not a whole number"),
    (lambda d: d.update(d_model=10**12), "d_model = 1000000000000 is outside"),
    (lambda d: d.update(chunk_frames=10**15), "chunk_frames = 1000000000000000 is outside"),
    (lambda d: d.update(chunk_frames="1500"), "chunk_frames = '1500' is not a whole number"),
    (lambda d: d.update(hop=0), "hop = 0 is outside"),
    (lambda d: d.update(hop=160), "hop/context are 160/80; this runtime's models have a 320-sample hop"),
    (lambda d: d.update(sample_rate=44100), "sample rate 44100: a model reads a multiple of 16000 Hz"),
    (lambda d: d.update(sample_rate=10**7), "sample rate 10000000: a model reads a multiple of 16000 Hz"),
    (lambda d: d["states"][1].update(shape=["batch", 8, 32, 10**9]), "states[1].shape holds 1000000000"),
    (lambda d: d["states"][1].update(shape=["batch", 8000, 3200, 3200]), "values per stream"),
    (lambda d: d["tensorrt"].update(max_batch=10**9), "tensorrt.max_batch = 1000000000 is outside"),
    (lambda d: d["thresholds"].update({"Junco hyemalis": 1.5}), "thresholds['Junco hyemalis'] = 1.5"),
    (lambda d: d["thresholds"].update({"Junco hyemalis": 0}), "thresholds['Junco hyemalis'] = 0 "),
    (lambda d: d["thresholds"].update({"Junco hyemalis": -0.2}), "is not a number between 0 and 1"),
])
def test_model_json_numbers_are_bounded(folder, change, key):
    edit_json(folder / "model.json", change)
    with pytest.raises(ManifestError) as caught:
        read_manifest(folder)
    assert caught.value.path == str(folder / "model.json")
    assert key in str(caught.value), str(caught.value)


@pytest.mark.parametrize("raw,reason", [
    ('"n_layers": ' + BIG, "a whole number of 5000 digits"),
    ('"n_layers": 1e999', "too large for a number"),
    ('"thresholds": {"Junco hyemalis": NaN}', "NaN is not a number bmamba writes"),
])
def test_model_json_numbers_json_cannot_hold(folder, raw, reason):
    """Written as text: json.dumps cannot write these, a hand-edited or hostile file can."""
    path = folder / "model.json"
    text = path.read_text()
    key = raw.split(":")[0]
    start = text.index(key)
    end = text.index("}", start) + 1 if raw.startswith('"thresholds"') else text.index(",", start)
    path.write_text(text[:start] + raw + text[end:])
    with pytest.raises(ManifestError, match=reason) as caught:
        read_manifest(folder)
    assert caught.value.path == str(path)


def test_threshold_nan_and_the_cli(folder, recording):
    """A threshold outside (0, 1) is a model error, found before the first recording (exit 1: the model exists but cannot be used)."""
    edit_json(folder / "model.json", lambda d: d["thresholds"].update({"Junco hyemalis": 1.5}))
    code, output = detect(recording, "--model", folder, "--no-resume")
    assert code == 1 and "model.json" in output and "thresholds['Junco hyemalis'] = 1.5" in output


def test_huge_model_json_is_not_read(folder):
    path = folder / "model.json"
    path.write_text(path.read_text() + " " * (2 << 20))
    with pytest.raises(ManifestError, match="refused above"):
        read_manifest(folder)


@pytest.mark.parametrize("change,key", [
    (lambda m: m.update(n_layers=1_000_000_000), "'model': n_layers = 1000000000 is outside 1..256"),
    (lambda m: m.update(d_model=64.5), "'model': d_model = 64.5 is not a whole number"),
    (lambda m: m.update(headdim=-64), "headdim = -64 is outside"),
    (lambda m: m.update(d_model=8192, n_layers=256), "parameters, more than the 1,000,000,000"),
    (lambda m: m.update(dropout=1.5), "dropout = 1.5 is not a number in [0, 1)"),
    (lambda m: m.update(surprise=1), "unknown model config fields"),
])
def test_config_json_numbers_are_bounded(folder, change, key):
    edit_json(folder / "config.json", lambda d: change(d["model"]))
    with pytest.raises(CheckpointError) as caught:
        read_config(folder)
    assert caught.value.path == str(folder / "config.json")
    assert key in str(caught.value), str(caught.value)


def test_config_json_big_integer(folder):
    path = folder / "config.json"
    path.write_text(path.read_text().replace('"n_layers": 4', '"n_layers": ' + BIG))
    with pytest.raises(CheckpointError, match="a whole number of 5000 digits"):
        read_config(folder)


def test_the_shipped_model_passes_every_check(folder):
    manifest = read_manifest(folder, verify_hashes=True)
    assert read_config(folder)["model"]["n_layers"] == manifest.n_layers
    backend = OnnxBackend(folder)
    assert set(backend.initial_state(1)) == {s.name for s in manifest.states}
