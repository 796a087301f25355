"""HuBERT's iteration-1 features: Kaldi MFCC + deltas + delta-deltas (39 dims at 100 Hz), in torch.

HuBERT (fairseq `examples/hubert/simple_kmeans/dump_mfcc_feature.py`) computes
`torchaudio.compliance.kaldi.mfcc(waveform, sample_frequency=16000, use_energy=False)` on the
float waveform in [-1, 1], then `torchaudio.functional.compute_deltas` twice. torchaudio cannot
be installed beside our torch, so this module redoes the same steps with torch ops (learned
from pytorch/audio `src/torchaudio/compliance/kaldi.py`), with Kaldi's defaults:

- frames of 400 samples (25 ms) every 160 (10 ms), only whole frames (snip_edges):
  1 + (S - 400) // 160 frames, none when S < 400;
- per frame: subtract the mean (remove DC), pre-emphasis x[j] - 0.97 x[j-1] (x[-1] := x[0]),
  Povey window (symmetric Hann to the power 0.85), zero-pad to 512, |rFFT|^2;
- 23 triangular mel bins (mel = 1127 ln(1 + f/700)) from 20 Hz to Nyquist on the 256 FFT bins
  below Nyquist, natural log floored at float32 eps;
- orthonormal DCT-II, keep 13 (c0 kept, no energy), lifter 1 + 11 sin(pi i / 22); no dither;
- deltas: d[t] = sum_{k=1..2} k (x[t+k] - x[t-k]) / 10, edges replicated; then again on d.
"""

from __future__ import annotations

import math

import torch

from ..streaming import CONTEXT, HOP, SAMPLE_RATE

FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
FFT_SIZE = 512  # FRAME_LENGTH rounded up to a power of two
N_MELS = 23
N_CEPS = 13
LOW_HZ = 20.0
CEPSTRAL_LIFTER = 22.0
PREEMPHASIS = 0.97
DELTA_N = 2  # window 5
FEATURE_DIM = 3 * N_CEPS

_FLOAT32_EPS = torch.finfo(torch.float32).eps


def n_mfcc_frames(n_samples: int) -> int:
    """Frames of `mfcc_39` for n_samples of audio: 1 + (S - 400) // 160, or 0 when S < 400."""
    return 0 if n_samples < FRAME_LENGTH else 1 + (n_samples - FRAME_LENGTH) // FRAME_SHIFT


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


