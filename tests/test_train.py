"""bmamba train on tiny synthetic data made here: tones per class (classify) and tone calls in
noise with Raven tables (detect). Also the makers the other training tests import."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import typer
from safetensors.torch import load_file
from torch.utils.data import DataLoader, DistributedSampler
from typer.testing import CliRunner

from biomamba import BioMamba
from biomamba.checkpoint import CheckpointError
from biomamba.loading import LAST, model_from_init
from biomamba.training import train as train_module
from biomamba.training.loop import optimizer_steps
from biomamba.training.runs import TrainingError, TrainingInterrupted
from biomamba.training.train import (
    TrainConfig,
    split_classification,
    split_detection,
    train,
)

SR = 16000
FREQS = {"low": 500.0, "high": 3000.0}


# --------------------------------------------------------------------------- synthetic data


def tone(seconds: float, hz: float, rng: np.random.Generator, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    hz = hz * (1 + 0.05 * rng.standard_normal())
    return (amp * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6.3)) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def make_class_folder(root: Path, per_class: int = 4, seconds: float = 1.0, seed: int | None = None) -> Path:
    """root/<class>/<i>.wav: a tone per class (500 Hz vs 3 kHz), random phase and pitch jitter."""
    rng = np.random.default_rng(seed)
    for name, hz in FREQS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sf.write(root / name / f"{i}.wav", tone(seconds, hz, rng), SR, subtype="FLOAT")
    return root


RAVEN_HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tAnnotation"


def make_detection_folder(root: Path, n: int = 3, seconds: float = 6.0, seed: int | None = None) -> tuple[Path, dict]:
    """root/rec<i>.wav with 2 kHz calls of 0.4-0.8 s in noise at random places, and a Raven table
    next to each. Returns (root, {path: [(start, end, "call")]})."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    events = {}
    for i in range(n):
        x = (0.02 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
        rows, evs = [RAVEN_HEADER], []
        start = rng.uniform(0.2, 0.8)
        while start + 0.8 < seconds:
            end = start + rng.uniform(0.4, 0.8)
            a, b = int(start * SR), int(end * SR)
            x[a:b] += tone((b - a) / SR, 2000.0, rng, amp=0.4)
            evs.append((round(start, 3), round(end, 3), "call"))
            rows.append(f"{len(evs)}\tSpectrogram 1\t1\t{start:.3f}\t{end:.3f}\t1500\t2500\tcall")
            start = end + rng.uniform(1.0, 2.5)
        path = root / f"rec{i}.wav"
        sf.write(path, x, SR, subtype="FLOAT")
        (root / f"rec{i}.Table.1.selections.txt").write_text("\n".join(rows) + "\n")
        events[path] = evs
    return root, events


def cli_app(*modules: str) -> typer.Typer:
    """A fresh Typer app with the named commands registered (as cli/app.py does)."""
    import importlib

    app = typer.Typer(pretty_exceptions_enable=False)
    for name in modules:
        importlib.import_module(f"biomamba.cli.cmd_{name}").register(app)
    if len(modules) == 1:  # a single-command Typer app would take the command's arguments directly

        @app.command(hidden=True)
        def _noop() -> None:
            pass

    return app


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=data, out=out, preset="tiny", epochs=2, batch_size=4, lr=3e-3, crop_s=1.0,
                device="cpu", seed=0)
    return TrainConfig(**{**base, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- end to end


def test_train_classify_through_cli(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=5)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli_app("train"), [
        "train", str(data), "--preset", "tiny", "--epochs", "4", "--batch-size", "4", "--lr", "3e-3",
        "--crop", "1s", "--out", str(out), "--device", "cpu", "--valid-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    for name in ("last/model.safetensors", "last/config.json", "last/training_state.pt", "best/config.json",
                 "args.json", "log.jsonl"):
        assert (out / name).is_file(), name
    log = log_lines(out)
    assert [line["epoch"] for line in log] == [1, 2, 3, 4]
    assert log[-1]["train_loss"] < log[0]["train_loss"]          # it learns the tones
    assert all("valid_accuracy" in line and "valid_macro_f1" in line for line in log)
    model = BioMamba.load(out / "best")
    assert model.task == "classify" and model.classes == ["high", "low"]
    best = max(line["valid_accuracy"] for line in log)
    assert json.loads((out / "best" / "config.json").read_text())["training"]["metrics"]["accuracy"] == best
    assert json.loads((out / "args.json").read_text())["task"] == "classify"


def test_train_detect_end_to_end(tmp_path):
    data, _ = make_detection_folder(tmp_path / "data", n=3, seed=1)
    out = tmp_path / "run"
    result = train(tiny_config(data, out, epochs=3, valid_fraction=0.34))
    assert result["metric"] == "map" and result["best"] is not None
    log = log_lines(out)
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert all(0.0 <= line["valid_map"] <= 1.0 for line in log)
    model = BioMamba.load(out / "last")
    assert model.task == "detect" and model.classes == ["call"]
    assert json.loads((out / "last" / "config.json").read_text())["training"]["window_s"] == 2.0


def test_augmentation_options_reach_the_training_windows(tmp_path, monkeypatch):
    """--background/--background-snr/--background-prob/--gain go into the training dataset only."""
    data, _ = make_detection_folder(tmp_path / "data", n=3, seed=2)
    noise = tmp_path / "bg" / "noise.wav"
    noise.parent.mkdir()
    sf.write(noise, np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1, 16000)
    import biomamba.training.train as T

    seen = []
    original = T.build_datasets

    def spy(cfg, task, sample_rate):
        train_ds, valid_ds, classes, notes = original(cfg, task, sample_rate)
        seen.append((train_ds, valid_ds))
        return train_ds, valid_ds, classes, notes

    monkeypatch.setattr(T, "build_datasets", spy)
    result = CliRunner().invoke(cli_app("train"), [
        "train", str(data), "--preset", "tiny", "--epochs", "1", "--batch-size", "2", "--out", str(tmp_path / "o"),
        "--device", "cpu", "--valid-fraction", "0.34", "--background", str(noise.parent),
        "--background-snr", "3,9", "--background-prob", "0.7", "--gain", "-6,6"])
    assert result.exit_code == 0, result.output
    train_ds, valid_ds = seen[0]
    mixer = train_ds.dataset.mix
    assert mixer.backgrounds == [noise] and mixer.snr_db == (3.0, 9.0) and mixer.prob == 0.7
    assert train_ds.dataset.gain_db == (-6.0, 6.0) and train_ds.dataset.train
    assert not valid_ds.dataset.train     # evaluation windows are never augmented
    bad = CliRunner().invoke(cli_app("train"), ["train", str(data), "--background-snr", "9", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--background-snr" in bad.output


def test_frontend_frozen_by_default(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=2)
    torch.manual_seed(0)
    initial = BioMamba.from_preset("tiny", task="classify", classes=["high", "low"]).state_dict()
    frozen = weights(train(tiny_config(data, tmp_path / "a", epochs=1, valid_fraction=0))["last"])
    moving = weights(train(tiny_config(data, tmp_path / "b", epochs=1, valid_fraction=0,
                                       freeze_frontend=False))["last"])
    conv = [k for k in initial if k.startswith("frontend.conv.")]
    assert conv and all(torch.equal(frozen[k], initial[k]) for k in conv)
    assert any(not torch.equal(moving[k], initial[k]) for k in conv)
    assert not torch.equal(frozen["frontend.proj.weight"], initial["frontend.proj.weight"])  # projection trains


@pytest.mark.parametrize("accumulate", [1, 2])
def test_linear_schedule_decays_to_zero_at_the_last_step(tmp_path, accumulate):
    data = make_class_folder(tmp_path / "data", per_class=4)   # 8 clips: 3 batches of 3, a short last group
    log = log_lines(Path(train(tiny_config(data, tmp_path / "run", epochs=3, batch_size=3, valid_fraction=0,
                                      accumulate=accumulate, warmup_steps=1, lr_schedule="linear"))["out"]))
    total = log[-1]["step"]               # the steps fit actually took, not the planned count
    assert total == 3 * (2 if accumulate == 2 else 3)
    for entry in log:                     # fairseq's linear decay after warm-up, reaching 0 at the end
        assert entry["lr"] == pytest.approx(3e-3 * (total - entry["step"]) / (total - 1), abs=1e-12)
    assert log[-1]["lr"] == 0.0
    flat = log_lines(Path(train(tiny_config(data, tmp_path / "flat", epochs=2, valid_fraction=0))["out"]))
    assert [e["lr"] for e in flat] == [3e-3, 3e-3]   # the default stays constant
    with pytest.raises(ValueError, match="--lr-schedule"):
        train(tiny_config(data, tmp_path / "bad", lr_schedule="cosine"))
    with pytest.raises(ValueError, match="epochs"):   # the decay's end would move: the rate would jump
        train(tiny_config(data, tmp_path / "run", epochs=4, batch_size=3, valid_fraction=0, accumulate=accumulate,
                          warmup_steps=1, lr_schedule="linear", resume=True))


@pytest.mark.parametrize("seed", range(5))
def test_optimizer_steps_counts_what_each_rank_loads(seed):
    rng = np.random.default_rng(seed)
    items, batch, world, accumulate, epochs = (int(v) for v in rng.integers(1, [60, 9, 5, 4, 4]))
    per_rank = [len(DataLoader(range(items), batch_size=batch, sampler=DistributedSampler(
        range(items), num_replicas=world, rank=r, shuffle=True, seed=seed))) for r in range(world)]
    assert len(set(per_rank)) == 1                       # every rank steps together
    steps = epochs * -(-per_rank[0] // accumulate)       # a short last group still steps
    assert optimizer_steps(items, batch, world, accumulate, epochs) == steps
    assert optimizer_steps(items, batch, world, accumulate, epochs, max_steps=2) == min(steps, 2)


# --------------------------------------------------------------------------- resume


def test_resume_reproduces_uninterrupted_run(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=3)
    straight = train(tiny_config(data, tmp_path / "straight", epochs=2, batch_size=2))
    train(tiny_config(data, tmp_path / "split", epochs=1, batch_size=2))
    resumed = train(tiny_config(data, tmp_path / "split", epochs=2, batch_size=2, resume=True))
    a, b = weights(straight["last"]), weights(resumed["last"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["steps"] == resumed["steps"]
    assert [x["train_loss"] for x in log_lines(tmp_path / "straight")] == \
           [x["train_loss"] for x in log_lines(tmp_path / "split")]


def test_interrupt_mid_epoch_saves_and_resume_is_exact(tmp_path, monkeypatch):
    data = make_class_folder(tmp_path / "data", per_class=3)   # 6 clips, 3 steps per epoch
    config = dict(epochs=2, batch_size=2, valid_fraction=0)
    straight = train(tiny_config(data, tmp_path / "straight", **config))
    real_loss = train_module.classification_loss

    def interrupting(net, batch, state):
        if state.global_step == 4:   # epoch 2, step 2: Ctrl-C sets a flag, the step finishes, then it saves
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(net, batch, state)

    monkeypatch.setattr(train_module, "classification_loss", interrupting)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(tiny_config(data, tmp_path / "split", **config))
    state = torch.load(tmp_path / "split" / LAST / "training_state.pt", weights_only=True)
    assert state["loop"]["global_step"] == 5 and state["loop"]["step_in_epoch"] == 2
    monkeypatch.setattr(train_module, "classification_loss", real_loss)
    resumed = train(tiny_config(data, tmp_path / "split", **config, resume=True))
    a, b = weights(straight["last"]), weights(resumed["last"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_needs_resume_and_same_settings(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=2)
    train(tiny_config(data, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_config(data, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_config(data, tmp_path / "run", epochs=2, batch_size=2, resume=True))


@pytest.mark.parametrize("command", ["train", "pretrain"])
@pytest.mark.parametrize("name", [LAST, "best", "log.jsonl"])
def test_out_holding_what_a_run_would_replace_is_refused_and_left_alone(tmp_path, command, name):
    # best/ and last/ are swapped in whole and log.jsonl appended to: someone's own files of these
    # names in --out (or a run stopped after its first epoch) would be lost. Refused before the
    # data is read, as bad usage, the files untouched.
    data = make_class_folder(tmp_path / "data", per_class=2)
    out = tmp_path / "mine"
    own = out / name / "notes.txt" if "." not in name else out / name
    own.parent.mkdir(parents=True)
    own.write_text("someone's\n")
    args = [command, str(data), "--preset", "tiny", "--out", str(out), "--device", "cpu"]
    args += ["--epochs", "1"] if command == "train" else ["--steps", "1"]
    result = CliRunner().invoke(cli_app(command), args)
    assert result.exit_code == 2, result.output
    assert f"--out {out} already holds a run ({name})" in " ".join(result.output.split()), result.output
    assert own.read_text() == "someone's\n" and sorted(p.name for p in out.iterdir()) == [name]


def test_out_that_is_a_file_or_a_labels_only_run(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=2)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file; name a folder"):
        train(tiny_config(data, tmp_path / "f", epochs=1))
    # what a run stopped before its first checkpoint leaves (args.json) is not in the way
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text("{}")
    assert train(tiny_config(data, tmp_path / "run", epochs=1))["epochs"] == 1


# --------------------------------------------------------------------------- NaN guard


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    data = make_class_folder(tmp_path / "data", per_class=3)
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1, batch_size=2))
    good = weights(out / LAST)
    real_loss = train_module.classification_loss

    def poisoned(net, batch, state):
        loss, stats = real_loss(net, batch, state)
        return (loss * float("nan") if state.step_in_epoch == 1 else loss), stats

    monkeypatch.setattr(train_module, "classification_loss", poisoned)
    runner = CliRunner()
    result = runner.invoke(cli_app("train"), [
        "train", str(data), "--preset", "tiny", "--epochs", "2", "--batch-size", "2", "--lr", "3e-3",
        "--crop", "1s", "--out", str(out), "--device", "cpu", "--resume", "--max-skipped-steps", "0"])
    assert result.exit_code == 1
    message = result.output.strip().splitlines()[-1]
    assert "loss became nan at epoch 2, step 2 of the epoch" in message and str(out / LAST) in message
    assert "Traceback" not in result.output
    kept = weights(out / LAST)
    assert all(torch.equal(kept[k], good[k]) for k in good)   # last/ still holds epoch 1's weights
    assert len(log_lines(out)) == 1


def test_nan_raises_training_error_in_library(tmp_path, monkeypatch):
    data = make_class_folder(tmp_path / "data", per_class=2)
    monkeypatch.setattr(train_module, "classification_loss",
                        lambda net, batch, state: (torch.tensor(float("inf"), requires_grad=True), {}))
    with pytest.raises(TrainingError, match="epoch 1, step 1"):
        train(tiny_config(data, tmp_path / "run", epochs=1, max_skipped_steps=0))
    assert not (tmp_path / "run" / LAST).exists()


# --------------------------------------------------------------------------- init, splits, errors


def test_init_from_pretrain_checkpoint(tmp_path):
    from biomamba.training.pretrain.runner import PretrainConfig, pretrain

    audio = make_class_folder(tmp_path / "audio", per_class=2)
    pre = pretrain(PretrainConfig(audio=[str(audio)], out=tmp_path / "pre", preset="tiny", steps=2, crop_s=1.0,
                                  batch_size=2, clusters=4, device="cpu", recipe="causal"))
    encoder = BioMamba.load(pre["last"])
    assert encoder.task == "embed"
    model = model_from_init(tmp_path / "pre", "classify", ["high", "low"])
    source = encoder.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items() if not k.startswith("head."))
    result = train(tiny_config(audio, tmp_path / "fine", epochs=1, init=tmp_path / "pre" / "last", preset="edge"))
    tuned = BioMamba.load(result["last"])
    assert tuned.preset == "tiny" and tuned.classes == ["high", "low"]   # the checkpoint's size wins


def test_init_keeps_head_when_classes_agree_and_rejects_misfits(tmp_path):
    torch.manual_seed(1)
    src = BioMamba.from_preset("tiny", task="classify", classes=["a", "b"])
    src.save(tmp_path / "ck")
    same = model_from_init(tmp_path / "ck", "classify", ["a", "b"])
    assert torch.equal(same.head.weight, src.head.weight)
    other = model_from_init(tmp_path / "ck", "classify", ["a", "b", "c"])
    assert other.head.weight.shape == (3, 64)
    with pytest.raises(CheckpointError, match="does not fit"):
        model_from_init(tmp_path / "ck", "classify", ["a"], architecture="transformer")


def test_bidirectional_teacher_initialises_causal_student_from_forward_branch(tmp_path):
    from biomamba.bidirectional import BidirectionalBioMamba

    torch.manual_seed(2)
    teacher = BidirectionalBioMamba.from_preset("tiny", task="embed")
    teacher.save(tmp_path / "teacher")
    student = model_from_init(tmp_path / "teacher", "detect", ["call"])
    assert type(student) is BioMamba
    t = teacher.state_dict()
    assert all(torch.equal(v, t[k]) for k, v in student.state_dict().items() if not k.startswith("head."))


def test_validation_split_is_by_recording_and_seeded():
    labels = [0] * 10 + [1] * 5
    train_a, valid_a = split_classification(labels, 0.2, seed=3)
    assert split_classification(labels, 0.2, seed=3) == (train_a, valid_a)
    assert sorted(train_a + valid_a) == list(range(15)) and not set(train_a) & set(valid_a)
    assert sum(labels[i] == 0 for i in valid_a) == 2 and sum(labels[i] == 1 for i in valid_a) == 1


def test_detection_split_never_shares_a_recording(tmp_path):
    from biomamba.training.evaluate import CheckedDetectionDataset

    data, _ = make_detection_folder(tmp_path / "data", n=4, seconds=4.0, seed=2)
    ds = CheckedDetectionDataset(data)
    train_idx, valid_idx = split_detection(ds, 0.25, seed=0)
    paths = lambda idx: {ds.windows[i].path for i in idx}  # noqa: E731
    assert len(paths(valid_idx)) == 1 and not paths(train_idx) & paths(valid_idx)
    assert len(train_idx) + len(valid_idx) == len(ds)
    one, _ = make_detection_folder(tmp_path / "one", n=1, seconds=10.0, seed=3)
    single = CheckedDetectionDataset(one)
    train_idx, valid_idx = split_detection(single, 0.3, seed=0)
    assert max(single.windows[i].start_s + 2.0 for i in train_idx) <= min(single.windows[i].start_s for i in valid_idx)


def test_train_from_beans_listings(tmp_path):
    data = make_class_folder(tmp_path / "clips", per_class=2)
    rows = ["path,label,fold"] + [f"clips/{f.parent.name}/{f.name},{f.parent.name},1"
                                  for f in sorted(data.rglob("*.wav"))]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    result = train(tiny_config(tmp_path / "train.csv", tmp_path / "c", epochs=1, valid_fraction=0.5))
    assert BioMamba.load(result["last"]).classes == ["high", "low"]
    _, events = make_detection_folder(tmp_path / "wav", n=2, seconds=4.0, seed=4)
    lines = [json.dumps({"path": f"wav/{p.name}", "length": 4.0,
                         "annotations": [{"st": a, "ed": b, "label": label} for a, b, label in evs]})
             for p, evs in events.items()]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    result = train(tiny_config(tmp_path / "train.jsonl", tmp_path / "d", epochs=1, valid_fraction=0.5))
    assert result["metric"] == "map" and json.loads((tmp_path / "d" / "args.json").read_text())["task"] == "detect"


def test_split_column_selects_train_and_validation_rows(tmp_path):
    """Issue 10: a CSV with a `split` column (InsectSet32's files.csv) is read a split at a time by
    bmamba train (--split, --valid-split) and bmamba eval (--split)."""
    data = make_class_folder(tmp_path / "clips", per_class=4, seed=3)
    files = sorted(data.rglob("*.wav"))
    split_of = {f: ("validation" if f.stem == "0" else "train") for f in files}
    rows = ["path,label,split"] + [f"clips/{f.parent.name}/{f.name},{f.parent.name},{split_of[f]}" for f in files]
    listing = tmp_path / "files.csv"
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli_app("train", "eval"), [
        "train", str(listing), "--split", "train", "--valid-split", "validation", "--preset", "tiny",
        "--epochs", "1", "--batch-size", "4", "--crop", "1s", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "6 training items, 2 validation items" in result.output
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(cli_app("train", "eval"), [
        "eval", str(out), str(listing), "--split", "validation", "--device", "cpu", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["n_items"] == 2
    result = CliRunner().invoke(cli_app("train", "eval"), [
        "eval", str(out), str(listing), "--split", "test", "--device", "cpu"])
    assert result.exit_code != 0 and "no row of split 'test'" in result.output


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=2)
    (data / "low" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    result = train(tiny_config(data, tmp_path / "run", epochs=1, valid_fraction=0))
    assert len(result["notes"]) == 1 and "broken.wav" in result["notes"][0]


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli_app("train"), ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such file or folder" in result.output and "Traceback" not in result.output
    data = make_class_folder(tmp_path / "data", per_class=1)
    result = runner.invoke(cli_app("train"), ["train", str(data), "--crop", "soon", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a duration" in result.output
    result = runner.invoke(cli_app("train"), ["train", str(data), "--preset", "huge", "--out", str(tmp_path / "o"),
                                              "--device", "cpu"])
    assert result.exit_code == 2 and "--preset 'huge'" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli_app("train"), ["train", str(data), "--task", "segment", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "choose one of classify, detect" in result.output
    (tmp_path / "bad.csv").write_text("path,label\nnowhere.wav,dog\n")
    result = runner.invoke(cli_app("train"), ["train", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o2"),
                                              "--device", "cpu", "--preset", "tiny"])
    assert result.exit_code == 1 and "no readable recordings (1 unreadable)" in result.output
    assert "Traceback" not in result.output
