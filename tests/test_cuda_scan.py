"""The ctypes binding runtime/cuda_scan.py: finding the libraries, the CPU twin's out buffers,
segment plan and argument checks. The numbers of the twin and of the CUDA kernels against the
float64 recurrence are tests/test_ssd_conformance.py's table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biomamba.runtime import cuda_scan
from biomamba.ssd import ssd_recurrent

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "runtime" / "csrc"


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory) -> Path:
    """A folder holding a freshly compiled libbmamba_ssd_cpu.so."""
    if shutil.which("g++") is None:
        pytest.skip("g++ absent")
    folder = tmp_path_factory.mktemp("lib")
    subprocess.run(["g++", "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-o",
                    str(folder / "libbmamba_ssd_cpu.so"), str(CSRC / "ssd_scan_cpu.cpp")], check=True)
    return folder


@pytest.fixture
def twin(twin_dir, monkeypatch):
    monkeypatch.setenv(cuda_scan.LIB_ENV, str(twin_dir))
    cuda_scan.load_library.cache_clear()
    yield
    cuda_scan.load_library.cache_clear()


def random_inputs(rng, batch, length, heads, headdim, groups, nstate, dtype=np.float32):
    x = rng.standard_normal((batch, length, heads, headdim)).astype(dtype)
    dt = (rng.standard_normal((batch, length, heads)) - 3).astype(dtype)
    A = -rng.uniform(0.05, 1.0, heads).astype(np.float32)
    B = rng.standard_normal((batch, length, groups, nstate)).astype(dtype)
    C = rng.standard_normal((batch, length, groups, nstate)).astype(dtype)
    D = rng.standard_normal(heads).astype(np.float32)
    dt_bias = rng.standard_normal(heads).astype(np.float32)
    state = rng.standard_normal((batch, heads, headdim, nstate)).astype(np.float32)
    return x, dt, A, B, C, D, dt_bias, state


def oracle(*arrays):
    """ssd_recurrent in float64."""
    return ssd_recurrent(*(None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))
                           for a in arrays))


def rel_err(got, ref) -> float:
    got = np.asarray(got, dtype=np.float64)
    ref = ref.double().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


# ---- finding the libraries ----------------------------------------------------------------------


def test_missing_library_says_how_to_build_it(tmp_path, monkeypatch):
    from biomamba.runtime import native

    monkeypatch.delenv(cuda_scan.LIB_ENV, raising=False)
    monkeypatch.setattr(native, "library_candidates", lambda *a, **k: [tmp_path / "nope.so"])
    monkeypatch.setattr(cuda_scan.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(cuda_scan.SSDLibraryNotFoundError, match=r"cmake -S \. -B build && cmake --build build"):
        cuda_scan.find_library("cuda")
    with pytest.raises(ValueError, match="kind"):
        cuda_scan.find_library("rocm")


def test_env_var_may_name_the_file_or_its_folder(twin_dir, monkeypatch):
    monkeypatch.setenv(cuda_scan.LIB_ENV, str(twin_dir))
    assert cuda_scan.library_candidates("cpu")[0] == twin_dir / "libbmamba_ssd_cpu.so"
    monkeypatch.setenv(cuda_scan.LIB_ENV, str(twin_dir / "libbmamba_ssd.so"))  # the CUDA one: look beside it
    assert cuda_scan.library_candidates("cpu")[0] == twin_dir / "libbmamba_ssd_cpu.so"
    assert cuda_scan.library_candidates("cuda")[0] == twin_dir / "libbmamba_ssd.so"
    assert REPO / "build" / "libbmamba_ssd.so" in cuda_scan.library_candidates("cuda")
    monkeypatch.setenv(cuda_scan.LIB_ENV, str(twin_dir / "elsewhere"))   # named but absent: an error,
    with pytest.raises(cuda_scan.SSDLibraryNotFoundError, match="BMAMBA_SSD_LIB=.*elsewhere"):
        cuda_scan.find_library("cpu")                                   # never another library


def test_library_info(twin, twin_dir):
    info = cuda_scan.library_info("cpu")
    assert info["version"] == "1" and Path(info["path"]) == twin_dir / "libbmamba_ssd_cpu.so"


# ---- the CPU twin: segment plan, out buffers, argument checks ----------------------------------


def test_plan_segments(twin):
    assert cuda_scan.plan_segments(1, 100_000, 2, 8, 1, 8) > 1
    assert cuda_scan.plan_segments(1, 100, 2, 8, 1, 8) == 1


def test_out_buffers_and_in_place_state(twin):
    inputs = random_inputs(np.random.default_rng(5), 2, 20, 4, 8, 2, 8)
    ref_y, ref_state = oracle(*inputs)
    state = inputs[-1].copy()
    y = np.full_like(inputs[0], np.nan)
    got_y, got_state = cuda_scan.ssd_scan_cpu(*inputs[:-1], state, out=(y, state))
    assert got_y is y and got_state is state
    assert rel_err(y, ref_y) <= 1e-5 and rel_err(state, ref_state) <= 1e-5
    with pytest.raises(cuda_scan.SSDShapeError, match="out y"):
        cuda_scan.ssd_scan_cpu(*inputs, out=(y[:, :3], state))


def test_bad_arguments_raise_clear_errors(twin):
    x, dt, A, B, C, D, dt_bias, state = random_inputs(np.random.default_rng(4), 1, 5, 4, 8, 2, 8)
    with pytest.raises(cuda_scan.SSDShapeError, match="dt must have shape"):
        cuda_scan.ssd_scan_cpu(x, dt[:, :4], A, B, C, D, dt_bias)
    with pytest.raises(cuda_scan.SSDShapeError, match="initial_state must have shape"):
        cuda_scan.ssd_scan_cpu(x, dt, A, B, C, D, dt_bias, state[..., :4])
    with pytest.raises(cuda_scan.SSDShapeError, match="must divide"):
        cuda_scan.ssd_scan_cpu(x[:, :, :3], dt[:, :, :3], A[:3], B, C, D[:3], dt_bias[:3])
    with pytest.raises(cuda_scan.SSDShapeError, match="x's dtype"):
        cuda_scan.ssd_scan_cpu(x, dt.astype(np.float16), A, B, C, D, dt_bias)
    with pytest.raises(cuda_scan.SSDShapeError, match="float32 or float16"):
        cuda_scan.ssd_scan_cpu(*(a.astype(np.float64) for a in (x, dt, A, B, C, D, dt_bias)))
    with pytest.raises(cuda_scan.SSDShapeError, match="at most 256"):
        big = random_inputs(np.random.default_rng(4), 1, 2, 1, 4, 1, 257)
        cuda_scan.ssd_scan_cpu(*big)
    with pytest.raises(cuda_scan.SSDKernelError, match="65535") as failure:  # from the C side
        cuda_scan.ssd_scan_cpu(x, dt, A, B, C, D, dt_bias, n_segments=70_000)
    assert failure.value.code == 3


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: scripts/gpu_check.sh runs the real checks")
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout
    report = json.loads(out.read_text())
    assert report["status"] == "no_cuda" and "no CUDA device" in report["message"]


# ---- scripts/gpu_check (issue 12: what a GPU run must not trip over) -------------------------------


@pytest.fixture(scope="module")
def gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_fallback_shapes_are_the_presets(gpu_check):
    """The (H, P, G, N) used when biomamba.presets is absent equal the presets' own."""
    shapes = gpu_check.preset_shapes()
    for name, fallback in gpu_check.FALLBACK_SHAPES.items():
        assert shapes[name] == fallback, name


