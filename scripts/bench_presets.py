"""CPU time per second of audio for each preset: PyTorch (whole recording and streamed) and
onnxruntime (portable and plugin exports, streamed in 30 s chunks through the runtime's loop).

    python scripts/bench_presets.py [--presets tiny,edge,base] [--seconds 60] [--threads 2]

Randomly initialised detection models (10 classes) on noise: speed does not depend on the weights.
Each figure is the best of --repeat runs after one warm-up. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from biomamba import BioMamba
from biomamba.streaming import StreamRunner


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stream_all(run_chunk, state, audio: np.ndarray, chunk_frames: int) -> None:
    runner = StreamRunner(run_chunk, state, chunk_frames)
    step = chunk_frames * 320
    for pos in range(0, len(audio), step):
        runner.push(audio[pos: pos + step])
    runner.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,edge,base")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chunk", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--report", type=Path, default=Path("bench_presets.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from biomamba.export import export_model
    from biomamba.runtime.backend_onnx import OnnxBackend

    audio = (np.random.default_rng(0).standard_normal(int(args.seconds * 16000)) * 0.1).astype(np.float32)
    chunk_frames = int(args.chunk * 50)
    rows = []
    print(f"{'preset':6} {'params':>11} {'torch whole':>12} {'torch stream':>13} {'ort portable':>13} "
          f"{'ort plugin':>11}   (ms of CPU per second of audio, {args.threads} threads)")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            torch.manual_seed(0)
            model = BioMamba.from_preset(preset, task="detect", classes=[f"c{i}" for i in range(10)]).eval()
            row = {"preset": preset, "parameters": model.num_parameters()}
            row["torch_whole"] = best_of(lambda m=model: m.predict(audio), args.repeat)
            row["torch_stream"] = best_of(
                lambda m=model: stream_all(m.run_chunk, m.initial_state(1), audio, chunk_frames), args.repeat)
            model.save(Path(tmp) / preset)
            for variant in ("portable", "plugin"):
                folder = export_model(Path(tmp) / preset, Path(tmp) / f"{preset}-{variant}", variant=variant)
                backend = OnnxBackend(folder, threads=args.threads)
                row[f"ort_{variant}"] = best_of(
                    lambda b=backend: stream_all(b.run_chunk, b.initial_state(1), audio, chunk_frames), args.repeat)
            per_s = {k: round(1000 * v / args.seconds, 2) for k, v in row.items() if k.startswith(("torch", "ort"))}
            row.update({f"{k}_ms_per_s": v for k, v in per_s.items()})
            rows.append(row)
            print(f"{preset:6} {row['parameters']:11,} {per_s['torch_whole']:12.2f} {per_s['torch_stream']:13.2f} "
                  f"{per_s['ort_portable']:13.2f} {per_s['ort_plugin']:11.2f}")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    args.report.write_text(json.dumps({"machine": f"{cpu}, {os.cpu_count()} cores", "threads": args.threads,
                                       "seconds": args.seconds, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
