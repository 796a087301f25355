"""Window pooling over a stream of frames == windows computed on the whole array."""

import numpy as np
import pytest

from biomamba.runtime.pooling import WindowPooler


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
