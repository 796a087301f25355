"""bmamba eval against oracles written here: per-file `predict`, naive windows and AP, events from a
whole-recording pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train import cli_app, make_class_folder, make_detection_folder
from typer.testing import CliRunner

from biomamba import BioMamba
from biomamba.audio import read_audio
from biomamba.metrics import event_prf
from biomamba.runtime.events import detect_events
from biomamba.training.evaluate import evaluate
from conftest import perturb_

SR = 16000


def _naive_ap(scores, targets):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable, like the library's
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if targets[i]:
            hits += 1
            precisions.append(hits / rank)
    return float(np.mean(precisions)) if precisions else 0.0


def _naive_window_positive(st, ed, a, b):
    """BEANS: an end of the event inside the window and overlap / min(lengths) > 0.2, or the event
    covers the window."""
    inside = st <= a <= ed or st <= b <= ed
    overlap = (min(ed, b) - max(st, a)) / min(ed - st, b - a) if min(ed - st, b - a) > 0 else 0
    return (inside and overlap > 0.2) or (a <= st and ed <= b)


def test_classification_report_matches_per_file_predictions(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=4)
    torch.manual_seed(int(np.random.default_rng().integers(1000)))
    model = perturb_(BioMamba.from_preset("tiny", task="classify", classes=["high", "low"]), scale=0.3)
    model.save(tmp_path / "ck")
    report = evaluate(tmp_path / "ck", data, batch_size=3, device="cpu", report=tmp_path / "r.json",
                      plot=tmp_path / "cm.png")
    truth, pred = [], []
    for c, name in enumerate(["high", "low"]):
        for f in sorted((data / name).glob("*.wav")):
            truth.append(c)
            pred.append(int(np.argmax(model.predict(read_audio(f)))))
    cm = [[sum(1 for t, p in zip(truth, pred) if t == i and p == j) for j in range(2)] for i in range(2)]
    f1s = []
    for c in range(2):
        tp, fp, fn = cm[c][c], cm[1 - c][c], cm[c][1 - c]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    assert report["confusion_matrix"] == cm
    assert report["accuracy"] == pytest.approx(np.mean(np.array(truth) == np.array(pred)))
    assert report["macro_f1"] == pytest.approx(np.mean(f1s))
    assert report["n_items"] == 8 and report["task"] == "classify"
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["confusion_matrix"] == cm and saved["per_class"]["high"]["support"] == 4
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def detector(tmp_path):
    torch.manual_seed(int(np.random.default_rng().integers(1000)))
    model = perturb_(BioMamba.from_preset("tiny", task="detect", classes=["call"]), scale=0.3)
    model.save(tmp_path / "ck", training={"window_s": 1.5, "hop_s": 0.5})
    return model


def test_detection_map_and_events_match_oracles(tmp_path, detector):
    data, events = make_detection_folder(tmp_path / "data", n=2, seconds=5.3, seed=None)
    probs = {p: detector.predict(read_audio(p)) for p in events}
    threshold = float(np.quantile(np.concatenate(list(probs.values())), 0.7))
    report = evaluate(tmp_path / "ck", data, device="cpu", threshold=threshold, onset_tolerance_s=0.3,
                      plot=tmp_path / "pr.png", report=tmp_path / "r.json")
    assert report["window_s"] == 1.5 and report["hop_s"] == 0.5        # the model's training windows
    scores, targets = [], []
    for path in sorted(events):
        audio = read_audio(path)
        length = len(audio) / SR
        for i in range(int((length - 1.5) / 0.5) + 1):
            st = i * 0.5
            piece = audio[int(round(st * SR)) : int(round(st * SR)) + 24000]
            piece = np.pad(piece, (0, 24000 - len(piece)))
            scores.append(float(detector.predict(piece)[:, 0].max()))
            targets.append(any(_naive_window_positive(st, st + 1.5, a, b) for a, b, _ in events[path]))
    assert report["n_windows"] == len(scores)
    assert report["positives_per_class"]["call"] == sum(targets)
    assert report["map"] == pytest.approx(_naive_ap(scores, targets), abs=1e-6)
    tp = fp = fn = 0
    for path, refs in events.items():
        predicted = detect_events(probs[path], ["call"], threshold=threshold, min_duration_s=0.1, merge_gap_s=0.2)
        r = event_prf(predicted, refs, onset_tolerance_s=0.3)
        tp, fp, fn = tp + r["tp"], fp + r["fp"], fn + r["fn"]
    ev = report["events"]
    assert (ev["tp"], ev["fp"], ev["fn"]) == (tp, fp, fn) and ev["n_recordings"] == 2
    saved = json.loads((tmp_path / "r.json").read_text())   # valid JSON (NaN written as null)
    assert saved["events"]["tp"] == tp
    assert (tmp_path / "pr.png").stat().st_size > 1000


def test_beans_jsonl_windows(tmp_path, detector):
    _, events = make_detection_folder(tmp_path / "wav", n=2, seconds=4.4, seed=1)
    lines = []
    for path, evs in events.items():
        lines.append(json.dumps({"path": f"wav/{path.name}", "length": 4.4,
                                 "annotations": [{"st": a, "ed": b, "label": "call"} for a, b, _ in evs]}))
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    report = evaluate(tmp_path / "ck", tmp_path / "test.jsonl", device="cpu", window_s=2.0, hop_s=1.0, events=False)
    assert report["n_windows"] == 2 * (int((4.4 - 2.0) / 1.0) + 1)
    assert "events" not in report


def test_eval_cli(tmp_path, detector):
    data, _ = make_detection_folder(tmp_path / "data", n=1, seconds=3.0, seed=2)
    runner = CliRunner()
    app = cli_app("eval")
    result = runner.invoke(app, ["eval", str(tmp_path / "ck"), str(data), "--report", str(tmp_path / "e.json"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["task"] == "detect" and 0 <= summary["map"] <= 1 and "events" in summary
    assert json.loads((tmp_path / "e.json").read_text())["map"] == summary["map"]
    result = runner.invoke(app, ["eval", str(tmp_path / "nothing"), str(data)])
    assert result.exit_code == 2 and "no such file" in result.output
    BioMamba.from_preset("tiny", task="embed").save(tmp_path / "embed")
    result = runner.invoke(app, ["eval", str(tmp_path / "embed"), str(data), "--device", "cpu"])
    assert result.exit_code == 1 and "no class head" in result.output and "Traceback" not in result.output


def test_eval_of_a_training_run_folder_uses_best(tmp_path):
    from biomamba.training.train import TrainConfig, train

    data = make_class_folder(tmp_path / "data", per_class=3)
    train(TrainConfig(data=data, out=tmp_path / "run", preset="tiny", epochs=2, batch_size=4, crop_s=1.0,
                      device="cpu", lr=3e-3))
    report = evaluate(tmp_path / "run", data, device="cpu")
    again = evaluate(tmp_path / "run" / "best", data, device="cpu")
    assert report["accuracy"] == again["accuracy"] and report["confusion_matrix"] == again["confusion_matrix"]
