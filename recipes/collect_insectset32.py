"""Gather recipes/insectset32.sh's runs into recipes/results/insectset32.{json,md}.

Reads, for every run NAME-seedS (NAME = ARCH-SIZE-PRETRAINING): WORK/eval/NAME-seedS.json (`bmamba
eval` of best/ on every validation recording whole), WORK/speed/NAME-seedS.json (`bmamba detect
--report` of the exported model over the validation recordings), WORK/times.tsv (wall seconds of
every step), and the run's own args.json (the settings that actually ran) and best/config.json (the
selected epoch). Mean and sample std (ddof 1) are over seeds.

Usage: python recipes/collect_insectset32.py WORK [--out recipes/results] [--name insectset32]
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import numpy as np
from results_io import collector_arguments, read_json, read_times, write_results

ARCHS = {"biomamba": "BioMamba", "transformer": "Transformer"}
PRETRAINING = {"scratch": "none (front end trained too)", "hubert": "HuBERT, 2 phases",
               "causal": "causal (HuBERT, 2 phases)",
               "bidirectional-teacher": "bidirectional teacher -> causal student",
               "future": "causal + future-frame heads", "delayed": "delayed target",
               "distill": "distillation of the teacher",
               "delayed-longcrop": "delayed target, fine-tuned on 5 s crops"}
# recipes/insectset32.sh names runs fine-tuned with MIXUP set NAME-mixup
PRETRAINING.update({f"{k}-mixup": f"{v}; mixup in fine-tuning" for k, v in list(PRETRAINING.items())})
PRETRAINING["delayed-mixup-e200"] = "delayed target; mixup in fine-tuning, 200 epochs"
PRETRAINING["delayed-wd"] = "delayed target; AdamW weight decay 0.05 in fine-tuning"
PRETRAINING["delayed-attn"] = "delayed target; attention pooling"
RUN = re.compile(r"^(?P<arch>[a-z]+)-(?P<size>[a-z]+)-(?P<pt>[a-z0-9-]+)-seed(?P<seed>\d+)$")
SETTINGS = ("preset", "epochs", "batch_size", "lr", "lr_schedule", "crop_s", "freeze_frontend", "pooling", "init",
            "sample_rate", "mixup", "weight_decay")


def parameters(checkpoint: Path) -> int | None:
    """Parameter count of a checkpoint's model.safetensors (shapes only; no torch)."""
    from safetensors import safe_open

    path = checkpoint / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="numpy") as f:
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def selected_epoch(run: Path) -> dict:
    """The epoch best/ holds and its accuracy on the centred validation crops (best/config.json)."""
    config = read_json(run / "best" / "config.json") or {}
    training = config.get("training", {})
    return {"epoch": training.get("epochs_done"),
            "crop_valid_accuracy": training.get("metrics", {}).get("accuracy")}


def collect_run(work: Path, name: str, times: dict[str, int]) -> dict | None:
    m = RUN.match(name)
    report = read_json(work / "eval" / f"{name}.json")
    if m is None or report is None:
        return None
    run = work / "ft" / name.rsplit("-seed", 1)[0] / f"seed{m['seed']}"
    args = read_json(run / "args.json") or {}
    speed = read_json(work / "speed" / f"{name}.json")
    return {
        "name": name, "architecture": m["arch"], "size": m["size"], "pretraining": m["pt"],
        "seed": int(m["seed"]),
        # the model's input rate (runs older than --sample-rate read 16 kHz, the only rate then)
        "sample_rate": report.get("sample_rate") or 16000,
        "validation_accuracy": report["accuracy"], "validation_macro_f1": report["macro_f1"],
        "n_validation": report["n_items"],
        "selected": selected_epoch(run),
        "parameters": parameters(run / "best"),
        "train_wall_s": times.get(f"train-{name}"), "eval_wall_s": times.get(f"eval-{name}"),
        "speed": None if speed is None else {k: speed.get(k) for k in ("rtf", "audio_s", "wall_s", "backend",
                                                                         "chunk_s", "peak_rss_mb")},
        "settings": run_settings(args),
    }


