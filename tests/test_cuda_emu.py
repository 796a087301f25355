"""The real CUDA kernels of runtime/csrc/ssd_scan.cu, run on the CPU by the harness in
tests/cuda_emu (every CUDA thread a fiber, real barrier and shuffle rendezvous, NaN-filled shared
memory and workspaces, launch limits; see cuda_emu.h), checked against oracles:

- biomamba.ssd.ssd_recurrent in float64 (the recurrence),
- runtime/ssd_numpy.py (float32, a chunked matrix form written independently),
- the CPU twin ssd_scan_cpu.cpp, bit for bit (it replays the kernels' decomposition),
- themselves in forward, reverse and random thread and block orders, bit for bit.

A quick set runs by default (CI); the rest is marked ``emu_full`` and deselected by default:
``python -m pytest -m emu_full tests/test_cuda_emu.py``. A mutation test removes a
``__syncthreads()`` from the source and expects the harness to catch it.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from cuda_emu.build import HERE, SOURCE, build
from cuda_emu.harness import (
    ERR_CUDA,
    FORWARD,
    RANDOM,
    REVERSE,
    EmuLibrary,
    ScanFailed,
    build_twin,
    oracle_numpy,
    oracle_recurrent,
    random_inputs,
    rel_err,
    scan_twin,
)

from biomamba.presets import PRESETS

full = pytest.mark.emu_full

TOL_F32 = 1e-5   # max |error| / max |reference| against the float64 recurrence
TOL_F16_Y = 2.0**-10  # y rounded to half
TOL_NUMPY = 1e-4  # two float32 computations in different orders


def preset_heads(name: str) -> tuple[int, int, int, int]:
    """(H, P, G, N) of a preset's Mamba2 layers."""
    cfg = PRESETS[name]
    return cfg.expand * cfg.d_model // cfg.headdim, cfg.headdim, cfg.ngroups, cfg.d_state


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emu")
    try:
        path = build(folder)
    except RuntimeError as exc:
        if "g++ absent" in str(exc):
            pytest.skip("g++ absent")
        raise
    return EmuLibrary(path), build_twin(folder)


@pytest.fixture
def emu(built):
    lib, _ = built
    lib.configure(FORWARD, FORWARD)
    lib.lib.emu_set_limits(48 * 1024, 132)
    return lib


@pytest.fixture
def twin(built):
    return built[1]


def check_case(emu, twin, inputs, n_segments=None, twin_segments=None):
    """One scan against the three oracles; returns (y, final)."""
    y, final = emu.scan(*inputs, n_segments=n_segments)
    assert not np.isnan(y).any() and not np.isnan(final).any(), "an output element was not written"
    f16 = inputs[0].dtype == np.float16
    ref_y, ref_state = oracle_recurrent(*inputs)
    assert rel_err(final, ref_state) <= TOL_F32
    assert rel_err(y, ref_y) <= (TOL_F16_Y if f16 else TOL_F32)
    np_y, np_state = oracle_numpy(*inputs)
    assert rel_err(final, np_state) <= TOL_NUMPY
    assert rel_err(y, np_y) <= (TOL_F16_Y if f16 else TOL_NUMPY)
    segments = twin_segments or n_segments or 1
    ty, tfinal = scan_twin(twin, *inputs, n_segments=segments)
    np.testing.assert_array_equal(y.view(np.uint8), ty.view(np.uint8))  # bitwise, NaNs included
    np.testing.assert_array_equal(final, tfinal)
    return y, final


# (label, batch, T, H, P, G, N): the presets' head sizes, then the tiling's edge cases.
QUICK_SHAPES = [
    ("tiny", 2, 37, *preset_heads("tiny")),
    ("edge", 1, 50, *preset_heads("edge")),
    ("base-2heads", 1, 40, 2, *preset_heads("base")[1:]),
    ("odd", 1, 23, 4, 5, 4, 7),
    ("N1", 2, 17, 4, 8, 2, 1),
    ("T1", 2, 1, 6, 32, 3, 64),
    ("P256", 1, 9, 2, 256, 2, 16),
    ("N256", 1, 12, 2, 3, 1, 256),
]


