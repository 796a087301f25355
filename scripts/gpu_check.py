"""Every GPU check and benchmark of the SSD scan kernels, in one run (scripts/gpu_check.sh builds
the library first). Writes one JSON (``--out``) and prints a table.

Checks (each on fresh random inputs; outputs poisoned with NaN before every call, none may survive):
- the kernels against biomamba.ssd in float64 (the recurrence, or the chunked form for long T), at
  the shapes of every preset in biomamba.presets.PRESETS plus edge cases, float32 and float16 I/O;
- streaming: pieces with the state carried equal one long call (bitwise with one time segment);
- time segments (forced and automatic) against one segment; in-place state update;
- the GPU and its CPU twin (libbmamba_ssd_cpu.so, when it is there) each against float64 on the
  same inputs (not against each other: device and host libm differ by an ulp or two, which
  the recurrence carries into gaps of a few 1e-6);
- errors come back as codes, not crashes;
- compute-sanitizer memcheck and racecheck on two shapes, when gpu_check.sh found the tool
  (``--sanitizer-run``: the scans only, inputs made on the host, so only our kernels run).
Benchmarks (CUDA events): the kernels against biomamba.ssd.ssd_chunked on the GPU and against
mamba-ssm's mamba_chunk_scan_combined when it imports.
Model: check_model_on_cuda (the PyTorch model on CUDA, with each scan path, against the CPU reference),
guarded so that an exception there becomes a failed check instead of a lost report; TF32 is off
while it compares float32 with float32 and restored afterwards.

Exit status: 0 when every check passed or when there is no CUDA device (the JSON says so), 1 when
a check failed. ``--dry-run-cpu`` runs the same code on the CPU twin with small shapes, to test
this script on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt_module
import importlib.util
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `biomamba` from this checkout when it is not installed

import numpy as np  # noqa: E402
import torch  # noqa: E402

from biomamba.ssd import ssd_chunked, ssd_recurrent  # noqa: E402

FALLBACK_SHAPES = {  # (H, P, G, N) when biomamba.presets is absent
    "tiny": (8, 16, 2, 16),
    "edge": (8, 32, 1, 32),
    "base": (24, 64, 1, 128),
}
EXTRA_SHAPES = {  # edge cases of the kernel's tiling
    "odd": (6, 24, 3, 20),
    "n256": (2, 16, 1, 256),
    "p256": (2, 256, 2, 16),
}
TOL_F32 = 1e-5  # max |error| / max |reference|
TOL_F16_Y = 1e-3  # half output rounding is 2^-11 relative


def load_cuda_scan():
    """biomamba.runtime.cuda_scan, or the file itself when the package is not installed."""
    try:
        from biomamba.runtime import cuda_scan
        return cuda_scan
    except ImportError:
        spec = importlib.util.spec_from_file_location("bmamba_cuda_scan", REPO / "runtime" / "cuda_scan.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


cuda_scan = load_cuda_scan()


def preset_shapes() -> dict[str, tuple[int, int, int, int]]:
    """(H, P, G, N) of every preset, from biomamba.presets when it exists."""
    try:
        from biomamba.presets import PRESETS
    except ImportError:
        return dict(FALLBACK_SHAPES)
    shapes = {}
    for name, cfg in PRESETS.items():
        d_inner = cfg.expand * cfg.d_model
        shapes[name] = (d_inner // cfg.headdim, cfg.headdim, cfg.ngroups, cfg.d_state)
    return shapes


# ---- backends: the GPU library, or the CPU twin for a dry run -------------------------------------


class Backend:
    """scan(x, dt, A, B, C, D, dt_bias, state, n_segments, out) -> (y, final) on self.device."""

    name = ""
    device = torch.device("cpu")

    def scan(self, *inputs, n_segments: int = 0, out=None):
        raise NotImplementedError

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self):
        self.device = torch.device("cuda")

    def scan(self, *inputs, n_segments: int = 0, out=None):
        return cuda_scan.ssd_scan_cuda(*inputs, n_segments=n_segments, out=out)


class TwinBackend(Backend):
    """The CPU twin through numpy (dry runs; also the reference for the GPU-vs-twin check)."""

    name = "cpu-twin"

    def scan(self, *inputs, n_segments: int = 0, out=None):
        arrays = [None if t is None else t.detach().cpu().numpy() for t in inputs]
        out_arrays = None if out is None else tuple(t.numpy() for t in out)  # CPU tensors share memory
        y, final = cuda_scan.ssd_scan_cpu(*arrays, n_segments=n_segments, out=out_arrays)
        if out is not None:
            return out
        return torch.from_numpy(y), torch.from_numpy(final)


# ---- inputs, references, comparisons -----------------------------------------------------------


def make_inputs(gen: torch.Generator, batch, length, H, P, G, N, device, dtype=torch.float32, slow=True):
    """The op's inputs. slow: decays near 1 (the state carries far); else like a trained model."""

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    x = randn(batch, length, H, P)
    dt = randn(batch, length, H) - (4.0 if slow else 0.0)
    A = -(torch.rand(H, generator=gen, device=device) * 0.5 + 0.01) if slow else -torch.exp(randn(H).abs())
    B, C = randn(batch, length, G, N), randn(batch, length, G, N)
    D, dt_bias = randn(H), randn(H)
    state = 3 * randn(batch, H, P, N)
    return [x.to(dtype), dt.to(dtype), A, B.to(dtype), C.to(dtype), D, dt_bias, state]


