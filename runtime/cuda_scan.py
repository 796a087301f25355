"""ctypes binding of the SSD scan kernels in ``runtime/csrc`` (op ``bmamba::SSDChunkScan`` v1).

Two shared libraries, both built by the top-level ``CMakeLists.txt``
(``cmake -S . -B build && cmake --build build``):

- ``libbmamba_ssd.so``: the CUDA kernels. :func:`ssd_scan_cuda` and :func:`ssd_step_cuda` call it
  on torch CUDA tensors (torch is imported inside those functions only).
- ``libbmamba_ssd_cpu.so``: the kernels' CPU twin, the same decomposition and formulas in plain
  loops; a test device that checks the GPU's math and indexing on a CPU. :func:`ssd_scan_cpu` and
  :func:`ssd_step_cpu` call it on numpy arrays.

The math is that of ``biomamba.ssd.ssd_recurrent`` (the oracle). Shapes (B batch, T time, H heads,
P head dim, G groups, N state size)::

    x [B, T, H, P]   dt [B, T, H] (raw)   B, C [B, T, G, N]   -> y [B, T, H, P]    (I/O dtype)
    A, D, dt_bias [H]   initial_state -> final_state [B, H, P, N]                  (float32)

The I/O dtype is float32 or float16; the state and the arithmetic are float32. Limits: P and N at
most 256, G divides H.

Where the libraries are looked for (``biomamba.runtime.native``, the rule the TensorRT plugin
follows too): ``$BMAMBA_SSD_LIB`` when set (the library file, or a folder holding both; a path
that does not exist is an error), else the package's folder, the CMake build folder ``build/`` of
a source checkout, the install prefix's ``lib/`` (``sys.prefix``, ``/usr/local/lib``), then the
system loader's search path.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import numpy as np

from . import native

LIB_ENV = "BMAMBA_SSD_LIB"
LIB_NAMES = {"cuda": "libbmamba_ssd.so", "cpu": "libbmamba_ssd_cpu.so"}
BUILD_HINT = (
    "build it in the repository root with `cmake -S . -B build && cmake --build build` "
    f"(the CPU twin needs only g++; the CUDA library needs nvcc), or set {LIB_ENV} to the "
    "library file or the folder holding it"
)
MAX_HEADDIM = 256
MAX_STATE = 256
_FLOAT32, _FLOAT16 = 0, 1  # BMAMBA_SSD_FLOAT32 / _FLOAT16
_ERR_CUDA = 4


class SSDLibraryNotFoundError(FileNotFoundError):
    """The shared library is not built or not where it is looked for."""


class SSDShapeError(ValueError):
    """Tensors whose shapes or dtypes do not fit the op's contract."""