@pytest.mark.parametrize("shape", QUICK_SHAPES, ids=lambda s: s[0])
@pytest.mark.parametrize("f16", [False, True], ids=["f32", "f16"])
def test_kernels_match_the_oracles(emu, twin, shape, f16):
    """Slow decays with a carried state, then fast decays from zeros; one segment."""
    rng = np.random.default_rng(sum(shape[1:]))
    check_case(emu, twin, random_inputs(rng, *shape[1:], f16=f16), n_segments=1)
    check_case(emu, twin, random_inputs(rng, *shape[1:], f16=f16, slow=False, with_state=False),
               n_segments=1)


@pytest.mark.parametrize("n_segments", [2, 3, 7, 64])
def test_time_segments(emu, twin, n_segments):
    """The three-launch segmented scan; 64 segments of 150 steps leaves some empty."""
    inputs = random_inputs(np.random.default_rng(n_segments), 2, 150, 4, 16, 2, 32)
    check_case(emu, twin, inputs, n_segments=n_segments)


def test_automatic_plan_splits_a_long_sequence(emu, twin):
    """bmamba_ssd_scan_f32 plans 2 segments (2 blocks on 132 SMs, 1100 steps) and allocates the
    workspace itself (cudaMallocAsync: NaN-filled by the harness)."""
    inputs = random_inputs(np.random.default_rng(4), 1, 1100, 2, 16, 1, 16)
    launches = emu.stats()["launches"]
    check_case(emu, twin, inputs, n_segments=None, twin_segments=2)
    assert emu.stats()["launches"] - launches == 3  # local pass, combine, output pass


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "zeros"])
def test_empty_time(emu, with_state):
    """T = 0: no launch; the final state is the initial one (or zeros)."""
    inputs = random_inputs(np.random.default_rng(5), 2, 0, 4, 8, 2, 8, with_state=with_state)
    launches = emu.stats()["launches"]
    y, final = emu.scan(*inputs)
    assert y.size == 0 and emu.stats()["launches"] == launches
    np.testing.assert_array_equal(final, inputs[-1] if with_state else np.zeros_like(final))


@pytest.mark.parametrize("n_segments", [1, 3])
def test_state_updated_in_place(emu, twin, n_segments):
    inputs = random_inputs(np.random.default_rng(6), 2, 60, 4, 16, 2, 16)
    _, ref_state = oracle_recurrent(*inputs)
    state = inputs[-1].copy()
    y = np.full(inputs[0].shape, np.nan, np.float32)
    emu.scan(*inputs[:-1], state, n_segments=n_segments, out=(y, state))
    assert rel_err(state, ref_state) <= TOL_F32
    _, twin_state = scan_twin(twin, *inputs, n_segments=n_segments)
    np.testing.assert_array_equal(state, twin_state)


@pytest.mark.parametrize("f16", [False, True], ids=["f32", "f16"])
def test_streaming_chunks_equal_one_call(emu, f16):
    """Chunk after chunk with the state carried == the whole sequence, bit for bit."""
    x, dt, A, B, C, D, dt_bias, state = random_inputs(np.random.default_rng(7), 2, 100, 4, 16, 2, 16, f16=f16)
    whole_y, whole_state = emu.scan(x, dt, A, B, C, D, dt_bias, state, n_segments=1)
    pieces, carried = [], state
    for start, stop in [(0, 1), (1, 33), (33, 34), (34, 34), (34, 100)]:
        cut = [np.ascontiguousarray(a[:, start:stop]) for a in (x, dt, B, C)]
        y, carried = emu.scan(cut[0], cut[1], A, cut[2], cut[3], D, dt_bias, carried, n_segments=1)
        pieces.append(y)
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), whole_y)
    np.testing.assert_array_equal(carried, whole_state)


ORDER_CASES = [  # (label, shape, n_segments)
    ("tiny-3seg", (2, 37, *preset_heads("tiny")), 3),
    ("edge", (1, 50, *preset_heads("edge")), 1),
    ("odd-2seg", (1, 70, 4, 5, 4, 7), 2),
]


@pytest.mark.parametrize("case", ORDER_CASES, ids=lambda c: c[0])
def test_thread_and_block_orders_give_identical_bits(emu, case):
    """A result that depends on the order threads run between barriers is a race."""
    _, shape, n_segments = case
    inputs = random_inputs(np.random.default_rng(8), *shape)
    reference = emu.scan(*inputs, n_segments=n_segments)
    for threads, blocks, seed in [(REVERSE, REVERSE, 1), (RANDOM, RANDOM, 2), (RANDOM, FORWARD, 3)]:
        emu.configure(threads, blocks, seed)
        got = emu.scan(*inputs, n_segments=n_segments)
        for a, b in zip(got, reference):
            np.testing.assert_array_equal(a, b)


