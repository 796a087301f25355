"""DDP: `bmamba train` under torchrun with two CPU processes on the gloo backend.

Two processes with batch b must train exactly as one process with batch 2b: DistributedSampler
gives rank r the items r, r + 2, ... of the epoch's permutation, so each step's two half-batches
make up the single process's batch, and DDP averages the gradients (every rank's loss is a mean
over an equal number of items).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from safetensors.torch import load_file
from test_train import make_class_folder

from biomamba import load_model
from biomamba.training.pretrain.runner import PretrainConfig, pretrain
from biomamba.training.train import TrainConfig, train

SCRIPT = textwrap.dedent("""
    import os, sys
    import typer
    from biomamba.cli import cmd_pretrain, cmd_train

    app = typer.Typer(pretty_exceptions_enable=False)
    cmd_train.register(app)
    cmd_pretrain.register(app)

    app(sys.argv[1:], standalone_mode=False)
    print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} finished", flush=True)
""")


def _torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "run_bmamba.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script), *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 of 2 finished" in proc.stdout and "rank 1 of 2 finished" in proc.stdout
    return proc


def test_torchrun_gloo_two_processes_equal_one_process_with_double_batch(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=4, seed=0)      # 8 clips
    valid = make_class_folder(tmp_path / "valid", per_class=1, seed=1)
    common = ["--preset", "tiny", "--epochs", "1", "--max-steps", "2", "--lr", "3e-3", "--crop", "1s",
              "--device", "cpu", "--seed", "7", "--valid", str(valid)]
    proc = _torchrun(tmp_path, "train", str(data), "--batch-size", "2", "--out", str(tmp_path / "ddp"), *common)
    assert "2 process(es)" in proc.stderr
    assert proc.stderr.count("bmamba train:") == 1            # only rank 0 speaks
    out = tmp_path / "ddp"
    assert (out / "last" / "model.safetensors").is_file() and (out / "best" / "config.json").is_file()
    ddp_log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(ddp_log) == 1 and ddp_log[0]["step"] == 2 and "valid_accuracy" in ddp_log[0]

    single = train(TrainConfig(data=data, out=tmp_path / "single", preset="tiny", epochs=1, max_steps=2, lr=3e-3,
                               crop_s=1.0, device="cpu", seed=7, valid=valid, batch_size=4))
    a, b = load_file(str(out / "last" / "model.safetensors")), load_file(str(single["last"]) + "/model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    single_log = json.loads((tmp_path / "single" / "log.jsonl").read_text().splitlines()[0])
    assert abs(single_log["train_loss"] - ddp_log[0]["train_loss"]) < 1e-5      # loss averaged over ranks
    assert torch.isfinite(torch.tensor(ddp_log[0]["valid_loss"]))


def test_torchrun_with_accumulation_equals_one_process_with_four_times_the_batch(tmp_path):
    """--accumulate under DDP (gradients synchronised on the last batch of each step only): 2
    processes x batch 1 x accumulate 2 train as one process with batch 4."""
    data = make_class_folder(tmp_path / "data", per_class=4, seed=0)
    common = ["--preset", "tiny", "--epochs", "1", "--max-steps", "2", "--lr", "3e-3", "--crop", "1s",
              "--device", "cpu", "--seed", "7", "--valid-fraction", "0", "--workers", "0"]
    _torchrun(tmp_path, "train", str(data), "--batch-size", "1", "--accumulate", "2", "--out", str(tmp_path / "ddp"),
              *common)
    single = train(TrainConfig(data=data, out=tmp_path / "single", preset="tiny", epochs=1, max_steps=2, lr=3e-3,
                               crop_s=1.0, device="cpu", seed=7, valid_fraction=0, batch_size=4, workers=0))
    a = load_file(str(tmp_path / "ddp" / "last" / "model.safetensors"))
    b = load_file(str(single["last"]) + "/model.safetensors")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst


def test_torchrun_pretrain_shares_labels_and_matches_single_process_labels(tmp_path):
    audio = make_class_folder(tmp_path / "audio", per_class=3, seed=3)   # 6 recordings, labels split over ranks
    _torchrun(tmp_path, "pretrain", str(audio), "--preset", "tiny", "--steps", "2", "--crop", "1s",
              "--batch-size", "2", "--clusters", "4", "--kmeans-fraction", "1", "--device", "cpu",
              "--out", str(tmp_path / "ddp"), "--save-every", "0")
    single = pretrain(PretrainConfig(audio=[str(audio)], out=tmp_path / "single", preset="tiny", clusters=4,
                                     kmeans_fraction=1.0, device="cpu", labels_only=True))
    ddp_labels = tmp_path / "ddp" / "labels" / "mfcc-k4"
    assert json.loads((ddp_labels / "index.json").read_text())["files"] == \
        json.loads((tmp_path / "single" / "labels" / "mfcc-k4" / "index.json").read_text())["files"]
    for i in range(6):   # rank 0 and rank 1 each wrote their share, equal to one process's
        a = np.load(ddp_labels / f"{i:06d}.npy")
        b = np.load(tmp_path / "single" / "labels" / "mfcc-k4" / f"{i:06d}.npy")
        assert np.array_equal(a, b)
    assert single["clusters"] == 4
    encoder = load_model(tmp_path / "ddp" / "last")   # the default recipe (delayed) trains the causal model
    assert encoder.architecture == "biomamba" and encoder.task == "embed"
    pretraining = json.loads((tmp_path / "ddp" / "last" / "config.json").read_text())["pretraining"]
    assert (pretraining["recipe"], pretraining["delay"]) == ("delayed", 10)
