"""recipes/probe.py (linear probes of frozen encoders) and recipes/collect_probes.py on tiny data
written here."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def load_recipe(name: str):
    if str(REPO / "recipes") not in sys.path:   # the collectors import their sibling results_io, as scripts do
        sys.path.insert(0, str(REPO / "recipes"))
    spec = importlib.util.spec_from_file_location(name, REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tones(folder: Path, name: str, per_class: int, rng) -> list[tuple[Path, str]]:
    """Two classes told apart by pitch (437 Hz vs 2953 Hz), random length, phase, level and noise.
    Not multiples of 50 Hz: those repeat exactly every 20 ms frame hop, so every frame of a clip
    sees the same phase and the mean-pooled features follow the random start phase, not the pitch."""
    rows = []
    for label, freq in (("low", 437.0), ("high", 2953.0)):
        for i in range(per_class):
            t = np.arange(int(SR * rng.uniform(0.5, 1.5))) / SR
            audio = rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3))
            audio += 0.01 * rng.standard_normal(len(t))
            path = folder / f"{name}-{label}-{i}.wav"
            sf.write(path, audio.astype(np.float32), SR)
            rows.append((path, label))
    return rows


def write_listing(path: Path, rows, extra: dict | None = None) -> Path:
    """A BEANS CSV; ``extra`` maps a column name to one value per row (e.g. a split column)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = extra or {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", *extra])
        w.writerows([str(p), y, *(col[i] for col in extra.values())] for i, (p, y) in enumerate(rows))
    return path


def tone_listing(folder: Path, name: str, per_class: int, rng) -> Path:
    return write_listing(folder / f"{name}.csv", tones(folder, name, per_class, rng))


def run_probe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "recipes" / "probe.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_probe_reads_pitch_off_a_random_tiny_encoder(tmp_path):
    import torch

    from biomamba.model import BioMamba

    rng = np.random.default_rng(0)
    train, valid = tone_listing(tmp_path, "train", 6, rng), tone_listing(tmp_path, "valid", 3, rng)
    torch.manual_seed(0)
    BioMamba.from_preset("tiny", task="embed").save(tmp_path / "run" / "last")
    report = tmp_path / "probe.json"
    done = run_probe(tmp_path / "run", "--train", train, "--valid", valid, "--report", report)
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    entry = result["checkpoints"][str(tmp_path / "run")]
    assert (result["tasks"]["listing"]["n_train"], result["tasks"]["listing"]["n_valid"], entry["dim"]) == ([12], [6], 64)
    assert entry["checkpoint"].endswith("last")
    last = entry["tasks"]["listing"]["last"]
    assert last["accuracy"] == 1.0 and last["macro_f1"] == 1.0


def test_several_checkpoints_on_a_split_task_and_a_fold_task(tmp_path):
    """One call: InsectSet32-style files.csv (split column) and three folds; the random control,
    the same model saved as a checkpoint, and another architecture."""
    import torch

    from biomamba.model import BioMamba

    rng = np.random.default_rng(1)
    train, valid = tones(tmp_path, "train", 5, rng), tones(tmp_path, "valid", 3, rng)
    unlisted = tones(tmp_path, "unlisted", 1, rng)      # rows of another split: used nowhere
    rows = train + valid + unlisted
    files = write_listing(tmp_path / "files.csv", rows,
                          {"split": ["train"] * len(train) + ["validation"] * len(valid) + ["test"] * len(unlisted)})
    clips = tones(tmp_path, "fold", 6, rng)             # 6 low then 6 high: 2 + 2 per fold
    fold_of = {p: i % 3 + 1 for i, (p, _) in enumerate(clips)}
    for k in (1, 2, 3):
        write_listing(tmp_path / "cv" / f"fold{k}" / "train.csv", [c for c in clips if fold_of[c[0]] != k])
        write_listing(tmp_path / "cv" / f"fold{k}" / "test.csv", [c for c in clips if fold_of[c[0]] == k])
    torch.manual_seed(0)
    BioMamba.from_preset("tiny", task="embed").save(tmp_path / "saved")   # what random: must mean

    report = tmp_path / "probe.json"
    done = run_probe("random:biomamba-tiny", tmp_path / "saved", "random:transformer-tiny",
                     "--insectset32", files, "--phoebe", tmp_path / "cv", "--report", report)
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert result["tasks"]["insectset32"] == {"splits": ["validation"], "n_train": [10], "n_valid": [6]}
    assert result["tasks"]["phoebe"] == {"splits": ["fold1", "fold2", "fold3"], "n_train": [8] * 3, "n_valid": [4] * 3}
    assert list(result["checkpoints"]) == ["random:biomamba-tiny", str(tmp_path / "saved"), "random:transformer-tiny"]
    for entry in result["checkpoints"].values():
        assert entry["audio_files"] == len(train) + len(valid) + len(clips)   # each recording once
        assert set(entry["tasks"]) == {"insectset32", "phoebe"}
    random, saved = result["checkpoints"]["random:biomamba-tiny"], result["checkpoints"][str(tmp_path / "saved")]
    assert (random["architecture"], random["preset"], random["layers"]) == ("biomamba", "tiny", 2)
    assert result["checkpoints"]["random:transformer-tiny"]["architecture"] == "transformer"
    assert random["tasks"] == saved["tasks"]             # random: is the seed-0 fresh model
    ins, pho = random["tasks"]["insectset32"], random["tasks"]["phoebe"]
    assert ins["last"]["accuracy"] == 1.0 and ins["last"]["accuracy_std"] is None
    assert pho["last"]["per_split_accuracy"] == [1.0, 1.0, 1.0] and pho["last"]["accuracy_std"] == 0.0
    assert [s["split"] for s in pho["splits"]] == ["fold1", "fold2", "fold3"]
    assert all(layer in (1, 2) for layer in pho["best_layer"]["layers"])
    for split in pho["splits"]:
        assert set(split["features"]) == {"last", "layer1", "layer2"}
        best = split["best_layer"]
        assert pho["best_layer"]["per_split_accuracy"][pho["splits"].index(split)] == split["features"][best]["accuracy"]


def test_a_random_control_is_the_fresh_model_of_its_seed():
    import torch

    from biomamba.model import BioMamba

    probe = load_recipe("probe")
    model, described = probe.load_encoder("random:biomamba-tiny:3")
    torch.manual_seed(3)
    expected = BioMamba.from_preset("tiny", task="embed").state_dict()
    assert described == {"checkpoint": "random:biomamba-tiny:3", "pretraining": None}
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    other, _ = probe.load_encoder("random:biomamba-tiny")        # seed 0
    assert not torch.equal(other.state_dict()["frontend.proj.weight"],
                           expected["frontend.proj.weight"])


def weak_classes(rng, n: int) -> tuple[np.ndarray, list[str]]:
    """Two overlapping Gaussian classes in 8 dimensions: the probe's C matters."""
    y = np.array(["a", "b"] * (n // 2))
    x = rng.standard_normal((n, 8)) + 0.6 * (y == "b")[:, None] * np.linspace(1, 0, 8)
    return x, list(y)


def test_c_and_layer_are_chosen_on_the_training_rows_only():
    probe = load_recipe("probe")
    rng = np.random.default_rng(3)
    # weak_classes labels rows a, b, a, b, ...: the same labels for every feature
    train = {key: weak_classes(rng, 40)[0] for key in ("last", "layer1", "layer2")}
    valid = {key: weak_classes(rng, 30)[0] for key in train}
    train_y, valid_y = weak_classes(rng, 40)[1], weak_classes(rng, 30)[1]
    flipped_y = [{"a": "b", "b": "a"}[y] for y in valid_y]

    # Precondition: a choice made on the valid rows would differ between the two labellings
    # (flipping the labels turns each accuracy p into 1 - p, so the best C becomes the worst).
    for key in train:
        on_valid = [probe.fit_probe(train[key], train_y, valid[key], valid_y, c=c)["accuracy"] for c in probe.C_GRID]
        assert len(set(on_valid)) > 1, key

    a = probe.probe_split(train, train_y, valid, valid_y)
    b = probe.probe_split(train, train_y, valid, flipped_y)
    assert a["features"]["last"]["accuracy"] == pytest.approx(1 - b["features"]["last"]["accuracy"])
    assert a["best_layer"] == b["best_layer"]
    for key in train:
        assert a["features"][key]["C"] == b["features"][key]["C"]
        assert a["features"][key]["cv_accuracy"] == b["features"][key]["cv_accuracy"]


def test_select_c_agrees_with_scikit_learns_grid_search():
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    probe = load_recipe("probe")
    x, y = weak_classes(np.random.default_rng(4), 60)
    search = GridSearchCV(probe.linear_probe(1.0), {"logisticregression__C": list(probe.C_GRID)},
                          cv=StratifiedKFold(5, shuffle=True, random_state=0), scoring="accuracy").fit(x, y)
    c, score = probe.select_c(x, y)
    assert c == search.best_params_["logisticregression__C"]
    assert score == pytest.approx(search.best_score_)


def test_probe_cannot_score_above_chance_on_features_without_the_label():
    """Features identical for every recording: the probe can only predict one class everywhere."""
    probe = load_recipe("probe")
    y_train = ["a"] * 5 + ["b"] * 5
    y_valid = ["a"] * 3 + ["b"] * 3
    result = probe.fit_probe(np.ones((10, 4)), y_train, np.ones((6, 4)), y_valid)
    assert result["accuracy"] == 0.5
    assert result["macro_f1"] < 0.5


def test_bad_input_is_named(tmp_path):
    probe = load_recipe("probe")
    with pytest.raises(SystemExit, match=f"{tmp_path}.*layout.py cv"):
        probe.folds_task(tmp_path)
    with pytest.raises(SystemExit, match="random:nosuch-tiny: expected random:ARCH-PRESET"):
        probe.load_encoder("random:nosuch-tiny")
    with pytest.raises(SystemExit, match="random:biomamba-tiny:x: expected"):
        probe.load_encoder("random:biomamba-tiny:x")
    with pytest.raises(SystemExit, match=str(tmp_path / "nothing")):
        probe.load_encoder(str(tmp_path / "nothing"))
    (tmp_path / "bad.csv").write_text("file,species\nx.wav,a\n")
    with pytest.raises(SystemExit, match="bad.csv"):
        probe.listing_task(tmp_path / "bad.csv", tmp_path / "bad.csv")
    done = run_probe("random:biomamba-tiny")
    assert done.returncode != 0 and "no task" in done.stderr


# --------------------------------------------------------------------------- the collector


def fake_entry(checkpoint: str, arch: str, ins: tuple[float, float], ins_best: tuple[float, int],
               folds: list[float], f1: float) -> dict:
    """A probe.py report entry with the given scores (accuracy, macro-F1 of InsectSet32; per-fold
    phoebe accuracies)."""
    def stats(acc: list[float], macro_f1: float) -> dict:
        return {"accuracy": float(np.mean(acc)), "accuracy_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
                "macro_f1": macro_f1, "per_split_accuracy": acc}
    return {"checkpoint": checkpoint, "architecture": arch, "preset": "tiny", "tasks": {
        "insectset32": {"last": stats([ins[0]], ins[1]), "best_layer": {"layers": [ins_best[1]], **stats([ins_best[0]], 0.1)}},
        "phoebe": {"last": stats(folds, f1), "best_layer": {"layers": [1] * 5, **stats(folds, f1)}}}}


def fake_report(entries: dict) -> dict:
    return {"settings": {"features": "F", "probe": "P", "C_grid": [0.1, 1.0], "selection": "S", "random": "R"},
            "machine": {"platform": "plat", "cpu": "CPU-X", "cpu_count": 2, "torch_threads": 1, "device": "cpu"},
            "tasks": {"insectset32": {"splits": ["validation"], "n_train": [205], "n_valid": [51]},
                      "phoebe": {"splits": [f"fold{k}" for k in range(1, 6)], "n_train": [80] * 5, "n_valid": [20] * 5}},
            "checkpoints": entries}


def test_collector_tables_a_fake_work_tree(tmp_path):
    work = tmp_path / "work"
    (work / "probes").mkdir(parents=True)
    pt = work / "pt"
    causal = fake_entry(str(pt / "causal-tiny-p2" / "last"), "biomamba", (0.412, 0.301), (0.451, 2),
                        [0.5, 0.6, 0.4, 0.5, 0.5], 0.456)
    teacher = fake_entry(str(pt / "distill-tiny-p1" / "last"), "biomamba-bidirectional", (0.333, 0.222), (0.3, 1),
                         [0.3, 0.3, 0.3, 0.3, 0.3], 0.25)
    control = fake_entry("random:biomamba-tiny", "biomamba", (0.118, 0.091), (0.157, 1),
                         [0.4, 0.45, 0.35, 0.5, 0.25], 0.376)
    control1 = fake_entry("random:biomamba-tiny:1", "biomamba", (0.196, 0.123), (0.275, 1),
                          [0.2, 0.2, 0.2, 0.2, 0.2], 0.2)
    (work / "probes" / "causal-tiny-p2.json").write_text(json.dumps(fake_report({"a": causal})))
    (work / "probes" / "distill-tiny-p1.json").write_text(json.dumps(fake_report({"b": teacher})))
    (work / "probes" / "random-biomamba-tiny.json").write_text(json.dumps(fake_report({"c": control, "d": control1})))
    (work / "times.tsv").write_text("pretrain-causal-tiny-p1\t100\npretrain-causal-tiny-p2\t321\n"
                                    "pretrain-distill-tiny-p1\t222\nprobe-causal-tiny-p2\t40\n"
                                    "probe-random-biomamba-tiny-seed1\t35\n")
    (pt / "causal-tiny-p2").mkdir(parents=True)
    (pt / "causal-tiny-p2" / "args.json").write_text(json.dumps({"steps": 1000, "batch_size": 8, "seed": 0,
                                                                 "recipe": "causal", "audio": ["x.wav"]}))
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "collect_probes.py"), str(work), "--out", str(out),
                           "--name", "probes"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    md = (out / "probes.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| recipe")]
    assert table == [
        "| none (random init, seed 0) | - | biomamba tiny, causal | 0.118 | 0.091 | 0.157 (layer 1) | "
        f"0.390 ± {np.std([0.4, 0.45, 0.35, 0.5, 0.25], ddof=1):.3f} | 0.376 | "
        f"0.390 ± {np.std([0.4, 0.45, 0.35, 0.5, 0.25], ddof=1):.3f} (layer 1, 1, 1, 1, 1) | - |",
        "| none (random init, seed 1) | - | biomamba tiny, causal | 0.196 | 0.123 | 0.275 (layer 1) | "
        "0.200 ± 0.000 | 0.200 | 0.200 ± 0.000 (layer 1, 1, 1, 1, 1) | - |",
        "| causal | 2 | biomamba tiny, causal | 0.412 | 0.301 | 0.451 (layer 2) | "
        f"0.500 ± {np.std([0.5, 0.6, 0.4, 0.5, 0.5], ddof=1):.3f} | 0.456 | "
        f"0.500 ± {np.std([0.5, 0.6, 0.4, 0.5, 0.5], ddof=1):.3f} (layer 1, 1, 1, 1, 1) | 321 |",
        "| distill | 1 | biomamba-bidirectional tiny, not causal (the bidirectional teacher) | 0.333 | 0.222 | "
        "0.300 (layer 1) | 0.300 ± 0.000 | 0.250 | 0.300 ± 0.000 (layer 1, 1, 1, 1, 1) | 222 |",
    ]
    se = [math.sqrt(p * (1 - p) / 51) for p in (0.118, 0.196, 0.412, 0.333)]
    assert f"is {min(se):.3f}-{max(se):.3f}" in md
    assert "the 2 random controls (initialisation seeds only) span insectset32 0.118-0.196, phoebe 0.200-0.390" in md
    assert "CPU-X, 2 CPU cores" in md and "steps 1000, batch_size 8, seed 0" in md
    result = json.loads((out / "probes.json").read_text())
    assert [r["run"] for r in result["rows"]] == ["random:biomamba-tiny", "random:biomamba-tiny:1", "causal-tiny-p2",
                                                  "distill-tiny-p1"]
    assert [r["probe_wall_s"] for r in result["rows"]] == [None, 35, 40, None]