# ---- the launch itself -----------------------------------------------------------------------


def test_an_unrelated_earlier_error_neither_fails_nor_is_cleared(emu):
    """The launches check their own status (cudaLaunchKernel's), not cudaGetLastError(), which
    would report an error left by unrelated earlier work and clear it for its owner."""
    inputs = random_inputs(np.random.default_rng(9), 1, 20, 2, 8, 1, 8)
    emu.lib.emu_set_last_error(1)  # cudaErrorInvalidValue, left by someone else
    for n_segments in (1, 3, None):
        emu.scan(*inputs, n_segments=n_segments)
    assert emu.lib.emu_peek_last_error() == 1
    emu.lib.emu_set_last_error(0)


def test_a_failed_launch_is_reported(emu):
    """A device with less shared memory than the plan needs: the launch fails, the call returns
    BMAMBA_SSD_ERR_CUDA naming the launch and the CUDA error."""
    emu.lib.emu_set_limits(1024, 132)
    inputs = random_inputs(np.random.default_rng(10), 1, 20, 2, 8, 1, 8)
    _, _, code = emu.scan_code(*inputs, n_segments=3)
    assert code == ERR_CUDA
    assert emu.last_error().startswith("launching the segment pass: cudaErrorInvalidValue")
    _, _, code = emu.scan_code(*inputs, n_segments=1)
    assert code == ERR_CUDA and emu.last_error().startswith("launching the scan: cudaErrorInvalidValue")


# ---- the harness's own checks --------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """Small kernels with one defect each (faulty_kernels.cpp)."""
    import ctypes

    out = tmp_path_factory.mktemp("faulty") / "libfaulty.so"
    subprocess.run(["g++", "-std=c++17", "-O1", "-fPIC", "-shared", "-I", str(HERE), "-o", str(out),
                    str(HERE / "faulty_kernels.cpp")], check=True, capture_output=True)
    lib = ctypes.CDLL(str(out))
    lib.run_kernel.restype = ctypes.c_int
    lib.emu_fault.restype = ctypes.c_char_p
    return lib


FAULTS = [  # kernel id in faulty_kernels.cpp, expected cudaError_t, text of the fault
    (0, 0, ""),  # a correct kernel
    (1, 719, "divergent __syncthreads"),
    (2, 719, "divergent __syncthreads"),
    (3, 719, "partial mask"),
    (4, 719, "does not exist (partial warp)"),
    (5, 719, "deadlock"),
    (6, 701, "exceeds __launch_bounds__(64)"),
    (7, 9, "block dimension 0 = 2048 out of range"),
    (8, 9, "grid dimension 1 = 70000 out of range"),
]


@pytest.mark.parametrize("kernel,error,text", FAULTS, ids=[str(f[0]) for f in FAULTS])
def test_harness_detects_faults(faulty, kernel, error, text):
    assert faulty.run_kernel(kernel) == error
    assert text in faulty.emu_fault().decode()


# ---- mutation: a removed barrier is caught ---------------------------------------------------------


def remove_barrier(source: str, index: int) -> str:
    """ssd_scan.cu without its index-th `__syncthreads();` (its line blanked: line numbers stay)."""
    lines = source.split("\n")
    hits = [i for i, line in enumerate(lines) if line.strip().startswith("__syncthreads();")]
    assert index < len(hits), f"ssd_scan.cu has {len(hits)} barriers"
    lines[hits[index]] = ""
    return "\n".join(lines)


def barrier_count() -> int:
    return sum(line.strip().startswith("__syncthreads();") for line in SOURCE.read_text().split("\n"))


