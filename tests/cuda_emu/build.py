"""Build runtime/csrc/ssd_scan.cu for the CUDA-on-CPU harness (cuda_emu.h).

The CUDA source is rewritten mechanically into a C++ translation unit, then compiled with g++
into a shared library with the C interface of ssd_scan.h plus the harness's emu_* controls:

- ``#include <cuda_fp16.h>`` and ``#include <cuda_runtime.h>`` become ``#include "cuda_emu.h"``;
- the one ``extern __shared__ T name[];`` becomes ``T* name = ::emu::dynamic_shared<T>();``;
- each ``__launch_bounds__(E)`` moves into the kernel body as ``::emu::launch_bounds(E);``, so an
  oversized block fails its launch like on a GPU;
- each ``kernel<<<grid, block[, shared[, stream]]>>>(args);`` becomes
  ``::emu::chevron_launch(kernel, grid, block, shared, stream, args);`` (a failed launch then
  shows only through cudaGetLastError(), as on a GPU). ssd_scan.cu itself launches with
  cudaLaunchKernel, which the harness implements directly.

Each rewrite must match exactly as often as expected: a source that changes shape fails the
build with a message rather than being emulated wrongly. Line numbers are kept (``#line``), so
the harness's faults name lines of ssd_scan.cu.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CSRC = REPO / "runtime" / "csrc"
SOURCE = CSRC / "ssd_scan.cu"

_INCLUDE = re.compile(r"^#include <(cuda_fp16|cuda_runtime)\.h>$", re.M)
_SHARED = re.compile(r"extern __shared__ (\w+) (\w+)\[\];")
_CHEVRON_LAUNCH = re.compile(r"(?P<kernel>[\w:]+(?:<[^<>;]*>)?)<<<(?P<config>[^;]*?)>>>\((?P<args>[^;]*)\);")
_BOUNDS = re.compile(r"__launch_bounds__\((\w+)\) (\w+)\(([^)]*)\) \{")


class RewriteError(RuntimeError):
    """ssd_scan.cu no longer has the shape the rewriter expects."""


def _sub(pattern: re.Pattern, repl, text: str, expected: int, what: str) -> str:
    out, count = pattern.subn(repl, text)
    if count != expected:
        raise RewriteError(f"{SOURCE.name}: expected {expected} {what}, found {count}")
    return out


def _chevron_call(m: re.Match) -> str:
    config = [part.strip() for part in m["config"].split(",")]
    if not 2 <= len(config) <= 4 or any("(" in part for part in config):
        raise RewriteError(f"{SOURCE.name}: cannot rewrite the launch configuration <<<{m['config']}>>>")
    config += ["0", "nullptr"][len(config) - 2:]
    args = f", {m['args']}" if m["args"].strip() else ""
    return f"::emu::chevron_launch({m['kernel']}, {', '.join(config)}{args});"


def rewrite(cuda_source: str) -> str:
    """The C++ translation unit for the harness, from the text of ssd_scan.cu."""
    text = _sub(_INCLUDE, '#include "cuda_emu.h"', cuda_source, 2, "CUDA includes")
    text = _sub(_SHARED, r"\1* \2 = ::emu::dynamic_shared<\1>();", text, 1, "extern __shared__ arrays")
    text = _sub(_BOUNDS, r"\2(\3) { ::emu::launch_bounds(\1);", text, 1, "__launch_bounds__ kernels")
    text = _CHEVRON_LAUNCH.sub(_chevron_call, text)
    return f'#line 1 "{SOURCE}"\n{text}'


def build(out_dir: Path, cuda_source: str | None = None, *, tsan: bool = False,
          name: str = "libssd_scan_emu.so", main: Path | None = None) -> Path:
    """Compile the rewritten kernels (of ``cuda_source``, default ssd_scan.cu) into ``out_dir``.

    A shared library by default; with ``main`` (a C++ file with main()), an executable linking it.
    ``tsan``: ThreadSanitizer build, each CUDA thread a TSan fiber (executables only: TSan must
    be loaded first). Raises RewriteError, or RuntimeError with the compiler's output.
    """
    gxx = shutil.which("g++")
    if gxx is None:
        raise RuntimeError("g++ absent")
    out_dir.mkdir(parents=True, exist_ok=True)
    unit = out_dir / (Path(name).stem + ".cpp")
    unit.write_text(rewrite(cuda_source if cuda_source is not None else SOURCE.read_text()))
    out = out_dir / name
    cmd = [gxx, "-std=c++17", "-I", str(HERE), "-I", str(CSRC), "-Wall", "-Wextra", "-Werror",
           "-Wno-unused-parameter", "-Wno-unknown-pragmas", "-o", str(out)]
    if tsan:
        cmd += ["-O1", "-g", "-fsanitize=thread", "-DEMU_TSAN", str(unit), str(main)]
    elif main is not None:
        cmd += ["-O2", str(unit), str(main)]
    else:
        cmd += ["-O2", "-fPIC", "-shared", "-fvisibility=hidden", str(unit)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building {out.name} failed:\n{proc.stderr[-4000:]}")
    return out
