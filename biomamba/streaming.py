"""The streaming contract's chunk loop, torch-free (numpy only), shared by every backend.

A recording arrives in pieces of any length. ``FrameBuffer`` cuts it into blocks the front end can
take whole: ``320*n + 80`` samples = n new frames plus the 80 samples of left context carried from
the previous block (zeros before the first). ``StreamRunner`` feeds those blocks, in order, to a
backend's ``run_chunk(block, state) -> (outputs, state)`` and carries the model state (every layer's
conv and SSM state). The PyTorch model, onnxruntime and TensorRT all run through this one loop, so
a chunked run equals a whole run on every backend by construction of the same code.

Frame t covers samples [320*t, 320*(t+1)) of the recording as decoded at the model's sample rate,
i.e. [0.02*t, 0.02*(t+1)) seconds at 16 kHz (``frame_seconds``). A recording of S samples gives
ceil(S / 320) frames; the last one, when partial, is zero-padded (``StreamRunner.padded_samples``
says by how much). Everything here counts samples; only ``frame_seconds`` and the callers that turn
seconds into samples know the rate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000  # BioMamba's input rate, and every model's unless its config says another
HOP = 320              # samples per frame (20 ms at 16 kHz)
CONTEXT = 80           # samples of left context a frame needs beyond its hop (receptive field 400)
MAX_MODEL_RATE = 384_000


def check_sample_rate(rate, name: str = "sample rate") -> int:
    """A model's input rate, validated: a multiple of 16 kHz from 16 kHz to 384 kHz. Raises ValueError
    starting with ``name`` (e.g. the option that gave it).

    A model may read its audio faster than 16 kHz to hear higher sounds (most insects of InsectSet32
    sing above 8 kHz, the 16 kHz Nyquist; bats far above): the same 320-sample frames then last
    20 ms x 16 kHz / rate. Multiples of 16 kHz keep 50 x k frames a second, so the durations users
    give (30 s chunks, 3 s windows, 0.02 s) stay whole numbers of frames.
    """
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate % SAMPLE_RATE \
            or not SAMPLE_RATE <= rate <= MAX_MODEL_RATE:
        raise ValueError(f"{name} {rate!r}: a model reads a multiple of {SAMPLE_RATE} Hz from "
                         f"{SAMPLE_RATE} to {MAX_MODEL_RATE} Hz")
    return int(rate)


def frame_seconds(sample_rate: int) -> float:
    """Seconds per frame at a model's sample rate: 0.02 at 16 kHz, 0.01 at 32 kHz."""
    return HOP / sample_rate

RunChunk = Callable[[np.ndarray, Any], tuple[dict[str, np.ndarray], Any]]


@functools.cache   # a process-wide setting: once is enough, however many streams are opened
def keep_resident_memory_flat() -> None:
    """Ask glibc to give large freed buffers back to the system at once (Linux only; else no-op).

    glibc raises its mmap threshold after each large free (up to 32 MB), so later chunk-sized
    buffers come from the heap, where fragmentation lets the resident set creep up chunk after
    chunk: a PyTorch stream of the base preset grew from 1.7 GB (30 s) to 2.8 GB (120 s) on this
    project's machine. A fixed 1 MB threshold keeps a long stream's memory flat.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 1 << 20)   # M_MMAP_THRESHOLD = -3
    except OSError:
        pass


def check_audio(audio, name: str = "audio", ndim: int = 1, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Validate model input audio and return it as float32. Raises ValueError naming the problem."""
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(audio).__name__}")
    if audio.dtype.kind != "f":
        hint = " (integer PCM? divide by 32768 to get floats in [-1, 1])" if audio.dtype.kind in "iu" else ""
        raise ValueError(f"{name} must be float32 or float64, got {audio.dtype}{hint}")
    if audio.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D ({'samples' if ndim == 1 else 'batch, samples'}), "
                         f"got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(audio).all():
        bad = int(np.flatnonzero(~np.isfinite(audio.reshape(-1)))[0]) % audio.shape[-1]
        raise ValueError(f"{name} has NaN or infinite samples (first at sample {bad}, "
                         f"{bad / sample_rate:.3f} s at {sample_rate / 1000:g} kHz)")
    return audio.astype(np.float32, copy=False)


