"""The native sources in runtime/csrc build, and the math and indexing they run are right.

- The CPU twin of the CUDA kernels (ssd_scan_cpu.cpp: the GPU's decomposition and the shared
  ssd_math.h formulas, in plain loops) is compiled with g++ and checked against biomamba.ssd:
  the float64 recurrence (the oracle) and the float32 chunked form, on random shapes.
- The CUDA library compiles with nvcc (one architecture, to stay fast) and answers without a GPU.
- The TensorRT plugin compiles against TensorRT headers (TensorRT_ROOT or the system's; skipped
  otherwise) and passes its self-test (plugin_selftest.cpp: creator, formats, shape checks,
  workspace, static registration under the plugin's namespace).
- CMakeLists.txt configures and builds.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cuda_emu.harness import oracle_recurrent as oracle
from cuda_emu.harness import random_inputs, rel_err

from biomamba.ssd import ssd_chunked, ssd_step

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "runtime" / "csrc"
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"

ERR_NULL_POINTER, ERR_BAD_SHAPE, ERR_UNSUPPORTED, ERR_CUDA = 1, 2, 3, 4


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def tensorrt_include() -> Path | None:
    """TensorRT headers from $TensorRT_ROOT or the system (e.g. Jetson's tensorrt-dev), else None."""
    roots = [os.environ.get("TensorRT_ROOT", "")]
    candidates = [Path(r) / "include" for r in roots if r]
    candidates += [Path("/usr/include") / f"{platform.machine()}-linux-gnu", Path("/usr/include")]
    for folder in candidates:
        if (folder / "NvInferRuntime.h").is_file():
            return folder
    return None


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> ctypes.CDLL:
    """The CPU twin, freshly compiled from the sources."""
    if shutil.which("g++") is None:
        pytest.skip("g++ absent")
    out = tmp_path_factory.mktemp("twin") / "libbmamba_ssd_cpu.so"
    run(["g++", "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra",
         "-Werror", "-o", str(out), str(CSRC / "ssd_scan_cpu.cpp")])
    lib = ctypes.CDLL(str(out))
    lib.bmamba_ssd_scan_ex_cpu.restype = ctypes.c_int
    lib.bmamba_ssd_scan_ex_cpu.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 10 + [ctypes.c_int] * 7
    lib.bmamba_ssd_last_error_cpu.restype = ctypes.c_char_p
    lib.bmamba_ssd_version_cpu.restype = ctypes.c_char_p
    lib.bmamba_ssd_plan_segments_cpu.argtypes = [ctypes.c_int] * 7
    return lib


def scan_twin(lib, x, dt, A, B, C, D, dt_bias, state=None, n_segments=0, final=None):
    """Call the twin through its raw C ABI. Returns (y, final_state, return code)."""
    batch, length, heads, headdim = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    y = np.full(x.shape, np.nan, dtype=x.dtype)  # poisoned: every element must be written
    if final is None:
        final = np.full((batch, heads, headdim, nstate), np.nan, dtype=np.float32)

    def ptr(a):
        return None if a is None else a.ctypes.data

    code = lib.bmamba_ssd_scan_ex_cpu(
        1 if x.dtype == np.float16 else 0,
        ptr(x), ptr(dt), ptr(A), ptr(B), ptr(C), ptr(D), ptr(dt_bias), ptr(state), ptr(y), ptr(final),
        batch, length, heads, headdim, groups, nstate, n_segments,
    )
    return y, final, code


# (batch, T, H, P, G, N): every P and N the presets use, odd sizes, T = 1, several groups.
SHAPES = [
    (2, 37, 8, 16, 2, 16),    # tiny preset's head sizes
    (1, 50, 12, 32, 1, 32),   # edge
    (1, 40, 4, 64, 1, 128),   # base (fewer heads)
    (2, 1, 6, 32, 3, 64),     # T = 1
    (1, 23, 4, 5, 4, 7),      # odd P and N, G = H
    (1, 12, 2, 3, 1, 256),    # the largest N
    (1, 9, 2, 256, 2, 16),    # the largest P (two P tiles)
    (3, 70, 8, 24, 8, 20),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_twin_matches_the_float64_recurrence(twin, shape):
    rng = np.random.default_rng(sum(shape))
    for slow in (True, False):
        inputs = random_inputs(rng, *shape, slow=slow)
        ref_y, ref_state = oracle(*inputs)
        y, final, code = scan_twin(twin, *inputs)
        assert code == 0, twin.bmamba_ssd_last_error_cpu()
        assert rel_err(y, ref_y) <= 1e-5
        assert rel_err(final, ref_state) <= 1e-5


def test_twin_without_initial_state_starts_from_zeros(twin):
    inputs = random_inputs(np.random.default_rng(1), 2, 30, 4, 16, 2, 16, with_state=False)
    ref_y, ref_state = oracle(*inputs)
    y, final, code = scan_twin(twin, *inputs)
    assert code == 0
    assert rel_err(y, ref_y) <= 1e-5 and rel_err(final, ref_state) <= 1e-5


def test_twin_matches_the_chunked_form_in_float32(twin):
    inputs = random_inputs(np.random.default_rng(2), 2, 130, 8, 16, 2, 32)
    args = [torch.from_numpy(a) for a in inputs]
    ref_y, ref_state = ssd_chunked(*args, chunk_size=32)
    y, final, code = scan_twin(twin, *inputs)
    assert code == 0
    assert rel_err(y, ref_y.double().numpy()) <= 1e-4
    assert rel_err(final, ref_state.double().numpy()) <= 1e-4


def test_single_step_matches_ssd_step(twin):
    rng = np.random.default_rng(3)
    x, dt, A, B, C, D, dt_bias, state = random_inputs(rng, 3, 1, 6, 32, 2, 64)
    ref_y, ref_state = ssd_step(*(torch.from_numpy(a.astype(np.float64)) for a in
                                  (x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, dt_bias, state)))
    y, final, code = scan_twin(twin, x, dt, A, B, C, D, dt_bias, state)  # a step is the scan with T = 1
    assert code == 0
    assert rel_err(y[:, 0], ref_y.numpy()) <= 1e-5
    assert rel_err(final, ref_state.numpy()) <= 1e-5


@pytest.mark.parametrize("n_segments", [2, 3, 7, 64])
def test_time_segments_give_the_same_scan(twin, n_segments):
    """The three-pass segmented scan (segment states, chaining, rescan) equals the recurrence;
    64 segments of a 150-step sequence leaves some empty."""
    inputs = random_inputs(np.random.default_rng(n_segments), 2, 150, 4, 16, 2, 32)
    ref_y, ref_state = oracle(*inputs)
    y, final, code = scan_twin(twin, *inputs, n_segments=n_segments)
    assert code == 0
    assert rel_err(y, ref_y) <= 1e-5 and rel_err(final, ref_state) <= 1e-5


def test_automatic_plan_splits_long_sequences_and_stays_exact(twin):
    shape = (1, 3000, 2, 16, 1, 16)  # two heads, one P tile: 2 blocks for a 132-SM GPU
    segments = twin.bmamba_ssd_plan_segments_cpu(*shape, 132)
    assert 1 < segments <= 3000 // 512
    assert twin.bmamba_ssd_plan_segments_cpu(64, 3000, 24, 64, 1, 128, 132) == 1  # enough blocks
    inputs = random_inputs(np.random.default_rng(5), *shape)
    ref_y, ref_state = oracle(*inputs)
    y, final, code = scan_twin(twin, *inputs)  # automatic
    assert code == 0
    assert rel_err(y, ref_y) <= 1e-5 and rel_err(final, ref_state) <= 1e-5


def test_streaming_pieces_equal_one_call_bitwise(twin):
    """Carrying final_state into the next call is exact: one segment per call, same arithmetic."""
    x, dt, A, B, C, D, dt_bias, state = random_inputs(np.random.default_rng(6), 2, 100, 4, 16, 2, 16)
    whole_y, whole_state, _ = scan_twin(twin, x, dt, A, B, C, D, dt_bias, state, n_segments=1)
    pieces, carried = [], state
    for start, stop in [(0, 1), (1, 33), (33, 34), (34, 100)]:
        sl = slice(start, stop)
        y, carried, code = scan_twin(twin, *(np.ascontiguousarray(a[:, sl]) for a in (x, dt)), A,
                                     *(np.ascontiguousarray(a[:, sl]) for a in (B, C)), D, dt_bias,
                                     carried, n_segments=1)
        assert code == 0
        pieces.append(y)
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), whole_y)
    np.testing.assert_array_equal(carried, whole_state)


