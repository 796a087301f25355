"""Kaldi MFCC + deltas against a slow float64 numpy restatement of Kaldi's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biomamba.training.mfcc import (
    compute_deltas,
    mfcc_13,
    mfcc_39,
    mfcc_model_frames,
    n_mfcc_frames,
    to_model_frames,
)


def kaldi_mfcc_slow(audio: np.ndarray) -> np.ndarray:
    """Kaldi compute-mfcc-feats defaults (16 kHz, no dither, no energy), one frame at a time."""
    sr, length, shift, nfft, n_mels, n_ceps = 16000, 400, 160, 512, 23, 13
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(sr / 2)
    step = (hi - lo) / (n_mels + 1)
    bank = np.zeros((n_mels, nfft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * step, lo + (m + 1) * step, lo + (m + 2) * step
        for k in range(nfft // 2):  # the Nyquist bin keeps weight 0
            f = mel(k * sr / nfft)
            if left < f < right:
                bank[m, k] = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
    window = np.array([(0.5 - 0.5 * math.cos(2 * math.pi * n / (length - 1))) ** 0.85 for n in range(length)])
    n_frames = 0 if len(audio) < length else 1 + (len(audio) - length) // shift
    out = np.zeros((n_frames, n_ceps))
    for j in range(n_frames):
        x = audio[j * shift : j * shift + length].astype(np.float64)
        x = x - x.mean()
        y = np.empty_like(x)
        y[0] = x[0] - 0.97 * x[0]
        for i in range(1, length):
            y[i] = x[i] - 0.97 * x[i - 1]
        padded = np.zeros(nfft)
        padded[:length] = y * window
        power = np.abs(np.fft.rfft(padded)) ** 2
        log_mel = [math.log(max(float(bank[m] @ power), float(np.finfo(np.float32).eps))) for m in range(n_mels)]
        for c in range(n_ceps):
            scale = math.sqrt(1.0 / n_mels) if c == 0 else math.sqrt(2.0 / n_mels)
            value = scale * sum(log_mel[m] * math.cos(math.pi * c * (m + 0.5) / n_mels) for m in range(n_mels))
            out[j, c] = value * (1.0 + 11.0 * math.sin(math.pi * c / 22.0))
    return out


def deltas_slow(x: np.ndarray) -> np.ndarray:
    """Kaldi delta, N=2, edges replicated. x: [T, D]."""
    t_max = len(x) - 1
    out = np.zeros_like(x)
    for t in range(len(x)):
        for k in (1, 2):
            out[t] += k * (x[min(t + k, t_max)] - x[max(t - k, 0)])
    return out / 10.0


@pytest.mark.parametrize("n_samples", [400, 401, 559, 560, 4000, 16000 + 123])
def test_mfcc_matches_slow_kaldi(n_samples):
    rng = np.random.default_rng()
    audio = (rng.standard_normal(n_samples) * rng.uniform(0.01, 0.5)).astype(np.float64)
    expected = kaldi_mfcc_slow(audio)
    assert expected.shape == (1 + (n_samples - 400) // 160, 13)
    got64 = mfcc_13(torch.from_numpy(audio)).numpy()
    np.testing.assert_allclose(got64, expected, rtol=1e-9, atol=1e-8)
    got32 = mfcc_13(torch.from_numpy(audio.astype(np.float32))).numpy()
    np.testing.assert_allclose(got32, expected, rtol=1e-4, atol=2e-3)


def test_mfcc_39_is_mfcc_deltas_ddeltas():
    rng = np.random.default_rng()
    audio = rng.standard_normal(8000) * 0.1
    feats = mfcc_39(torch.from_numpy(audio)).numpy()
    ceps = kaldi_mfcc_slow(audio)
    d = deltas_slow(ceps)
    dd = deltas_slow(d)
    np.testing.assert_allclose(feats, np.concatenate([ceps, d, dd], axis=1), rtol=1e-8, atol=1e-8)


def test_deltas_formula_and_short_inputs():
    rng = np.random.default_rng()
    for t in (1, 2, 3, 7):
        x = rng.standard_normal((t, 4))
        got = compute_deltas(torch.from_numpy(x.T.copy())).numpy().T
        np.testing.assert_allclose(got, deltas_slow(x), rtol=1e-12, atol=1e-12)


def test_batch_equals_rows_and_frame_counts():
    rng = np.random.default_rng()
    batch = torch.from_numpy(rng.standard_normal((3, 5000)).astype(np.float32))
    out = mfcc_39(batch)
    assert out.shape == (3, n_mfcc_frames(5000), 39)
    for b in range(3):
        torch.testing.assert_close(out[b], mfcc_39(batch[b]))
    for s in (0, 399, 400, 559, 560, 16000):
        assert mfcc_39(torch.zeros(s) + 0.1).shape == (0 if s < 400 else 1 + (s - 400) // 160, 39)


def test_silence_is_finite():
    assert torch.isfinite(mfcc_39(torch.zeros(1600))).all()


def test_model_frames_read_the_model_receptive_field():
    rng = np.random.default_rng()
    for n_samples in (400, 640, 641, 3200, 16000 + 17):
        audio = rng.standard_normal(n_samples)
        feats = mfcc_model_frames(torch.from_numpy(audio))
        n_model = -(-n_samples // 320)
        assert feats.shape == (n_model, 39)
        # model frame t reads samples [320 t - 80, 320 t + 320) with zeros before the start
        padded = np.concatenate([np.zeros(80), audio])
        ceps = kaldi_mfcc_slow(padded)
        whole = len(ceps)
        for t in range(n_model):
            j = min(2 * t, (whole - 1) // 2 * 2)  # past the last whole frame: the last one repeated
            np.testing.assert_allclose(feats[t, :13].numpy(), ceps[j], rtol=1e-8, atol=1e-8)
        if 2 * (n_model - 1) < whole:  # every frame whole: frame t is window [320 t - 80, +400)
            t = n_model - 1
            np.testing.assert_allclose(
                feats[t, :13].numpy(), kaldi_mfcc_slow(padded[320 * t : 320 * t + 400])[0], rtol=1e-8, atol=1e-8
            )
    assert mfcc_model_frames(torch.zeros(0)).shape == (0, 39)


def test_to_model_frames_pads_and_trims():
    feats = torch.arange(10, dtype=torch.float32).reshape(5, 2)  # picks rows 0, 2, 4
    padded = to_model_frames(feats, 5)
    assert padded[:, 0].tolist() == [0, 4, 8, 8, 8]
    assert to_model_frames(feats, 2)[:, 0].tolist() == [0, 4]
    with pytest.raises(ValueError, match="no feature frames"):
        to_model_frames(torch.zeros(0, 39), 3)