def reference(inputs, chunk_limit: int = 512):
    """float64 reference on the inputs' device: the recurrence, or the chunked form for long T."""
    args = [t.double() for t in inputs]
    if inputs[0].shape[1] <= chunk_limit:
        return ssd_recurrent(*args)
    return ssd_chunked(*args, chunk_size=64)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double().to(got.device)
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def poisoned_out(inputs) -> tuple[torch.Tensor, torch.Tensor]:
    x, state = inputs[0], inputs[-1]
    y = torch.full_like(x, float("nan"))
    final = torch.full(state.shape, float("nan"), dtype=torch.float32, device=x.device)
    return y, final


def run_poisoned(backend: Backend, inputs, n_segments: int = 0):
    """One call into NaN-filled outputs; returns (y, final, unwritten element count)."""
    y, final = backend.scan(*inputs, n_segments=n_segments, out=poisoned_out(inputs))
    backend.synchronize()
    unwritten = int(torch.isnan(y).sum()) + int(torch.isnan(final).sum())
    return y, final, unwritten


class Report:
    def __init__(self):
        self.checks: list[dict[str, Any]] = []

    def add(self, name: str, passed: bool, **details) -> None:
        self.checks.append({"name": name, "passed": bool(passed), **details})
        mark = "ok  " if passed else "FAIL"
        info = ", ".join(f"{k}={_fmt(v)}" for k, v in details.items())
        print(f"  {mark} {name}  {info}", flush=True)

    def guarded(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # a crashing check is a failed check, the others still run
            self.add(name, False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=3))


def _fmt(v: Any) -> str:
    return f"{v:.2e}" if isinstance(v, float) else str(v)


# ---- checks ------------------------------------------------------------------------------------


def check_against_reference(report: Report, backend: Backend, shapes: dict, lengths: list[int], batch: int,
                            gen: torch.Generator) -> None:
    for name, (H, P, G, N) in shapes.items():
        for length in lengths:
            for dtype in (torch.float32, torch.float16):
                for slow in (True, False):
                    label = f"reference {name} H{H} P{P} G{G} N{N} B{batch} T{length} {str(dtype)[6:]}" + (
                        " slow-decay" if slow else "")

                    def one(label=label, H=H, P=P, G=G, N=N, length=length, dtype=dtype, slow=slow):
                        inputs = make_inputs(gen, batch, length, H, P, G, N, backend.device, dtype, slow)
                        ref_y, ref_state = reference(inputs)
                        y, final, unwritten = run_poisoned(backend, inputs)
                        ey, es = rel_err(y, ref_y), rel_err(final, ref_state)
                        tol_y = TOL_F32 if dtype == torch.float32 else TOL_F16_Y
                        report.add(label, ey <= tol_y and es <= TOL_F32 and unwritten == 0,
                                   err_y=ey, err_state=es, unwritten=unwritten)

                    report.guarded(label, one)