def test_gpu_check_compares_gpu_and_twin_each_with_float64(gpu_check, twin):
    """A "GPU" that differs from the twin by 2.6e-6 (device libm ulps carried by the recurrence)
    passes: both are judged against float64, and the gap is only reported."""

    class Drifting(gpu_check.TwinBackend):
        name = "cuda"

        def scan(self, *inputs, n_segments=0, out=None):
            y, final = super().scan(*inputs, n_segments=n_segments)
            y, final = y * (1 + 2.6e-6), final * (1 - 2.6e-6)
            if out is not None:
                out[0].copy_(y)
                out[1].copy_(final)
                return out
            return y, final

    report = gpu_check.Report()
    gen = torch.Generator().manual_seed(0)
    gpu_check.check_against_twin(report, Drifting(), {"tiny": gpu_check.preset_shapes()["tiny"]}, gen)
    assert len(report.checks) == 2 and all(c["passed"] for c in report.checks), report.checks
    assert all(2e-6 < c["gap_y"] < 3e-6 for c in report.checks)


def test_gpu_check_model_failure_is_a_failed_check(gpu_check, monkeypatch):
    def broken(report, backend):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(gpu_check, "check_model_on_cuda", broken)
    report = gpu_check.Report()
    summary = gpu_check.run_model_check(report, gpu_check.TwinBackend())
    assert summary == {"error": "RuntimeError: CUDA out of memory"}
    assert report.checks[-1]["name"] == "model check" and not report.checks[-1]["passed"]


def test_gpu_check_restores_tf32(gpu_check):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with pytest.raises(ValueError), gpu_check.tf32_disabled():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            raise ValueError("a check failing inside")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_gpu_check_sh_finds_nvcc_and_the_sanitizer_under_cuda_home(tmp_path):
    if shutil.which("nvcc", path="/usr/bin:/bin"):
        pytest.skip("nvcc is in /usr/bin: PATH wins over CUDA_HOME")
    for tool in ("nvcc", "compute-sanitizer"):
        (tmp_path / "bin").mkdir(exist_ok=True)
        (tmp_path / "bin" / tool).write_text("#!/bin/sh\n")
        (tmp_path / "bin" / tool).chmod(0o755)
    proc = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--print-tools"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "CUDA_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert f"nvcc: {tmp_path}/bin/nvcc" in proc.stdout
    assert f"compute-sanitizer: {tmp_path}/bin/compute-sanitizer" in proc.stdout


def test_gpu_check_reads_the_sanitizer_runs(gpu_check, tmp_path):
    runs = tmp_path / "sanitizer.json"
    runs.write_text(json.dumps([{"tool": "memcheck", "rc": 0, "summary": "ERROR SUMMARY: 0 errors"},
                                {"tool": "racecheck", "rc": 9, "summary": "RACECHECK SUMMARY: 2 hazards",
                                 "log": "..."}]))
    report = gpu_check.Report()
    gpu_check.add_sanitizer_results(report, runs)
    assert [(c["name"].split()[1], c["passed"]) for c in report.checks] == [("memcheck", True), ("racecheck", False)]
