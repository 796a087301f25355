"""The one audio reader of bmamba: files -> float32 mono at 16 kHz, in blocks or segments.

Training (`biomamba.data`) and the field runtime (`bmamba detect`) both read recordings through
this module, so it imports only numpy, soundfile, soxr and the standard library (never torch).

- `iter_audio` streams a recording of any length in blocks: memory stays flat however long the
  file is. Channels are mixed to mono (mean) or one is picked; any sample rate is resampled with a
  streaming soxr resampler, so the concatenated blocks equal a one-shot `soxr.resample` of the
  whole mono signal.
- `read_audio` reads a whole recording or a segment (training crops); it seeks, so a 6 s crop of
  an 8 h file reads about 6 s.
- `audio_info` reads the header only.
- `find_audio` expands files, folders and glob patterns into a list of recordings.

Every problem with a file is raised as `AudioError` (a ValueError) naming the file and a reason a
field biologist can act on, never as a traceback from inside libsndfile.
"""

from __future__ import annotations

import fnmatch
import math
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
"""The model's sample rate in Hz: every reader returns audio at this rate unless told otherwise."""

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".w64", ".caf"}
)
"""Lower-case file suffixes that `find_audio` picks up when it scans a folder or a glob."""

RESAMPLE_QUALITY = "HQ"

# Frames are read from the file in pieces of about one second: small enough that memory does not
# depend on block_s much, large enough that Python overhead is negligible, and it lets an error
# part-way say at which second the audio stopped decoding.
_READ_S = 1.0

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
# opening


def _open(path: str | os.PathLike) -> sf.SoundFile:
    """Open a recording for reading, turning every failure into an AudioError."""
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
        return sf.SoundFile(name)
    except AudioError:
        raise
    except sf.LibsndfileError as e:
        raise AudioError(path, _open_reason(e)) from None
    except Exception as e:  # anything else libsndfile/cffi/the OS may throw at open
        raise AudioError(path, f"cannot be opened as audio ({e})") from None


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

    Raises AudioError when the file is missing, unreadable or not audio. An empty recording
    (0 frames) is described, not refused: reading it is what raises.
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


def _mono_pieces(
    f: sf.SoundFile, path, channel: int | None, start: int, stop: int | None
) -> Iterator[np.ndarray]:
    """Yield the frames [start, stop) of an open file as float32 mono pieces of about _READ_S.

    stop=None reads to the end of the decoded audio, whatever the header's frame count says (MP3
    headers may be off by a few frames). Each yielded array is new (not a view of the read buffer).
    Raises AudioError for a decoding error part-way and for NaN/inf samples, naming the second.
    """
    rate, channels = f.samplerate, f.channels
    piece_frames = max(1, int(rate * _READ_S))
    buffer = np.empty((piece_frames, channels), dtype=np.float32)  # reused for every read
    position = start  # frame index (in the file) of the next frame to read
    while stop is None or position < stop:
        want = piece_frames if stop is None else min(piece_frames, stop - position)
        try:
            frames = f.read(want, dtype="float32", always_2d=True, out=buffer[:want])
        except Exception as e:  # libsndfile reports a damaged stream only when it gets there
            detail = getattr(e, "error_string", None) or str(e)
            raise AudioError(
                path,
                f"the file is truncated or corrupt: decoding fails after {position / rate:.1f} s "
                f"(libsndfile: {detail.strip().rstrip('.')})",
            ) from None
        n = len(frames)
        if n == 0:
            if position == 0:
                raise AudioError(path, _empty_reason(path))
            return
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
        if not math.isfinite(float(np.sum(mono, dtype=np.float64))):
            first = int(np.flatnonzero(~np.isfinite(mono))[0])
            raise AudioError(
                path,
                f"the recording holds invalid samples (NaN or infinity), the first at "
                f"{(position + first) / rate:.3f} s",
            )
        yield mono
        position += n  # a short read is not taken as the end: only an empty read is


def _empty_reason(path) -> str:
    size = os.path.getsize(path)
    if size > 4096:  # far more than any header: the audio is there, the header does not say so
        return (
            f"the header says the recording holds no audio, yet the file is {size} bytes: it was "
            f"probably not closed properly (recorder stopped or card removed while recording); "
            f"a WAV header repair tool can recover it"
        )
    return "the recording is empty (0 samples)"


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
) -> Iterator[np.ndarray]:
    """Stream a recording as float32 mono 1-D blocks at `sample_rate` Hz, in order.

    Every block holds round(block_s * sample_rate) samples except the last, which is shorter;
    no block is empty (a recording that resamples to nothing, e.g. one sample at 44.1 kHz, yields
    no block). Memory does not grow with the file's length.

    channel: None mixes all channels to mono by their mean; 1, 2, ... picks one (numbered from 1,
    like Raven's "Channel" column).
    Concatenated, the blocks equal `soxr.resample(mono, file_rate, sample_rate, "HQ")` of the
    whole mono signal (to float32 rounding), or the mono signal itself when the rates are equal.

    Arguments are checked when this is called; the file is opened when iteration starts. Raises
    AudioError (during iteration) when the file is missing, not audio, empty, truncated or corrupt
    (saying after how many seconds), holds NaN/inf (saying where), or has no such channel.
    """
    out_rate = _check_rate(sample_rate)
    if not block_s > 0:
        raise ValueError(f"block_s must be a positive number of seconds, not {block_s!r}")
    block_len = max(1, round(block_s * out_rate))
    return _iter_blocks(path, block_len, channel, out_rate)


def _iter_blocks(path, block_len: int, channel: int | None, out_rate: int) -> Iterator[np.ndarray]:
    with _open(path) as f:
        _check_channel(path, channel, f.channels)
        pieces = _mono_pieces(f, path, channel, 0, None)
        block = np.empty(block_len, dtype=np.float32)
        filled = 0
        for piece in _resampled(pieces, f.samplerate, out_rate, path):
            while len(piece):
                take = min(block_len - filled, len(piece))
                block[filled : filled + take] = piece[:take]
                filled += take
                piece = piece[take:]
                if filled == block_len:
                    yield block
                    block = np.empty(block_len, dtype=np.float32)
                    filled = 0
        if filled:
            yield block[:filled].copy()


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
    less. channel as in `iter_audio`. Raises AudioError as `iter_audio` does, and when the segment
    lies outside the recording (negative offset, offset at or past the end, end past the end,
    duration not positive).
    """
    out_rate = _check_rate(sample_rate)
    with _open(path) as f:
        _check_channel(path, channel, f.channels)
        in_rate = f.samplerate
        frames = max(int(f.frames), 0)
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
            _seek(f, path, start)
        pieces = _resampled(_mono_pieces(f, path, channel, start, stop), in_rate, out_rate, path)
        parts = list(pieces)
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    audio = audio[first - start_out : None if last is None else last - start_out]
    if len(audio) == 0 and (offset_s > 0 or duration_s is not None):
        raise AudioError(path, f"no audio could be decoded at {offset_s:.3f} s")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _seek(f: sf.SoundFile, path, frame: int) -> None:
    """Move to `frame`; when the file cannot seek, read and drop the frames before it."""
    try:
        if f.seekable():
            f.seek(frame)
            return
    except Exception as e:
        raise AudioError(
            path, f"cannot seek to {frame / f.samplerate:.3f} s: the file may be corrupt ({e})"
        ) from None
    for _ in _mono_pieces(f, path, None, 0, frame):
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
