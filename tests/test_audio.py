"""Tests of biomamba.audio on files written here with known content, and on real awkward files.

Oracles: the signal the test wrote (quantised to the 16-bit grid so WAV/FLAC give it back
exactly), a one-shot `soxr.resample` of the whole mono signal, a float64 channel mean, soundfile's
own whole-file read for lossy formats, and numpy FFTs.
"""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from biomamba.audio import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    AudioError,
    AudioInfo,
    audio_info,
    find_audio,
    iter_audio,
    read_audio,
)

SUBTYPE = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}
LOSSY = {"OGG", "MP3"}


def real_data_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def quantised_noise(rng, frames: int, channels: int) -> np.ndarray:
    """Noise on the 16-bit grid, [frames, channels] float32: PCM_16 files store it exactly."""
    x = np.clip(rng.normal(0.0, 0.25, (frames, channels)), -1.0, 32767 / 32768)
    return (np.round(x * 32768) / 32768).astype(np.float32)


def write(path: Path, data: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None):
    sf.write(path, data, rate, format=fmt, subtype=subtype or SUBTYPE[fmt])
    return path


def mono_mean(x2d: np.ndarray) -> np.ndarray:
    return x2d.astype(np.float64).mean(axis=1).astype(np.float32)


def resample(mono: np.ndarray, rate: int, out_rate: int = SAMPLE_RATE) -> np.ndarray:
    return mono if rate == out_rate else soxr.resample(mono, rate, out_rate, "HQ")


def seconds_in(message: str) -> float:
    """The number of seconds an error message names (the last "<number> s" in it)."""
    found = re.findall(r"(\d+(?:\.\d+)?) s\b", message)
    assert found, f"no time in seconds in: {message}"
    return float(found[-1])


# --------------------------------------------------------------------------------------------
# streaming equals one-shot


CASES = [  # (format, rate, channels); MP3 cannot hold 96 kHz, so it gets 48 kHz stereo
    (fmt, rate, ch)
    for fmt in ("WAV", "FLAC", "OGG", "MP3")
    for rate, ch in (
        (8000, 1),
        (44100, 1),
        (96000 if fmt != "MP3" else 48000, 2),
        (16000, 1),
        (16000, 2),
    )
]


@pytest.mark.parametrize("fmt,rate,channels", CASES)
def test_streamed_blocks_equal_one_shot_resample(tmp_path, fmt, rate, channels):
    rng = np.random.default_rng([rate, channels, len(fmt)])
    frames = int(rate * 2.3) + int(rng.integers(0, 1000))
    signal = quantised_noise(rng, frames, channels)
    path = write(tmp_path / f"x.{fmt.lower()}", signal, rate, fmt)
    if fmt in LOSSY:  # the decoder's output is the truth, not what was encoded
        signal = sf.read(path, dtype="float32", always_2d=True)[0]
    expected = resample(mono_mean(signal), rate)

    for block_s in (30.0, 0.7, 0.0123, 0.01):  # 0.01 s = 160 samples, shorter than a 320 hop
        blocks = list(iter_audio(path, block_s=block_s))
        block_len = round(block_s * SAMPLE_RATE)
        assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
        assert all(len(b) == block_len for b in blocks[:-1])
        assert 0 < len(blocks[-1]) <= block_len
        got = np.concatenate(blocks)
        assert len(got) == len(expected)
        if rate == SAMPLE_RATE and fmt not in LOSSY:
            np.testing.assert_array_equal(got, expected)
        else:  # one float32 rounding of the channel mean, carried through the filter
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(read_audio(path), np.concatenate(list(iter_audio(path))))