def run_settings(args: dict) -> dict:
    """The SETTINGS of a run as they acted: a run from --init takes its size from the checkpoint
    (its --preset is unused, so not shown); mixup and weight decay 0 are none (not shown)."""
    settings = {k: args.get(k) for k in SETTINGS}
    if settings.get("init"):
        settings["preset"] = None
    for off_at_zero in ("mixup", "weight_decay"):
        if not settings.get(off_at_zero):
            settings[off_at_zero] = None
    return settings


def pretraining_runs(work: Path, times: dict[str, int]) -> dict[str, dict]:
    """Every pre-training run in WORK/pt: its recipe, phase, steps, batch, crop (args.json) and wall."""
    out = {}
    for run in sorted((work / "pt").glob("*-p[12]")):
        args = read_json(run / "args.json")
        if args is None:
            continue
        recipe = "hubert" if args.get("architecture") == "transformer" else args.get("recipe")
        out[run.name] = {"recipe": recipe, "phase": args.get("phase"), "steps": args.get("steps"),
                         "batch_size": args.get("batch_size"), "crop_s": args.get("crop_s"),
                         "sample_rate": args.get("sample_rate") or 16000,
                         "wall_s": times.get(f"pretrain-{run.name}")}
    return out


def summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": len(v)}


def group(runs: list[dict]) -> dict[str, dict]:
    """Runs of the same architecture, size, pre-training and input rate, over seeds."""
    out: dict[str, dict] = {}
    for r in runs:
        key = f"{r['architecture']}-{r['size']}-{r['pretraining']}-{r['sample_rate']}"
        g = out.setdefault(key, {"architecture": r["architecture"], "size": r["size"],
                                 "pretraining": r["pretraining"], "sample_rate": r["sample_rate"], "runs": []})
        g["runs"].append(r)
    for g in out.values():
        rs = sorted(g["runs"], key=lambda r: r["seed"])
        g["runs"] = rs
        g["accuracy"] = summary([r["validation_accuracy"] for r in rs])
        g["macro_f1"] = summary([r["validation_macro_f1"] for r in rs])
        walls = [r["train_wall_s"] for r in rs if r["train_wall_s"] is not None]
        g["train_wall_s"] = float(np.mean(walls)) if walls else None
        rtfs = [r["speed"]["rtf"] for r in rs if r["speed"] and r["speed"].get("rtf")]
        g["x_real_time"] = float(np.mean(rtfs)) if rtfs else None
        g["parameters"] = rs[0]["parameters"]
    return out


def _mean_std(s: dict) -> str:
    return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")


def unfinished(work: Path, finished: set[str]) -> list[dict]:
    """Runs started (a run folder exists) but not evaluated: how far their training got."""
    out = []
    for run in sorted((work / "ft").glob("*/seed*")):
        name = f"{run.parent.name}-{run.name}"
        if name in finished:
            continue
        log = run / "log.jsonl"
        lines = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        args = read_json(run / "args.json") or {}
        out.append({"name": name, "epochs_done": len(lines), "epochs": args.get("epochs"),
                    "best_crop_valid_accuracy": max((x.get("valid_accuracy", 0) for x in lines), default=None)})
    return out


