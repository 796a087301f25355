"""Held-out scores of the default detection model that `bmamba eval` does not give directly.

On the held-out phoebe clips (a whole cross-validation fold, never seen in any stage of training):
- clip accuracy from the frame probabilities: a clip's species is the argmax over classes of the
  mean frame probability (also reported: the argmax of the max frame probability);
- clip recall at the threshold: the true species' largest frame probability reaches it.
On the held-out soundscape clips (tropical forest, none of the 10 species can be there):
- the fraction of 20 ms frames and of 1 s windows with any class at or above the threshold;
- false events per hour with the runtime's event rules (`biomamba.runtime.events.detect_events`,
  the defaults of `bmamba detect`: hysteresis 0.8 x threshold, min 0.1 s, merge gap 0.2 s).

Frame probabilities come from the PyTorch model (``BioMamba.predict``, the whole clip at once);
`bmamba detect` on the exported ONNX model gives the same numbers within 1e-5 (its parity test).

Usage: python recipes/eval_default.py CHECKPOINT TEST_PHOEBE.jsonl TEST_SOUNDSCAPE.jsonl --report OUT.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from biomamba import BioMamba
from biomamba.audio import read_audio
from biomamba.data import read_beans_jsonl
from biomamba.runtime.events import detect_events

FRAMES_PER_S = 50   # the default model's 20 ms frames (checked in main)


def phoebe_scores(model: BioMamba, listing: Path, threshold: float) -> dict:
    classes = model.classes
    rows, hits_mean, hits_max, recalled = [], 0, 0, 0
    for item in read_beans_jsonl(listing):
        truth = item.annotations[0].label
        probs = model.predict(read_audio(item.path, sample_rate=model.sample_rate))             # [T, C]
        by_mean, by_max = classes[int(probs.mean(0).argmax())], classes[int(probs.max(0).argmax())]
        top = float(probs[:, classes.index(truth)].max())
        hits_mean += by_mean == truth
        hits_max += by_max == truth
        recalled += top >= threshold
        rows.append({"clip": item.path.stem, "species": truth, "predicted": by_mean, "true_species_max_prob": top})
    n = len(rows)
    return {"n_clips": n, "clip_accuracy_mean_prob": hits_mean / n, "clip_accuracy_max_prob": hits_max / n,
            "clip_recall_at_threshold": recalled / n, "clips": rows}


def soundscape_scores(model: BioMamba, listing: Path, threshold: float) -> dict:
    frames_over, frames, windows_over, windows, events, seconds, peak = 0, 0, 0, 0, [], 0.0, 0.0
    items = read_beans_jsonl(listing)
    for item in items:
        probs = model.predict(read_audio(item.path, sample_rate=model.sample_rate))             # [T, C]
        over = probs.max(1) >= threshold
        frames_over, frames = frames_over + int(over.sum()), frames + len(over)
        whole = len(over) // FRAMES_PER_S
        per_window = over[: whole * FRAMES_PER_S].reshape(whole, FRAMES_PER_S).any(1)
        windows_over, windows = windows_over + int(per_window.sum()), windows + whole
        found = detect_events(probs, model.classes, threshold=threshold)
        events += [{"clip": item.path.stem, "start_s": e.start_s, "end_s": e.end_s, "label": e.label,
                    "score": e.score} for e in found]
        seconds += len(probs) / FRAMES_PER_S
        peak = max(peak, float(probs.max()))
    return {"n_clips": len(items), "audio_s": seconds,
            "frames_over_threshold": frames_over / frames, "windows_1s_over_threshold": windows_over / windows,
            "false_events": len(events), "false_events_per_hour": len(events) * 3600.0 / seconds,
            "max_frame_prob": peak, "events": events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("phoebe", type=Path)
    parser.add_argument("soundscape", type=Path)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    model = BioMamba.load(args.checkpoint).eval()
    if model.sample_rate != 16000:
        raise SystemExit(f"{args.checkpoint}: reads {model.sample_rate} Hz audio; this recipe scores 16 kHz models "
                         "(its windows count 50 frames a second)")
    result = {"checkpoint": str(args.checkpoint), "threshold": args.threshold,
              "phoebe": phoebe_scores(model, args.phoebe, args.threshold),
              "soundscape": soundscape_scores(model, args.soundscape, args.threshold)}
    args.report.write_text(json.dumps(result, indent=2) + "\n")
    summary = {f"{part}.{k}": v for part in ("phoebe", "soundscape") for k, v in result[part].items()
               if not isinstance(v, list)}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
