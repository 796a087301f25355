"""One reference for the SSD scan (op ``bmamba::SSDChunkScan`` v1): every implementation in the
table below against the float64 naive recurrence `biomamba.ssd.ssd_recurrent`, on shared inputs.

Implementations: `ssd_chunked` (float64, float32, float16 I/O; several chunk sizes), a loop of
`ssd_step`, `runtime/ssd_numpy.ssd_scan` (several chunk sizes, float16 I/O), the C++ twin of the
CUDA kernels (`runtime/cuda_scan.ssd_scan_cpu` / `ssd_step_cpu`, compiled with g++ here; several
segment plans), and the CUDA kernels (`ssd_scan_cuda` / `ssd_step_cuda`, only with a GPU and the
built library; skipped with the reason otherwise). Each also runs in pieces, carrying the state
from one call into the next, and without an initial state (zeros).

The oracle sees exactly the inputs an implementation sees (rounded to its I/O dtype, the
parameters and the state to float32 unless it computes in float64), so a tolerance measures the
implementation's arithmetic, not the rounding of its inputs. Errors are relative to the largest
reference value. `biomamba.ssd.ssd_recurrent` itself is checked against a hand computation in
tests/test_ssd.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from test_cuda_scan import twin_dir  # noqa: F401  (the fixture that compiles the C++ twin)

from biomamba.runtime import cuda_scan
from biomamba.runtime.ssd_numpy import ssd_scan as numpy_scan
from biomamba.ssd import ssd_chunked, ssd_recurrent, ssd_step

# ---- the shared inputs ----------------------------------------------------------------------------

# (batch, length, heads, headdim, groups, state size): one step; shorter than a chunk; exactly one
# chunk of 64; odd sizes off every grid; many chunks; long; Mamba2-sized heads (P 64, N 128);
# the kernels' limits (P and N 256).
SHAPES = [
    (1, 1, 2, 4, 1, 3),
    (2, 7, 4, 8, 2, 16),
    (2, 64, 4, 8, 4, 16),
    (1, 100, 6, 5, 3, 7),
    (2, 333, 4, 16, 2, 32),
    (1, 1000, 2, 8, 1, 16),
    (1, 70, 8, 64, 1, 128),
    (1, 50, 2, 256, 2, 256),
]
# Two regimes of decay: "fast" (A from -1 to -20, dt near softplus(N(-1, 2))): the state forgets
# within a few steps; "slow" (A from -0.05 to -1, small dt): it remembers hundreds of steps.
REGIMES = ("fast", "slow")


def make_inputs(shape, regime: str, seed: int) -> list[np.ndarray]:
    """float64 [x, dt, A, B, C, D, dt_bias, initial_state] for ``shape`` (see SHAPES)."""
    batch, length, heads, headdim, groups, nstate = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, length, heads, headdim))
    B = rng.standard_normal((batch, length, groups, nstate))
    C = rng.standard_normal((batch, length, groups, nstate))
    D = rng.standard_normal(heads)
    state = rng.standard_normal((batch, heads, headdim, nstate))
    if regime == "fast":
        dt = rng.standard_normal((batch, length, heads))
        A = -np.exp(rng.uniform(0, 3, heads))
        dt_bias = rng.standard_normal(heads) - 1.0
    else:
        dt = rng.standard_normal((batch, length, heads)) - 3.0
        A = -rng.uniform(0.05, 1.0, heads)
        dt_bias = rng.standard_normal(heads)
    return [x, dt, A, B, C, D, dt_bias, state]


def as_seen_by(inputs: list[np.ndarray], io: str) -> list[np.ndarray]:
    """The inputs in an implementation's dtypes: x, dt, B, C in ``io``; A, D, dt_bias and the
    state in float32 (the op's contract), or everything float64 for a float64 implementation."""
    if io == "float64":
        return list(inputs)
    return [v.astype(io if i in (0, 1, 3, 4) else np.float32) for i, v in enumerate(inputs)]


def oracle(inputs: list[np.ndarray], initial_state) -> tuple[np.ndarray, np.ndarray]:
    """ssd_recurrent in float64 on exactly these values."""
    t = [torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in inputs]
    y, s = ssd_recurrent(*t, None if initial_state is None else torch.from_numpy(np.float64(initial_state)))
    return y.numpy(), s.numpy()


@functools.cache
def case(shape: tuple, regime: str, io: str, with_state: bool = True):
    """(inputs as seen in ``io`` without the state, the initial state or None, the oracle's
    (y, final state)); cached: the float64 recurrence is the slow part and many rows share it."""
    *inputs, state = as_seen_by(make_inputs(shape, regime, seed=sum(shape)), io)
    state = state if with_state else None
    return inputs, state, oracle(inputs, state)


# ---- the implementations --------------------------------------------------------------------------

Scan = Callable[..., tuple[np.ndarray, np.ndarray]]  # (x, dt, A, B, C, D, dt_bias, state|None) -> (y, s)


def _torch(fn):
    """A torch scan as a numpy one (CPU)."""
    def scan(*arrays):
        out = fn(*(None if a is None else torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        return tuple(o.numpy() for o in out)
    return scan


def _step_loop(step) -> Scan:
    """A scan made of single steps, carrying the state (a None state starts from zeros)."""
    def scan(x, dt, A, B, C, D, dt_bias, state):
        if state is None:
            state = np.zeros((x.shape[0], x.shape[2], x.shape[3], B.shape[-1]), np.float32)
            state = state.astype(np.float64) if x.dtype == np.float64 else state
        ys = []
        for t in range(x.shape[1]):
            y, state = step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, dt_bias, state)
            ys.append(y)
        return np.stack(ys, axis=1), state
    return scan


def _cuda(fn) -> Scan:
    """A CUDA scan (or step) on torch CUDA tensors as a numpy one."""
    def scan(*arrays):
        out = fn(*(None if a is None else torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in arrays))
        return tuple(o.cpu().numpy() for o in out)
    return scan


@dataclass(frozen=True)
class Impl:
    name: str
    scan: Scan
    io: str            # the I/O dtype it is run in
    tol_y: float       # max |y - y_ref| / max |y_ref|
    tol_state: float   # the same for the final state
    needs: str = ""    # "twin" (g++ builds the C++ twin) or "cuda" (a GPU and the CUDA library)


def _chunked(chunk: int):
    return _torch(lambda *a: ssd_chunked(*a, chunk_size=chunk))


# float16 I/O: the output is rounded to float16 (a relative step of 2^-10); the state stays float32.
F16_Y = 2.0**-10
IMPLEMENTATIONS = [
    Impl("ssd_chunked-f64-c8", _chunked(8), "float64", 1e-10, 1e-10),
    Impl("ssd_chunked-f64-c64", _chunked(64), "float64", 1e-10, 1e-10),
    Impl("ssd_chunked-f32-c64", _chunked(64), "float32", 1e-5, 1e-5),
    Impl("ssd_chunked-f16", _chunked(64), "float16", F16_Y, 1e-5),
    Impl("ssd_step-f64", _step_loop(_torch(ssd_step)), "float64", 1e-12, 1e-12),
    Impl("ssd_step-f32", _step_loop(_torch(ssd_step)), "float32", 1e-5, 1e-5),
    Impl("ssd_numpy-c1", lambda *a: numpy_scan(*a, chunk=1), "float32", 2e-5, 2e-5),
    Impl("ssd_numpy-c64", numpy_scan, "float32", 2e-5, 2e-5),
    Impl("ssd_numpy-f16", numpy_scan, "float16", F16_Y, 2e-5),
    Impl("twin", cuda_scan.ssd_scan_cpu, "float32", 1e-5, 1e-5, "twin"),
    Impl("twin-segments4", lambda *a: cuda_scan.ssd_scan_cpu(*a, n_segments=4), "float32", 1e-5, 1e-5, "twin"),
    Impl("twin-segments9", lambda *a: cuda_scan.ssd_scan_cpu(*a, n_segments=9), "float32", 1e-5, 1e-5, "twin"),
    Impl("twin-f16", cuda_scan.ssd_scan_cpu, "float16", F16_Y, 1e-5, "twin"),
    Impl("twin-step", _step_loop(cuda_scan.ssd_step_cpu), "float32", 1e-5, 1e-5, "twin"),
    Impl("cuda", _cuda(cuda_scan.ssd_scan_cuda), "float32", 1e-5, 1e-5, "cuda"),
    Impl("cuda-segments5", _cuda(lambda *a: cuda_scan.ssd_scan_cuda(*a, n_segments=5)), "float32", 1e-5, 1e-5, "cuda"),
    Impl("cuda-f16", _cuda(cuda_scan.ssd_scan_cuda), "float16", F16_Y, 1e-5, "cuda"),
    Impl("cuda-step", _step_loop(_cuda(cuda_scan.ssd_step_cuda)), "float32", 1e-5, 1e-5, "cuda"),
]
# The step loops run T Python calls: the long shapes cost seconds for no more coverage.
SLOW_FOR_STEPS = 300


@pytest.fixture
def available(request, monkeypatch):
    """available(impl): skip the test with the reason when impl cannot run on this machine."""
    def check(impl: Impl) -> None:
        if impl.needs == "twin":   # test_cuda_scan's fixture compiles it (once), or skips: no g++
            monkeypatch.setenv(cuda_scan.LIB_ENV, str(request.getfixturevalue("twin_dir")))
            cuda_scan.load_library.cache_clear()
        elif impl.needs == "cuda":
            if not torch.cuda.is_available():
                pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
            ok, why = cuda_scan.cuda_available()
            if not ok:
                pytest.skip(f"CUDA scan library unavailable: {why}")
    yield check
    cuda_scan.load_library.cache_clear()


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def check(impl: Impl, got, ref, what: str) -> None:
    (y, s), (y_ref, s_ref) = got, ref
    assert y.shape == y_ref.shape and s.shape == s_ref.shape, what
    assert y.dtype == np.dtype(impl.io), f"{what}: y is {y.dtype}, not the I/O dtype {impl.io}"
    assert s.dtype == (np.float64 if impl.io == "float64" else np.float32), f"{what}: state is {s.dtype}"
    assert rel_err(y, y_ref) <= impl.tol_y, f"{what}: y off by {rel_err(y, y_ref):.2e} (tolerance {impl.tol_y:.0e})"
    assert rel_err(s, s_ref) <= impl.tol_state, \
        f"{what}: state off by {rel_err(s, s_ref):.2e} (tolerance {impl.tol_state:.0e})"


def ids(v):
    return v.name if isinstance(v, Impl) else "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=ids)
def test_against_the_float64_recurrence(impl, shape, regime, available):
    available(impl)
    if "step" in impl.name and shape[1] > SLOW_FOR_STEPS:
        pytest.skip(f"step loop: length {shape[1]} > {SLOW_FOR_STEPS} adds time, not coverage")
    inputs, state, ref = case(shape, regime, impl.io)
    check(impl, impl.scan(*inputs, state), ref, f"{impl.name} {shape} {regime}")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=ids)
def test_without_an_initial_state_starts_from_zeros(impl, available):
    available(impl)
    inputs, state, ref = case(SHAPES[3], "slow", impl.io, with_state=False)
    check(impl, impl.scan(*inputs, None), ref, f"{impl.name} without an initial state")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=ids)
def test_in_pieces_carrying_the_state(impl, available):
    """Cut in time at points on and off every chunk/segment grid; the final state of one call is
    the initial state of the next; the pieces together equal the oracle on the whole."""
    available(impl)
    inputs, state, ref = case((2, 150, 4, 8, 2, 16), "slow", impl.io)
    cuts = [0, 1, 37, 38, 64, 100, 150]
    ys = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        y, state = impl.scan(*(v[:, a:b] if v.ndim > 1 else v for v in inputs), state)
        ys.append(y)
    check(impl, (np.concatenate(ys, axis=1), state), ref, f"{impl.name} in pieces")