class SSDKernelError(RuntimeError):
    """A library call returned an error code; ``code`` is it, the message says why."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# ---- finding and loading the libraries ------------------------------------------------------------


def _name(kind: str) -> str:
    if kind not in LIB_NAMES:
        raise ValueError(f"kind must be one of {sorted(LIB_NAMES)}, not {kind!r}")
    return LIB_NAMES[kind]


def library_candidates(kind: str = "cuda") -> list[Path]:
    """Paths where the library of ``kind`` ("cuda" or "cpu") is looked for, in order
    (``biomamba.runtime.native``)."""
    return native.library_candidates(_name(kind), LIB_ENV, install_prefixes=True)


def find_library(kind: str = "cuda") -> Path:
    """The path of the library of ``kind``; raises SSDLibraryNotFoundError with how to build it."""
    return native.find_library(_name(kind), LIB_ENV, install_prefixes=True, error=SSDLibraryNotFoundError,
                               hint=BUILD_HINT)


def _declare(lib: ctypes.CDLL, suffix: str) -> None:
    ptr, i32, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    tensors = [ptr] * 10  # x, dt, A, B, C, D, dt_bias, initial_state, y, final_state
    sizes = [i32] * 6  # batch, T, H, P, G, N
    for name in ("version", "build_info", "last_error"):
        getattr(lib, f"bmamba_ssd_{name}{suffix}").restype = ctypes.c_char_p
        getattr(lib, f"bmamba_ssd_{name}{suffix}").argtypes = []
    getattr(lib, f"bmamba_ssd_error_string{suffix}").restype = ctypes.c_char_p
    getattr(lib, f"bmamba_ssd_error_string{suffix}").argtypes = [i32]
    getattr(lib, f"bmamba_ssd_check_shape{suffix}").restype = i32
    getattr(lib, f"bmamba_ssd_check_shape{suffix}").argtypes = sizes
    getattr(lib, f"bmamba_ssd_plan_segments{suffix}").restype = i32
    getattr(lib, f"bmamba_ssd_plan_segments{suffix}").argtypes = [*sizes, i32]
    getattr(lib, f"bmamba_ssd_workspace_size{suffix}").restype = size
    getattr(lib, f"bmamba_ssd_workspace_size{suffix}").argtypes = [*sizes, i32]
    if not suffix:
        lib.bmamba_ssd_device_sm_count.restype = i32
        lib.bmamba_ssd_device_sm_count.argtypes = [ctypes.POINTER(i32)]
    ex = getattr(lib, f"bmamba_ssd_scan_ex{suffix}")
    ex.restype = i32
    if suffix:  # the twin: no workspace, no stream
        ex.argtypes = [i32, *tensors, *sizes, i32]
    else:
        ex.argtypes = [i32, *tensors, *sizes, ptr, size, i32, ptr]


@functools.cache
def load_library(kind: str = "cuda") -> ctypes.CDLL:
    """Load (once) the library of ``kind`` ("cuda" or "cpu") with its function signatures set."""
    path = find_library(kind)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise SSDLibraryNotFoundError(f"cannot load {path}: {exc}; {BUILD_HINT}") from exc
    _declare(lib, "_cpu" if kind == "cpu" else "")
    return lib


def library_info(kind: str = "cuda") -> dict[str, str]:
    """Path, op version and build description of the library of ``kind``."""
    lib = load_library(kind)
    suffix = "_cpu" if kind == "cpu" else ""
    return {
        "path": str(find_library(kind)),
        "version": getattr(lib, f"bmamba_ssd_version{suffix}")().decode(),
        "build": getattr(lib, f"bmamba_ssd_build_info{suffix}")().decode(),
    }


def _check_code(lib: ctypes.CDLL, suffix: str, code: int, what: str) -> None:
    if code == 0:
        return
    message = getattr(lib, f"bmamba_ssd_error_string{suffix}")(code).decode()
    detail = getattr(lib, f"bmamba_ssd_last_error{suffix}")().decode()
    raise SSDKernelError(f"{what} failed (code {code}: {message}){': ' + detail if detail else ''}", code)


# ---- shapes -------------------------------------------------------------------------------------


def check_shapes(x, dt, A, B, C, D, dt_bias, initial_state=None) -> tuple[int, int, int, int, int, int]:
    """(batch, T, H, P, G, N) from the tensors' shapes; SSDShapeError if they disagree."""
    if len(x.shape) != 4:
        raise SSDShapeError(f"x must be [batch, T, H, P], got shape {tuple(x.shape)}")
    batch, length, heads, headdim = (int(v) for v in x.shape)
    if len(B.shape) != 4:
        raise SSDShapeError(f"B must be [batch, T, G, N], got shape {tuple(B.shape)}")
    groups, nstate = int(B.shape[2]), int(B.shape[3])
    expected = {
        "dt": (batch, length, heads),
        "A": (heads,),
        "B": (batch, length, groups, nstate),
        "C": (batch, length, groups, nstate),
        "D": (heads,),
        "dt_bias": (heads,),
    }
    given = {"dt": dt, "A": A, "B": B, "C": C, "D": D, "dt_bias": dt_bias}
    if initial_state is not None:
        expected["initial_state"] = (batch, heads, headdim, nstate)
        given["initial_state"] = initial_state
    for name, shape in expected.items():
        if tuple(int(v) for v in given[name].shape) != shape:
            raise SSDShapeError(f"{name} must have shape {shape} (from x and B), got {tuple(given[name].shape)}")
    if groups < 1 or heads % groups:
        raise SSDShapeError(f"the group count G={groups} must divide the head count H={heads}")
    if headdim > MAX_HEADDIM or nstate > MAX_STATE:
        raise SSDShapeError(f"P={headdim} and N={nstate} must be at most {MAX_HEADDIM} and {MAX_STATE}")
    return batch, length, heads, headdim, groups, nstate