def mel_filterbank(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Kaldi's triangular mel filters [23, 257] on the rFFT bins of a 512-point FFT at 16 kHz
    (the Nyquist bin gets weight 0, as in Kaldi)."""
    low, high = torch.tensor(LOW_HZ, dtype=torch.float64), torch.tensor(SAMPLE_RATE / 2, dtype=torch.float64)
    mel_low, mel_high = _mel(low), _mel(high)
    delta = (mel_high - mel_low) / (N_MELS + 1)
    i = torch.arange(N_MELS, dtype=torch.float64).unsqueeze(1)
    left, centre, right = mel_low + i * delta, mel_low + (i + 1) * delta, mel_low + (i + 2) * delta
    fft_mel = _mel(SAMPLE_RATE / FFT_SIZE * torch.arange(FFT_SIZE // 2, dtype=torch.float64)).unsqueeze(0)
    rising = (fft_mel - left) / (centre - left)
    falling = (right - fft_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1)).to(dtype)


def dct_matrix(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II [23, 13] (right-multiplied): sqrt(2/N) cos(pi/N (n + 1/2) k), column 0
    = sqrt(1/N)."""
    n = torch.arange(N_MELS, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(N_CEPS, dtype=torch.float64).unsqueeze(0)
    dct = math.sqrt(2.0 / N_MELS) * torch.cos(math.pi / N_MELS * (n + 0.5) * k)
    dct[:, 0] = math.sqrt(1.0 / N_MELS)
    return dct.to(dtype)


def compute_deltas(x: torch.Tensor, n: int = DELTA_N) -> torch.Tensor:
    """Kaldi/torchaudio deltas along the last axis: sum_{k=-n..n} k x[t+k] / (n(n+1)(2n+1)/3),
    edges replicated. x: [..., T] -> [..., T]."""
    if x.shape[-1] == 0:
        return x.clone()
    shape = x.shape
    flat = x.reshape(1, -1, shape[-1])
    padded = torch.nn.functional.pad(flat, (n, n), mode="replicate")
    denom = n * (n + 1) * (2 * n + 1) / 3
    out = torch.zeros_like(flat)
    for k in range(1, n + 1):
        out = out + k * (padded[..., n + k : n + k + shape[-1]] - padded[..., n - k : n - k + shape[-1]])
    return (out / denom).reshape(shape)


def mfcc_13(audio: torch.Tensor) -> torch.Tensor:
    """Kaldi MFCC (13 coefficients, c0 first) of 16 kHz audio. audio: [S] or [B, S] float
    (HuBERT feeds floats in [-1, 1]) -> [T, 13] or [B, T, 13], T = n_mfcc_frames(S)."""
    if not torch.is_floating_point(audio):
        audio = audio.float()
    dtype = audio.dtype
    squeeze = audio.dim() == 1
    if squeeze:
        audio = audio.unsqueeze(0)
    if audio.dim() != 2:
        raise ValueError(f"audio must be [S] or [B, S], got shape {tuple(audio.shape)}")
    n_frames = n_mfcc_frames(audio.shape[-1])
    if n_frames == 0:
        out = audio.new_zeros((audio.shape[0], 0, N_CEPS))
        return out[0] if squeeze else out
    frames = audio.unfold(-1, FRAME_LENGTH, FRAME_SHIFT)  # [B, T, 400]
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - PREEMPHASIS * previous
    window = torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float64).pow(0.85)
    frames = frames * window.to(dtype=dtype, device=audio.device)
    power = torch.fft.rfft(frames, n=FFT_SIZE).abs().pow(2)  # [B, T, 257]
    mel = power @ mel_filterbank(dtype).to(audio.device).T
    log_mel = torch.clamp(mel, min=_FLOAT32_EPS).log()
    ceps = log_mel @ dct_matrix(dtype).to(audio.device)
    lifter = 1.0 + 0.5 * CEPSTRAL_LIFTER * torch.sin(
        math.pi * torch.arange(N_CEPS, dtype=torch.float64) / CEPSTRAL_LIFTER
    )
    ceps = ceps * lifter.to(dtype=dtype, device=audio.device)
    return ceps[0] if squeeze else ceps


def mfcc_39(audio: torch.Tensor) -> torch.Tensor:
    """HuBERT iteration-1 features: [MFCC, deltas, delta-deltas] at 100 Hz.
    audio: [S] or [B, S] float at 16 kHz -> [T, 39] or [B, T, 39], T = n_mfcc_frames(S)."""
    ceps = mfcc_13(audio).transpose(-1, -2)  # [..., 13, T]
    deltas = compute_deltas(ceps)
    ddeltas = compute_deltas(deltas)
    return torch.cat([ceps, deltas, ddeltas], dim=-2).transpose(-1, -2).contiguous()


def to_model_frames(feats_100hz: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Align 100 Hz features with the model's 50 Hz frames as HuBERT does: every second frame,
    then trimmed or padded (repeating the last frame) to n_frames.
    feats_100hz: [T, D] or [B, T, D] -> [n_frames, D] or [B, n_frames, D]."""
    picked = feats_100hz[..., ::2, :]
    have = picked.shape[-2]
    if have >= n_frames:
        return picked[..., :n_frames, :]
    if have == 0:
        raise ValueError(f"no feature frames to pad to {n_frames} frames (audio under 400 samples?)")
    last = picked[..., -1:, :]
    repeat = [1] * picked.dim()
    repeat[-2] = n_frames - have
    return torch.cat([picked, last.repeat(*repeat)], dim=-2)


def mfcc_model_frames(audio: torch.Tensor) -> torch.Tensor:
    """`mfcc_39` features, one per model frame. audio: [S] or [B, S] at 16 kHz ->
    [ceil(S / 320), 39] or [B, ceil(S / 320), 39].

    The model prepends 80 samples of (zero) context, so its frame t reads samples
    [320 t - 80, 320 t + 320) of the recording. MFCC frames are computed on the audio with the
    same 80 zeros in front, so MFCC frame 2t reads exactly those 400 samples: each label is
    made from what its frame sees. Frames past the last whole MFCC frame repeat it (the model
    zero-pads the last partial frame).
    """
    padded = torch.nn.functional.pad(audio, (CONTEXT, 0))
    n_frames = -(-audio.shape[-1] // HOP)
    if n_frames == 0:
        return audio.new_zeros((*audio.shape[:-1], 0, FEATURE_DIM))
    return to_model_frames(mfcc_39(padded), n_frames)
