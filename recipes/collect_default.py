"""Gather the default model's run (recipes/default_model.sh) into recipes/results/default_model.json.

Usage: python recipes/collect_default.py WORK [--out recipes/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPORT_FILES = ("model.json", "frontend.onnx", "mamba.onnx", "model.safetensors", "config.json")


def listing_summary(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    positives = [r for r in rows if r["annotations"]]
    return {"recordings": len(rows), "phoebe_clips": len(positives), "negative_recordings": len(rows) - len(positives),
            "audio_s": round(sum(r["length"] for r in rows), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "recipes" / "results")
    args = parser.parse_args()
    work = args.work
    times = dict(line.split("\t") for line in (work / "times.tsv").read_text().splitlines())
    train_args = json.loads((work / "train" / "args.json").read_text())
    config = json.loads((work / "export" / "config.json").read_text())
    beans = json.loads((work / "eval_beans.json").read_text())
    default = json.loads((work / "eval_default.json").read_text())
    detect = json.loads((work / "detect-check" / "report.json").read_text())
    sizes = {f: (work / "export" / f).stat().st_size for f in EXPORT_FILES}
    soundscape = {k: v for k, v in default["soundscape"].items() if k != "events"}
    soundscape["events"] = default["soundscape"]["events"][:20]
    other = []
    for table in sorted((work / "detect-other").glob("*.bmamba.json")):
        d = json.loads(table.read_text())
        other.append({"file": Path(d["file"]).name, "duration_s": d["duration_s"], "false_events": len(d["events"]),
                      "labels": sorted({e["label"] for e in d["events"]}),
                      "max_score": max((e["score"] for e in d["events"]), default=None)})
    result = {
        "task": "detect: per-frame (20 ms) sigmoid for each of 10 species",
        "classes": config.get("classes"),
        "preset": config.get("preset"),
        "architecture": config.get("architecture"),
        "train_settings": {k: train_args[k] for k in ("init", "epochs", "batch_size", "lr", "window_s", "hop_s",
                                                      "freeze_frontend", "valid_fraction", "seed")},
        "training_data": listing_summary(work / "train.jsonl"),
        "test_data": {"phoebe": listing_summary(work / "test_phoebe.jsonl"),
                      "soundscape": listing_summary(work / "test_soundscape.jsonl")},
        "held_out": {
            "beans_window_map": beans["map"],
            "beans_window": {"window_s": beans["window_s"], "hop_s": beans["hop_s"], "n_windows": beans["n_windows"],
                             "ap_per_class": beans["ap_per_class"]},
            "phoebe": default["phoebe"],
            "soundscape": soundscape,
            "threshold": default["threshold"],
            "other_sites": other,
        },
        "export": {"variant": "portable", "precision": "fp32", "bytes": sizes, "total_mb": sum(sizes.values()) / 2**20},
        "detect_check": {k: detect.get(k) for k in ("files", "failed", "audio_s", "wall_s", "rtf", "backend")},
        "wall_s": {k: int(v) for k, v in times.items()},
        "machine": "x86-64, 2 shared CPU cores, no GPU, OMP_NUM_THREADS=1",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "default_model.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("training_data", "export", "wall_s")}, indent=2))
    print(json.dumps({k: v for k, v in result["held_out"].items() if k in ("beans_window_map", "threshold")}))
    print(json.dumps({k: v for k, v in default["phoebe"].items() if k != "clips"}))
    print(json.dumps({k: v for k, v in soundscape.items() if k != "events"}))
    print(json.dumps(other))


if __name__ == "__main__":
    main()