def mutation_is_caught(folder, index: int) -> str:
    """Builds ssd_scan.cu without barrier `index` and runs a few cases; returns how it was caught
    ('' if it was not)."""
    lib = EmuLibrary(build(folder, remove_barrier(SOURCE.read_text(), index), name=f"libmutant{index}.so"))
    rng = np.random.default_rng(11)
    for shape, n_segments in [((2, 37, *preset_heads("tiny")), 1), ((1, 70, 4, 16, 1, 32), 3)]:
        inputs = random_inputs(rng, *shape)
        ref_y, ref_state = oracle_recurrent(*inputs)
        for threads in (FORWARD, REVERSE, RANDOM):
            lib.configure(threads, FORWARD, 5)
            try:
                y, final = lib.scan(*inputs, n_segments=n_segments)
            except ScanFailed as exc:
                return f"fault: {exc}"
            err = max(rel_err(y, ref_y), rel_err(final, ref_state))
            if not err <= TOL_F32:  # NaN included
                return f"wrong result: relative error {err:.3g} in thread order {threads}"
    return ""


def test_a_removed_barrier_is_caught(tmp_path):
    """Without the barrier between staging a chunk in shared memory and reading it, threads read
    rows others have not staged yet (NaN-filled memory, or the previous chunk)."""
    assert mutation_is_caught(tmp_path, 0)


@full
def test_every_removed_barrier_is_caught(tmp_path):
    for index in range(barrier_count()):
        assert mutation_is_caught(tmp_path, index), f"barrier {index} removed, nothing noticed"


def race_check(folder, source: str | None = None, name: str = "race_check"):
    """race_main.cpp's scans under ThreadSanitizer (exit 66 when it reports a race)."""
    try:
        exe = build(folder, source, tsan=True, name=name, main=HERE / "race_main.cpp")
    except RuntimeError as exc:
        if "tsan" in str(exc):
            pytest.skip(f"no ThreadSanitizer runtime: {str(exc)[-200:]}")
        raise
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=1200)


@full
def test_no_data_race_under_threadsanitizer(tmp_path):
    proc = race_check(tmp_path)
    assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert "scans: 16" in proc.stdout


@full
def test_threadsanitizer_reports_a_removed_barrier(tmp_path):
    """The positive control: without the barrier after the steps, the write-back reads sY rows
    that other threads write, unordered."""
    proc = race_check(tmp_path, remove_barrier(SOURCE.read_text(), 1), "race_mutant")
    assert proc.returncode == 66, proc.stderr[-3000:]
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr and "ssd_scan.cu" in proc.stderr


# ---- the full set (emu_full) -----------------------------------------------------------------------


@full
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("f16", [False, True], ids=["f32", "f16"])
@pytest.mark.parametrize("n_segments", [1, 2, 7])
def test_full_presets(emu, twin, preset, f16, n_segments):
    """Every preset at its full head count (batch 1 for base, else 2), every decay and state
    combination."""
    rng = np.random.default_rng(n_segments)
    batch, length = (1, 40) if preset == "base" else (2, 130)
    for slow in (True, False):
        for with_state in (True, False):
            inputs = random_inputs(rng, batch, length, *preset_heads(preset), slow=slow,
                                   with_state=with_state, f16=f16)
            check_case(emu, twin, inputs, n_segments=n_segments)


EXTRA_SHAPES = [(3, 70, 8, 24, 8, 20), (1, 33, 2, 1, 1, 1), (2, 5, 3, 256, 1, 256), (1, 300, 1, 7, 1, 9),
                (4, 3, 6, 40, 2, 40), (1, 65, 2, 33, 1, 65)]


@full
@pytest.mark.parametrize("shape", EXTRA_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("f16", [False, True], ids=["f32", "f16"])
def test_full_odd_shapes(emu, twin, shape, f16):
    rng = np.random.default_rng(sum(shape))
    for n_segments in (1, 3):
        check_case(emu, twin, random_inputs(rng, *shape, f16=f16), n_segments=n_segments)


@full
@pytest.mark.parametrize("preset", list(PRESETS))
def test_full_orders(emu, preset):
    H, P, G, N = preset_heads(preset)
    inputs = random_inputs(np.random.default_rng(12), 1, 45, min(H, 8), P, G, N)
    for n_segments in (1, 3):
        emu.configure(FORWARD, FORWARD)
        reference = emu.scan(*inputs, n_segments=n_segments)
        for threads, blocks, seed in [(REVERSE, REVERSE, 1), (RANDOM, RANDOM, 2), (RANDOM, REVERSE, 3)]:
            emu.configure(threads, blocks, seed)
            got = emu.scan(*inputs, n_segments=n_segments)
            for a, b in zip(got, reference):
                np.testing.assert_array_equal(a, b)