def test_state_may_be_updated_in_place(twin):
    inputs = random_inputs(np.random.default_rng(7), 2, 40, 4, 16, 2, 16)
    _, ref_state = oracle(*inputs)
    for n_segments in (1, 3):
        state = inputs[-1].copy()
        _, final, code = scan_twin(twin, *inputs[:-1], state, n_segments=n_segments, final=state)
        assert code == 0 and final is state
        assert rel_err(state, ref_state) <= 1e-5


def test_float16_io_rounds_like_the_gpu(twin):
    """f16 I/O: the same float32 arithmetic on the half inputs, y rounded to nearest-even."""
    rng = np.random.default_rng(8)
    x, dt, A, B, C, D, dt_bias, state = random_inputs(rng, 2, 45, 4, 16, 2, 32)
    x16, dt16, B16, C16 = (a.astype(np.float16) for a in (x, dt, B, C))
    y16, final16, code = scan_twin(twin, x16, dt16, A, B16, C16, D, dt_bias, state)
    assert code == 0 and y16.dtype == np.float16
    y32, final32, _ = scan_twin(twin, *(a.astype(np.float32) for a in (x16, dt16)), A,
                                *(a.astype(np.float32) for a in (B16, C16)), D, dt_bias, state)
    np.testing.assert_array_equal(final16, final32)
    np.testing.assert_array_equal(y16, y32.astype(np.float16))
    ref_y, ref_state = oracle(x16, dt16, A, B16, C16, D, dt_bias, state)
    assert rel_err(final16, ref_state) <= 1e-5
    assert np.abs(y16 - ref_y).max() <= 2.0**-10 * np.abs(ref_y).max()