def markdown(result: dict) -> str:
    settings = {json.dumps(r["settings"], sort_keys=True): r["settings"]
                for g in result["conditions"].values() for r in g["runs"]}
    lines = ["# InsectSet32: validation scores", "",
             result["task"] + ".", "",
             *([f"Data: {result['data_note']}", ""] if result.get("data_note") else []),
             "Evaluation: " + result["evaluation"] + ".", "",
             "Speed: " + result["speed"] + ".", "", "Machine: " + result["machine"] + ".", "",
             "Settings of the runs (from their args.json): "
             + "; ".join(", ".join(f"{k} {v}" for k, v in s.items() if v is not None) for s in settings.values())
             + ".", "",
             "Noise: one validation recording is 1/51 = 0.020 of accuracy; the binomial standard error of "
             "an accuracy p on 51 recordings is sqrt(p (1 - p) / 51), about 0.07 at p = 0.4, before any "
             "seed-to-seed spread. With one seed per row, differences under about 0.14 (two standard "
             "errors) are inside the noise.", "",
             "| model | size | input | pre-training | seeds | validation accuracy | macro-F1 | per-seed accuracy | "
             "binomial s.e. | selected epoch | parameters | train wall (s) | CPU speed (x real time) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in result["conditions"].values():
        per_seed = " ".join(f"{r['validation_accuracy']:.3f}" for r in g["runs"])
        epochs = " ".join(str(r["selected"].get("epoch", "-")) for r in g["runs"])
        wall = f"{g['train_wall_s']:.0f}" if g["train_wall_s"] is not None else "-"
        speed = f"{g['x_real_time']:.0f}" if g["x_real_time"] is not None else "not exportable"
        params = f"{g['parameters']:,}" if g["parameters"] else "-"
        lines.append(f"| {ARCHS.get(g['architecture'], g['architecture'])} | {g['size']} | "
                     f"{g['sample_rate'] / 1000:g} kHz | "
                     f"{PRETRAINING.get(g['pretraining'], g['pretraining'])} | {g['accuracy']['n']} | "
                     f"{_mean_std(g['accuracy'])} | {_mean_std(g['macro_f1'])} | {per_seed} | "
                     f"{np.sqrt(g['accuracy']['mean'] * (1 - g['accuracy']['mean']) / g['runs'][0]['n_validation']):.3f} | "
                     f"{epochs} | "
                     f"{params} | {wall} | {speed} |")
    if result["pretraining"]:
        lines += ["", "Pre-training runs (on the unlabelled audio: recipes/layout.py's pre-training list plus the "
                      "InsectSet32 train split, labels unused; each fine-tuned with its front end frozen):", ""]
        lines += [f"- {name}: recipe {pt['recipe']}, phase {pt['phase']}, {pt['steps']} steps of batch "
                  f"{pt['batch_size']} x {pt['crop_s']:g} s crops at {pt['sample_rate'] / 1000:g} kHz, {pt['wall_s'] if pt['wall_s'] is not None else '-'} s"
                  for name, pt in result["pretraining"].items()]
    if result["unfinished"]:
        lines += ["", "Started but not finished (not in the table; best accuracy on the centred validation "
                      "crops so far):", ""]
        lines += [f"- {u['name']}: {u['epochs_done']} of {u['epochs']} epochs"
                  + (f", best crop accuracy {u['best_crop_valid_accuracy']:.3f}"
                     if u["best_crop_valid_accuracy"] is not None else "") for u in result["unfinished"]]
    if result.get("not_run"):
        lines += ["", "Not run: " + result["not_run"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = collector_arguments(__doc__.split("\n\n")[0], "insectset32")
    parser.add_argument("--not-run", default="", help="a sentence on what of the full recipe did not run")
    parser.add_argument("--data-note", default="", help="a sentence on how the data differ from InsectSet32 as "
                                                         "published (e.g. a time-expanded copy)")
    args = parser.parse_args()
    times = read_times(args.work)
    names = sorted(p.stem for p in (args.work / "eval").glob("*-seed*.json"))
    runs = [r for r in (collect_run(args.work, n, times) for n in names) if r is not None]
    seconds = sorted({round(r["speed"]["audio_s"]) for r in runs if r["speed"] and r["speed"].get("audio_s")})
    timed_audio = " / ".join(f"{s} s" for s in seconds) or "no speed runs"
    result = {
        "task": "InsectSet32 (32 species) clip classification: trained on the dataset's train split (205 "
                "recordings), selected and scored on its validation split (51 recordings); the test "
                "split is held out",
        "evaluation": "bmamba eval of best/ (the epoch with the best accuracy on the centred training-length "
                      "crop of each validation recording) on every validation recording whole: the causal "
                      "model runs over the full length, frame logits pooled over all of it (mean, or "
                      "attention-weighted where the settings say pooling attention)",
        "speed": "bmamba detect --report of the exported model (portable ONNX, fp32, onnxruntime) over the 51 "
                 f"validation recordings ({timed_audio}): audio seconds per second of work",
        "machine": f"{platform.machine()}, 2 CPU cores shared with other work, no GPU, OMP_NUM_THREADS=1",
        "conditions": group(runs),
        "unfinished": unfinished(args.work, {r["name"] for r in runs}),
        "not_run": args.not_run,
        "data_note": args.data_note,
        "pretraining": pretraining_runs(args.work, times),
    }
    write_results(args.out, args.name, result, markdown(result))


if __name__ == "__main__":
    main()
