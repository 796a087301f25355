"""`bmamba bench`: peak memory and time of one forward pass against recording length.

Each point (model, mode, length) runs in a fresh Python process, so that one point's memory
(allocator caches, peak resident set) cannot leak into the next. Rows:

- ``biomamba`` / ``whole``: the whole recording in one forward pass (``model(audio)``, unblocked).
- ``biomamba`` / ``exact``: the exact long-recording mode, what ``bmamba detect`` and
  ``BioMamba.predict`` run: 30 s chunks with carried state, each chunk blocked inside
  (``BioMamba.step_chunk``); the audio is generated chunk by chunk, so nothing in the process but
  the model can grow with length. Equal to ``whole`` within 1e-5 (tests/test_blocked.py).
- ``transformer`` / ``whole``: the AVES/HuBERT-style baseline at the same preset.

What a peak is made of, per row: ``runtime_mb`` (the process after importing Python, numpy and
torch, before the model), ``weights_mb`` (the parameters' bytes), ``base_mb`` (the process just
before the pass: runtime, weights, and what model building and a 1 s warm-up pass left with the
allocator) and ``forward_mb`` = peak - base, what the pass added (activations, and any allocator
slack). On CPU memory is the process's resident set; every point runs with glibc's mmap threshold
fixed at 1 MB (``keep_resident_memory_flat``), so freed buffers go back to the system and the
resident set measures what is alive. On CUDA it is ``torch.cuda.max_memory_allocated`` (runtime 0;
base = weights and anything left from the warm-up), and ``reserved_mb`` adds the caching
allocator's peak reservation.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

STREAM_CHUNK_S = 30.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_point(model_name: str, mode: str, length_s: float, preset: str, device: str, seed: int = 0) -> dict:
    """Measure one point in this process. Returns a report row."""
    import numpy as np
    import torch

    from .model import BioMamba
    from .streaming import SAMPLE_RATE, keep_resident_memory_flat
    from .transformer import TransformerBaseline

    keep_resident_memory_flat()   # every point, every model: freed buffers go back to the system
    cuda = device.startswith("cuda")
    runtime_mb = 0.0 if cuda else _current_rss_mb()

    torch.manual_seed(seed)
    cls = {"biomamba": BioMamba, "transformer": TransformerBaseline}[model_name]
    model = cls.from_preset(preset, task="embed").to(device).eval()
    weights_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    if mode == "exact" and model_name != "biomamba":
        raise ValueError("only BioMamba streams")
    rng = np.random.default_rng(seed)
    n = int(round(length_s * SAMPLE_RATE))

    def noise(k):
        return (rng.standard_normal(k) * 0.1).astype(np.float32)

    with torch.no_grad():  # warm-up on 1 s, so one-time kernel/allocator setup is not timed
        model(torch.from_numpy(noise(SAMPLE_RATE)).to(device)[None])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base_mb = torch.cuda.memory_allocated() / 2**20 if cuda else _current_rss_mb()
    audio = noise(n) if mode == "whole" else None

    start = time.perf_counter()
    with torch.no_grad():
        if mode == "whole":
            model(torch.from_numpy(audio).to(device)[None])
        else:
            stream = model.stream(max_chunk_s=STREAM_CHUNK_S)
            step = int(STREAM_CHUNK_S * SAMPLE_RATE)
            for pos in range(0, n, step):
                stream.push(noise(min(step, n - pos)))
            stream.flush()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    row = {"model": model_name, "mode": mode, "length_s": length_s, "peak_mb": round(peak_mb, 1),
           "runtime_mb": round(runtime_mb, 1), "weights_mb": round(weights_mb, 1), "base_mb": round(base_mb, 1),
           "forward_mb": round(peak_mb - base_mb, 1), "seconds": round(seconds, 3),
           "x_realtime": round(length_s / seconds, 1) if seconds > 0 else None}
    if cuda:
        row["reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return row


def measure(model_name: str, mode: str, length_s: float, preset: str, device: str,
            timeout_s: float | None = None) -> dict:
    """Run one point in a fresh process; a failure or timeout becomes a row with an ``error``."""
    cmd = [sys.executable, "-m", "biomamba.bench", model_name, mode, str(length_s), preset, device]
    row = {"model": model_name, "mode": mode, "length_s": length_s, "peak_mb": None, "seconds": None}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {timeout_s:.0f} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        reason = "out of memory" if "out of memory" in out.stderr.lower() or out.returncode == -9 else last
        return {**row, "error": reason}
    return json.loads(out.stdout.strip().splitlines()[-1])


MODES = {"biomamba": ["whole", "exact"], "transformer": ["whole"]}
SERIES = {("biomamba", "whole"): "BioMamba whole", ("biomamba", "exact"): "BioMamba exact (30 s chunks)",
          ("transformer", "whole"): "Transformer whole"}


def plan(models: list[str], lengths: list[float]) -> list[tuple[str, str, float]]:
    """(model, mode, length) points, shortest first."""
    return [(m, mode, length) for length in lengths for m in models for mode in MODES[m]]


def by_length(report: dict) -> list[dict]:
    """One row per length: the peak of each series (None if not run or failed) and the exact mode's
    ratio to the Transformer's peak (None unless both ran)."""
    table: dict[float, dict] = {}
    for r in report["rows"]:
        row = table.setdefault(r["length_s"], {"length_s": r["length_s"]})
        row[SERIES[r["model"], r["mode"]]] = r.get("peak_mb")
    for row in table.values():
        exact, tf = row.get(SERIES["biomamba", "exact"]), row.get(SERIES["transformer", "whole"])
        row["exact / transformer"] = round(exact / tf, 2) if exact and tf else None
    return [table[k] for k in sorted(table)]


def plot(report: dict, path: str | Path) -> None:
    """Peak memory against recording length, one line per model and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in report["rows"]:
        if row.get("peak_mb") is not None:
            series.setdefault(SERIES[row["model"], row["mode"]], []).append((row["length_s"], row["peak_mb"]))
    for label in SERIES.values():   # the same order and colours in every plot
        if label in series:
            xs, ys = zip(*sorted(series[label]))
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("recording length (s)")
    what = "max CUDA memory allocated" if report["device"].startswith("cuda") else "peak resident memory"
    ax.set_ylabel(f"{what} (MB)")
    ax.set_title(f"bmamba bench: preset {report['preset']} on {report['device']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name()})"
    import platform

    import psutil

    return f"cpu ({platform.processor() or platform.machine()}, {psutil.cpu_count()} cores)"


if __name__ == "__main__":  # one point, in a fresh process: model mode length preset device
    name, mode, length, preset, device = sys.argv[1:6]
    print(json.dumps(run_point(name, mode, float(length), preset, device)))