def check_streaming(report: Report, backend: Backend, shape, length: int, gen: torch.Generator) -> None:
    H, P, G, N = shape
    inputs = make_inputs(gen, 2, length, H, P, G, N, backend.device)
    x, dt, A, B, C, D, dt_bias, state = inputs
    cuts = sorted({0, length, 1, length // 3, length // 3 + 1, (2 * length) // 3, length - 1})
    for n_segments in (1, 0):
        whole_y, whole_state, _ = run_poisoned(backend, inputs, n_segments)
        pieces, carried, unwritten = [], state, 0
        for start, stop in zip(cuts[:-1], cuts[1:]):
            piece = [t[:, start:stop].contiguous() for t in (x, dt, B, C)]
            y, carried, missing = run_poisoned(backend, [piece[0], piece[1], A, piece[2], piece[3], D, dt_bias,
                                                         carried], n_segments)
            pieces.append(y)
            unwritten += missing
        y = torch.cat(pieces, dim=1)
        if n_segments == 1:  # same arithmetic step by step: bitwise
            passed = torch.equal(y, whole_y) and torch.equal(carried, whole_state)
            report.add(f"streaming {len(cuts) - 1} pieces = one call, bitwise (1 segment) T{length}",
                       passed and unwritten == 0, unwritten=unwritten)
        else:
            ey, es = rel_err(y, whole_y), rel_err(carried, whole_state)
            report.add(f"streaming {len(cuts) - 1} pieces = one call (automatic segments) T{length}",
                       ey <= TOL_F32 and es <= TOL_F32 and unwritten == 0, err_y=ey, err_state=es)


def check_segments(report: Report, backend: Backend, shape, length: int, gen: torch.Generator) -> None:
    H, P, G, N = shape
    inputs = make_inputs(gen, 1, length, H, P, G, N, backend.device)
    one_y, one_state, _ = run_poisoned(backend, inputs, 1)
    for n_segments in (2, 7, 33, 0):
        y, final, unwritten = run_poisoned(backend, inputs, n_segments)
        ey, es = rel_err(y, one_y), rel_err(final, one_state)
        label = f"segments {n_segments or 'auto'} vs 1 H{H} P{P} N{N} T{length}"
        report.add(label, ey <= TOL_F32 and es <= TOL_F32 and unwritten == 0, err_y=ey, err_state=es,
                   unwritten=unwritten)


def check_in_place(report: Report, backend: Backend, shape, length: int, gen: torch.Generator) -> None:
    H, P, G, N = shape
    inputs = make_inputs(gen, 2, length, H, P, G, N, backend.device)
    ref_y, ref_state = reference(inputs)
    for n_segments in (1, 3):
        state = inputs[-1].clone()
        y = torch.full_like(inputs[0], float("nan"))
        backend.scan(*inputs[:-1], state, n_segments=n_segments, out=(y, state))
        backend.synchronize()
        es, ey = rel_err(state, ref_state), rel_err(y, ref_y)
        report.add(f"in-place state update, {n_segments} segment(s)", es <= TOL_F32 and ey <= TOL_F32,
                   err_y=ey, err_state=es)


def check_against_twin(report: Report, backend: Backend, shapes: dict, gen: torch.Generator) -> None:
    """The GPU and its CPU twin (which replays the GPU's decomposition) on the same inputs, each
    against float64; the gap between them is reported, not judged (libm ulps differ)."""
    try:
        cuda_scan.load_library("cpu")
    except cuda_scan.SSDLibraryNotFoundError as exc:
        report.checks.append({"name": "gpu vs cpu twin", "passed": True, "skipped": str(exc)})
        print(f"  skip gpu vs cpu twin: {exc}")
        return
    twin = TwinBackend()
    for name, (H, P, G, N) in shapes.items():
        for n_segments in (1, 4):
            inputs = make_inputs(gen, 1, 300, H, P, G, N, backend.device)
            ref_y, ref_state = reference([t.cpu() for t in inputs])
            y, final, unwritten = run_poisoned(backend, inputs, n_segments)
            ty, tfinal = twin.scan(*(t.cpu() for t in inputs), n_segments=n_segments)
            errors = {"gpu_err_y": rel_err(y.cpu(), ref_y), "gpu_err_state": rel_err(final.cpu(), ref_state),
                      "twin_err_y": rel_err(ty, ref_y), "twin_err_state": rel_err(tfinal, ref_state)}
            report.add(f"gpu and cpu twin vs float64 {name} ({n_segments} segments)",
                       max(errors.values()) <= TOL_F32 and unwritten == 0, **errors,
                       gap_y=rel_err(y.cpu(), ty), gap_state=rel_err(final.cpu(), tfinal))


def check_errors(report: Report, backend: Backend, gen: torch.Generator) -> None:
    inputs = make_inputs(gen, 1, 4, 2, 8, 1, 300, backend.device)
    try:
        backend.scan(*inputs)
        report.add("N=300 is refused", False, error="no exception")
    except (cuda_scan.SSDShapeError, cuda_scan.SSDKernelError) as exc:
        report.add("N=300 is refused", True, message=str(exc)[:80])


def check_model_on_cuda(report: Report, backend: Backend) -> dict[str, Any]:
    """The PyTorch model on the device against the CPU reference, for every preset (tiny and edge
    only in a dry run): (1) the pure-PyTorch scan on the device, (2) our kernel swapped in through
    Mamba2.scan_override, (3) that model streamed in pieces == its whole run, (4) mamba-ssm's
    kernel when it imports. Frame probabilities of a detection head, random perturbed weights,
    10 s of noise. Also times the whole-recording forward (60 s) per preset and path."""
    device = backend.device
    presets = ["tiny", "edge"] if device.type == "cpu" else list(preset_shapes())
    try:
        import mamba_ssm  # noqa: F401
        paths = ["torch", "kernel", "mamba_ssm"] if device.type == "cuda" else ["torch", "kernel"]
    except Exception:  # not installed / no CUDA extension
        paths = ["torch", "kernel"]
    summary: dict[str, Any] = {}
    with tf32_disabled():  # compare float32 with float32
        for name in presets:
            report.guarded(f"model {name}", lambda name=name: _check_model_preset(report, backend, name, paths,
                                                                                 summary))
    return summary


@contextlib.contextmanager
def tf32_disabled():
    """TF32 off for matmuls and cuDNN inside, restored on the way out (the benchmarks after it
    run with the settings the user had)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run_model_check(report: Report, backend: Backend) -> dict[str, Any]:
    """check_model_on_cuda, with any exception turned into a failed check (the rest of the
    report, and the benchmarks after it, still come out)."""
    try:
        return check_model_on_cuda(report, backend)
    except Exception as exc:
        report.add("model check", False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=3))
        return {"error": f"{type(exc).__name__}: {exc}"}


def _check_model_preset(report: Report, backend: Backend, name: str, paths: list[str],
                        summary: dict[str, Any]) -> None:
    """check_model_on_cuda for one preset; its row goes into summary[name]."""
    import copy

    from biomamba import BioMamba
    from biomamba.mamba2 import Mamba2

    device = backend.device
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000 * 10) * 0.3).astype(np.float32)
    long_audio = (rng.standard_normal(16000 * 60) * 0.3).astype(np.float32)

    def kernel_scan(x, dt, A, B, C, D, dt_bias, state):
        parts = [t.contiguous() for t in (x, dt, A, B, C)] + [D.float().contiguous(), dt_bias.float().contiguous(),
                                                             state.float().contiguous()]
        return backend.scan(*parts)

    def set_path(model, path):
        for m in model.modules():
            if isinstance(m, Mamba2):
                m.use_kernels = path == "mamba_ssm"
                m.scan_override = kernel_scan if path == "kernel" else None

    torch.manual_seed(0)
    cpu_model = BioMamba.from_preset(name, classes=["a", "b", "c"]).eval()
    with torch.no_grad():
        for p in cpu_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ref = cpu_model.predict(audio)
    model = copy.deepcopy(cpu_model).to(device)
    row: dict[str, Any] = {}
    summary[name] = row
    for path in paths:
        def one(path=path):
            set_path(model, path)
            got = model.predict(audio)
            err = float(np.abs(got - ref).max())
            report.add(f"model {name} [{path}] on {device.type} vs CPU reference", err <= 1e-4,
                       max_abs_prob_diff=err)
            row[f"{path}_max_abs_diff"] = err
            if path == "kernel":
                s = model.stream(max_chunk_s=1.3)
                pieces = [s.push(audio[i: i + 7777]) for i in range(0, len(audio), 7777)] + [s.flush()]
                serr = float(np.abs(np.concatenate(pieces) - got).max())
                report.add(f"model {name} [kernel] streamed == whole", serr <= 1e-5, max_abs_prob_diff=serr)
                row["kernel_stream_vs_whole"] = serr
            if device.type == "cuda":
                ms = time_call(lambda: model.predict(long_audio), device, budget_s=2.0, max_reps=5)
                row[f"{path}_x_realtime_60s"] = round(60_000.0 / ms, 1)
        report.guarded(f"model {name} [{path}]", one)
    set_path(model, "torch")


# ---- benchmarks --------------------------------------------------------------------------------


def time_call(fn: Callable[[], Any], device: torch.device, budget_s: float = 0.5, max_reps: int = 20) -> float:
    """Median milliseconds of fn() after one warm-up, repeated within budget_s."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - start_all < budget_s):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def load_mamba_chunk_scan():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return mamba_chunk_scan_combined, ""
    except Exception as exc:  # ImportError, or its CUDA extension failing to load
        return None, f"{type(exc).__name__}: {exc}"


def time_case(backend: Backend, inputs: list[torch.Tensor], mamba_scan, why_not: str) -> dict[str, Any]:
    """Milliseconds of each implementation on one set of inputs."""
    row: dict[str, Any] = {}
    row["ours_ms"] = time_call(lambda: backend.scan(*inputs), backend.device)
    row["ours_1seg_ms"] = time_call(lambda: backend.scan(*inputs, n_segments=1), backend.device)
    try:
        row["torch_chunked_ms"] = time_call(lambda: ssd_chunked(*inputs, chunk_size=64), backend.device)
    except torch.cuda.OutOfMemoryError:
        row["torch_chunked_ms"] = "out of memory"
    if mamba_scan is not None and backend.device.type == "cuda":
        x, dt, A, B, C, D, dt_bias, state = inputs
        try:
            row["mamba_ssm_ms"] = time_call(lambda: mamba_scan(
                x, dt, A, B, C, chunk_size=256, D=D, dt_bias=dt_bias, initial_states=state,
                dt_softplus=True, return_final_states=True), backend.device)
        except Exception as exc:  # record why, keep benchmarking
            row["mamba_ssm_ms"] = f"{type(exc).__name__}: {exc}"[:120]
    else:
        row["mamba_ssm_ms"] = f"unavailable ({why_not[:80]})" if why_not else "n/a on cpu"
    steps = inputs[0].shape[0] * inputs[0].shape[1]
    if row["ours_ms"] > 0:
        row["ours_Msteps_per_s"] = steps / row["ours_ms"] / 1e3
    return row


def bench_scan(backend: Backend, cases: list[tuple[str, tuple, int, int]], gen: torch.Generator,
               deadline: float, rows: list[dict[str, Any]], save: Callable[[], None]) -> None:
    """Time ours (automatic plan and one segment), ssd_chunked, and mamba-ssm when importable;
    appends one row per case and dtype to rows, saving after each."""
    mamba_scan, why_not = load_mamba_chunk_scan()
    for name, (H, P, G, N), batch, length in cases:
        if time.perf_counter() > deadline:
            rows.append({"case": name, "skipped": "time budget spent"})
            continue
        for dtype in (torch.float32, torch.float16):
            inputs = make_inputs(gen, batch, length, H, P, G, N, backend.device, dtype, slow=False)
            row: dict[str, Any] = {"case": name, "batch": batch, "T": length, "H": H, "P": P, "G": G, "N": N,
                                   "dtype": str(dtype)[6:]}
            if backend.name == "cuda":
                row["segments_auto"] = cuda_scan.plan_segments(batch, length, H, P, G, N, kind="cuda")
            row.update(time_case(backend, inputs, mamba_scan, why_not))
            rows.append(row)
            save()
            print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)


def bench_cases(shapes: dict, quick: bool) -> list[tuple[str, tuple, int, int]]:
    cases = []
    for name, shape in shapes.items():
        lengths = [(1, 50), (1, 300)] if quick else [(1, 1000), (1, 15000), (1, 100000), (16, 1500), (64, 1)]
        for batch, length in lengths:
            cases.append((f"{name} B{batch} T{length}", shape, batch, length))
    return cases


# ---- compute-sanitizer --------------------------------------------------------------------------


SANITIZER_CASES = [  # (batch, T, H, P, G, N, I/O dtype, segments): the segmented path and a wide N
    (2, 300, 8, 16, 2, 16, torch.float32, 3),
    (1, 40, 4, 64, 1, 128, torch.float16, 1),
]


def sanitizer_run() -> int:
    """What gpu_check.sh runs under compute-sanitizer (memcheck, racecheck): the SANITIZER_CASES
    scans, inputs and NaN-poisoned outputs made on the host and copied over, so that our kernels
    are the only ones launched. 0 when the results match float64, else 1."""
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    failed = 0
    for batch, length, H, P, G, N, dtype, n_segments in SANITIZER_CASES:
        inputs = make_inputs(gen, batch, length, H, P, G, N, torch.device("cpu"), dtype)
        ref_y, ref_state = reference(inputs)
        y, final = (t.to(device) for t in poisoned_out(inputs))
        cuda_scan.ssd_scan_cuda(*(t.to(device) for t in inputs), n_segments=n_segments, out=(y, final))
        torch.cuda.synchronize()
        ey, es = rel_err(y.cpu(), ref_y), rel_err(final.cpu(), ref_state)
        ok = ey <= (TOL_F16_Y if dtype == torch.float16 else TOL_F32) and es <= TOL_F32
        failed += not ok
        print(f"sanitizer case B{batch} T{length} H{H} P{P} G{G} N{N} {str(dtype)[6:]} {n_segments} segments: "
              f"err_y={ey:.2e} err_state={es:.2e} {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


def add_sanitizer_results(report: Report, path: Path) -> None:
    """The compute-sanitizer runs gpu_check.sh made (a JSON list, or {"skipped": why})."""
    runs = json.loads(path.read_text())
    if isinstance(runs, dict):
        report.checks.append({"name": "compute-sanitizer", "passed": True, "skipped": runs.get("skipped", "")})
        print(f"  skip compute-sanitizer: {runs.get('skipped', '')}")
        return
    for run in runs:
        report.add(f"compute-sanitizer {run['tool']} on {len(SANITIZER_CASES)} shapes", run["rc"] == 0,
                   rc=run["rc"], summary=run.get("summary", ""), log=run.get("log", ""))


# ---- output ------------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    print("\n=== gpu_check summary ===")
    print(f"status: {results['status']}  device: {results.get('device')}")
    if results.get("message"):
        print(results["message"])
    checks = results.get("checks", [])
    if checks:
        failed = [c for c in checks if not c["passed"]]
        print(f"checks: {len(checks) - len(failed)}/{len(checks)} passed")
        for c in failed:
            print(f"  FAILED: {c['name']}: {c.get('error', '')}")
    model = results.get("model") or {}
    if model:
        print("model (max |frame prob - CPU reference|; x real time on 60 s):")
        for preset, row in model.items():
            print(f"  {preset}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
    rows = [r for r in results.get("benchmarks", []) if "ours_ms" in r]
    if rows:
        cols = ["case", "dtype", "segments_auto", "ours_ms", "ours_1seg_ms", "torch_chunked_ms", "mamba_ssm_ms"]
        print(" | ".join(f"{c:>16}" for c in cols))
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c, "")
                cells.append(f"{v:16.3f}" if isinstance(v, float) else f"{str(v)[:16]:>16}")
            print(" | ".join(cells))


def write(results: dict[str, Any], path: Path, final: bool = True) -> None:
    """Written after every phase too, so that a run cut short still leaves its results."""
    results["updated"] = dt_module.datetime.now(dt_module.timezone.utc).isoformat()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)
    if final:
        print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON results file")
    parser.add_argument("--build-json", type=Path, help="build status written by gpu_check.sh")
    parser.add_argument("--sanitizer-json", type=Path, help="compute-sanitizer runs written by gpu_check.sh")
    parser.add_argument("--sanitizer-run", action="store_true",
                        help="only the scans gpu_check.sh runs under compute-sanitizer; exit 1 on a wrong result")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter shapes")
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="run every check on the CPU twin with small shapes (tests this script)")
    parser.add_argument("--budget-s", type=float, default=200.0, help="seconds for checks + benchmarks")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    args = parser.parse_args(argv)
    if args.sanitizer_run:
        return sanitizer_run()
    started = time.perf_counter()
    seed = args.seed if args.seed is not None else int(time.time()) % 2**31

    results: dict[str, Any] = {
        "started": dt_module.datetime.now(dt_module.timezone.utc).isoformat(),
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "seed": seed, "build": None, "status": "running", "device": None,
        "checks": [], "benchmarks": [], "model": None,
    }
    if args.build_json and args.build_json.is_file():
        results["build"] = json.loads(args.build_json.read_text())

    if args.dry_run_cpu:
        backend: Backend = TwinBackend()
        results["device"] = "cpu (dry run on the CPU twin)"
        results["library"] = cuda_scan.library_info("cpu")
        quick = True
    else:
        if not torch.cuda.is_available():
            ok, why = cuda_scan.cuda_available()  # the library's own first CUDA call, if it is built
            results["status"] = "no_cuda"
            results["message"] = ("no CUDA device: torch.cuda.is_available() is False; the scan library says: "
                                  + (why or "a device answers (torch is a CPU build?)"))
            print(results["message"])
            print_table(results)
            write(results, args.out)
            return 0
        ok, why = cuda_scan.cuda_available()
        if not ok:
            results["status"] = "failed"
            results["message"] = f"CUDA is available to torch but the scan library is not: {why}"
            print_table(results)
            write(results, args.out)
            return 1
        backend = CudaBackend()
        props = torch.cuda.get_device_properties(0)
        results["device"] = f"{props.name}, {props.multi_processor_count} SMs, sm_{props.major}{props.minor}"
        results["library"] = cuda_scan.library_info("cuda")
        quick = args.quick
    print(f"device: {results['device']}  seed: {seed}")

    gen = torch.Generator(device=backend.device)
    gen.manual_seed(seed)
    shapes = {**preset_shapes(), **EXTRA_SHAPES}
    report = Report()
    print("checks:")
    if args.sanitizer_json and args.sanitizer_json.is_file():
        report.guarded("compute-sanitizer", lambda: add_sanitizer_results(report, args.sanitizer_json))
    lengths = [1, 7, 200] if quick else [1, 7, 200, 2500]
    check_against_reference(report, backend, shapes, lengths, 2, gen)
    first = next(iter(shapes.values()))
    report.guarded("streaming", lambda: check_streaming(report, backend, first, 150 if quick else 3000, gen))
    report.guarded("segments", lambda: check_segments(report, backend, first, 300 if quick else 20000, gen))
    report.guarded("in place", lambda: check_in_place(report, backend, first, 60, gen))
    if backend.name == "cuda":
        report.guarded("twin", lambda: check_against_twin(report, backend, preset_shapes(), gen))
    report.guarded("errors", lambda: check_errors(report, backend, gen))
    results["model"] = run_model_check(report, backend)
    results["checks"] = report.checks
    write(results, args.out, final=False)

    print("benchmarks:")
    deadline = started + args.budget_s
    bench_scan(backend, bench_cases(preset_shapes(), quick), gen, deadline, results["benchmarks"],
               lambda: write(results, args.out, final=False))

    failed = [c for c in report.checks if not c["passed"]]
    results["status"] = "failed" if failed else "ok"
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_table(results)
    write(results, args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