def test_float_to_half_rounding_matches_numpy(twin):
    """y = D * x exactly in float32 when B = 0; its conversion to half must be numpy's (ties to
    even, subnormals, overflow to inf). (An inf or nan in x would make the state nan: dt x B.)"""
    rng = np.random.default_rng(9)
    heads, length = 4, 2000
    x32 = np.concatenate([
        rng.standard_normal(length // 2) * np.exp(rng.uniform(-20, 12, length // 2)),  # 1e-9 .. 1e5
        rng.choice([-1, 1], length // 2) * np.float32(2.0**-24) * rng.integers(0, 4096, length // 2),
    ]).astype(np.float32)
    x16 = np.clip(x32, -65504, 65504).astype(np.float16)
    x = np.repeat(x16.reshape(1, length, 1, 1), heads, axis=2)
    D = np.array([1.0, 0.7, 3.3e3, 1.0 / 3.0], dtype=np.float32)
    zeros = np.zeros((1, length, 1, 4), dtype=np.float16)
    dt = np.zeros((1, length, heads), dtype=np.float16)
    A, dt_bias = np.full(heads, -1.0, np.float32), np.zeros(heads, np.float32)
    y, _, code = scan_twin(twin, x, dt, A, zeros, zeros, D, dt_bias)
    assert code == 0
    # fmaf(D, x, +0): the float32 product plus +0 (which turns -0 into +0), then to half.
    product = (D[None, None, :, None] * x.astype(np.float32)).astype(np.float32) + np.float32(0)
    with np.errstate(over="ignore"):
        expected = product.astype(np.float16)
    assert np.isinf(expected).any() and (np.abs(expected) < 2.0**-14).any()  # both edges exercised
    np.testing.assert_array_equal(y.view(np.uint16), expected.view(np.uint16))


def test_empty_sizes(twin):
    inputs = random_inputs(np.random.default_rng(10), 2, 0, 4, 8, 2, 8)
    y, final, code = scan_twin(twin, *inputs)
    assert code == 0 and y.size == 0
    np.testing.assert_array_equal(final, inputs[-1])  # T = 0: the state passes through
    _, final, code = scan_twin(twin, *inputs[:-1], None)
    assert code == 0 and not final.any()
    inputs = random_inputs(np.random.default_rng(10), 0, 5, 4, 8, 2, 8)
    assert scan_twin(twin, *inputs)[2] == 0


def test_bad_calls_return_codes(twin):
    x, dt, A, B, C, D, dt_bias, state = random_inputs(np.random.default_rng(11), 1, 4, 6, 8, 4, 8)
    _, _, code = scan_twin(twin, x, dt, A, B, C, D, dt_bias, None)  # G = 4 does not divide H = 6
    assert code == ERR_BAD_SHAPE
    assert b"G=4" in twin.bmamba_ssd_last_error_cpu()
    x, dt, A, B, C, D, dt_bias, state = random_inputs(np.random.default_rng(11), 1, 4, 2, 8, 1, 300)
    assert scan_twin(twin, x, dt, A, B, C, D, dt_bias)[2] == ERR_UNSUPPORTED  # N = 300 > 256
    x, dt, A, B, C, D, dt_bias, state = random_inputs(np.random.default_rng(11), 1, 4, 2, 8, 1, 8)
    assert scan_twin(twin, x, dt, None, B, C, D, dt_bias)[2] == ERR_NULL_POINTER
    assert b"A" in twin.bmamba_ssd_last_error_cpu()
    assert twin.bmamba_ssd_version_cpu() == b"1"


def test_cuda_library_compiles_with_nvcc(tmp_path):
    """nvcc builds the kernels (sm_80 only, for speed); without a GPU the calls return an error."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc absent")
    out = tmp_path / "libbmamba_ssd.so"
    run([nvcc, "-std=c++17", "-O3", "-arch=sm_80", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden",
         "-Werror", "all-warnings", "-o", str(out), str(CSRC / "ssd_scan.cu")])
    lib = ctypes.CDLL(str(out))
    lib.bmamba_ssd_version.restype = ctypes.c_char_p
    lib.bmamba_ssd_build_info.restype = ctypes.c_char_p
    lib.bmamba_ssd_last_error.restype = ctypes.c_char_p
    assert lib.bmamba_ssd_version() == b"1"
    assert b"800" in lib.bmamba_ssd_build_info()
    for name in ("scan_f32", "scan_f16", "step_f32", "step_f16", "scan_ex", "workspace_size",
                 "plan_segments", "device_sm_count", "error_string", "check_shape"):
        assert hasattr(lib, f"bmamba_ssd_{name}")
    assert lib.bmamba_ssd_check_shape(1, 10, 6, 8, 4, 8) == ERR_BAD_SHAPE
    sms = ctypes.c_int(-1)
    if lib.bmamba_ssd_device_sm_count(ctypes.byref(sms)) != 0:  # no GPU here: a code and a reason
        code = lib.bmamba_ssd_scan_f32(*([ctypes.c_void_p(16)] * 10), 1, 4, 2, 8, 1, 8, None)
        assert code == ERR_CUDA
        assert lib.bmamba_ssd_last_error()


def test_tensorrt_plugin_compiles_and_passes_its_selftest(tmp_path):
    include = tensorrt_include()
    if include is None:
        pytest.skip("TensorRT headers absent (set TensorRT_ROOT to a TensorRT install to run this)")
    if shutil.which("g++") is None:
        pytest.skip("g++ absent")
    plugin = CSRC / "trt" / "ssd_chunk_scan_plugin.cpp"
    base = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem", str(include),
            "-isystem", str(CUDA_INCLUDE)]
    for define in ([], ["-DBMAMBA_TRT_STATIC_REGISTRATION"]):
        run([*base, *define, "-fsyntax-only", str(plugin)])
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("syntax checked; nvcc absent, so no plugin library to self-test")
    kernels = tmp_path / "ssd_scan.o"
    run([nvcc, "-std=c++17", "-O2", "-arch=sm_80", "-c", "-Xcompiler", "-fPIC,-fvisibility=hidden",
         "-o", str(kernels), str(CSRC / "ssd_scan.cu")])
    libraries = []
    for name, define in (("libbmamba_trt_plugin.so", []),
                         ("libbmamba_trt_plugin_static.so", ["-DBMAMBA_TRT_STATIC_REGISTRATION"])):
        plugin_object = tmp_path / (name + ".o")
        run([*base, *define, "-O2", "-fPIC", "-fvisibility=hidden", "-c", "-o", str(plugin_object), str(plugin)])
        libraries.append(tmp_path / name)  # nvcc links the static CUDA runtime
        run([nvcc, "-shared", "-o", str(libraries[-1]), str(plugin_object), str(kernels)])
    selftest = tmp_path / "plugin_selftest"
    run([*base, "-o", str(selftest), str(CSRC / "trt" / "plugin_selftest.cpp"), "-ldl", "-rdynamic"])
    proc = run([str(selftest), *map(str, libraries)])
    assert proc.stdout.strip().endswith("ALL OK"), proc.stdout
    # The defects this self-test guards (issue 12): shapes checked beyond ranks, the static
    # registration's namespace, no creator field the ONNX node lacks.
    for line in ("ok   enqueue refuses initial_state dimension 0 = 2",
                 'ok   static registration is under the namespace "bmamba"',
                 "ok   creator lists no fields"):
        assert line in proc.stdout


def test_cmake_configures_and_builds(tmp_path):
    """The top-level CMakeLists.txt: the CPU twin always, the kernels when nvcc is there."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake absent")
    build = tmp_path / "build"
    configure = run(["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_CUDA_ARCHITECTURES=80",
                     "-DBMAMBA_WITH_TRT=OFF"])
    assert "bmamba:   + bmamba_ssd_cpu" in configure.stdout
    run(["cmake", "--build", str(build), "-j", "2"])
    assert (build / "libbmamba_ssd_cpu.so").is_file()
    if shutil.which("nvcc"):
        assert (build / "libbmamba_ssd.so").is_file()
    else:
        assert "not built: bmamba_ssd" in configure.stdout
