"""Several recordings' chunks in one backend call (``bmamba detect --batch N``).

Each recording runs in its own thread through the usual chunk loop (``StreamRunner``); their
``run_chunk`` calls meet here. When every stream that is still running has a chunk waiting (or
``max_batch`` of them do), the chunks of equal length are stacked along the batch axis, run as one
call, and the outputs and states handed back row by row. Rows never mix (the model treats batch
rows independently), so results equal unbatched runs; a GPU gets larger, faster calls.

The state is the backend contract's dict of named arrays, batch first
(``biomamba.runtime.backend_api``), which every backend keeps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class _Request:
    block: np.ndarray                 # [1, samples]
    state: dict
    outputs: dict | None = None
    new_state: dict | None = None
    error: BaseException | None = None
    done: bool = False
    key: int = field(init=False)

    def __post_init__(self):
        self.key = self.block.shape[1]


class BatchingBackend:
    """Wraps a backend; ``run_chunk`` from several threads becomes batched calls."""

    def __init__(self, backend, max_batch: int):
        if max_batch < 1:
            raise ValueError(f"batch must be at least 1, got {max_batch}")
        self.backend, self.max_batch = backend, max_batch
        self.name, self.max_frames = backend.name, backend.max_frames
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._streams = 0
        self.calls = 0            # backend calls made (for tests and reports)
        self.rows = 0             # chunks run

    def initial_state(self, batch: int = 1):
        return self.backend.initial_state(batch)

    def peak_gpu_mb(self) -> float | None:
        return self.backend.peak_gpu_mb()

    def close(self) -> None:
        self.backend.close()

    def open_stream(self) -> None:
        with self._cond:
            self._streams += 1

    def close_stream(self) -> None:
        """A stream finished: the others may now be all that is left, and all waiting."""
        with self._cond:
            self._streams -= 1
            self._cond.notify_all()

    def run_chunk(self, block: np.ndarray, state: dict):
        request = _Request(block, state)
        with self._cond:
            self._pending.append(request)
            self._cond.notify_all()
            while not request.done:
                if len(self._pending) >= min(self.max_batch, self._streams):
                    batch = self._take()
                    self._cond.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cond.acquire()
                    self._cond.notify_all()
                else:
                    self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.outputs, request.new_state

    def _take(self) -> list[_Request]:
        """The oldest pending request and up to max_batch - 1 more of the same block length."""
        key = self._pending[0].key
        batch = [r for r in self._pending if r.key == key][: self.max_batch]
        for r in batch:
            self._pending.remove(r)
        return batch

    def _run(self, batch: list[_Request]) -> None:
        try:
            blocks = np.concatenate([r.block for r in batch])
            state = {k: np.concatenate([r.state[k] for r in batch]) for k in batch[0].state}
            outputs, new_state = self.backend.run_chunk(blocks, state)
            for i, r in enumerate(batch):
                r.outputs = {k: v[i: i + 1] for k, v in outputs.items()}
                r.new_state = {k: v[i: i + 1] for k, v in new_state.items()}
        except BaseException as e:  # handed to every waiting stream, each fails its own file
            for r in batch:
                r.error = e
        finally:
            self.calls += 1
            self.rows += len(batch)
            with self._cond:
                for r in batch:
                    r.done = True
