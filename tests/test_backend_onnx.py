"""The onnxruntime backend against PyTorch: carried state over many chunks, both variants, fp16.

Also the manifest reader's errors and that the runtime path never imports torch. The numpy SSD
scan (the plugin variant's CPU op) is checked in test_ssd_conformance.py's table.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from biomamba import BioMamba
from biomamba.export.onnx_export import export_model
from biomamba.runtime.backend_onnx import OnnxBackend
from biomamba.runtime.backends import BackendError
from biomamba.runtime.manifest import ManifestError, read_manifest
from biomamba.streaming import CONTEXT, HOP, StreamRunner
from conftest import perturb_

CLASSES = ["frog", "bird", "insect"]
TOL = 1e-4


def has_ort_extensions() -> bool:
    try:
        import onnxruntime_extensions  # noqa: F401
    except ImportError:
        return False
    return True


needs_extensions = pytest.mark.skipif(not has_ort_extensions(),
                                      reason="onnxruntime-extensions not installed (plugin variant on CPU)")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return perturb_(BioMamba.from_preset("tiny", task="detect", classes=CLASSES), 0.05, seed=1).eval()


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    checkpoint = model.save(tmp_path_factory.mktemp("ckpt") / "run")
    cache = {}

    def get(variant: str, fp16: bool = False):
        if (variant, fp16) not in cache:
            out = tmp_path_factory.mktemp(f"{variant}{'16' if fp16 else '32'}")
            cache[variant, fp16] = export_model(checkpoint, out, variant=variant, fp16=fp16)
        return cache[variant, fp16]

    return get


def random_audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000) + int(rng.integers(1, HOP))        # not a whole number of frames
    t = np.arange(n) / 16000
    tone = 0.3 * np.sin(2 * np.pi * (300 + 2000 * rng.random()) * t)
    return (tone + 0.1 * rng.standard_normal(n)).astype(np.float32)


def pieces(audio: np.ndarray, seed: int, max_piece: int = 6000):
    """Random cut points, none on a frame boundary by design (sizes drawn freely; some < 320)."""
    rng = np.random.default_rng(seed)
    pos = 0
    while pos < len(audio):
        n = int(rng.integers(1, max_piece))
        if n % HOP == 0:
            n += 1
        yield audio[pos:pos + n]
        pos += n


def stream(run_chunk, state, audio, seed, max_frames):
    """Push audio through StreamRunner in random pieces; returns outputs and the chunk count."""
    calls = []

    def counted(block, s):
        calls.append(block.shape[1])
        return run_chunk(block, s)

    runner = StreamRunner(counted, state, max_frames)
    parts = [runner.push(p) for p in pieces(audio, seed)] + [runner.flush()]
    parts = [p for p in parts if p and len(next(iter(p.values())))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, len(calls)


def sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


@pytest.fixture(scope="module")
def reference(model):
    """PyTorch on the same audio: the streamed run (ModelStream/run_chunk) and the whole run."""
    audio = random_audio(9.0, seed=2)
    with torch.no_grad():
        whole = model(torch.from_numpy(audio)[None])
    torch_stream, n_calls = stream(model.run_chunk, model.initial_state(1), audio, seed=3, max_frames=19)
    s = model.stream(max_chunk_s=19 * 0.02)
    probs_stream = np.concatenate([s.push(p) for p in pieces(audio, seed=3)] + [s.flush()])
    return {"audio": audio, "probs": model.predict(audio), "probs_stream": probs_stream,
            "hidden": whole["hidden"][0].numpy(), "torch_stream": torch_stream, "calls": n_calls}


# -- parity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["portable", pytest.param("plugin", marks=needs_extensions)])
def test_streamed_backend_equals_pytorch(exports, reference, variant):
    backend = OnnxBackend(exports(variant), threads=2)
    out, n_calls = stream(backend.run_chunk, backend.initial_state(1), reference["audio"], seed=3, max_frames=19)
    assert n_calls >= 20
    probs = sigmoid(out["logits"])
    assert probs.shape == reference["probs"].shape
    assert np.abs(probs - reference["probs_stream"]).max() <= TOL      # == model.stream()
    assert np.abs(probs - reference["probs"]).max() <= TOL             # == model.predict (whole)
    assert np.abs(out["logits"] - reference["torch_stream"]["logits"]).max() <= TOL
    assert np.abs(out["embeddings"] - reference["torch_stream"]["embeddings"]).max() <= TOL
    assert np.abs(out["embeddings"] - reference["hidden"]).max() <= TOL
    assert out["logits"].dtype == np.float32 and out["embeddings"].dtype == np.float32


@pytest.mark.parametrize("variant", ["portable", pytest.param("plugin", marks=needs_extensions)])
def test_fp16_export_stays_close_to_fp32(exports, reference, variant):
    """float16 weights and activations: frame probabilities within 1e-2 of the float32 model.

    onnxruntime runs float16 nodes that have no float16 CPU kernel in float32 between casts, so
    this run rounds every weight and every tensor between ops to float16 (the dominant error of a
    float16 engine) but may do some arithmetic more precisely than a GPU would.
    """
    backend = OnnxBackend(exports(variant, fp16=True), threads=2)
    out, _ = stream(backend.run_chunk, backend.initial_state(1), reference["audio"], seed=3, max_frames=19)
    diff = np.abs(sigmoid(out["logits"]) - reference["probs"]).max()
    assert diff <= 1e-2
    assert diff > 1e-6          # it really ran in half precision
    state = backend.initial_state(1)
    assert all(v.dtype == np.float32 for v in state.values())


def test_fp16_graph_matches_torch_with_half_rounded_weights(exports, model, reference):
    """An independent emulation: the float32 PyTorch model with weights rounded through float16
    (A_log, D, dt_bias excepted, as in the export) lands closer to the float16 graph than the
    original float32 model does to it."""
    emulated = BioMamba.load(exports("portable", fp16=True))
    with torch.no_grad():
        for name, p in emulated.named_parameters():
            if not name.endswith(("A_log", ".D", "dt_bias")):
                p.copy_(p.half().float())
    backend = OnnxBackend(exports("portable", fp16=True), threads=2)
    out, _ = stream(backend.run_chunk, backend.initial_state(1), reference["audio"], seed=3, max_frames=19)
    fp16_probs = sigmoid(out["logits"])
    d_emulated = np.abs(fp16_probs - emulated.predict(reference["audio"])).max()
    d_original = np.abs(fp16_probs - reference["probs"]).max()
    assert d_emulated < d_original


def test_chunk_lengths_of_1_7_3_and_30_seconds(exports, model):
    audio = random_audio(40.0, seed=4)
    expected = model.predict(audio)
    backend = OnnxBackend(exports("portable"), threads=2)
    for frames in (50, 365, 1500):
        out, n_calls = stream(backend.run_chunk, backend.initial_state(1), audio, seed=5, max_frames=frames)
        assert n_calls >= 2
        assert np.abs(sigmoid(out["logits"]) - expected).max() <= TOL, frames


def test_batch_rows_are_independent(exports):
    backend = OnnxBackend(exports("portable"), threads=2)
    rng = np.random.default_rng(6)
    block = (0.2 * rng.standard_normal((3, HOP * 40 + CONTEXT))).astype(np.float32)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in backend.initial_state(3).items()}
    out, new = backend.run_chunk(block, state)
    assert out["logits"].shape == (3, 40, len(CLASSES))
    for row in range(3):
        one_out, one_new = backend.run_chunk(block[row:row + 1], {k: v[row:row + 1] for k, v in state.items()})
        assert np.abs(one_out["logits"][0] - out["logits"][row]).max() <= TOL
        for k in new:
            assert np.abs(one_new[k][0] - new[k][row]).max() <= TOL


def test_initial_state_follows_the_manifest(exports, model):
    backend = OnnxBackend(exports("portable"))
    state = backend.initial_state(2)
    expected = [t for pair in model.initial_state(2) for t in pair]
    assert list(state) == [f"{kind}_state_{i}" for i in range(len(model.layers)) for kind in ("conv", "ssm")]
    for array, tensor in zip(state.values(), expected):
        assert array.shape == tuple(tensor.shape) and array.dtype == np.float32 and not array.any()


def test_every_backend_keeps_the_contract(exports):
    """onnxruntime and the torch backend: both are `Backend`s, with the same named state (same keys,
    shapes, float32) and, from the same non-zero state, the same outputs and new state."""
    from biomamba.runtime.backend_api import Backend
    from biomamba.runtime.backends import open_backend

    onnx_backend, torch_backend = (open_backend(exports("portable"), name) for name in ("onnxruntime", "torch"))
    rng = np.random.default_rng(8)
    block = (0.2 * rng.standard_normal((2, HOP * 30 + CONTEXT))).astype(np.float32)
    zero = onnx_backend.initial_state(2)
    assert {k: (v.shape, v.dtype) for k, v in torch_backend.initial_state(2).items()} == \
        {k: (v.shape, v.dtype) for k, v in zero.items()}
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in zero.items()}
    results = []
    for backend in (onnx_backend, torch_backend):
        assert isinstance(backend, Backend), backend.name
        results.append(backend.run_chunk(block, state))
        assert backend.peak_gpu_mb() is None
    (out_a, new_a), (out_b, new_b) = results
    assert out_a.keys() == out_b.keys() and new_a.keys() == new_b.keys()
    for k in out_a:
        assert np.abs(out_a[k] - out_b[k]).max() <= TOL, k
    for k in new_a:
        assert np.abs(new_a[k] - new_b[k]).max() <= TOL * (1 + np.abs(new_b[k]).max()), k
    for backend in (onnx_backend, torch_backend):
        backend.close()
        backend.close()   # twice: harmless


def test_run_chunk_rejects_a_block_of_partial_frames(exports):
    backend = OnnxBackend(exports("portable"))
    with pytest.raises(ValueError, match=r"320\*n \+ 80"):
        backend.run_chunk(np.zeros((1, HOP * 3 + CONTEXT + 7), np.float32), backend.initial_state(1))


def test_providers(exports):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendError, match=r"bmamba\[gpu\]"):
            OnnxBackend(exports("portable"), providers="cuda")
    with pytest.raises(BackendError, match="unknown providers 'tpu'"):
        OnnxBackend(exports("portable"), providers="tpu")


@needs_extensions
def test_edge_preset_parity(tmp_path):
    """The edge preset (ngroups 1, wider heads), plugin and portable, against model.stream()."""
    torch.manual_seed(7)
    model = perturb_(BioMamba.from_preset("edge", task="detect", classes=["call", "song"]), 0.02, seed=7).eval()
    audio = random_audio(4.0, seed=8)
    s = model.stream(max_chunk_s=0.5)
    expected = np.concatenate([s.push(p) for p in pieces(audio, seed=9)] + [s.flush()])
    for variant in ("portable", "plugin"):
        backend = OnnxBackend(export_model(model, tmp_path / variant, variant=variant), threads=2)
        out, n_calls = stream(backend.run_chunk, backend.initial_state(1), audio, seed=9, max_frames=9)
        assert n_calls >= 20
        assert np.abs(sigmoid(out["logits"]) - expected).max() <= TOL, variant


# -- the plugin op on onnxruntime -------------------------------------------------------------------------


@needs_extensions
def test_ort_compatible_copies_and_keeps_the_file(exports):
    import onnx

    from biomamba.runtime.ort_custom_op import ort_compatible

    path = exports("plugin", fp16=True) / "mamba.onnx"
    original = onnx.load(str(path))
    copy = ort_compatible(original, fp16=True)
    assert all(n.domain == "bmamba" for n in original.graph.node if n.op_type == "SSDChunkScan")
    assert all(n.domain == "ai.onnx.contrib" for n in copy.graph.node if n.op_type == "SSDChunkScan")
    casts = sum(n.op_type == "Cast" for n in copy.graph.node) - sum(n.op_type == "Cast" for n in original.graph.node)
    assert casts == 5 * 2          # x, dt, B, C up and y down, per layer
    assert onnx.load(str(path)).SerializeToString() == original.SerializeToString()


# -- manifest errors ------------------------------------------------------------------------------------------


def test_manifest_errors(exports, tmp_path, model):
    with pytest.raises(ManifestError, match="no such model folder"):
        read_manifest(tmp_path / "missing")
    checkpoint = model.save(tmp_path / "ckpt")
    with pytest.raises(ManifestError, match="it is a checkpoint, not an export"):
        read_manifest(checkpoint)

    good = exports("portable")
    data = json.loads((good / "model.json").read_text())

    def variant_of(change, drop_file=None, corrupt=None):
        folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for f in good.iterdir():
            if f.name != drop_file:
                (folder / f.name).write_bytes(f.read_bytes())
        d = json.loads(json.dumps(data))
        change(d)
        (folder / "model.json").write_text(json.dumps(d))
        if corrupt:
            (folder / corrupt).write_bytes(b"x" + (folder / corrupt).read_bytes()[1:])
        return folder

    with pytest.raises(ManifestError, match=r"newer bmamba \(format_version 2 > 1\)"):
        read_manifest(variant_of(lambda d: d.update(format_version=2)))
    with pytest.raises(ManifestError, match="not a bmamba export manifest"):
        read_manifest(variant_of(lambda d: d.update(format="something")))
    with pytest.raises(ManifestError, match="graph file mamba.onnx is missing"):
        read_manifest(variant_of(lambda d: None, drop_file="mamba.onnx"))
    with pytest.raises(ManifestError, match="missing key 'states'"):
        read_manifest(variant_of(lambda d: d.pop("states")))
    with pytest.raises(ManifestError, match="unknown variant"):
        read_manifest(variant_of(lambda d: d.update(variant="turbo")))
    corrupted = variant_of(lambda d: None, corrupt="frontend.onnx")
    read_manifest(corrupted)                                       # hashes are optional
    with pytest.raises(ManifestError, match="SHA-256 does not match"):
        read_manifest(corrupted, verify_hashes=True)
    bad_json = variant_of(lambda d: None)
    (bad_json / "model.json").write_text("{")
    with pytest.raises(ManifestError, match="unreadable JSON"):
        read_manifest(bad_json)


# -- torch-free runtime -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["portable", pytest.param("plugin", marks=needs_extensions)])
@pytest.mark.parametrize("torch_installed", [True, False])
def test_runtime_never_imports_torch(exports, variant, torch_installed):
    """The runtime works where torch is absent, and never imports it itself. (onnxruntime-extensions,
    loaded for the plugin variant, imports torch on its own when torch is installed.)"""
    folder = exports(variant)
    if torch_installed and variant == "plugin":
        pytest.skip("onnxruntime-extensions imports an installed torch by itself")
    block = "" if torch_installed else "sys.modules['torch'] = None  # import torch now fails\n"
    code = f"""
import sys, numpy as np
{block}from biomamba.runtime.backend_onnx import OnnxBackend
from biomamba.streaming import StreamRunner
b = OnnxBackend({str(folder)!r})
r = StreamRunner(b.run_chunk, b.initial_state(1), 100)
out = r.push(np.zeros(16000, np.float32))
assert out["logits"].shape == (50, 3), out["logits"].shape
assert sys.modules.get("torch") is None, "torch was imported"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
