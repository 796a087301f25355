"""The streaming contract: pieces of any length, in order, give the whole-recording frame outputs."""

import numpy as np
import pytest
import torch

from biomamba import BioMamba
from biomamba.audio import read_audio
from biomamba.streaming import CONTEXT, HOP, FrameBuffer, StreamRunner
from conftest import perturb_


def random_split(n, rng, max_piece):
    """Cut points for n samples: pieces of 1..max_piece samples, many off the 320-sample grid."""
    cuts, pos = [0], 0
    while pos < n:
        pos = min(n, pos + int(rng.integers(1, max_piece)))
        cuts.append(pos)
    return cuts


def streamed(model, audio, cuts, max_chunk_s=30.0):
    s = model.stream(max_chunk_s=max_chunk_s)
    outs = [s.push(audio[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    outs.append(s.flush())
    return np.concatenate(outs)


@pytest.fixture(scope="module", params=["tiny", "edge"])
def model(request):
    torch.manual_seed(0)
    return perturb_(BioMamba.from_preset(request.param, task="detect", classes=["a", "b", "c"]), 0.05).eval()


@pytest.mark.parametrize("seed", [0, 1])
def test_random_audio_random_splits(model, seed):
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(16000 * 4 + int(rng.integers(0, 320))) * 0.3).astype(np.float32)
    whole = model.predict(audio)
    assert whole.shape == (-(-len(audio) // HOP), 3)
    # tiny pieces (many shorter than one hop) and large ones; a small max chunk forces several
    # model calls per push
    for max_piece, max_chunk_s in [(400, 30.0), (9000, 0.37)]:
        got = streamed(model, audio, random_split(len(audio), rng, max_piece), max_chunk_s)
        assert got.shape == whole.shape
        assert np.abs(got - whole).max() <= 1e-5


def test_pieces_shorter_than_a_hop(model):
    rng = np.random.default_rng(3)
    audio = (rng.standard_normal(5000) * 0.3).astype(np.float32)
    whole = model.predict(audio)
    got = streamed(model, audio, list(range(0, 5000, 7)) + [5000])
    assert np.abs(got - whole).max() <= 1e-5


def test_real_recordings(model, real_data):
    """Real field recordings (a toad chorus, a drumming grouse, soundscape clips) split at random points."""
    files = [real_data / "oss/tests/audio/great_plains_toad.wav",
             real_data / "oss/tests/audio/rugr_drum.wav",
             real_data / "maad/data/indices/S4A03895_20190522_000000.wav",
             real_data / "phoebe/audio/data/processed/129079.mp3"]
    rng = np.random.default_rng(7)
    for path in files:
        if not path.exists():
            pytest.skip(f"{path.name} not in the real-data folder")
        audio = read_audio(path)[: 16000 * 12]
        whole = model.predict(audio)
        got = streamed(model, audio, random_split(len(audio), rng, 24000), max_chunk_s=1.3)
        assert np.abs(got - whole).max() <= 1e-5, path.name


def test_frame_buffer_blocks_cover_the_recording_exactly():
    """Blocks carry 80 samples of context and n whole frames; concatenating their new parts gives the
    recording back, zero-padded to whole frames."""
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(3 * HOP + 123).astype(np.float32)
    buf, blocks = FrameBuffer(), []
    cuts = random_split(len(audio), rng, 200)
    for a, b in zip(cuts[:-1], cuts[1:]):
        buf.append(audio[a:b])
        while (blk := buf.take(max_frames=2)) is not None:
            blocks.append(blk)
    while (blk := buf.take(max_frames=2, final=True)) is not None:
        blocks.append(blk)
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio, np.zeros(HOP - 123, np.float32)])
    pos = 0
    for blk in blocks:
        assert (len(blk) - CONTEXT) % HOP == 0 and len(blk) > CONTEXT
        assert np.array_equal(blk, padded[pos: pos + len(blk)])
        pos += len(blk) - CONTEXT
    assert pos == 4 * HOP and buf.frames_out == 4 and buf.padded_samples == HOP - 123


def test_runner_with_a_fake_backend_counts_frames():
    """The chunk loop alone: a backend that reports each frame's first new sample."""
    def run_chunk(block, state):
        n = (block.shape[1] - CONTEXT) // HOP
        firsts = block[:, CONTEXT::HOP][:, :n]
        return {"first": firsts[..., None]}, state + n

    runner = StreamRunner(run_chunk, 0, max_frames=3)
    audio = np.arange(1, 10 * HOP + 1, dtype=np.float32)
    out = [runner.push(audio[: 5 * HOP + 1]), runner.push(audio[5 * HOP + 1:]), runner.flush()]
    firsts = np.concatenate([o["first"][:, 0] for o in out if o])
    assert np.array_equal(firsts, audio[::HOP]) and runner.state == 10


def test_classification_stream_equals_predict():
    torch.manual_seed(1)
    for pooling in ["mean", "attention"]:
        m = perturb_(BioMamba.from_preset("tiny", task="classify", classes=list("abcd"), pooling=pooling)).eval()
        audio = (np.random.default_rng(5).standard_normal(16000 * 2 + 17) * 0.3).astype(np.float32)
        s = m.stream(max_chunk_s=0.3)
        for a in range(0, len(audio), 2900):
            s.push(audio[a: a + 2900])
        s.flush()
        assert np.abs(s.clip_probs() - m.predict(audio)).max() <= 1e-5


def test_embedding_stream_equals_predict():
    torch.manual_seed(2)
    m = perturb_(BioMamba.from_preset("tiny", task="embed")).eval()
    audio = (np.random.default_rng(6).standard_normal(7777) * 0.3).astype(np.float32)
    assert np.abs(streamed(m, audio, [0, 1000, 1001, 7777]) - m.predict(audio)).max() <= 1e-5
