"""The reader on damaged, truncated and hostile recordings (issue 8, items 4, 5, 8, 14).

Oracles: libsndfile's own decode of the same damaged file (how much audio is there), the uncut
file's header (how much was promised), the signal the test wrote, and for normal recordings the
reader's documented algorithm written out here (one-second reads, float32 channel sum, one soxr
stream), which `iter_audio` must match bit for bit.
"""

from __future__ import annotations

import re
import struct
import tracemalloc
import warnings as pywarnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from biomamba.audio import (
    MAX_SAMPLE_RATE,
    SAMPLE_RATE,
    AudioError,
    audio_info,
    iter_audio,
    read_audio,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def real(relative: str) -> Path:
    path = REAL / relative
    if not path.exists():
        pytest.skip(f"real recordings absent ({path})")
    return path


def decodable_frames(path: Path) -> int:
    """How many frames libsndfile decodes from path, read in small pieces until it stops."""
    n = 0
    with sf.SoundFile(path) as f:
        try:
            while len(block := f.read(1000, dtype="float32")):
                n += len(block)
        except sf.LibsndfileError:
            pass
    return n


def cut(path: Path, fraction: float, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def read_all(path, **kwargs) -> tuple[np.ndarray, list[str]]:
    warnings: list[str] = []
    blocks = list(iter_audio(path, warnings=warnings, **kwargs))
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), warnings


def seconds(message: str) -> list[float]:
    return [float(x) for x in re.findall(r"(\d+(?:\.\d+)?) s\b", message)]


# --------------------------------------------------------------------------------------------
# item 4: short reads are reported, damage is read past where the decoder can go on


def test_mp3_cut_at_20_percent_is_a_short_read(tmp_path, capfd):
    """spinetail.wav (19.5 s) as an MP3, cut at 20 % of its bytes: libsndfile decodes 3.7 s and
    says nothing; the reader must say how much of how much."""
    source = real("maad/data/spinetail.wav")
    signal, rate = sf.read(source, dtype="float32")
    whole = tmp_path / "spinetail.mp3"
    sf.write(whole, signal, rate, format="MP3", subtype="MPEG_LAYER_III")
    promised_s = sf.info(whole).frames / rate
    damaged = cut(whole, 0.2, tmp_path / "spinetail_cut.mp3")
    there_s = decodable_frames(damaged) / rate
    capfd.readouterr()

    audio, warnings = read_all(damaged)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{damaged}: short read: decoded ")
    assert "the file may be truncated or damaged" in warnings[0]
    decoded_s, promised = seconds(warnings[0])[:2]
    assert decoded_s == pytest.approx(there_s, abs=0.05) and promised == pytest.approx(promised_s, abs=0.05)
    assert 3.0 < decoded_s < 5.0 and promised == pytest.approx(19.5, abs=0.05)
    assert abs(len(audio) - there_s * SAMPLE_RATE) <= 1  # what is there is analysed
    with pytest.raises(AudioError, match="short read"):  # strict mode: the same words, raised
        list(iter_audio(damaged))
    assert capfd.readouterr().err == ""  # libmpg123's "Xing stream size off" never reaches stderr


@pytest.mark.parametrize("name", ["289834.mp3", "205538.mp3", "638300.mp3"])
def test_real_mp3s_cut_at_20_percent(tmp_path, name, capfd):
    whole = real(f"phoebe/audio/data/processed/{name}")
    info = sf.info(whole)
    damaged = cut(whole, 0.2, tmp_path / name)
    there_s = decodable_frames(damaged) / info.samplerate
    capfd.readouterr()
    _, warnings = read_all(damaged)
    short = [w for w in warnings if "short read" in w]
    assert len(short) == 1, warnings
    decoded_s, promised_s = seconds(short[0])[:2]
    assert decoded_s == pytest.approx(there_s, abs=0.05)
    assert promised_s == pytest.approx(info.frames / info.samplerate, abs=0.05)
    assert capfd.readouterr().err == ""
    _, intact = read_all(whole)  # the uncut file: nothing to say
    assert intact == []


def test_wav_cut_short_is_a_short_read(tmp_path):
    rng = np.random.default_rng(1)
    signal = (np.round(rng.uniform(-0.5, 0.5, 16000 * 10) * 32768) / 32768).astype(np.float32)
    whole = tmp_path / "whole.wav"
    sf.write(whole, signal, 16000, subtype="PCM_16")
    damaged = cut(whole, 0.25, tmp_path / "cut.wav")
    audio, warnings = read_all(damaged)
    np.testing.assert_array_equal(audio, signal[: len(audio)])  # what is there, unchanged
    assert len(warnings) == 1 and "short read" in warnings[0]
    decoded_s, promised_s = seconds(warnings[0])[:2]
    assert decoded_s == pytest.approx(len(audio) / 16000, abs=0.05) and promised_s == 10.0


def test_damaged_flac_block_is_read_past(tmp_path):
    """2 KB of garbage in the middle of a 10 s FLAC: libsndfile stops with "lost sync"; the
    reader reopens after the damage, fills the span with silence and reads the rest."""
    rate = 16000
    rng = np.random.default_rng(2)
    signal = (np.round(rng.normal(0, 0.2, rate * 10).clip(-1, 0.99) * 32768) / 32768).astype(np.float32)
    whole = tmp_path / "whole.flac"
    sf.write(whole, signal, rate, format="FLAC", subtype="PCM_16")
    data = bytearray(whole.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.flac"
    damaged.write_bytes(bytes(data))
    damage_s = middle / len(data) * 10  # noise compresses evenly: bytes are proportional to time

    with pytest.raises(AudioError, match="truncated or corrupt"):  # strict mode, as before
        list(iter_audio(damaged))
    audio, warnings = read_all(damaged)
    assert len(audio) == len(signal)  # later times stay where they were
    assert len(warnings) == 1 and "replaced by silence" in warnings[0], warnings
    start_s, end_s = seconds(warnings[0])[:2]
    assert start_s <= damage_s <= end_s and end_s - start_s <= 3.0
    a, b = round(start_s * rate), round(end_s * rate)
    np.testing.assert_array_equal(audio[:a], signal[:a])
    np.testing.assert_array_equal(audio[a:b], 0.0)
    np.testing.assert_array_equal(audio[b:], signal[b:])


def test_flac_truncated_at_half_reads_what_is_there(tmp_path):
    rate = 16000
    signal = np.random.default_rng(3).uniform(-0.5, 0.5, rate * 10).astype(np.float32)
    whole = tmp_path / "whole.flac"
    sf.write(whole, signal, rate, format="FLAC", subtype="PCM_16")
    damaged = cut(whole, 0.5, tmp_path / "cut.flac")
    audio, warnings = read_all(damaged)
    assert len(warnings) == 1 and "short read" in warnings[0] and "libsndfile" in warnings[0]
    decoded_s, promised_s = seconds(warnings[0])[:2]
    assert promised_s == 10.0 and 3.0 < decoded_s < 6.0
    assert len(audio) == round(decoded_s * rate)


def test_mp3_without_a_length_header_is_not_called_short():
    """13742.mp3 (xeno-canto) has no Xing/Info header: libmpg123 estimates 2.31 s from the file
    size (its 4 KB ID3 tag included) and decodes 2.01 s. That estimate is no promise."""
    path = real("oss/docs/tutorials/resources/GWWA_XC/13742.mp3")
    info = audio_info(path)
    audio, warnings = read_all(path)
    assert info.duration_s - len(audio) / SAMPLE_RATE > 0.2  # the estimate is off ...
    assert warnings == []  # ... and the reader does not cry wolf


# --------------------------------------------------------------------------------------------
# item 5: NaN / inf samples


def test_non_finite_samples_become_zero_and_are_reported(tmp_path):
    rate = 16000
    signal = np.random.default_rng(4).uniform(-0.5, 0.5, (rate * 3, 2)).astype(np.float32)
    signal[20000, 0], signal[20000, 1] = np.inf, -np.inf  # inf - inf: numpy's "invalid value"
    signal[30000, 1] = np.nan
    path = tmp_path / "bad.wav"
    sf.write(path, signal, rate, subtype="FLOAT")
    with np.errstate(invalid="ignore"):
        expected = ((signal[:, 0] + signal[:, 1]) / 2).astype(np.float32)
    expected[[20000, 30000]] = 0.0
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("error")  # a numpy RuntimeWarning would fail the test
        audio, warnings = read_all(path)
    np.testing.assert_array_equal(audio, expected)
    assert warnings == [
        f"{path}: 2 samples were NaN or infinite (the first at 1.250 s) and were replaced by 0 (silence)"
    ]
    with pytest.raises(AudioError, match="NaN or infinity"):  # strict mode refuses, as before
        list(iter_audio(path))


# --------------------------------------------------------------------------------------------
# item 8: header numbers never size a buffer unchecked


def wav_with_header(path: Path, rate: int, channels: int, frames: int = 500) -> Path:
    """A 16-bit WAV written by libsndfile, then its fmt chunk edited to claim rate/channels."""
    sf.write(path, np.zeros((frames, 1), np.int16), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    fmt = data.find(b"fmt ") + 8
    data[fmt + 2 : fmt + 4] = struct.pack("<H", channels)
    data[fmt + 4 : fmt + 8] = struct.pack("<I", rate)
    data[fmt + 8 : fmt + 12] = struct.pack("<I", rate * channels * 2)
    data[fmt + 12 : fmt + 14] = struct.pack("<H", channels * 2)
    path.write_bytes(bytes(data))
    return path


def test_absurd_sample_rate_is_refused_without_allocating(tmp_path):
    path = wav_with_header(tmp_path / "huge_rate.wav", 2_147_483_647, 1)
    assert path.stat().st_size < 2048
    tracemalloc.start()
    try:
        for read in (lambda: list(iter_audio(path, warnings=[])), lambda: read_audio(path),
                     lambda: audio_info(path)):
            with pytest.raises(AudioError, match=r"2147483647 Hz.*1,536,000 Hz \(1\.536 MHz\)"):
                read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20  # was 8 GB: one second at the header's rate


def test_rate_at_the_limit_reads_and_one_above_does_not(tmp_path):
    at = wav_with_header(tmp_path / "at.wav", MAX_SAMPLE_RATE, 1, frames=4000)
    assert audio_info(at).sample_rate == MAX_SAMPLE_RATE
    audio, warnings = read_all(at)
    assert warnings == [] and abs(len(audio) - 4000 * SAMPLE_RATE / MAX_SAMPLE_RATE) <= 1
    above = wav_with_header(tmp_path / "above.wav", MAX_SAMPLE_RATE + 1, 1)
    with pytest.raises(AudioError, match="1,536,000 Hz"):
        audio_info(above)


def test_many_channels_at_a_high_rate_read_in_bounded_pieces(tmp_path):
    """1024 channels at 1.536 MHz: a one-second read would be 6 GB; pieces are sized by samples."""
    path = wav_with_header(tmp_path / "wide.wav", MAX_SAMPLE_RATE, 1024, frames=8192)
    info = audio_info(path)
    assert (info.channels, info.frames) == (1024, 8)  # the same bytes, now 8 frames of 1024
    tracemalloc.start()
    try:
        audio, warnings = read_all(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


# --------------------------------------------------------------------------------------------
# item 14: nothing from the libraries on stderr


def test_damaged_mp3_says_in_words_what_libmpg123_printed(tmp_path, capfd):
    rate = 16000
    signal = np.random.default_rng(5).normal(0, 0.2, rate * 10).clip(-1, 1).astype(np.float32)
    whole = tmp_path / "whole.mp3"
    sf.write(whole, signal, rate, format="MP3", subtype="MPEG_LAYER_III")
    data = bytearray(whole.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(6).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    capfd.readouterr()
    _, warnings = read_all(damaged)
    assert capfd.readouterr().err == ""
    decoder = [w for w in warnings if "MP3 decoder met damaged data" in w]
    assert len(decoder) == 1 and "libmpg123" in decoder[0]
    # and libmpg123 does print when called directly (else this test would show nothing)
    decodable_frames(damaged)
    assert capfd.readouterr().err != ""


# --------------------------------------------------------------------------------------------
# normal recordings: the output is the same, bit for bit


def documented_read(path: Path) -> np.ndarray:
    """The reader's algorithm written out: one-second reads, channels summed in float32 and
    divided, one soxr HQ stream (the pre-change reader's output, which must not move)."""
    out, pieces = [], []
    with sf.SoundFile(path) as f:
        rate, channels = f.samplerate, f.channels
        while len(frames := f.read(rate, dtype="float32", always_2d=True)):
            mono = frames[:, 0].copy()
            for c in range(1, channels):
                mono += frames[:, c]
            if channels > 1:
                mono /= channels
            pieces.append(mono)
    if rate == SAMPLE_RATE:
        return np.concatenate(pieces)
    stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    out = [stream.resample_chunk(p, last=False) for p in pieces]
    out.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(out)


def test_real_recordings_are_read_bit_identically():
    folders = [REAL / "oss" / "tests" / "audio", REAL / "maad" / "data",
               REAL / "phoebe" / "audio" / "data" / "processed"]
    files = sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir()
                   if p.suffix.lower() in (".wav", ".flac", ".mp3") and p.stat().st_size > 1000)
    if not files:
        pytest.skip(f"real recordings absent ({REAL})")
    files = [p for p in files if "phoebe" not in str(p)] + [p for p in files if "phoebe" in str(p)][:10]
    checked = 0
    for path in files:
        if sf.info(path).frames == 0:
            continue
        audio, warnings = read_all(path, block_s=30.0)
        np.testing.assert_array_equal(audio, documented_read(path), err_msg=str(path))
        assert warnings == [], warnings
        checked += 1
    assert checked >= 20



def test_damaged_flac_deleted_while_read_ends_in_a_short_read(tmp_path):
    """The decoder cannot be reopened after the damage (the file is gone): what was read stands,
    and the warning says how much; no traceback."""
    rate = 16000
    rng = np.random.default_rng(7)
    signal = rng.uniform(-0.5, 0.5, rate * 10).astype(np.float32)
    path = tmp_path / "gone.flac"
    sf.write(path, signal, rate, format="FLAC", subtype="PCM_16")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    warnings: list[str] = []
    blocks = iter_audio(path, block_s=1.0, warnings=warnings)
    first = next(blocks)
    path.unlink()  # the open handle still reads; a fresh one cannot be made
    rest = list(blocks)
    assert len(first) == rate and 2 <= len(rest) <= 6
    assert len(warnings) == 1 and "short read" in warnings[0] and "libsndfile" in warnings[0]
