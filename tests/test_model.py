"""The model API: presets, heads, save/load, input checks, the Transformer baseline."""

import json

import numpy as np
import pytest
import torch

import biomamba
from biomamba import BioMamba, TransformerBaseline, load_model
from biomamba.checkpoint import CheckpointError
from biomamba.presets import PRESETS
from conftest import perturb_


def test_import_biomamba_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, biomamba, biomamba.streaming, biomamba.audio; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_parameter_counts(preset):
    m = BioMamba.from_preset(preset, classes=["x"])
    t = TransformerBaseline.from_preset(preset, classes=["x"])
    print(f"{preset}: BioMamba {m.num_parameters():,} Transformer {t.num_parameters():,}")
    if preset == "base":
        assert abs(m.num_parameters() / t.num_parameters() - 1) <= 0.10
        # AVES / HuBERT-base is about 95M parameters
        assert 85e6 <= t.num_parameters() <= 100e6


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return perturb_(BioMamba.from_preset("tiny", classes=["frog", "bird"])).eval()


@pytest.mark.parametrize("bad, message", [
    (np.zeros(1000, np.int16), "float32 or float64.*int16"),
    (np.zeros((2, 1000), np.float32), "1-D"),
    (np.zeros(0, np.float32), "empty"),
    (np.array([0.0, np.nan, 0.0], np.float32), "NaN"),
    ([0.0, 0.1], "numpy array"),
    (np.zeros(10, np.complex64), "float32 or float64"),
])
def test_bad_audio_is_a_clear_value_error(tiny, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny.predict(bad)
    if message != "empty":   # an empty piece is a valid (no-op) push to a stream
        with pytest.raises(ValueError, match=message):
            tiny.stream().push(bad)


def test_float64_audio_accepted(tiny):
    a = np.random.default_rng(0).standard_normal(3000)
    assert np.allclose(tiny.predict(a), tiny.predict(a.astype(np.float32)), atol=1e-6)


def test_output_shapes_and_ranges(tiny):
    a = (np.random.default_rng(1).standard_normal(16000) * 0.3).astype(np.float32)
    p = tiny.predict(a)
    assert p.shape == (50, 2) and ((p > 0) & (p < 1)).all()
    c = BioMamba.from_preset("tiny", task="classify", classes=list("abc")).predict(a)
    assert c.shape == (3,) and abs(c.sum() - 1) < 1e-5
    e = BioMamba.from_preset("tiny", task="embed").predict(a)
    assert e.shape == (50, PRESETS["tiny"].d_model)


def test_padded_batch_equals_single_recordings(tiny):
    """Zero padding after a shorter clip cannot leak into its frames (the model is causal)."""
    rng = np.random.default_rng(2)
    clips = [(rng.standard_normal(n) * 0.3).astype(np.float32) for n in (5000, 3210, 800)]
    batch = torch.zeros(3, 5000)
    for i, c in enumerate(clips):
        batch[i, : len(c)] = torch.from_numpy(c)
    with torch.no_grad():
        out = tiny(batch, torch.tensor([len(c) for c in clips]))
    for i, c in enumerate(clips):
        single = tiny.predict(c)
        got = torch.sigmoid(out["frame_logits"][i, : len(single)]).numpy()
        assert np.abs(got - single).max() <= 1e-5
        assert int(out["mask"][i].sum()) == len(single)


def test_save_load_round_trip(tiny, tmp_path):
    tiny.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    back = BioMamba.load(tmp_path / "ckpt")
    a = (np.random.default_rng(3).standard_normal(4000) * 0.3).astype(np.float32)
    assert np.array_equal(back.predict(a), tiny.predict(a))
    assert back.classes == ["frog", "bird"] and back.preset == "tiny"
    assert isinstance(load_model(tmp_path / "ckpt"), BioMamba)


def test_load_errors(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        BioMamba.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a bmamba checkpoint"):
        BioMamba.load(tmp_path / "empty")
    TransformerBaseline.from_preset("tiny", classes=["x"]).save(tmp_path / "tf")
    with pytest.raises(CheckpointError, match="'transformer' model, not 'biomamba'"):
        BioMamba.load(tmp_path / "tf")
    assert isinstance(load_model(tmp_path / "tf"), TransformerBaseline)
    tiny.save(tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable weights"):
        BioMamba.load(tmp_path / "bad")
    tiny.save(tmp_path / "other")
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    cfg["model"]["d_model"] = 32
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        BioMamba.load(tmp_path / "other")


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown preset"):
        BioMamba.from_preset("huge")
    with pytest.raises(ValueError, match="unknown task"):
        BioMamba.from_preset("tiny", task="segment", classes=["a"])
    with pytest.raises(ValueError, match="at least one class"):
        BioMamba.from_preset("tiny", task="detect")


def test_transformer_baseline_masks_padding():
    torch.manual_seed(0)
    t = TransformerBaseline.from_preset("tiny", task="classify", classes=["a", "b"]).eval()
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal(6400) * 0.3).astype(np.float32), (rng.standard_normal(3200) * 0.3).astype(np.float32)
    batch = torch.zeros(2, 6400)
    batch[0], batch[1, :3200] = torch.from_numpy(a), torch.from_numpy(b)
    with torch.no_grad():
        out = t(batch, torch.tensor([6400, 3200]))
    assert np.allclose(torch.softmax(out["clip_logits"][0], -1).numpy(), t.predict(a), atol=1e-5)
    # the position convolution sees the zero padding (as in AVES), so only approximately equal
    assert np.allclose(torch.softmax(out["clip_logits"][1], -1).numpy(), t.predict(b), atol=0.05)


def test_public_api_names():
    for name in ["BioMamba", "Mamba2", "load_model", "TransformerBaseline", "PRESETS"]:
        assert getattr(biomamba, name) is not None