def test_other_output_rate(tmp_path):
    rng = np.random.default_rng(7)
    signal = quantised_noise(rng, 44100 * 2, 1)
    path = write(tmp_path / "x.flac", signal, 44100, "FLAC")
    got = np.concatenate(list(iter_audio(path, block_s=0.5, sample_rate=8000)))
    np.testing.assert_allclose(got, resample(signal[:, 0], 44100, 8000), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# channels


def test_mono_mix_and_channel_choice(tmp_path):
    rng = np.random.default_rng(3)
    signal = quantised_noise(rng, 22050 * 2 + 17, 2)
    path = write(tmp_path / "stereo.wav", signal, 22050)
    mixed = np.concatenate(list(iter_audio(path, block_s=0.3)))
    np.testing.assert_allclose(mixed, resample(mono_mean(signal), 22050), rtol=0, atol=1e-6)
    for channel in (1, 2):
        picked = np.concatenate(list(iter_audio(path, channel=channel, block_s=0.3)))
        want = resample(signal[:, channel - 1].copy(), 22050)
        np.testing.assert_allclose(picked, want, rtol=0, atol=1e-6)
        seg = read_audio(path, channel=channel, offset_s=0.5, duration_s=1.0)
        np.testing.assert_allclose(seg, want[8000:24000], rtol=0, atol=1e-6)

    for bad in (3, 0, -1):
        with pytest.raises(AudioError, match="2 channels"):
            list(iter_audio(path, channel=bad))
        with pytest.raises(AudioError, match="2 channels"):
            read_audio(path, channel=bad)


def test_four_channel_mean_without_resampling(tmp_path):
    signal = quantised_noise(np.random.default_rng(4), 16000, 4)
    path = write(tmp_path / "four.wav", signal, 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path), mono_mean(signal), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(read_audio(path, channel=4), signal[:, 3])


# --------------------------------------------------------------------------------------------
# resampling keeps frequencies and removes what 16 kHz cannot hold


@pytest.mark.parametrize("rate,freq", [(44100, 1234.5), (8000, 3000.0), (96000, 6000.0)])
def test_sine_keeps_its_frequency(tmp_path, rate, freq):
    t = np.arange(rate * 3) / rate
    path = write(
        tmp_path / "sine.wav",
        (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32),
        rate,
        subtype="FLOAT",
    )
    y = np.concatenate(list(iter_audio(path, block_s=0.25)))
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(y)
    assert abs(peak_hz - freq) <= SAMPLE_RATE / len(y)  # within one FFT bin
    # the resampled sine keeps its amplitude (0.5 -> rms 0.354) away from the edges
    assert abs(np.sqrt(np.mean(y[2000:-2000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_tone_above_new_nyquist_is_filtered_not_aliased(tmp_path):
    t = np.arange(44100 * 2) / 44100
    path = write(
        tmp_path / "high.wav",
        (0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32),
        44100,
        subtype="FLOAT",
    )
    y = read_audio(path)
    # aliased, 12 kHz would come back at 4 kHz with rms 0.35
    assert np.sqrt(np.mean(y[2000:-2000] ** 2)) < 1e-3


# --------------------------------------------------------------------------------------------
# segments


@pytest.mark.parametrize(
    "fmt,rate,channels",
    [
        ("FLAC", 44100, 2),
        ("WAV", 8000, 1),
        ("WAV", 16000, 1),
        ("WAV", 22050, 1),
        ("OGG", 48000, 1),
        ("MP3", 44100, 1),
    ],
)
def test_segments_equal_slices_of_the_whole(tmp_path, fmt, rate, channels):
    rng = np.random.default_rng([rate, channels])
    path = write(
        tmp_path / f"seg.{fmt.lower()}", quantised_noise(rng, rate * 5, channels), rate, fmt
    )
    whole = read_audio(path)
    # Segments start reading on a frame where the input and 16 kHz grids meet, 256+ samples
    # before the segment, so the resampler's filter (it reaches ~100-200 samples either side)
    # sees the same input as in the whole read: only float32 rounding differs (measured ~2e-7).
    # Lossy decoders restart after a seek and may differ a little more.
    atol = 1e-5 if fmt in LOSSY else 1e-6
    for offset_s, duration_s in [
        (0.0, 1.0),
        (0.5, 1.234567),
        (1.00001, 0.3),
        (rng.uniform(0, 4), 0.6),
        (3.7, None),
        (4.9, 0.1),
        (0.0001, None),
    ]:
        seg = read_audio(path, offset_s=offset_s, duration_s=duration_s)
        first = round(offset_s * SAMPLE_RATE)
        want = whole[
            first : None if duration_s is None else first + round(duration_s * SAMPLE_RATE)
        ]
        assert len(seg) == len(want)
        np.testing.assert_allclose(seg, want, rtol=0, atol=atol)


def test_segment_seeks_instead_of_reading_everything(tmp_path, monkeypatch):
    rate = 44100
    path = tmp_path / "long.flac"
    with sf.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(6):
            f.write(np.zeros(rate * 10, dtype=np.float32))
    frames_read = []
    real_read = sf.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        out = real_read(self, frames, *args, **kwargs)
        frames_read.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    seg = read_audio(path, offset_s=50.0, duration_s=2.0)
    assert len(seg) == 2 * SAMPLE_RATE
    assert sum(frames_read) < 3 * rate  # 2 s plus the resampler's margin, not 52 s


def test_segments_outside_the_recording(tmp_path):
    path = write(tmp_path / "two.wav", np.zeros(32000, dtype=np.float32), 16000)
    for offset_s, duration_s in [
        (-0.1, 1.0),
        (2.0, None),
        (5.0, 0.1),
        (1.5, 1.0),
        (0.0, 0.0),
        (0.5, -1.0),
    ]:
        with pytest.raises(AudioError, match="two.wav"):
            read_audio(path, offset_s=offset_s, duration_s=duration_s)
    assert len(read_audio(path, offset_s=1.5, duration_s=0.5)) == 8000


# --------------------------------------------------------------------------------------------
# errors and edge files


def all_readers(path):
    """Run every reader on path; return the AudioErrors they raised (None where one succeeded)."""
    outcomes = []
    for read in (lambda: list(iter_audio(path, block_s=0.5)), lambda: read_audio(path)):
        try:
            read()
            outcomes.append(None)
        except AudioError as e:
            outcomes.append(e)
    return outcomes


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError, match="not found") as caught:
        audio_info(path)
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == str(path) and str(caught.value) == f"{path}: {caught.value.reason}"
    assert all(e is not None and "not found" in e.reason for e in all_readers(path))


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "x.wav"
    path.write_text("Selection\tBegin Time (s)\n1\t0.5\n")
    with pytest.raises(AudioError, match="not an audio file"):
        audio_info(path)
    assert all(e is not None and "not an audio file" in e.reason for e in all_readers(path))


def test_zero_byte_file_and_folder(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        read_audio(tmp_path / "zero.wav")
    with pytest.raises(AudioError, match="folder"):
        audio_info(tmp_path)


def test_truncated_flac_says_where_it_broke(tmp_path):
    rate = 16000
    whole = write(
        tmp_path / "whole.flac",
        quantised_noise(np.random.default_rng(5), rate * 10, 1),
        rate,
        "FLAC",
    )
    data = whole.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: len(data) // 2])

    # oracle: decode with soundfile in small reads until libsndfile gives up
    decodable = 0
    with sf.SoundFile(cut) as f, pytest.raises(sf.LibsndfileError):
        while len(block := f.read(1000, dtype="float32")):
            decodable += len(block)
    decodable_s = decodable / rate

    for error in all_readers(cut):
        assert error is not None and "truncated or corrupt" in error.reason
        # reads go by one-second pieces: the reported second is the last whole piece decoded
        assert seconds_in(error.reason) <= decodable_s <= seconds_in(error.reason) + 1.0 + 1e-9
    assert 2.0 < decodable_s < 8.0  # the cut is near the middle, not at an edge


def test_empty_recording(tmp_path):
    path = tmp_path / "empty.wav"
    with sf.SoundFile(path, "w", 44100, 2, format="WAV", subtype="PCM_16"):
        pass
    info = audio_info(path)
    assert (info.frames, info.channels, info.sample_rate) == (0, 2, 44100)
    assert all(e is not None and "empty" in e.reason for e in all_readers(path))
    with pytest.raises(AudioError, match="empty"):
        read_audio(path, offset_s=0.0, duration_s=1.0)


def test_unfinished_wav_header_is_explained(tmp_path):
    # A recorder that stops mid-recording can leave a WAV whose header still says 0 data bytes.
    path = write(tmp_path / "unfinished.wav", np.full((16000, 1), 0.25, dtype=np.float32), 16000)
    data = bytearray(path.read_bytes())
    size_field = data.find(b"data") + 4
    data[size_field : size_field + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    assert all(e is not None and "not closed properly" in e.reason for e in all_readers(path))


@pytest.mark.parametrize("rate,bad", [(16000, np.nan), (44100, np.inf), (8000, -np.inf)])
def test_non_finite_samples_are_located(tmp_path, rate, bad):
    rng = np.random.default_rng(6)
    signal = rng.uniform(-0.5, 0.5, (rate * 5, 1)).astype(np.float32)
    at = int(rate * 3.25) + int(rng.integers(0, rate))  # somewhere in the fourth second
    signal[at, 0] = bad
    signal[at + 100, 0] = np.nan
    path = write(tmp_path / "bad.wav", signal, rate, subtype="FLOAT")
    for error in all_readers(path):
        assert error is not None and "NaN or infinity" in error.reason
        assert abs(seconds_in(error.reason) - at / rate) < 1e-3


def test_non_finite_in_an_unused_channel_is_ignored(tmp_path):
    signal = np.zeros((16000, 2), dtype=np.float32)
    signal[:, 0] = 0.25
    signal[1234, 1] = np.nan
    path = write(tmp_path / "half.wav", signal, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(path, channel=1), signal[:, 0])
    with pytest.raises(AudioError, match="NaN"):
        read_audio(path)


@pytest.mark.parametrize("rate", [16000, 44100, 8000])
def test_one_sample_file(tmp_path, rate):
    path = write(tmp_path / "one.wav", np.array([[0.5]], dtype=np.float32), rate, subtype="FLOAT")
    blocks = list(iter_audio(path))
    assert all(len(b) > 0 for b in blocks)
    got = read_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1
    np.testing.assert_array_equal(got, resample(np.array([0.5], dtype=np.float32), rate))
    if rate == SAMPLE_RATE:
        np.testing.assert_array_equal(got, [0.5])


def test_all_zeros_is_valid(tmp_path):
    path = write(tmp_path / "zeros.flac", np.zeros((48000 * 3, 2), dtype=np.float32), 48000, "FLAC")
    y = np.concatenate(list(iter_audio(path, block_s=1.0)))
    assert len(y) == 3 * SAMPLE_RATE and not np.any(y)


def test_audio_info(tmp_path):
    path = write(tmp_path / "i.flac", np.zeros((22050 * 2 + 5, 3), dtype=np.float32), 22050, "FLAC")
    assert audio_info(path) == AudioInfo(
        str(path), 22050, 3, 22050 * 2 + 5, (22050 * 2 + 5) / 22050, "FLAC", "PCM_16"
    )


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="block_s"):
        iter_audio(tmp_path / "x.wav", block_s=0)
    with pytest.raises(ValueError, match="sample_rate"):
        iter_audio(tmp_path / "x.wav", sample_rate=0)


# --------------------------------------------------------------------------------------------
# finding recordings


def test_find_audio(tmp_path):
    root = tmp_path / "site"
    for name in [
        "a.wav",
        "B.FLAC",
        "notes.txt",
        ".hidden.wav",
        "._a.wav",
        "sub/c.mp3",
        "sub/deep/d.ogg",
        ".git/e.wav",
    ]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "readme.txt").write_bytes(b"")
    audio_under_root = sorted(root / n for n in ["a.wav", "B.FLAC", "sub/c.mp3", "sub/deep/d.ogg"])

    files, problems = find_audio([root])
    assert files == audio_under_root and problems == []

    files, problems = find_audio(
        [str(root / "notes.txt"), str(root / "*.wav"), root, str(root / "**" / "*.ogg")]
    )
    assert files == [root / "notes.txt", root / "a.wav"] + [
        p for p in audio_under_root if p.name != "a.wav"
    ]
    assert problems == []

    files, problems = find_audio([str(root / "**" / "*.mp3"), str(root / "s*")])
    assert files == [root / "sub" / "c.mp3", root / "sub" / "deep" / "d.ogg"]

    missing, nomatch, texts = str(tmp_path / "gone"), str(root / "*.aiff"), str(tmp_path / "texts")
    files, problems = find_audio(
        [missing, nomatch, texts, str(root / "*.txt"), str(root / "a.wav")]
    )
    assert files == [root / "a.wav"]
    assert problems == [
        (missing, "no such file or folder"),
        (nomatch, "glob matched no audio files"),
        (texts, "folder holds no audio files"),
        (str(root / "*.txt"), "glob matched no audio files"),
    ]
    assert {".wav", ".flac", ".ogg", ".mp3"} <= AUDIO_EXTENSIONS


# --------------------------------------------------------------------------------------------
# real awkward files


def test_real_awkward_files_read_or_raise_audio_error():
    folder = real_data_dir() / "oss" / "tests" / "audio"
    if not folder.is_dir():
        pytest.skip(f"real recordings absent ({folder})")
    outcomes = {}
    for path in sorted(folder.iterdir()):
        errors = all_readers(path)  # any exception other than AudioError fails the test here
        assert (errors[0] is None) == (errors[1] is None), path
        outcomes[path.name] = errors[0]
        if errors[0] is None:
            info = audio_info(path)
            y = read_audio(path)
            assert y.dtype == np.float32 and np.all(np.isfinite(y))
            assert abs(len(y) - info.duration_s * SAMPLE_RATE) <= 1
    assert "not an audio file" in outcomes["audiomoth_gps.csv"].reason
    assert "empty" in outcomes["empty_2c.wav"].reason
    for name in [
        "veryshort.wav",
        "stereo.wav",
        "silence_10s.mp3",
        "short_no_metadata.wav",
        "metadata.wav",
        "1min.wav",
    ]:
        assert outcomes[name] is None, name


# --------------------------------------------------------------------------------------------
# memory does not grow with the recording's length


def test_memory_does_not_grow_with_length(tmp_path):
    rate, block_s = 22050, 5.0

    def make(minutes: int) -> Path:
        path = tmp_path / f"{minutes}min.wav"
        piece = quantised_noise(np.random.default_rng(8), rate * 10, 2)
        with sf.SoundFile(path, "w", rate, 2, format="WAV", subtype="PCM_16") as f:
            for _ in range(minutes * 6):
                f.write(piece)
        return path

    def peak_bytes(path: Path) -> int:
        tracemalloc.start()
        try:
            count = sum(len(b) for b in iter_audio(path, block_s=block_s))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert abs(count - audio_info(path).frames * SAMPLE_RATE / rate) <= 1  # read to the end
        return peak

    short, long = make(1), make(10)
    list(iter_audio(short))  # warm up one-time allocations
    peak_short, peak_long = peak_bytes(short), peak_bytes(long)
    assert peak_long <= 1.2 * peak_short
    # a couple of blocks and one-second read buffers, nowhere near the 10-minute file (53 MB)
    assert peak_long < 4 * block_s * SAMPLE_RATE * 4 + 4 * rate * 2 * 4
