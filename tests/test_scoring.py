"""The one scoring path (biomamba.scoring): window pooling over a stream of frames == windows
computed on the whole array (mean, and attention-weighted as AudioModel.pool in torch), an
overflow-free sigmoid, seconds to frames; and `bmamba detect --parity` on an attention-pooling
clip classifier compares what the user gets (window probabilities) with PyTorch's own pooling."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from biomamba.scoring import RunningPool, WindowPooler, frames_for, sigmoid, softmax


def whole_windows(frames, window, hop):
    """Oracle: full windows at 0, hop, 2*hop...; then a last partial one if frames are left over."""
    starts, means, covered = [], [], 0
    s = 0
    while s + window <= len(frames):
        starts.append(s)
        means.append(frames[s: s + window].mean(0))
        covered = s + window
        s += hop
    if s < len(frames) and covered < len(frames):
        starts.append(s)
        means.append(frames[s:].mean(0))
    return np.array(starts, np.int64), np.array(means, np.float32).reshape(-1, frames.shape[1])


@pytest.mark.parametrize("n, window, hop", [(600, 250, 250), (600, 250, 125), (100, 250, 250),
                                            (500, 250, 250), (7, 3, 5), (1, 4, 2), (0, 3, 3), (1000, 1, 1)])
def test_stream_equals_whole(n, window, hop):
    rng = np.random.default_rng(n + window + hop)
    frames = rng.standard_normal((n, 3)).astype(np.float32)
    expect_s, expect_m = whole_windows(frames, window, hop)
    for trial in range(5):
        pooler, got_s, got_m = WindowPooler(window, hop), [], []
        pos = 0
        while pos < n:
            k = int(rng.integers(0, 40)) if trial else n
            s, m = pooler.push(frames[pos: pos + k])
            got_s.append(s)
            got_m.append(m)
            pos += k
        s, m = pooler.flush()
        got_s.append(s)
        got_m.append(m.reshape(-1, 3))
        assert np.array_equal(np.concatenate(got_s), expect_s)
        assert np.allclose(np.concatenate(got_m).reshape(-1, 3), expect_m, atol=1e-6)
        assert pooler._frames is None or len(pooler._frames) <= window


def test_bad_window():
    with pytest.raises(ValueError):
        WindowPooler(0, 1)


def attention_oracle(frames, scores, window):
    """float64 softmax(scores)-weighted sums over consecutive windows (the last one partial)."""
    out = []
    for s in range(0, len(frames), window):
        w = np.exp(scores[s: s + window].astype(np.float64))
        out.append((w / w.sum()) @ frames[s: s + window].astype(np.float64))
    return np.array(out)


@pytest.mark.parametrize("n, window", [(600, 150), (151, 150), (149, 150), (7, 3)])
def test_attention_windows_stream_equals_whole(n, window):
    rng = np.random.default_rng(n)
    frames = rng.standard_normal((n, 4)).astype(np.float32)
    scores = (rng.standard_normal(n) * 30).astype(np.float32)   # large: exp() would overflow unshifted
    pooler, got, pos = WindowPooler(window, window), [], 0
    while pos < n:
        k = int(rng.integers(1, 50))
        got.append(pooler.push(frames[pos: pos + k], scores[pos: pos + k])[1])
        pos += k
    got.append(pooler.flush()[1])
    assert np.allclose(np.concatenate(got), attention_oracle(frames, scores, window), atol=1e-5)


def test_running_pool_equals_whole():
    rng = np.random.default_rng(1)
    frames, scores = rng.standard_normal((300, 3)), rng.standard_normal(300) * 50
    for weights in (None, scores):
        pool = RunningPool()
        for a in range(0, 300, 37):
            pool.push(frames[a: a + 37], None if weights is None else weights[a: a + 37])
        expect = frames.mean(0) if weights is None else attention_oracle(frames, scores, 300)[0]
        assert np.allclose(pool.result(), expect, atol=1e-9)
    with pytest.raises(ValueError, match="no frames"):
        RunningPool().result()


def test_sigmoid_and_softmax_do_not_overflow():
    x = np.array([-1000.0, -100.0, 0.0, 100.0, 1000.0], np.float32)
    with np.errstate(over="raise"):
        p = sigmoid(x)
        q = softmax(np.array([[1000.0, 0.0, -1000.0]], np.float32))
    assert p.dtype == np.float32 and np.allclose(p, [0, 0, 0.5, 1, 1]) and p[0] >= 0
    assert np.allclose(q, [[1, 0, 0]])


def test_frames_for():
    assert [frames_for(s, 16000) for s in (3.0, 0.2, 0.01, 0.0, 30.0, 7.3)] == [150, 10, 1, 1, 1500, 365]
    assert frames_for(0.03, 16000) == round(0.03 * 16000 / 320)
    # a 32 kHz model's frames last 10 ms: twice as many in the same seconds
    assert [frames_for(s, 32000) for s in (3.0, 0.01, 30.0)] == [300, 1, 3000]


@pytest.fixture(scope="module")
def attention_export(tmp_path_factory) -> Path:
    """A tiny clip classifier with attention pooling and random (perturbed) weights, exported."""
    import torch

    from biomamba import BioMamba
    from biomamba.export import export_model
    from conftest import perturb_

    torch.manual_seed(0)
    model = BioMamba.from_preset("tiny", task="classify", classes=["frog", "bird", "insect"],
                                 pooling="attention")
    perturb_(model, 0.3)
    with torch.no_grad():   # attention scores far apart: weights far from uniform
        model.attention.weight.mul_(20.0)
    root = tmp_path_factory.mktemp("attention")
    model.save(root / "ckpt")
    return Path(export_model(root / "ckpt", root / "export"))


def test_parity_compares_window_probabilities_with_attention_pooling(attention_export, real_data, tmp_path):
    """--parity on an attention-pooling classifier: the runtime's window probabilities must be what
    PyTorch's AudioModel.pool gives (they were mean-pooled: the `attention` output was never read)."""
    from typer.testing import CliRunner

    from biomamba.audio import read_audio
    from biomamba.cli.app import app

    recording = real_data / "maad/data/spinetail.wav"
    report = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["detect", str(recording), "--model", str(attention_export), "--out",
                                      str(tmp_path), "--window", "1s", "--parity", "--report", str(report),
                                      "--no-resume", "--format", "json"])
    assert result.exit_code == 0, result.output
    parity = json.loads(report.read_text())["parity"]
    print("attention parity max |dp| =", parity["max_abs_diff"])
    windows = math.ceil(math.ceil(len(read_audio(recording)) / 320) / 50)
    assert parity["frames"] == windows and parity["unit"] == "windows"
    assert parity["max_abs_diff"] <= 1e-4, parity
    # the summary line counts what was compared: windows of a clip classifier, not 20 ms frames
    assert f"over {windows} windows," in result.output, result.output
