"""ctypes access to the kernels built by build.py, their oracles, and the inputs of the checks.

    lib = EmuLibrary(build(tmp / "emu"))
    y, final = lib.scan(*inputs)                    # automatic plan, own workspace (NaN-filled)
    y, final = lib.scan(*inputs, n_segments=3)      # bmamba_ssd_scan_ex with a NaN-filled workspace

Inputs are numpy arrays in the op's layout (ssd_scan.h): x [B,T,H,P], dt [B,T,H], A [H],
B, C [B,T,G,N], D, dt_bias [H], state [B,H,P,N] or None; float32, or float16 for x, dt, B, C.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

from .build import CSRC

FORWARD, REVERSE, RANDOM = 0, 1, 2
ERR_CUDA = 4


class ScanFailed(AssertionError):
    """The library returned an error code; the message has its detail and the harness's fault."""


class EmuLibrary:
    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.bmamba_ssd_scan_ex.argtypes = [i] + [p] * 10 + [i] * 6 + [p, ctypes.c_size_t, i, p]
        lib.bmamba_ssd_scan_f32.argtypes = [p] * 10 + [i] * 6 + [p]
        lib.bmamba_ssd_scan_f16.argtypes = [p] * 10 + [i] * 6 + [p]
        lib.bmamba_ssd_workspace_size.restype = ctypes.c_size_t
        lib.bmamba_ssd_last_error.restype = ctypes.c_char_p
        lib.emu_fault.restype = ctypes.c_char_p
        lib.emu_configure.argtypes = [i, i, ctypes.c_ulonglong]
        lib.emu_set_limits.argtypes = [ctypes.c_ulonglong, i]
        self.lib = lib

    def configure(self, thread_order: int = FORWARD, block_order: int = FORWARD, seed: int = 1) -> None:
        self.lib.emu_configure(thread_order, block_order, seed)

    def stats(self) -> dict[str, int]:
        out = (ctypes.c_longlong * 5)()
        self.lib.emu_stats(out)
        return dict(zip(["launches", "blocks", "threads", "barriers", "shuffles"], out))

    def last_error(self) -> str:
        return self.lib.bmamba_ssd_last_error().decode()

    def scan_code(self, x, dt, A, B, C, D, dt_bias, state=None, n_segments: int | None = None,
                  out=None):
        """(y, final_state, return code). Outputs NaN-poisoned unless ``out`` = (y, final) is given;
        n_segments None: the automatic plan of bmamba_ssd_scan_f32/_f16 (its own workspace)."""
        batch, length, heads, headdim = x.shape
        groups, nstate = B.shape[2], B.shape[3]
        if out is None:
            y = np.full(x.shape, np.nan, dtype=x.dtype)
            final = np.full((batch, heads, headdim, nstate), np.nan, dtype=np.float32)
        else:
            y, final = out
        arrays = [x, dt, A, B, C, D, dt_bias, state, y, final]
        ptrs = [None if a is None else a.ctypes.data for a in arrays]
        sizes = (batch, length, heads, headdim, groups, nstate)
        f16 = x.dtype == np.float16
        if n_segments is None:
            fn = self.lib.bmamba_ssd_scan_f16 if f16 else self.lib.bmamba_ssd_scan_f32
            code = fn(ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], ptrs[5], ptrs[6], ptrs[7], ptrs[8],
                      ptrs[9], *sizes, None)
        else:
            need = self.lib.bmamba_ssd_workspace_size(*sizes, n_segments) if n_segments > 1 else 0
            workspace = np.full(max(need // 4, 1), np.nan, dtype=np.float32)
            code = self.lib.bmamba_ssd_scan_ex(int(f16), ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4],
                                               ptrs[5], ptrs[6], ptrs[7], ptrs[8], ptrs[9], *sizes,
                                               workspace.ctypes.data if need else None, need,
                                               n_segments, None)
        return y, final, code

    def scan(self, *inputs, n_segments: int | None = None, out=None):
        """(y, final_state); raises ScanFailed on an error code."""
        y, final, code = self.scan_code(*inputs, n_segments=n_segments, out=out)
        if code != 0:
            raise ScanFailed(f"code {code}: {self.last_error()} (harness: {self.lib.emu_fault().decode()})")
        return y, final


def build_twin(out_dir: Path) -> ctypes.CDLL:
    """The CPU twin (ssd_scan_cpu.cpp), compiled as in tests/test_csrc_build.py."""
    out = out_dir / "libbmamba_ssd_cpu.so"
    subprocess.run(["g++", "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-o", str(out),
                    str(CSRC / "ssd_scan_cpu.cpp")], check=True, capture_output=True)
    lib = ctypes.CDLL(str(out))
    lib.bmamba_ssd_scan_ex_cpu.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 10 + [ctypes.c_int] * 7
    return lib


def scan_twin(twin: ctypes.CDLL, x, dt, A, B, C, D, dt_bias, state=None, n_segments: int = 1):
    """The twin with an explicit segment count (its automatic plan assumes 132 SMs, like the
    harness's default device)."""
    batch, length, heads, headdim = x.shape
    y = np.full(x.shape, np.nan, dtype=x.dtype)
    final = np.full((batch, heads, headdim, B.shape[3]), np.nan, dtype=np.float32)
    ptrs = [None if a is None else a.ctypes.data for a in (x, dt, A, B, C, D, dt_bias, state, y, final)]
    code = twin.bmamba_ssd_scan_ex_cpu(int(x.dtype == np.float16), *ptrs, batch, length, heads, headdim,
                                       B.shape[2], B.shape[3], n_segments)
    assert code == 0, f"twin returned {code}"
    return y, final


def random_inputs(rng: np.random.Generator, batch, length, heads, headdim, groups, nstate, *,
                  with_state: bool = True, slow: bool = True, f16: bool = False):
    """The op's inputs. slow: decays near 1 (the state carries over hundreds of steps); else fast
    decays as after training. Head 0 gets dt_raw + 25, past softplus's threshold of 20."""
    f32 = np.float32
    x = rng.standard_normal((batch, length, heads, headdim)).astype(f32)
    dt = (rng.standard_normal((batch, length, heads)) - (4.0 if slow else 0.0)).astype(f32)
    A = (-rng.uniform(0.01, 0.5, heads) if slow else -np.exp(rng.uniform(0, 2.7, heads))).astype(f32)
    B = rng.standard_normal((batch, length, groups, nstate)).astype(f32)
    C = rng.standard_normal((batch, length, groups, nstate)).astype(f32)
    D = rng.standard_normal(heads).astype(f32)
    dt_bias = rng.standard_normal(heads).astype(f32)
    if length and heads:
        dt[..., 0] += 25.0
    state = (3 * rng.standard_normal((batch, heads, headdim, nstate))).astype(f32) if with_state else None
    if f16:
        x, dt, B, C = (a.astype(np.float16) for a in (x, dt, B, C))
    return x, dt, A, B, C, D, dt_bias, state


def oracle_recurrent(x, dt, A, B, C, D, dt_bias, state=None):
    """biomamba.ssd.ssd_recurrent in float64 on the (exactly representable) inputs."""
    import torch

    from biomamba.ssd import ssd_recurrent

    args = [None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))
            for a in (x, dt, A, B, C, D, dt_bias, state)]
    y, final = ssd_recurrent(*args)
    return y.numpy(), final.numpy()


def oracle_numpy(x, dt, A, B, C, D, dt_bias, state=None):
    """runtime/ssd_numpy.py (float32, chunked matrix form: independent of biomamba.ssd)."""
    from biomamba.runtime.ssd_numpy import ssd_scan

    y, final = ssd_scan(*(None if a is None else np.asarray(a, np.float32)
                          for a in (x, dt, A, B, C, D, dt_bias, state)))
    return y, final


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref|, in float64."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
