"""The exact long-recording mode: a model call blocked inside (the front end over pieces of
``frontend_block_frames``, the Mamba stack over pieces of ``mamba_block_frames`` with carried state)
gives the numbers of one unblocked whole pass (``forward``), and holds only one piece at a time."""

import numpy as np
import pytest
import torch

from biomamba import BioMamba
from biomamba.audio import read_audio
from biomamba.model import pad_for_frontend
from biomamba.streaming import CONTEXT, HOP, block_pieces
from conftest import perturb_

REAL_FILES = ["oss/tests/audio/great_plains_toad.wav", "maad/data/indices/S4A03895_20190522_000000.wav"]


def unblocked(model, audio: np.ndarray) -> dict[str, np.ndarray]:
    """The oracle: one forward pass over the whole recording, nothing blocked."""
    with torch.no_grad():
        out = model(torch.from_numpy(audio)[None])
    return {"embeddings": out["hidden"][0].numpy(), "probs": torch.sigmoid(out["frame_logits"][0]).numpy()}


def real_audio(real_data, name: str, seconds: float) -> np.ndarray:
    path = real_data / name
    if not path.exists():
        pytest.skip(f"{name} not in the real-data folder")
    return read_audio(path)[: int(16000 * seconds)]


@pytest.fixture(scope="module", params=["tiny", "edge"])
def model(request):
    torch.manual_seed(0)
    return perturb_(BioMamba.from_preset(request.param, task="detect", classes=["a", "b", "c"]), 0.05).eval()


def test_block_pieces_overlap_by_the_context_and_cover_the_block():
    block = np.arange(CONTEXT + 10 * HOP, dtype=np.float32)[None]
    pieces = block_pieces(block, 4)
    assert [(p.shape[-1] - CONTEXT) // HOP for p in pieces] == [4, 4, 2]
    start = 0
    for p in pieces:
        assert np.array_equal(p, block[:, start: start + p.shape[-1]])
        start += p.shape[-1] - CONTEXT
    assert start + CONTEXT == block.shape[-1]
    with pytest.raises(ValueError, match="max_frames"):
        block_pieces(block, 0)


@pytest.mark.parametrize("frontend_frames, mamba_frames", [(None, None), (7, 37)])
def test_blocked_equals_unblocked_on_real_audio(model, real_data, frontend_frames, mamba_frames):
    """One model call over 20 s of a real recording, blocked at the defaults and at sizes that cut
    SSD chunks and the front end's pieces anywhere, against the unblocked whole pass: probabilities
    within 1e-5 (the streaming contract); embeddings, whose values reach about 3, within 1e-5 of
    their largest magnitude (float32 rounding scales with it)."""
    m = model
    if frontend_frames is not None:
        m.frontend_block_frames, m.mamba_block_frames = frontend_frames, mamba_frames
    try:
        for name in REAL_FILES:
            audio = real_audio(real_data, name, 20.0)
            ref = unblocked(m, audio)
            block = pad_for_frontend(torch.from_numpy(audio)[None]).numpy()
            out, _ = m.run_chunk(block, m.initial_state(1))
            scale = max(1.0, float(np.abs(ref["embeddings"]).max()))
            assert np.abs(out["embeddings"][0] - ref["embeddings"]).max() <= 1e-5 * scale, name
            probs = 1 / (1 + np.exp(-out["logits"][0].astype(np.float64)))
            assert np.abs(probs - ref["probs"]).max() <= 1e-5, name
            assert np.abs(m.predict(audio) - ref["probs"]).max() <= 1e-5, name
    finally:
        m.frontend_block_frames, m.mamba_block_frames = BioMamba.frontend_block_frames, BioMamba.mamba_block_frames


@pytest.mark.slow
def test_base_preset_blocked_equals_unblocked_on_real_audio(real_data):
    """The paper-scale model the blocking is for: predict (30 s chunks, each blocked) on 32 s of a
    real recording (two chunks) against one unblocked pass."""
    audio = real_audio(real_data, REAL_FILES[0], 32.0)
    torch.manual_seed(0)
    m = perturb_(BioMamba.from_preset("base", task="detect", classes=["a", "b"]), 0.01).eval()
    assert np.abs(m.predict(audio) - unblocked(m, audio)["probs"]).max() <= 1e-5


def test_a_call_holds_one_piece_at_a_time(model):
    """No convolution of the front end sees more than frontend_block_frames frames, no Mamba layer
    more than mamba_block_frames, however long the block of the call."""
    seen = {"frontend": [], "mamba": []}
    hooks = [model.frontend.conv.register_forward_pre_hook(lambda mod, args: seen["frontend"].append(args[0].shape[-1])),
             model.layers[0].register_forward_pre_hook(lambda mod, args: seen["mamba"].append(args[0].shape[1]))]
    try:
        n = 1000
        block = (np.random.default_rng(0).standard_normal((1, n * HOP + CONTEXT)) * 0.1).astype(np.float32)
        out, _ = model.run_chunk(block, model.initial_state(1))
    finally:
        for h in hooks:
            h.remove()
    assert out["logits"].shape[1] == n
    assert max(seen["frontend"]) == model.frontend_block_frames * HOP + CONTEXT
    assert max(seen["mamba"]) == model.mamba_block_frames
    assert sum(seen["mamba"]) == n


def test_carried_state_does_not_pin_the_chunk():
    """The state a call returns owns its memory: a view into the call's buffers (all chunk states
    of the scan, the conv's whole input) would keep them alive for as long as the state is carried."""
    torch.manual_seed(0)
    m = BioMamba.from_preset("tiny", task="embed").eval()
    block = (np.random.default_rng(1).standard_normal((1, 300 * HOP + CONTEXT)) * 0.1).astype(np.float32)
    _, state = m.run_chunk(block, m.initial_state(1))
    for conv_state, ssm_state in state:
        for t in (conv_state, ssm_state):
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
