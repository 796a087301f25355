"""Fixed windows over a stream of frames: mean-pool per window, in order, with bounded memory.

Used for clip-classification models in ``bmamba detect`` (window logits -> probabilities, as a
classifier trained on clips of that length sees them) and for ``bmamba embed`` (one embedding per
window). Frames arrive in chunks of any size; the windows are the same however they are split.
"""

from __future__ import annotations

import numpy as np


class WindowPooler:
    """Mean of frames over windows of ``window`` frames every ``hop`` frames.

    ``push(frames [n, D])`` returns the windows completed so far as (starts [k] in frames,
    means [k, D]); ``flush()`` returns the last, partial window(s) that hold at least one frame
    not covered by an earlier window (their mean is over the frames they have; their end is the
    end of the recording). Memory: at most ``window`` frames are kept.
    """

    def __init__(self, window: int, hop: int):
        if window < 1 or hop < 1:
            raise ValueError(f"window and hop must be at least one frame (got {window}, {hop})")
        self.window, self.hop = window, hop
        self._frames: np.ndarray | None = None   # the frames from self._offset on
        self._offset = 0                          # frame index of self._frames[0]
        self._next_start = 0                      # first frame of the next window to emit
        self._emitted_end = 0                     # end frame of the last window emitted
        self.frames_seen = 0

    def push(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.asarray(frames, np.float32)
        self._frames = frames.copy() if self._frames is None else np.concatenate([self._frames, frames])
        self.frames_seen += len(frames)
        return self._emit(final=False)

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        return self._emit(final=True)

    def _emit(self, final: bool) -> tuple[np.ndarray, np.ndarray]:
        starts, means = [], []
        while True:
            start, end = self._next_start, self._next_start + self.window
            if end > self.frames_seen:
                # At the end, a partial window is kept only if it holds frames no window covered.
                if not (final and start < self.frames_seen and self._emitted_end < self.frames_seen):
                    break
                end = self.frames_seen
            starts.append(start)
            means.append(self._frames[start - self._offset: end - self._offset].mean(0))
            self._next_start, self._emitted_end = start + self.hop, end
        drop = min(self._next_start, self.frames_seen) - self._offset
        if drop > 0:
            self._frames, self._offset = self._frames[drop:], self._offset + drop
        width = 0 if self._frames is None or self._frames.ndim < 2 else self._frames.shape[1]
        if not means:
            return np.zeros(0, np.int64), np.zeros((0, width), np.float32)
        return np.asarray(starts, np.int64), np.stack(means).astype(np.float32)
