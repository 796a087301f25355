"""Model outputs -> probabilities and window scores: the one scoring path, torch-free (numpy only).

Every consumer turns the outputs of ``run_chunk`` (``logits`` [n, C], ``embeddings`` [n, D],
``attention`` [n] for attention pooling, per frame: 20 ms at 16 kHz) into what the user gets with these
functions: the PyTorch stream (``biomamba.model.ModelStream``), ``bmamba detect`` and ``bmamba
embed`` (``biomamba.runtime``), and evaluation (through ``ModelStream``).

- detect models: per-frame ``sigmoid(logits)``;
- clip classifiers: windows of frames, their logits pooled (mean, or softmax(attention)-weighted as
  ``AudioModel.pool`` does in training), then ``softmax`` over classes;
- embeddings: the mean of the frames' embeddings per window.

Seconds become frames in one place, ``frames_for``.
"""

from __future__ import annotations

import numpy as np

from .streaming import HOP, frame_seconds

__all__ = ["RunningPool", "WindowPooler", "frame_seconds", "frames_for", "sigmoid", "softmax"]


def frames_for(seconds: float, sample_rate: int) -> int:
    """Whole frames in ``seconds`` at a model's sample rate (nearest, at least one): at 16 kHz
    3.0 -> 150, 0.01 -> 1; at 32 kHz 3.0 -> 300."""
    return max(1, int(round(seconds * sample_rate / HOP)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, float32, without overflow for any finite x (1 / (1 + exp(-x)) warns
    and overflows for x below about -88 in float32)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(x))).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, float32 (max subtracted first: no overflow)."""
    x = np.asarray(x)
    e = np.exp(x - x.max(axis, keepdims=True))
    return (e / e.sum(axis, keepdims=True)).astype(np.float32)


def pool(frames: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """frames [n, D] (n >= 1) -> [D]: their mean, or with attention ``scores`` [n] the
    softmax(scores)-weighted sum, as ``AudioModel.pool`` computes a clip in training."""
    if scores is None:
        return frames.mean(0)
    s = np.asarray(scores, np.float64)
    weights = np.exp(s - s.max())
    weights /= weights.sum()
    return (weights @ frames.astype(np.float64)).astype(np.float32)


class WindowPooler:
    """Pooled frames over windows of ``window`` frames every ``hop`` frames, in order, with
    bounded memory.

    ``push(frames [n, D], scores [n] or None)`` returns the windows completed so far as (starts [k]
    in frames, pooled [k, D]); ``flush()`` returns the last, partial window(s) that hold at least
    one frame not covered by an earlier window (pooled over the frames they have; their end is the
    end of the recording). With attention scores a window is the softmax(scores)-weighted sum of
    its frames, else their mean. Frames may arrive in chunks of any size; the windows are the same
    however they are split. Memory: at most ``window`` frames are kept.
    """

    def __init__(self, window: int, hop: int):
        if window < 1 or hop < 1:
            raise ValueError(f"window and hop must be at least one frame (got {window}, {hop})")
        self.window, self.hop = window, hop
        self._frames: np.ndarray | None = None   # the frames from self._offset on
        self._scores: np.ndarray | None = None   # their attention scores (attention pooling)
        self._offset = 0                          # frame index of self._frames[0]
        self._next_start = 0                      # first frame of the next window to emit
        self._emitted_end = 0                     # end frame of the last window emitted
        self.frames_seen = 0

    def push(self, frames: np.ndarray, scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        frames = np.asarray(frames, np.float32)
        if (scores is None) != (self._scores is None) and self._frames is not None:
            raise ValueError("attention scores must come with every push or with none")
        self._frames = frames.copy() if self._frames is None else np.concatenate([self._frames, frames])
        if scores is not None:
            scores = np.asarray(scores, np.float32).reshape(len(frames))
            self._scores = scores.copy() if self._scores is None else np.concatenate([self._scores, scores])
        self.frames_seen += len(frames)
        return self._emit(final=False)

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        return self._emit(final=True)

    def _emit(self, final: bool) -> tuple[np.ndarray, np.ndarray]:
        starts, pooled = [], []
        while True:
            start, end = self._next_start, self._next_start + self.window
            if end > self.frames_seen:
                # At the end, a partial window is kept only if it holds frames no window covered.
                if not (final and start < self.frames_seen and self._emitted_end < self.frames_seen):
                    break
                end = self.frames_seen
            a, b = start - self._offset, end - self._offset
            starts.append(start)
            pooled.append(pool(self._frames[a:b], None if self._scores is None else self._scores[a:b]))
            self._next_start, self._emitted_end = start + self.hop, end
        drop = min(self._next_start, self.frames_seen) - self._offset
        if drop > 0:
            self._frames, self._offset = self._frames[drop:], self._offset + drop
            if self._scores is not None:
                self._scores = self._scores[drop:]
        width = 0 if self._frames is None or self._frames.ndim < 2 else self._frames.shape[1]
        if not pooled:
            return np.zeros(0, np.int64), np.zeros((0, width), np.float32)
        return np.asarray(starts, np.int64), np.stack(pooled).astype(np.float32)


class RunningPool:
    """The pooled frames of everything pushed so far (one clip of unbounded length), kept as a
    log-sum-exp-stabilised weighted sum: O(D) memory. Mean without scores, softmax(scores)-weighted
    with them; equals ``pool`` over all frames at once."""

    def __init__(self):
        self._sum = None      # sum of w * frame, float64 [D]
        self._weight = 0.0    # sum of w
        self._max = None      # the largest score so far (w = exp(score - max))

    def push(self, frames: np.ndarray, scores: np.ndarray | None = None) -> None:
        if not len(frames):
            return
        scores = np.zeros(len(frames)) if scores is None else np.asarray(scores, np.float64).reshape(len(frames))
        m = scores.max() if self._max is None else max(self._max, scores.max())
        w = np.exp(scores - m)
        rescale = 0.0 if self._max is None else np.exp(self._max - m)
        total = w @ np.asarray(frames, np.float64)
        self._sum = total if self._sum is None else self._sum * rescale + total
        self._weight = self._weight * rescale + w.sum()
        self._max = m

    def result(self) -> np.ndarray:
        """The pooled frame [D]; ValueError before the first frame."""
        if self._sum is None:
            raise ValueError("no frames yet: push audio first")
        return self._sum / self._weight