def _step_as_scan(x, dt, B, C):
    """Step tensors x [B, H, P], dt [B, H], B/C [B, G, N] as a scan of T = 1 (views)."""
    if len(x.shape) != 3 or len(dt.shape) != 2 or len(B.shape) != 3 or len(C.shape) != 3:
        raise SSDShapeError(
            "a step takes x [batch, H, P], dt [batch, H], B and C [batch, G, N]; got "
            f"{tuple(x.shape)}, {tuple(dt.shape)}, {tuple(B.shape)}, {tuple(C.shape)}"
        )
    return x[:, None], dt[:, None], B[:, None], C[:, None]


# ---- the CPU twin on numpy arrays ---------------------------------------------------------------


def _io_dtype_numpy(x, dt, B, C) -> np.dtype:
    dtype = np.dtype(x.dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise SSDShapeError(f"x must be float32 or float16, got {dtype}")
    for name, arr in (("dt", dt), ("B", B), ("C", C)):
        if np.dtype(arr.dtype) != dtype:
            raise SSDShapeError(f"{name} must have x's dtype {dtype}, got {arr.dtype}")
    return dtype


def ssd_scan_cpu(x, dt, A, B, C, D, dt_bias, initial_state=None, n_segments: int = 0, out=None):
    """The scan on the CPU twin. numpy arrays; returns (y [B, T, H, P] in x's dtype, final_state
    [B, H, P, N] float32). ``n_segments``: 0 = the GPU's automatic plan (for a 132-SM GPU), k > 0 =
    force k time segments (to test the segmented path). ``out``: (y, final_state) arrays to write
    into (C-contiguous; final_state may be initial_state itself, for an in-place update)."""
    lib = load_library("cpu")
    x, dt, B, C = (np.asarray(v) for v in (x, dt, B, C))
    dtype = _io_dtype_numpy(x, dt, B, C)
    batch, length, heads, headdim, groups, nstate = check_shapes(x, dt, A, B, C, D, dt_bias, initial_state)
    x, dt, B, C = (np.ascontiguousarray(v) for v in (x, dt, B, C))
    A, D, dt_bias = (np.ascontiguousarray(v, dtype=np.float32) for v in (A, D, dt_bias))
    state = None if initial_state is None else np.ascontiguousarray(initial_state, dtype=np.float32)
    if out is None:
        y = np.empty_like(x)
        final = np.empty((batch, heads, headdim, nstate), dtype=np.float32)
    else:
        y, final = out
        _check_out(y, x.shape, x.dtype, "y")
        _check_out(final, (batch, heads, headdim, nstate), np.dtype(np.float32), "final_state")
        if not (y.flags.c_contiguous and final.flags.c_contiguous):
            raise SSDShapeError("out arrays must be C-contiguous")

    def ptr(a):
        return None if a is None else a.ctypes.data

    code = lib.bmamba_ssd_scan_ex_cpu(
        _FLOAT16 if dtype == np.float16 else _FLOAT32,
        ptr(x), ptr(dt), ptr(A), ptr(B), ptr(C), ptr(D), ptr(dt_bias), ptr(state), ptr(y), ptr(final),
        batch, length, heads, headdim, groups, nstate, int(n_segments),
    )
    _check_code(lib, "_cpu", code, "bmamba_ssd_scan_ex_cpu")
    return y, final


def _check_out(arr, shape, dtype, name: str) -> None:
    if tuple(arr.shape) != tuple(shape) or arr.dtype != dtype:
        raise SSDShapeError(f"out {name} must be {dtype} of shape {tuple(shape)}, got {arr.dtype} {tuple(arr.shape)}")


def ssd_step_cpu(x, dt, A, B, C, D, dt_bias, state=None):
    """One step on the CPU twin: x [B, H, P], dt [B, H], B/C [B, G, N] -> (y [B, H, P], state)."""
    xs, dts, Bs, Cs = _step_as_scan(*(np.asarray(v) for v in (x, dt, B, C)))
    y, new_state = ssd_scan_cpu(xs, dts, A, Bs, Cs, D, dt_bias, state)
    return y[:, 0], new_state


def plan_segments(batch: int, length: int, heads: int, headdim: int, groups: int, nstate: int,
                  sm_count: int = 0, kind: str = "cpu") -> int:
    """The segment count of the automatic plan for these sizes on a GPU of ``sm_count`` SMs
    (0: the twin's 132 for kind "cpu", the current device for kind "cuda")."""
    lib = load_library(kind)
    plan = getattr(lib, "bmamba_ssd_plan_segments" + ("_cpu" if kind == "cpu" else ""))
    return int(plan(batch, length, heads, headdim, groups, nstate, sm_count))


# ---- the CUDA kernels on torch tensors -----------------------------------------------------------


def ssd_scan_cuda(x, dt, A, B, C, D, dt_bias, initial_state=None, n_segments: int = 0, out=None):
    """The scan on the GPU. torch CUDA tensors on one device; x, dt, B, C float32 or float16 (one
    dtype), A, D, dt_bias, initial_state float32 (others are converted). Runs on the current stream
    of x's device. Returns (y [B, T, H, P] in x's dtype, final_state [B, H, P, N] float32).
    ``n_segments``: 0 = automatic, k > 0 = force k time segments. ``out``: (y, final_state) tensors
    to write into (contiguous, on x's device; final_state may be initial_state, for in place)."""
    import torch  # lazily: the runtime stays torch-free

    lib = load_library("cuda")
    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "dt_bias": dt_bias}
    if initial_state is not None:
        tensors["initial_state"] = initial_state
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_cuda:
            raise SSDShapeError(f"{name} must be a CUDA torch tensor")
        if t.device != x.device:
            raise SSDShapeError(f"{name} is on {t.device}, x on {x.device}")
    if x.dtype not in (torch.float32, torch.float16):
        raise SSDShapeError(f"x must be float32 or float16, got {x.dtype}")
    for name in ("dt", "B", "C"):
        if tensors[name].dtype != x.dtype:
            raise SSDShapeError(f"{name} must have x's dtype {x.dtype}, got {tensors[name].dtype}")
    batch, length, heads, headdim, groups, nstate = check_shapes(x, dt, A, B, C, D, dt_bias, initial_state)
    x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
    A, D, dt_bias = (t.to(torch.float32).contiguous() for t in (A, D, dt_bias))
    if initial_state is not None:  # the tensor itself when already float32 and contiguous
        initial_state = initial_state.to(torch.float32).contiguous()
    if out is None:
        y = torch.empty_like(x)
        final = torch.empty(batch, heads, headdim, nstate, dtype=torch.float32, device=x.device)
    else:
        y, final = out
        _check_out(y, x.shape, x.dtype, "y")
        _check_out(final, (batch, heads, headdim, nstate), torch.float32, "final_state")
        if not (y.is_contiguous() and final.is_contiguous()) or y.device != x.device or final.device != x.device:
            raise SSDShapeError(f"out tensors must be contiguous and on {x.device}")
    with torch.cuda.device(x.device):
        sizes = (batch, length, heads, headdim, groups, nstate)
        ws_bytes = int(lib.bmamba_ssd_workspace_size(*sizes, int(n_segments)))
        workspace = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream

        def ptr(t: Any):
            return None if t is None else t.data_ptr()

        code = lib.bmamba_ssd_scan_ex(
            _FLOAT16 if x.dtype == torch.float16 else _FLOAT32,
            ptr(x), ptr(dt), ptr(A), ptr(B), ptr(C), ptr(D), ptr(dt_bias), ptr(initial_state),
            ptr(y), ptr(final), *sizes,
            ptr(workspace) if ws_bytes else None, ws_bytes, int(n_segments), stream,
        )
    _check_code(lib, "", code, "bmamba_ssd_scan_ex")
    return y, final


def ssd_step_cuda(x, dt, A, B, C, D, dt_bias, state=None):
    """One step on the GPU: x [B, H, P], dt [B, H], B/C [B, G, N] -> (y [B, H, P], state)."""
    xs, dts, Bs, Cs = _step_as_scan(x, dt, B, C)
    y, new_state = ssd_scan_cuda(xs, dts, A, Bs, Cs, D, dt_bias, state)
    return y[:, 0], new_state


def cuda_available() -> tuple[bool, str]:
    """(True, "<k> SMs") when the CUDA library loads and a CUDA device answers; else (False, why)."""
    try:
        lib = load_library("cuda")
    except SSDLibraryNotFoundError as exc:
        return False, str(exc)
    sm_count = ctypes.c_int(0)
    if lib.bmamba_ssd_device_sm_count(ctypes.byref(sm_count)) != 0:
        return False, lib.bmamba_ssd_last_error().decode()
    return True, f"{sm_count.value} SMs"
