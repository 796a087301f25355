"""The one audio reader of bmamba: files -> float32 mono at 16 kHz, in blocks or segments.

Training (`biomamba.data`) and the field runtime (`bmamba detect`) both read recordings through
this module, so it imports only numpy, soundfile, soxr and the standard library (never torch).

- `iter_audio` streams a recording of any length in blocks: memory stays flat however long the
  file is. Channels are mixed to mono (mean) or one is picked; any sample rate is resampled with a
  streaming soxr resampler, so the concatenated blocks equal a one-shot `soxr.resample` of the
  whole mono signal. Given a `warnings` list it reads on past damage and says what it did there.
- `read_audio` reads a whole recording or a segment (training crops); it seeks, so a 6 s crop of
  an 8 h file reads about 6 s.
- `audio_info` reads the header only.
- `find_audio` expands files, folders and glob patterns into a list of recordings.

Every problem with a file is raised as `AudioError` (a ValueError) naming the file and a reason a
field biologist can act on, never as a traceback from inside libsndfile. Nothing reaches stderr:
what the MP3 decoder (libmpg123) prints there is collected and said in words in `warnings`.

Limits (a header is data from the file, so its numbers are checked before they size anything):
sample rates up to MAX_SAMPLE_RATE (1.536 MHz), up to MAX_CHANNELS channels, and one read holds
at most _PIECE_SAMPLES samples whatever the header says.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# The model's sample rate in Hz (defined once, in the streaming core): every reader returns audio
# at this rate unless told otherwise.
from .streaming import SAMPLE_RATE

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".w64", ".caf"}
)
"""Lower-case file suffixes that `find_audio` picks up when it scans a folder or a glob."""

RESAMPLE_QUALITY = "HQ"

MAX_SAMPLE_RATE = 1_536_000
"""The highest sample rate (Hz) a header may give: 8 x 192 kHz, above any ultrasonic recorder
(bat detectors record at up to 768 kHz). A larger number is a damaged header, refused."""

MAX_CHANNELS = 1024
"""The most channels a header may give (libsndfile's own limit)."""

# Frames are read from the file in pieces of about one second: small enough that memory does not
# depend on block_s much, large enough that Python overhead is negligible, and it lets an error
# part-way say at which second the audio stopped decoding.
_READ_S = 1.0

# The most samples (all channels together) one read may hold: 4 Mi float32 = 16 MiB. Every real
# recording (up to 384 kHz x 8 channels) reads in one-second pieces under it; only a header with
# more rate x channels gets shorter pieces, so no header number sizes a buffer unchecked.
_PIECE_SAMPLES = 1 << 22

# A recording that decodes to less than its header promised by more than this is a short read.
# Formats whose header holds the exact length (WAV, FLAC, OGG, MP3 with a Xing/Info/VBRI header)
# decode to that length exactly on every real file we have; 0.1 s leaves room for decoder padding.
_SHORT_READ_TOLERANCE_S = 0.1

# read_audio starts reading this many samples (at the lower of the two rates) before the segment
# and stops this many after, then drops them: the soxr HQ filter reaches about 100-200 such
# samples either side, so with this margin a segment equals the same slice of a whole read.
_MARGIN_SAMPLES = 256


class AudioError(ValueError):
    """A recording that cannot be read. str(e) == f"{e.path}: {e.reason}"."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """What a recording's header says. duration_s = frames / sample_rate (seconds).

    For MP3 the frame count is the decoder's estimate; the real decoded length may differ slightly.
    """

    path: str
    sample_rate: int  # Hz
    channels: int
    frames: int  # samples per channel
    duration_s: float
    format: str  # libsndfile's major format, e.g. "WAV", "FLAC", "OGG", "MP3"
    subtype: str  # e.g. "PCM_16", "FLOAT", "VORBIS", "MPEG_LAYER_III"


# --------------------------------------------------------------------------------------------
# what C libraries print


_STDERR_LOCK = threading.Lock()  # file descriptor 2 is one per process: one redirection at a time


class _DecoderMessages:
    """Collects what the decoders print on the C-level stderr (libmpg123 does) instead of letting
    it reach the terminal; `lines` holds it, to be said in words by the reader.

    Redirecting file descriptor 2 affects the whole process, so it is held only around a decoder
    call, under a lock; a line holding a terminal control character (a progress bar drawn by
    another thread meanwhile) is passed on to the real stderr rather than kept.
    """

    def __init__(self):
        self.lines: list[str] = []
        self._file = None  # one temporary file per recording, emptied after every call

    @contextmanager
    def collect(self):
        with _STDERR_LOCK:
            if self._file is None:
                self._file = tempfile.TemporaryFile()
            try:
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):
                pass
            try:
                saved = os.dup(2)
            except OSError:  # no stderr at all (a daemon): nothing to keep quiet
                yield
                return
            os.dup2(self._file.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                self._file.seek(0)
                text = self._file.read().decode("utf-8", "replace")
                self._file.seek(0)
                self._file.truncate()
                for line in text.splitlines(keepends=True):
                    if "\x1b" in line or "\r" in line:
                        os.write(saved, line.encode())
                    elif line.strip():
                        self.lines.append(line.strip())
                os.close(saved)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextmanager
def _quietly():
    """Drop what the decoders print on the C-level stderr meanwhile."""
    messages = _DecoderMessages()
    try:
        with messages.collect():
            yield
    finally:
        messages.close()


# --------------------------------------------------------------------------------------------
# opening


def _open(path: str | os.PathLike) -> sf.SoundFile:
    """Open a recording for reading, turning every failure into an AudioError.

    The header's sample rate and channel count are checked (see MAX_SAMPLE_RATE, MAX_CHANNELS).
    What the decoder prints while opening is dropped: it is about the header (libmpg123's "Xing
    stream size off"), and the comparison of decoded and promised length says what matters.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise AudioError(path, "file not found")
    if os.path.isdir(name):
        raise AudioError(path, "is a folder, not an audio file")
    if not os.access(name, os.R_OK):
        raise AudioError(path, "permission denied (the file cannot be read)")
    try:
        if os.path.getsize(name) == 0:
            raise AudioError(path, "the file is empty (0 bytes)")
        with _quietly():
            # bytes: soundfile encodes a str path strictly as UTF-8, which a recorder's
            # non-UTF-8 file name (kept by Python as surrogate escapes) cannot pass.
            f = sf.SoundFile(os.fsencode(name))
    except AudioError:
        raise
    except sf.LibsndfileError as e:
        raise AudioError(path, _open_reason(e)) from None
    except Exception as e:  # anything else libsndfile/cffi/the OS may throw at open
        raise AudioError(path, f"cannot be opened as audio ({e})") from None
    problem = _header_problem(f)
    if problem:
        f.close()
        raise AudioError(path, problem)
    return f


def _header_problem(f: sf.SoundFile) -> str | None:
    """Why the header's numbers cannot be used, or None."""
    if not 1 <= f.samplerate <= MAX_SAMPLE_RATE:
        return (
            f"the header gives a sample rate of {f.samplerate} Hz; this reader accepts 1 to "
            f"{MAX_SAMPLE_RATE:,} Hz (1.536 MHz), so the header is probably damaged"
        )
    if not 1 <= f.channels <= MAX_CHANNELS:
        return (
            f"the header gives {f.channels} channels; this reader accepts 1 to {MAX_CHANNELS}, so "
            f"the header is probably damaged"
        )
    return None


def _open_reason(e: sf.LibsndfileError) -> str:
    # libsndfile's error codes: 1 unrecognised format, 2 system error, 3 malformed, 4 unsupported.
    message = e.error_string.strip().rstrip(".")
    if e.code == 1:
        return f"not an audio file, or an audio format that cannot be read (libsndfile: {message})"
    if e.code == 3:
        return f"the audio file is damaged: its header cannot be read (libsndfile: {message})"
    if e.code == 4:
        return f"this audio encoding is not supported (libsndfile: {message})"
    return f"cannot be opened as audio (libsndfile: {message})"


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read a recording's header (no audio is decoded).

    Raises AudioError when the file is missing, unreadable or not audio, or its header gives a
    sample rate or channel count out of bounds. An empty recording (0 frames) is described, not
    refused: reading it is what raises.
    """
    with _open(path) as f:
        frames = max(int(f.frames), 0)
        return AudioInfo(
            path=str(path),
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            frames=frames,
            duration_s=frames / f.samplerate,
            format=str(f.format),
            subtype=str(f.subtype),
        )


# --------------------------------------------------------------------------------------------
# decoding: file -> mono pieces at the file's rate -> resampled pieces


def _check_channel(path, channel: int | None, channels: int) -> None:
    if channel is None:
        return
    if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
        raise AudioError(path, f"channel must be a whole number from 1, not {channel!r}")
    if not 1 <= channel <= channels:
        plural = "channel" if channels == 1 else "channels"
        raise AudioError(
            path,
            f"channel {channel} was asked for, but the recording has {channels} {plural} "
            f"(channels are numbered from 1)",
        )


@dataclass
class _ReadLog:
    """What a tolerant read met, for the caller's warnings. Positions are frames at the file's rate."""

    invalid: int = 0  # samples that were NaN or infinite, replaced by 0
    first_invalid: int = -1
    gaps: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, libsndfile's word)
    stopped_by: str | None = None  # the decoding error after which nothing more could be read


class _Source:
    """A recording open for reading; `reopen_at` starts a fresh decoder at a frame (to read on
    past damage: libsndfile's FLAC decoder cannot seek once it has lost sync, a new one can)."""

    def __init__(self, path):
        self.path = path
        self.messages = _DecoderMessages()
        self.f = _open(path)
        self.rate, self.channels = self.f.samplerate, self.f.channels
        self.header_frames = max(int(self.f.frames), 0)
        self.format = self.f.format
        self.header_log = self.f.extra_info  # libsndfile's notes on the header, taken at open
        self._quiet = self.format == "MP3"  # the one decoder here that prints

    def read(self, out: np.ndarray) -> np.ndarray:
        """Fill out [n, channels] float32 from the current position; returns the frames read."""
        if not self._quiet:
            return self.f.read(len(out), dtype="float32", always_2d=True, out=out)
        with self.messages.collect():
            return self.f.read(len(out), dtype="float32", always_2d=True, out=out)

    def reopen_at(self, frame: int) -> bool:
        """Open the file afresh at `frame`; False when no audio can be decoded there."""
        self.f.close()
        try:
            with _quietly():
                self.f = sf.SoundFile(os.fsencode(self.path))
                if not self.f.seekable():
                    return False
                self.f.seek(frame)
                probe = self.f.read(1, dtype="float32", always_2d=True)
                self.f.seek(frame)
        except Exception:
            return False
        return len(probe) > 0

    def close(self) -> None:
        self.f.close()
        self.messages.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _mono_pieces(
    source: _Source, channel: int | None, start: int, stop: int | None, log: _ReadLog | None
) -> Iterator[np.ndarray]:
    """Yield the frames [start, stop) of an open file as float32 mono pieces of about _READ_S.

    stop=None reads to the end of the decoded audio, whatever the header's frame count says (MP3
    headers may be off by a few frames). Each yielded array is new (not a view of the read buffer).
    With log=None (strict) a decoding error part-way and NaN/inf samples raise AudioError naming
    the second. With a log (tolerant) non-finite samples become 0 and a span that fails to decode
    is skipped where a fresh decoder can go on after it, as silence of the same length (so the
    times after it stay right); both are recorded in the log.
    """
    path, rate, channels = source.path, source.rate, source.channels
    piece_frames = max(1, min(int(rate * _READ_S), _PIECE_SAMPLES // channels))
    buffer = np.empty((piece_frames, channels), dtype=np.float32)  # reused for every read
    position = start  # frame index (in the file) of the next frame to read
    while stop is None or position < stop:
        want = piece_frames if stop is None else min(piece_frames, stop - position)
        try:
            frames = source.read(buffer[:want])
        except Exception as e:  # libsndfile reports a damaged stream only when it gets there
            detail = (getattr(e, "error_string", None) or str(e)).strip().rstrip(".")
            if log is None:
                raise AudioError(
                    path,
                    f"the file is truncated or corrupt: decoding fails after {position / rate:.1f} s "
                    f"(libsndfile: {detail})",
                ) from None
            resume = _resume_point(source, position, stop)
            if resume is None:
                if position == start:
                    raise AudioError(
                        path, f"the file is corrupt: no audio can be decoded (libsndfile: {detail})"
                    ) from None
                log.stopped_by = detail
                return
            log.gaps.append((position, resume, detail))
            while position < resume:  # silence in place of what could not be decoded
                n = min(piece_frames, resume - position)
                yield np.zeros(n, dtype=np.float32)
                position += n
            continue
        n = len(frames)
        if n == 0:
            if position == 0:
                raise AudioError(path, _empty_reason(path))
            return
        yield _mono(frames, channel, position, rate, path, log)
        position += n  # a short read is not taken as the end: only an empty read is


def _mono(frames: np.ndarray, channel, position: int, rate: int, path, log) -> np.ndarray:
    """frames [n, channels] -> a new float32 [n] (mean or one channel), non-finite checked."""
    channels = frames.shape[1]
    # inf - inf is NaN: numpy would warn on stderr; the samples are checked just below instead.
    with np.errstate(invalid="ignore", over="ignore"):
        if channel is not None:
            mono = frames[:, channel - 1].copy()
        elif channels == 1:
            mono = frames[:, 0].copy()
        else:
            # Sum the columns one by one: much faster than frames.mean(axis=1) over a short axis.
            mono = frames[:, 0].copy()
            for c in range(1, channels):
                mono += frames[:, c]
            mono /= channels
        # A float64 sum of float32 values cannot overflow, so it is finite iff every sample is.
        finite = math.isfinite(float(np.sum(mono, dtype=np.float64)))
    if finite:
        return mono
    bad = ~np.isfinite(mono)
    first = int(np.flatnonzero(bad)[0])
    if log is None:
        raise AudioError(
            path,
            f"the recording holds invalid samples (NaN or infinity), the first at "
            f"{(position + first) / rate:.3f} s",
        )
    if log.first_invalid < 0:
        log.first_invalid = position + first
    log.invalid += int(bad.sum())
    mono[bad] = 0.0
    return mono


def _resume_point(source: _Source, position: int, stop: int | None) -> int | None:
    """The first whole second after `position` where a fresh decoder reads audio, or None.

    Tries 1, 2, 4, 8 ... s ahead (up to the header's length), then halves the last step back, so
    a damaged span costs a few dozen reopenings at most, however long the file is.
    """
    rate = source.rate
    end = source.header_frames if stop is None else min(stop, source.header_frames)
    step, bad = 1, position  # `bad`: a frame known not to decode (the failed read's start)
    good = None
    while position + step * rate < end:
        if source.reopen_at(position + step * rate):
            good = position + step * rate
            break
        bad = position + step * rate
        step *= 2
    if good is None:
        return None
    while good - bad > rate:  # bisect on whole seconds between the last failure and the success
        middle = bad + (good - bad) // (2 * rate) * rate
        if middle <= bad:
            break
        if source.reopen_at(middle):
            good = middle
        else:
            bad = middle
    if not source.reopen_at(good):  # leave the decoder at the resume point
        return None
    return good


def _empty_reason(path) -> str:
    size = os.path.getsize(path)
    if size > 4096:  # far more than any header: the audio is there, the header does not say so
        return (
            f"the header says the recording holds no audio, yet the file is {size} bytes: it was "
            f"probably not closed properly (recorder stopped or card removed while recording); "
            f"a WAV header repair tool can recover it"
        )
    return "the recording is empty (0 samples)"


def _promised_frames(source: _Source) -> int | None:
    """How many frames the header promises, or None where the format does not say exactly.

    libsndfile trims a WAV's frame count to the bytes present and logs the header's own figure
    ("data : 320000 (should be 63964)"); that figure is the promise. An MP3 states its length
    only in a Xing/Info/VBRI header; without one libmpg123 estimates it from the file size (tags
    included), which is no promise.
    """
    if source.format == "MP3" and not _mp3_states_its_length(source.path):
        return None
    frames = source.header_frames
    said = re.search(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", source.header_log, re.M)
    if said and frames > 0:
        header_bytes, present_bytes = int(said[1]), int(said[2])
        # 0xFFFFFFFF is how streaming writers say "length unknown".
        if 0 < present_bytes < header_bytes < 0xFFFFFFFF:
            return frames * header_bytes // present_bytes
    return frames


def _mp3_states_its_length(path) -> bool:
    """Whether the first MPEG frame (after any ID3v2 tag) carries a Xing, Info or VBRI header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(10)
            start = 0
            if head[:3] == b"ID3" and len(head) == 10:  # size: four 7-bit bytes, + footer flag
                size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
                start = 10 + size + (10 if head[5] & 0x10 else 0)
            fh.seek(start)
            data = fh.read(8192)
    except OSError:
        return False
    sync = re.search(rb"\xff[\xe0-\xff]", data)
    if sync is None:
        return False
    frame = data[sync.start() : sync.start() + 200]
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


def _resampled(
    pieces: Iterable[np.ndarray], in_rate: int, out_rate: int, path
) -> Iterator[np.ndarray]:
    """Resample a stream of float32 mono pieces with one soxr stream, flushing it at the end."""
    if in_rate == out_rate:
        yield from pieces
        return
    try:
        stream = soxr.ResampleStream(
            in_rate, out_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
        )
    except Exception as e:
        raise AudioError(
            path, f"cannot resample from {in_rate} Hz to {out_rate} Hz ({e})"
        ) from None
    for piece in pieces:
        out = stream.resample_chunk(piece, last=False)
        if len(out):
            yield out
    # The resampler holds back the last samples until it knows the signal has ended.
    out = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
    if len(out):
        yield out


def _check_rate(sample_rate) -> int:
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int | np.integer)
        or sample_rate <= 0
    ):
        raise ValueError(f"sample_rate must be a positive whole number of Hz, not {sample_rate!r}")
    return int(sample_rate)


# --------------------------------------------------------------------------------------------
# public readers


def iter_audio(
    path: str | os.PathLike,
    *,
    block_s: float = 30.0,
    channel: int | None = None,
    sample_rate: int = SAMPLE_RATE,
    warnings: list[str] | None = None,
) -> Iterator[np.ndarray]:
    """Stream a recording as float32 mono 1-D blocks at `sample_rate` Hz, in order.

    Every block holds round(block_s * sample_rate) samples except the last, which is shorter;
    no block is empty (a recording that resamples to nothing, e.g. one sample at 44.1 kHz, yields
    no block). Memory does not grow with the file's length.

    channel: None mixes all channels to mono by their mean; 1, 2, ... picks one (numbered from 1,
    like Raven's "Channel" column).
    Concatenated, the blocks equal `soxr.resample(mono, file_rate, sample_rate, "HQ")` of the
    whole mono signal (to float32 rounding), or the mono signal itself when the rates are equal.

    warnings: when a list is given, the read is tolerant and appends one human-readable line per
    problem, each "<path>: <what happened>", once the file has been read to its end:
    - a short read: "<path>: short read: decoded 3.9 s of 19.5 s the header promised (the file
      may be truncated or damaged)";
    - a span that fails to decode but is followed by decodable audio is read as silence of the
      same length, so later times stay right ("... could not be decoded and was replaced by
      silence");
    - NaN or infinite samples are replaced by 0 ("... were replaced by 0 (silence)");
    - what the MP3 decoder printed about damaged frames, in words.
    With warnings=None (strict) each of these raises AudioError with the same words instead,
    and the decoder's messages are dropped.

    Arguments are checked when this is called; the file is opened when iteration starts. Raises
    AudioError (during iteration) when the file is missing, not audio, empty, its header out of
    bounds (MAX_SAMPLE_RATE, MAX_CHANNELS), no audio at all can be decoded, or it has no such
    channel; and in strict mode as said above.
    """
    out_rate = _check_rate(sample_rate)
    if not block_s > 0:
        raise ValueError(f"block_s must be a positive number of seconds, not {block_s!r}")
    block_len = max(1, round(block_s * out_rate))
    return _iter_blocks(path, block_len, channel, out_rate, warnings)


def _iter_blocks(
    path, block_len: int, channel: int | None, out_rate: int, warnings: list[str] | None
) -> Iterator[np.ndarray]:
    log = None if warnings is None else _ReadLog()
    with _Source(path) as source:
        _check_channel(path, channel, source.channels)
        counted = _Counted(_mono_pieces(source, channel, 0, None, log))
        block = np.empty(block_len, dtype=np.float32)
        filled = 0
        for piece in _resampled(counted, source.rate, out_rate, path):
            while len(piece):
                take = min(block_len - filled, len(piece))
                block[filled : filled + take] = piece[:take]
                filled += take
                piece = piece[take:]
                if filled == block_len:
                    yield block
                    block = np.empty(block_len, dtype=np.float32)
                    filled = 0
        problems = _read_problems(source, counted.frames, log)
        if problems and warnings is None:
            raise AudioError(path, problems[0])
        if warnings is not None:
            warnings.extend(f"{path}: {p}" for p in problems)
        if filled:
            yield block[:filled].copy()


class _Counted:
    """Passes pieces through, counting their frames."""

    def __init__(self, pieces: Iterable[np.ndarray]):
        self.pieces, self.frames = pieces, 0

    def __iter__(self):
        for piece in self.pieces:
            self.frames += len(piece)
            yield piece


def _read_problems(source: _Source, decoded: int, log: _ReadLog | None) -> list[str]:
    """What went wrong in a whole-file read, in words (see iter_audio); decoded: frames read."""
    rate, out = source.rate, []
    if log is not None:
        for start, end, detail in log.gaps:
            out.append(
                f"damaged audio from {start / rate:.1f} s to {end / rate:.1f} s could not be "
                f"decoded and was replaced by silence (libsndfile: {detail})"
            )
        if log.invalid:
            out.append(
                f"{log.invalid} samples were NaN or infinite (the first at "
                f"{log.first_invalid / rate:.3f} s) and were replaced by 0 (silence)"
            )
        if source.messages.lines:
            lines = source.messages.lines
            count = "1 message" if len(lines) == 1 else f"{len(lines)} messages"
            out.append(
                f"the MP3 decoder met damaged data ({count} from libmpg123, the first: "
                f"{lines[0]!r}); damaged frames are decoded as silence or skipped"
            )
    promised = _promised_frames(source)
    if promised is not None and promised - decoded > _SHORT_READ_TOLERANCE_S * rate:
        why = "the file may be truncated or damaged"
        if log is not None and log.stopped_by:
            why += f"; libsndfile: {log.stopped_by}"
        out.append(
            f"short read: decoded {decoded / rate:.1f} s of {promised / rate:.1f} s the header "
            f"promised ({why})"
        )
    return out


def read_audio(
    path: str | os.PathLike,
    *,
    channel: int | None = None,
    sample_rate: int = SAMPLE_RATE,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """Read a whole recording, or the segment [offset_s, offset_s + duration_s), as float32 mono.

    Returns a 1-D array at `sample_rate` Hz. Sample k of the result is sample
    round(offset_s * sample_rate) + k of the whole recording read at that rate: a segment equals
    the same slice of `read_audio(path)` to float32 rounding, because reading starts on a frame where
    the input and output sample grids meet, a little before the segment, and the samples before the
    segment are dropped (so the resampler's start-up edge never lands inside it).
    The file is read by seeking, so a short crop of a long file reads only about the crop.

    The result holds round(duration_s * sample_rate) samples, or fewer when the segment reaches
    the end of the recording and rounding (or an MP3 header that overstates the length) leaves
    less. channel as in `iter_audio`. Raises AudioError as `iter_audio` does in strict mode (except
    that a short read is not checked), and when the segment lies outside the recording (negative
    offset, offset at or past the end, end past the end, duration not positive).
    """
    out_rate = _check_rate(sample_rate)
    with _Source(path) as source:
        _check_channel(path, channel, source.channels)
        in_rate = source.rate
        frames = source.header_frames
        total_s = frames / in_rate
        if frames == 0:
            raise AudioError(path, _empty_reason(path))
        if not math.isfinite(offset_s) or offset_s < 0 or offset_s >= total_s:
            raise AudioError(
                path, f"offset {offset_s} s is outside the recording (it lasts {total_s:.3f} s)"
            )
        if duration_s is not None:
            end_s = offset_s + duration_s
            if not duration_s > 0 or not math.isfinite(duration_s):
                raise AudioError(path, f"segment duration must be positive, not {duration_s} s")
            if end_s > total_s + 0.5 / out_rate:
                raise AudioError(
                    path,
                    f"segment {offset_s:.3f}-{end_s:.3f} s reaches past the end of the recording "
                    f"(it lasts {total_s:.3f} s)",
                )

        # Output sample j sits at time j / out_rate; input frame i at i / in_rate. Both grids
        # meet every `grid_in` input frames (= `grid_out` output samples).
        common = math.gcd(in_rate, out_rate)
        grid_in, grid_out = in_rate // common, out_rate // common
        first = round(offset_s * out_rate)  # output index of the segment's first sample
        last = None if duration_s is None else first + round(duration_s * out_rate)
        if in_rate == out_rate:
            start, stop, margin = first, last, 0
        else:
            margin = math.ceil(_MARGIN_SAMPLES * in_rate / min(in_rate, out_rate))
            start = max(0, (first * grid_in // grid_out - margin) // grid_in * grid_in)
            stop = None if last is None else -(-last * grid_in // grid_out) + margin
        start_out = start // grid_in * grid_out  # output index of input frame `start`

        if start > 0:
            _seek(source, start)
        pieces = _resampled(_mono_pieces(source, channel, start, stop, None), in_rate, out_rate, path)
        parts = list(pieces)
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    audio = audio[first - start_out : None if last is None else last - start_out]
    if len(audio) == 0 and (offset_s > 0 or duration_s is not None):
        raise AudioError(path, f"no audio could be decoded at {offset_s:.3f} s")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _seek(source: _Source, frame: int) -> None:
    """Move to `frame`; when the file cannot seek, read and drop the frames before it."""
    f, path = source.f, source.path
    try:
        if f.seekable():
            f.seek(frame)
            return
    except Exception as e:
        raise AudioError(
            path, f"cannot seek to {frame / f.samplerate:.3f} s: the file may be corrupt ({e})"
        ) from None
    for _ in _mono_pieces(source, None, 0, frame, None):
        pass


# --------------------------------------------------------------------------------------------
# finding recordings


def find_audio(
    inputs: Iterable[str | os.PathLike],
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders and glob patterns into a list of recordings.

    - a file named explicitly is kept whatever its extension (reading it says if it is not audio);
    - a folder is searched recursively for files with an AUDIO_EXTENSIONS suffix (any case),
      skipping hidden files and folders (names starting with ".") and not following symbolic
      links to folders (a link loop cannot make the search endless);
    - a pattern with `*`, `?` or `[` is expanded like `glob` (`**` matches any depth, hidden names
      only where the pattern starts them with "."); matched audio files are kept and matched
      folders are searched as above.

    Returns (files, problems): files in input order, sorted within each input, each file once
    (the first time it is met, compared by resolved path); problems are (input or folder, reason)
    for what gave no file or could not be searched: "no such file or folder", "glob matched no
    audio files", "folder holds no audio files", "cannot read this folder: Permission denied",
    "cannot be read: Too many levels of symbolic links", ...
    """
    found, problems = find_audio_with_roots(inputs)
    return [path for path, _ in found], problems


def find_audio_with_roots(
    inputs: Iterable[str | os.PathLike],
) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """`find_audio`, with the folder each recording was found in: (path, root) pairs.

    root is the input folder for a folder, the literal leading folders of a pattern for a glob
    (``data/*/x*.wav`` -> ``data``) and the file's own folder for a file named explicitly, so that
    ``path.relative_to(root)`` is the recording's place in the layout the user gave.
    """
    found: list[tuple[Path, Path]] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        kind = _kind(path) if text else None
        if kind == "folder":
            root = path
            files = _audio_in_folder(path, problems)
            if not files:
                problems.append((text, "folder holds no audio files"))
        elif kind == "file":
            root, files = path.parent, [path]
        elif _is_glob(text):
            known = len(problems)
            root, files = _glob_root(text), _audio_from_glob(text, problems)
            if not files and len(problems) == known:  # else the unreadable folder is named
                problems.append((text, "glob matched no audio files"))
        else:
            problems.append((text, _missing_reason(path) if text else "no such file or folder"))
            continue
        for file in files:
            try:
                key = file.resolve(strict=True)
            except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop (Python < 3.13)
                problems.append((str(file), _missing_reason(file, error)))
                continue
            if key not in seen:
                seen.add(key)
                found.append((file, root))
    return found, list(dict.fromkeys(problems))   # a folder met by two inputs is named once


def _kind(path: Path) -> str | None:
    """"folder", "file" (anything else that exists) or None (absent or not reachable)."""
    try:
        return "folder" if stat.S_ISDIR(os.stat(path).st_mode) else "file"
    except OSError:
        return None


def _is_audio_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _missing_reason(path: Path, error: BaseException | None = None) -> str:
    """Why a path that was named cannot be used: absent, or there but unreadable (a folder on the
    way without permission, a symbolic link loop), in the system's words."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return "no such file or folder"
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if isinstance(error, OSError) and error.strerror:
        return f"cannot be read: {error.strerror}"
    return f"cannot be read: {error}" if error is not None else "no such file or folder"


def _audio_in_folder(folder: Path, problems: list[tuple[str, str]]) -> list[Path]:
    """Audio files under folder, sorted; sub-folders that cannot be listed go to problems."""
    found = []

    def unreadable(error: OSError) -> None:   # os.walk would skip such a folder without a word
        problems.append((str(error.filename), f"cannot read this folder: {error.strerror}"))

    for root, dirs, names in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # do not descend into hidden folders
        found.extend(Path(root, name) for name in names if _is_audio_name(name))
    return sorted(found)


def _glob_root(pattern: str) -> Path:
    """The leading folders of pattern that hold no wildcard: where its matches are searched."""
    parts = Path(pattern).parts
    literal = []
    for part in parts[:-1]:
        if _is_glob(part):
            break
        literal.append(part)
    return Path(*literal) if literal else Path(".")


def _audio_from_glob(pattern: str, problems: list[tuple[str, str]]) -> list[Path]:
    """Audio files matched by pattern (and under the folders it matches), sorted.

    Walks the folders itself instead of `glob.glob`: `**` does not follow symbolic links to
    folders (glob's does, so a link loop multiplies the matches), and a folder that cannot be
    listed is a problem, not silently nothing.
    """
    root = _glob_root(pattern)
    found: set[Path] = set()
    for match in _glob_walk(root, Path(pattern).parts[len(root.parts):], problems):
        if _kind(match) == "folder":
            found.update(_audio_in_folder(match, problems))
        elif _is_audio_name(match.name):
            found.add(match)   # a broken link or a link loop is named when it is resolved
    return sorted(found)


def _glob_walk(folder: Path, parts: tuple[str, ...], problems: list[tuple[str, str]]) -> Iterator[Path]:
    """Paths under folder matching the pattern components parts (`**`: zero or more folders)."""
    if not parts:
        yield folder
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        yield from _glob_walk(folder, rest, problems)      # zero folders
        for entry in _listdir(folder, problems):
            if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                yield from _glob_walk(folder / entry.name, parts, problems)
    elif not _is_glob(head):
        if os.path.lexists(folder / head):
            yield from _glob_walk(folder / head, rest, problems)
    else:
        for entry in _listdir(folder, problems):
            if entry.name.startswith(".") and not head.startswith("."):
                continue   # like glob: * and ? do not match a leading "."
            if fnmatch.fnmatchcase(entry.name, head):
                yield from _glob_walk(folder / entry.name, rest, problems)


def _listdir(folder: Path, problems: list[tuple[str, str]]) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as error:
        problems.append((str(folder), f"cannot read this folder: {error.strerror}"))
        return []