def block_pieces(block, max_frames: int) -> list:
    """Cut a front-end block [..., 320*n + 80] into consecutive blocks [..., 320*m + 80] of at most
    ``max_frames`` frames each, overlapping by the 80 context samples (views, no copies; numpy
    arrays and torch tensors alike).

    Each frame reads only its own 400 samples, so the front end run on the pieces gives exactly the
    frames of one run on the whole block, and a model with carried state run on them in order gives
    the outputs of one call: this is how a long model call is made to hold one piece at a time.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    n = (block.shape[-1] - CONTEXT) // HOP
    return [block[..., a * HOP: min(n, a + max_frames) * HOP + CONTEXT] for a in range(0, n, max_frames)]


class FrameBuffer:
    """Turns pieces of audio into blocks of whole frames with their left context.

    ``append(piece)`` then ``take(max_frames)`` until it returns None; at the end of the recording
    ``take(final=True)`` also returns the last partial frame, zero-padded.
    """

    def __init__(self):
        self._buf = np.zeros(CONTEXT, np.float32)   # [context | pending samples]
        self.samples_in = 0
        self.frames_out = 0
        self.padded_samples = 0

    def append(self, piece: np.ndarray) -> None:
        piece = np.asarray(piece, np.float32).reshape(-1)
        self.samples_in += piece.size
        if piece.size:
            self._buf = np.concatenate([self._buf, piece])

    @property
    def pending(self) -> int:
        """Samples waiting for their frame to complete (or for a take)."""
        return self._buf.size - CONTEXT

    def take(self, max_frames: int | None = None, final: bool = False) -> np.ndarray | None:
        """The next block [320*n + 80] of n >= 1 whole frames (n <= max_frames), or None."""
        n = self.pending // HOP
        if final and n == 0 and self.pending > 0:
            self.padded_samples = HOP - self.pending
            self._buf = np.concatenate([self._buf, np.zeros(self.padded_samples, np.float32)])
            n = 1
        if n == 0:
            return None
        if max_frames is not None:
            n = min(n, max_frames)
        end = CONTEXT + n * HOP
        block = self._buf[:end]
        self._buf = self._buf[end - CONTEXT:].copy()   # copy: don't pin the whole old buffer
        self.frames_out += n
        return block


class StreamRunner:
    """Carries one recording's state through a backend, block by block.

    run_chunk(block [1, 320*n + 80] float32, state) -> (outputs, state), where outputs maps names to
    arrays [1, n, ...]. ``push``/``flush`` return the same names as arrays [frames, ...] for the
    frames completed by that call (possibly zero frames). ``max_frames`` bounds the frames per
    model call, so memory stays flat however large a piece is pushed.
    """

    def __init__(self, run_chunk: RunChunk, initial_state: Any, max_frames: int | None = 1500):
        self.run_chunk, self.state, self.max_frames = run_chunk, initial_state, max_frames
        self.buffer = FrameBuffer()
        self._empty: dict[str, np.ndarray] | None = None

    @property
    def frames(self) -> int:
        return self.buffer.frames_out

    @property
    def padded_samples(self) -> int:
        return self.buffer.padded_samples

    def push(self, piece: np.ndarray) -> dict[str, np.ndarray]:
        self.buffer.append(piece)
        return self._drain(final=False)

    def flush(self) -> dict[str, np.ndarray]:
        """End of recording: run the last partial frame (zero-padded)."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        while (block := self.buffer.take(self.max_frames, final=final)) is not None:
            outputs, self.state = self.run_chunk(block[None, :], self.state)
            parts.append({k: v[0] for k, v in outputs.items()})
            if self._empty is None:
                self._empty = {k: v[0, :0] for k, v in outputs.items()}
        if not parts:
            return dict(self._empty) if self._empty is not None else {}
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
