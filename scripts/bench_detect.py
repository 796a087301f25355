"""Benchmark `bmamba detect` on real audio: speed and peak memory, and memory against length.

    python scripts/bench_detect.py [--model DIR] [--presets edge] [--work /tmp/bmamba-bench]
                                   [--hours 0.0167,1,8] [--report bench_detect.json]

1. Speed: the 16-minute real soundscape made by concatenating the 96 scikit-maad clips
   (../shared/data/real/maad/data/indices/*.wav, in name order; they are 15 minutes apart in time,
   so there are jumps at the joins). Each preset (a randomly initialised model exported with
   `bmamba export`, unless --model is given) and each export variant runs `bmamba detect` in a
   fresh process; its --report gives the real-time factor (audio seconds per wall second) and the
   peak resident memory. Each point is run --repeat times; the best speed is reported.
2. Memory against length: the same soundscape repeated to 1 minute, 1 hour and 8 hours (written
   to WAV block by block, never held in memory), each through `bmamba detect` in a fresh process,
   with the first model. Take a trained one (--model): a randomly initialised model can keep one
   class on for the whole recording, and the events that start after it wait behind it (tables
   are in time order), which costs memory with their number (34,000 events at 8 h: +10 MB).

Numbers depend on the machine and on what else runs on it; the script prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


def soundscape_clips() -> list[Path]:
    clips = sorted((REAL / "maad" / "data" / "indices").glob("*.wav"))
    if not clips:
        sys.exit(f"the real soundscape clips are absent ({REAL}/maad/data/indices)")
    return clips


def write_concatenation(path: Path, seconds: float) -> Path:
    """The soundscape clips in name order, repeated until `seconds`, written block by block."""
    if path.exists():
        return path
    clips = soundscape_clips()
    rate = sf.info(clips[0]).samplerate
    todo = int(round(seconds * rate))
    tmp = path.with_suffix(".part.wav")
    with sf.SoundFile(tmp, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        while todo > 0:
            for clip in clips:
                audio, sr = sf.read(clip, dtype="float32", always_2d=True)
                if sr != rate:
                    raise SystemExit(f"{clip}: sample rate {sr} differs from {rate}")
                piece = audio.mean(1)[:todo]
                out.write(piece)
                todo -= len(piece)
                if todo <= 0:
                    break
    os.replace(tmp, path)
    return path


def random_export(preset: str, variant: str, work: Path) -> Path:
    """A randomly initialised detection model of `preset`, exported (cached in work)."""
    out = work / f"model-{preset}-{variant}"
    if (out / "model.json").exists():
        return out
    code = (
        "import torch; from biomamba import BioMamba; from biomamba.export import export_model\n"
        "torch.manual_seed(0)\n"
        f"m = BioMamba.from_preset({preset!r}, task='detect', classes=[f'species{{i}}' for i in range(10)])\n"
        f"m.save({str(work / f'ckpt-{preset}')!r})\n"
        f"export_model({str(work / f'ckpt-{preset}')!r}, {str(out)!r}, variant={variant!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return out


def run_detect(model: Path, audio: Path, work: Path, extra: list[str]) -> dict:
    """One `bmamba detect` in a fresh process; its --report."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "biomamba.cli.app", "detect", str(audio), "--model", str(model),
               "--out", tmp, "--no-resume", "-q", "--report", str(report), *extra]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"detect failed: {done.stderr.strip()}")
        return json.loads(report.read_text())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an exported model folder (default: random models per preset)")
    parser.add_argument("--presets", default="edge", help="presets to export at random when --model is absent")
    parser.add_argument("--variants", default="portable", help="export variants: portable,plugin")
    parser.add_argument("--chunk", default="30s")
    parser.add_argument("--hours", default="0.016667,1,8", help="lengths for the memory-against-length runs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bmamba-bench")
    parser.add_argument("--report", type=Path, default=Path("bench_detect.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    soundscape = write_concatenation(args.work / "soundscape-16min.wav", 96 * 10.0)
    models = ([("given", "-", args.model)] if args.model else
              [(p, v, random_export(p, v, args.work)) for p in args.presets.split(",") for v in args.variants.split(",")])
    result = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "chunk": args.chunk, "speed": [], "length": []}
    print(f"machine: {result['machine']}; soundscape: {soundscape} ({sf.info(soundscape).duration:.0f} s)")

    print(f"{'preset':8} {'variant':9} {'x real time':>12} {'peak RSS MB':>12}")
    for preset, variant, model in models:
        runs = [run_detect(model, soundscape, args.work, ["--chunk", args.chunk]) for _ in range(args.repeat)]
        best = max(r["rtf"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        result["speed"].append({"preset": preset, "variant": variant, "backend": runs[0]["backend"],
                                "rtf_best": best, "rtf_all": [r["rtf"] for r in runs], "peak_rss_mb": rss})
        print(f"{preset:8} {variant:9} {best:12.1f} {rss:12.1f}")

    preset, variant, model = models[0]
    print(f"\nmemory against length ({preset}, {variant}):")
    for hours in (float(h) for h in args.hours.split(",")):
        audio = write_concatenation(args.work / f"soundscape-{hours:g}h.wav", hours * 3600)
        r = run_detect(model, audio, args.work, ["--chunk", args.chunk])
        result["length"].append({"hours": hours, "audio_s": r["audio_s"], "rtf": r["rtf"],
                                 "peak_rss_mb": r["peak_rss_mb"]})
        print(f"  {hours:8.3f} h: peak RSS {r['peak_rss_mb']:.1f} MB, {r['rtf']:.0f}x real time")
    peaks = [row["peak_rss_mb"] for row in result["length"]]
    result["length_growth"] = round(max(peaks) / min(peaks) - 1, 4)
    print(f"  largest / smallest peak: +{100 * result['length_growth']:.1f}%")
    args.report.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
